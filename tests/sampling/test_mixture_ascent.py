"""Ours: class-mixture statistics (``class_mixture``), per-sample stopping in TargetedPGD
(``stop_at``), and the ``mixture-ascent`` preset built from them."""

from __future__ import annotations

import pytest
import torch

from ebmlens import sampling as S
from ebmlens.stats import ClassStats, class_mixture

from .conftest import SMALL_K, SMALL_SHAPE, make_small_model


def two_mode_images(n: int = 60, seed: int = 0):
    """Per class two well separated modes: dark (0.2) for the first third, light (0.8) for the rest."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(SMALL_K):
        level = torch.where(torch.arange(n) < n // 3, 0.2, 0.8).view(-1, 1, 1, 1)
        xs.append((level + 0.02 * k + 0.03 * torch.randn(n, *SMALL_SHAPE, generator=g)).clamp(0, 1))
        ys.append(torch.full((n,), k))
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def mixture():
    x, y = two_mode_images()
    return class_mixture(x, y, components=2, rank=4, cluster_downsample=2)


def test_mixture_finds_the_modes_and_weights_them_by_count(mixture):
    assert mixture.row_class == (0, 0, 1, 1, 2, 2, 3, 3) and mixture.is_mixture and mixture.num_classes == SMALL_K
    levels = mixture.mean.mean(1)
    for k in range(SMALL_K):
        lo, hi = sorted(levels[2 * k: 2 * k + 2].tolist())
        assert abs(lo - (0.2 + 0.02 * k)) < 0.02 and abs(hi - (0.8 + 0.02 * k)) < 0.02
    assert sorted(mixture.counts[:2].tolist()) == [20, 40]
    assert torch.allclose(mixture.prior, torch.full((SMALL_K,), 1 / SMALL_K))


def test_gaussian_init_draws_components_by_weight_and_per_sample(mixture):
    model = make_small_model()
    y = torch.full((600,), 1)
    x = S.GaussianInit(mixture)(model, y, generator=torch.Generator().manual_seed(0))
    dark = (x.mean((1, 2, 3)) < 0.5).float().mean()
    assert abs(float(dark) - 1 / 3) < 0.06                 # components drawn in proportion to their images
    from ebmlens.rng import SampleStreams
    a = S.GaussianInit(mixture)(model, torch.tensor([1, 2, 3]), generator=SampleStreams(5, [7, 8, 9]))
    b = S.GaussianInit(mixture)(model, torch.tensor([3, 1]), generator=SampleStreams(5, [9, 7]))
    assert torch.equal(a[[2, 0]], b)                       # a sample's start never depends on its batch


def test_mixture_round_trip_and_refusals(tmp_path, mixture):
    p = mixture.save(tmp_path / "mix.safetensors")
    back = ClassStats.load(p)
    assert back.row_class == mixture.row_class and back.fingerprint == mixture.fingerprint
    with pytest.raises(ValueError, match="PCAInit takes one Gaussian per class"):
        S.PCAInit(mixture)
    with pytest.raises(ValueError, match="pass u"):
        mixture.rows(torch.tensor([0]))
    x, y = two_mode_images(n=6)
    with pytest.raises(ValueError, match="has 6 images; a mixture component needs min_images=8"):
        class_mixture(x, y, components=2, rank=4)
    with pytest.raises(ValueError, match="components must be an int >= 1"):
        class_mixture(x, y, components=0)


def test_kmeans_merges_clusters_too_small_for_a_covariance():
    x, y = two_mode_images(n=30)
    m = class_mixture(x, y, components=6, rank=2, min_images=9, cluster_downsample=2)
    assert all(c >= 9 for c in m.counts.tolist()) and int(m.counts.sum()) == 30 * SMALL_K


class CountRows(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []

    def forward(self, x):
        if torch.is_grad_enabled():
            self.rows.append(x.shape[0])
        return self.net(x)


def test_stop_at_stops_each_sample_once_it_is_sure_and_shrinks_the_batch():
    model = make_small_model(seed=2)
    x0 = torch.rand(16, *SMALL_SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % SMALL_K
    counting = CountRows(model)
    stage = S.TargetedPGD(S.Unconstrained(), steps=12, step_size=0.2, loss="joint", stop_at=0.7)
    seen = []
    out = stage(counting, x0, y, callback=lambda i, loss, logits=None: seen.append((loss.shape, logits.shape)))
    with torch.no_grad():
        p0 = model(x0).softmax(1)[torch.arange(16), y]
        p1 = model(out).softmax(1)[torch.arange(16), y]
    plain = S.TargetedPGD(S.Unconstrained(), steps=12, step_size=0.2, loss="joint")(model, x0, y)
    sure = p0 >= 0.7
    assert torch.equal(out[sure], x0[sure])                # already sure: never moved
    assert counting.rows[0] == 16 and counting.rows == sorted(counting.rows, reverse=True)
    assert sum(counting.rows) < 12 * 16                     # fewer gradient evaluations than 12 full passes
    moved = ~sure & (p1 >= 0.7)
    assert moved.any() and ((out - x0).flatten(1).norm(dim=1)[moved] < (plain - x0).flatten(1).norm(dim=1)[moved]).all()
    assert seen == [(torch.Size([16]), torch.Size([16, SMALL_K]))] * 12  # every row, every step
    with pytest.raises(ValueError, match="stop_at must be a probability in"):
        S.TargetedPGD(S.Unconstrained(), steps=3, step_size=0.2, stop_at=1.5)
    with pytest.raises(ValueError, match="do not combine"):
        S.TargetedPGD(S.L2Ball(1.0), steps=3, step_size=0.2, stop_at=0.5, keep_best=True)


def test_mixture_ascent_preset(mixture, monkeypatch):
    p = S.presets.get("mixture-ascent", stats=mixture)
    assert p.init.stats is mixture and p.stages[0] == S.TargetedPGD(S.Unconstrained(), steps=22, step_size=0.2,
                                                                      loss="joint", stop_at=0.9)
    model = make_small_model(seed=3)
    y = torch.arange(8) % SMALL_K
    out = p(model, y, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (8, *SMALL_SHAPE)
    import ebmlens.data
    monkeypatch.setattr(ebmlens.data, "default_cifar10_path", lambda: None)
    with pytest.raises(ValueError, match="fits class mixtures on training images: pass data="):
        S.presets.get("mixture-ascent")
