"""What a pipeline returns: :class:`Samples`, one :class:`StageRecord` per point of the pipeline, and
the one summary of them (:func:`summarize`, used by :meth:`Samples.summary` and by the runner for
run.json's ``"energy"`` section).

A *point* is the state after the initializer (index 0) and after every stage (index ``i``). Its record
holds ``E(x)`` and ``E(x, y)`` per sample at that point, the stage's wall time, where the energies
come from (``source``: ``"pass"``, the next stage's first gradient pass, or ``"record"``, a no-grad
forward of the pipeline) and, with ``Pipeline(trace_steps=True)``, the per-step values the stage
reported through its callback. Which points get a record is the pipeline's ``records`` option
(:data:`RECORDS`).

>>> import torch
>>> r = StageRecord("Clamp", 1, energy=torch.tensor([1.0, 3.0]), joint_energy=torch.tensor([2.0, 4.0]), seconds=0.5)
>>> summarize([r])[0]["energy"]
{'mean': 2.0, 'std': 1.0}
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

__all__ = ["StageRecord", "Samples", "summarize", "RECORDS", "trace_to_cpu", "with_sources"]

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
