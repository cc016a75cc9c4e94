"""Class statistics at ImageNet scale: streamed fitting, one file per class (``ebmlens stats``).

**How it fits in memory.** Classes are fitted one at a time from a streamed image set (all the
images of class ``k`` read once, in batches, decoded by DataLoader workers): the accumulators are
the exact first and second moments ``sum x`` and ``sum x x^T`` in float64, so at 4x downsampling
of 224x224 (``D = 56*56*3 = 9,408``) one class needs ``D^2 * 8`` = 708 MB (about 2.1 GB peak while
the covariance is symmetrised), whatever the number of images. The top ``rank`` eigenpairs come
from a randomized subspace iteration (:func:`ebmlens.stats.fit._top_eigen` with ``rank``), then
the class is stored in the compact *low-rank + diagonal* form (:meth:`ClassStats.compact`): mean,
exact pixel variances, ``rank`` eigenvectors (float16) and eigenvalues. Nothing of class ``k``
remains in memory when class ``k + 1`` starts.

**Deviation from Santurkar et al. (2019).** They sample ImageNet seeds from the *full* class
covariance at 4x downsampling (a 9,408 x 9,408 Cholesky factor per class: 354 MB float32 each,
354 GB for 1,000 classes). Here the covariance is exact while fitting but is kept as its top
``rank`` components plus the exact diagonal: correlations outside the top-``rank`` subspace are
dropped. ``--rank 64`` keeps the dominant low-frequency structure; raise it to approach the full
covariance (file size grows linearly).

**Files.** ``OUT/meta.json`` (format ``ebmlens.class_stats_dir/1``: classes, shape, rank, source,
data fingerprint) and ``OUT/class-00000.safetensors`` ... (each a one-class :class:`ClassStats`
file). A class whose file exists is skipped, so an interrupted fit resumes. Size per class at
D = 9,408 and rank 64: ``D * (4 + 4 + 2 * 64)`` bytes = 1.28 MB, so **1.28 GB per 1,000 classes**.
Time per 1,000 classes: see docs/imagenet.md (measured on a synthetic set and extrapolated).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import atomic_write_json
from .classstats import ClassStats
from .fit import _flatten_batch, _pooled_shape, fit_class

__all__ = ["fit_stats_dir", "load_stats_dir", "is_stats_dir"]

log = logging.getLogger(__name__)
DIR_FORMAT = "ebmlens.class_stats_dir/1"


def is_stats_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`fit_stats_dir`."""
    return Path(path, "meta.json").is_file()


def _class_file(out: Path, k: int) -> Path:
    return out / f"class-{k:05d}.safetensors"


def fit_stats_dir(source: Any, out: str | Path, *, downsample: int = 4, rank: int = 64, reg: float = 1e-4,
                  n: int | None = None, batch_size: int = 256, split: str | None = None,
                  classes: Sequence[int] | None = None, preprocess=None, device=None) -> Path:
    """Fit per-class statistics of ``source`` class by class and write ``out/`` (see module docs).

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
    out.mkdir(parents=True, exist_ok=True)
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    h, w, c = data.image_shape
    shape = _pooled_shape((c, h, w), downsample)
    d = int(np.prod(shape))
    src, _, sp = data.source.rpartition("@")
    split_name = sp.partition("?")[0] if sp else None
    meta = {"format": DIR_FORMAT, "num_classes": data.num_classes, "class_names": list(data.class_names),
            "shape": list(shape), "downsample": downsample, "rank": rank, "reg": reg,
            "source": (src if sp else data.source) + ("" if n is None else f"[strided {n}]"), "split": split_name,
            "data_fingerprint": data.fingerprint, "count": int(len(idx))}
    old = out / "meta.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        diff = [k for k in meta if prev.get(k) != meta[k]]
        if diff:
            raise ValueError(f"{out} holds statistics with other settings ({', '.join(diff)}); use another --out")
    atomic_write_json(old, meta)
    labels = data.labels[idx]
    todo = range(data.num_classes) if classes is None else [int(k) for k in classes]
    for k in todo:
        f = _class_file(out, k)
        if f.exists():
            continue
        t0 = time.perf_counter()
        members = idx[labels == k]
        batches = (_flatten_batch(xb, downsample) for xb, _ in data.batches(batch_size, members))
        fit = fit_class(batches, d, reg=reg, pca_variance=1.0, full=False, rank=min(rank, d), seed=k,
                        who=f"class {k} ({data.class_names[k]})", device=device)
        vecs = torch.zeros(d, rank)
        vals = torch.zeros(rank)
        vecs[:, :fit["eigvecs"].shape[1]] = fit["eigvecs"]
        vals[:fit["eigvals"].shape[0]] = fit["eigvals"]
        one = ClassStats(mean=fit["mean"][None], diag=fit["diag"][None], eigvecs=vecs[None], eigvals=vals[None],
                         total_var=torch.tensor([fit["total_var"]]), counts=torch.tensor([fit["count"]]),
                         shape=shape, reg=reg, source=meta["source"], split=split_name,
                         class_names=(data.class_names[k],), downsample=downsample)
        one.save(f)
        log.info("class %d/%d (%d images) fitted in %.1f s", k + 1, data.num_classes, len(members),
                 time.perf_counter() - t0)
    return out


def load_stats_dir(path: str | Path, classes: Sequence[int] | None = None) -> ClassStats:
    """The :class:`ClassStats` of a directory written by :func:`fit_stats_dir` (compact kind).

    ``classes``: read and hold only these class files (the classes a run samples): the arrays then
    have one row per loaded class (``ClassStats.row_class``), so memory follows the classes sampled, not
    ``K`` (1,000 ImageNet classes at D = 9,408, rank 64 would be 2.5 GB of float32 rows).
    """
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != DIR_FORMAT:
        raise ValueError(f"{path}/meta.json is not an ebmlens class statistics directory (format {meta.get('format')!r})")
    k_all, rank, d = int(meta["num_classes"]), int(meta["rank"]), int(np.prod(meta["shape"]))
    wanted = sorted(set(range(k_all) if classes is None else (int(k) for k in classes)))
    bad = [k for k in wanted if not 0 <= k < k_all]
    if bad:
        raise ValueError(f"classes {bad[:5]} are outside the {k_all} classes of {path}")
    missing = [k for k in wanted if not _class_file(path, k).exists()]
    if missing:
        raise ValueError(f"{path} lacks the statistics of {len(missing)} class(es) (e.g. {missing[:5]}); "
                         f"finish them with ebmlens stats --out {path} (it resumes)")
    m = len(wanted)
    mean, diag = torch.zeros(m, d), torch.zeros(m, d)
    vecs, vals = torch.zeros(m, d, rank), torch.zeros(m, rank)
    total, counts = torch.zeros(m), torch.zeros(m, dtype=torch.int64)
    for i, k in enumerate(wanted):
        one = ClassStats.load(_class_file(path, k))
        mean[i], diag[i], vecs[i], vals[i] = one.mean[0], one.diag[0], one.eigvecs[0], one.eigvals[0]
        total[i], counts[i] = one.total_var[0], one.counts[0]
    return ClassStats(mean=mean, diag=diag, eigvecs=vecs, eigvals=vals, total_var=total, counts=counts,
                      shape=tuple(meta["shape"]), reg=float(meta["reg"]), source=meta["source"], split=meta.get("split"),
                      class_names=tuple(meta["class_names"]), downsample=int(meta["downsample"]),
                      row_class=None if m == k_all else tuple(wanted))
