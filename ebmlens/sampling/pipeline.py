"""The pipeline: an initializer, then stages, with energies recorded in between.

    x = init(model, y, generator=g)
    for stage in stages:
        x = stage(model, x, y, generator=g)

That is the whole loop (:meth:`Pipeline.__call__`). Around it the pipeline puts the model in its
sampling mode (BatchNorm eval or train, recorded), and after the init and after every stage runs
one no-grad forward pass to record ``E(x)`` and ``E(x, y)`` per sample in ``Samples.trace``.
Per-step traces (the energy or loss a stage sees at each of its steps; no extra passes) are kept
only with ``trace_steps=True``.

>>> import torch
>>> from ebmlens.energy import EnergyModel
>>> from ebmlens.sampling import NoiseInit, Clamp
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> m = EnergyModel(net, input_shape=(3, 2, 2), num_classes=3)
>>> out = Pipeline(NoiseInit(), [Clamp()])(m, torch.arange(3), generator=torch.Generator().manual_seed(0))
>>> out.images.shape, [t["stage"] for t in out.trace]
(torch.Size([3, 3, 2, 2]), ['NoiseInit', 'Clamp'])
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

from .. import rng
from .._io import fingerprint, jsonable
from ..energy import validate_labels

__all__ = ["Stage", "Initializer", "Pipeline", "Samples", "draw_labels", "stage_config"]


@runtime_checkable
class Initializer(Protocol):
    """``init(model, y, *, generator) -> x``: float ``(N, C, H, W)`` in [0, 1] on ``y.device``."""

    def __call__(self, model: Any, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor: ...


@runtime_checkable
class Stage(Protocol):
    """``stage(model, x, y, *, generator) -> x``: same shape, dtype and device; ``x`` not mutated."""

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor, *,
                 generator: rng.GeneratorLike = None) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class Samples:
    """What a pipeline returns.

    Attributes:
        images: ``(N, C, H, W)`` float in [0, 1] (on the sampling device).
        labels: ``(N,)`` the target classes (on the sampling device).
        trace: one dict per point of the pipeline (after the init, after each stage): ``"stage"`` (name),
            ``"index"`` (0 = init), ``"energy"`` ``E(x)`` and ``"joint_energy"`` ``E(x, y)`` (CPU float32
            ``(N,)``), ``"seconds"`` (wall time of that stage), and with ``trace_steps`` ``"steps"``
            (CPU ``(T, N)``: the per-step value the stage reported, its energy or loss).
        mode: the BatchNorm mode used (``"eval"``/``"train"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    trace: list[dict[str, Any]]
    mode: str = "eval"

    def summary(self) -> list[dict[str, Any]]:
        """Per-stage means and stds of ``E(x)`` and ``E(x, y)`` (JSON-able)."""
        out = []
        for t in self.trace:
            e, j = t["energy"].double(), t["joint_energy"].double()
            out.append({"stage": t["stage"], "index": t["index"], "n": int(e.numel()),
                        "energy_mean": float(e.mean()) if e.numel() else float("nan"),
                        "energy_std": float(e.std()) if e.numel() > 1 else 0.0,
                        "joint_energy_mean": float(j.mean()) if j.numel() else float("nan"),
                        "joint_energy_std": float(j.std()) if j.numel() > 1 else 0.0,
                        "seconds": t["seconds"]})
        return out


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
    from ..data import ImageData
    from ..stats import ClassStats

    if isinstance(v, ClassStats):
        return v.fingerprint
    if isinstance(v, ImageData):
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


def _takes_callback(stage: Any) -> bool:
    try:
        return "callback" in inspect.signature(stage).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Pipeline:
    """``Pipeline(init, stages, mode=None, trace_steps=False)``.

    Args:
        init: an :class:`Initializer`.
        stages: :class:`Stage` s applied in order.
        mode: BatchNorm mode while sampling, ``"eval"`` or ``"train"`` (JEM++ samples in train mode:
            the batch is then coupled and saved BN buffers are restored); ``None`` = the model's
            ``sampling_mode``.
        trace_steps: also keep each stage's per-step values.

    Call: ``pipe(model, y, *, generator=None, progress=None) -> Samples`` with ``y`` a ``(N,)`` label
    tensor, or an int ``N`` for unconditional sampling with labels drawn from the class prior (the
    init's ``stats.prior`` when it has statistics, else uniform).
    """

    init: Initializer
    stages: tuple = ()
    mode: Literal["eval", "train"] | None = field(default=None, kw_only=True)
    trace_steps: bool = field(default=False, kw_only=True)

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

    def config(self) -> dict[str, Any]:
        """JSON-able description (for run.json): the init and stages as their fields, statistics and
        seed images as fingerprints, the BN mode (``None``: the model's own) and ``trace_steps``."""
        return {"init": stage_config(self.init), "stages": [stage_config(s) for s in self.stages],
                "mode": self.mode, "trace_steps": self.trace_steps}

    def prior(self, num_classes: int) -> torch.Tensor:
        stats = getattr(self.init, "stats", None)
        if stats is not None and getattr(stats, "num_classes", None) == num_classes:
            return stats.prior
        return torch.full((num_classes,), 1.0 / num_classes)

    def __call__(self, model, y: torch.Tensor | int, *, generator: rng.GeneratorLike = None,
                 progress: bool | Callable[[int, int, str], None] | None = None) -> Samples:
        for attr in ("logits", "joint_energy", "energy_from_logits", "input_shape", "num_classes", "mode"):
            if not hasattr(model, attr):
                raise TypeError(f"Pipeline expects an ebmlens.EnergyModel (missing .{attr}); wrap your classifier "
                                "with ebmlens.EnergyModel(...)")
        device = next(iter(model.parameters()), torch.empty(0)).device
        if isinstance(y, int) and not isinstance(y, bool):
            if y <= 0:
                raise ValueError(f"number of samples must be > 0, got {y}")
            y = draw_labels(y, self.prior(model.num_classes), generator, device=device)
        y = validate_labels(y, model.num_classes).to(device)   # samples live on the model's device
        mode = self.mode or model.sampling_mode
        points: list[Any] = [self.init, *self.stages]
        report = _progress(progress, len(points))
        trace: list[dict[str, Any]] = []
        with model.mode(mode):
            t0 = time.perf_counter()
            x = self.init(model, y, generator=generator)
            _check_init(x, y, model, self.init)
            trace.append(self._record(model, x, y, 0, self.init, t0, None))
            report(1, _stage_name(self.init))
            for i, stage in enumerate(self.stages, start=1):
                steps: list[torch.Tensor] = []
                kw = {"callback": lambda t, v: steps.append(v.detach().float().cpu())} \
                    if self.trace_steps and _takes_callback(stage) else {}
                t0 = time.perf_counter()
                x = stage(model, x, y, generator=generator, **kw)
                trace.append(self._record(model, x, y, i, stage, t0, steps if self.trace_steps else None))
                report(i + 1, _stage_name(stage))
        return Samples(images=x.detach(), labels=y, trace=trace, mode=mode)

    @staticmethod
    @torch.no_grad()
    def _record(model, x, y, index, stage, t0, steps) -> dict[str, Any]:
        logits = model.logits(x)
        rec = {"stage": _stage_name(stage), "index": index,
               "energy": model.energy_from_logits(logits).cpu(),
               "joint_energy": model.joint_energy_from_logits(logits, y).cpu(),
               "seconds": time.perf_counter() - t0}
        if steps is not None:
            rec["steps"] = torch.stack(steps) if steps else torch.empty(0, x.shape[0])
        return rec


def _check_init(x: Any, y: torch.Tensor, model, init: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"initializer {_stage_name(init)} must return a float (N, C, H, W) tensor, got "
                        f"{type(x).__name__} {getattr(x, 'shape', '')}")
    if x.shape[0] != y.shape[0] or x.shape[1] != model.input_shape[0]:
        raise ValueError(f"initializer {_stage_name(init)} returned shape {tuple(x.shape)} for {y.shape[0]} labels "
                         f"and a model with input_shape {model.input_shape}")


def _progress(progress, total: int) -> Callable[[int, str], None]:
    if progress is None or progress is False:
        return lambda i, name: None
    if callable(progress):
        return lambda i, name: progress(i, total, name)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="stages", unit="stage", leave=False)

    def report(i: int, name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)
        if i >= total:
            bar.close()
    return report
