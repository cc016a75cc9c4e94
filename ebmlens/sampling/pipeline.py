"""The pipeline: an initializer, then stages, with energies recorded in between.

    x = init(model, y, generator=g)
    for stage in stages:
        x = stage(model, x, y, generator=g)

That is the whole loop (:meth:`Pipeline.__call__`). Around it the pipeline puts the model in its
sampling mode (BatchNorm eval or train, recorded) and records ``E(x)`` and ``E(x, y)`` per sample at
the *points* its ``records`` option keeps (after the init = point 0, after stage ``i`` = point ``i``):
one :class:`StageRecord` per kept point in ``Samples.trace``. ``records="stages"`` (default) keeps the
init, every stage's output that a later stage takes as its input, and the final point; points
followed only by pixel maps (Contrast, Clamp) are dropped, since the final record differs from them
only by that map. ``"all"``: every point; ``"final"``: the last one; ``"none"``: no records.

A record costs no pass when the next stage's first gradient pass is at that point (SGLD, MomentumSGLD,
TargetedPGD without random start; ``first_pass_at_input``): its energies are taken from that pass's
logits through the Stage protocol's :class:`StepCallback` (``source="pass"``). Otherwise (the final
point, a point before a pixel map) one no-grad forward runs (``source="record"``). With
``trace_steps=True`` every stage gets a per-step ``callback`` and its values are kept in its record's
``steps``. Progress is reported only to a ``progress`` callback.

>>> import torch
>>> from ebmlens.energy import EnergyModel
>>> from ebmlens.sampling import NoiseInit, Clamp, SGLD
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> m = EnergyModel(net, input_shape=(3, 2, 2), num_classes=3)
>>> out = Pipeline(NoiseInit(), [Clamp()])(m, torch.arange(3), generator=torch.Generator().manual_seed(0))
>>> out.images.shape, [r.stage for r in out.trace], out.trace[1].energy.shape
(torch.Size([3, 3, 2, 2]), ['NoiseInit', 'Clamp'], torch.Size([3]))
>>> Pipeline(NoiseInit(), [SGLD(step_size=0.1, noise=0.0, steps=2), Clamp()]).record_points()
{0: 'pass', 2: 'record'}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

from .. import rng
from .._io import fingerprint, jsonable
from ..energy import validate_labels
from .records import RECORDS, Recorder, Samples, StageRecord, record_points
from .records import stage_name as _stage_name

__all__ = ["Stage", "StepCallback", "Initializer", "Pipeline", "Samples", "StageRecord", "draw_labels",
           "stage_config"]


@runtime_checkable
class Initializer(Protocol):
    """``init(model, y, *, generator) -> x``: float ``(N, C, H, W)`` in [0, 1] on ``y.device``."""

    def __call__(self, model: Any, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor: ...


class StepCallback(Protocol):
    """``callback(step, value, *, logits=None)``: what a stage reports after each gradient pass.

    Called once per gradient pass, before the update it drives, with ``step`` counting from 0,
    ``value`` the ``(N,)`` quantity the stage descends at the current iterate ``x_step`` (its energy
    or loss; detached) and, when the stage has them, ``logits`` ``(N, K)`` of that same pass
    (detached). At ``step == 0`` the iterate is the stage's input unless the stage starts elsewhere
    (e.g. a random start), so ``model.energy_from_logits(logits)`` and
    ``model.joint_energy_from_logits(logits, y)`` are then the energies of the previous point of the
    pipeline: the record pass after the previous stage can be taken from the first gradient pass.
    """

    def __call__(self, step: int, value: torch.Tensor, *, logits: torch.Tensor | None = None) -> None: ...


@runtime_checkable
class Stage(Protocol):
    """``stage(model, x, y, *, generator, callback=None) -> x``: same shape, dtype and device; ``x`` not
    mutated. ``callback`` is an optional :class:`StepCallback` (a stage without gradient passes accepts
    and ignores it); the pipeline passes one only with ``trace_steps=True``."""

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: StepCallback | None = None) -> torch.Tensor: ...


def draw_labels(n: int, prior: torch.Tensor | Sequence[float], generator: rng.GeneratorLike = None,
                device=None) -> torch.Tensor:
    """``n`` labels drawn from a class prior (unconditional sampling), one uniform per sample
    (inverse CDF), so with :class:`~ebmlens.rng.SampleStreams` label ``i`` depends on stream ``i`` only."""
    p = torch.as_tensor(prior, dtype=torch.float64).flatten()
    if p.numel() < 1 or bool((p < 0).any()) or not float(p.sum()) > 0:
        raise ValueError(f"class prior must be non-negative with a positive sum, got {p.tolist()}")
    cdf = torch.cumsum(p / p.sum(), 0)
    u = rng.rand(generator, int(n), (), device="cpu", dtype=torch.float64)
    y = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(p.numel() - 1)
    return y.to(device) if device is not None else y


def _config_value(v: Any) -> Any:
    """Statistics, image sets and tensors as fingerprints; nested stages as their configs."""
    from ..data import ImageSet
    from ..stats import ClassStats

    if isinstance(v, ClassStats):
        return v.fingerprint
    if isinstance(v, ImageSet):
        return {"source": v.source, "count": len(v), "sha256": v.fingerprint}
    if isinstance(v, torch.Tensor):
        return {"tensor": list(v.shape), "sha256": fingerprint(v.float())}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return stage_config(v)
    return NotImplemented


def stage_config(stage: Any) -> dict[str, Any]:
    """``{"name": class name, **fields}`` with statistics / images replaced by their fingerprints."""
    if not (dataclasses.is_dataclass(stage) and not isinstance(stage, type)):
        return {"name": getattr(stage, "__name__", type(stage).__name__), "repr": repr(stage)}
    out: dict[str, Any] = {"name": type(stage).__name__}
    for f in dataclasses.fields(stage):
        out[f.name] = jsonable(getattr(stage, f.name), convert=_config_value)
    return out


@dataclass(frozen=True)
class Pipeline:
    """``Pipeline(init, stages, mode=None, trace_steps=False, records="stages")``.

    Args:
        init: an :class:`Initializer`.
        stages: :class:`Stage` s applied in order.
        mode: BatchNorm mode while sampling, ``"eval"`` or ``"train"`` (JEM++ samples in train mode:
            the batch is then coupled and saved BN buffers are restored); ``None`` = the model's
            ``sampling_mode``.
        trace_steps: pass every stage a :class:`StepCallback` and keep its per-step values
            (``StageRecord.steps``; of the kept points only: ``records="all"`` keeps every stage's).
        records: which points get an energy record: ``"stages"`` | ``"all"`` | ``"final"`` | ``"none"``
            (module doc; :meth:`record_points` lists them with their source).

    Call: ``pipe(model, y, *, generator=None, progress=None) -> Samples`` with ``y`` a ``(N,)`` label
    tensor, or an int ``N`` for unconditional sampling with labels drawn from the class prior (the
    init's ``stats.prior`` when it has statistics, else uniform). ``progress(done, total, stage_name)``
    is called after the init and after every stage (bars are the runner's).
    """

    init: Initializer
    stages: Sequence[Any] = ()  # kept as a tuple
    mode: Literal["eval", "train"] | None = field(default=None, kw_only=True)
    trace_steps: bool = field(default=False, kw_only=True)
    records: Literal["stages", "all", "final", "none"] = field(default="stages", kw_only=True)

    def __post_init__(self) -> None:
        if not callable(self.init):
            raise TypeError(f"Pipeline init must be an initializer (callable), got {type(self.init).__name__}")
        stages = (self.stages,) if callable(self.stages) else tuple(self.stages)
        for i, s in enumerate(stages):
            if not callable(s):
                raise TypeError(f"Pipeline stage {i} is not callable: {s!r}")
        object.__setattr__(self, "stages", stages)
        if self.mode not in (None, "eval", "train"):
            raise ValueError(f"Pipeline mode must be 'eval', 'train' or None, got {self.mode!r}")
        if self.records not in RECORDS:
            raise ValueError(f"Pipeline records must be one of {', '.join(map(repr, RECORDS))}, got {self.records!r}")

    def config(self) -> dict[str, Any]:
        """JSON-able description (for run.json): the init and stages as their fields, statistics and
        seed images as fingerprints, the BN mode (``None``: the model's own), ``trace_steps`` and, when not
        the default ``"stages"``, ``records``."""
        cfg: dict[str, Any] = {"init": stage_config(self.init), "stages": [stage_config(s) for s in self.stages],
               "mode": self.mode, "trace_steps": self.trace_steps}
        if self.records != "stages":  # the default stays out: runs made before the option resume
            cfg["records"] = self.records
        return cfg

    def record_points(self) -> dict[int, str]:
        """``{point index: source}`` of the records this pipeline keeps: ``"pass"`` (taken from the next
        stage's first gradient pass) or ``"record"`` (one no-grad forward); planned from what each stage
        declares (:func:`~ebmlens.sampling.records.record_points`)."""
        return record_points(self.init, self.stages, self.records)

    def prior(self, num_classes: int) -> torch.Tensor:
        stats = getattr(self.init, "stats", None)
        if stats is not None and getattr(stats, "num_classes", None) == num_classes:
            return stats.prior
        return torch.full((num_classes,), 1.0 / num_classes)

    def __call__(self, model, y: torch.Tensor | int, *, generator: rng.GeneratorLike = None,
                 progress: Callable[[int, int, str], None] | None = None) -> Samples:
        for attr in ("logits", "joint_energy", "energy_from_logits", "input_shape", "num_classes", "mode"):
            if not hasattr(model, attr):
                raise TypeError(f"Pipeline expects an ebmlens.EnergyModel (missing .{attr}); wrap your classifier "
                                "with ebmlens.EnergyModel(...)")
        progress = None if progress is False else progress
        if progress is not None and (isinstance(progress, bool) or not callable(progress)):
            raise TypeError(f"Pipeline progress must be a callback progress(done, total, stage_name) or None, got "
                            f"{progress!r}; for a progress bar use ebmlens.sample(..., progress=True)")
        device = next(iter(model.parameters()), torch.empty(0)).device
        if isinstance(y, int) and not isinstance(y, bool):
            if y <= 0:
                raise ValueError(f"number of samples must be > 0, got {y}")
            y = draw_labels(y, self.prior(model.num_classes), generator, device=device)
        y = validate_labels(y, model.num_classes).to(device)   # samples live on the model's device
        mode, total = self.mode or model.sampling_mode, 1 + len(self.stages)
        with model.mode(mode):
            rec = Recorder(model, y, self.record_points(), trace_steps=self.trace_steps)
            rec.start(self.init)
            x = self.init(model, y, generator=generator)
            _check_init(x, y, model, self.init)
            rec.end(self.init)
            _report(progress, 1, total, self.init)
            for i, stage in enumerate(self.stages, start=1):
                callback = rec.start(stage, x)    # the record of the stage's input point, when planned
                x = _run_stage(stage, model, x, y, generator, callback)
                rec.end(stage)
                _report(progress, i + 1, total, stage)
            trace = rec.finish(x)
        return Samples(images=x.detach(), labels=y, trace=trace, mode=mode)


def _report(progress: Callable[[int, int, str], None] | None, done: int, total: int, stage: Any) -> None:
    if progress is not None:
        progress(done, total, _stage_name(stage))


def _run_stage(stage, model, x, y, generator, callback) -> torch.Tensor:
    if callback is None:
        return stage(model, x, y, generator=generator)
    try:
        return stage(model, x, y, generator=generator, callback=callback)
    except TypeError as e:
        if "unexpected keyword argument 'callback'" not in str(e):
            raise
        raise TypeError(f"stage {_stage_name(stage)} does not accept callback=, which trace_steps=True passes; "
                        "the Stage protocol is stage(model, x, y, *, generator=None, callback=None) (a stage "
                        "without steps may ignore it)") from e


def _check_init(x: Any, y: torch.Tensor, model, init: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"initializer {_stage_name(init)} must return a float (N, C, H, W) tensor, got "
                        f"{type(x).__name__} {getattr(x, 'shape', '')}")
    if x.shape[0] != y.shape[0] or x.shape[1] != model.input_shape[0]:
        raise ValueError(f"initializer {_stage_name(init)} returned shape {tuple(x.shape)} for {y.shape[0]} labels "
                         f"and a model with input_shape {model.input_shape}")
