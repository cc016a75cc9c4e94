"""ebmlens: robust classifiers as energy-based models, with no retraining.

Public API only; heavy parts load lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

DEFAULT_MODEL = "ebmlens:cifar10-l2-small"
"""The model every command uses when none is named (a bundled one: no download, no dataset)."""

_LAZY = {
    "EnergyModel": ("ebmlens.energy", "EnergyModel"),
    "energy_grad": ("ebmlens.energy", "energy_grad"),
    "input_grad": ("ebmlens.energy", "input_grad"),
    "load_model": ("ebmlens.models", "load_model"),
    "list_models": ("ebmlens.models", "list_models"),
    "register_source": ("ebmlens.models", "register_source"),
    "normalization_check": ("ebmlens.models", "normalization_check"),
    "load_data": ("ebmlens.data", "load_data"),
    "ImageData": ("ebmlens.data", "ImageData"),
    "L2Ball": ("ebmlens.attacks", "L2Ball"),
    "LinfBall": ("ebmlens.attacks", "LinfBall"),
    "Unconstrained": ("ebmlens.attacks", "Unconstrained"),
    "pgd": ("ebmlens.attacks", "pgd"),
    "class_stats": ("ebmlens.stats", "class_stats"),
    "bundled_stats": ("ebmlens.models.bundled", "bundled_stats"),
    "sample": ("ebmlens.runs.runner", "sample"),
    "RunOptions": ("ebmlens.runs.options", "RunOptions"),
}
_SUBMODULES = {"energy", "attacks", "rng", "data", "stats", "models", "sampling", "runs", "analysis", "metrics",
               "train", "cli"}

__all__ = ["__version__", "DEFAULT_MODEL", *sorted(_LAZY), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"ebmlens.{name}")
    raise AttributeError(f"module 'ebmlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
