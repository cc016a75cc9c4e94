"""Readers of image files, archives and arrays, and the decode cache (``cache_dir()/data``).

Private: the data sources in :mod:`ebmlens.data.sources` call these.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_save_npz, fingerprint
from ..energy import Preprocess
from .memory import ImageData

log = logging.getLogger("ebmlens.data")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
]
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


def _decode(data: bytes, where: str, preprocess: Preprocess | None = None) -> np.ndarray:
    """Decode one image file's bytes to uint8 RGB ``(H, W, 3)``, preprocessed (resize, crop) when
    ``preprocess`` is given; an unreadable file is named (``where``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            return np.asarray(preprocess(im) if preprocess is not None else im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, ValueError) and "center-crop" in str(e):
            raise ValueError(f"{where}: {e}") from None
        why = "not a readable image file" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot decode image {where} ({why}); remove or replace that file") from None


def decode_file(path: str | Path, preprocess: Preprocess | None = None) -> np.ndarray:
    """One image file as uint8 ``(H, W, 3)`` (see :func:`_decode`)."""
    with open(path, "rb") as fh:
        return _decode(fh.read(), str(path), preprocess)


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


def list_folder(path: Path) -> dict[str, list[Path]]:
    """``{class: sorted image files}`` of an ImageFolder (``PATH/<class>/<image>``), or ``{"0": files}``
    of a flat folder of images."""
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
    return files_by_class


def decode_files(files_by_class: dict[str, list[Path]], where: Path, preprocess: Preprocess | None = None):
    """Decode every file of :func:`list_folder` into one ``(N, H, W, C)`` array, labels, class names."""
    names = sorted(files_by_class)
    images, labels = [], []
    for k, c in enumerate(names):
        for f in files_by_class[c]:
            images.append(decode_file(f, preprocess))
            labels.append(k)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {where} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _decode_folder(path: Path, preprocess: Preprocess | None = None):
    return decode_files(list_folder(path), path, preprocess)


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
