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
from .contract import read_labels, read_pixels
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
        for cand in (base / ".." / "shared" / "data" / "cifar10-jpeg.tar.xz",
                     base / "shared" / "data" / "cifar10-jpeg.tar.xz"):
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


def _rgb(im, where: str):
    """A PIL image as it is shown, in RGB: EXIF orientation applied; 16-bit grayscale scaled by
    65535; float (mode F) through the pixel contract; transparency composited on black."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{where}: 32-bit integer image with values in [{a.min()}, {a.max()}]; "
                             "save it as 8- or 16-bit")
        return np.repeat(np.rint(a / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        return np.repeat(read_pixels(np.asarray(im, np.float32)[None, ..., None], where)[0], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        return np.rint(a[..., :3] * (a[..., 3:] / 255.0)).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode(data: bytes, where: str, preprocess: Preprocess | None = None) -> np.ndarray:
    """Decode one image file's bytes to uint8 RGB ``(H, W, 3)`` (see :func:`_rgb`), preprocessed
    (resize, crop) when ``preprocess`` is given; an unreadable file is named (``where``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = _rgb(im, where)
            if preprocess is None:
                return rgb
            return np.asarray(preprocess(Image.fromarray(rgb)), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise ValueError(f"cannot decode image {where}: {e}; resize it, or raise PIL.Image.MAX_IMAGE_PIXELS "
                         "if you trust the file") from None
    except ValueError as e:
        if str(e).startswith(where):
            raise
        if "center-crop" in str(e):
            raise ValueError(f"{where}: {e}") from None
        raise ValueError(f"cannot decode image {where} (ValueError: {e}); remove or replace that file") from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, EOFError, struct.error on bad files
        why = "not a readable image file" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot decode image {where} ({why}); remove or replace that file") from None


def decode_file(path: str | Path, preprocess: Preprocess | None = None) -> np.ndarray:
    """One image file as uint8 ``(H, W, 3)`` (see :func:`_decode`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ValueError(f"cannot read image {path} ({e.strerror or e}); remove or replace that file") from None
    return _decode(data, str(path), preprocess)


def _load_cifar(kind: str, path: Path, split: str, spec: str) -> ImageData:
    names_default = CIFAR10_CLASSES if kind == "cifar10" else None
    is_tv = False
    if path.is_file() and (path.name.endswith((".tar.xz", ".tar.gz", ".tar", ".tgz"))):
        images, labels, names = _cached(path, f"{kind}-{split}", lambda: _decode_tar(path, split, names_default))
    elif path.is_dir():
        py = _find_torchvision_dir(path, kind)
        is_tv = py is not None
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
    return ImageData(images, labels, names, f"{kind}:{path}@{split}", folder_classes=not is_tv)


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
            if len(parts) != i + 3 or not parts[-1].lower().endswith(_IMAGE_EXT) or any(
                    p.startswith(".") for p in parts[i + 1:]):
                continue  # not split/class/image, or hidden (macOS ._x.png)
            fh = tar.extractfile(m)
            assert fh is not None
            per_class.setdefault(parts[i + 1], []).append((parts[-1], _decode(fh.read(), f"{path}:{m.name}")))
    if not per_class:
        raise ValueError(f"{path} has no images under a '{split}/<class>/' folder")
    names = ([c for c in (class_order or []) if c in per_class]
             + sorted(c for c in per_class if c not in (class_order or [])))
    images, labels = [], []
    for k, c in enumerate(names):
        for _, arr in sorted(per_class[c], key=lambda t: t[0]):
            images.append(arr)
            labels.append(k)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _visible(entries) -> list[Path]:
    """Entries not hidden (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``); broken symlinks refused."""
    out = []
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            raise ValueError(f"{p} is a broken symbolic link (to {os.readlink(p)}); remove it or fix its target")
        out.append(p)
    return out


def list_folder(path: Path) -> dict[str, list[Path]]:
    """``{class folder: sorted image files}`` of an ImageFolder (``PATH/<class>/<image>``), or
    ``{"": files}`` of a flat folder of images (an unlabeled set). Hidden files and folders are
    skipped, empty class folders too; images beside class folders are an error."""
    files_by_class: dict[str, list[Path]] = {}
    entries = _visible(sorted(path.iterdir()))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [f for f in entries if f.is_file() and f.suffix.lower() in _IMAGE_EXT]
    if subdirs:
        if loose:
            raise ValueError(f"{path} holds class folders and also {len(loose)} image(s) outside them "
                             f"({loose[0].name}, ...); move them into a class folder or remove them")
        for d in subdirs:
            fs = [f for f in _visible(sorted(d.iterdir())) if f.suffix.lower() in _IMAGE_EXT and not f.is_dir()]
            if fs:
                files_by_class[d.name] = fs
    elif loose:
        files_by_class[""] = loose
    if not files_by_class:
        raise ValueError(f"no images found in {path} (looked for {', '.join(_IMAGE_EXT)})")
    return files_by_class


def decode_files(files_by_class: dict[str, list[Path]], where: Path, preprocess: Preprocess | None = None,
                 source: str = "") -> ImageData:
    """Decode every file of :func:`list_folder` into one in-memory set: class folders give
    folder-named classes (:func:`ebmlens.data.classmap.map_classes` matches them to a model's);
    a flat folder gives an unlabeled set."""
    names = sorted(files_by_class)
    images, labels = [], []
    for k, c in enumerate(names):
        for f in files_by_class[c]:
            images.append(decode_file(f, preprocess))
            labels.append(k)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {where} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    flat = names == [""]
    return ImageData(np.stack(images), np.asarray(labels, dtype=np.int64), ["0"] if flat else names,
                     source or str(where), labeled=not flat, folder_classes=not flat)


def _decode_folder(path: Path, preprocess: Preprocess | None = None):
    d = decode_files(list_folder(path), path, preprocess)
    if not d.labeled:
        raise ValueError(f"{path} holds images but no class folders; the cifar layouts need <split>/<class>/ folders")
    return d.images, d.labels, list(d.class_names)


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


def _load_npz(path: Path, spec: str, *, unlabeled: bool = False, layout: str | None = None,
              labels_optional: bool = False) -> ImageData:
    """An ``.npz`` with ``images`` and ``labels`` (``class_names`` optional), read under the
    contract (:mod:`ebmlens.data.contract`); ``unlabeled``: no labels expected (they are ignored);
    ``labels_optional``: without ``labels`` the set is unlabeled (for consumers that need none)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "images" not in keys:
                raise ValueError(f"{path} has no 'images' array (found {keys}); "
                                 "save np.savez(PATH, images=x, labels=y)")
            images = z["images"]
            labels = None if unlabeled or "labels" not in keys else z["labels"]
            names = [str(c) for c in z["class_names"]] if "class_names" in keys and not unlabeled else None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); save it with np.savez") from None
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise ValueError(f"{path} holds object (pickled) arrays, which are never loaded; save plain numeric "
                             "arrays (images uint8 or float32, labels int64)") from None
        raise
    images = read_pixels(images, str(path), layout=layout)
    if labels is None and not (unlabeled or labels_optional):
        raise ValueError(f"{path} has no 'labels' array; save labels=, or write npz:{path}?unlabeled for a set "
                         "without labels (OOD sets, unconditional FD/IS/KID)")
    if labels is None:
        return ImageData(images, np.zeros(len(images), np.int64), ["0"], spec, labeled=False)
    y = read_labels(labels, len(images), str(path))
    if names is None:
        names = [str(i) for i in range(int(y.max()) + 1 if len(y) else 1)]
    elif len(y) and y.max() >= len(names):
        raise ValueError(f"{path}: labels go up to {int(y.max())} but class_names has {len(names)} names; "
                         "fix the labels or the class_names array")
    return ImageData(images, y, names, spec)


def to_uint8_images(x: torch.Tensor | np.ndarray, what: str = "images", *, strict: bool = True) -> np.ndarray:
    """A ``uint8 (N, H, W, C)`` batch from float ``(N, C, H, W)`` in [0, 1] (``rint(255 x)``, as saved
    to PNG) or ``uint8`` ``(N, H, W, C)`` (``(N, C, H, W)`` when unambiguous), under the reading
    contract (:func:`ebmlens.data.contract.read_pixels`: NaN and ranges other than [0, 1] refused).

    ``strict`` (tensors from a user): 4-D only, floats channels-first. ``strict=False`` (arrays read
    from files): ``(N, H, W)`` is grayscale and either layout is read when the shape says which.
    """
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not strict:
        return read_pixels(a, what)
    if a.ndim != 4:
        raise ValueError(f"{what} must be a 4-D batch (float N,C,H,W in [0,1] or uint8 N,H,W,C), got shape {a.shape}")
    if a.dtype == np.uint8:
        return read_pixels(a, what)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{what} must be float in [0, 1] or uint8, got dtype {a.dtype}")
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        raise ValueError(f"{what}: float images must be (N, C, H, W), got shape {a.shape} (channels last?); "
                         "use x.permute(0, 3, 1, 2)")
    return read_pixels(a, what, layout="nchw", allow_3d=False)
