"""Analytic toys with known answers: SGLD on a quadratic energy, PGD in its balls, the fitted
Gaussian, class statistics vs direct computation, batch-size invariance with per-sample streams."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmlens import rng
from ebmlens import sampling as S
from ebmlens.energy import EnergyModel

from .conftest import SMALL_K, SMALL_SHAPE


class Quadratic(nn.Module):
    """logits_k(x) = -||x - m_k||^2 / (2 v0), so E(x, y) = ||x - m_y||^2 / (2 v0)."""

    def __init__(self, centers: torch.Tensor, v0: float) -> None:
        super().__init__()
        self.register_buffer("centers", centers)  # (K, D)
        self.v0 = v0

    def forward(self, x):
        d = x.flatten(1)[:, None, :] - self.centers[None]
        return -(d ** 2).sum(-1) / (2 * self.v0)


def quadratic_model(v0=0.01):
    centers = torch.tensor([[0.3, 0.5, 0.7, 0.4], [0.6, 0.2, 0.5, 0.5]])
    return EnergyModel(Quadratic(centers, v0), input_shape=(1, 2, 2), num_classes=2), centers


def test_sgld_reaches_the_stationary_mean_and_variance_of_a_quadratic_energy():
    v0, a = 0.01, 0.002
    model, centers = quadratic_model(v0)
    sigma = math.sqrt(a)                              # Langevin: noise sqrt(a) for gradient step a/2
    rho = 1 - a / (2 * v0)                            # x' - m = rho (x - m) + sigma z
    var_theory = sigma ** 2 / (1 - rho ** 2)          # AR(1) stationary variance (-> v0 as a -> 0)
    n = 1000
    y = torch.arange(n) % 2
    x0 = torch.full((n, 1, 2, 2), 0.5)
    stage = S.SGLD(step_size=a, noise=sigma, steps=150, clamp=None)
    x = stage(model, x0, y, generator=torch.Generator().manual_seed(0)).flatten(1)
    for k in range(2):
        xk = x[y == k]
        se = math.sqrt(var_theory / xk.shape[0])
        assert torch.all((xk.mean(0) - centers[k]).abs() < 4 * se)
        rel = xk.var(0) / var_theory
        assert torch.all((rel - 1).abs() < 0.15), rel
    assert abs(var_theory / v0 - 1) < 0.06  # the discrete chain is close to exp(-E)


def test_sgld_inner_steps_and_clipping_follow_the_formula():
    model, centers = quadratic_model(1.0)
    x0 = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    g = (x0.flatten(1) - centers[y]).view_as(x0)      # dE/dx for v0 = 1
    out = S.SGLD(step_size=0.2, noise=0.0, steps=1, inner_steps=3, grad_clip=0.1, clamp=None)(model, x0, y)
    assert torch.allclose(out, x0 - 3 * 0.1 * g.clamp(-0.1, 0.1), atol=1e-6)
    # marginal energy: moves toward the softmax-weighted centres, away from neither
    out_m = S.SGLD(step_size=0.2, noise=0.0, steps=1, energy="marginal", clamp=None)(model, x0, y)
    assert torch.allclose(out_m[0], out_m[1])


def test_momentum_sgld_follows_eq7_and_converges_to_the_minimum():
    model, centers = quadratic_model(1.0)
    x0 = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    eta, zeta = 0.3, 0.5
    out = S.MomentumSGLD(eta=eta, steps=2, momentum=zeta, noise=0.0, update_clip=None)(model, x0, y)
    x, v = x0.flatten(1).clone(), torch.zeros(2, 4)
    for _ in range(2):
        v = zeta * v - eta / 2 * (x - centers[y])
        x = (x + v).clamp(0, 1)
    assert torch.allclose(out.flatten(1), x, atol=1e-6)
    far = S.MomentumSGLD(eta=0.5, steps=200, momentum=0.5, noise=0.001)(model, x0, y)
    assert torch.allclose(far.flatten(1), centers[y], atol=0.01)
    clipped = S.MomentumSGLD(eta=0.5, steps=1, noise=0.0, update_clip=0.01)(model, x0, y)
    assert float((clipped - x0).abs().max()) <= 0.01 + 1e-7


@pytest.mark.parametrize("geometry", [S.L2Ball(0.5), S.LinfBall(8 / 255)])
@pytest.mark.parametrize("random_start", [False, True])
def test_targeted_pgd_stays_in_the_ball_and_lowers_the_targeted_loss(geometry, random_start, small_model):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, *SMALL_SHAPE, generator=g)
    with torch.no_grad():
        y = (small_model.logits(x0).argmax(1) + 1) % SMALL_K        # a target that is not the prediction
    losses = []
    stage = S.TargetedPGD(geometry, steps=10, step_size=geometry.eps / 4, random_start=random_start)
    x = stage(small_model, x0, y, generator=g, callback=lambda t, lv, logits: losses.append(lv))
    d = (x - x0).flatten(1)
    norm = d.norm(dim=1) if isinstance(geometry, S.L2Ball) else d.abs().amax(1)
    assert float(norm.max()) <= geometry.eps + 1e-5
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    ce = lambda z: torch.nn.functional.cross_entropy(small_model.logits(z), y, reduction="none")  # noqa: E731
    with torch.no_grad():
        assert float(ce(x).mean()) < 0.8 * float(ce(x0).mean())
        assert float((ce(x) < ce(x0)).float().mean()) >= 0.9
    assert len(losses) == 10 and float(losses[-1].mean()) < float(losses[0].mean())


def test_unconstrained_pgd_is_dat_normalized_ascent(small_model):
    x0 = torch.rand(4, *SMALL_SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4)
    out = S.TargetedPGD(S.Unconstrained(), steps=1, step_size=0.2, loss="joint", clamp=None)(small_model, x0, y)
    xg = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(small_model.logits(xg).gather(1, y[:, None]).sum(), xg)
    want = x0 + 0.2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(out, want, atol=1e-6)


def _cov(x):
    return torch.cov(x.T.double())


def test_class_stats_equal_a_direct_computation(small_data):
    x, y = small_data
    st = S.class_stats(x, y, reg=1e-4, batch_size=50)     # several batches per class
    assert st.kind == "full" and st.shape == SMALL_SHAPE and st.num_classes == SMALL_K
    for k in range(SMALL_K):
        xk = x[y == k].flatten(1).double()
        cov = _cov(xk)
        assert torch.allclose(st.mean[k].double(), xk.mean(0), atol=1e-6)
        assert torch.allclose(st.diag[k].double(), cov.diagonal(), atol=1e-6)
        ll = st.chol[k].double() @ st.chol[k].double().T
        assert torch.allclose(ll, cov + 1e-4 * torch.eye(cov.shape[0], dtype=cov.dtype), atol=1e-6)
        lam = torch.linalg.eigvalsh(cov).flip(0)
        m = st.retained_components(k, 0.99)
        assert torch.allclose(st.eigvals[k, :m].double(), lam[:m], rtol=1e-3, atol=1e-7)
        assert float(st.total_var[k]) == pytest.approx(float(cov.trace()), rel=1e-5)
        assert float(lam[:m].sum() / cov.trace()) >= 0.99
        u = st.eigvecs[k, :, :m].double()
        assert torch.allclose(u.T @ u, torch.eye(m, dtype=u.dtype), atol=1e-4)


def test_gaussian_init_samples_have_the_fitted_mean_and_covariance(small_stats):
    model = EnergyModel(nn.Flatten(), input_shape=SMALL_SHAPE, num_classes=SMALL_K)
    n = 6000
    y = torch.full((n,), 2)
    g = torch.Generator().manual_seed(0)
    x = S.GaussianInit(small_stats, clamp=False)(model, y, generator=g).flatten(1).double()
    target = small_stats.chol[2].double() @ small_stats.chol[2].double().T     # Sigma + reg I
    sd = target.diagonal().sqrt()
    assert torch.all((x.mean(0) - small_stats.mean[2]).abs() < 5 * sd / math.sqrt(n))
    corr_err = (_cov(x) - target) / torch.outer(sd, sd)
    assert float(corr_err.abs().max()) < 6 / math.sqrt(n)        # SE of a correlation ~ 1/sqrt(n)
    # low-rank + diagonal: exact pixel variances and exact variances along the kept components
    xl = S.GaussianInit(small_stats, covariance="lowrank", rank=5, clamp=False)(model, y, generator=g).flatten(1)
    xl = xl.double()
    want_diag = small_stats.diag[2].double() + small_stats.reg
    assert torch.allclose(xl.var(0), want_diag, rtol=6 * math.sqrt(2 / n))
    u = small_stats.eigvecs[2, :, :5].double()
    proj_var = ((xl - xl.mean(0)) @ u).var(0)
    lam = small_stats.eigvals[2, :5].double() + (u ** 2 * small_stats.lowrank_diag(5)[2].double()[:, None]).sum(0)
    assert torch.allclose(proj_var, lam, rtol=6 * math.sqrt(2 / n))


def test_pca_init_scales_components_by_sigma_times_singular_values(small_stats):
    model = EnergyModel(nn.Flatten(), input_shape=SMALL_SHAPE, num_classes=SMALL_K)
    n = 4000
    y = torch.zeros(n, dtype=torch.long)
    x = S.PCAInit(small_stats, sigma=0.01, variance=0.9)(model, y, generator=torch.Generator().manual_seed(0))
    x = x.flatten(1).double()
    m = small_stats.retained_components(0, 0.9)
    u = small_stats.eigvecs[0].double()
    coef = (x - small_stats.mean[0].double()) @ u
    sv2 = small_stats.eigvals[0, :m].double() * (int(small_stats.counts[0]) - 1)
    assert torch.allclose(coef[:, :m].var(0), 0.01 ** 2 * sv2, rtol=0.1)
    assert float(coef[:, m:].abs().max()) < 1e-4                  # nothing outside the kept components
    assert m < small_stats.rank


def _file_arrays(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def test_compact_stats_are_small_and_round_trip(tmp_path, small_stats):
    k, d, r = small_stats.num_classes, small_stats.dim, 6
    c = small_stats.compact(rank=r)
    assert c.kind == "compact" and c.rank == r and c.chol is None
    p = c.save(tmp_path / "s.safetensors")
    # the file holds the low-rank pieces only, eigenvectors as float16, and no Cholesky factor
    arrays = _file_arrays(p)
    assert set(arrays) == {"mean", "diag", "eigvals", "total_var", "counts", "eigvecs"}
    assert arrays["eigvecs"].dtype == torch.float16 and tuple(arrays["eigvecs"].shape) == (k, d, r)
    payload = sum(t.numel() * t.element_size() for t in arrays.values())
    assert payload == k * d * r * 2 + 2 * k * d * 4 + k * r * 4 + k * 4 + k * 8
    size = p.stat().st_size
    assert payload <= size <= payload + 4096, (size, payload)   # arrays plus a small JSON header
    full_path = small_stats.save(tmp_path / "full")
    assert full_path.stat().st_size >= k * d * d * 4 > 20 * size  # the full factor alone is K x D x D floats
    # load equals save: exact for float32 arrays, float16 rounding for the eigenvectors
    back = S.ClassStats.load(p)
    assert back.kind == "compact" and back.chol is None and back.shape == c.shape
    assert back.class_names == small_stats.class_names and back.reg == small_stats.reg
    for name in ("mean", "diag", "total_var"):
        assert torch.equal(getattr(back, name), getattr(small_stats, name)), name
    assert torch.equal(back.eigvals, small_stats.eigvals[:, :r]) and torch.equal(back.counts, small_stats.counts)
    assert torch.equal(back.eigvecs, c.eigvecs)                   # compact() already rounded to float16
    want = small_stats.eigvecs[:, :, :r]
    assert torch.allclose(back.eigvecs, want, rtol=2 ** -10, atol=1e-7) and not torch.equal(back.eigvecs, want)
    assert back.fingerprint["sha256"] == c.fingerprint["sha256"]
    full = S.ClassStats.load(full_path)
    assert torch.equal(full.chol, small_stats.chol) and torch.equal(full.eigvecs, small_stats.eigvecs)
    # bundled-size budget, measured on a real file: 10 classes of 3x32x32 at the default rank 48
    g = torch.Generator().manual_seed(0)
    kb, db, rb = 10, 3 * 32 * 32, 48
    big = S.ClassStats(mean=torch.rand(kb, db, generator=g), diag=torch.rand(kb, db, generator=g),
                       eigvecs=torch.randn(kb, db, rb, generator=g), eigvals=torch.rand(kb, rb, generator=g),
                       total_var=torch.ones(kb), counts=torch.full((kb,), 5000), shape=(3, 32, 32))
    assert big.save(tmp_path / "bundled").stat().st_size < 3.5e6
    with pytest.raises(ValueError, match="components"):
        small_stats.compact(rank=small_stats.rank + 1)
    with pytest.raises(ValueError, match="not an ebmlens"):
        from safetensors.torch import save_file
        save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        S.ClassStats.load(tmp_path / "x.safetensors")


def test_class_stats_from_data_stream_and_cache(tmp_path, monkeypatch, small_data):
    import numpy as np

    from ebmlens.data import ImageData

    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path))
    x, y = small_data
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    data = ImageData(arr, y.numpy(), [f"c{i}" for i in range(SMALL_K)], "npz:toy@train", split="train")
    st = S.class_stats(data, batch_size=16)
    ref = S.class_stats(data.tensor(), data.label_tensor())
    assert torch.allclose(st.mean, ref.mean, atol=1e-6) and torch.allclose(st.chol, ref.chol, atol=1e-5)
    assert st.class_names == ("c0", "c1", "c2", "c3") and st.split == "train"
    cached = list((tmp_path / "stats").glob("*.safetensors"))
    assert len(cached) == 1
    again = S.class_stats(data)
    assert torch.equal(again.chol, st.chol)
    sub = S.class_stats(data, n=128, full=False)
    assert sub.kind == "compact" and int(sub.counts.sum()) == 128
    down = S.class_stats(data, downsample=2, cache=False)
    assert down.shape == (3, 4, 4)
    model = EnergyModel(nn.Flatten(), input_shape=SMALL_SHAPE, num_classes=SMALL_K)
    up = S.GaussianInit(down)(model, torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert up.shape == (4, *SMALL_SHAPE)
    assert torch.equal(up[:, :, 0::2, 0::2], up[:, :, 1::2, 1::2])        # nearest upsampling


def test_class_stats_bad_input():
    with pytest.raises(ValueError, match="labels are required"):
        S.class_stats(torch.rand(4, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        S.class_stats(torch.rand(3, 3, 2, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="downsample"):
        S.class_stats(torch.rand(4, 3, 2, 2), torch.tensor([0, 0, 1, 1]), downsample=0)
    with pytest.raises(TypeError, match="data spec"):
        S.class_stats(12)
    with pytest.raises(FileNotFoundError):
        S.ClassStats.load("/nonexistent/stats.safetensors")


def _all_stages_pipeline(init):
    return S.Pipeline(init, [S.TargetedPGD(S.L2Ball(0.5), steps=2, step_size=0.2, random_start=True),
                             S.SGLD(step_size=0.01, noise=0.02, steps=2),
                             S.MomentumSGLD(eta=0.05, steps=2, noise=0.05),
                             S.Contrast(0.9), S.Clamp()])


@pytest.mark.parametrize("init_name", ["GaussianInit", "PCAInit", "NoiseInit", "DataInit"])
def test_batch_size_invariance_with_sample_streams(init_name, small_model, small_stats, small_data):
    init = {"GaussianInit": S.GaussianInit(small_stats), "PCAInit": S.PCAInit(small_stats, sigma=0.05),
            "NoiseInit": S.NoiseInit(), "DataInit": S.DataInit(small_data[0], noise=0.05)}[init_name]
    pipe = _all_stages_pipeline(init)
    n = 11
    y = torch.arange(n) % SMALL_K
    whole = pipe(small_model, y, generator=rng.SampleStreams(5, range(n)))
    parts = [pipe(small_model, y[s:e], generator=rng.SampleStreams(5, range(s, e))) for s, e in ((0, 4), (4, 11))]
    joined = torch.cat([p.images for p in parts])
    assert float((whole.images - joined).abs().max()) < 1e-5
    assert not torch.allclose(whole.images[0], whole.images[SMALL_K])   # same class, different streams
    # unconditional labels from the prior are per-stream too
    ya = S.draw_labels(n, small_stats.prior, rng.SampleStreams(1, range(n)))
    yb = torch.cat([S.draw_labels(e - s, small_stats.prior, rng.SampleStreams(1, range(s, e)))
                    for s, e in ((0, 3), (3, 11))])
    assert torch.equal(ya, yb)
