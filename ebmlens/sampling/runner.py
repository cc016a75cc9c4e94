"""Many samples: batches, seeds by sample index, shard files, resume, torchrun.

The runner is the only part of ebmlens that knows about more than one batch. It turns a
:class:`~ebmlens.sampling.Pipeline` (or any callable ``pipe(model, y, *, generator) -> Samples``)
into a folder of images::

    OUT/
      samples.npz        images uint8 (N, H, W, C), labels int64 (N,)
      grid.png           classes as rows, up to 10 samples per class
      <class_name>/<idx>.png    one PNG per image (save_png=True)
      run.json           config (pipeline.config()), model.describe(), versions, seed, n, batch size,
                         dtype, device, timings, images/s, and "energy": one record per point of
                         the pipeline (after the init, after each stage) with the mean and std of
                         E(x) ("energy") and E(x, y) ("joint_energy") over all samples, and seconds
                         (:func:`~ebmlens.sampling.records.summarize`)
      shards/            one .npz per finished batch (kept so that a run can be resumed)

What a run is (model, pipeline, labels, seed, options) is a :class:`~ebmlens.sampling.RunPlan`,
validated once; :func:`sample` builds one and calls :func:`run`. Labels: :mod:`.labels`; file
formatting: :mod:`.outputs`.

Invariance. Sample ``i`` always gets label ``labels[i]`` and the random stream
``SampleStreams(seed, [i])`` (:mod:`ebmlens.rng`), so for a fixed seed the images do not depend on
the batch size, on the number of processes, nor on whether the run was killed and resumed:
they agree within one uint8 level (float arithmetic of batched convolutions is not bitwise
stable across batch sizes) and labels are identical. The exception is BatchNorm in train mode
(``pipeline.mode == "train"`` or ``model.sampling_mode == "train"``, as JEM++ samples): then the
images of a batch are coupled through the batch statistics and the result depends on the batch
size. The runner records ``"batch_coupled": true`` in run.json and logs a warning.

Resume. Every finished batch is written atomically as a shard (:mod:`.shards`). With
``resume=True`` the runner checks that the shards present belong to the same run (its identity in
``shards/meta.json``; each shard's indices and labels) and samples only the missing indices: a
killed run loses at most the batches in flight. The batch size may change between the attempts.

torchrun. Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1`` in the environment) each
process initialises ``torch.distributed`` (gloo on CPU, nccl on CUDA, unless already
initialised), takes every K-th batch of the missing indices, writes its shards, waits at a
barrier, and rank 0 merges the shards in index order into samples.npz, the PNGs, the grid and
run.json. With several nodes (``--nnodes``) ``out_dir`` must be on a filesystem that every node
sees. On CUDA each process uses ``cuda:LOCAL_RANK``.

>>> balanced_labels(5, [3, 7]).tolist()
[3, 7, 3, 7, 3]
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np
import torch

from .. import _dist
from .._io import atomic_save_npz, atomic_write_bytes, atomic_write_json, create_json, jsonable, versions
from .._lock import RunLock
from .._perf import AUTOCAST_DTYPES, autocast_context, matmul_precision
from ..rng import SampleStreams
from .labels import balanced_labels, resolve_classes
from .outputs import GRID_PER_CLASS, make_grid, png_bytes, to_uint8_nhwc, write_pngs
from . import shards
from .plan import Dtype, RunPlan
from .records import summarize, trace_to_cpu, with_sources

__all__ = ["sample", "run", "RunPlan", "SampleRun", "balanced_labels", "resolve_classes", "make_grid", "DTYPES",
           "GRID_PER_CLASS", "record_evaluation"]

log = logging.getLogger(__name__)

DTYPES = AUTOCAST_DTYPES  # run dtypes: "float32" (no autocast), "bfloat16", "float16"
Progress = Union[bool, Callable[[int, int], Any]]


@dataclass(frozen=True)
class SampleRun:
    """What :func:`sample` wrote.

    Attributes:
        out_dir: the run folder.
        n: number of samples.
        images: path of ``samples.npz`` (``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)``).
        grid: path of ``grid.png`` or ``None``.
        run: the content of ``run.json``.
    """

    out_dir: Path
    n: int
    images: Path
    grid: Path | None
    run: dict

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (N, H, W, C), labels int64 (N,))`` from ``samples.npz``."""
        with np.load(self.images) as z:
            return z["images"], z["labels"]


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

    Returns:
        :class:`SampleRun` (on every rank under torchrun, after rank 0 has merged).
    """
    plan = RunPlan.build(model, pipeline, n, out_dir, batch_size=batch_size, seed=seed, classes=classes,
                         labels=labels, resume=resume, device=device, dtype=dtype, save_png=save_png, grid=grid,
                         channels_last=channels_last, compile=compile, fast=fast, records=records)
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
    meta = plan.identity()
    lock = _claim_folder(plan, meta, d, dev)
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
        batch_size = _auto_batch_size(model, dev, plan.dtype, d)
        log.info("batch_size='auto' chose %d", batch_size)
    done = shards.covered(shard_dir, plan.labels)
    n_resumed = int(done.sum())
    todo = np.flatnonzero(~done)
    batches = [todo[s:s + batch_size] for s in range(0, todo.size, batch_size)]
    mine = batches[d.rank::d.world]
    if n_resumed:
        log.info("resuming %s: %d of %d samples already done", out, n_resumed, plan.n)
    t_sampling = time.perf_counter()
    _sample_batches(plan, model, mine, dev, d, progress, n_resumed)
    d.barrier(dev)
    t_sampled = time.perf_counter()

    grid_path = out / "grid.png" if plan.grid else None
    if d.rank == 0:
        facts = dict(batch_size=batch_size, batch_size_asked=plan.batch_size, device=str(dev), world_size=d.world,
                     n_resumed=n_resumed, n_new=plan.n - n_resumed)
        record = _merge(plan, meta, facts, (t_start, t_sampling, t_sampled))
    d.barrier(dev)
    if d.rank != 0:
        record = json.loads((out / "run.json").read_text())
    return SampleRun(out_dir=out, n=plan.n, images=out / "samples.npz", grid=grid_path, run=record)


def _claim_folder(plan: RunPlan, meta: dict, d: _dist.DistInfo, dev: torch.device) -> RunLock | None:
    """Rank 0 locks the folder (``OUT/.lock``: a second run on it fails at once, naming this one), checks
    and prepares it (``shards/meta.json``, created by the first writer, compared by the others); every
    rank learns whether it failed. Returns rank 0's lock."""
    out, shard_dir = plan.out_dir, plan.out_dir / "shards"
    meta_path = shard_dir / "meta.json"
    err: Exception | None = None
    lock = None
    if d.rank == 0:
        try:
            if out.exists() and not out.is_dir():
                raise ValueError(f"out_dir {out} is a file; choose a folder")
            lock = RunLock(out / ".lock", what=f"ebmlens sample of {plan.n} images").acquire()
            if not plan.resume and out.exists() and (meta_path.exists() or shards.paths(shard_dir)
                                                     or (out / "run.json").exists()):
                raise ValueError(f"{out} already holds a sampling run; pass resume=True (--resume) to continue "
                                 "it, or choose a new output folder")
            if not create_json(meta_path, meta):
                shards.check_meta(meta_path, meta)
        except Exception as e:  # report on rank 0, but do not leave the others at the barrier
            err = e
            if lock is not None:
                lock.release()
                lock = None
    if d.active:
        import torch.distributed as dist

        flag = torch.tensor([1 if err else 0], device=dev if _dist.is_nccl() else "cpu")
        dist.all_reduce(flag)
        if int(flag.item()) and err is None:
            raise ValueError("rank 0 refused the output folder (see its error above)")
    if err is not None:
        raise err
    return lock


def _sample_batches(plan: RunPlan, model, mine: list[np.ndarray], dev: torch.device, d: _dist.DistInfo,
                    progress: Progress, n_done: int) -> None:
    """This rank's batches: pipeline under autocast, one shard per batch, progress after each."""
    bar = None
    if progress is True and d.rank == 0:
        from tqdm.auto import tqdm

        # under torchrun the bar shows rank 0's share (its rate times the world size is the total rate)
        share = sum(b.size for b in mine)
        desc = "sampling" if not d.active else f"sampling (rank 0 of {d.world})"
        bar = tqdm(total=plan.n if not d.active else share, initial=n_done if not d.active else 0, unit="img",
                   desc=desc, dynamic_ncols=True, smoothing=0.1)
    try:
        for idx in mine:
            t0 = time.perf_counter()
            y = torch.from_numpy(plan.labels[idx]).to(dev)
            with autocast_context(dev, plan.dtype):
                out = plan.pipeline(model, y, generator=SampleStreams(plan.seed, idx.tolist()))
            images = getattr(out, "images", out)
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != idx.size:
                raise ValueError(f"the pipeline returned {type(images).__name__} "
                                 f"{tuple(getattr(images, 'shape', ()))} for a batch of {idx.size}; "
                                 "a pipeline must return Samples with images (B, C, H, W)")
            trace = trace_to_cpu(() if out is images else getattr(out, "trace", ()))  # one copy per batch
            shards.write(plan.out_dir / "shards", idx, plan.labels[idx], to_uint8_nhwc(images),
                         time.perf_counter() - t0, d.rank, trace)
            n_done += idx.size
            if bar is not None:
                bar.update(idx.size)
            elif callable(progress):
                progress(n_done, plan.n)
    finally:
        if bar is not None:
            bar.close()


def _auto_batch_size(model, dev: torch.device, dtype: str, d: _dist.DistInfo) -> int:
    """The largest batch whose input-gradient pass fits (CUDA), the same on every rank (their minimum)."""
    from .._perf import auto_batch_size
    from ..energy import energy_grad

    def unit(m, b: int) -> None:  # one forward + input-gradient pass: what every stage step costs
        x = torch.rand(b, *m.input_shape, device=dev)
        y = torch.zeros(b, dtype=torch.long, device=dev)
        with autocast_context(dev, dtype):
            energy_grad(lambda z: m.joint_energy_from_logits(m(z), y), x)

    size = auto_batch_size(model, unit, dev)
    if d.active:
        import torch.distributed as dist

        t = torch.tensor([size], device=dev if _dist.is_nccl() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        size = int(t.item())
    return size


# ----------------------------------------------------------------------------- merge (rank 0)
def _merge(plan: RunPlan, meta: dict, facts: dict, times: tuple[float, float, float]) -> dict:
    """Rank 0: shards -> samples.npz, PNGs, grid.png, run.json, in index order."""
    t0 = time.perf_counter()
    out = plan.out_dir
    images, trace, batch_seconds = shards.merge(out / "shards", plan.labels)
    atomic_save_npz(out / "samples.npz", images=images, labels=plan.labels)
    if plan.save_png:
        write_pngs(out, images, plan.labels, plan.class_names)
    if plan.grid:
        atomic_write_bytes(out / "grid.png", png_bytes(make_grid(images, plan.labels, plan.classes)))
    record = _run_record(plan, meta, facts, summarize(trace), batch_seconds, (*times, t0, time.perf_counter()))
    atomic_write_json(out / "run.json", record)
    log.info("wrote %d samples to %s (%.1f images/s)", plan.n, out, record["timings"]["images_per_s"] or 0.0)
    return record


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
        "files": {"samples": "samples.npz", "grid": "grid.png" if plan.grid else None,
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
        "energy": with_sources(energy, plan.pipeline),
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
