"""Image datasets from local files, decoded once and cached as arrays. Never downloads.

One grammar for every command (a *data spec*):

* ``cifar10:PATH[@train|@test]`` - PATH is the ``cifar10-jpeg.tar.xz`` archive, a folder in
  ImageFolder layout with ``train/`` and ``test/`` (``<split>/<class>/*.jpg|png``), or
  torchvision's ``cifar-10-batches-py`` folder (or its parent). ``cifar100:`` likewise for
  torchvision's ``cifar-100-python``.
* ``folder:PATH`` - an ImageFolder (``PATH/<class>/<image>``), or a flat folder of images
  (label 0), or an ebmlens samples folder (its ``images.npy`` memory-mapped, else ``samples.npz``).
* ``npz:PATH`` - arrays ``images`` (N x H x W x C uint8, or N x C x H x W) and optional ``labels``.

Images are held as ``uint8`` arrays ``(N, H, W, C)`` (the image-file convention); tensors handed
to models are float ``(N, C, H, W)`` in [0, 1].

>>> import numpy as np
>>> ds = ImageData(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, ["a", "b"], "toy")
>>> ds.tensor([0, 1]).shape
torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ._io import atomic_save_npz, fingerprint

__all__ = ["ImageData", "load_data", "as_image_data", "to_uint8_images", "parse_data_spec", "cache_dir",
           "CIFAR10_CLASSES", "default_cifar10_path", "atomic_save_npz"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def cache_dir() -> Path:
    """Where decoded arrays and statistics are cached: ``$EBMLENS_CACHE`` or ``~/.cache/ebmlens``."""
    d = Path(os.environ.get("EBMLENS_CACHE") or Path.home() / ".cache" / "ebmlens")
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_cifar10_path() -> Path | None:
    """The shared CIFAR-10 archive if it is beside the checkout (``../shared/data``) or named by
    ``$EBMLENS_CIFAR10``; ``None`` otherwise."""
    env = os.environ.get("EBMLENS_CIFAR10")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        for cand in (base / ".." / "shared" / "data" / "cifar10-jpeg.tar.xz", base / "shared" / "data" / "cifar10-jpeg.tar.xz"):
            if cand.exists():
                return cand.resolve()
    return None


@dataclass(frozen=True, eq=False)
class ImageData:
    """Decoded images with labels.

    Attributes:
        images: ``uint8`` array ``(N, H, W, C)``.
        labels: ``int64`` array ``(N,)``.
        class_names: names of the classes.
        source: the spec or description it came from.
        fingerprint: sha256 of the arrays (first 16 hex digits), for provenance records.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"ImageData.images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0] if self.labels.ndim else 0} labels for {self.images.shape[0]} images")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.images, self.labels.astype(np.int64)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensor(self, idx: Sequence[int] | slice | None = None, device=None) -> torch.Tensor:
        """Float ``(n, C, H, W)`` in [0, 1] of the selected images."""
        arr = self.images if idx is None else self.images[idx]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
        return t.to(device) if device is not None else t

    def label_tensor(self, idx: Sequence[int] | slice | None = None, device=None) -> torch.Tensor:
        arr = self.labels if idx is None else self.labels[idx]
        return torch.as_tensor(np.asarray(arr), dtype=torch.long, device=device)

    def strided(self, n: int) -> np.ndarray:
        """Indices of ``n`` images spread evenly over the set (members are sorted by class:
        never take the first ``n``)."""
        if n <= 0 or n > len(self):
            raise ValueError(f"asked for {n} images but the dataset {self.source} has {len(self)}")
        return np.floor(np.arange(n) * (len(self) / n)).astype(np.int64)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None, device=None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stream ``(images, labels)`` batches in the given index order."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.tensor(b, device), self.label_tensor(b, device)


# --------------------------------------------------------------------------- specs
def parse_data_spec(spec: str) -> tuple[str, str, str | None]:
    """``"cifar10:PATH@test"`` -> ``("cifar10", "PATH", "test")``."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data spec must be a string like 'cifar10:PATH@test', got {type(spec).__name__}")
    spec = str(spec)
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("cifar10", "cifar100", "folder", "npz"):
        if Path(spec).suffix == ".npz":
            kind, rest = "npz", spec
        elif Path(spec).is_dir():
            kind, rest = "folder", spec
        else:
            raise ValueError(f"unknown data spec {spec!r}; use cifar10:PATH[@train|@test], folder:PATH or npz:PATH")
    split = None
    if "@" in rest:
        path, _, split = rest.rpartition("@")
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r} in data spec {spec!r}; use @train or @test")
        rest = path
    if not rest:
        raise ValueError(f"data spec {spec!r} names no path")
    return kind, rest, split


def load_data(spec: str | ImageData, split: str | None = None, *, default_split: str = "test") -> ImageData:
    """Load a dataset from a data spec (see module docs). ``split`` overrides the spec's ``@split``;
    without either, ``default_split`` is used (statistics use train, analysis and metrics test)."""
    if isinstance(spec, ImageData):
        return spec
    kind, path_s, spec_split = parse_data_spec(spec)
    split = split or spec_split or default_split
    path = Path(path_s).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist (from spec {spec!r}); "
                                "point it at the CIFAR-10 archive or folder")
    if kind in ("cifar10", "cifar100"):
        return _load_cifar(kind, path, split, str(spec))
    if kind == "npz":
        return _load_npz(path, str(spec))
    return _load_folder(path, str(spec))


def _cache_key(path: Path, extra: str) -> str:
    st = path.stat()
    h = fingerprint(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{extra}")
    return h


def _cached(path: Path, extra: str, build) -> tuple[np.ndarray, np.ndarray, list[str]]:
    f = cache_dir() / "data" / f"{path.name}-{extra}-{_cache_key(path, extra)}.npz"
    if f.exists():
        try:
            with np.load(f, allow_pickle=False) as z:
                return z["images"], z["labels"], [str(c) for c in z["class_names"]]
        except Exception:  # a truncated cache is rebuilt
            log.warning("cache file %s unreadable; rebuilding", f)
    images, labels, names = build()
    atomic_save_npz(f, images=images, labels=labels, class_names=np.array(names))
    return images, labels, names


def _decode(data: bytes, where: str) -> np.ndarray:
    """Decode one image file's bytes to uint8 RGB; an unreadable file is named (``where``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        why = "not a readable image file" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot decode image {where} ({why}); remove or replace that file") from None


def _load_cifar(kind: str, path: Path, split: str, spec: str) -> ImageData:
    names_default = CIFAR10_CLASSES if kind == "cifar10" else None
    if path.is_file() and (path.name.endswith((".tar.xz", ".tar.gz", ".tar", ".tgz"))):
        images, labels, names = _cached(path, f"{kind}-{split}", lambda: _decode_tar(path, split, names_default))
    elif path.is_dir():
        py = _find_torchvision_dir(path, kind)
        if py is not None:
            images, labels, names = _cached(py, f"{kind}-{split}", lambda: _read_torchvision(py, kind, split))
        elif (path / split).is_dir():
            images, labels, names = _cached(path / split, "folder", lambda: _decode_folder(path / split))
        elif path.name in ("train", "test") or any(p.is_dir() for p in path.iterdir()):
            images, labels, names = _cached(path, "folder", lambda: _decode_folder(path))
        else:
            raise ValueError(f"{path} is neither an ImageFolder with {split}/ nor a torchvision CIFAR folder")
    else:
        raise ValueError(f"cannot read {kind} data from {path}: expected the .tar.xz archive or a folder")
    return ImageData(images, labels, names, f"{kind}:{path}@{split}")


def _decode_tar(path: Path, split: str, class_order: list[str] | None):
    log.info("decoding %s (%s split) once; cached afterwards", path, split)
    per_class: dict[str, list[tuple[str, np.ndarray]]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            parts = Path(m.name).parts
            if split not in parts:
                continue
            i = parts.index(split)
            if len(parts) != i + 3 or not parts[-1].lower().endswith(_IMAGE_EXT):
                continue
            fh = tar.extractfile(m)
            assert fh is not None
            per_class.setdefault(parts[i + 1], []).append((parts[-1], _decode(fh.read(), f"{path}:{m.name}")))
    if not per_class:
        raise ValueError(f"{path} has no images under a '{split}/<class>/' folder")
    names = [c for c in (class_order or []) if c in per_class] + sorted(c for c in per_class if c not in (class_order or []))
    images, labels = [], []
    for k, c in enumerate(names):
        for _, arr in sorted(per_class[c], key=lambda t: t[0]):
            images.append(arr)
            labels.append(k)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _decode_folder(path: Path):
    files_by_class: dict[str, list[Path]] = {}
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if subdirs:
        for d in subdirs:
            fs = sorted(f for f in d.iterdir() if f.suffix.lower() in _IMAGE_EXT)
            if fs:
                files_by_class[d.name] = fs
    else:
        fs = sorted(f for f in path.iterdir() if f.suffix.lower() in _IMAGE_EXT)
        if fs:
            files_by_class["0"] = fs
    if not files_by_class:
        raise ValueError(f"no images found in {path} (looked for {', '.join(_IMAGE_EXT)})")
    names = sorted(files_by_class)
    images, labels = [], []
    for k, c in enumerate(names):
        for f in files_by_class[c]:
            images.append(_decode(f.read_bytes(), str(f)))
            labels.append(k)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {path} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _find_torchvision_dir(path: Path, kind: str) -> Path | None:
    sub = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    for p in (path, path / sub):
        if (p / ("data_batch_1" if kind == "cifar10" else "train")).exists():
            return p
    return None


def _read_torchvision(path: Path, kind: str, split: str):
    if kind == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, key, lkey = "batches.meta", "label_names", "labels"
    else:
        files, meta, key, lkey = [split], "meta", "fine_label_names", "fine_labels"
    images, labels = [], []
    for f in files:
        with open(path / f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")  # noqa: S301 - CIFAR's own format (arrays, no code)
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(d[lkey], dtype=np.int64))
    with open(path / meta, "rb") as fh:
        names = list(pickle.load(fh, encoding="latin1")[key])  # noqa: S301
    return np.concatenate(images), np.concatenate(labels), names


def _load_npz(path: Path, spec: str) -> ImageData:
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise ValueError(f"{path} has no 'images' array (found {list(z.keys())})")
        images = z["images"]
        labels = z["labels"] if "labels" in z else np.zeros(len(images), np.int64)
        names = [str(c) for c in z["class_names"]] if "class_names" in z else None
    images = to_uint8_images(images, str(path), strict=False)
    labels = np.asarray(labels, dtype=np.int64)
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
    return ImageData(images, labels, names, spec)


def _load_folder(path: Path, spec: str) -> ImageData:
    if path.is_dir() and (path / "images.npy").exists() and (path / "labels.npy").exists():
        # an ebmlens samples folder: images memory-mapped (read batch by batch), fingerprinted in chunks
        images, labels = np.load(path / "images.npy", mmap_mode="c"), np.load(path / "labels.npy")
        chunks = (images[s:s + 1024] for s in range(0, len(images), 1024))
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
        return ImageData(images, labels.astype(np.int64), names, spec, fingerprint(*chunks, labels.astype(np.int64)))
    if path.is_dir() and (path / "samples.npz").exists():
        return _load_npz(path / "samples.npz", spec)
    if not path.is_dir():
        raise ValueError(f"folder:{path} is not a directory")
    images, labels, names = _decode_folder(path)
    return ImageData(images, labels, names, spec)


# --------------------------------------------------------------------------- images from anything
def as_image_data(x: object, what: str = "images", *, default_split: str = "test") -> ImageData:
    """An :class:`ImageData` from what a user hands in: an ImageData; a batch (see
    :func:`to_uint8_images`; labels 0); a folder (an ebmlens samples folder or image files); an
    ``.npz``; or a data spec (without ``@split``: ``default_split``). ``what`` names it in errors."""
    if isinstance(x, ImageData):
        data = x
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        data = ImageData(to_uint8_images(x, what), np.zeros(len(x), np.int64), ["0"], f"{what} array {tuple(x.shape)}")
    elif isinstance(x, (str, os.PathLike)):
        p = Path(x).expanduser()
        if p.is_dir():
            data = load_data(f"folder:{p}")
        elif p.suffix == ".npz" and p.is_file():
            data = load_data(f"npz:{p}")
        elif ":" not in str(x):
            raise FileNotFoundError(f"{what} {str(x)!r} does not exist; give a samples or image folder, an .npz, "
                                    "or a data spec like cifar10:PATH@train")
        else:
            data = load_data(str(x), default_split=default_split)
    else:
        raise TypeError(f"{what} must be images (a tensor or array), an ImageData, a folder, an .npz or a data spec "
                        f"like 'cifar10:PATH@train', got {type(x).__name__}")
    if len(data) == 0:
        raise ValueError(f"{what} ({data.source}) holds no images")
    return data


def to_uint8_images(x: torch.Tensor | np.ndarray, what: str = "images", *, strict: bool = True) -> np.ndarray:
    """A ``uint8 (N, H, W, C)`` batch from float ``(N, C, H, W)`` in [0, 1] (``rint(255 x)``, as saved
    to PNG) or ``uint8`` ``(N, H, W, C)`` (``(N, C, H, W)`` when unambiguous).

    ``strict`` (arrays from a user): 4-D only; floats must be channels-first, finite and in [0, 1];
    other dtypes are refused. ``strict=False`` (arrays read from files of other tools): ``(N, H, W)``
    is grayscale, any layout that is unambiguous, floats above 1 and other dtypes clipped to [0, 255].
    """
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3 and not strict:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"{what} must be a 4-D batch (float N,C,H,W in [0,1] or uint8 N,H,W,C), got shape {a.shape}")
    channels_first = a.shape[-1] not in (1, 3) and a.shape[1] in (1, 3)
    floating = np.issubdtype(a.dtype, np.floating)
    if a.dtype == np.uint8 or not strict:
        a = a.transpose(0, 2, 3, 1) if channels_first else a
        if a.dtype != np.uint8:
            scale = 255.0 if floating and a.size and a.max() <= 1.0 + 1e-6 else 1.0
            a = np.clip(np.rint(a * scale) if scale != 1.0 else a, 0, 255).astype(np.uint8)
    elif floating:
        if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
            raise ValueError(f"{what}: float images must be (N, C, H, W), got shape {a.shape} (channels last?); "
                             "use x.permute(0, 3, 1, 2)")
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
            raise ValueError(f"{what} has values in [{a.min():.3g}, {a.max():.3g}]; float images must be in [0, 1] "
                             "(for [-1, 1] images pass (x + 1) / 2)")
        a = np.clip(np.rint(a.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"{what} must be float in [0, 1] or uint8, got dtype {a.dtype}")
    return np.ascontiguousarray(a)
