"""The run plan: what a sampling run is, built and validated once (:meth:`RunPlan.build`).

:func:`ebmlens.sample` and ``ebmlens sample`` both build a plan and hand it to
:func:`ebmlens.runs.runner.run`; the runner adds only what a run measures (device, batches,
timings). The options are one :class:`~ebmlens.runs.options.RunOptions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._io import jsonable
from .._perf import fast_settings, prepare_model
from .labels import run_labels
from .options import RunOptions, check_n
from .shards import FORMAT  # run.json's and shards/meta.json's format

__all__ = ["RunPlan", "FORMAT"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RunPlan:
    """A validated sampling run (build it with :meth:`build`).

    Attributes:
        model: the :class:`~ebmlens.energy.EnergyModel`.
        pipeline: a :class:`~ebmlens.sampling.Pipeline` or any ``pipeline(model, y, *, generator) -> Samples``.
        n: number of samples.
        out_dir: the run folder.
        labels: int64 ``(n,)``: sample ``i`` gets class ``labels[i]``.
        classes: the class order (grid rows, run.json).
        class_names: the names of all the model's classes.
        options: the :class:`RunOptions` (``records`` resolved to the pipeline's; on the device, ``fast``
            resolved into ``dtype`` / ``channels_last`` / ``compile``: :meth:`for_device`).
        mode: the BatchNorm mode of sampling (the pipeline's, else the model's ``sampling_mode``).
        compile_mode, matmul_precision: set by :meth:`for_device` (``fast`` on CUDA); ``None``: torch's.
        record_points: a merge's ``(index, source)`` of the records (no pipeline then).
    """

    model: torch.nn.Module
    pipeline: Callable
    n: int
    out_dir: Path
    labels: np.ndarray
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    options: RunOptions = RunOptions()
    mode: str = "eval"
    compile_mode: str | None = None
    matmul_precision: str | None = None
    record_points: tuple[tuple[int, str], ...] | None = None

    @classmethod
    def build(cls, model: torch.nn.Module, pipeline: Callable, n: int, out_dir: Any, *,
              classes: None | str | Sequence[int | str] = None,
              labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
              options: RunOptions | None = None, **kwargs: Any) -> "RunPlan":
        """Check every option (before any file or process group is touched) and resolve the labels.
        ``options`` or the :class:`RunOptions` fields as keywords; ``records`` (not ``None``) replaces
        the pipeline's ``records``."""
        if options is not None and kwargs:
            raise TypeError(f"give options= or keyword options ({', '.join(kwargs)}), not both")
        unknown = sorted(set(kwargs) - set(RunOptions.roles()))
        if unknown:
            raise TypeError(f"unknown run option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(RunOptions.roles())}")
        opts = options if options is not None else RunOptions(**kwargs)
        if not isinstance(opts, RunOptions):
            raise TypeError(f"options must be an ebmlens.runs.RunOptions, got {type(opts).__name__}")
        n = check_n(n)
        if not callable(pipeline):
            raise TypeError(f"pipeline must be callable as pipeline(model, y, generator=...), got "
                            f"{type(pipeline).__name__}; build one with ebmlens.sampling.presets.get(name)")
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "num_classes"):
            raise TypeError(f"model must be an ebmlens EnergyModel, got {type(model).__name__}; "
                            "load one with ebmlens.load_model('source:name')")
        if opts.records is not None and getattr(pipeline, "records", None) != opts.records:
            if not (dataclasses.is_dataclass(pipeline) and hasattr(pipeline, "records")):
                raise TypeError(f"records={opts.records!r} needs an ebmlens Pipeline (with a records option), got "
                                f"{type(pipeline).__name__}; leave records=None for your own pipeline")
            pipeline = dataclasses.replace(pipeline, records=opts.records)  # type: ignore[type-var]
        opts = opts.replace(records=getattr(pipeline, "records", None))
        num_classes = int(getattr(model, "num_classes"))  # an EnergyModel's int (checked above)
        names = tuple(getattr(model, "class_names", None) or [str(i) for i in range(num_classes)])
        y, order = run_labels(n, num_classes, names, classes, labels)
        mode = str(getattr(pipeline, "mode", None) or getattr(model, "sampling_mode", "eval"))
        return cls(model=model, pipeline=pipeline, n=n, out_dir=Path(out_dir), labels=y, classes=tuple(order),
                   class_names=names, options=opts, mode=mode)

    def for_device(self, device: torch.device) -> "RunPlan":
        """The plan as it runs on ``device``: ``fast`` resolved (:func:`ebmlens._perf.fast_settings`; it changes
        nothing on the CPU, which is logged) and, for channels_last / compile, the model replaced by a
        prepared **copy** (the caller's model is never changed)."""
        plan, o = self, self.options
        if o.fast:
            f = fast_settings(device, dtype=o.dtype, channels_last=o.channels_last, compile=o.compile)
            if device.type != "cuda":
                log.info("fast=True changes nothing on %s (measured effects: docs/cli.md, fast paths)", device.type)
            plan = dataclasses.replace(self, options=o.replace(dtype=f["dtype"], channels_last=f["channels_last"],
                                                               compile=f["compile"]),
                                       compile_mode=f["compile_mode"], matmul_precision=f["matmul_precision"])
        o = plan.options
        if o.channels_last or o.compile:
            plan = dataclasses.replace(plan, model=prepare_model(plan.model, channels_last=o.channels_last,
                                                                 compile=o.compile, compile_mode=plan.compile_mode,
                                                                 inplace=False))
        return plan

    @classmethod
    def from_meta(cls, out_dir: Path, meta: dict, labels: np.ndarray) -> "RunPlan":
        """The plan of a run recorded in ``shards/meta.json`` (for ``ebmlens merge``): no model and no
        pipeline, only what the merge and run.json need (``meta["run"]``: :meth:`facts`)."""
        run = meta["run"]
        stored = {k: v for k, v in run["options"].items() if k != "device"}  # the merging host may lack that device
        return cls(model=None, pipeline=None, n=int(meta["n"]), out_dir=Path(out_dir), labels=labels,  # type: ignore[arg-type]
                   classes=tuple(run["classes"]), class_names=tuple(run["class_names"]),
                   options=RunOptions(**stored), mode=run["mode"], compile_mode=run.get("compile_mode"),
                   record_points=tuple((int(i), str(src)) for i, src in run.get("record_points") or ()) or None)

    def facts(self) -> dict[str, Any]:
        """What ``shards/meta.json`` records beside the identity, so that a merge needs no model."""
        points = getattr(self.pipeline, "record_points", None)
        return {"classes": list(self.classes), "class_names": list(self.class_names), "mode": self.mode,
                "options": jsonable(self.options.stored()),
                "compile_mode": self.compile_mode,
                "record_points": [[i, src] for i, src in sorted(points().items())] if callable(points) else None}

    @property
    def batch_coupled(self) -> bool:
        """BatchNorm in train mode couples the images of a batch (no batch-size invariance)."""
        return self.mode == "train"

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the shards on disk (``shards/meta.json``; compared key by key,
        the options field by field)."""
        config = getattr(self.pipeline, "config", None)
        cfg = config() if callable(config) else {"repr": repr(self.pipeline)}
        describe = getattr(self.model, "describe", None)
        return {"format": FORMAT, "n": self.n, "options": jsonable(self.options.identity()),
                "labels_sha256": hashlib.sha256(self.labels.tobytes()).hexdigest(),
                "pipeline": jsonable(cfg),
                "model": jsonable(describe()) if callable(describe) else type(self.model).__name__}
