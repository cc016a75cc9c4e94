"""Initializer options that change what is drawn: DataInit(same_class), PCAInit(n_images),
GaussianInit(scale), and presets built from a data spec (statistics fitted on that data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebmlens import sampling as S
from ebmlens.data import ImageData, load_data
from ebmlens.sampling.pipeline import stage_config

from .conftest import SMALL_K, SMALL_SHAPE, make_small_model, synthetic_images


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- DataInit
def _indexed_images(per_class: int = 5) -> ImageData:
    """Image j is filled with the value j (uint8), so a seed tells which image it came from; labels
    interleave (j % K) so that a class's images are not a contiguous block."""
    n = SMALL_K * per_class
    c, h, w = SMALL_SHAPE
    arr = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, h, w, c)).copy()
    return ImageData(arr, np.arange(n) % SMALL_K, [f"c{k}" for k in range(SMALL_K)], "test:indexed")


def _picked(x: torch.Tensor) -> torch.Tensor:
    idx = (x * 255).round().long()
    assert torch.equal(idx, idx[:, :1, :1, :1].expand_as(idx))  # a whole seed image, unchanged
    return idx[:, 0, 0, 0]


def test_data_init_same_class_draws_seeds_of_the_target_class_only():
    data, model = _indexed_images(), make_small_model()
    labels = torch.as_tensor(data.labels)
    y = torch.arange(200) % SMALL_K
    same = _picked(S.DataInit(data, same_class=True)(model, y, generator=_gen(0)))
    assert torch.equal(labels[same], y)
    for k in range(SMALL_K):  # every image of the class is reachable, none of another
        assert set(same[y == k].tolist()) == set(torch.nonzero(labels == k).flatten().tolist())
    anyc = _picked(S.DataInit(data, same_class=False)(model, y, generator=_gen(0)))
    assert 0.5 < float((labels[anyc] != y).float().mean()) < 0.95  # ~3/4 come from another class
    assert len(set(anyc.tolist())) == len(data)
    # the choice follows the generator
    again = _picked(S.DataInit(data, same_class=True)(model, y, generator=_gen(0)))
    other = _picked(S.DataInit(data, same_class=True)(model, y, generator=_gen(1)))
    assert torch.equal(again, same) and not torch.equal(other, same)


def test_data_init_same_class_errors():
    data, model = _indexed_images(), make_small_model()
    with pytest.raises(ValueError, match="needs labelled images"):
        S.DataInit(torch.rand(4, *SMALL_SHAPE, generator=_gen()), same_class=True)
    only_two = ImageData(data.images[:8], data.labels[:8] % 2, data.class_names, "test:two")
    with pytest.raises(ValueError, match="no image of class 3"):
        S.DataInit(only_two, same_class=True)(model, torch.tensor([0, 3]), generator=_gen())


def test_data_init_noise_adds_gaussian_noise_of_that_std_per_sample():
    """``clamp(x_j + noise * z, 0, 1)``: around a mid-grey seed (no clamping) the residual is N(0, noise^2),
    a fresh draw per sample that follows the generator; ``noise=0`` returns the seeds themselves."""
    model = make_small_model()
    grey = torch.full((3, *SMALL_SHAPE), 0.5)
    y = torch.arange(40) % SMALL_K
    assert torch.equal(S.DataInit(grey)(model, y, generator=_gen(0)), torch.full((40, *SMALL_SHAPE), 0.5))
    for s in (0.02, 0.1):
        r = (S.DataInit(grey, noise=s)(model, y, generator=_gen(0)) - 0.5).flatten(1)  # (40, C*H*W)
        assert abs(float(r.std()) / s - 1) < 0.05 and abs(float(r.mean())) < 0.05 * s
        assert bool(((r.std(1) / s - 1).abs() < 0.3).all())  # every sample is noised
        assert float((r[0] - r[1]).abs().max()) > s  # independent draws, not one z for all
    again = S.DataInit(grey, noise=0.1)(model, y, generator=_gen(0))
    assert torch.equal(again, S.DataInit(grey, noise=0.1)(model, y, generator=_gen(0)))
    assert not torch.equal(again, S.DataInit(grey, noise=0.1)(model, y, generator=_gen(1)))


# -------------------------------------------------------------------------------------------- PCAInit
def test_pca_init_n_images_sets_the_singular_values(small_stats):
    """``s_i = sqrt((n - 1) lambda_i)``: the coefficient spread along component i is
    ``sigma sqrt((n - 1) lambda_i)``, so n = 401 gives exactly twice the spread of n = 101 (same z)."""
    model = make_small_model()
    y = torch.zeros(3000, dtype=torch.long)
    mean, u = small_stats.mean[0].double(), small_stats.eigvecs[0].double()
    m = small_stats.retained_components(0, 0.95)
    coefs = {}
    for n in (101, 401):
        init = S.PCAInit(small_stats, sigma=0.005, n_images=n)
        x = init(model, y, generator=_gen(0)).flatten(1).double()
        assert float(x.min()) > 0 and float(x.max()) < 1                # no clamping: the identity is exact
        coefs[n] = (x - mean) @ u[:, :m]
        lam = small_stats.eigvals[0, :m].double()
        assert torch.allclose(coefs[n].var(0), 0.005 ** 2 * (n - 1) * lam, rtol=0.15)
        assert stage_config(init)["n_images"] == n                       # what run.json records
    assert torch.allclose(coefs[401], 2 * coefs[101], rtol=1e-3, atol=1e-5)
    # None uses the class counts of the statistics (64 images per class here)
    x = S.PCAInit(small_stats, sigma=0.005)(model, y, generator=_gen(0)).flatten(1).double()
    assert int(small_stats.counts[0]) == 64
    assert torch.allclose((x - mean) @ u[:, :m], coefs[101] * (63 / 100) ** 0.5, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="n_images must be >= 2"):
        S.PCAInit(small_stats, n_images=1)


# ---------------------------------------------------------------------------------------- GaussianInit
@pytest.fixture(scope="module")
def mid_stats():
    """Statistics of images around 0.5 with a small spread: seeds at scale <= 2 are almost never clamped."""
    g = _gen(3)
    y = torch.arange(400) % SMALL_K
    low = torch.nn.functional.interpolate(torch.randn(400, 3, 4, 4, generator=g), size=SMALL_SHAPE[1:],
                                          mode="bilinear", align_corners=False)
    x = 0.5 + 0.04 * low + 0.02 * torch.randn(400, *SMALL_SHAPE, generator=g)
    return S.class_stats(x, y)


@pytest.mark.parametrize("covariance", ["full", "lowrank"])
def test_gaussian_init_scale_multiplies_the_deviation(mid_stats, covariance):
    model = make_small_model()
    y = torch.arange(2000) % SMALL_K
    mean = mid_stats.mean[y].view(-1, *SMALL_SHAPE)
    dev = {s: S.GaussianInit(mid_stats, covariance=covariance, scale=s)(model, y, generator=_gen(0)) - mean
           for s in (0.0, 0.5, 1.0, 2.0)}
    assert float(dev[0.0].abs().max()) < 1e-6                          # scale 0: the class mean
    inside = (dev[2.0] + mean > 0) & (dev[2.0] + mean < 1)                # not clamped at the largest scale
    assert float(inside.float().mean()) > 0.999
    for s in (0.5, 2.0):
        assert torch.allclose(dev[s][inside], s * dev[1.0][inside], atol=1e-5)
    # and scale 1 is the fitted Gaussian: its pixel spread is that of the statistics
    want = mid_stats.diag[y].view(-1, *SMALL_SHAPE).mean().sqrt()
    assert abs(float(dev[1.0].pow(2).mean().sqrt()) / float(want) - 1) < 0.05
    assert stage_config(S.GaussianInit(mid_stats, scale=0.5))["scale"] == 0.5


# --------------------------------------------------------------------------------------- presets, data=
@pytest.fixture
def npz_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    x, y = synthetic_images(n_per_class=40, seed=5)
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    p = tmp_path / "toy.npz"
    np.savez(p, images=arr, labels=y.numpy())
    return f"npz:{p}"


@pytest.mark.parametrize("name", ["mirza2024", "santurkar2019"])
def test_preset_from_data_spec_fits_statistics_on_that_data(npz_spec, name, small_stats):
    model = make_small_model()
    pipe = S.presets.get(name, data=npz_spec, steps=1)
    direct = S.class_stats(load_data(npz_spec, "train"), cache=False)
    got = pipe.init.stats
    assert int(got.counts.sum()) == 160 and got.fingerprint["sha256"] == direct.fingerprint["sha256"]
    assert torch.allclose(got.mean, direct.mean) and not torch.allclose(got.mean, small_stats.mean, atol=1e-2)
    y = torch.arange(8) % SMALL_K
    from_spec = pipe.init(model, y, generator=_gen(0))
    from_stats = S.presets.get(name, stats=direct, steps=1).init(model, y, generator=_gen(0))
    assert torch.equal(from_spec, from_stats)
    # stats= wins over data= (the data is then only for dat2025's seeds)
    assert S.presets.get(name, stats=small_stats, data=npz_spec, steps=1).init.stats is small_stats
