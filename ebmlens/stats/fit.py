"""Fitting class statistics of a data set: in memory (:func:`class_stats`, cached) or class by class
into a directory (:func:`fit_stats_dir`, ImageNet scale). The sums and eigenpairs are
:mod:`ebmlens.stats.moments`; see :mod:`ebmlens.stats` for the math.

**ImageNet scale** (:func:`fit_stats_dir`, ``ebmlens stats``). Classes are fitted one at a time from a
streamed image set (all the images of class ``k`` read once, in batches, decoded by DataLoader
workers): the accumulators are the exact first and second moments ``sum x`` and ``sum x x^T`` in
float64, so at 4x downsampling of 224x224 (``D = 56*56*3 = 9,408``) one class needs ``D^2 * 8`` = 708 MB
(about 2.1 GB peak while the covariance is symmetrised), whatever the number of images. The top
``rank`` eigenpairs come from a randomized subspace iteration, then the class is stored in the compact
*low-rank + diagonal* form (:meth:`ClassStats.compact`). Nothing of class ``k`` remains in memory when
class ``k + 1`` starts. A class whose file exists is skipped, so an interrupted fit resumes (file
layout: :mod:`ebmlens.stats.files`; time per 1,000 classes: docs/imagenet.md).

**Deviation from Santurkar et al. (2019).** They sample ImageNet seeds from the *full* class
covariance at 4x downsampling (a 9,408 x 9,408 Cholesky factor per class: 354 MB float32 each, 354 GB
for 1,000 classes). Here the covariance is exact while fitting but is kept as its top ``rank``
components plus the exact diagonal: correlations outside the top-``rank`` subspace are dropped.
``--rank 64`` keeps the dominant low-frequency structure; raise it to approach the full covariance
(file size grows linearly).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import fingerprint
from . import files
from .classstats import ClassStats
from .moments import ALGO_VERSION, fit_class, fit_classes, flatten_batch, pooled_shape

__all__ = ["class_stats", "coerce_stats", "fit_stats_dir", "image_set", "missing_stats_error"]

log = logging.getLogger(__name__)


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
            size; ``pca_variance`` is then ignored), as the ImageNet statistics do (:func:`fit_stats_dir`).

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
    if files.is_stats_path(source):
        return ClassStats.load(source)
    if isinstance(source, torch.Tensor):
        return _from_tensors(source, labels, num_classes=num_classes, downsample=downsample, reg=reg,
                             pca_variance=pca_variance, full=full, batch_size=batch_size)
    if labels is not None:
        raise TypeError("labels= is only for tensor images; a data spec or ImageData carries its own labels")
    data = image_set(source, split, "class_stats")
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    key_src = f"{data.fingerprint}|{n}|{downsample}|{reg}|{pca_variance}|{full}|v{ALGO_VERSION}"
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
    shape = pooled_shape((c, h, w), downsample)

    def per_class(k: int):
        members = idx[labels_np == k]
        for xb, _ in data.batches(batch_size, members):  # streamed sets: one batch in memory at a time
            yield flatten_batch(xb, downsample)

    log.info("fitting class statistics on %d images of %s", len(idx), data.source)
    fit = fit_classes(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full, rank=rank)
    stats = ClassStats(**fit, shape=shape, reg=reg, source=data.source + ("" if n is None else f"[strided {n}]"),
                       split=data.split, class_names=tuple(data.class_names), downsample=downsample)
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


def _from_tensors(images: torch.Tensor, labels: Any, *, num_classes: int | None, downsample: int, reg: float,
                  pca_variance: float, full: bool, batch_size: int) -> ClassStats:
    from ..energy import validate_images, validate_labels

    if labels is None:
        raise ValueError("class_stats(images, labels): labels are required with tensor images")
    images = validate_images(images, name="images")
    k_classes = int(num_classes) if num_classes is not None else (int(torch.as_tensor(labels).max()) + 1)
    labels_t = validate_labels(labels, k_classes, images.shape[0], name="labels").cpu()
    shape = pooled_shape((int(images.shape[1]), int(images.shape[2]), int(images.shape[3])), downsample)
    images = images.detach().cpu()

    def per_class(k: int):
        members = torch.nonzero(labels_t == k).flatten()
        for s in range(0, len(members), batch_size):
            yield flatten_batch(images[members[s:s + batch_size]], downsample)

    fit = fit_classes(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full)
    return ClassStats(**fit, shape=shape, reg=reg, source="tensors", downsample=downsample)


def coerce_stats(stats: Any, who: str) -> ClassStats:
    """Accept ClassStats or a path to a saved file; anything else gets an error saying how to get stats."""
    if isinstance(stats, ClassStats):
        return stats
    if isinstance(stats, (str, Path)):
        if files.is_stats_path(stats):  # a file or a per-class directory
            return ClassStats.load(stats)
        return class_stats(str(stats))
    raise missing_stats_error(who) if stats is None else TypeError(
        f"{who} expects ClassStats (from ebmlens.class_stats), got {type(stats).__name__}")


def missing_stats_error(who: str) -> ValueError:
    return ValueError(
        f"{who} needs per-class statistics: pass stats=ebmlens.class_stats('cifar10:PATH') (computed once, "
        "cached), stats=ClassStats.load('stats.safetensors'), or the compact stats that ship with the "
        "bundled model ebmlens:cifar10-l2-small; on the CLI give --data cifar10:PATH")


def fit_stats_dir(source: Any, out: str | Path, *, downsample: int = 4, rank: int = 64, reg: float = 1e-4,
                  n: int | None = None, batch_size: int = 256, split: str | None = None,
                  classes: Sequence[int] | None = None, preprocess: Any = None, device: Any = None) -> Path:
    """Fit per-class statistics of ``source`` class by class and write ``out/`` (see the module docs);
    read it back with ``ClassStats.load(out, classes=...)``.

    Args:
        source: a data spec (train split by default) or an image set.
        out: the directory to write.
        downsample: average-pool factor before fitting (Santurkar et al.: 4 for ImageNet).
        rank: principal components kept per class.
        reg: ridge recorded with the statistics (added to the compact diagonal when sampling).
        n: fit on an evenly strided subset of ``n`` images.
        batch_size: images decoded per batch.
        split: overrides the spec's split.
        classes: fit only these class indices (e.g. one job-array task's share); others are left.
        preprocess: resize / crop for image files (the model's ``preprocess``).
        device: where the float64 sums and eigenpairs are computed (a GPU is ~50x faster at D = 9,408).

    Returns:
        ``out`` as a Path.
    """
    from ..data import load_data, require_labels

    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    data = require_labels(load_data(source, split, default_split="train", preprocess=preprocess), "class statistics")
    out = Path(out)
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    h, w, c = data.image_shape
    shape = pooled_shape((c, h, w), downsample)
    d = int(np.prod(shape))
    source_text = data.source + ("" if n is None else f"[strided {n}]")
    files.write_dir_meta(out, {"num_classes": data.num_classes, "class_names": list(data.class_names),
                               "shape": list(shape), "downsample": downsample, "rank": rank, "reg": reg,
                               "source": source_text, "split": data.split, "data_fingerprint": data.fingerprint,
                               "count": int(len(idx))})
    labels = data.labels[idx]
    todo = range(data.num_classes) if classes is None else [int(k) for k in classes]
    for k in todo:
        f = files.class_file(out, k)
        if f.exists():
            continue
        t0 = time.perf_counter()
        members = idx[labels == k]
        batches = (flatten_batch(xb, downsample) for xb, _ in data.batches(batch_size, members))
        fit = fit_class(batches, d, reg=reg, pca_variance=1.0, full=False, rank=min(rank, d), seed=k,
                        who=f"class {k} ({data.class_names[k]})", device=device)
        vecs = torch.zeros(d, rank)
        vals = torch.zeros(rank)
        vecs[:, :fit["eigvecs"].shape[1]] = fit["eigvecs"]
        vals[:fit["eigvals"].shape[0]] = fit["eigvals"]
        one = ClassStats(mean=fit["mean"][None], diag=fit["diag"][None], eigvecs=vecs[None], eigvals=vals[None],
                         total_var=torch.tensor([fit["total_var"]]), counts=torch.tensor([fit["count"]]),
                         shape=shape, reg=reg, source=source_text, split=data.split,
                         class_names=(data.class_names[k],), downsample=downsample)
        one.save(f)
        log.info("class %d/%d (%d images) fitted in %.1f s", k + 1, data.num_classes, len(members),
                 time.perf_counter() - t0)
    return out
