"""Many samples: batches, seeds by sample index, shard files, resume, torchrun, job arrays.

The runner is the only part of ebmlens that knows about more than one batch. It turns a
:class:`~ebmlens.sampling.Pipeline` (or any callable ``pipe(model, y, *, generator) -> Samples``)
into a folder of images::

    OUT/
      images.npy         uint8 (N, H, W, C) in index order; np.load(..., mmap_mode="r") reads it lazily
      labels.npy         int64 (N,)
      samples.npz        images and labels as above, in one file (written when the images take <= 2 GiB)
      grid.png           classes as rows, up to 10 samples per class
      <class_name>/<idx>.png    one PNG per image (png=True)
      run.json           config (pipeline.config()), model.describe(), versions, seed, n, batch size,
                         dtype, device, timings, images/s, "files" (the names above), and "energy": one
                         record per point of the pipeline (after the init, after each stage) with the mean
                         and std of E(x) ("energy") and E(x, y) ("joint_energy") over all samples, and
                         seconds (:func:`~ebmlens.sampling.records.summarize`)
      shards/            one .npz per finished batch (kept so that a run can be resumed), meta.json,
                         labels.npy, and task-i-of-K.json records of job-array tasks

What a run is (model, pipeline, labels and one :class:`~ebmlens.runs.RunOptions`) is a
:class:`~ebmlens.runs.RunPlan`, validated once; :func:`sample` builds one and calls :func:`run`. run.json:
:mod:`.record`. Labels: :mod:`.labels`; file
formatting: :mod:`.outputs`; the merged files: :mod:`.flat`; locks and job arrays: :mod:`.jobs`.

Flat memory. A batch's shard, then its PNGs, are written by a background thread while the next batch
samples (:mod:`.writer`; a queue of one batch, errors raised in the loop), by the process (rank, task)
that sampled it. The merge streams the shards one at a time into ``images.npy`` (seek + write),
copies that into ``samples.npz``, and writes only the PNGs that are missing, so its memory does not
grow with N (beyond 8 bytes of label and a few bytes of energies per sample) and a resumed run never
rewrites a finished PNG. Readers (:meth:`SampleRun.load`, ``folder:OUT``, ``ebmlens evaluate OUT``)
prefer the ``.npy`` pair and memory-map it.

Invariance. Sample ``i`` always gets label ``labels[i]`` and the random stream
``SampleStreams(seed, [i])`` (:mod:`ebmlens.rng`), so for a fixed seed the images do not depend on
the batch size, on the number of processes or tasks, nor on whether the run was killed and resumed:
they agree within one uint8 level (float arithmetic of batched convolutions is not bitwise stable
across batch sizes; the same batches on the same device give identical images) and labels are
identical. The exception is BatchNorm in train mode (``pipeline.mode == "train"`` or
``model.sampling_mode == "train"``, as JEM++ samples): then the images of a batch are coupled through
the batch statistics and the result depends on the batch size. The runner records
``"batch_coupled": true`` in run.json and logs a warning.

Resume. Every finished batch is written atomically as a shard (:mod:`.shards`). With
``resume=True`` the runner checks that the shards present belong to the same run (its identity in
``shards/meta.json``: n, labels, pipeline, model and the identity options seed, dtype, records, png,
grid; each shard's indices and labels) and samples only the missing indices: a killed run loses at most
the batches in flight. The batch size, device and thread count may change between the attempts; each
attempt is recorded in run.json's ``"attempts"``. A folder that holds anything else is refused unless
``overwrite=True`` (:func:`.jobs.check_out_dir`).

torchrun and srun. Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1`` in the environment), or
``srun`` with several tasks (:mod:`ebmlens._dist`), each process initialises ``torch.distributed``
(gloo on CPU, nccl on CUDA, unless already initialised), takes every K-th batch of the missing
indices, writes its shards and PNGs, waits at a barrier, and rank 0 merges. With several nodes
``out_dir`` must be on a filesystem that every node sees. On CUDA each process uses
``cuda:LOCAL_RANK``.

Job arrays. ``shard=(i, K)`` (``ebmlens sample --shard i/K``, or ``--shard auto`` from SLURM's array
variables) samples only the contiguous block of indices of task ``i`` (:func:`.jobs.block`), locks
only that block, needs no ``resume`` to join a folder whose ``shards/meta.json`` has the same
settings, and does not merge: :func:`merge` (``ebmlens merge OUT``) does, once every task has
finished, naming the missing tasks and indices otherwise.

>>> balanced_labels(5, [3, 7]).tolist()
[3, 7, 3, 7, 3]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from .. import _dist
from .._io import atomic_write_json
from .._lock import RunLock
from .._perf import AUTOCAST_DTYPES, autocast_context, matmul_precision
from ..energy import EnergyModel
from ..sampling.records import summarize
from . import jobs, record, shards
from .flat import SampleRun, write_run_files
from .labels import balanced_labels, resolve_classes
from .loop import auto_batch_size_all_ranks, sample_batches
from .options import resolve_compute_chunk
from .outputs import GRID_PER_CLASS, make_grid
from .plan import RunPlan
from .record import record_evaluation

__all__ = ["sample", "run", "merge", "RunPlan", "SampleRun", "balanced_labels", "resolve_classes", "make_grid",
           "DTYPES", "GRID_PER_CLASS", "record_evaluation"]

log = logging.getLogger(__name__)

DTYPES = AUTOCAST_DTYPES  # run dtypes: "float32" (no autocast), "bfloat16", "float16"
Progress = Union[bool, Callable[[int, int], Any]]


def sample(model: torch.nn.Module, pipeline: Callable, n: int, out_dir: str | os.PathLike, *,
           classes: None | str | Sequence[int | str] = None,
           labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
           progress: Progress = False, **options: Any) -> SampleRun:
    """Draw ``n`` samples with ``pipeline`` from ``model`` into ``out_dir``.

    Args:
        model: an :class:`~ebmlens.energy.EnergyModel` (moved to the device).
        pipeline: a :class:`~ebmlens.sampling.Pipeline` or any callable
            ``pipeline(model, y, *, generator) -> Samples`` (``.images`` float ``(B, C, H, W)`` in
            [0, 1]; ``.trace`` optional, :class:`~ebmlens.sampling.StageRecord` s).
            ``pipeline.config()`` is recorded when present.
        n: number of samples (> 0).
        out_dir: run folder (created). It must be empty, or hold this run (then ``resume=True``), or
            ``overwrite=True`` is given.
        classes: ``None``/``"all"`` (every class) or a list of class indices or names; labels are
            ``classes[i % K]``.
        labels: explicit labels ``(n,)`` instead of ``classes``.
        progress: ``True`` for a tqdm bar on stderr (images/s), or a callback
            ``progress(done, n)`` called after every batch (``done`` counts this process's view:
            resumed images plus the ones it finished).
        **options: the fields of :class:`~ebmlens.runs.RunOptions` (``batch_size=256, seed=0,
            dtype="float32", device=None, png=True, grid=True, channels_last=False, compile=False,
            fast=False, records=None, threads=None, shard=None, resume=False, overwrite=False``), or
            ``options=RunOptions(...)``. ``batch_size`` does not change the images except with BatchNorm
            in train mode; ``channels_last`` / ``compile`` / ``fast`` run on a copy of the model and may
            change pixels by float rounding (same distribution); every value is in run.json.

    Returns:
        :class:`SampleRun` (on every rank under torchrun, after rank 0 has merged).
    """
    plan = RunPlan.build(model, pipeline, n, out_dir, classes=classes, labels=labels, **options)
    return run(plan, progress=progress)


def _hint_threads() -> None:
    """Say so when torch will use several threads on a CPU that is already busy (load average at or
    above the core count): there one thread per process is often much faster (docs/cli.md)."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):  # no load average on this platform
        return
    if torch.get_num_threads() > 1 and load >= cores:
        log.warning("the CPU is busy (load average %.1f on %d cores) and torch uses %d threads: --threads 1 "
                    "(threads=1) is often faster on a loaded machine; see docs/cli.md", load, cores,
                    torch.get_num_threads())


def run(plan: RunPlan, *, progress: Progress = False) -> SampleRun:
    """Carry out a :class:`RunPlan` (see :func:`sample` for ``progress`` and the result)."""
    if plan.batch_coupled:
        log.warning("sampling with BatchNorm in train mode couples the images of a batch: results depend "
                    "on the batch size (and process count); batch-size invariance does not hold")
    o = plan.options
    jobs.check_out_dir(plan.out_dir, resume=o.resume, overwrite=o.overwrite, shard=o.shard)
    if o.threads is not None:
        torch.set_num_threads(o.threads)  # process-wide, as asked; recorded in the attempt
    else:
        _hint_threads()
    t_start = time.perf_counter()
    d = _dist.init_if_needed(o.device)
    try:
        dev = _dist.resolve_device(o.device, d)
        if o.batch_size == "auto" and dev.type != "cuda":
            raise ValueError(f"batch_size='auto' needs a CUDA device, got {str(dev)!r}: on the CPU pass a number "
                             "(e.g. --batch-size 64)")
        plan = plan.for_device(dev)  # --fast resolved; channels_last / compile on a copy of the model
        autocast_context(dev, plan.options.dtype)  # refuses a dtype the device cannot run, before any file is written
        with matmul_precision(plan.matmul_precision):
            return _run(plan, progress, d, dev, t_start)
    finally:
        d.close()


def _run(plan: RunPlan, progress: Progress, d: _dist.DistInfo, dev: torch.device, t_start: float) -> SampleRun:
    meta = {**plan.identity(), "run": plan.facts()}
    lock = jobs.claim_on_rank0(plan, meta, d, dev)
    try:
        return _run_locked(plan, progress, d, dev, t_start, meta)
    finally:
        if lock is not None:
            lock.release()


def _attempt(plan: RunPlan, batch_size: int, dev: torch.device, d: _dist.DistInfo, n_resumed: int,
             n_new: int) -> dict:
    """One attempt's values (those that may change between attempts), as resolved."""
    o = plan.options
    return {"kind": "sample", "started": record.now(), "status": "running", "host": socket.gethostname(),
            "pid": os.getpid(), "batch_size": batch_size, "batch_size_asked": o.batch_size, "device": str(dev),
            "device_asked": o.device, "threads": torch.get_num_threads(), "world_size": d.world,
            "dtype": o.dtype, "channels_last": o.channels_last, "compile": o.compile, "fast": o.fast,
            "compile_mode": plan.compile_mode, "matmul_precision": torch.get_float32_matmul_precision(),
            "images_resumed": n_resumed, "images_sampled": n_new}


def _run_locked(plan: RunPlan, progress: Progress, d: _dist.DistInfo, dev: torch.device, t_start: float,
                meta: dict) -> SampleRun:
    out, shard_dir, o = plan.out_dir, plan.out_dir / "shards", plan.options
    model = plan.model.to(dev)
    if not isinstance(model, EnergyModel):  # RunPlan.build checks it; sampling runs it in compute chunks
        raise TypeError(f"a sampling run needs an ebmlens EnergyModel, got {type(model).__name__}")
    batch_size = o.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size_all_ranks(model, dev, o.dtype, d)
        log.info("batch_size='auto' chose %d", batch_size)
    scope = np.zeros(plan.n, bool)
    scope[slice(*jobs.block(plan.n, *o.shard)) if o.shard else slice(None)] = True
    done = shards.covered(shard_dir, plan.labels) & scope
    n_resumed = int(done.sum())
    todo = np.flatnonzero(scope & ~done)
    batches = [todo[s:s + batch_size] for s in range(0, todo.size, batch_size)]
    mine = batches[d.rank::d.world]
    if n_resumed:
        log.info("resuming %s: %d of %d samples already done", out, n_resumed, int(scope.sum()))
    chunk = resolve_compute_chunk(o.compute_chunk, dev)
    attempt = _attempt(plan, batch_size, dev, d, n_resumed, int(scope.sum()) - n_resumed)
    attempt["compute_chunk"] = chunk
    if d.rank == 0:
        if o.shard is not None:
            jobs.write_task_record(out, o.shard, _task_record(plan, attempt))
        else:
            record.add_attempt(out, attempt)
    t_sampling = time.perf_counter()
    with model.chunked(chunk):  # fixed rows per classifier call: the same images for any batch size
        sample_batches(plan, model, mine, dev, d, progress, n_resumed, int(scope.sum()))
    d.barrier(dev)
    t_sampled = time.perf_counter()
    attempt.update(status="done", sampling_s=round(t_sampled - t_sampling, 4))

    if o.shard is not None:  # a job-array task: no merge
        task = _task_record(plan, attempt)
        if d.rank == 0:
            jobs.write_task_record(out, o.shard, task)
        d.barrier(dev)
        return SampleRun(out_dir=out, n=plan.n, images=out / "images.npy", grid=None, run=task)
    grid_path = out / "grid.png" if o.grid else None
    if d.rank == 0:
        t0 = time.perf_counter()
        trace, batch_seconds, files = write_run_files(out, plan.labels, plan.classes, plan.class_names,
                                                      save_png=o.png, grid=o.grid)
        t1 = time.perf_counter()
        attempt_list = record.finish_attempt(out, {"status": "done", "sampling_s": attempt["sampling_s"],
                                                   "merge_s": round(t1 - t0, 4), "total_s": round(t1 - t_start, 4)})
        timings = record.timings(t_start, t_sampling, t_sampled, t0, t1, attempt["images_sampled"], n_resumed,
                                 batch_seconds)
        run_json = _write_record(plan, meta, files, trace, timings, d.world, attempt_list)
    d.barrier(dev)
    if d.rank != 0:
        run_json = json.loads((out / "run.json").read_text())
    return SampleRun(out_dir=out, n=plan.n, images=_images_path(out), grid=grid_path, run=run_json)


def _images_path(out: Path) -> Path:
    return out / "samples.npz" if (out / "samples.npz").exists() else out / "images.npy"


def _task_record(plan: RunPlan, attempt: dict) -> dict:
    shard = plan.options.shard
    if shard is None:
        raise ValueError("a task record is written by a job-array task (shard=(i, K)) only")
    return {**attempt, "kind": "task", "indices": list(jobs.block(plan.n, *shard))}


def _write_record(plan: RunPlan, meta: dict, files: dict, trace, timings: dict, world_size: int,
                  attempt_list: list[dict]) -> dict:
    """Rank 0: run.json (atomically), after the run files."""
    rec = record.run_record(plan, meta, files, summarize(trace), timings, world_size, attempt_list)
    atomic_write_json(plan.out_dir / "run.json", rec)
    log.info("wrote %d samples to %s (%.1f images/s)", plan.n, plan.out_dir, timings["images_per_s"] or 0.0)
    return rec


def merge(out_dir: str | os.PathLike) -> SampleRun:
    """Merge the shards of a job array (``ebmlens merge OUT``) into the files of a normal run.

    Takes ``OUT/.lock``; refuses while a task still holds its block; names the missing tasks and
    indices when shards are missing. run.json is a normal run's; its ``world_size`` counts the tasks,
    its ``attempts`` are the tasks' records and the merge, and its ``sampling_s`` is the longest task's.
    A run that was already merged (or finished) keeps its timings: the merge only adds an attempt."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    meta_path = out / "shards" / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{out} holds no sampling run to merge (no shards/meta.json); sample into it first "
                                "(ebmlens sample ... --shard i/K --out OUT)")
    with RunLock(out / ".lock", what="ebmlens merge"):
        busy = jobs.live_tasks(out / "shards")
        if busy:
            raise ValueError(f"{out} is still being sampled by {', '.join(busy[:5])}; merge after every task ended")
        meta = json.loads(meta_path.read_text())
        shards.check_format(meta_path, meta, "merge")
        labels = np.load(jobs.labels_path(out))
        if hashlib.sha256(labels.tobytes()).hexdigest() != meta["labels_sha256"]:
            raise ValueError(f"{jobs.labels_path(out)} does not match shards/meta.json; delete it and resume the run")
        missing = ~shards.covered(out / "shards", labels)
        if missing.any():
            raise ValueError(jobs.missing_message(out, missing, labels.size))
        plan = RunPlan.from_meta(out, meta, labels)
        tasks = [r for r in jobs.task_records(out / "shards") if r.get("status") == "done"]
        longest = max((float(r.get("sampling_s", 0.0)) for r in tasks), default=0.0)
        t_merge = time.perf_counter()
        trace, batch_seconds, files = write_run_files(out, labels, plan.classes, plan.class_names,
                                                      save_png=plan.options.png, grid=plan.options.grid)
        t1 = time.perf_counter()
        attempt_list = record.add_attempt(out, {"kind": "merge", "started": record.now(), "status": "done",
                                                "host": socket.gethostname(), "pid": os.getpid(),
                                                "merge_s": round(t1 - t_merge, 4)})
        world = sum(int(r.get("world_size", 1)) for r in tasks) or 1
        timings = record.timings(t0 - longest, t0 - longest, t0, t_merge, t1, plan.n, 0, batch_seconds)
        run_json = _write_record(plan, meta, files, trace, timings, world, [*tasks, *attempt_list])
    return SampleRun(out_dir=out, n=plan.n, images=_images_path(out),
                     grid=out / "grid.png" if plan.options.grid else None, run=run_json)
