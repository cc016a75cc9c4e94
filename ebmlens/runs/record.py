"""run.json (format ``ebmlens.sample/2``) and the attempts of a run.

run.json holds ``"options"`` (the :class:`~ebmlens.runs.options.RunOptions` as asked, one object),
``"attempts"`` (one entry per attempt: the values that may change between attempts, as resolved, with
the attempt's own counts and seconds; a merge is an attempt of kind ``"merge"``) and ``"timings"``: the
timings of the attempt that first finished the run. A finished run that is resumed or merged again
keeps its ``"created"``, ``"timings"`` and ``"evaluation"``; the new attempt only adds an entry to
``"attempts"``. The attempts are kept in ``shards/attempts.json`` while a run is not finished.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json, jsonable, versions
from ..sampling.records import with_sources
from .plan import FORMAT, RunPlan

__all__ = ["FORMAT", "run_record", "record_evaluation", "add_attempt", "finish_attempt", "attempts",
           "finished_record", "now"]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _attempts_path(out: Path) -> Path:
    return Path(out) / "shards" / "attempts.json"


def attempts(out: Path) -> list[dict]:
    """The attempts recorded so far (``shards/attempts.json``; ``[]`` when none)."""
    try:
        data = json.loads(_attempts_path(out).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def add_attempt(out: Path, entry: dict) -> list[dict]:
    """Append an attempt (the caller holds the run's lock); returns the list."""
    entries = [*attempts(out), jsonable(entry)]
    atomic_write_json(_attempts_path(out), entries)
    return entries


def finish_attempt(out: Path, update: dict) -> list[dict]:
    """Update the last attempt (the running one) with ``update``; returns the list."""
    entries = attempts(out) or [{}]
    entries[-1] = {**entries[-1], **jsonable(update)}
    atomic_write_json(_attempts_path(out), entries)
    return entries


def finished_record(out: Path) -> dict | None:
    """The run.json of a finished run in ``out`` (``None`` when there is none or it is unreadable)."""
    try:
        rec = json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def run_record(plan: RunPlan, meta: dict, files: dict, energy: list[dict], timings: dict, world_size: int,
               attempt_list: list[dict]) -> dict:
    """The content of run.json; an earlier run.json of the same run keeps its creation time, timings and
    evaluation."""
    names, o = plan.class_names, plan.options
    counts = np.bincount(plan.labels, minlength=len(names))
    record = jsonable({
        "format": FORMAT,
        "created": now(),
        "n": plan.n,
        "options": meta.get("run", {}).get("options") or o.stored(),
        "world_size": world_size,
        "compile_mode": plan.compile_mode, "matmul_precision": torch.get_float32_matmul_precision(),
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
        "files": {**files, "grid": "grid.png" if o.grid else None,
                  "png": "<class_name>/<index>.png" if o.png else None, "shards": "shards/"},
        "timings": timings,
        "attempts": attempt_list,
        "energy": with_sources(energy, plan.pipeline if plan.pipeline is not None else plan.record_points),
    })
    old = finished_record(plan.out_dir)
    if old is not None and old.get("format") == FORMAT:
        for key in ("created", "timings", "evaluation"):
            if key in old:
                record[key] = old[key]
    return record


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


def timings(t_start: float, t_sampling: float, t_sampled: float, t_merge: float, t_end: float, n_new: int,
            n_resumed: int, batch_seconds: float) -> dict[str, Any]:
    sampling_s = t_sampled - t_sampling
    return {"total_s": round(t_end - t_start, 4), "sampling_s": round(sampling_s, 4),
            "merge_s": round(t_end - t_merge, 4), "batch_s_sum": round(batch_seconds, 4),
            "images_sampled": n_new, "images_resumed": n_resumed,
            "images_per_s": round(n_new / sampling_s, 4) if sampling_s > 0 and n_new else None}
