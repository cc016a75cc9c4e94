"""Every option of a sampling run in one frozen, validated dataclass: :class:`RunOptions`.

``ebmlens.sample(model, pipe, n, out, **options)`` and ``ebmlens sample`` build one; each field is one
CLI flag (``FLAG`` in its metadata), and run.json stores the stored fields as one object
(``"options"``). Each field has a *role*:

* ``"identity"``: it changes the images or the files, so a resumed run (or a sibling job-array task)
  must have the same value as the run on disk: ``seed``, ``dtype``, ``png``, ``grid``, ``records``.
  A resume that changes one is refused, naming the field (together with ``n``, the labels, the
  pipeline and the model, :meth:`RunPlan.identity <ebmlens.runs.plan.RunPlan.identity>`).
* ``"attempt"``: how one attempt runs; it may change between attempts and run.json records each
  attempt's values (``"attempts"``): ``batch_size``, ``device``, ``threads``, ``channels_last``,
  ``compile``, ``fast``.
* ``"control"``: what this invocation does, not what the run is: ``shard``, ``resume``, ``overwrite``.

Adding an option is one field here (with its flag and role) plus its click option in
``ebmlens/_cli/sample.py`` (``compute_chunk``, rows per model pass, was added that way: an
``"identity"`` field, since it changes the images).

>>> RunOptions(batch_size=8, seed=3).stored()["seed"]
3
>>> RunOptions(batch_size=0)
Traceback (most recent call last):
...
ValueError: batch_size must be a positive integer or 'auto' (CUDA), got 0; e.g. batch_size=256
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import torch

from .._dist import parse_device
from .._perf import AUTOCAST_DTYPES
from ..sampling.records import RECORDS
from .jobs import parse_shard

__all__ = ["RunOptions", "Dtype", "check_n", "resolve_compute_chunk", "CPU_COMPUTE_CHUNK"]

Dtype = Literal["float32", "bfloat16", "float16"]

_CLI_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("ebmlens_run_cli_names", default=False)


#: A sampling run's chunk on the CPU when not told (``compute_chunk="auto"``). benchmarks/chunk_cost.py
#: (bundled model, 1 thread): 0.69x the whole-batch time at batch 256, 0.98x at 64, 1.35x at 24 (padding).
CPU_COMPUTE_CHUNK = 16


def resolve_compute_chunk(value: int | str | None, device: torch.device | str) -> int | None:
    """Rows per classifier call for a run on ``device`` (what the runner passes to
    :meth:`~ebmlens.energy.EnergyModel.chunked` and records in run.json): ``"auto"`` is :data:`CPU_COMPUTE_CHUNK` on the
    CPU, ``None`` elsewhere (not measured; compiled CUDA graphs replay into one output buffer); an int
    ``m >= 1`` or ``None`` as given.

    >>> resolve_compute_chunk("auto", "cpu"), resolve_compute_chunk("auto", "cuda"), resolve_compute_chunk(8, "cpu")
    (16, None, 8)
    """
    if value == "auto":
        return CPU_COMPUTE_CHUNK if torch.device(device).type == "cpu" else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"compute_chunk must be 'auto', a positive int (rows per classifier call) or None, "
                         f"got {value!r}")
    return value


def _opt(default: Any, flag: str, role: str) -> Any:
    return field(default=default, metadata={"flag": flag, "role": role})


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass(frozen=True)
class RunOptions:
    """The options of a sampling run (all keyword arguments of :func:`ebmlens.sample`).

    Attributes:
        batch_size: images per forward/backward pass (> 0), or ``"auto"`` (CUDA: the largest that fits).
        seed: sample ``i`` draws its noise from ``SampleStreams(seed, [i])`` (>= 0).
        dtype: ``"float32"``, or ``"bfloat16"`` / ``"float16"`` autocast around the pipeline.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None``/``"auto"``: CUDA when available.
        png: write ``<class_name>/<idx>.png`` per image (CLI: ``--no-png`` turns it off).
        grid: write ``grid.png`` (CLI: ``--no-grid``).
        channels_last: run a channels-last copy of the model.
        compile: :func:`torch.compile` a copy of the classifier.
        fast: the CUDA fast path (:data:`ebmlens._perf.FAST_CUDA`); nothing on the CPU.
        records: the Pipeline's energy records (``"stages"``, ``"all"``, ``"final"``, ``"none"``;
            ``None``: the pipeline's own).
        threads: torch's process-wide CPU thread count (:func:`torch.set_num_threads`); ``None``: as it is.
        compute_chunk: rows per classifier call (:meth:`~ebmlens.energy.EnergyModel.chunked`): an int
            ``m``, ``None`` (whole batches) or ``"auto"`` (:func:`resolve_compute_chunk`: 16 on the CPU).
            Fixed chunks make the images bit-identical for every batch size (docs/sampling.md); the
            resolved value is recorded in each attempt.
        shard: ``(i, K)``, ``"i/K"`` or ``"auto"``: be task ``i`` of a ``K``-task job array.
        resume: continue the run in the output folder (only missing indices are sampled).
        overwrite: sample into a folder that holds other files or another run (its run files
            ``shards/`` and ``run.json`` are removed first).
    """

    batch_size: int | Literal["auto"] = _opt(256, "--batch-size", "attempt")
    seed: int = _opt(0, "--seed", "identity")
    dtype: Dtype = _opt("float32", "--dtype", "identity")
    device: str | None = _opt(None, "--device", "attempt")
    png: bool = _opt(True, "--no-png", "identity")
    grid: bool = _opt(True, "--no-grid", "identity")
    channels_last: bool = _opt(False, "--channels-last", "attempt")
    compile: bool = _opt(False, "--compile", "attempt")
    fast: bool = _opt(False, "--fast", "attempt")
    records: str | None = _opt(None, "--records", "identity")
    threads: int | None = _opt(None, "--threads", "attempt")
    compute_chunk: int | Literal["auto"] | None = _opt("auto", "--compute-chunk", "identity")
    shard: tuple[int, int] | None = _opt(None, "--shard", "control")
    resume: bool = _opt(False, "--resume", "control")
    overwrite: bool = _opt(False, "--overwrite", "control")

    def __post_init__(self) -> None:
        bs = self.batch_size
        if bs != "auto" and (not _is_int(bs) or int(bs) <= 0):
            raise ValueError(f"{_name('batch_size')} must be a positive integer or 'auto' (CUDA), got {bs!r}; "
                             f"e.g. {_example('batch_size', 256)}")
        if not _is_int(self.seed) or int(self.seed) < 0:
            raise ValueError(f"{_name('seed')} must be an integer >= 0, got {self.seed!r}")
        if self.dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"{_name('dtype')} must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.dtype!r}")
        if self.records is not None and self.records not in RECORDS:
            raise ValueError(f"{_name('records')} must be one of {', '.join(RECORDS)}, got {self.records!r}")
        if self.threads is not None and (not _is_int(self.threads) or int(self.threads) < 1):
            raise ValueError(f"{_name('threads')} must be a positive integer, got {self.threads!r}")
        for f in ("png", "grid", "channels_last", "compile", "fast", "resume", "overwrite"):
            if not isinstance(getattr(self, f), bool):
                raise TypeError(f"{f} must be True or False, got {getattr(self, f)!r}")
        if self.resume and self.overwrite:
            raise ValueError(f"{_name('resume')} continues the run in the folder and {_name('overwrite')} replaces it; "
                             "give one of them")
        if self.compute_chunk != "auto":
            resolve_compute_chunk(self.compute_chunk, "cpu")  # validates
        parse_device(self.device)
        set_ = object.__setattr__
        set_(self, "batch_size", bs if bs == "auto" else int(bs))
        set_(self, "seed", int(self.seed))
        set_(self, "threads", None if self.threads is None else int(self.threads))
        set_(self, "device", None if self.device is None else str(self.device))
        set_(self, "shard", parse_shard(self.shard))

    @classmethod
    def from_cli(cls, **values: Any) -> "RunOptions":
        """As the constructor, with errors naming the CLI flags (``--batch-size``) instead of the fields."""
        with cli_names():
            return cls(**values)

    def replace(self, **changes: Any) -> "RunOptions":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def roles() -> dict[str, str]:
        """``{field: role}`` (module doc)."""
        return {f.name: f.metadata["role"] for f in dataclasses.fields(RunOptions)}

    @staticmethod
    def flags() -> dict[str, str]:
        """``{field: CLI flag}``."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(RunOptions)}

    def stored(self) -> dict[str, Any]:
        """What run.json's ``"options"`` holds: every identity and attempt field (not the control ones)."""
        return {k: getattr(self, k) for k, role in self.roles().items() if role != "control"}

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run on disk."""
        return {k: getattr(self, k) for k, role in self.roles().items() if role == "identity"}

    def attempt(self) -> dict[str, Any]:
        """The fields that may change between attempts (run.json records each attempt's)."""
        return {k: getattr(self, k) for k, role in self.roles().items() if role == "attempt"}


@contextlib.contextmanager
def cli_names() -> Iterator[None]:
    """Within it, option errors name the CLI flags."""
    token = _CLI_NAMES.set(True)
    try:
        yield
    finally:
        _CLI_NAMES.reset(token)


def _name(f: str) -> str:
    if f == "n":
        return "--n" if _CLI_NAMES.get() else "n"
    return RunOptions.flags()[f] if _CLI_NAMES.get() else f


def _example(f: str, value: Any) -> str:
    return f"{_name(f)} {value}" if _CLI_NAMES.get() else f"{f}={value}"


def check_n(n: Any) -> int:
    """``n`` as a Python int (> 0), else a ``ValueError`` naming it (``--n`` within :func:`cli_names`)."""
    if not _is_int(n) or int(n) <= 0:
        raise ValueError(f"{_name('n')} must be a positive integer number of samples, got {n!r}; "
                         f"e.g. {_example('n', 64)}")
    return int(n)
