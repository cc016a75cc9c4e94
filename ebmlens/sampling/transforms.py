"""Pixel maps between stages: :class:`Contrast` (Robust JEM's lowered contrast) and :class:`Clamp`.

Both are deterministic (they ignore ``generator``), take no gradient passes (they accept and ignore
the Stage protocol's ``callback``) and keep shape, dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import torch

from .. import rng
from ..stats import ClassStats, missing_stats_error

__all__ = ["Contrast", "Clamp"]


@dataclass(frozen=True)
class Contrast:
    """Lower (``c < 1``) or raise the contrast: ``x <- m + c (x - m)``.

    Korst & Asadulaev (Robust JEM) lower the contrast of the adversarial prior before SGLD "so that
    SGLD does not push pixels out of [-1, 1] and no clamping is needed"; the operation is not
    specified further. We read it as this affine map around a centre ``m``:

    * ``"image"`` - each image's own per-channel mean (keeps its average colour);
    * ``"data"``  - the data set's per-channel mean pixel (needs ``stats``);
    * a float     - a constant grey level; ``0.5`` is 0 in [-1, 1] units, i.e. scaling the
      source's ``u = 2x - 1`` by ``c``.

    Args:
        c: contrast factor (> 0).
        center: ``"image"`` | ``"data"`` | float in [0, 1].
        stats: :class:`ClassStats` for ``center="data"`` (held by reference).
    """

    c: float
    center: Union[Literal["image", "data"], float] = "image"
    stats: ClassStats | None = field(default=None, compare=False, repr=False)

    #: a map of each pixel on its own (no gradient): no energy record is planned just before it
    pixel_map: ClassVar[bool] = True

    def unit_range_after(self, unit_in: bool) -> bool:
        """``m + c (x - m)`` with ``c <= 1`` and ``m`` in [0, 1] stays in [0, 1]."""
        return unit_in and self.c <= 1

    def __post_init__(self) -> None:
        if not self.c > 0:
            raise ValueError(f"Contrast c must be > 0, got {self.c!r}")
        if isinstance(self.center, str):
            if self.center not in ("image", "data"):
                raise ValueError(f"Contrast center must be 'image', 'data' or a float, got {self.center!r}")
            if self.center == "data" and self.stats is None:
                raise missing_stats_error("Contrast(center='data')")
        elif not 0 <= float(self.center) <= 1:
            raise ValueError(f"Contrast center must be in [0, 1], got {self.center!r}")

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: Any = None) -> torch.Tensor:
        if self.center == "image":
            m = x.mean(dim=(2, 3), keepdim=True)
        elif self.center == "data":
            s = self.stats
            assert s is not None
            pix = (s.mean * s.row_weights.unsqueeze(1)).sum(0).view(*s.shape)     # (C, h, w)
            m = pix.mean(dim=(1, 2)).to(x.device, x.dtype).view(1, -1, 1, 1)
        else:
            m = torch.as_tensor(float(self.center), device=x.device, dtype=x.dtype)
        return m + self.c * (x - m)


@dataclass(frozen=True)
class Clamp:
    """``x <- clamp(x, lo, hi)`` (default [0, 1], the model's pixel range)."""

    lo: float = 0.0
    hi: float = 1.0

    pixel_map: ClassVar[bool] = True

    def unit_range_after(self, unit_in: bool) -> bool:
        return self.lo >= 0 and self.hi <= 1

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"Clamp needs lo < hi, got lo={self.lo!r}, hi={self.hi!r}")

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: Any = None) -> torch.Tensor:
        return x.clamp(self.lo, self.hi)
