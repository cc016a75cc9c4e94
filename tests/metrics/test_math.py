"""IS / FID / KID math against closed forms and independent references (scipy, torch-fidelity)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ebmlens.metrics import feature_stats, frechet_distance, inception_score, kernel_distance


def _features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)             # correlated features
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


def _fid_scipy(f1, f2):
    """The textbook formula with scipy's general matrix square root (an independent computation)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_feature_stats_streamed_equals_numpy():
    f = _features(300, 12, 0, shift=50.0)                   # a large offset tests the shifted accumulation
    mu, sigma = feature_stats(f)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-10)


def test_fid_of_a_set_with_itself_is_zero():
    mu, sigma = feature_stats(_features(400, 16, 1))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (0.0, 1.7), (1.0, 0.5)])
def test_fid_matches_scipy_sqrtm(shift, scale):
    f1, f2 = _features(500, 24, 2), _features(600, 24, 3, shift=shift, scale=scale)
    ours = frechet_distance(*feature_stats(f1), *feature_stats(f2))
    assert ours == pytest.approx(_fid_scipy(f1, f2), abs=1e-3)
    assert ours > 0


def test_fid_closed_form_for_isotropic_gaussians():
    # N(0, a I) vs N(m, b I): |m|^2 + d (sqrt(a) - sqrt(b))^2
    d, a, b = 5, 2.0, 0.5
    m = np.full(d, 0.2)
    got = frechet_distance(np.zeros(d), a * np.eye(d), m, b * np.eye(d))
    assert got == pytest.approx(float(m @ m + d * (np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-10)


def test_fid_rejects_mismatched_layers():
    mu, sigma = feature_stats(_features(50, 4, 0))
    mu2, sigma2 = feature_stats(_features(50, 6, 0))
    with pytest.raises(ValueError, match="same feature layer"):
        frechet_distance(mu, sigma, mu2, sigma2)


def _soft_labels(n_per_class, k, a):
    """Logits whose softmax puts ``a`` on the own class and (1-a)/(k-1) on each other class."""
    p = np.full((k, k), (1 - a) / (k - 1))
    np.fill_diagonal(p, a)
    return torch.from_numpy(np.log(np.tile(p, (n_per_class, 1))))


@pytest.mark.parametrize("a,splits", [(0.5, 1), (0.9, 1), (0.9, 5), (0.99, 10)])
def test_is_matches_closed_form(a, splits):
    k = 10
    logits = _soft_labels(50, k, a)             # 500 samples, every split stays class-balanced (50 = 5 * 10)
    # p(y) is uniform in every split; KL(p(.|x) || U) = a ln(k a) + (1 - a) ln(k (1 - a) / (k - 1))
    closed = np.exp(a * np.log(k * a) + (1 - a) * np.log(k * (1 - a) / (k - 1)))
    m, s = inception_score(logits, splits, shuffle=False)
    assert m == pytest.approx(closed, rel=1e-9)
    assert s == pytest.approx(0.0, abs=1e-9)


def test_is_of_confident_balanced_predictions_approaches_class_count():
    k = 10
    # contiguous balanced splits: p(y) uniform, IS -> k as predictions become certain
    scores = [inception_score(_soft_labels(100, k, a), 10, shuffle=False)[0] for a in (0.6, 0.9, 0.99, 0.9999)]
    assert all(x < y for x, y in zip(scores, scores[1:]))
    assert k - 0.02 < scores[-1] <= k
    # shuffled splits (the convention) of a balanced set: close to k once the splits are large
    assert k - 0.1 < inception_score(_soft_labels(1000, k, 0.9999), 10)[0] < scores[-1]
    # all samples of one class: IS = 1
    one = torch.log(torch.tensor([[0.99] + [0.01 / 9] * 9])).repeat(100, 1)
    assert inception_score(one, 10)[0] == pytest.approx(1.0, abs=1e-9)


def test_is_refuses_fewer_images_than_splits():
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(torch.randn(5, 10), 10)


def test_same_numbers_as_torch_fidelity_functions():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(203, 12, generator=g) * 3
    ref = isc_features_to_metric(logits, 7, True, 2020)
    m, s = inception_score(logits, 7, seed=2020)
    assert m == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert s == pytest.approx(ref["inception_score_std"], rel=1e-8)

    f1 = torch.from_numpy(_features(300, 16, 5)).float()
    f2 = torch.from_numpy(_features(250, 16, 6, shift=0.2)).float()
    st1, st2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    st1["mu"], st2["mu"] = st1["mu"].astype(np.float64), st2["mu"].astype(np.float64)
    tf_fid = fid_statistics_to_metric(st1, st2, False)["frechet_inception_distance"]
    assert frechet_distance(*feature_stats(f1.numpy()), *feature_stats(f2.numpy())) == pytest.approx(tf_fid, rel=1e-5)

    tf_kid = kid_features_to_metric(f1, f2, kid_subsets=20, kid_subset_size=100, rng_seed=2020, verbose=False)
    km, ks = kernel_distance(f1, f2, 20, 100, seed=2020)
    assert km == pytest.approx(tf_kid["kernel_inception_distance_mean"], rel=1e-4)
    assert ks == pytest.approx(tf_kid["kernel_inception_distance_std"], rel=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    f = _features(600, 8, 7)
    same, _ = kernel_distance(f[:300], f[300:], 20, 200)
    diff, _ = kernel_distance(f[:300], _features(300, 8, 8, shift=1.0), 20, 200)
    assert abs(same) < 0.2 * diff
    assert diff > 0
    with pytest.raises(ValueError, match="subset size"):
        kernel_distance(f[:50], f[50:100], 5, 51)


# ---------------------------------------------------------------- refusals (issue 22 item 3)
def test_metric_helpers_refuse_nan_features_and_non_psd_covariances():
    from ebmlens.metrics._math import feature_stats, frechet_distance, inception_score, kernel_distance

    z = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    z[3, 2] = float("nan")
    with pytest.raises(ValueError, match="logits hold 1 NaN/Inf") as e:
        inception_score(z, 2)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="features hold 1 NaN/Inf"):
        feature_stats(z.numpy())
    with pytest.raises(ValueError, match="NaN/Inf"):
        kernel_distance(z.numpy(), np.ones((20, 5)), subsets=1, subset_size=5)
    eye, mu = np.eye(2), np.zeros(2)
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite .*smallest eigenvalue -1"):
        frechet_distance(mu, eye, mu, np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma1 is not symmetric"):
        frechet_distance(mu, np.array([[1.0, 0.5], [0.0, 1.0]]), mu, eye)
    with pytest.raises(ValueError, match="means hold 1 NaN/Inf"):
        frechet_distance(np.array([np.nan, 0.0]), eye, mu, eye)
    f = np.random.default_rng(0).normal(size=(10, 50))  # fewer samples than dimensions: singular, still PSD
    m, s = feature_stats(f)
    assert abs(frechet_distance(m, s, m, s)) < 1e-4
