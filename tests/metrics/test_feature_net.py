"""Metrics in a feature network other than Inception: names, layers, CIFAR-10 halves, accuracy measures."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from ebmlens.metrics import class_diversity, conditional_accuracy, evaluate


@pytest.fixture(scope="module")
def halves(cifar_test):
    idx = cifar_test.strided(400)
    return cifar_test.tensor(idx[0::2]), cifar_test.tensor(idx[1::2])


def test_fid_of_cifar_halves_is_small_and_grows_with_corruption(halves, small_net):
    a, b = halves
    net = small_net()
    g = torch.Generator().manual_seed(0)

    def fd(x):
        return evaluate(a, x, "fid", net).values["fd_smallnet"]

    base = fd(b)
    far = fd(torch.rand(b.shape, generator=g))           # uniform noise images
    assert 0 < base < 0.1 * far
    noised = [fd((b + s * torch.randn(b.shape, generator=g)).clamp(0, 1)) for s in (0.05, 0.1, 0.2)]
    blurred = [fd(TF.gaussian_blur(b, 9, s)) for s in (1.0, 1.5, 2.5)]
    for seq in ([base, *noised], [base, *blurred]):
        assert all(x < y for x, y in zip(seq, seq[1:])), seq


def test_result_names_say_which_network(halves, small_net):
    a, b = halves
    r = evaluate(a[:60], b[:40], ("is", "fid", "kid"), small_net(), splits=3, kid_subsets=5)
    assert set(r.values) == {"is_smallnet_mean", "is_smallnet_std", "fd_smallnet", "kd_smallnet_mean",
                             "kd_smallnet_std"}
    assert r.fid is None and r.inception_score is None and r.kid is None and r.is_mean is None
    assert (r.network, r.layer, r.standard) == ("SmallNet", "fc:input", False)
    assert (r.num_images, r.num_ref_images, r.splits, r.kid_subset_size) == (60, 40, 3, 40)
    assert "ebmlens.metrics.frechet_distance" in r.implementation["fd_smallnet"]
    d = json.loads(r.to_json())
    assert d["values"]["fd_smallnet"] == pytest.approx(r.values["fd_smallnet"])
    assert d["image_size"] == [32, 32] and d["weights"] is None
    assert 1.0 <= r.values["is_smallnet_mean"] <= 10.0


def test_set_against_itself_is_zero(halves, small_net):
    a, _ = halves
    r = evaluate(a, a, "fid,kid", small_net(), kid_subsets=3, feature_name="mine")
    assert abs(r.values["fd_mine"]) < 1e-9
    assert abs(r.values["kd_mine_mean"]) < 1e-6


def test_energy_model_uses_its_normalization_and_restores_modes(halves, tiny_model):
    a, b = halves
    tiny_model.classifier.train()
    r = evaluate(a[:50], b[:50], "fid,is", tiny_model, splits=5)
    assert tiny_model.classifier.training                 # the caller's mode is left as it was
    assert r.network == "test:tiny" and "fd_test-tiny" in r.values and "is_test-tiny_mean" in r.values
    # the same numbers by hand: normalized input, penultimate features of the classifier
    tiny_model.eval()
    feats = []
    h = tiny_model.classifier.fc.register_forward_pre_hook(lambda m, i: feats.append(i[0]))
    with torch.no_grad():
        tiny_model.logits(torch.cat([a[:50], b[:50]]).mul(255).round().div(255))
    h.remove()
    from ebmlens.metrics import feature_stats, frechet_distance

    f = feats[0].double().numpy()
    assert r.values["fd_test-tiny"] == pytest.approx(frechet_distance(*feature_stats(f[:50]), *feature_stats(f[50:])),
                                                     rel=1e-4, abs=1e-12)


def test_layer_by_name(halves, small_net):
    a, b = halves
    net = small_net()
    r = evaluate(a[:40], b[:40], "fid", net, layer="features.3")
    assert r.layer == "features.3" and r.values["fd_smallnet"] > 0
    r_pool = evaluate(a[:40], b[:40], "fid", net, layer="flatten")
    r_default = evaluate(a[:40], b[:40], "fid", net)
    assert r_pool.values["fd_smallnet"] == pytest.approx(r_default.values["fd_smallnet"], rel=1e-6)
    with pytest.raises(ValueError, match="no layer 'featurs.3'.*did you mean features.3"):
        evaluate(a[:40], b[:40], "fid", net, layer="featurs.3")


class ColorClassifier(nn.Module):
    """Logits = the mean of each colour channel: class 0 red, 1 green, 2 blue."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 10


def _solid(colors, n, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(colors) * n, 3, 8, 8)
    y = torch.arange(len(colors)).repeat_interleave(n)
    for i, c in enumerate(colors):
        x[i * n:(i + 1) * n, c] = 0.8
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1), y


def test_conditional_accuracy():
    x, y = _solid([0, 1, 2], 5)
    r = conditional_accuracy(x, y, ColorClassifier())
    assert r.overall == 1.0 and r.per_class == {0: 1.0, 1: 1.0, 2: 1.0} and r.counts == {0: 5, 1: 5, 2: 5}
    y_wrong = y.clone()
    y_wrong[:5] = 1                                      # the 5 red images claim "green"
    r = conditional_accuracy(x, y_wrong, ColorClassifier())
    assert r.overall == pytest.approx(10 / 15) and r.per_class[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="14 labels for 15 images"):
        conditional_accuracy(x, y[:14], ColorClassifier())
    with pytest.raises(ValueError, match=r"must be class indices in \[0, 2\].*found 7"):  # not counted as a miss
        conditional_accuracy(x, torch.where(y == 0, 7, y), ColorClassifier())


class PixelFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(self.flat(x))


def test_class_diversity_is_zero_for_copies_and_grows_with_spread():
    net = PixelFeatures()
    x, y = _solid([0, 1], 6)
    assert class_diversity(x, y, net).overall == pytest.approx(0.0, abs=1e-6)
    d1 = class_diversity(*_solid([0, 1], 6, noise=0.02), net)
    d2 = class_diversity(*_solid([0, 1], 6, noise=0.1), net)
    assert 0 < d1.overall < d2.overall and set(d2.per_class) == {0, 1} and d2.layer == "fc:input"
    # the raw pixels are the features here: check one class by hand
    xs, ys = _solid([0, 1], 6, noise=0.1)
    xq = xs.mul(255).round().div(255)[ys == 1].flatten(1).double()
    assert d2.per_class[1] == pytest.approx(float(torch.pdist(xq).mean()), rel=1e-5)
