"""The run plan: what a sampling run is, built and validated once (:meth:`RunPlan.build`).

:func:`ebmlens.sample` and ``ebmlens sample`` both build a plan and hand it to
:func:`ebmlens.sampling.runner.run`; the runner adds only what a run measures (device, batches,
timings). :func:`check_options` is the plan's check of the options that need no model, for callers
that want to fail before loading one (the CLI), in their own vocabulary (``flags``).

>>> check_options(64, "auto", 0, "bfloat16")
(64, 'auto', 0)
>>> check_options(0, 8, 0, "float32", flags={"n": "--n"})
Traceback (most recent call last):
...
ValueError: --n must be a positive integer number of samples, got 0; e.g. --n 64
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from .._dist import parse_device
from .._io import jsonable
from .._perf import AUTOCAST_DTYPES, fast_settings, prepare_model
from .jobs import parse_shard
from .labels import run_labels
from .records import RECORDS

__all__ = ["RunPlan", "check_options", "Dtype"]

log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16", "float16"]


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def check_options(n: Any, batch_size: Any, seed: Any, dtype: Any, *, channels_last: Any = False,
                  compile: Any = False, device: Any = None, fast: Any = False, records: Any = None,
                  flags: Mapping[str, str] | None = None) -> tuple[int, int | str, int]:
    """Validate the options that need no model; returns ``(n, batch_size, seed)`` as Python ints
    (``batch_size`` may be ``"auto"``). ``flags`` maps option names to the caller's names in errors."""
    name = {"n": "n", "batch_size": "batch_size", "seed": "seed", "dtype": "dtype", **(flags or {})}
    cli = name["n"].startswith("-")
    if not _is_int(n) or int(n) <= 0:
        raise ValueError(f"{name['n']} must be a positive integer number of samples, got {n!r}; "
                         f"e.g. {'--n 64' if cli else 'n=64'}")
    if batch_size != "auto" and (not _is_int(batch_size) or int(batch_size) <= 0):
        raise ValueError(f"{name['batch_size']} must be a positive integer or 'auto' (CUDA), got {batch_size!r}; "
                         f"e.g. {'--batch-size 256' if cli else 'batch_size=256'} (lower it if memory runs out)")
    if records is not None and records not in RECORDS:
        raise ValueError(f"{name.get('records', 'records')} must be one of {', '.join(RECORDS)}, got {records!r}")
    for flag_name, flag in (("channels_last", channels_last), ("compile", compile), ("fast", fast)):
        if not isinstance(flag, bool):
            raise TypeError(f"{flag_name} must be True or False, got {flag!r}")
    if not _is_int(seed) or int(seed) < 0:
        raise ValueError(f"{name['seed']} must be an integer >= 0, got {seed!r}")
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"{name['dtype']} must be one of {', '.join(AUTOCAST_DTYPES)}, got {dtype!r}")
    parse_device(device)
    return int(n), (batch_size if batch_size == "auto" else int(batch_size)), int(seed)


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
        batch_size: images per pass, or ``"auto"`` (CUDA).
        seed: sample ``i`` draws from ``SampleStreams(seed, [i])``.
        resume, dtype, device, save_png, grid, channels_last, compile, fast: as :func:`ebmlens.sample`.
        mode: the BatchNorm mode of sampling (the pipeline's, else the model's ``sampling_mode``).
        compile_mode, matmul_precision: set by :meth:`for_device` (``fast`` on CUDA); ``None``: torch's.
        shard: ``(i, K)``: this process is task ``i`` of a ``K``-task job array (its index block only,
            no merge; :mod:`.jobs`); ``None``: the whole run.
    """

    model: torch.nn.Module
    pipeline: Callable
    n: int
    out_dir: Path
    labels: np.ndarray
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    batch_size: int | Literal["auto"] = 256
    seed: int = 0
    resume: bool = False
    dtype: Dtype = "float32"
    device: str | None = None
    save_png: bool = True
    grid: bool = True
    channels_last: bool = False
    compile: bool = False
    mode: str = "eval"
    fast: bool = False
    compile_mode: str | None = None
    matmul_precision: str | None = None
    shard: tuple[int, int] | None = None
    record_points: tuple[tuple[int, str], ...] | None = None  # a merge's (index, source) of the records

    @classmethod
    def build(cls, model: torch.nn.Module, pipeline: Callable, n: int, out_dir: Any, *,
              batch_size: int | Literal["auto"] = 256, seed: int = 0,
              classes: None | str | Sequence[int | str] = None,
              labels: Sequence[int] | np.ndarray | torch.Tensor | None = None, resume: bool = False,
              device: str | torch.device | None = None, dtype: Dtype = "float32", save_png: bool = True,
              grid: bool = True, channels_last: bool = False, compile: bool = False, fast: bool = False,
              records: str | None = None, shard: str | tuple[int, int] | None = None,
              flags: Mapping[str, str] | None = None) -> "RunPlan":
        """Check every option (before any file or process group is touched) and resolve the labels;
        ``records`` (not ``None``) replaces the pipeline's ``records``."""
        n, batch_size, seed = check_options(n, batch_size, seed, dtype, channels_last=channels_last,
                                            compile=compile, device=device, fast=fast, records=records,
                                            flags=flags)
        if not callable(pipeline):
            raise TypeError(f"pipeline must be callable as pipeline(model, y, generator=...), got "
                            f"{type(pipeline).__name__}; build one with ebmlens.sampling.presets.get(name)")
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "num_classes"):
            raise TypeError(f"model must be an ebmlens EnergyModel, got {type(model).__name__}; "
                            "load one with ebmlens.load_model('source:name')")
        if records is not None and getattr(pipeline, "records", None) != records:
            if not (dataclasses.is_dataclass(pipeline) and hasattr(pipeline, "records")):
                raise TypeError(f"records={records!r} needs an ebmlens Pipeline (with a records option), got "
                                f"{type(pipeline).__name__}; leave records=None for your own pipeline")
            pipeline = dataclasses.replace(pipeline, records=records)  # type: ignore[type-var]
        num_classes = int(model.num_classes)
        names = tuple(getattr(model, "class_names", None) or [str(i) for i in range(num_classes)])
        y, order = run_labels(n, num_classes, names, classes, labels)
        mode = getattr(pipeline, "mode", None) or getattr(model, "sampling_mode", "eval")
        shard = parse_shard(shard)
        return cls(model=model, pipeline=pipeline, n=n, out_dir=Path(out_dir), labels=y, classes=tuple(order),
                   class_names=names, batch_size=batch_size, seed=seed, resume=bool(resume), dtype=dtype,
                   device=None if device is None else str(device), save_png=bool(save_png), grid=bool(grid),
                   channels_last=channels_last, compile=compile, mode=mode, fast=fast, shard=shard)

    def for_device(self, device: torch.device) -> "RunPlan":
        """The plan as it runs on ``device``: ``fast`` resolved (:func:`ebmlens._perf.fast_settings`; it changes
        nothing on the CPU, which is logged) and, for channels_last / compile, the model replaced by a
        prepared **copy** (the caller's model is never changed)."""
        plan = self
        if self.fast:
            f = fast_settings(device, dtype=self.dtype, channels_last=self.channels_last, compile=self.compile)
            if device.type != "cuda":
                log.info("fast=True changes nothing on %s (measured on the CPU: torch.compile costs ~21 s and runs "
                         "12%% slower, channels_last gains nothing; bfloat16 gained 1.76x on one CPU, nothing on "
                         "another)", device.type)
            plan = dataclasses.replace(self, **f)
        if plan.channels_last or plan.compile:
            plan = dataclasses.replace(plan, model=prepare_model(plan.model, channels_last=plan.channels_last,
                                                                 compile=plan.compile, compile_mode=plan.compile_mode,
                                                                 inplace=False))
        return plan

    @classmethod
    def from_meta(cls, out_dir: Path, meta: dict, labels: np.ndarray) -> "RunPlan":
        """The plan of a run recorded in ``shards/meta.json`` (for ``ebmlens merge``): no model and no
        pipeline, only what the merge and run.json need (``meta["run"]``, :meth:`facts`)."""
        run = meta.get("run")
        if not isinstance(run, dict):
            raise ValueError(f"{out_dir}/shards/meta.json was written by an older ebmlens (no 'run' entry); merge "
                             "it by resuming the run: ebmlens sample ... --resume")
        return cls(model=None, pipeline=None, n=int(meta["n"]), out_dir=Path(out_dir), labels=labels,  # type: ignore[arg-type]
                   classes=tuple(run["classes"]), class_names=tuple(run["class_names"]),
                   batch_size=run["batch_size"], seed=int(meta["seed"]), dtype=meta["dtype"],
                   save_png=bool(run["save_png"]), grid=bool(run["grid"]), channels_last=bool(run["channels_last"]),
                   compile=bool(run["compile"]), mode=run["mode"], fast=bool(run.get("fast", False)),
                   compile_mode=run.get("compile_mode"),
                   record_points=tuple((int(i), str(src)) for i, src in run.get("record_points") or ()) or None)

    def facts(self) -> dict[str, Any]:
        """What ``shards/meta.json`` records beside the identity, so that a merge needs no model."""
        points = getattr(self.pipeline, "record_points", None)
        return {"classes": list(self.classes), "class_names": list(self.class_names), "batch_size": self.batch_size,
                "save_png": self.save_png, "grid": self.grid, "channels_last": self.channels_last,
                "compile": self.compile, "mode": self.mode, "fast": self.fast, "compile_mode": self.compile_mode,
                "record_points": [[i, src] for i, src in sorted(points().items())] if callable(points) else None}

    @property
    def batch_coupled(self) -> bool:
        """BatchNorm in train mode couples the images of a batch (no batch-size invariance)."""
        return self.mode == "train"

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the shards on disk (``shards/meta.json``)."""
        config = getattr(self.pipeline, "config", None)
        cfg = config() if callable(config) else {"repr": repr(self.pipeline)}
        describe = getattr(self.model, "describe", None)
        return {"n": self.n, "seed": self.seed, "dtype": self.dtype,
                "labels_sha256": hashlib.sha256(self.labels.tobytes()).hexdigest(),
                "pipeline": jsonable(cfg),
                "model": jsonable(describe()) if callable(describe) else type(self.model).__name__}
