"""OOD detection: the metrics against counts by hand, the scores against their formulas, the report's
contracts (batch-size independence, JSON round trip, plot), the constructed sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebmlens.analysis import OODReport, ood_report
from ebmlens.analysis._ood_metrics import auroc, average_precision, bootstrap_ood_metrics, fpr_at_tpr, ood_metrics
from ebmlens.analysis.ood import score_batch
from ebmlens.data import ImageData
from ebmlens.data.constructed import CORRUPTIONS, corrupt_data, interp_data, resolve_ood, synthetic_data

from .conftest import make_image_data, make_linear_model


# --------------------------------------------------------------------------- metrics by hand
def test_perfect_separation_is_exactly_one():
    s_in, s_out = np.linspace(1.0, 2.0, 37), np.linspace(-3.0, 0.99, 41)
    m = ood_metrics(s_in, s_out)
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0 and m["fpr95"] == 0.0
    iv = bootstrap_ood_metrics(s_in, s_out, n_boot=50)["auroc"]
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert auroc(s_out, s_in) == 0.0


def test_same_distribution_gives_half():
    g = np.random.default_rng(12345)
    s = g.normal(size=20_000)
    assert abs(auroc(s[:10_000], s[10_000:]) - 0.5) < 0.02


def test_ties_equal_the_mann_whitney_count():
    s_in = np.array([3.0, 2.0, 2.0, 1.0, 0.0])
    s_out = np.array([2.0, 1.0, 1.0, 0.0, -1.0])
    # pairs won (ties 1/2): 3 -> 5; 2 -> 4 + 1/2 (twice); 1 -> 2 + 2 * 1/2; 0 -> 1 + 1/2
    assert auroc(s_in, s_out) == pytest.approx((5 + 4.5 + 4.5 + 3 + 1.5) / 25, abs=1e-15)


def test_fpr_at_95_tpr_by_hand():
    s_in = np.arange(1.0, 21.0)     # 20 in-scores: the 19th largest, 2, keeps TPR = 19/20 = 0.95
    s_out = np.arange(-5.0, 15.0)   # 20 out-scores; 2, 3, ..., 14 (13 of them) are >= 2
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(13 / 20, abs=1e-15)
    assert fpr_at_tpr(s_in, s_out + 0.5) == pytest.approx(13 / 20, abs=1e-15)  # 2.5 .. 14.5
    assert fpr_at_tpr(s_in, s_out - 0.5) == pytest.approx(12 / 20, abs=1e-15)  # 2.5 .. 13.5


def test_average_precision_by_hand():
    s_in, s_out = np.array([3.0, 1.0]), np.array([2.0, 0.0])
    # ranking 3(in) 2(out) 1(in) 0(out): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(s_in, s_out) == pytest.approx(0.5 + 1 / 3)
    assert ood_metrics(s_in, s_out)["aupr_out"] == pytest.approx(0.5 + 1 / 3)  # -0 (out) -1 (in) -2 (out) -3 (in)
    # tied scores enter together: one threshold holding 1 in and 1 out gives precision 1/2 there
    assert average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(0.5)


def test_bootstrap_is_seeded_and_resamples_each_side():
    g = np.random.default_rng(0)
    a, b = g.normal(1, 1, 60), g.normal(0, 1, 25)
    r1 = bootstrap_ood_metrics(a, b, n_boot=200, seed=3)
    r2 = bootstrap_ood_metrics(a, b, n_boot=200, seed=3)
    r3 = bootstrap_ood_metrics(a, b, n_boot=200, seed=4)
    assert r1 == r2 and r1 != r3
    for k, iv in r1.items():
        assert iv.low <= iv.high and iv.low < iv.high, k
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(np.array([np.nan]), b)


# --------------------------------------------------------------------------- scores
def test_scores_follow_their_formulas():
    m = make_linear_model(num_classes=4)
    m.temperature = 2.0
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = score_batch(m, x, ["energy", "max-logit", "msp", "grad-norm"])
    f = m(x).detach()
    assert torch.allclose(s["energy"], 2.0 * torch.logsumexp(f / 2.0, 1), atol=1e-5)  # -E(x) at T = 2
    assert torch.allclose(s["max-logit"], f.amax(1), atol=1e-6)
    assert torch.allclose(s["msp"], torch.softmax(f, 1).amax(1), atol=1e-6)
    for i in range(5):  # per image, -|| dE/dx ||
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(m.energy(xi).sum(), xi)
        assert s["grad-norm"][i].item() == pytest.approx(-gi.norm().item(), rel=1e-4)


def test_report_is_batch_size_independent_and_round_trips(tmp_path):
    m, data = make_linear_model(), make_image_data(n=30)

    def brightness(model, x):
        return x.mean(dim=(1, 2, 3))

    sets = {"noise": "synthetic:uniform", "flat": "synthetic:constant?n=11&seed=2"}
    r1 = ood_report(m, data, sets, ("energy", "grad-norm", brightness), n=None, batch_size=7, n_boot=50)
    r2 = ood_report(m, data, sets, ("energy", "grad-norm", brightness), n=None, batch_size=100, n_boot=50)
    for k in ("in", "noise", "flat"):
        for s in ("energy", "grad-norm", "brightness"):
            np.testing.assert_allclose(r1.values[k][s], r2.values[k][s], rtol=1e-5, atol=1e-6)
    assert len(r1.values["noise"]["energy"]) == 30 and len(r1.values["flat"]["energy"]) == 11
    assert r1["noise", "energy"].auroc == r2["noise", "energy"].auroc
    assert r1.config["seed"] == 0 and r1.config["n_boot"] == 50
    back = OODReport.from_json(r1.to_json(tmp_path / "r.json"))
    assert back["flat", "brightness"] == r1["flat", "brightness"]
    assert "| noise | 30 | energy |" in r1.table()
    pytest.importorskip("matplotlib")
    assert r1.plot(tmp_path / "ood.png").stat().st_size > 1000


def test_report_errors():
    m, data = make_linear_model(), make_image_data(n=10)
    with pytest.raises(ValueError, match="unknown OOD score 'enrgy'"):
        ood_report(m, data, ["synthetic:uniform"], "enrgy")
    with pytest.raises(ValueError, match="at least one OOD set"):
        ood_report(m, data, {})
    with pytest.raises(ValueError, match="one value per image"):
        ood_report(m, data, ["synthetic:uniform"], [lambda model, x: x.flatten()], n_boot=5)
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        ood_report(m, data, ["synthetic:pink"])


# --------------------------------------------------------------------------- constructed sets
def test_synthetic_sets():
    u = synthetic_data("synthetic:uniform?n=50&seed=1", shape=(3, 8, 8))
    assert u.images.shape == (50, 8, 8, 3) and u.fingerprint == synthetic_data("synthetic:uniform?n=50&seed=1",
                                                                               shape=(3, 8, 8)).fingerprint
    assert u.fingerprint != synthetic_data("synthetic:uniform?n=50&seed=2", shape=(3, 8, 8)).fingerprint
    gs = synthetic_data("synthetic:gaussian", n=400, shape=(3, 8, 8)).images / 255.0
    assert abs(gs.mean() - 0.5) < 0.01 and 0.2 < gs.std() < 0.26  # N(0.5, 0.25^2) clamped
    c = synthetic_data("synthetic:constant?n=4", shape=(3, 8, 8)).images
    assert all(len(np.unique(c[i].reshape(-1, 3), axis=0)) == 1 for i in range(4))
    # resolve_ood: size from the in-set, shape from the model
    d = resolve_ood("synthetic:uniform", make_image_data(n=13), make_linear_model())
    assert d.images.shape == (13, 8, 8, 3)
    with pytest.raises(ValueError, match="unknown option"):
        synthetic_data("synthetic:uniform?size=3")


def test_interpolations():
    base = make_image_data(n=20)
    same = interp_data("interp:x?lambda=1", base=base)
    np.testing.assert_array_equal(same.images, base.images)
    half = interp_data("interp:x?lambda=0.5&seed=3", base=base)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3)).numpy()
    want = np.clip(np.rint((base.images.astype(np.float64) + base.images[perm]) / 2.0), 0, 255)
    assert np.abs(half.images.astype(np.float64) - want).max() <= 1
    with pytest.raises(ValueError, match="lambda"):
        interp_data("interp:x?lambda=2", base=base)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_grow_with_severity(name):
    base = ImageData(np.random.default_rng(0).integers(40, 216, size=(6, 16, 16, 3), dtype=np.uint8),
                     np.arange(6) % 2, ["a", "b"], "toy")
    dist = []
    for sev in (1, 5):
        d = corrupt_data(f"corrupt:{name}@{sev}:toy", base=base)
        assert d.images.shape == base.images.shape and (d.labels == base.labels).all()
        dist.append(np.abs(d.images.astype(np.float64) - base.images).mean())
    assert 0 < dist[0] < dist[1], dist
    again = corrupt_data(f"corrupt:{name}@5:toy", base=base)
    assert again.fingerprint == corrupt_data(f"corrupt:{name}@5:toy", base=base).fingerprint


def test_contrast_and_corrupt_errors():
    base = make_image_data(n=4)
    d = corrupt_data("corrupt:contrast@5:toy", base=base)
    x = base.tensor()
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    want = ((x - m) * 0.15 + m).clamp(0, 1)
    assert (d.tensor() - want).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt_data("corrupt:fog@1:toy", base=base)
    with pytest.raises(ValueError, match="severity"):
        corrupt_data("corrupt:contrast@6:toy", base=base)
    with pytest.raises(ValueError, match="corrupt:NAME@SEVERITY:SPEC"):
        corrupt_data("corrupt:contrast", base=base)


def test_constructed_sets_are_data_specs(cifar_spec):
    from ebmlens.data import data_sources, load_data

    assert {"synthetic", "interp", "corrupt"} <= set(data_sources())
    u = load_data("synthetic:uniform?n=6&seed=1")
    assert u.images.shape == (6, 32, 32, 3) and u.images.dtype.name == "uint8"
    assert (load_data("synthetic:uniform?n=6&seed=1").images == u.images).all()
    c = load_data(f"corrupt:contrast@5:{cifar_spec}@test?n=4")
    plain = load_data(f"{cifar_spec}@test")
    idx = plain.strided(4)
    assert len(c) == 4 and c.images.std() < plain.images[idx].std()  # lower contrast
