"""Files of class statistics: one ``.safetensors`` file, or a directory of one file per class.

Arrays and JSON metadata in, arrays and metadata out: this module knows the two formats, not the
:class:`~ebmlens.stats.ClassStats` type (which builds itself from what is read here).

* **A file** (format ``ebmlens.class_stats/1``): the arrays (``mean``, ``diag``, ``eigvecs``, ``eigvals``,
  ``total_var``, ``counts``, optionally ``chol``) with the metadata as JSON under the ``"ebmlens"`` key of
  the safetensors header. Reading it runs no code.
* **A directory** (format ``ebmlens.class_stats_dir/1``, written by ``ebmlens stats`` /
  :func:`ebmlens.stats.fit_stats_dir`): ``OUT/meta.json`` (classes, shape, rank, source, data
  fingerprint) and ``OUT/class-00000.safetensors`` ... (each a one-class file as above). Size per class at
  ``D = 9,408`` and rank 64: ``D * (4 + 4 + 2 * 64)`` bytes = 1.28 MB, so 1.28 GB per 1,000 classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import atomic_save_safetensors, atomic_write_json

__all__ = ["FILE_FORMAT", "DIR_FORMAT", "class_file", "is_stats_path", "read_dir", "read_file", "write_dir_meta",
           "write_file"]

FILE_FORMAT = "ebmlens.class_stats/1"
DIR_FORMAT = "ebmlens.class_stats_dir/1"


def is_stats_path(path: Any) -> bool:
    """Whether ``path`` names saved statistics (a ``.safetensors`` file or a per-class directory) rather
    than a data spec."""
    return isinstance(path, (str, Path)) and (str(path).endswith(".safetensors") or Path(path, "meta.json").is_file())


def write_file(path: str | Path, arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``meta`` atomically to ``path`` (``.safetensors`` appended when missing)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    return atomic_save_safetensors(arrays, path, metadata={"ebmlens": json.dumps({"format": FILE_FORMAT, **meta})})


def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(arrays, meta)`` of a file written by :func:`write_file`; a missing, corrupt or foreign file fails
    with a one-line error naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class statistics file {str(path)!r} not found; create one with "
                                "ebmlens.class_stats('cifar10:PATH').save(path)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("ebmlens", "{}"))
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # noqa: BLE001 - corrupt/foreign file
        raise ValueError(f"{path} is not a readable safetensors file of class statistics ({e})") from e
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path} is not an ebmlens class statistics file (format {meta.get('format')!r})")
    return arrays, meta


def class_file(out: str | Path, k: int) -> Path:
    """The file of class ``k`` in a statistics directory."""
    return Path(out) / f"class-{k:05d}.safetensors"


def write_dir_meta(out: str | Path, meta: dict[str, Any]) -> None:
    """Create ``out/meta.json``, or check that the one there has the same settings (a fit resumes only
    with the settings it started with)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": DIR_FORMAT, **meta}
    old = out / "meta.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        diff = [k for k in meta if prev.get(k) != meta[k]]
        if diff:
            raise ValueError(f"{out} holds statistics with other settings ({', '.join(diff)}); use another --out")
    atomic_write_json(old, meta)


def read_dir(path: str | Path, classes: Sequence[int] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[int]]:
    """``(arrays, meta, rows)`` of a statistics directory: the arrays of the classes ``rows`` (all, or
    ``classes`` sorted), stacked one row per class, and ``meta.json``."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != DIR_FORMAT:
        raise ValueError(f"{path}/meta.json is not an ebmlens class statistics directory "
                         f"(format {meta.get('format')!r})")
    k_all, rank, d = int(meta["num_classes"]), int(meta["rank"]), int(np.prod(meta["shape"]))
    wanted = sorted(set(range(k_all) if classes is None else (int(k) for k in classes)))
    bad = [k for k in wanted if not 0 <= k < k_all]
    if bad:
        raise ValueError(f"classes {bad[:5]} are outside the {k_all} classes of {path}")
    missing = [k for k in wanted if not class_file(path, k).exists()]
    if missing:
        raise ValueError(f"{path} lacks the statistics of {len(missing)} class(es) (e.g. {missing[:5]}); "
                         f"finish them with ebmlens stats --out {path} (it resumes)")
    m = len(wanted)
    out = {"mean": torch.zeros(m, d), "diag": torch.zeros(m, d), "eigvecs": torch.zeros(m, d, rank),
           "eigvals": torch.zeros(m, rank), "total_var": torch.zeros(m), "counts": torch.zeros(m, dtype=torch.int64)}
    for i, k in enumerate(wanted):
        one, _ = read_file(class_file(path, k))
        for name, rows in out.items():
            rows[i] = one[name][0]
    return out, meta, wanted
