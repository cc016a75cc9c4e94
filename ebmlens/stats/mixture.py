"""Class-conditional Gaussian *mixtures*: several Gaussians per class instead of one.

One Gaussian per class (Santurkar et al. 2019, JEM++) puts its mean at the class average, a grey
blur, and its draws are that blur plus coloured noise: every seed of a class looks alike, and the
samplers that start there end in a few templates. A mixture keeps the class's modes apart (sky
above / ground below, dark object on light background, ...):

1. each class's images are clustered by k-means (Lloyd, k-means++ start, a fixed local generator)
   on their ``cluster_downsample``-times average-pooled pixels (8x8x3 for CIFAR-10: the layout and
   colours, not the texture);
2. each cluster with at least ``min_images`` images becomes one component: its own mean, pixel
   variances and top ``rank`` principal components (the compact low-rank + diagonal form of
   :meth:`ClassStats.compact`), weighted by its image count; smaller clusters are merged into the
   nearest kept one.

The result is a :class:`ClassStats` whose rows are components (``row_class`` gives each row's
class); :class:`~ebmlens.sampling.GaussianInit` draws a component per sample, then its Gaussian.
Fitted once per data set and setting, then read from the cache (``$EBMLENS_CACHE/stats``).

>>> import torch
>>> x = torch.cat([torch.zeros(20, 3, 4, 4), 0.99 * torch.ones(20, 3, 4, 4)]) + 0.01 * torch.rand(40, 3, 4, 4)
>>> m = class_mixture(x, torch.zeros(40, dtype=torch.long), components=2, rank=2, cluster_downsample=1)
>>> m.row_class, sorted(round(float(v), 1) for v in m.mean.mean(1))
((0, 0), [0.0, 1.0])
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import fingerprint
from . import files
from .classstats import ClassStats
from .fit import image_set
from .moments import ALGO_VERSION, fit_class

__all__ = ["class_mixture", "kmeans"]

log = logging.getLogger(__name__)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Cluster labels ``(n,)`` of the rows of ``x (n, d)``: Lloyd's algorithm from a k-means++ start
    drawn with ``torch.Generator().manual_seed(seed)``; ``k`` is capped at ``n``."""
    n = x.shape[0]
    k = min(int(k), n)
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(n, (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centers).min(1).values.double() ** 2
        pick = (torch.multinomial(d2 / d2.sum(), 1, generator=g) if float(d2.sum()) > 0
                else torch.randint(n, (1,), generator=g))
        centers = torch.cat([centers, x[pick]])
    labels = torch.cdist(x, centers).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
        new = torch.cdist(x, centers).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _merge_small(labels: torch.Tensor, feats: torch.Tensor, min_images: int) -> torch.Tensor:
    """Reassign the members of clusters smaller than ``min_images`` to the nearest kept cluster centre."""
    counts = torch.bincount(labels)
    keep = torch.nonzero(counts >= min_images).flatten()
    if len(keep) == 0:
        return torch.zeros_like(labels)
    centers = torch.stack([feats[labels == c].mean(0) for c in keep.tolist()])
    small = ~torch.isin(labels, keep)
    out = labels.clone()
    if small.any():
        out[small] = keep[torch.cdist(feats[small], centers).argmin(1)]
    return torch.searchsorted(keep, out)  # 0 .. len(keep) - 1


def class_mixture(source: Any, labels: Any = None, *, components: int = 8, rank: int = 128,
                  cluster_downsample: int = 4, min_images: int | None = None, iters: int = 25, seed: int = 0,
                  split: str | None = None, n: int | None = None, reg: float = 1e-4, cache: bool = True,
                  batch_size: int = 1000) -> ClassStats:
    """Fit ``components`` Gaussians per class (see the module docs).

    Args:
        source: a data spec (the **train** split unless it or ``split`` says otherwise), an image set,
            a saved mixture ``.safetensors``, or float images ``(N, C, H, W)`` in [0, 1] with ``labels``.
        components: clusters per class (fewer where a class has fewer images).
        rank: principal components kept per component.
        cluster_downsample: average-pool factor of the clustering features (4: 8x8 for CIFAR-10).
        min_images: smallest component kept (default ``max(2 * rank, 8)``; its covariance needs images).
        iters, seed: k-means iterations and start (class ``k`` uses ``seed + k``).
        n: fit on an evenly strided subset of ``n`` images.
        reg: ridge recorded with the statistics.
        cache: keep the result under ``ebmlens.data.cache_dir()/stats`` (data specs and image sets).

    Returns:
        Compact :class:`ClassStats` with one row per component and ``row_class`` set.
    """
    from ..data import cache_dir

    for name, v, lo in (("components", components, 1), ("rank", rank, 1), ("cluster_downsample", cluster_downsample, 1),
                        ("iters", iters, 0)):
        if not (isinstance(v, int) and v >= lo):
            raise ValueError(f"class_mixture {name} must be an int >= {lo}, got {v!r}")
    if not (math.isfinite(reg) and reg >= 0):
        raise ValueError(f"class_mixture reg must be >= 0, got {reg!r}")
    min_images = max(2 * rank, 8) if min_images is None else int(min_images)
    if min_images < 2:
        raise ValueError(f"class_mixture min_images must be >= 2, got {min_images}")
    if files.is_stats_path(source):
        return ClassStats.load(source)
    if isinstance(source, torch.Tensor):
        from ..energy import validate_images, validate_labels

        if labels is None:
            raise ValueError("class_mixture(images, labels): labels are required with tensor images")
        images = validate_images(source, name="images").detach().cpu().float()
        k_all = int(torch.as_tensor(labels).max()) + 1
        lab_t = validate_labels(labels, k_all, images.shape[0], name="labels").cpu()
        return _fit_mixture(lambda k: images[lab_t == k], k_all, tuple(images.shape[1:]), tuple(map(str, range(k_all))),
                            "tensors", None, components, rank, cluster_downsample, min_images, iters, seed, reg)
    data = image_set(source, split, "class_mixture")
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    settings = f"{components}|{rank}|{cluster_downsample}|{min_images}|{iters}|{seed}|{n}|{reg}|v{ALGO_VERSION}"
    fname = cache_dir() / "stats" / f"class-mixture-{fingerprint(data.fingerprint + '|' + settings)}.safetensors"
    if cache and fname.exists():
        try:
            return ClassStats.load(fname)
        except ValueError:
            log.warning("cached mixture %s unreadable; refitting", fname)
    h, w, c = data.image_shape
    lab = data.labels[idx]

    def images_of(k: int) -> torch.Tensor:
        return torch.cat([xb for xb, _ in data.batches(batch_size, idx[lab == k])]) if (lab == k).any() else \
            torch.zeros(0, c, h, w)

    stats = _fit_mixture(images_of, data.num_classes, (c, h, w), tuple(data.class_names), data.source, data.split,
                         components, rank, cluster_downsample, min_images, iters, seed, reg)
    if cache:
        stats.save(fname)
    return stats


def _fit_mixture(images_of, num_classes: int, shape: tuple, class_names: tuple, source: str, split: str | None,
                 components: int, rank: int, cluster_downsample: int, min_images: int, iters: int, seed: int,
                 reg: float) -> ClassStats:
    d = int(np.prod(shape))
    rows: dict[str, list] = {"mean": [], "diag": [], "eigvecs": [], "eigvals": [], "total_var": [], "counts": []}
    row_class: list[int] = []
    for k in range(num_classes):
        x = images_of(k)                                                            # (n_k, C, H, W) float
        if len(x) == 0:
            continue
        if len(x) < min_images:
            raise ValueError(f"class {k} ({class_names[k]}) has {len(x)} images; a mixture component needs "
                             f"min_images={min_images} (lower rank or min_images)")
        feats = F.avg_pool2d(x, cluster_downsample).flatten(1) if cluster_downsample > 1 else x.flatten(1)
        comp = _merge_small(kmeans(feats, components, iters=iters, seed=seed + k), feats, min_images)
        for j in range(int(comp.max()) + 1):
            fit = fit_class([x[comp == j].flatten(1).double()], d, reg=reg, pca_variance=1.0, full=False,
                            rank=min(rank, d), seed=seed + k, who=f"class {k} component {j}")
            vecs, vals = torch.zeros(d, rank), torch.zeros(rank)
            vecs[:, :fit["eigvecs"].shape[1]], vals[:fit["eigvals"].shape[0]] = fit["eigvecs"], fit["eigvals"]
            for key, v in (("mean", fit["mean"]), ("diag", fit["diag"]), ("eigvecs", vecs.half().float()),
                           ("eigvals", vals), ("total_var", torch.tensor(float(fit["total_var"]))),
                           ("counts", torch.tensor(int(fit["count"])))):
                rows[key].append(v)
            row_class.append(k)
        log.info("class %d (%s): %d components from %d images", k, class_names[k], int(comp.max()) + 1, len(x))
    if not row_class:
        raise ValueError(f"class_mixture: no images in {source}")
    t = {k: torch.stack(v) for k, v in rows.items()}
    return ClassStats(mean=t["mean"], diag=t["diag"], eigvecs=t["eigvecs"], eigvals=t["eigvals"],
                      total_var=t["total_var"], counts=t["counts"], shape=shape, reg=reg,
                      source=f"{source}[mixture {components}]", split=split, class_names=class_names,
                      row_class=tuple(row_class))
