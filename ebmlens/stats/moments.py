"""Moments of class images: streamed per-class sums in float64 and the leading eigenpairs by randomized
subspace iteration (see :mod:`ebmlens.stats` for the math). Plain tensors in, dicts of tensors out: this
module knows no :class:`~ebmlens.stats.ClassStats` and no files (the import order of ``stats/`` is in
:mod:`ebmlens.stats`)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ALGO_VERSION", "fit_class", "fit_classes", "flatten_batch", "pooled_shape", "top_eigen"]

ALGO_VERSION = 1
"""Version of the fitting algorithm; part of every cache key (bump it when fitted numbers change)."""


def top_eigen(cov: torch.Tensor, variance: float, n: int, seed: int = 0, rank: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of a symmetric PSD ``(D, D)`` covariance of ``n`` samples, covering
    ``variance`` of its trace.

    Randomized subspace iteration (Halko et al. 2011) in float32 with a local generator; the subspace
    doubles until the retained variance is reached (exact ``eigh`` once it would cover half of ``D``).
    A covariance of ``n <= q`` samples has rank ``< q``, so one pass is exact (no power iterations).
    ``rank``: exactly the top ``rank`` pairs instead (no doubling; ``variance`` is ignored).
    """
    d = cov.shape[0]
    total = float(torch.trace(cov))
    if total <= 0:
        return torch.zeros(d, 1, device=cov.device), torch.zeros(1, device=cov.device)
    g = torch.Generator().manual_seed(seed)
    c32 = cov.float()
    q = min(max(n, 32), 256) if rank is None else int(rank)
    while True:
        if 2 * q >= d:
            vals, vecs = torch.linalg.eigh(cov)
            vals, vecs = vals.flip(0).clamp_min(0).float(), vecs.flip(1).float()
            break
        y = c32 @ torch.randn(d, q + 8, generator=g).to(c32.device)
        for _ in range(0 if n <= q else 2):  # power iterations sharpen the spectrum
            y, _ = torch.linalg.qr(y)
            y = c32 @ y
        basis, _ = torch.linalg.qr(y)
        vals, w = torch.linalg.eigh(basis.T @ c32 @ basis)
        vals, vecs = vals.flip(0).clamp_min(0)[:q], (basis @ w.flip(1))[:, :q]
        if rank is not None or float(vals.sum()) / total >= variance or n <= q:
            break
        q *= 2
    if rank is not None:
        return vecs[:, :rank].contiguous(), vals[:rank]
    frac = torch.cumsum(vals.double(), 0) / total
    m = min(int(torch.searchsorted(frac, torch.tensor([variance], dtype=frac.dtype)).item()) + 1, len(vals))
    return vecs[:, :m].contiguous(), vals[:m]


def flatten_batch(x: torch.Tensor, downsample: int) -> torch.Tensor:
    """``(n, C, H, W)`` images -> ``(n, D)`` float64 rows, average-pooled by ``downsample`` first."""
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    return x.reshape(x.shape[0], -1).double()


def fit_class(batches: Iterable[torch.Tensor], d: int, *, reg: float, pca_variance: float, full: bool,
              rank: int | None = None, seed: int = 0, who: str = "class", device: Any = None) -> dict[str, Any]:
    """One class's statistics from its ``(n, D)`` float64 batches: exact sums ``sum x`` and
    ``sum x x^T`` (``D x D`` float64: 708 MB at 56x56x3), then mean, diagonal, trace, leading
    eigenpairs (``rank`` of them, or up to ``pca_variance``) and, when ``full``, the Cholesky factor.
    ``device``: where the sums and the eigen-solver run (results come back to the CPU)."""
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros(d, d, dtype=torch.float64, device=device)
    n = 0
    for xb in batches:
        xb = xb.to(s1.device)
        s1 += xb.sum(0)
        s2.addmm_(xb.T, xb)
        n += xb.shape[0]
    if n < 2:
        raise ValueError(f"{who} has {n} image(s); class statistics need at least 2 per class")
    mu = s1 / n
    cov = s2.sub_(torch.outer(mu, mu), alpha=n).div_(n - 1)
    cov = (cov + cov.T) / 2
    del s2
    vecs, vals = top_eigen(cov, pca_variance, n, seed=seed, rank=rank)
    out: dict[str, Any] = {"mean": mu.float().cpu(), "diag": cov.diagonal().clamp_min(0).float().cpu(),
                           "total_var": float(cov.trace()), "count": n, "eigvecs": vecs.float().cpu(),
                           "eigvals": vals.float().cpu(), "chol": None}
    if full:
        cov.diagonal().add_(reg)
        out["chol"] = torch.linalg.cholesky(cov).float().cpu()
    return out


def fit_classes(batches_per_class: Callable[[int], Iterable[torch.Tensor]], shape: tuple[int, int, int],
                num_classes: int, *, reg: float, pca_variance: float, full: bool = True, rank: int | None = None
                ) -> dict[str, Any]:
    """:func:`fit_class` for classes ``0 .. num_classes - 1`` (``batches_per_class(k)`` streams class ``k``),
    stacked into the arrays of a :class:`~ebmlens.stats.ClassStats` (eigenpairs zero-padded to the
    largest count)."""
    d = int(np.prod(shape))
    mean = torch.zeros(num_classes, d)
    diag = torch.zeros(num_classes, d)
    total = torch.zeros(num_classes)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    chol = torch.zeros(num_classes, d, d) if full else None
    vecs_l: list[torch.Tensor] = []
    vals_l: list[torch.Tensor] = []
    for k in range(num_classes):
        c = fit_class(batches_per_class(k), d, reg=reg, pca_variance=pca_variance, full=full, rank=rank, seed=k,
                      who=f"class {k}")
        mean[k], diag[k], total[k], counts[k] = c["mean"], c["diag"], c["total_var"], c["count"]
        vecs_l.append(c["eigvecs"])
        vals_l.append(c["eigvals"])
        if chol is not None:
            chol[k] = c["chol"]
    r = max(v.shape[1] for v in vecs_l)
    eigvecs = torch.zeros(num_classes, d, r)
    eigvals = torch.zeros(num_classes, r)
    for k, (v, lam) in enumerate(zip(vecs_l, vals_l)):
        eigvecs[k, :, : v.shape[1]] = v
        eigvals[k, : lam.shape[0]] = lam
    return {"mean": mean, "diag": diag, "eigvecs": eigvecs, "eigvals": eigvals, "total_var": total,
            "counts": counts, "chol": chol}


def pooled_shape(shape: tuple[int, int, int], downsample: int) -> tuple[int, int, int]:
    """``(C, H, W)`` after average-pooling by ``downsample`` (which must divide ``H`` and ``W``)."""
    c, h, w = shape
    if h % downsample or w % downsample:
        raise ValueError(f"downsample={downsample} does not divide the image size {h}x{w}")
    return (c, h // downsample, w // downsample)
