"""WEAT weights and loss pieces follow the published formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from ebmlens.analysis import weat_terms_from_logits, weat_weights


def test_weights_formula():
    e = torch.tensor([0.0, 1.0, -1.0, 5.0, -30.0, 100.0])
    w = weat_weights(e)
    assert w[0].item() == pytest.approx(1 / math.log(2), rel=1e-6)
    assert w[0].item() == pytest.approx(1.4427, abs=1e-4)
    ref = 1.0 / torch.log(1 + torch.exp(e.double().abs()))
    assert torch.allclose(w.double(), ref, rtol=1e-6)
    assert w[1] == w[2]  # symmetric in E
    assert w[5].item() == pytest.approx(0.01, rel=1e-6)  # ~1/|E| far from 0
    assert bool((w > 0).all()) and bool((w <= 1 / math.log(2) + 1e-6).all())


def test_weights_are_detached_and_not_normalized():
    e = torch.randn(16, requires_grad=True)
    w = weat_weights(e)
    assert not w.requires_grad
    assert w.sum().item() != pytest.approx(1.0) and w.mean().item() != pytest.approx(1.0)


def test_terms_equal_direct_weighted_losses():
    g = torch.Generator().manual_seed(3)
    lg, lg_adv = 4 * torch.randn(32, 10, generator=g), 4 * torch.randn(32, 10, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    t = weat_terms_from_logits(lg, lg_adv, y)
    w = 1.0 / torch.log(1 + torch.exp(torch.logsumexp(lg, 1).abs()))
    kl = F.kl_div(F.log_softmax(lg_adv, 1), F.softmax(lg, 1), reduction="none").sum(1)
    adv = (w * F.cross_entropy(lg_adv, y, reduction="none")).mean() + 6 * (w * kl).mean()
    nat = (w * F.cross_entropy(lg, y, reduction="none")).mean() + 6 * (w * kl).mean()
    assert torch.allclose(t.weights, w, rtol=1e-5)
    assert t.loss("adv", 6.0).item() == pytest.approx(adv.item(), rel=1e-5)
    assert t.loss("nat", 6.0).item() == pytest.approx(nat.item(), rel=1e-5)
    with pytest.raises(ValueError, match="'adv' or 'nat'"):
        t.loss("both")


def test_weights_from_a_given_energy():
    lg = torch.randn(4, 3)
    t = weat_terms_from_logits(lg, lg, torch.zeros(4, dtype=torch.long), energy_for_weights=torch.zeros(4))
    assert torch.allclose(t.weights, torch.full((4,), 1 / math.log(2)))
    with pytest.raises(ValueError, match="shape"):
        weat_terms_from_logits(lg, lg, torch.zeros(4, dtype=torch.long), energy_for_weights=torch.zeros(3))


def test_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        weat_weights([0.0])
    with pytest.raises(TypeError, match="float"):
        weat_weights(torch.tensor([1, 2]))
