"""Many samples: batches, seeds by sample index, shard files, resume, torchrun, job arrays.

The runner is the only part of ebmlens that knows about more than one batch. It turns a
:class:`~ebmlens.sampling.Pipeline` (or any callable ``pipe(model, y, *, generator) -> Samples``)
into a folder of images::

    OUT/
      images.npy         uint8 (N, H, W, C) in index order; np.load(..., mmap_mode="r") reads it lazily
      labels.npy         int64 (N,)
      samples.npz        images and labels as above, in one file (written when the images take <= 2 GiB)
      grid.png           classes as rows, up to 10 samples per class
      <class_name>/<idx>.png    one PNG per image (save_png=True)
      run.json           config (pipeline.config()), model.describe(), versions, seed, n, batch size,
                         dtype, device, timings, images/s, "files" (the names above), and "energy": one
                         record per point of the pipeline (after the init, after each stage) with the mean
                         and std of E(x) ("energy") and E(x, y) ("joint_energy") over all samples, and
                         seconds (:func:`~ebmlens.sampling.records.summarize`)
      shards/            one .npz per finished batch (kept so that a run can be resumed), meta.json,
                         labels.npy, and task-i-of-K.json records of job-array tasks

What a run is (model, pipeline, labels, seed, options) is a :class:`~ebmlens.sampling.RunPlan`,
validated once; :func:`sample` builds one and calls :func:`run`. Labels: :mod:`.labels`; file
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
``shards/meta.json``; each shard's indices and labels) and samples only the missing indices: a
killed run loses at most the batches in flight. The batch size may change between the attempts.

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

import datetime
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np
import torch

from .. import _dist
from .._io import atomic_write_json, jsonable, versions
from .._lock import RunLock
from .._perf import AUTOCAST_DTYPES, autocast_context, matmul_precision
from . import jobs, shards
from .flat import SampleRun, write_run_files
from .labels import balanced_labels, resolve_classes
from .outputs import GRID_PER_CLASS, make_grid
from .plan import Dtype, RunPlan
from .records import summarize, with_sources
from .loop import auto_batch_size_all_ranks, sample_batches

__all__ = ["sample", "run", "merge", "RunPlan", "SampleRun", "balanced_labels", "resolve_classes", "make_grid",
           "DTYPES", "GRID_PER_CLASS", "record_evaluation"]

log = logging.getLogger(__name__)

DTYPES = AUTOCAST_DTYPES  # run dtypes: "float32" (no autocast), "bfloat16", "float16"
Progress = Union[bool, Callable[[int, int], Any]]


def sample(
    model: torch.nn.Module,
    pipeline: Callable,
    n: int,
    out_dir: str | os.PathLike,
    *,
    batch_size: int | Literal["auto"] = 256,
    seed: int = 0,
    classes: None | str | Sequence[int | str] = None,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    resume: bool = False,
    progress: Progress = False,
    device: str | torch.device | None = None,
    dtype: Dtype = "float32",
    save_png: bool = True,
    grid: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    fast: bool = False,
    records: str | None = None,
    shard: str | tuple[int, int] | None = None,
) -> SampleRun:
    """Draw ``n`` samples with ``pipeline`` from ``model`` into ``out_dir``.

    Args:
        model: an :class:`~ebmlens.energy.EnergyModel` (moved to ``device``).
        pipeline: a :class:`~ebmlens.sampling.Pipeline` or any callable
            ``pipeline(model, y, *, generator) -> Samples`` (``.images`` float ``(B, C, H, W)`` in
            [0, 1]; ``.trace`` optional, :class:`~ebmlens.sampling.StageRecord` s).
            ``pipeline.config()`` is recorded when present.
        n: number of samples (> 0).
        out_dir: run folder (created). It must be empty or hold a run of the same settings
            (then pass ``resume=True``).
        batch_size: images per forward/backward pass (> 0). Does not change the images except
            with BatchNorm in train mode. ``"auto"`` (CUDA only): the largest batch whose
            input-gradient pass fits in memory (:func:`ebmlens._perf.auto_batch_size`), the minimum
            over ranks under torchrun; recorded in run.json.
        seed: sample ``i`` draws its noise from ``SampleStreams(seed, [i])``.
        classes: ``None``/``"all"`` (every class) or a list of class indices or names; labels are
            ``classes[i % K]``.
        labels: explicit labels ``(n,)`` instead of ``classes``.
        resume: continue a killed run in ``out_dir`` (only missing indices are sampled).
        progress: ``True`` for a tqdm bar on stderr (images/s), or a callback
            ``progress(done, n)`` called after every batch (``done`` counts this process's view:
            resumed images plus the ones it finished).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None``/``"auto"``: CUDA when available
            (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        dtype: ``"float32"``, or ``"bfloat16"`` / ``"float16"`` autocast around the pipeline
            (:func:`ebmlens._perf.autocast_context`; float16 on CUDA only).
        save_png: write ``<class_name>/<idx>.png`` per image.
        grid: write ``grid.png`` (classes as rows, up to 10 per class).
        channels_last: run the model with channels-last weights (faster convolutions on GPUs;
            the model is converted in place). Each forward pass equals the default one up to float
            rounding, but sign steps and long chains amplify rounding, so images differ from a
            contiguous-memory run (same distribution, not the same pixels); recorded in run.json.
        compile: wrap the classifier in :func:`torch.compile` (of a copy; pays off on long GPU runs).
        fast: on CUDA bf16 autocast, channels_last, compile with CUDA graphs, TF32 matmuls
            (:data:`ebmlens._perf.FAST_CUDA`, on a copy of the model); nothing on the CPU. In run.json.
        records: the Pipeline's energy records (``"stages"``, ``"all"``, ``"final"``, ``"none"``; ``None``: its own).
        shard: ``(i, K)``, ``"i/K"`` or ``"auto"`` (SLURM array variables): be task ``i`` of a ``K``-task
            job array: sample only its index block, no merge (then :func:`merge`).

    Returns:
        :class:`SampleRun` (on every rank under torchrun, after rank 0 has merged).
    """
    plan = RunPlan.build(model, pipeline, n, out_dir, batch_size=batch_size, seed=seed, classes=classes,
                         labels=labels, resume=resume, device=device, dtype=dtype, save_png=save_png, grid=grid,
                         channels_last=channels_last, compile=compile, fast=fast, records=records, shard=shard)
    return run(plan, progress=progress)


def run(plan: RunPlan, *, progress: Progress = False) -> SampleRun:
    """Carry out a :class:`RunPlan` (see :func:`sample` for ``progress`` and the result)."""
    if plan.batch_coupled:
        log.warning("sampling with BatchNorm in train mode couples the images of a batch: results depend "
                    "on the batch size (and process count); batch-size invariance does not hold")
    t_start = time.perf_counter()
    d = _dist.init_if_needed(plan.device)
    try:
        dev = _dist.resolve_device(plan.device, d)
        if plan.batch_size == "auto" and dev.type != "cuda":
            raise ValueError(f"batch_size='auto' needs a CUDA device, got {str(dev)!r}: on the CPU pass a number "
                             "(e.g. --batch-size 64)")
        plan = plan.for_device(dev)  # --fast resolved; channels_last / compile on a copy of the model
        autocast_context(dev, plan.dtype)  # refuses a dtype the device cannot run, before any file is written
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


def _run_locked(plan: RunPlan, progress: Progress, d: _dist.DistInfo, dev: torch.device, t_start: float,
                meta: dict) -> SampleRun:
    out, shard_dir = plan.out_dir, plan.out_dir / "shards"
    model = plan.model.to(dev)
    batch_size = plan.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size_all_ranks(model, dev, plan.dtype, d)
        log.info("batch_size='auto' chose %d", batch_size)
    scope = np.zeros(plan.n, bool)
    scope[slice(*jobs.block(plan.n, *plan.shard)) if plan.shard else slice(None)] = True
    done = shards.covered(shard_dir, plan.labels) & scope
    n_resumed = int(done.sum())
    todo = np.flatnonzero(scope & ~done)
    batches = [todo[s:s + batch_size] for s in range(0, todo.size, batch_size)]
    mine = batches[d.rank::d.world]
    if n_resumed:
        log.info("resuming %s: %d of %d samples already done", out, n_resumed, int(scope.sum()))
    facts = dict(batch_size=batch_size, batch_size_asked=plan.batch_size, device=str(dev), world_size=d.world,
                 n_resumed=n_resumed, n_new=int(scope.sum()) - n_resumed)
    if plan.shard is not None and d.rank == 0:
        jobs.write_task_record(out, plan.shard, _task_record(plan, "running", facts))
    t_sampling = time.perf_counter()
    sample_batches(plan, model, mine, dev, d, progress, n_resumed, int(scope.sum()))
    d.barrier(dev)
    t_sampled = time.perf_counter()

    if plan.shard is not None:  # a job-array task: no merge
        record = _task_record(plan, "done", {**facts, "sampling_s": round(t_sampled - t_sampling, 4)})
        if d.rank == 0:
            jobs.write_task_record(out, plan.shard, record)
        d.barrier(dev)
        return SampleRun(out_dir=out, n=plan.n, images=out / "images.npy", grid=None, run=record)
    grid_path = out / "grid.png" if plan.grid else None
    if d.rank == 0:
        record = _merge(plan, meta, facts, (t_start, t_sampling, t_sampled))
    d.barrier(dev)
    if d.rank != 0:
        record = json.loads((out / "run.json").read_text())
    return SampleRun(out_dir=out, n=plan.n, images=_images_path(out), grid=grid_path, run=record)


def _images_path(out: Path) -> Path:
    return out / "samples.npz" if (out / "samples.npz").exists() else out / "images.npy"


def _task_record(plan: RunPlan, status: str, facts: dict) -> dict:
    keep = ("batch_size", "device", "world_size", "sampling_s")
    return {"status": status, "indices": list(jobs.block(plan.n, *plan.shard)), "pid": os.getpid(),
            "host": socket.gethostname(), "images_sampled": facts["n_new"], "images_resumed": facts["n_resumed"],
            **{k: facts[k] for k in keep if k in facts}}


# ----------------------------------------------------------------------------- merge (rank 0)
def _merge(plan: RunPlan, meta: dict, facts: dict, times: tuple[float, float, float]) -> dict:
    """Rank 0: shards -> images.npy, labels.npy, samples.npz, missing PNGs, grid.png, run.json (streamed)."""
    t0 = time.perf_counter()
    out = plan.out_dir
    trace, batch_seconds, files = write_run_files(out, plan.labels, plan.classes, plan.class_names,
                                                  save_png=plan.save_png, grid=plan.grid)
    facts = {**facts, "files": files}
    record = _run_record(plan, meta, facts, summarize(trace), batch_seconds, (*times, t0, time.perf_counter()))
    atomic_write_json(out / "run.json", record)
    log.info("wrote %d samples to %s (%.1f images/s)", plan.n, out, record["timings"]["images_per_s"] or 0.0)
    return record


def merge(out_dir: str | os.PathLike) -> SampleRun:
    """Merge the shards of a job array (``ebmlens merge OUT``) into the files of a normal run.

    Takes ``OUT/.lock``; refuses while a task still holds its block; names the missing tasks and
    indices when shards are missing. run.json is a normal run's; its ``world_size`` counts the tasks
    and its ``sampling_s`` is the longest task's."""
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
        labels = np.load(jobs.labels_path(out))
        if hashlib.sha256(labels.tobytes()).hexdigest() != meta["labels_sha256"]:
            raise ValueError(f"{jobs.labels_path(out)} does not match shards/meta.json; delete it and resume the run")
        missing = ~shards.covered(out / "shards", labels)
        if missing.any():
            raise ValueError(jobs.missing_message(out, missing, labels.size))
        plan = RunPlan.from_meta(out, meta, labels)
        tasks = [r for r in jobs.task_records(out / "shards") if r.get("status") == "done"]
        devices = sorted({str(r["device"]) for r in tasks}) or ["unknown"]
        longest = max((float(r.get("sampling_s", 0.0)) for r in tasks), default=0.0)
        facts = dict(batch_size=tasks[0]["batch_size"] if tasks else plan.batch_size, batch_size_asked=plan.batch_size,
                     device=devices[0] if len(devices) == 1 else ",".join(devices),
                     world_size=sum(int(r.get("world_size", 1)) for r in tasks) or 1, n_resumed=0, n_new=plan.n)
        record = _merge(plan, meta, facts, (t0 - longest, t0 - longest, t0))
    return SampleRun(out_dir=out, n=plan.n, images=_images_path(out), grid=out / "grid.png" if plan.grid else None,
                     run=record)


def _run_record(plan: RunPlan, meta: dict, facts: dict, energy: list[dict], batch_seconds: float,
                times: tuple[float, ...]) -> dict:
    """The content of run.json (format ``ebmlens.sample/1``)."""
    t_start, t_sampling, t_sampled, t_merge, t_end = times
    sampling_s, names = t_sampled - t_sampling, plan.class_names
    counts = np.bincount(plan.labels, minlength=len(names))
    n_new = facts["n_new"]
    return jsonable({
        "format": "ebmlens.sample/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": plan.n,
        "seed": plan.seed,
        "batch_size": facts["batch_size"],
        "batch_size_asked": facts["batch_size_asked"],
        "dtype": plan.dtype,
        "channels_last": plan.channels_last,
        "compile": plan.compile,
        "fast": plan.fast, "compile_mode": plan.compile_mode, "matmul_precision": torch.get_float32_matmul_precision(),
        "records": getattr(plan.pipeline, "records", None), "device": facts["device"],
        "world_size": facts["world_size"],
        "sampling_mode": plan.mode,
        "batch_coupled": plan.batch_coupled,
        "invariance": ("images depend on the batch size (BatchNorm in train mode)" if plan.batch_coupled else
                       "images depend only on (seed, index): batch size and process count do not change them"),
        "labels": {"order": "classes[i % K]", "classes": list(plan.classes),
                   "class_names": [names[k] for k in plan.classes],
                   "counts": {names[k]: int(counts[k]) for k in plan.classes},
                   "sha256": meta["labels_sha256"]},
        "pipeline": meta["pipeline"],
        "model": meta["model"],
        "versions": versions(),
        "files": {**facts["files"], "grid": "grid.png" if plan.grid else None,
                  "png": "<class_name>/<index>.png" if plan.save_png else None, "shards": "shards/"},
        "timings": {
            "total_s": round(t_end - t_start, 4),
            "sampling_s": round(sampling_s, 4),
            "merge_s": round(t_end - t_merge, 4),
            "batch_s_sum": round(batch_seconds, 4),
            "images_sampled": n_new,
            "images_resumed": facts["n_resumed"],
            "images_per_s": round(n_new / sampling_s, 4) if sampling_s > 0 and n_new else None,
        },
        "energy": with_sources(energy, plan.pipeline if plan.pipeline is not None else plan.record_points),
    })


def record_evaluation(out_dir: str | Path, record: dict) -> None:
    """Record an evaluation of a finished run: ``metrics.json`` and the ``evaluation`` key of
    ``run.json`` (both written atomically). The runner owns ``run.json``; callers hand it the record."""
    out = Path(out_dir)
    path = out / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: evaluate a finished sampling run (its folder holds run.json)")
    atomic_write_json(out / "metrics.json", record)
    record_run = json.loads(path.read_text())
    record_run["evaluation"] = record
    atomic_write_json(path, record_run)
