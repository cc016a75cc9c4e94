"""Image sets too large for memory (ImageNet): a list of files, decoded batch by batch.

:class:`StreamedImages` holds only file paths and labels (about 100 bytes an image); pixels exist
one batch at a time, so the peak memory of a consumer does not grow with the number of images.
Files are decoded (and preprocessed with the model's :class:`~ebmlens.energy.Preprocess`) in
worker processes of a :class:`torch.utils.data.DataLoader`: ``$EBMLENS_DATA_WORKERS`` of them
(default ``min(8, cpu_count)``; 0 decodes in the calling process). Random access
(:meth:`StreamedImages.tensor`, used by DataInit seeds and strided subsets) decodes the chosen files
directly, so it needs files on disk (folders) or an uncompressed tar with a member index
(:mod:`ebmlens.data.tarindex`), not a compressed archive.

The fingerprint is a sha256 of the relative file names, labels and preprocessing (not of the
pixels: hashing ImageNet would read 150 GB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .._io import fingerprint
from ..energy import Preprocess
from ._readers import _decode, decode_file
from .memory import ImageSet, to_float
from .tarindex import TarIndex

__all__ = ["StreamedImages", "data_workers"]


def data_workers() -> int:
    """Decoding worker processes: ``$EBMLENS_DATA_WORKERS`` or ``min(8, cpu_count)``."""
    env = os.environ.get("EBMLENS_DATA_WORKERS")
    if env is not None:
        if not env.isdigit():
            raise ValueError(f"EBMLENS_DATA_WORKERS must be a non-negative integer, got {env!r}")
        return int(env)
    return min(8, os.cpu_count() or 1)


class _Files(torch.utils.data.Dataset):
    def __init__(self, images: "StreamedImages", idx: np.ndarray) -> None:
        self.images, self.idx = images, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images.decode(int(self.idx[i]))


def _stack(arrs: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise ValueError(f"images of {where} have different sizes {sorted(shapes)[:3]}; give the model's "
                         "preprocessing (load_data(spec, preprocess=model.preprocess)) or resize the files")
    return np.stack(arrs)


class StreamedImages(ImageSet):
    """Images read from ``files`` as they are needed (see the module docs).

    Not a dataclass on purpose: a run's config records it by ``repr`` (source, count, fingerprint),
    never as a million file names.

    Args:
        files: image paths, sorted by class then name.
        labels: ``int64`` ``(N,)``.
        class_names: names of the classes.
        source: the data spec.
        preprocess: resize / center crop applied to every decoded file (``None``: as stored).
        workers: decoding processes (``None``: :func:`data_workers`).
        tar: the images are the members of this uncompressed tar (``files`` = its member names,
            in the index's order), read by seek instead of from files.
        labeled, folder_classes: see :class:`~ebmlens.data.ImageSet`.
    """

    def __init__(self, files: Sequence[str], labels: np.ndarray, class_names: Sequence[str], source: str,
                 preprocess: Preprocess | None = None, workers: int | None = None, tar: TarIndex | None = None,
                 *, labeled: bool = True, folder_classes: bool = False) -> None:
        self.tar = tar
        self.labeled, self.folder_classes = bool(labeled), bool(folder_classes)
        if tar is not None and len(files) != len(tar.members):
            raise ValueError(f"{len(files)} files for the {len(tar.members)} members of {tar.path}")
        self.files = tuple(str(f) for f in files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.source = str(source)
        self.preprocess = preprocess
        self.workers = workers
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"{self.labels.shape} labels for {len(self.files)} files")
        root = os.path.commonpath(self.files) if self.files and tar is None else ""
        names = "\n".join(os.path.relpath(f, root) for f in self.files)
        self.fingerprint = fingerprint(names, self.labels, repr(preprocess))

    def __repr__(self) -> str:
        return f"StreamedImages(source={self.source!r}, count={len(self)}, sha256={self.fingerprint!r})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the first image (after preprocessing)."""
        if "_shape" not in self.__dict__:
            object.__setattr__(self, "_shape", tuple(int(s) for s in self.decode(0).shape))
        return self.__dict__["_shape"]

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``(H, W, C)``, preprocessed (from its file, or its tar member)."""
        if self.tar is not None:
            return _decode(self.tar.read(i), self.tar.where(i), self.preprocess)
        return decode_file(self.files[i], self.preprocess)

    def tensor(self, idx: Sequence[int] | np.ndarray | slice | None = None, device=None) -> torch.Tensor:
        """Float ``(n, C, H, W)`` in [0, 1] of the selected images, decoded here (random access)."""
        sel = np.arange(len(self))[idx] if idx is not None else np.arange(len(self))
        arrs = [self.decode(int(i)) for i in np.atleast_1d(sel)]
        return to_float(_stack(arrs, self.source), device)

    def arrays(self, batch_size: int, indices: Sequence[int] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """uint8 ``(n, H, W, C)`` batches and their labels in the given order, decoded by workers."""
        idx = self._indices(batch_size, indices)
        if len(idx) == 0:
            return
        workers = data_workers() if self.workers is None else int(self.workers)
        workers = min(workers, -(-len(idx) // batch_size))  # no idle workers for a few batches
        loader = torch.utils.data.DataLoader(_Files(self, np.asarray(idx)), batch_size=batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=lambda b: _stack(b, self.source),
                                             multiprocessing_context="fork" if workers and os.name == "posix"
                                             and "fork" in torch.multiprocessing.get_all_start_methods() else None)
        for s, arr in zip(range(0, len(idx), batch_size), loader):
            yield arr, self.labels[idx[s:s + batch_size]]

    @classmethod
    def from_folder_lists(cls, files_by_class: dict[str, list[Path]], source: str,
                          preprocess: Preprocess | None = None) -> "StreamedImages":
        """From ``{class folder: [files]}``: folder-named classes (sorted; labels their positions until
        :func:`~ebmlens.data.classmap.map_classes` matches them to a model's); ``{"": files}``: unlabeled."""
        names = sorted(files_by_class)
        files = tuple(str(f) for c in names for f in files_by_class[c])
        labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(files_by_class[c]) for c in names])
        flat = names == [""]
        return cls(files, labels, ["0"] if flat else names, source, preprocess, labeled=not flat,
                   folder_classes=not flat)

    @classmethod
    def from_tar(cls, index: TarIndex, source: str, preprocess: Preprocess | None = None) -> "StreamedImages":
        """The members of an indexed uncompressed tar: folder-named classes, as :meth:`from_folder_lists`."""
        names = sorted({c for _, c, _, _ in index.members})
        pos = {c: k for k, c in enumerate(names)}
        labels = np.asarray([pos[c] for _, c, _, _ in index.members], np.int64)
        return cls([m[0] for m in index.members], labels, names, source, preprocess, tar=index, folder_classes=True)
