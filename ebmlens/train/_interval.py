"""Per-interval records of a run (``TrainConfig(log_every=N)``): every ``N`` steps one row in
``intervals.json`` (the objective's own summary, e.g. DAT's BCE / AUC / T, and clean / robust accuracy
of the evaluated model) and, for objectives that sample (DAT), a grid ``grids/step_NNNNNNN.png``
(one row per class, from the same seeds at every interval)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write_bytes, atomic_write_json

__all__ = ["interval_row", "write_grid"]


def write_grid(images: torch.Tensor, per_class: int, path: Path) -> Path:
    """``images`` ``(K * per_class, C, H, W)`` in class order as a PNG: one row per class."""
    from PIL import Image

    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, C, H, W)
    n, c, h, w = x.shape
    k = n // per_class
    tiles = x[:k * per_class].reshape(k, per_class, c, h, w).transpose(0, 3, 1, 4, 2)  # (k, h, per, w, c)
    arr = np.ascontiguousarray(tiles.reshape(k * h, per_class * w, c))
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def interval_row(objective, state, model, eval_fn, *, step: int, out: Path, per_class: int,
                 generator: torch.Generator) -> tuple[dict, object]:
    """One interval's row and the objective's state with its interval sums emptied.

    ``eval_fn(model) -> dict`` gives the accuracies; ``model`` is the one evaluated (the EMA when on).
    """
    row: dict = {"step": int(step)}
    summary = getattr(objective, "interval_summary", None)
    if callable(summary):
        part, state = summary(state)
        row.update(part)
    row.update({k: v for k, v in eval_fn(model).items() if k in ("n", "clean_acc", "robust_acc")})
    sampler = getattr(objective, "samples", None)
    if callable(sampler) and per_class > 0:
        y = torch.arange(model.num_classes).repeat_interleave(per_class).to(next(model.parameters()).device)
        path = out / "grids" / f"step_{step:07d}.png"
        write_grid(sampler(model, y, generator), per_class, path)
        row["grid"] = str(path.relative_to(out))
    return row, state


def save_intervals(out: Path, rows: list) -> None:
    atomic_write_json(out / "intervals.json", rows)
