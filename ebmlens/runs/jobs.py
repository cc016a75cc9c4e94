"""Who may write a run folder: the whole-run lock, job-array tasks (``--shard i/K``) and their blocks.

A run of ``n`` samples split into ``K`` tasks gives task ``i`` (0-based) the contiguous index block
``[floor(i n / K), floor((i + 1) n / K))`` (:func:`block`). Every sample keeps its seed and label, so
the merged tasks equal one process's run. Locks (:class:`ebmlens._lock.RunLock`):

* a whole run (``ebmlens sample`` without ``--shard``, and ``ebmlens merge``) holds ``OUT/.lock``
  and refuses while a task holds a block;
* task ``i`` of ``K`` holds ``OUT/shards/.lock-i-of-K`` only (its siblings run at the same time),
  refuses while ``OUT/.lock`` is held, and while a task of another split (``K' != K``) runs;
* the first writer creates ``shards/meta.json`` (the run's identity) and ``shards/labels.npy``; the
  others compare (a task needs no ``--resume``: a requeued task continues its block).

Each task records itself in ``shards/task-i-of-K.json`` (``"status": "running"`` then ``"done"``,
pid, host, device, its block and counts), which :func:`missing_message` uses to name the tasks a merge
still waits for.

>>> block(10, 0, 3), block(10, 1, 3), block(10, 2, 3)
((0, 3), (3, 6), (6, 10))
>>> parse_shard("3/64"), parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"})
((3, 64), (5, 8))
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from .._io import atomic_path, atomic_write_json, check_writable, create_json
from .._lock import RunLock, describe_holder, held_by
from . import shards
from .outputs import safe_name

__all__ = ["check_out_dir", "parse_shard", "block", "claim", "claim_on_rank0", "live_tasks", "missing_message",
           "task_records", "labels_path", "write_task_record"]

_LOCK_RE = re.compile(r"^\.lock-(\d+)-of-(\d+)$")
_TASK_RE = re.compile(r"^task-(\d+)-of-(\d+)\.json$")
_PNG_RE = re.compile(r"^\d+\.png$")


def parse_shard(text: str | tuple | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``"i/K"`` (0-based) -> ``(i, K)``; ``"auto"``: SLURM's ``SLURM_ARRAY_TASK_ID`` (minus
    ``SLURM_ARRAY_TASK_MIN``, so ``--array=1-64`` works too) of ``SLURM_ARRAY_TASK_COUNT``."""
    if text is None or isinstance(text, tuple):
        pair = text
    elif str(text).strip().lower() == "auto":
        env = os.environ if env is None else env
        if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
            raise ValueError("--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, which are not set: "
                             "run it as a SLURM job array (sbatch --array=0-63) or give --shard i/K")
        try:
            pair = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0),
                    int(env["SLURM_ARRAY_TASK_COUNT"]))
        except ValueError:
            raise ValueError("--shard auto: SLURM_ARRAY_TASK_ID / _COUNT / _MIN are not integers") from None
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"--shard expects i/K (0-based task i of K, e.g. 3/64) or auto, got {text!r}")
        pair = (int(m.group(1)), int(m.group(2)))
    if pair is not None and not (pair[1] >= 1 and 0 <= pair[0] < pair[1]):
        raise ValueError(f"--shard {pair[0]}/{pair[1]}: i must be in 0..K-1 (0-based) and K >= 1; for a SLURM "
                         "array of K tasks use --array=0-(K-1) (with a step, give --shard i/K explicitly)")
    return pair


def block(n: int, i: int, k: int) -> tuple[int, int]:
    """Task ``i`` of ``k``: the sample indices ``[lo, hi)``."""
    return i * n // k, (i + 1) * n // k


def labels_path(out: Path) -> Path:
    return out / "shards" / "labels.npy"


def live_tasks(shard_dir: Path, skip_k: int | None = None) -> list[str]:
    """The block locks held by live tasks (those of split ``skip_k`` not counted), described."""
    found = []
    if shard_dir.is_dir():
        for p in sorted(shard_dir.iterdir()):
            m = _LOCK_RE.match(p.name)
            if m and int(m.group(2)) != skip_k:
                rec = held_by(p)
                if rec is not None:
                    who = f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}"
                    found.append(f"task {m.group(1)}/{m.group(2)} ({who})")
    return found


#: the files a run writes at the top of its folder (besides the class folders of its PNGs)
RUN_FILES = ("run.json", "images.npy", "labels.npy", "samples.npz", "grid.png", "metrics.json")


def _holds_run(out: Path) -> bool:
    return (out / "shards" / "meta.json").exists() or bool(shards.paths(out / "shards")) or (out / "run.json").exists()


def _writable_dir(out: Path) -> None:
    """``out`` (or, when it does not exist yet, its nearest existing parent) is a folder we may write in."""
    check_writable(out, f"the output folder {out}", "choose another --out")


def check_out_dir(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                  shard: tuple[int, int] | None = None) -> None:
    """Refuse an output folder before anything is computed: a file, an unwritable place, a folder that
    holds another command's files or an earlier run (unless ``overwrite``; an earlier run of the same
    settings continues with ``resume``; a job-array task joins its siblings' folder without it).
    The run's own settings are compared later, under the lock (:func:`claim`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file; choose a folder")
    _writable_dir(out)
    if overwrite:
        if shard is not None:
            raise ValueError("--overwrite with --shard would remove the other tasks' work; empty the folder once "
                             "before the job array starts, without --overwrite in the tasks")
        return
    if not out.is_dir():
        return
    if _holds_run(out):
        if shard is None and not resume:
            raise ValueError(f"{out} already holds a sampling run; pass --resume (resume=True) to continue it, "
                             "--overwrite (overwrite=True) to replace it, or choose a new output folder")
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in (".lock", "shards"))
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{out} is not empty and holds no ebmlens sampling run ({shown}); choose an empty or new "
                         "output folder, or pass --overwrite (overwrite=True) to write into it")


def _clear_run(out: Path) -> None:
    """``overwrite``: remove an earlier run's shards, top-level run files and the PNGs it wrote
    (``<class_name>/<index>.png`` of the classes its ``shards/meta.json`` names; nothing else in those
    folders), not the caller's lock."""
    if not _holds_run(out):
        return
    try:
        names = json.loads((out / "shards" / "meta.json").read_text())["run"]["class_names"]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    for name in names:
        folder = out / safe_name(name)
        if folder.is_dir():
            for png in folder.iterdir():
                if _PNG_RE.match(png.name) and png.is_file():
                    png.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
    for p in (out / "shards").iterdir() if (out / "shards").is_dir() else ():
        if p.is_dir():
            shutil.rmtree(p)
        elif not p.name.startswith(".lock"):
            p.unlink()
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def claim(out: Path, meta: dict, *, resume: bool, shard: tuple[int, int] | None, n: int,
          labels: np.ndarray, overwrite: bool = False) -> RunLock:
    """Lock the folder for a whole run (``OUT/.lock``) or for one task's block, check and prepare it.

    Raises ``ValueError`` naming the holder or the differing settings; nothing is left locked then."""
    shard_dir = out / "shards"
    meta_path = shard_dir / "meta.json"
    check_out_dir(out, resume=resume, overwrite=overwrite, shard=shard)
    if shard is None:
        lock = RunLock(out / ".lock", what=f"ebmlens sample of {n} images").acquire()
    else:
        i, k = shard
        lo, hi = block(n, i, k)
        lock = RunLock(shard_dir / f".lock-{i}-of-{k}", what=f"ebmlens sample --shard {i}/{k} (indices {lo}..{hi - 1})")
        lock.acquire()
    try:
        if shard is None:
            busy = live_tasks(shard_dir)
            if busy:
                raise ValueError(f"{out} is being sampled by job-array tasks: {', '.join(busy[:5])}; wait for them, "
                                 f"then run `ebmlens merge {out}`")
            check_out_dir(out, resume=resume, overwrite=overwrite, shard=shard)  # again, under the lock
            if overwrite:
                _clear_run(out)
        else:
            holder = held_by(out / ".lock")
            if holder is not None:
                raise ValueError(f"{describe_holder(out / '.lock', holder)}; a --shard task waits until it ends")
            other = live_tasks(shard_dir, skip_k=shard[1])
            if other:
                raise ValueError(f"{out} is being sampled by tasks of another split ({', '.join(other[:3])}); use the "
                                 f"same K as they do (--shard i/{shard[1]} differs)")
        if not create_json(meta_path, meta):
            shards.check_meta(meta_path, meta)
        if not labels_path(out).exists():
            with atomic_path(labels_path(out)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, labels)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_on_rank0(plan, meta: dict, d, dev) -> RunLock | None:
    """Rank 0 claims the folder (:func:`claim`); every rank learns whether it failed (so none is left
    waiting at a barrier). Returns rank 0's lock."""
    err: Exception | None = None
    lock = None
    if d.rank == 0:
        try:
            o = plan.options
            lock = claim(plan.out_dir, meta, resume=o.resume, shard=o.shard, n=plan.n, labels=plan.labels,
                         overwrite=o.overwrite)
        except Exception as e:  # report on rank 0, but do not leave the others at the barrier
            err = e
    if d.active:
        import torch
        import torch.distributed as dist

        from .._dist import is_nccl

        flag = torch.tensor([1 if err else 0], device=dev if is_nccl() else "cpu")
        dist.all_reduce(flag)
        if int(flag.item()) and err is None:
            raise ValueError("rank 0 refused the output folder (see its error above)")
    if err is not None:
        raise err
    return lock


def task_records(shard_dir: Path) -> list[dict]:
    """The ``task-i-of-K.json`` records in the folder, in name order."""
    if not shard_dir.is_dir():
        return []
    out = []
    for p in sorted(shard_dir.iterdir()):
        if _TASK_RE.match(p.name):
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                continue
    return out


def _ranges(idx: np.ndarray, limit: int = 6) -> str:
    """``[0, 1, 2, 7]`` -> ``"0-2, 7"`` (the first ``limit`` runs)."""
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(idx, cuts) if r.size]
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs) - limit} more ranges)" if len(runs) > limit else "")


def missing_message(out: Path, missing: np.ndarray, n: int) -> str:
    """Which samples (and which tasks of the job arrays recorded in the folder) are missing."""
    idx = np.flatnonzero(missing)
    msg = f"{idx.size} of {n} samples are missing from {out / 'shards'} (indices {_ranges(idx)})"
    recs = task_records(out / "shards")
    splits = sorted({int(r["shard"][1]) for r in recs if "shard" in r})
    status = {tuple(r["shard"]): r.get("status", "?") for r in recs if "shard" in r}
    for k in splits:
        tasks = [i for i in range(k) if missing[slice(*block(n, i, k))].any()]
        shown = ", ".join(f"{i}/{k} ({status.get((i, k), 'never started')})" for i in tasks[:8])
        more = f" and {len(tasks) - 8} more" if len(tasks) > 8 else ""
        msg += f"; missing shard tasks: {shown}{more}: run them (ebmlens sample ... --shard i/{k}) and merge again"
    if not splits:
        msg += "; continue the run with --resume (resume=True), then merge"
    return msg


def write_task_record(out: Path, shard: tuple[int, int], record: dict) -> None:
    """``shards/task-i-of-K.json`` (atomically)."""
    i, k = shard
    atomic_write_json(out / "shards" / f"task-{i}-of-{k}.json", {"shard": [i, k], **record})
