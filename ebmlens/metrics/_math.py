"""The formulas behind :mod:`ebmlens.metrics`, on features and logits (no networks, no files).

* Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))`` per split.
* Frechet distance (Heusel et al. 2017): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.
* Kernel distance (Binkowski et al. 2018): unbiased MMD^2, kernel ``(a.b / d + 1)^3``, over subsets.

Public names are re-exported by :mod:`ebmlens.metrics`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score", "feature_stats", "frechet_distance", "kernel_distance"]


def _finite(a: np.ndarray, what: str, fix: str) -> None:
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise ValueError(f"{what} hold {bad} NaN/Inf values of {np.size(a)}; {fix}")


def _check_covariance(s: np.ndarray, name: str) -> np.ndarray:
    """Eigenvalues of a covariance, refusing one that is not symmetric positive semi-definite."""
    _finite(s, name, "recompute the statistics from finite features (feature_stats)")
    scale = float(np.abs(s).max()) or 1.0
    if np.abs(s - s.T).max() > 1e-6 * scale:
        raise ValueError(f"{name} is not symmetric (max |S - S^T| {np.abs(s - s.T).max():.3g}); a covariance is: "
                         "recompute it with feature_stats, or check the statistics file")
    w = np.linalg.eigvalsh(s)
    if w.min() < -1e-6 * max(float(np.abs(w).max()), 1e-300):
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}, largest "
                         f"{w.max():.3g}); a covariance of features is: recompute it with feature_stats, or check "
                         "the statistics file")
    return w


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10, *, shuffle: bool = True,
                    seed: int = 2020) -> tuple[float, float]:
    """Inception Score of ``(N, K)`` logits: mean and std over ``splits`` of ``exp(mean_i KL(p_i || p_split))``.

    Samples are shuffled with ``numpy.random.RandomState(seed)`` first (torch-fidelity's order), then
    cut into ``splits`` contiguous parts ``[i N / s, (i + 1) N / s)``. Computed in float64.
    """
    z = torch.as_tensor(logits).double()
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"inception_score needs (N, K) logits with K >= 2, got shape {tuple(z.shape)}")
    _finite(z.numpy(), "inception_score's logits", "the network produced NaN/Inf: check its inputs and weights")
    n = z.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}; "
                         "use fewer splits or more images")
    if shuffle:
        z = z[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    p, log_p = z.softmax(1), z.log_softmax(1)
    scores = []
    for i in range(splits):
        a, b = i * n // splits, (i + 1) * n // splits
        p_y = p[a:b].mean(0, keepdim=True)                       # marginal p(y) of the split
        kl = (p[a:b] * (log_p[a:b] - p_y.log())).sum(1).mean()   # E_x KL(p(y|x) || p(y))
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (d,), sigma (d, d))`` in float64: the mean and unbiased covariance of ``(N, d)`` features."""
    acc = _Moments()
    acc.update(np.asarray(features))
    return acc.result()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``tr((S1 S2)^{1/2})`` is computed as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))``: the matrix is
    symmetric positive semi-definite, so symmetric eigen-decompositions (``eigh``) are stable where a
    general ``sqrtm`` of the non-symmetric ``S1 S2`` can return complex noise; tiny negative
    eigenvalues from round-off are clipped to 0. Float64 throughout.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape or s1.shape != (mu1.size, mu1.size) or s2.shape != s1.shape:
        raise ValueError(f"frechet_distance got mismatched shapes mu {mu1.shape}/{mu2.shape}, "
                         f"sigma {s1.shape}/{s2.shape}; both sides must come from the same feature layer")
    _finite(np.concatenate([mu1, mu2]), "frechet_distance's means", "recompute the statistics from finite features")
    _check_covariance(s1, "frechet_distance's sigma1")
    _check_covariance(s2, "frechet_distance's sigma2")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T                         # S1^{1/2}
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kernel_distance(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray, subsets: int = 100,
                    subset_size: int = 1000, *, seed: int = 2020) -> tuple[float, float]:
    """KID: mean and std over ``subsets`` of the unbiased MMD^2 between random subsets (without
    replacement, ``numpy.random.RandomState(seed)``, drawn as torch-fidelity does) of ``(N1, d)`` and
    ``(N2, d)`` features, kernel ``(a.b / d + 1)^3``."""
    x, y = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_distance needs (N, d) features of equal d, got {x.shape} and {y.shape}")
    _finite(x, "kernel_distance's first features", "the network produced NaN/Inf: check its inputs and weights")
    _finite(y, "kernel_distance's second features", "the network produced NaN/Inf: check its inputs and weights")
    m = int(subset_size)
    if not 2 <= m <= min(len(x), len(y)):
        raise ValueError(f"KID subset size {m} must be in [2, {min(len(x), len(y))}] (the smaller set's size); "
                         "set kid_subset_size")
    if subsets < 1:
        raise ValueError(f"kid_subsets must be >= 1, got {subsets}")
    rng, d = np.random.RandomState(seed), x.shape[1]
    mmds = np.empty(subsets)
    for i in range(subsets):
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[i] = off - 2 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())


class _Moments:
    """Streaming mean and covariance (float64, shifted by the first batch's mean for accuracy)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None  # the first batch's mean
        self.s: np.ndarray | None = None      # sum of (f - shift)
        self.ss: np.ndarray | None = None     # sum of (f - shift)^T (f - shift)

    def update(self, f: np.ndarray) -> None:
        f = np.asarray(f, np.float64)
        if f.ndim != 2 or not len(f):
            raise ValueError(f"features must be (N, d) with N >= 1, got {f.shape}")
        _finite(f, "the features", "the network produced NaN/Inf: check its inputs and weights")
        if self.shift is None or self.s is None or self.ss is None:
            self.shift, self.s, self.ss = f.mean(0), np.zeros(f.shape[1]), np.zeros((f.shape[1],) * 2)
        z = f - self.shift
        self.s += z.sum(0)
        self.ss += z.T @ z
        self.n += len(f)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2 or self.shift is None or self.s is None or self.ss is None:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        mz = self.s / self.n
        return self.shift + mz, (self.ss - self.n * np.outer(mz, mz)) / (self.n - 1)
