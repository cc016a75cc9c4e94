"""robust_accuracy: clean and robust accuracy against answers known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ebmlens
from ebmlens.attacks import Attack, get_attack
from ebmlens.data import ImageData
from ebmlens.metrics import RobustAccuracy, robust_accuracy

# one pixel, three channels; only channel 0 matters: logits (x0 - 0.5, 0.5 - x0), so class 0 iff
# x0 > 0.5 and the distance to the decision boundary is |x0 - 0.5| in L2 and in Linf alike.
PIXELS = np.array([25, 60, 110, 150, 170, 230], np.uint8)    # x0 = .098 .235 .431 .588 .667 .902
LABELS = np.array([1, 1, 1, 0, 0, 1])                         # the last one is misclassified
EPS = 0.1


def _toy():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    model = ebmlens.EnergyModel(net, num_classes=2, input_shape=(3, 1, 1), mean=(0.5,), std=(1.0,))
    images = np.repeat(PIXELS[:, None], 3, 1).reshape(-1, 1, 1, 3)
    return model, ImageData(images, LABELS, ["a", "b"], "toy")


def _by_hand():
    x0 = PIXELS / 255.0
    correct = (x0 > 0.5).astype(int) == 1 - LABELS
    return correct.mean(), (correct & (np.abs(x0 - 0.5) > EPS)).mean()


@pytest.mark.parametrize("name,tm", [("pgd", "L2"), ("pgd", "Linf"), ("apgd-ce", "L2"), ("apgd-ce", "Linf")])
def test_linear_toy_matches_the_distance_to_the_boundary(name, tm):
    model, data = _toy()
    clean, robust = _by_hand()
    assert (clean, robust) == (5 / 6, 0.5)                     # the toy is not degenerate
    r = robust_accuracy(model, data, get_attack(name, threat_model=tm, eps=EPS, steps=10), batch_size=4)
    assert isinstance(r, RobustAccuracy) and r.n == 6
    assert r.clean_acc == pytest.approx(clean) and r.robust_acc == pytest.approx(robust)


def test_an_identity_attack_would_give_robust_equal_clean(monkeypatch):
    # what the test above rules out: an attack that returns x unchanged measures clean accuracy twice
    model, data = _toy()
    monkeypatch.setattr(Attack, "__call__", lambda self, model, x, y, target=None, generator=None: x)
    r = robust_accuracy(model, data, get_attack("pgd", threat_model="L2", eps=EPS))
    assert r.robust_acc == r.clean_acc == pytest.approx(5 / 6) != _by_hand()[1]


def test_clean_accuracy_is_a_direct_count_over_the_given_indices(tiny_model):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(23, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (23,), generator=g)
    data = ImageData(x.mul(255).round().byte().permute(0, 2, 3, 1).numpy(), y.numpy(), [str(i) for i in range(10)], "r")
    idx = np.array([20, 3, 7, 11, 0, 19, 5])
    with torch.no_grad():
        direct = (tiny_model.logits(data.tensor(idx)).argmax(1) == data.label_tensor(idx)).float().mean().item()
    before = torch.get_rng_state()
    r = robust_accuracy(tiny_model, data, get_attack("pgd", threat_model="Linf", eps=8 / 255, steps=2), indices=idx,
                        batch_size=3)
    assert torch.equal(torch.get_rng_state(), before)          # no global randomness consumed
    assert r.n == 7 and r.clean_acc == pytest.approx(direct) and r.robust_acc <= r.clean_acc


def test_records_and_errors():
    model, data = _toy()
    d = robust_accuracy(model, data, get_attack("pgd", threat_model="L2", eps=EPS, steps=4)).to_dict()
    assert d["attack"] == "pgd-L2" and d["step_size"] == pytest.approx(2.5 * EPS / 4) and d["random_start"] is False
    d = robust_accuracy(model, data, get_attack("apgd-ce", threat_model="L2", eps=EPS, steps=3, seed=5)).to_dict()
    assert d["attack"] == "apgd-ce-L2 (torchattacks)" and (d["restarts"], d["seed"], d["steps"]) == (1, 5, 3)
    with pytest.raises(ValueError, match="untargeted"):
        robust_accuracy(model, data, get_attack("pgd-targeted", threat_model="L2", eps=EPS))
    with pytest.raises(TypeError, match="get_attack"):
        robust_accuracy(model, data, "pgd")
