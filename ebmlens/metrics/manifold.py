"""Fidelity and diversity as separate numbers: k-NN manifold measures on features, and the
within-class spread of conditional samples.

All take ``(N, d)`` features (any network; the real set and the samples from the same layer) and
compute pairwise Euclidean distances in row chunks of ``chunk`` rows, so 10k x 10k features need
``chunk x N`` floats at a time, never the full matrix. Float64 on the CPU by default.

* **Precision / recall** (Kynkaanniemi et al., "Improved precision and recall metric for assessing
  generative models", NeurIPS 2019), k = 3. The manifold of a set is the union of balls around its
  points, each with the radius to its k-th nearest other point of the set (``r_k(phi)``).
  ``precision = 1/M sum_j 1[exists i: |fake_j - real_i| <= r_k(real_i)]`` (samples inside the real
  manifold); ``recall = 1/N sum_i 1[exists j: |real_i - fake_j| <= r_k(fake_j)]`` (real points inside
  the sample manifold). Ties count as inside (``<=``), as in torch-fidelity's ``prc``.
* **Density / coverage** (Naeem et al., "Reliable fidelity and diversity metrics for generative
  models", ICML 2020), k = 5. ``density = 1/(k M) sum_j sum_i 1[|fake_j - real_i| <= r_k(real_i)]``
  (how many real balls hold each sample, over k; can exceed 1); ``coverage = 1/N sum_i
  1[min_j |real_i - fake_j| <= r_k(real_i)]`` (real balls that hold at least one sample).
* **Within-class diversity**: ``1 - cos(phi_a, phi_b)`` averaged over the pairs ``a < b`` of one
  class, then over classes (unweighted; classes with fewer than two samples are skipped). 0 for
  identical features, 1 for orthogonal ones. Per-class values are returned too.

>>> import torch
>>> real = torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]])
>>> r = precision_recall(real, real, k=3)
>>> (r.precision, r.recall)
(1.0, 1.0)
>>> round(within_class_diversity(torch.eye(3), torch.tensor([0, 0, 0])).overall, 6)
1.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["PrecisionRecall", "DensityCoverage", "ClassDiversity", "knn_radii", "precision_recall",
           "density_coverage", "within_class_diversity"]

_CHUNK = 1024


@dataclass(frozen=True)
class PrecisionRecall:
    """Kynkaanniemi et al. 2019: share of samples in the real manifold, share of real points in the samples'."""

    precision: float
    recall: float
    k: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DensityCoverage:
    """Naeem et al. 2020: mean count of real balls holding a sample over ``k``; share of real balls hit."""

    density: float
    coverage: float
    k: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClassDiversity:
    """Mean ``1 - cos`` over pairs of one class: ``overall`` (mean over classes) and per class."""

    overall: float
    per_class: dict[int, float]
    counts: dict[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def _features(f: object, what: str, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f).detach().to("cpu", dtype)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{what} must be (N, d) features with N >= 1, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} hold NaN or inf; check the feature network and the images")
    return t


def _pair(a: object, b: object, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _features(a, "sample features", dtype), _features(b, "real features", dtype)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample and real features differ in width ({x.shape[1]} vs {y.shape[1]}); "
                         "both must come from the same network layer")
    return x, y


def _check_k(k: int, n: int, what: str) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k >= n:
        raise ValueError(f"a k-NN radius with k={k} needs more than {k} {what}, got {n}; "
                         "pass more images or a smaller k")
    return k


def knn_radii(f: object, k: int, *, chunk: int = _CHUNK, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(N,)`` distance of each row of ``f`` to its ``k``-th nearest *other* row (self excluded)."""
    x = _features(f, "features", dtype)
    _check_k(k, len(x), "points")
    out = torch.empty(len(x), dtype=dtype)
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s:s + chunk], x)                   # (c, N); the diagonal is the point itself
        out[s:s + chunk] = d.kthvalue(k + 1, dim=1).values   # k+1-th smallest: self (0) is the first
    return out


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(len(points),)`` number of balls ``(centres_i, radii_i)`` that hold each point."""
    counts = torch.empty(len(points), dtype=torch.int64)
    for s in range(0, len(points), chunk):
        counts[s:s + chunk] = (torch.cdist(points[s:s + chunk], centres) <= radii[None, :]).sum(1)
    return counts


def precision_recall(fake: object, real: object, k: int = 3, *, chunk: int = _CHUNK,
                     dtype: torch.dtype = torch.float64) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake`` ``(M, d)`` against ``real`` ``(N, d)``."""
    x, y = _pair(fake, real, dtype)
    _check_k(k, len(y), "real points")
    _check_k(k, len(x), "samples")
    precision = (_inside(x, y, knn_radii(y, k, chunk=chunk, dtype=dtype), chunk) > 0).double().mean()
    recall = (_inside(y, x, knn_radii(x, k, chunk=chunk, dtype=dtype), chunk) > 0).double().mean()
    return PrecisionRecall(float(precision), float(recall), k)


def density_coverage(fake: object, real: object, k: int = 5, *, chunk: int = _CHUNK,
                     dtype: torch.dtype = torch.float64) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020) of ``fake`` ``(M, d)`` against ``real`` ``(N, d)``."""
    x, y = _pair(fake, real, dtype)
    _check_k(k, len(y), "real points")
    r = knn_radii(y, k, chunk=chunk, dtype=dtype)
    density = _inside(x, y, r, chunk).double().sum() / (k * len(x))
    nearest = torch.empty(len(y), dtype=dtype)                  # distance of each real point to its nearest sample
    for s in range(0, len(y), chunk):
        nearest[s:s + chunk] = torch.cdist(y[s:s + chunk], x).min(1).values
    coverage = (nearest <= r).double().mean()
    return DensityCoverage(float(density), float(coverage), k)


def within_class_diversity(features: object, labels: object, *, dtype: torch.dtype = torch.float64) -> ClassDiversity:
    """Mean ``1 - cos(phi_a, phi_b)`` over the pairs ``a < b`` of each class, then over classes.

    ``features`` ``(N, d)``, ``labels`` ``(N,)`` ints. A zero feature vector has no direction and is
    refused. Classes with a single sample have no pair and are left out of ``per_class``.
    """
    f = _features(features, "features", dtype)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    if y.dim() != 1 or len(y) != len(f) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be (N,) integers matching {len(f)} features, got {y.dtype} {tuple(y.shape)}")
    norms = f.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("within_class_diversity got an all-zero feature vector (no direction for a cosine); "
                         "use another layer")
    u = f / norms
    per, counts = {}, {}
    for c in sorted(set(y.tolist())):
        uc = u[y == c]
        n = len(uc)
        if n < 2:
            continue
        s = uc.sum(0)
        mean_cos = (s @ s - n) / (n * (n - 1))   # sum over ordered pairs a != b of cos, over their count
        per[int(c)], counts[int(c)] = float(1 - mean_cos), n
    if not per:
        raise ValueError("within_class_diversity needs at least two samples of some class")
    return ClassDiversity(float(np.mean(list(per.values()))), per, counts)
