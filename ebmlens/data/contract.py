"""The one reading contract every image source goes through: pixels and labels read, never guessed.

* :func:`read_pixels` - arrays from files (npz, samples folders) and tensors from the Python API:
  ``uint8`` taken as is; float must be finite and in [0, 1] (an overshoot of at most ``1e-3`` either
  side, e.g. from a resize, is clamped and said once in a logging warning); anything else (NaN,
  [0, 255], [-1, 1], other integer dtypes) is a one-line ``ValueError`` naming the file, what was
  found and the fix.
* :func:`read_labels` - integer class indices (whole-number floats accepted), one per image, >= 0.
* :func:`~ebmlens.data.classmap.require_labels` (in classmap, which maps folders) - the single check of a consumer
  that needs labels (energy report, accuracy, calibration, counterfactual, train, class statistics, conditional
  metrics, DataInit with same-class seeds): the set must be labeled; folder-named classes are mapped to the model's
  class names (:func:`ebmlens.data.classmap.map_classes`); labels must lie in ``[0, K)``.

>>> import numpy as np
>>> read_pixels(np.full((1, 2, 2, 3), 7, np.uint8), "x").max()
np.uint8(7)
>>> read_pixels(np.full((1, 3, 2, 2), -0.5, np.float32), "x.npz")
Traceback (most recent call last):
...
ValueError: x.npz: float images must be in [0, 1] but hold values in [-0.5, -0.5]; if they are in [-1, 1] use (x + 1) / 2
"""  # noqa: E501 - the doctest's expected exception line cannot be split

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["read_pixels", "read_labels", "TOLERANCE"]

log = logging.getLogger("ebmlens.data")

#: float pixels within this distance outside [0, 1] are clamped (with one warning), not refused
TOLERANCE = 1e-3
_LAYOUTS = ("nhwc", "nchw")


def _layout(shape: tuple[int, ...], where: str, layout: str | None) -> str:
    """``"nhwc"`` or ``"nchw"`` of a 4-D batch: the one whose channel axis holds 1 or 3 values."""
    if layout is not None:
        if layout not in _LAYOUTS:
            raise ValueError(f"{where}: layout must be 'nhwc' or 'nchw', got {layout!r}")
        c = shape[3] if layout == "nhwc" else shape[1]
        if c not in (1, 3):
            raise ValueError(f"{where}: with layout={layout} the images have {c} channels; only 1 or 3 are read")
        return layout
    last, first = shape[3] in (1, 3), shape[1] in (1, 3)
    if last and first and shape[1] != shape[3]:
        return "nhwc" if shape[3] == 3 else "nchw"  # an RGB axis and a 1-row/column axis: RGB is the channel
    if last and first:
        raise ValueError(f"{where}: images of shape {shape} could be (N, H, W, C) or (N, C, H, W); add ?layout=nhwc "
                         "or ?layout=nchw to the data spec (npz:PATH?layout=nhwc)")
    if last or first:
        return "nhwc" if last else "nchw"
    c = shape[3] if shape[3] <= shape[1] else shape[1]
    fix = "drop the alpha channel (x[..., :3])" if c == 4 else "save 1 (grayscale) or 3 (RGB) channels"
    raise ValueError(f"{where}: images of shape {shape} have no channel axis of size 1 or 3; {fix}")


def read_pixels(a: Any, where: str, *, layout: str | None = None, allow_3d: bool = True) -> np.ndarray:
    """The contract's pixels: ``uint8 (N, H, W, C)`` from an array or tensor read from ``where``.

    Args:
        a: ``(N, H, W, C)`` or ``(N, C, H, W)`` (``C`` 1 or 3; ``(N, H, W)`` grayscale when
            ``allow_3d``); ``uint8``, or float in [0, 1].
        where: the file (or what the user handed in), named in every error.
        layout: ``"nhwc"``/``"nchw"`` when the shape alone is ambiguous.
    """
    try:
        import torch

        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind in "USV":
        raise ValueError(f"{where}: images are {a.dtype} arrays, not pixels; save uint8 or float32 arrays")
    if a.ndim == 3 and allow_3d:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"{where}: images must be a 4-D batch (N, H, W, C) or (N, C, H, W), got shape {a.shape}")
    if a.shape[0] and _layout(a.shape, where, layout) == "nchw":
        a = a.transpose(0, 2, 3, 1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_ or a.dtype.kind in "iu":
        top = int(a.max()) if a.size else 0
        fix = "x.astype(np.uint8)" if a.size and a.min() >= 0 and top <= 255 else "x / 65535 (16-bit) as float32"
        raise ValueError(f"{where}: images are {a.dtype}, which is not read (only uint8 or float in [0, 1]); "
                         f"save {fix}")
    if a.dtype.kind != "f":
        raise ValueError(f"{where}: images have dtype {a.dtype}; save uint8 or float in [0, 1]")
    if a.size == 0:
        return np.zeros(a.shape, np.uint8)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{where}: {bad} pixel value(s) are NaN or infinite; fix or drop those images "
                         "(np.isfinite(x).all(axis=(1, 2, 3)) selects the good ones)")
    lo, hi = float(a.min()), float(a.max())
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        if lo >= -TOLERANCE and hi <= 255 + TOLERANCE:
            fix = "if they are 0-255 values use x / 255"
        elif lo >= -1 - TOLERANCE and hi <= 1 + TOLERANCE:
            fix = "if they are in [-1, 1] use (x + 1) / 2"
        else:
            fix = "rescale them to [0, 1] first"
        raise ValueError(f"{where}: float images must be in [0, 1] but hold values in [{lo:.4g}, {hi:.4g}]; {fix}")
    if lo < 0 or hi > 1:
        log.warning("%s: float images hold values in [%.6g, %.6g]; clamped to [0, 1] (within the %g tolerance)",
                    where, lo, hi, TOLERANCE)
    return np.ascontiguousarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8))


def read_labels(labels: Any, n: int, where: str) -> np.ndarray:
    """The contract's labels: ``int64 (n,)`` class indices >= 0 (whole-number floats accepted)."""
    y = np.asarray(labels)
    if y.dtype == object or y.dtype.kind not in "iuf" and y.dtype != np.bool_:
        raise ValueError(f"{where}: labels are {y.dtype}, not class indices; save an integer array")
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where}: {y.shape} labels for {n} images; save one class index per image")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError(f"{where}: labels are floats that are not whole numbers (e.g. "
                             f"{y[~np.isfinite(y) | (y != np.round(y))][0]}); save integer class indices")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise ValueError(f"{where}: labels hold {int(y.min())} (< 0); an unlabeled set is written "
                         "npz:PATH?unlabeled, otherwise save class indices >= 0")
    return y
