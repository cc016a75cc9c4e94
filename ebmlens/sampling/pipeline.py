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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

from .. import rng
from .._io import fingerprint, jsonable
from ..energy import validate_labels
from .records import RECORDS, Samples, StageRecord

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


def _stage_name(stage: Any) -> str:
    return getattr(stage, "__name__", None) or type(stage).__name__


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
    stages: tuple = ()
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
        cfg = {"init": stage_config(self.init), "stages": [stage_config(s) for s in self.stages],
               "mode": self.mode, "trace_steps": self.trace_steps}
        if self.records != "stages":  # the default stays out: runs made before the option resume
            cfg["records"] = self.records
        return cfg

    def record_points(self) -> dict[int, str]:
        """``{point index: source}`` of the records this pipeline keeps: ``"pass"`` (taken from the next
        stage's first gradient pass) or ``"record"`` (one no-grad forward)."""
        last = len(self.stages)
        if self.records == "none":
            return {}
        if self.records == "final":
            keep = [last]
        elif self.records == "all":
            keep = list(range(last + 1))
        else:  # drop points after which only pixel maps (Contrast, Clamp) follow
            keep = [0] + [i for i in range(1, last) if not all(_pixel_map(s) for s in self.stages[i:])] + [last]
        unit = _unit_ranges(self.init, self.stages)
        return {i: "pass" if i < last and _first_pass_at_input(self.stages[i], unit[i]) else "record"
                for i in sorted(set(keep))}

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
        steps: _Steps | None = None
        mode = self.mode or model.sampling_mode
        total, points = 1 + len(self.stages), self.record_points()
        trace: list[StageRecord] = []
        with model.mode(mode):
            t0 = time.perf_counter()
            x = self.init(model, y, generator=generator)
            _check_init(x, y, model, self.init)
            producer, seconds = self.init, time.perf_counter() - t0
            if progress is not None:
                progress(1, total, _stage_name(self.init))
            for i, stage in enumerate(self.stages, start=1):
                src = points.get(i - 1)           # the record of point i - 1 (this stage's input), if kept
                if src == "record":
                    trace.append(_record(model, x, y, i - 1, producer, seconds, steps))
                first = _FirstPass(model, y) if src == "pass" else None
                steps_i = _Steps() if self.trace_steps else None
                t0 = time.perf_counter()
                x_in, x = x, _run_stage(stage, model, x, y, generator, _callback(steps_i, first))
                if first is not None:             # from the first gradient pass, else a record pass after all
                    trace.append(first.record(model, x_in, y, i - 1, producer, seconds, steps))
                producer, seconds, steps = stage, time.perf_counter() - t0, steps_i
                if progress is not None:
                    progress(i + 1, total, _stage_name(stage))
            if len(self.stages) in points:
                trace.append(_record(model, x, y, len(self.stages), producer, seconds, steps))
        return Samples(images=x.detach(), labels=y, trace=tuple(trace), mode=mode)


class _Steps:
    """The pipeline's :class:`StepCallback` under ``trace_steps``: keeps each step's value on the CPU."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def __call__(self, step: int, value: torch.Tensor, *, logits: torch.Tensor | None = None) -> None:
        self.values.append(value.detach().float().cpu())

    def stacked(self, n: int) -> torch.Tensor:
        return torch.stack(self.values) if self.values else torch.empty(0, n)


class _FirstPass:
    """A :class:`StepCallback` that takes the energies of step 0's logits (the stage's input, see
    ``first_pass_at_input``) at once: under CUDA graphs a later replay may overwrite the logits' memory."""

    def __init__(self, model, y: torch.Tensor) -> None:
        self.model, self.y = model, y
        self.energies: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, step: int, value: torch.Tensor, *, logits: torch.Tensor | None = None) -> None:
        if step == 0 and logits is not None:
            lg = logits.detach()
            self.energies = (self.model.energy_from_logits(lg), self.model.joint_energy_from_logits(lg, self.y))

    def record(self, model, x, y, index: int, stage, seconds: float, steps: _Steps | None) -> StageRecord:
        if self.energies is None:  # the stage did not hand its first pass back: measure the point after all
            return _record(model, x, y, index, stage, seconds, steps)
        return _make_record(self.energies, y, index, stage, seconds, steps, "pass")


def _callback(*parts: Any) -> Callable | None:
    live = [p for p in parts if p is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def both(step: int, value: torch.Tensor, *, logits: torch.Tensor | None = None) -> None:
        for p in live:
            p(step, value, logits=logits)
    return both


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


def _make_record(energies: tuple[torch.Tensor, torch.Tensor], y, index: int, stage, seconds: float,
                 steps: _Steps | None, source: str) -> StageRecord:
    """``(E(x), E(x, y))``, float32 (``*_from_logits`` also under autocast), kept on the device."""
    return StageRecord(stage=_stage_name(stage), index=index, energy=energies[0].detach(),
                       joint_energy=energies[1].detach(), seconds=seconds,
                       steps=steps.stacked(y.shape[0]) if steps is not None else None,
                       source=source)  # type: ignore[arg-type]


def _record(model, x, y, index: int, stage, seconds: float, steps: _Steps | None) -> StageRecord:
    """The record pass: one no-grad forward at the point ``x`` (its time is added to the stage's)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(x)  # unchecked: stages may leave [0, 1] between steps
        energies = (model.energy_from_logits(logits), model.joint_energy_from_logits(logits, y))
    return _make_record(energies, y, index, stage, seconds + time.perf_counter() - t0, steps, "record")


def _pixel_map(stage: Any) -> bool:
    from .transforms import Clamp, Contrast

    return isinstance(stage, (Clamp, Contrast))


def _first_pass_at_input(stage: Any, unit_range: bool) -> bool:
    hook = getattr(stage, "first_pass_at_input", None)
    return bool(hook(unit_range)) if callable(hook) else False


def _unit_ranges(init: Any, stages: Sequence[Any]) -> list[bool]:
    """Per point: whether its images are known to lie in [0, 1] (what TargetedPGD's start clamp keeps)."""
    from .init import DataInit, GaussianInit, NoiseInit, PCAInit
    from .transforms import Clamp, Contrast

    inside = lambda lo, hi: lo >= 0 and hi <= 1  # noqa: E731
    unit = isinstance(init, (PCAInit, NoiseInit, DataInit)) or (isinstance(init, GaussianInit) and init.clamp)
    out = [bool(unit)]
    for s in stages:
        if isinstance(s, Clamp):
            unit = inside(s.lo, s.hi)
        elif isinstance(s, Contrast):  # m + c (x - m) with c <= 1 and m in [0, 1] stays in [0, 1]
            unit = unit and s.c <= 1
        else:
            clamp = getattr(s, "clamp", None)
            unit = clamp is not None and inside(*clamp) and hasattr(s, "first_pass_at_input")
        out.append(bool(unit))
    return out


def _check_init(x: Any, y: torch.Tensor, model, init: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"initializer {_stage_name(init)} must return a float (N, C, H, W) tensor, got "
                        f"{type(x).__name__} {getattr(x, 'shape', '')}")
    if x.shape[0] != y.shape[0] or x.shape[1] != model.input_shape[0]:
        raise ValueError(f"initializer {_stage_name(init)} returned shape {tuple(x.shape)} for {y.shape[0]} labels "
                         f"and a model with input_shape {model.input_shape}")
