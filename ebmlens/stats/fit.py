"""Fitting class statistics: streamed per-class sums in float64, randomized subspace iteration for
the leading eigenpairs (see :mod:`ebmlens.stats` for the math)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import fingerprint
from .classstats import _ALGO_VERSION, ClassStats

__all__ = ["class_stats", "coerce_stats", "missing_stats_error"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- computing
def _top_eigen(cov: torch.Tensor, variance: float, n: int, seed: int = 0, rank: int | None = None
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


def _flatten_batch(x: torch.Tensor, downsample: int) -> torch.Tensor:
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    return x.reshape(x.shape[0], -1).double()


def fit_class(batches, d: int, *, reg: float, pca_variance: float, full: bool, rank: int | None = None,
              seed: int = 0, who: str = "class", device=None) -> dict[str, torch.Tensor | int | None]:
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
    vecs, vals = _top_eigen(cov, pca_variance, n, seed=seed, rank=rank)
    out = {"mean": mu.float().cpu(), "diag": cov.diagonal().clamp_min(0).float().cpu(), "total_var": float(cov.trace()),
           "count": n, "eigvecs": vecs.float().cpu(), "eigvals": vals.float().cpu(), "chol": None}
    if full:
        cov.diagonal().add_(reg)
        out["chol"] = torch.linalg.cholesky(cov).float().cpu()
    return out


def _fit(batches_per_class, shape: tuple[int, int, int], num_classes: int, *, reg: float, pca_variance: float,
         full: bool = True, rank: int | None = None) -> dict[str, torch.Tensor]:
    d = int(np.prod(shape))
    mean = torch.zeros(num_classes, d)
    diag = torch.zeros(num_classes, d)
    total = torch.zeros(num_classes)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    chol = torch.zeros(num_classes, d, d) if full else None
    vecs_l, vals_l = [], []
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


def class_stats(
    source: Any,
    labels: Any = None,
    *,
    split: str | None = None,
    n: int | None = None,
    cache: bool = True,
    downsample: int = 1,
    reg: float = 1e-4,
    pca_variance: float = 0.99,
    num_classes: int | None = None,
    full: bool = True,
    batch_size: int = 1000,
    rank: int | None = None,
) -> ClassStats:
    """Fit per-class Gaussian/PCA statistics of an image set.

    Args:
        source: a data spec (``"cifar10:PATH"``; the **train** split unless the spec or ``split``
            says otherwise), an :class:`~ebmlens.data.ImageData`, a ``.safetensors`` statistics file,
            or a float tensor ``(N, C, H, W)`` in [0, 1] (then ``labels`` is required).
        labels: ``(N,)`` class indices when ``source`` is a tensor.
        split: ``"train"``/``"test"`` for data specs.
        n: use an evenly strided subset of ``n`` images (``ImageData.strided``) instead of all.
        cache: keep the result under ``ebmlens.data.cache_dir()/stats`` keyed by the dataset's
            fingerprint and every setting here (data specs and ImageData only).
        downsample: average-pool images by this factor before fitting (Santurkar et al. fit
            ImageNet at 4x downsampling; GaussianInit upsamples back).
        reg: ridge added to each covariance before its Cholesky factorization (1e-4, as
            Santurkar et al. and JEM++).
        pca_variance: keep leading components up to this fraction of each class's variance
            (PCAInit may then use any ``variance <=`` this).
        num_classes: ``K`` for tensors (default ``max(labels) + 1``).
        full: also factor each full covariance (Cholesky; ~K*D*D*4 bytes). ``False`` skips it and
            returns low-rank + diagonal statistics holding every component up to ``pca_variance``.
        batch_size: images per accumulation step.
        rank: keep exactly the top ``rank`` components per class (randomized subspace iteration at that
            size; ``pca_variance`` is then ignored), as the ImageNet statistics do (:mod:`ebmlens.stats.sharded`).

    Returns:
        :class:`ClassStats` (with the Cholesky factor when ``full``); ``.compact(rank)`` for the
        shippable form.
    """
    from ..data import cache_dir

    if not (isinstance(downsample, int) and downsample >= 1):
        raise ValueError(f"downsample must be an int >= 1, got {downsample!r}")
    if not (math.isfinite(reg) and reg >= 0):
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    if not 0 < pca_variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {pca_variance!r}")
    if rank is not None and not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    if isinstance(source, (str, Path)) and (str(source).endswith(".safetensors") or Path(source, "meta.json").is_file()):
        return ClassStats.load(source)
    if isinstance(source, torch.Tensor):
        return _from_tensors(source, labels, num_classes=num_classes, downsample=downsample, reg=reg,
                             pca_variance=pca_variance, full=full, batch_size=batch_size)
    if labels is not None:
        raise TypeError("labels= is only for tensor images; a data spec or ImageData carries its own labels")
    data = image_set(source, split, "class_stats")
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    key_src = f"{data.fingerprint}|{n}|{downsample}|{reg}|{pca_variance}|{full}|v{_ALGO_VERSION}"
    key_src += "" if rank is None else f"|rank{rank}"
    key = fingerprint(key_src)
    fname = cache_dir() / "stats" / f"class-stats-{key}.safetensors"
    if cache and fname.exists():
        try:
            log.info("class statistics from cache %s", fname)
            return ClassStats.load(fname)
        except ValueError:
            log.warning("cached statistics %s unreadable; recomputing", fname)
    labels_np = data.labels[idx]
    k_classes = data.num_classes
    h, w, c = data.image_shape
    shape = _pooled_shape((c, h, w), downsample)

    def per_class(k: int):
        members = idx[labels_np == k]
        for xb, _ in data.batches(batch_size, members):  # streamed sets: one batch in memory at a time
            yield _flatten_batch(xb, downsample)

    log.info("fitting class statistics on %d images of %s", len(idx), data.source)
    fit = _fit(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full, rank=rank)
    src, _, sp = data.source.rpartition("@")
    stats = ClassStats(**fit, shape=shape, reg=reg, source=(src if sp in ("train", "test") else data.source)
                       + ("" if n is None else f"[strided {n}]"), split=sp if sp in ("train", "test") else None,
                       class_names=tuple(data.class_names), downsample=downsample)
    if cache:
        stats.save(fname)
    return stats


def image_set(source: Any, split: str | None, who: str):
    """The image set a fit reads: a data spec (its train split unless ``split`` or the spec says
    otherwise) or an image set as is; anything else fails naming ``who``."""
    from ..data import ImageSet, load_data, require_labels

    if isinstance(source, (str, Path)):
        return require_labels(load_data(str(source), split, default_split="train"), who)
    if isinstance(source, ImageSet):
        return require_labels(source, who)
    raise TypeError(f"{who} source must be a data spec like 'cifar10:PATH', an image set, a .safetensors "
                    f"file or an image tensor, got {type(source).__name__}")


def _pooled_shape(shape: tuple[int, int, int], downsample: int) -> tuple[int, int, int]:
    c, h, w = shape
    if h % downsample or w % downsample:
        raise ValueError(f"downsample={downsample} does not divide the image size {h}x{w}")
    return (c, h // downsample, w // downsample)


def _from_tensors(images: torch.Tensor, labels: Any, *, num_classes: int | None, downsample: int, reg: float,
                  pca_variance: float, full: bool, batch_size: int) -> ClassStats:
    from ..energy import validate_images, validate_labels

    if labels is None:
        raise ValueError("class_stats(images, labels): labels are required with tensor images")
    images = validate_images(images, name="images")
    k_classes = int(num_classes) if num_classes is not None else (int(torch.as_tensor(labels).max()) + 1)
    labels_t = validate_labels(labels, k_classes, images.shape[0], name="labels").cpu()
    shape = _pooled_shape(tuple(int(s) for s in images.shape[1:]), downsample)
    images = images.detach().cpu()

    def per_class(k: int):
        members = torch.nonzero(labels_t == k).flatten()
        for s in range(0, len(members), batch_size):
            yield _flatten_batch(images[members[s:s + batch_size]], downsample)

    fit = _fit(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full)
    return ClassStats(**fit, shape=shape, reg=reg, source="tensors", downsample=downsample)


def coerce_stats(stats: Any, who: str) -> ClassStats:
    """Accept ClassStats or a path to a saved file; anything else gets an error saying how to get stats."""
    if isinstance(stats, ClassStats):
        return stats
    if isinstance(stats, (str, Path)):
        if str(stats).endswith(".safetensors") or Path(stats, "meta.json").is_file():  # a file or a per-class directory
            return ClassStats.load(stats)
        return class_stats(str(stats))
    raise missing_stats_error(who) if stats is None else TypeError(
        f"{who} expects ClassStats (from ebmlens.class_stats), got {type(stats).__name__}")


def missing_stats_error(who: str) -> ValueError:
    return ValueError(
        f"{who} needs per-class statistics: pass stats=ebmlens.class_stats('cifar10:PATH') (computed once, "
        "cached), stats=ClassStats.load('stats.safetensors'), or the compact stats that ship with the "
        "bundled model ebmlens:cifar10-l2-small; on the CLI give --data cifar10:PATH")
