"""What a pipeline returns: :class:`Samples`, one :class:`StageRecord` per point of the pipeline, and
the one summary of them (:func:`summarize`, used by :meth:`Samples.summary` and by the runner for
run.json's ``"energy"`` section).

A *point* is the state after the initializer (index 0) and after every stage (index ``i``). Its record
holds ``E(x)`` and ``E(x, y)`` per sample at that point, the stage's wall time, where the energies
come from (``source``: ``"pass"``, the next stage's first gradient pass, or ``"record"``, a no-grad
forward of the pipeline) and, with ``Pipeline(trace_steps=True)``, the per-step values the stage
reported through its callback. Which points get a record is the pipeline's ``records`` option
(:data:`RECORDS`). A :class:`Recorder` keeps the records of one pipeline call; :func:`record_points`
plans them from what each stage class declares about itself (never from its type, so a user's stage
is treated like ours):

* ``pixel_map`` (class attribute, default ``False``): the stage maps each pixel on its own and reads
  no gradient (Clamp, Contrast); points followed only by pixel maps get no record under ``"stages"``;
* ``unit_range_after(unit_in: bool) -> bool`` (default: ``False``): whether the stage's output is
  known to lie in [0, 1], given whether its input is (an initializer is asked with ``False``);
* ``first_pass_at_input(unit_range: bool) -> bool`` (default: ``False``): whether its first gradient
  pass is at its input itself, so the previous point's energies come from that pass's logits.

>>> import torch
>>> r = StageRecord("Clamp", 1, energy=torch.tensor([1.0, 3.0]), joint_energy=torch.tensor([2.0, 4.0]), seconds=0.5)
>>> summarize([r])[0]["energy"]
{'mean': 2.0, 'std': 1.0}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

__all__ = ["StageRecord", "Samples", "summarize", "RECORDS", "trace_to_cpu", "with_sources", "Recorder",
           "record_points"]

#: the pipeline's ``records`` choices: ``"stages"`` (default: the init, each stage whose output feeds the
#: next one, the final point; points followed only by pixel maps such as Clamp are dropped), ``"all"``
#: (every point), ``"final"`` (the last point only), ``"none"`` (no records: production runs).
RECORDS = ("stages", "all", "final", "none")


@dataclass(frozen=True, eq=False)
class StageRecord:
    """Energies at one point of a pipeline.

    Attributes:
        stage: the name of the initializer or stage that produced this point.
        index: 0 for the initializer, ``i`` for the ``i``-th stage.
        energy: ``E(x)`` per sample, float32 ``(N,)``, on the sampling device (:func:`trace_to_cpu` moves a
            whole trace in one transfer; the runner does, once per batch).
        joint_energy: ``E(x, y)`` per sample, float32 ``(N,)``, same device.
        seconds: wall time of the stage (its record pass included).
        steps: with ``trace_steps``, CPU float32 ``(T, N)``: the value the stage reported at each of its
            ``T`` gradient passes (its energy or loss; ``T = 0`` for a stage without steps); else ``None``.
        source: where ``energy`` / ``joint_energy`` come from: ``"pass"``, the logits of the next
            stage's first gradient pass, which is at this very point (see
            :class:`~ebmlens.sampling.StepCallback`; float32 energies also under autocast), or
            ``"record"``, a no-grad forward pass of the pipeline after the stage. Both give the same
            energies up to float rounding.
    """

    stage: str
    index: int
    energy: torch.Tensor
    joint_energy: torch.Tensor
    seconds: float
    steps: torch.Tensor | None = None
    source: Literal["record", "pass"] = "record"

    # read-only mapping access, for code written when records were dicts (``rec["energy"]``)
    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS and (key != "steps" or self.steps is not None)


_FIELDS = frozenset(f.name for f in fields(StageRecord))


def _stat(v: torch.Tensor) -> tuple[dict[str, float | None], int]:
    a = v.detach().double().cpu().numpy()
    fin = a[np.isfinite(a)]
    if not fin.size:
        return {"mean": None, "std": None}, 0
    return {"mean": float(fin.mean()), "std": float(fin.std())}, int(fin.size)


def summarize(trace: Sequence[StageRecord]) -> list[dict[str, Any]]:
    """One JSON-able entry per point, in index order:
    ``{"index", "stage", "energy": {"mean", "std"}, "n", "joint_energy": {"mean", "std"}, "seconds", "source"}``.

    Means and (population) standard deviations are over the finite values; ``n`` counts the samples
    with a finite ``E(x, y)``; ``seconds`` is rounded to 0.1 ms. This is run.json's ``"energy"`` section.
    """
    for r in trace:
        if not isinstance(r, StageRecord):
            raise TypeError(f"a trace holds StageRecord entries, got {type(r).__name__}")
    out = []
    for r in sorted(trace, key=lambda r: r.index):
        energy, _ = _stat(r.energy)
        joint, n = _stat(r.joint_energy)
        out.append({"index": int(r.index), "stage": r.stage, "energy": energy, "n": n, "joint_energy": joint,
                    "seconds": round(float(r.seconds), 4), "source": r.source})
    return out


def with_sources(entries: Sequence[Mapping[str, Any]], pipeline: Any) -> list[dict[str, Any]]:
    """:func:`summarize` entries of a merged run with each point's ``"index"`` and ``"source"`` as the
    pipeline plans them (``pipeline.record_points()``, or those ``(index, source)`` pairs as recorded in
    ``shards/meta.json`` for ``ebmlens merge``): shard files hold energies only, keyed by the record's
    position in the trace. Entries of other pipelines (or that do not match the plan) are kept."""
    points = getattr(pipeline, "record_points", None)
    planned = (sorted(points().items()) if callable(points)
               else sorted(pipeline) if isinstance(pipeline, (list, tuple)) else [])
    if len(planned) != len(entries):
        return [dict(e) for e in entries]
    return [{**e, "index": i, "source": src} for e, (i, src) in zip(entries, planned)]


def trace_to_cpu(trace: Sequence[StageRecord]) -> tuple[StageRecord, ...]:
    """The records with their energies on the CPU, moved in **one** device-to-host copy (one sync per
    batch instead of two per record). Records already on the CPU are returned as they are."""
    trace = tuple(trace)
    moving = [r for r in trace if r.energy.device.type != "cpu" or r.joint_energy.device.type != "cpu"]
    if not moving:
        return trace
    flat = torch.cat([t.detach().float().flatten() for r in moving for t in (r.energy, r.joint_energy)]).cpu()
    parts = iter(flat.split([t.numel() for r in moving for t in (r.energy, r.joint_energy)]))
    moved = {id(r): replace(r, energy=next(parts).view(r.energy.shape), joint_energy=next(parts).view(
        r.joint_energy.shape)) for r in moving}
    return tuple(moved.get(id(r), r) for r in trace)


@dataclass(frozen=True, eq=False)
class Samples:
    """What a pipeline returns.

    Attributes:
        images: ``(N, C, H, W)`` float in [0, 1] (on the sampling device).
        labels: ``(N,)`` the target classes (on the sampling device).
        trace: one :class:`StageRecord` per point of the pipeline (after the init, after each stage).
        mode: the BatchNorm mode used (``"eval"``/``"train"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    trace: tuple[StageRecord, ...] = ()
    mode: str = "eval"

    def __post_init__(self) -> None:
        object.__setattr__(self, "trace", tuple(self.trace))

    def summary(self) -> list[dict[str, Any]]:
        """Per-point means and stds of ``E(x)`` and ``E(x, y)`` (:func:`summarize`; JSON-able)."""
        return summarize(self.trace)


# ----------------------------------------------------------------------------- planning and keeping records
def stage_name(stage: Any) -> str:
    return getattr(stage, "__name__", None) or type(stage).__name__


def _declared(stage: Any, fact: str, arg: bool) -> bool:
    hook = getattr(stage, fact, None)
    return bool(hook(arg)) if callable(hook) else False


def record_points(init: Any, stages: Sequence[Any], records: str) -> dict[int, str]:
    """``{point index: source}`` of the records a pipeline keeps (module doc): ``"pass"`` (taken from the
    next stage's first gradient pass) or ``"record"`` (one no-grad forward)."""
    last = len(stages)
    if records == "none":
        return {}
    if records == "final":
        keep = [last]
    elif records == "all":
        keep = list(range(last + 1))
    else:  # drop points after which only pixel maps follow
        keep = [0] + [i for i in range(1, last) if not all(getattr(s, "pixel_map", False) for s in stages[i:])]
        keep.append(last)
    unit = [_declared(init, "unit_range_after", False)]
    for s in stages:
        unit.append(_declared(s, "unit_range_after", unit[-1]))
    return {i: "pass" if i < last and _declared(stages[i], "first_pass_at_input", unit[i]) else "record"
            for i in sorted(set(keep))}


class _Steps:
    """The :class:`StepCallback` of ``trace_steps``: keeps each step's value on the CPU."""

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


def _both(*parts: Any) -> Callable | None:
    live = [p for p in parts if p is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def both(step: int, value: torch.Tensor, *, logits: torch.Tensor | None = None) -> None:
        for p in live:
            p(step, value, logits=logits)
    return both


class Recorder:
    """The records of one pipeline call. Around each stage (the initializer is stage 0)::

        callback = recorder.start(stage, x)   # the record of the stage's input point, when planned
        x = stage(model, x, y, generator=g, callback=callback)
        recorder.end(stage)
        ...
        trace = recorder.finish(x)            # the final point's record

    Args:
        model: the :class:`~ebmlens.energy.EnergyModel`.
        y: the labels ``(N,)``.
        points: ``{point: source}`` (:func:`record_points`).
        trace_steps: hand every stage a callback that keeps its per-step values (``StageRecord.steps``).
    """

    def __init__(self, model, y: torch.Tensor, points: Mapping[int, str], *, trace_steps: bool = False) -> None:
        self.model, self.y, self.points, self.trace_steps = model, y, dict(points), trace_steps
        self.trace: list[StageRecord] = []
        self._index, self._t0 = 0, 0.0
        self._x_in: torch.Tensor | None = None
        self._first: _FirstPass | None = None
        self._producer: Any = None
        self._seconds = 0.0
        self._steps: _Steps | None = None
        self._next_steps: _Steps | None = None

    def start(self, stage: Any, x_in: torch.Tensor | None = None) -> Callable | None:
        """Before ``stage`` runs on ``x_in`` (the previous point; ``None`` for the initializer); returns the
        callback to hand it (``None`` when nothing listens)."""
        self._first, self._x_in = None, x_in
        if self._index > 0:
            if x_in is None:
                raise TypeError("Recorder.start(stage, x): after the initializer every stage needs its input x")
            src = self.points.get(self._index - 1)
            if src == "record":
                self.trace.append(self._record(x_in, self._index - 1))
            elif src == "pass":
                self._first = _FirstPass(self.model, self.y)
        self._next_steps = _Steps() if self.trace_steps and self._index > 0 else None
        self._t0 = time.perf_counter()
        return _both(self._next_steps, self._first)

    def end(self, stage: Any) -> None:
        """After ``stage`` ran: the record of its input point from its first pass, when planned so."""
        seconds = time.perf_counter() - self._t0
        if self._first is not None and self._x_in is not None:  # (start() set both after the initializer)
            if self._first.energies is None:  # the stage did not hand its first pass back: measure after all
                self.trace.append(self._record(self._x_in, self._index - 1))
            else:
                self.trace.append(self._make(self._first.energies, self._index - 1, self._seconds, "pass"))
        self._producer, self._seconds, self._steps = stage, seconds, self._next_steps
        self._index += 1

    def finish(self, x: torch.Tensor) -> tuple[StageRecord, ...]:
        """The final point's record (when kept); returns the trace."""
        if self._index - 1 in self.points:
            self.trace.append(self._record(x, self._index - 1))
        return tuple(self.trace)

    def _make(self, energies: tuple[torch.Tensor, torch.Tensor], index: int, seconds: float,
              source: Literal["record", "pass"]) -> StageRecord:
        """``(E(x), E(x, y))``, float32 (``*_from_logits`` also under autocast), kept on the device."""
        return StageRecord(stage=stage_name(self._producer), index=index, energy=energies[0].detach(),
                           joint_energy=energies[1].detach(), seconds=seconds,
                           steps=self._steps.stacked(self.y.shape[0]) if self._steps is not None else None,
                           source=source)

    def _record(self, x: torch.Tensor, index: int) -> StageRecord:
        """The record pass: one no-grad forward at the point ``x`` (its time is added to the stage's)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = self.model(x)  # unchecked: stages may leave [0, 1] between steps
            energies = (self.model.energy_from_logits(logits), self.model.joint_energy_from_logits(logits, self.y))
        return self._make(energies, index, self._seconds + time.perf_counter() - t0, "record")
