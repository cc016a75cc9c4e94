"""The one image-set interface (:class:`ImageSet`) and its in-memory form (:class:`ImageData`).

Every consumer (class statistics, energy reports, quality metrics, accuracy, DataInit seeds) reads
images only through this interface, so an in-memory set and a streamed one
(:class:`~ebmlens.data.streamed.StreamedImages`) are interchangeable:

* ``len(s)``, ``s.labels`` ``(N,)`` int64, ``s.class_names``, ``s.source``, ``s.fingerprint``;
* ``s.image_shape`` ``(H, W, C)``;
* ``s.strided(n)`` evenly spread indices (members are sorted by class);
* ``s.arrays(batch_size, indices)`` uint8 ``(n, H, W, C)`` batches with their labels (numpy);
* ``s.batches(batch_size, indices, device)`` the same as float ``(n, C, H, W)`` tensors in [0, 1];
* ``s.tensor(indices, device)`` random access (DataInit seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from .._io import fingerprint

__all__ = ["ImageSet", "ImageData", "to_float"]


def to_float(arr: np.ndarray, device=None) -> torch.Tensor:
    """uint8 ``(n, H, W, C)`` -> float ``(n, C, H, W)`` in [0, 1] (``x / 255``)."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    return t.to(device) if device is not None else t


class ImageSet:
    """What every image set offers (see the module docs); subclasses define ``labels``,
    ``class_names``, ``source``, ``fingerprint``, ``image_shape``, :meth:`arrays` and :meth:`tensor`."""

    labels: np.ndarray
    class_names: list[str]
    source: str
    fingerprint: str
    split: str | None = None  # the split read ("train", "test", "val"...); None: the set has no splits
    #: False for a set read without labels (``npz:PATH?unlabeled``, a flat folder, a bare tensor):
    #: its ``labels`` are placeholders (0) and consumers that need labels refuse it (``require_labels``)
    labeled: bool = True
    #: True while ``class_names`` are folder names not yet matched to a model's classes
    #: (:func:`ebmlens.data.classmap.map_classes`); labels are positions among those folders
    folder_classes: bool = False
    #: ``{"folder": "class name" or index}`` from the spec's ``?class_map=FILE.json``
    class_map: dict | None = None
    #: how labels were assigned when that is worth saying in a report (e.g. sorted folder order)
    label_note: str | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensor(self, idx: Sequence[int] | np.ndarray | slice | None = None,  # pragma: no cover
               device=None) -> torch.Tensor:
        raise NotImplementedError

    def arrays(self, batch_size: int, indices: Sequence[int] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_tensor(self, idx: Sequence[int] | slice | None = None, device=None) -> torch.Tensor:
        arr = self.labels if idx is None else self.labels[idx]
        return torch.as_tensor(np.asarray(arr), dtype=torch.long, device=device)

    def strided(self, n: int) -> np.ndarray:
        """Indices of ``n`` images spread evenly over the set (members are sorted by class:
        never take the first ``n``)."""
        if n <= 0 or n > len(self):
            raise ValueError(f"asked for {n} images but the dataset {self.source} has {len(self)}")
        return np.floor(np.arange(n) * (len(self) / n)).astype(np.int64)

    def _indices(self, batch_size: int, indices: Sequence[int] | None) -> np.ndarray:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        return np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None, device=None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stream ``(images, labels)`` batches (float ``(n, C, H, W)`` in [0, 1], int64) in the given
        index order."""
        for arr, lab in self.arrays(batch_size, indices):
            yield to_float(arr, device), torch.as_tensor(lab, dtype=torch.long, device=device)


@dataclass(frozen=True, eq=False)
class ImageData(ImageSet):
    """Decoded images with labels, held in memory.

    Attributes:
        images: ``uint8`` array ``(N, H, W, C)``.
        labels: ``int64`` array ``(N,)``.
        class_names: names of the classes.
        source: the spec or description it came from.
        fingerprint: sha256 of the arrays (first 16 hex digits), for provenance records.
        split: the split the images were read from (set by :func:`~ebmlens.data.load_data`), or None.
        labeled, folder_classes, class_map, label_note: see :class:`ImageSet`.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str
    fingerprint: str = field(default="")
    split: str | None = None
    labeled: bool = True
    folder_classes: bool = False
    class_map: dict | None = None
    label_note: str | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"ImageData.images must be uint8 (N, H, W, C), "
                             f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0] if self.labels.ndim else 0} labels "
                             f"for {self.images.shape[0]} images")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.images, self.labels.astype(np.int64)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def tensor(self, idx: Sequence[int] | np.ndarray | slice | None = None, device=None) -> torch.Tensor:
        """Float ``(n, C, H, W)`` in [0, 1] of the selected images."""
        return to_float(self.images if idx is None else self.images[idx], device)

    def arrays(self, batch_size: int, indices: Sequence[int] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """uint8 ``(n, H, W, C)`` batches and their labels, in the given index order."""
        idx = self._indices(batch_size, indices)
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.images[b], self.labels[b]
