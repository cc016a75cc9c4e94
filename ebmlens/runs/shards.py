"""Shard files of a sampling run: one ``shards/shard_<first index>.npz`` per finished batch.

A shard holds ``indices`` int64 ``(B,)``, ``labels`` int64 ``(B,)``, ``images`` uint8 ``(B, H, W, C)``,
``seconds`` (the batch's wall time), ``rank``, and from the pipeline's trace, per point ``j`` of the
pipeline, ``trace/<j>:<stage>/energy`` and ``trace/<j>:<stage>/joint_energy`` float32 ``(B,)`` and
``tsec/<j>:<stage>`` (the stage's seconds). ``shards/meta.json`` holds the run's identity
(:meth:`~ebmlens.sampling.RunPlan.identity`). Every reader checks that a shard belongs to the run:
indices in range, no index in two shards, the run's labels; a bad shard is a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._io import atomic_save_npz
from ..sampling.records import StageRecord

__all__ = ["paths", "write", "covered", "merge", "item_shape", "check_meta"]

#: the keys of ``meta.json`` that a resumed run (or a sibling job-array task) must share
IDENTITY = ("n", "labels_sha256", "pipeline", "model", "options")
FORMAT = "ebmlens.sample/2"
_SHARD_RE = re.compile(r"^shard_(\d+)\.npz$")


def paths(shard_dir: Path) -> list[Path]:
    """The shard files in ``shard_dir``, in name (= first index) order."""
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if _SHARD_RE.match(p.name))


def _trace_arrays(trace: Sequence[StageRecord], size: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for j, r in enumerate(trace or ()):
        if not isinstance(r, StageRecord):
            raise TypeError(f"the pipeline's trace must hold ebmlens.sampling.StageRecord entries, got "
                            f"{type(r).__name__}")
        for q in ("energy", "joint_energy"):
            v = getattr(r, q)
            if tuple(v.shape) != (size,):
                raise ValueError(f"trace record {j} ({r.stage}) has {q} of shape {tuple(v.shape)} for a batch of "
                                 f"{size}; a record holds one value per sample")
            arrays[f"trace/{j}:{r.stage}/{q}"] = v.detach().float().cpu().numpy()
        arrays[f"tsec/{j}:{r.stage}"] = np.asarray(r.seconds, np.float64)
    return arrays


def write(shard_dir: Path, idx: np.ndarray, labels: np.ndarray, images: np.ndarray, seconds: float, rank: int,
          trace: Sequence[StageRecord] = ()) -> Path:
    """Write one batch's shard atomically; returns its path."""
    path = shard_dir / f"shard_{int(idx[0]):09d}.npz"
    atomic_save_npz(path, indices=idx.astype(np.int64), labels=labels, images=images, seconds=np.float64(seconds),
                    rank=np.int64(rank), **_trace_arrays(trace, idx.size))
    return path


def _check(p: Path, idx: np.ndarray, labels: np.ndarray, run_labels: np.ndarray, owner: np.ndarray,
           files: list[Path]) -> None:
    n = run_labels.size
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"shard {p} holds sample indices {int(idx.min())}..{int(idx.max())} but n={n}; "
                         "this folder belongs to another run: pick a new --out")
    if np.unique(idx).size != idx.size or (owner[idx] >= 0).any():
        other = [files[k] for k in owner[idx] if k >= 0]
        where = f"shard {other[0]}" if other else "itself"
        raise ValueError(f"shard {p} repeats samples already in {where}; delete {p} and resume to re-sample them")
    if labels.shape != idx.shape or not np.array_equal(labels, run_labels[idx]):
        raise ValueError(f"shard {p} has other labels than this run; it belongs to another run: delete it "
                         "(resume re-samples its images) or choose a new output folder")


def covered(shard_dir: Path, run_labels: np.ndarray) -> np.ndarray:
    """bool ``(n,)``: which sample indices the shards on disk hold (every shard checked)."""
    files = paths(shard_dir)
    owner = np.full(run_labels.size, -1, np.int64)
    for k, p in enumerate(files):
        try:
            with np.load(p) as z:
                idx, labels = z["indices"], z["labels"]
        except Exception as e:  # a shard is written atomically; an unreadable one is foreign
            raise ValueError(f"cannot read shard {p}: {e}; delete it to re-sample its images") from None
        _check(p, idx, labels, run_labels, owner, files)
        owner[idx] = k
    return owner >= 0


def item_shape(shard_dir: Path) -> tuple[int, ...]:
    """``(H, W, C)`` of the images in the first shard (read from its header only)."""
    import zipfile

    files = paths(shard_dir)
    if not files:
        raise RuntimeError(f"no shards in {shard_dir}")
    with zipfile.ZipFile(files[0]) as zf, zf.open("images.npy") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
    return tuple(int(s) for s in shape[1:])


def merge(shard_dir: Path, run_labels: np.ndarray,
          put: Callable[[np.ndarray, np.ndarray], None]) -> tuple[list[StageRecord], float]:
    """Stream every shard (name order) to ``put(indices (B,), images uint8 (B, H, W, C))``; returns
    ``(trace over all samples, sum of batch seconds)``. One shard is in memory at a time.

    The trace has one :class:`StageRecord` per point with every sample's energies (NaN where a shard
    had none) and the stage's seconds summed over batches."""
    n = run_labels.size
    files = paths(shard_dir)
    owner = np.full(n, -1, np.int64)
    points: dict[tuple[int, str], dict[str, Any]] = {}
    batch_seconds = 0.0
    for k, p in enumerate(files):
        with np.load(p) as z:
            idx = z["indices"]
            _check(p, idx, z["labels"], run_labels, owner, files)
            owner[idx] = k
            put(idx, z["images"])
            batch_seconds += float(z["seconds"])
            for key in z.files:
                kind, _, rest = key.partition("/")
                if kind not in ("trace", "tsec"):
                    continue
                group, qty = rest.rpartition("/")[::2] if kind == "trace" else (rest, "seconds")
                j, _, stage = group.partition(":")
                g = points.setdefault((int(j), stage), {"energy": np.full(n, np.nan, np.float32),
                                                        "joint_energy": np.full(n, np.nan, np.float32),
                                                        "seconds": 0.0})
                if qty == "seconds":
                    g["seconds"] += float(z[key])
                elif qty in ("energy", "joint_energy"):
                    g[qty][idx] = z[key]
    if not files or not (owner >= 0).all():
        raise RuntimeError(f"{int((owner < 0).sum())} of {n} samples are missing from {shard_dir} after sampling; "
                           "run again with resume=True")
    trace = [StageRecord(stage, j, energy=torch.from_numpy(g["energy"]),
                         joint_energy=torch.from_numpy(g["joint_energy"]), seconds=g["seconds"])
             for (j, stage), g in sorted(points.items())]
    return trace, batch_seconds


def check_meta(meta_path: Path, meta: dict) -> None:
    """A resumed run must have the identity recorded in ``meta.json`` (if there is one)."""
    if not meta_path.exists():
        return
    old = json.loads(meta_path.read_text())
    check_format(meta_path, old, "resume")
    for key in IDENTITY:
        diffs = differences(old.get(key), meta.get(key), key)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            what = "labels (another --classes or n)" if key == "labels_sha256" else key
            if key == "options":  # name the options: "a different seed, dtype"
                what = ", ".join(sorted({d.split(" ")[0].split(".")[1] for d in diffs}))
            raise ValueError(f"{meta_path.parent.parent} holds a run with a different {what}: {shown} (on disk vs "
                             "now); resume with the same settings, or choose a new output folder (or --overwrite)")


def check_format(meta_path: Path, meta: dict, what: str) -> None:
    """Refuse (one line) a run written in an older format (``ebmlens.sample/1``: no ``"format"`` key)."""
    found = meta.get("format", "ebmlens.sample/1") if isinstance(meta, dict) else "unknown"
    if found != FORMAT:
        raise ValueError(f"{meta_path.parent.parent} holds a run in format {found} (an older ebmlens); this version "
                         f"cannot {what} it ({FORMAT}): sample into a new output folder, or finish it with the "
                         "ebmlens version that started it")


def differences(old: Any, new: Any, path: str) -> list[str]:
    """The leaves where two JSON values differ, as ``path old vs new`` (``stages[0].steps 10 vs 11``).

    >>> differences({"stages": [{"steps": 10}]}, {"stages": [{"steps": 11}]}, "pipeline")
    ['pipeline.stages[0].steps 10 vs 11']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{path}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    if old == new:
        return []
    def show(v: Any) -> str:
        text = json.dumps(v) if not isinstance(v, str) else v
        return text if len(text) <= 60 else text[:57] + "..."
    return [f"{path} {show(old)} vs {show(new)}"]
