"""The one room for files: atomic writes, JSON-able values, fingerprints, versions, figures.

Every file ebmlens writes goes through :func:`atomic_path`: the content is written to a hidden
temporary file beside the target and renamed over it (``os.replace``), so a reader (or a resumed
run after a kill) sees the old file or the new one, never half of one. Nothing else in the package
calls ``os.replace`` (a test checks).

This module imports nothing of ebmlens, so every layer may use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npz",
           "atomic_torch_save", "atomic_save_safetensors", "create_json", "jsonable", "fingerprint", "versions",
           "save_figure", "check_writable"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    The temporary name keeps the suffix (some writers, e.g. matplotlib and ``np.savez``, choose the
    format from it) and carries the process id, so concurrent writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any, *, finite_floats: bool = True) -> Path:
    """Write ``jsonable(obj)`` as indented JSON with a final newline, atomically."""
    text = json.dumps(jsonable(obj, finite_floats=finite_floats), indent=2) + "\n"
    return atomic_write_text(path, text)


def create_json(path: str | os.PathLike, obj: Any) -> bool:
    """Create ``path`` holding ``jsonable(obj)`` only if it does not exist yet: the first of several
    concurrent writers wins (returns True), the others get False and can compare with what is there.
    The file appears whole (written beside it, then hard-linked into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.new{path.suffix}")
    tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` atomically (uncompressed, the layout ``np.load`` reads)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` atomically (tensors are made contiguous on the CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def jsonable(obj: Any, *, convert: Callable[[Any], Any] | None = None, finite_floats: bool = True) -> Any:
    """Plain JSON types from configs, records and results.

    dataclasses -> ``{"type": class name, **fields}``; dicts (keys as str), lists and tuples ->
    containers of converted values; tensors and arrays of at most 64 elements -> lists, larger ones
    -> ``"<array shape=[...]>"``; numpy scalars -> Python numbers; paths, devices, dtypes -> str;
    non-finite floats -> ``"nan"`` / ``"inf"`` (JSON has no such numbers) unless ``finite_floats``
    is False; anything else -> its ``repr``.

    Args:
        convert: called first on every value; its result is used unless it returns ``NotImplemented``
            (how callers put domain objects, e.g. class statistics, in as fingerprints).
    """
    if convert is not None:
        out = convert(obj)
        if out is not NotImplemented:
            return out

    def rec(v: Any) -> Any:
        return jsonable(v, convert=convert, finite_floats=finite_floats)

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"type": type(obj).__name__, **{f.name: rec(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): rec(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rec(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    if type(obj).__module__ == "numpy":
        if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:
            return rec(obj.tolist()) if obj.size <= 64 else f"<array shape={list(obj.shape)}>"
        obj = obj.item() if hasattr(obj, "item") else obj
    if isinstance(obj, float):
        return str(obj) if finite_floats and not math.isfinite(obj) else obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike) or type(obj).__module__.startswith("torch"):
        return str(obj)
    return repr(obj)


def fingerprint(*parts: Any, digits: int = 16) -> str:
    """sha256 prefix over byte strings, strings and arrays/tensors (their raw contiguous bytes)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        elif hasattr(p, "detach"):  # torch tensor
            p = p.detach().cpu().contiguous().numpy()
        if hasattr(p, "tobytes") and not isinstance(p, (bytes, bytearray, memoryview)):
            import numpy as np

            p = np.ascontiguousarray(p).tobytes()
        h.update(bytes(p))
    return h.hexdigest()[:digits]


def versions(**extra: str) -> dict[str, str]:
    """Versions of ebmlens, torch, numpy and Python (plus ``extra``), recorded beside results."""
    import numpy as np
    import torch

    own = getattr(sys.modules.get(__name__.rpartition(".")[0]), "__version__", "unknown")
    return {"ebmlens": own, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), **extra}


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (the format follows the suffix); returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def check_writable(path: Path | str, what: str, hint: str) -> None:
    """Before anything is computed: ``path`` (or, when it does not exist yet, its nearest existing
    parent) is a folder this process may write in; else a one-line ``ValueError``
    ``"{what} cannot be written: ...; {hint}"``.

    >>> check_writable("/", "--out /", "choose another --out") is None or True
    True
    """
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} cannot be written: {probe} is a file, not a folder; {hint}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} cannot be written: {probe} does not allow writing; {hint}")
