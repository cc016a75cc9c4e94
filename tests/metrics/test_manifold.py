"""Precision / recall, density / coverage and within-class diversity: toys with known answers,
torch-fidelity's ``prc`` on the same features, and the measures through ``evaluate`` and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.metrics import (
    density_coverage,
    evaluate,
    knn_radii,
    parse_metrics,
    precision_recall,
    within_class_diversity,
)


def _line(*xs: float) -> torch.Tensor:
    """Points on the x-axis of the plane."""
    return torch.tensor([[x, 0.0] for x in xs])


def _gauss(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_knn_radius_excludes_the_point_itself():
    r = knn_radii(_line(0, 1, 3, 7), 1)
    assert r.tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(_line(0, 1, 3, 7), 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_hand_computed_line():
    # real 0, 1, 3, 7 (1-NN radii 1, 1, 2, 4); samples 0.5, 12, 20, 40 (1-NN radii 11.5, 8, 8, 20).
    # precision: only 0.5 lies in a real ball -> 1/4. recall: every real point lies in the ball of 0.5 -> 1.
    # density: 0.5 lies in the balls of 0 and 1 -> (2 + 0 + 0 + 0) / (1 * 4) = 0.5.
    # coverage: nearest samples of 0, 1, 3, 7 are at 0.5, 0.5, 2.5 (> 2), 5 (> 4) -> 2/4.
    real, fake = _line(0, 1, 3, 7), _line(0.5, 12, 20, 40)
    pr = precision_recall(fake, real, k=1)
    dc = density_coverage(fake, real, k=1)
    assert (pr.precision, pr.recall, pr.k) == (0.25, 1.0, 1)
    assert (dc.density, dc.coverage, dc.k) == (0.5, 0.5, 1)
    swapped = precision_recall(real, fake, k=1)            # the roles swap
    assert (swapped.precision, swapped.recall) == (1.0, 0.25)


def test_identical_sets_are_perfect_and_far_clusters_are_zero():
    real = _gauss(60, 5, 0.0, 0)
    pr, dc = precision_recall(real, real), density_coverage(real, real)
    assert (pr.precision, pr.recall, pr.k) == (1.0, 1.0, 3)
    assert dc.coverage == 1.0 and dc.k == 5 and dc.density >= 1.0 / 5
    far = _gauss(50, 5, 100.0, 1)
    assert precision_recall(far, real).precision == 0.0 and precision_recall(far, real).recall == 0.0
    dc = density_coverage(far, real)
    assert (dc.density, dc.coverage) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = _gauss(400, 8, 0.0, 2)
    collapsed = real[:1] + 0.01 * _gauss(20, 8, 0.0, 3)    # 20 near-copies of one real point: a prototype
    pr, dc = precision_recall(collapsed, real), density_coverage(collapsed, real)
    assert pr.precision == 1.0 and pr.recall <= 1 / 400   # only the prototype itself is in the samples' balls
    assert dc.coverage <= 6 / 400 and dc.density >= 1.0   # a few real balls, each holding every sample


def test_chunking_does_not_change_the_numbers():
    fake, real = _gauss(70, 6, 0.5, 4), _gauss(90, 6, 0.0, 5)
    a = precision_recall(fake, real), density_coverage(fake, real)
    b = precision_recall(fake, real, chunk=7), density_coverage(fake, real, chunk=7)
    assert a == b


@pytest.mark.parametrize("save_cpu_ram", [False, True])
def test_precision_recall_match_torch_fidelity_prc(save_cpu_ram):
    from torch_fidelity.metric_prc import prc_features_to_metric

    fake, real = _gauss(300, 16, 0.4, 6), _gauss(400, 16, 0.0, 7)
    ours = precision_recall(fake, real, k=3)
    theirs = prc_features_to_metric(fake.double(), real.double(), prc_neighborhood=3, prc_batch_size=128,
                                    save_cpu_ram=save_cpu_ram, verbose=False)
    assert 0.05 < ours.precision < 0.95 and 0.05 < ours.recall < 0.95   # a case where the answer is not trivial
    assert abs(ours.precision - theirs["precision"]) < 0.01
    assert abs(ours.recall - theirs["recall"]) < 0.01


def test_within_class_diversity_toys():
    same = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    assert within_class_diversity(same, torch.zeros(4, dtype=torch.long)).overall == pytest.approx(0.0, abs=1e-12)
    assert within_class_diversity(torch.eye(5), torch.zeros(5, dtype=torch.long)).overall == pytest.approx(1.0)
    # class 0: orthogonal pair -> 1; class 1: 45 degrees -> 1 - 1/sqrt(2); class 2: one sample, left out
    f = torch.tensor([[1.0, 0], [0, 3], [2, 0], [1, 1], [5, 5]])
    d = within_class_diversity(f, np.array([0, 0, 1, 1, 2]))
    assert d.per_class == pytest.approx({0: 1.0, 1: 1 - 1 / math.sqrt(2)})
    assert d.counts == {0: 2, 1: 2}
    assert d.overall == pytest.approx((1.0 + 1 - 1 / math.sqrt(2)) / 2)
    # three vectors at 0, 90 and 180 degrees: cosines 0, -1, 0 over the 3 pairs -> 1 - (-1/3)
    g = torch.tensor([[1.0, 0], [0, 1], [-1, 0]])
    assert within_class_diversity(g, [7, 7, 7]).per_class[7] == pytest.approx(4 / 3)


def test_bad_inputs_name_the_problem():
    x = _gauss(10, 3, 0, 8)
    with pytest.raises(ValueError, match="same network layer"):
        precision_recall(x, _gauss(10, 4, 0, 9))
    with pytest.raises(ValueError, match="k=3 needs more than 3"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="NaN"):
        density_coverage(x, torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match="at least two samples"):
        within_class_diversity(x[:3], [0, 1, 2])
    with pytest.raises(ValueError, match="all-zero"):
        within_class_diversity(torch.zeros(2, 3), [0, 0])
    with pytest.raises(ValueError, match="choose from .*precision"):
        parse_metrics("precison")
    assert parse_metrics("FID, precision,diversity") == ("fid", "precision", "diversity")


def test_evaluate_reports_them_in_the_feature_network(cifar_test, small_net):
    idx = cifar_test.strided(160)
    a, b = cifar_test.tensor(idx[:60]), cifar_test.tensor(idx[60:])
    labels = torch.as_tensor(cifar_test.labels[idx[:60]])
    net = small_net()
    r = evaluate(a, b, "fid,precision,recall,density,coverage,diversity", net, labels=labels)
    keys = {"fd_smallnet", "precision_smallnet", "recall_smallnet", "density_smallnet", "coverage_smallnet",
            "diversity_smallnet"}
    assert keys <= set(r.values)
    assert {k for k in r.values if "_class" in k} == {f"diversity_smallnet_class{c}" for c in set(labels.tolist())}
    assert "precision_recall (k=3)" in r.implementation["precision_smallnet"]
    assert "density_coverage (k=5)" in r.implementation["coverage_smallnet"]
    fa = evaluate(a, b, "fid", net).values  # the same numbers as the functions on the extracted features
    from ebmlens.metrics.features import extract, extractor, rgb_images

    ext = extractor(net)
    fx, _, _ = extract(ext, rgb_images(a), 100, False, "f", local=True)
    fy, _, _ = extract(ext, rgb_images(b), 100, False, "f", local=True)
    assert r.values["precision_smallnet"] == precision_recall(fx, fy).precision
    assert r.values["coverage_smallnet"] == density_coverage(fx, fy).coverage
    assert r.values["diversity_smallnet"] == pytest.approx(within_class_diversity(fx, labels).overall)
    assert r.values["fd_smallnet"] == pytest.approx(fa["fd_smallnet"])
    only_div = evaluate(a, None, "diversity", net, labels=labels)   # no reference needed
    assert only_div.values["diversity_smallnet"] == pytest.approx(r.values["diversity_smallnet"])
    with pytest.raises(ValueError, match="precision need a reference"):
        evaluate(a, None, "precision", net)


def test_cli_evaluate_precision_recall(tmp_path, cifar_test, small_net):
    from ebmlens.models.archs import ConvNetSmall

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ConvNetSmall()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    idx = cifar_test.strided(90)
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "samples.npz", images=cifar_test.images[idx[:40]], labels=cifar_test.labels[idx[:40]])
    np.savez(tmp_path / "ref.npz", images=cifar_test.images[idx[40:]])
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "s"), "--ref", f"npz:{tmp_path / 'ref.npz'}",
                                    "--metrics", "precision,recall,density,coverage,diversity", "--feature-model",
                                    f"file:{tmp_path / 'net.pt'}", "--arch", "convnet-small", "--device", "cpu",
                                    "--out", str(tmp_path / "m.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "m.json").read_text())["values"]
    for m in ("precision", "recall", "density", "coverage", "diversity"):
        assert 0.0 <= v[f"{m}_file-net"] <= (5.0 if m == "density" else 1.0 + 1e-9), (m, v)
