"""The files of a finished run (:class:`SampleRun` reopens them), written in flat memory: the shards
stream, one at a time, into

* ``images.npy``: uint8 ``(N, H, W, C)`` in index order, a plain ``.npy`` (read it with
  ``np.load(path, mmap_mode="r")``: nothing is read until it is indexed);
* ``labels.npy``: int64 ``(N,)``;
* ``samples.npz`` (``images``, ``labels``: the format of earlier versions) when the images take at most
  :data:`NPZ_MAX_BYTES` (2 GiB); it is a stored (uncompressed) zip of the two ``.npy`` files, copied
  from ``images.npy`` in chunks;
* the PNGs that are missing (a run encodes its PNGs batch by batch as it samples; the merge only fills
  in those of shards written without them, never rewriting one) and ``grid.png``.

Each file is written beside its target and renamed into place (:func:`ebmlens._io.atomic_path`).
The images are written with ``seek`` + ``write`` (no memory map, so the page cache, not the process,
holds them). What grows with ``N`` in memory is only 8 bytes of label and 8 bytes of energies per
sample and pipeline point (the run.json energy summary).

>>> len(npy_header((2, 4, 4, 3))) % 64
0
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_path, atomic_write_bytes
from ..sampling.records import StageRecord
from . import shards
from .outputs import GRID_PER_CLASS, make_grid, png_bytes, write_pngs

__all__ = ["NPZ_MAX_BYTES", "SampleRun", "npy_header", "write_run_files"]

NPZ_MAX_BYTES = 2 * 1024 ** 3


@dataclass(frozen=True)
class SampleRun:
    """What :func:`sample` wrote (reopen a finished run folder with :meth:`open`).

    Attributes:
        out_dir: the run folder.
        n: number of samples.
        images: path of ``samples.npz`` (``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)``),
            or of ``images.npy`` when no ``samples.npz`` was written (over 2 GiB) or for a job-array task.
        grid: path of ``grid.png`` or ``None``.
        run: the content of ``run.json`` (for a job-array task: its ``shards/task-i-of-K.json`` record).
    """

    out_dir: Path
    n: int
    images: Path
    grid: Path | None
    run: dict

    @classmethod
    def open(cls, out_dir: str | os.PathLike) -> "SampleRun":
        """The finished run in ``out_dir`` (its ``run.json``)."""
        out = Path(out_dir)
        if not (out / "run.json").is_file():
            raise FileNotFoundError(f"{out} holds no finished sampling run (no run.json); a job array is merged "
                                    f"with `ebmlens merge {out}`")
        record = json.loads((out / "run.json").read_text())
        npz = out / "samples.npz"
        grid = out / "grid.png"
        return cls(out_dir=out, n=int(record["n"]), images=npz if npz.exists() else out / "images.npy",
                   grid=grid if grid.exists() else None, run=record)

    def load(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (N, H, W, C), labels int64 (N,))``: from ``images.npy`` / ``labels.npy`` when
        present (memory-mapped copy-on-write with ``mmap=True``: pages are read as they are indexed),
        else from ``samples.npz``."""
        pair = self.out_dir / "images.npy", self.out_dir / "labels.npy"
        if pair[0].exists() and pair[1].exists():
            return np.load(pair[0], mmap_mode="c" if mmap else None), np.load(pair[1])
        with np.load(self.out_dir / "samples.npz") as z:
            return z["images"], z["labels"]


def npy_header(shape: tuple[int, ...], dtype=np.uint8) -> bytes:
    """The ``.npy`` header of a C-order array of ``shape`` and ``dtype`` (format 1.0, else 2.0)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # pragma: no cover - a header over 64 KiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


class _ImagesNpy:
    """``put(indices, images)`` writes rows of an open ``.npy`` file (any index order)."""

    def __init__(self, fh, n: int, item: tuple[int, ...]) -> None:
        self.fh, self.row = fh, int(np.prod(item))
        header = npy_header((n, *item))
        fh.write(header)
        self.offset = len(header)
        fh.truncate(self.offset + n * self.row)

    def __call__(self, idx: np.ndarray, images: np.ndarray) -> None:
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        for run in np.split(np.arange(idx.size), cuts):  # contiguous index runs: one write each
            self.fh.seek(self.offset + int(idx[run[0]]) * self.row)
            self.fh.write(np.ascontiguousarray(images[order[run]], dtype=np.uint8).data)


def _grid_rows(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The indices the grid shows: the first :data:`GRID_PER_CLASS` of each class, in index order."""
    per_class = [np.flatnonzero(labels == k)[:GRID_PER_CLASS] for k in classes]
    return np.sort(np.concatenate(per_class or [np.zeros(0, np.int64)])).astype(np.int64)


def write_run_files(out: Path, labels: np.ndarray, classes: Sequence[int], class_names: Sequence[str], *,
                    save_png: bool, grid: bool) -> tuple[list[StageRecord], float, dict]:
    """Stream ``out/shards`` into the run's files (module docs). Returns ``(trace, sum of batch seconds,
    files)`` where ``files`` is run.json's ``"files"`` entry for the array files."""
    n = labels.size
    item = shards.item_shape(out / "shards")
    rows = _grid_rows(labels, classes) if grid else np.zeros(0, np.int64)
    tiles = np.zeros((rows.size, *item), np.uint8)
    with atomic_path(out / "images.npy") as tmp, open(tmp, "w+b") as fh:
        write = _ImagesNpy(fh, n, item)

        def put(idx: np.ndarray, images: np.ndarray) -> None:
            write(idx, images)
            if save_png:
                write_pngs(out, images, labels[idx], class_names, indices=idx, n=n, overwrite=False)
            if rows.size:  # the grid's tiles, as they pass
                pos = np.searchsorted(rows, idx).clip(max=rows.size - 1)
                hit = rows[pos] == idx
                tiles[pos[hit]] = images[hit]

        trace, batch_seconds = shards.merge(out / "shards", labels, put)
    with atomic_path(out / "labels.npy") as tmp, open(tmp, "wb") as labels_fh:
        np.save(labels_fh, labels.astype(np.int64))
    small = n * int(np.prod(item)) <= NPZ_MAX_BYTES
    if small:
        with atomic_path(out / "samples.npz") as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                with zf.open("images.npy", "w", force_zip64=True) as dst, open(out / "images.npy", "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
                with zf.open("labels.npy", "w", force_zip64=True) as dst:
                    np.lib.format.write_array(dst, labels.astype(np.int64), allow_pickle=False)
    if grid:
        atomic_write_bytes(out / "grid.png", png_bytes(make_grid(tiles, labels[rows], classes)))
    files = {"samples": "samples.npz" if small else None, "images": "images.npy", "labels": "labels.npy"}
    return trace, batch_seconds, files
