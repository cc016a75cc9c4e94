"""Sampling: initializers and stages that move images down a classifier's energy, the pipeline that
chains them, and presets that reproduce published samplers.

>>> from ebmlens import sampling as S
>>> sorted(S.STAGES)[:3]
['Clamp', 'Contrast', 'DataInit']

Contracts (see ARCHITECTURE.md): an :class:`Initializer` is ``init(model, y, *, generator) -> x``;
a :class:`Stage` is ``stage(model, x, y, *, generator, callback=None) -> x`` (``callback``: the
optional per-step :class:`StepCallback`); both are small frozen dataclasses of
hyper-parameters (never a model), statistics and seed images held by reference and recorded by
fingerprint. A user's own stage is any callable with that signature; :func:`register_stage` adds a
class to :data:`STAGES` (the contract tests run over it).
"""

from __future__ import annotations

from ..attacks import Geometry, L2Ball, LinfBall, Unconstrained
from ..stats import ClassStats, class_stats
from . import presets
from .init import DataInit, GaussianInit, NoiseInit, PCAInit
from .pgd import TargetedPGD
from .pipeline import Initializer, Pipeline, Stage, StepCallback, draw_labels, stage_config
from .records import Samples, StageRecord
from .sgld import SGLD, MomentumSGLD
from .transforms import Clamp, Contrast

__all__ = [
    "Initializer", "Stage", "StepCallback", "Pipeline", "Samples", "StageRecord", "draw_labels",
    "stage_config",
    "GaussianInit", "PCAInit", "NoiseInit", "DataInit", "TargetedPGD", "SGLD", "MomentumSGLD", "Contrast", "Clamp",
    "ClassStats", "class_stats", "presets", "STAGES", "INITIALIZERS", "register_stage",
    "Geometry", "L2Ball", "LinfBall", "Unconstrained",
]

#: name -> class of every initializer shipped here.
INITIALIZERS: dict[str, type] = {c.__name__: c for c in (GaussianInit, PCAInit, NoiseInit, DataInit)}

#: name -> class of every registered initializer and stage (the contract tests run over all of them).
STAGES: dict[str, type] = {
    **INITIALIZERS,
    **{c.__name__: c for c in (TargetedPGD, SGLD, MomentumSGLD, Contrast, Clamp)},
}


def register_stage(cls: type, *, initializer: bool = False) -> type:
    """Add a stage (or, with ``initializer=True``, an initializer) class to the registry; usable as a
    decorator. Names must be unique."""
    if not isinstance(cls, type) or not callable(cls):
        raise TypeError(f"register_stage expects a class, got {cls!r}")
    if cls.__name__ in STAGES and STAGES[cls.__name__] is not cls:
        raise ValueError(f"a stage named {cls.__name__!r} is already registered")
    STAGES[cls.__name__] = cls
    if initializer:
        INITIALIZERS[cls.__name__] = cls
    return cls
