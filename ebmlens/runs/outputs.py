"""Output formatting of a sampling run: uint8 images, the class grid, PNG bytes, folder names.

>>> import numpy as np
>>> to_uint8_nhwc(__import__("torch").full((1, 3, 2, 2), 0.5)).shape
(1, 2, 2, 3)
>>> safe_name("truck / lorry"), make_grid(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), [1]).shape
('truck_lorry', (8, 8, 3))
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._io import atomic_write_bytes

__all__ = ["GRID_PER_CLASS", "to_uint8_nhwc", "to_uint8", "nhwc_numpy", "safe_name", "make_grid", "png_bytes",
           "png_path", "write_pngs"]

GRID_PER_CLASS = 10


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Float ``(N, C, H, W)`` in [0, 1] -> uint8 ``(N, H, W, C)`` (rounded, clamped)."""
    return nhwc_numpy(to_uint8(x))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float ``(N, C, H, W)`` in [0, 1] -> uint8 ``(N, C, H, W)`` on the same device (rounded, clamped)."""
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def nhwc_numpy(u8: torch.Tensor) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` (any device) -> a numpy ``(N, H, W, C)`` array (the device-to-host copy)."""
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def safe_name(name: str) -> str:
    """A class name as a folder name: runs of other characters than word, ``.`` and ``-`` become ``_``."""
    s = re.sub(r"[^\w.\-]+", "_", str(name)).strip("._")
    return s or "class"


def make_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[int], per_class: int = GRID_PER_CLASS,
              pad: int = 2) -> np.ndarray:
    """A uint8 ``(H', W', C)`` grid: one row per class of ``classes`` (in that order), the first
    ``per_class`` samples of that class by index, white padding."""
    _, h, w, c = images.shape
    rows = [np.flatnonzero(labels == k)[:per_class] for k in classes]
    rows = [r for r in rows if r.size]
    cols = max((r.size for r in rows), default=1)
    grid = np.full((pad + len(rows) * (h + pad), pad + cols * (w + pad), c), 255, np.uint8)
    for ri, r in enumerate(rows):
        for ci, idx in enumerate(r):
            y0, x0 = pad + ri * (h + pad), pad + ci * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = images[idx]
    return grid


def png_bytes(img: np.ndarray) -> bytes:
    """A uint8 ``(H, W, C)`` image (C = 1 or 3) as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def png_path(out: Path, index: int, label: int, class_names: Sequence[str], n: int) -> Path:
    """``out/<class_name>/<index>.png``, the index zero-padded to at least 6 digits (``n`` samples)."""
    width = max(6, len(str(n - 1)))
    return out / safe_name(class_names[label]) / f"{index:0{width}d}.png"


def write_pngs(out: Path, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
               indices: np.ndarray | None = None, n: int | None = None, overwrite: bool = True) -> int:
    """``out/<class_name>/<index>.png`` for every image (:func:`png_path`); ``indices`` are the images'
    sample indices (default ``0..len-1``) of a run of ``n`` (default ``len(images)``). With
    ``overwrite=False`` existing files are left alone (a resumed run never rewrites a finished PNG).
    Returns the number of files written."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    n = len(images) if n is None else n
    made: set[Path] = set()
    written = 0
    for pos, (i, k) in enumerate(zip(indices.tolist(), np.asarray(labels).tolist())):
        path = png_path(out, i, k, class_names, n)
        if not overwrite and path.exists():
            continue
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        atomic_write_bytes(path, png_bytes(images[pos]))
        written += 1
    return written
