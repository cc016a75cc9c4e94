"""The one measurement loop: walk a data set in batches through a function, on one process or under torchrun.

Every measurement (energies, OOD scores, calibration, counterfactuals, metric features) is "for
each batch of images, compute a few numbers per image". :func:`map_batches` owns what they share:

* the checks, once: labels against the model's classes (:func:`check_labels`) before any batch,
  and the first batch's pixels (:func:`~ebmlens.energy.validate_images`) at the entry;
* sharding: under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1``) each rank takes every K-th
  batch; the per-batch results travel to rank 0, which restores index order, so the result equals
  a single process's (rank 0 gets it, the other ranks ``None``: finish with
  :func:`ebmlens._dist.run_on_rank0`);
* progress: a tqdm bar on stderr (rank 0 only) or a callback ``(done, total)``.

``fn(x, y, index) -> {key: values}`` gets a float ``(n, C, H, W)`` batch in [0, 1] on ``device``
(``arrays=True``: the uint8 ``(n, H, W, C)`` numpy batch), its labels and its dataset indices, and
returns per-image values (tensors or numpy arrays, first dimension ``n``); map_batches
concatenates each key over the batches in index order (tensors with ``torch.cat`` on the CPU,
arrays with ``numpy.concatenate``).

>>> import numpy as np, torch
>>> from ebmlens import EnergyModel
>>> from ebmlens.data import ImageData
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
>>> model = EnergyModel(net, input_shape=(3, 1, 1), num_classes=2)
>>> data = ImageData(np.zeros((5, 1, 1, 3), np.uint8), np.array([0, 1, 0, 1, 1]), ["a", "b"], "toy")
>>> out = map_batches(model, data, lambda x, y, i: {"y": y, "i": i}, batch_size=2)
>>> out["y"].tolist(), out["i"].tolist()
([0, 1, 0, 1, 1], [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import _dist
from .data import ImageSet
from .energy import EnergyModel, validate_images

__all__ = ["map_batches", "check_labels", "few_samples_warning", "MIN_GROUP"]

log = logging.getLogger(__name__)

#: Fewer samples than this in a group (a set, an input kind) make a result carry a warning.
MIN_GROUP = 20

BatchFn = Callable[[Any, torch.Tensor, np.ndarray], Mapping[str, Any]]


def _model_name(model: Any) -> str:
    src, name = getattr(model, "source", None), getattr(model, "name", None)
    return f"{src}:{name}" if src and name else ("the model" if model is None else type(model).__name__)


def check_labels(labels: Any, model: Any, source: str = "the data") -> np.ndarray:
    """``labels`` as int64 ``(N,)``, checked against ``model``'s classes ``[0, K)``.

    ``model``: an :class:`~ebmlens.EnergyModel` (or anything with ``num_classes``) or the class count
    ``K`` itself. A label outside ``[0, K)`` (say ``-1``, or ``10..19`` for a 10-class model) is a
    one-line ``ValueError`` naming ``source``, the bad values and the fix.

    >>> check_labels([0, 2, 1], 3).tolist()
    [0, 2, 1]
    """
    k = model if isinstance(model, int) and not isinstance(model, bool) else getattr(model, "num_classes", None)
    if not isinstance(k, int) or k < 1:
        raise TypeError(f"check_labels needs an EnergyModel or a class count, got {type(model).__name__}")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise TypeError(f"labels of {source} must be integer class indices of shape (N,), got {y.dtype} {y.shape}; "
                        "store them as integers, e.g. labels.astype(np.int64)")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= k)
    if bad.any():
        vals = np.unique(y[bad])
        shown = ", ".join(str(v) for v in vals[:5]) + (", ..." if vals.size > 5 else "")
        raise ValueError(f"labels of {source} must be class indices in [0, {k - 1}] for {_model_name(model)} ({k} "
                         f"classes), but {int(bad.sum())} of {y.size} are not (found {shown}); fix the labels "
                         "(e.g. subtract an offset, drop -1 'unknown' rows) or use a model with these classes")
    return y


def few_samples_warning(counts: Mapping[str, int], what: str = "result") -> list[str]:
    """Warnings (also logged) for groups with fewer than :data:`MIN_GROUP` samples."""
    out = [f"{name}: only {n} samples (< {MIN_GROUP}); the {what} and its interval are not reliable, use more images"
           for name, n in counts.items() if n < MIN_GROUP]
    for w in out:
        log.warning(w)
    return out


def _merge(parts: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    parts = sorted(parts, key=lambda p: p[0])
    keys = list(parts[0][1]) if parts else []
    out: dict[str, Any] = {}
    for k in keys:
        vals = [p[1][k] for p in parts]
        out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else np.concatenate([np.asarray(v) for v in vals])
    return out


def map_batches(model: EnergyModel | None, data: ImageSet, fn: BatchFn, *, batch_size: int,
                progress: bool | Callable[[int, int], None] = False, indices: Sequence[int] | np.ndarray | None = None,
                device: str | torch.device | None = None, labels: bool = True, arrays: bool = False,
                shard: bool = True, desc: str = "batches", name: str = "data images") -> dict[str, Any] | None:
    """``fn`` over ``data[indices]`` in batches of ``batch_size``; its values concatenated in index order.

    Args:
        model: the model the batches are for: its classes check the labels (``labels=True``) and its
            input shape the first batch; ``None`` checks nothing (feature networks).
        data: an image set (in memory or streamed: decoded by its workers).
        fn: ``fn(x, y, index) -> {key: (n, ...) values}``.
        batch_size: images per batch (memory, never results).
        progress: ``True`` for a tqdm bar (rank 0), or a callback ``(done, total)``.
        indices: the images, in order (default: all).
        device: where batches go (default: the model's device, else the CPU).
        labels: check the labels against the model's classes (consumers that need no labels: False).
        arrays: hand ``fn`` the uint8 ``(n, H, W, C)`` numpy batch instead of a float tensor.
        shard: under torchrun, split the batches among the ranks (False: every process does all).
        desc, name: the progress bar's text; what the images are called in errors.

    Returns:
        ``{key: concatenated values}`` on rank 0 (and a single process), ``None`` on the other ranks.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not callable(fn):
        raise TypeError(f"fn must be a callable (x, y, index) -> dict, got {type(fn).__name__}")
    idx = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= len(data)):
        raise ValueError(f"indices must be in [0, {len(data) - 1}] for {data.source}")
    if labels and model is not None:
        check_labels(data.labels[idx], model, data.source)
    if device is None:
        p = next(iter(model.parameters()), None) if model is not None else None
        device = p.device if p is not None else torch.device("cpu")
    dev = torch.device(device)
    d = _dist.init_if_needed(dev) if shard else _dist.DistInfo()
    starts = _dist.shard(list(range(0, idx.size, batch_size)), d)
    mine = np.concatenate([idx[s:s + batch_size] for s in starts]) if starts else idx[:0]
    bar = None
    if progress is True and d.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=int(mine.size), unit="img", dynamic_ncols=True, leave=False,
                   desc=desc if not d.active else f"{desc} (rank 0 of {d.world})")
    order = mine.tolist()  # the readers take a sequence of ints
    stream = data.arrays(batch_size, order) if arrays else data.batches(batch_size, order, dev)
    parts: list[tuple[int, Mapping[str, Any]]] = []
    done = 0
    try:
        for start, (x, y) in zip(starts, stream):
            bidx = idx[start:start + batch_size]
            if start == starts[0] and model is not None and not arrays:
                validate_images(x, model, name=name)
            y = torch.as_tensor(y, dtype=torch.long, device=None if arrays else dev)
            out = fn(x, y, bidx)
            if not isinstance(out, Mapping):
                raise TypeError(f"fn must return a dict of per-image values, got {type(out).__name__}")
            parts.append((int(start), {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                                       for k, v in out.items()}))
            done += bidx.size
            if bar is not None:
                bar.update(bidx.size)
            elif callable(progress) and d.rank == 0:
                progress(min(done * d.world, int(idx.size)), int(idx.size))
    finally:
        if bar is not None:
            bar.close()
    if not d.active:
        return _merge(parts)
    gathered = _dist.gather_to_rank0(parts)
    return None if gathered is None else _merge([p for rank_parts in gathered for p in rank_parts])
