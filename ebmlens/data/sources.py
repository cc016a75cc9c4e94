"""Data specs (``kind:PATH[@split][?option=value]``) and the registry of data sources behind them.

A *source* is ``fn(spec: DataSpec, preprocess) -> ImageSet``, registered under its kind with
:func:`register_data_source`; :func:`load_data` parses the spec, checks the split against the
source's splits and calls it. An unknown kind fails with the registered kinds and close matches.

Options (after ``?``, ``&``-separated): ``stream=1`` / ``stream=0`` force a streamed
(:class:`~ebmlens.data.streamed.StreamedImages`) or in-memory (:class:`~ebmlens.data.ImageData`)
set; without it ``folder:`` streams when it holds more than ``$EBMLENS_IN_MEMORY_MAX`` images
(default 60,000) and ``imagenet:`` always streams. ``unlabeled``: the set has no labels (an npz
without a ``labels`` array; any labels are ignored); only consumers that need none accept it.
``class_map=FILE.json``: ``{"folder": "class name" or index}`` for class folders whose names are
not the model's class names (:mod:`ebmlens.data.classmap`). ``layout=nhwc|nchw``: the axis order of
an npz whose shape is ambiguous. ``folder:ARCHIVE.tar`` reads an uncompressed tar
of class folders (or of per-class tars, as ImageNet's train archive) through a member index
(:mod:`ebmlens.data.tarindex`): streamed with random access, nothing unpacked.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._io import fingerprint
from ..energy import Preprocess
from ._readers import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    _load_cifar,
    _load_npz,
    decode_files,
    list_folder,
    to_uint8_images,
)
from .classmap import map_classes, read_class_map
from .contract import read_labels
from .memory import ImageData, ImageSet
from .streamed import StreamedImages

__all__ = ["DataSpec", "register_data_source", "data_sources", "parse_data_spec", "load_data", "as_image_data",
           "in_memory_max"]

_OPTIONS: dict[str, tuple[str, ...] | None] = {"stream": ("0", "1"), "unlabeled": ("", "1"),
                                               "layout": ("nhwc", "nchw"), "class_map": None}
_DEFAULT_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: ``kind``, ``path`` (as written), ``split`` (``None`` when not given),
    ``options`` (``{"stream": "1"}``) and ``text`` (the spec itself, recorded as the set's source)."""

    kind: str
    path: str
    split: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def stream(self, default: bool) -> bool:
        """Whether to stream: the ``stream=`` option, else ``default``."""
        s = self.options.get("stream")
        return default if s is None else s == "1"


@dataclass(frozen=True)
class _Source:
    fn: Callable[[DataSpec, Preprocess | None], ImageSet]
    splits: tuple[str, ...]
    raw: bool = False


_SOURCES: dict[str, _Source] = {}


def register_data_source(kind: str, fn: Callable[[DataSpec, Preprocess | None], ImageSet], *,
                         splits: tuple[str, ...] = ("train", "test"), overwrite: bool = False,
                         raw: bool = False) -> None:
    """Make ``kind:PATH`` specs load through ``fn(spec, preprocess) -> ImageSet``.

    ``splits`` are the ``@split`` names ``fn`` accepts (``spec.split`` is ``None`` or one of them).
    ``raw``: ``fn`` reads the whole text after ``kind:`` itself (``spec.path``; its own ``?`` options and
    ``@``s, e.g. ``corrupt:contrast@3:cifar10:PATH``); no split or option parsing here.
    """
    if not (isinstance(kind, str) and kind.isidentifier()):
        raise ValueError(f"data source kind must be an identifier like 'imagenet', got {kind!r}")
    if not callable(fn):
        raise TypeError(f"data source {kind!r} needs a callable fn(spec, preprocess), got {type(fn).__name__}")
    if kind in _SOURCES and not overwrite:
        raise ValueError(f"data source {kind!r} is already registered; pass overwrite=True to replace it")
    _SOURCES[kind] = _Source(fn, tuple(splits), bool(raw))


def data_sources() -> list[str]:
    """The registered kinds."""
    return sorted(_SOURCES)


def in_memory_max() -> int:
    """``$EBMLENS_IN_MEMORY_MAX`` (default 60,000): larger folders are streamed."""
    env = os.environ.get("EBMLENS_IN_MEMORY_MAX", "60000")
    if not env.isdigit():
        raise ValueError(f"EBMLENS_IN_MEMORY_MAX must be a non-negative integer, got {env!r}")
    return int(env)


def _parse(spec: str) -> DataSpec:
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data spec must be a string like 'cifar10:PATH@test', got {type(spec).__name__}")
    text = str(spec)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in _SOURCES:
        if Path(text).suffix == ".npz":
            kind, rest = "npz", text
        elif Path(text).is_dir():
            kind, rest = "folder", text
        else:
            close = difflib.get_close_matches(kind, list(_SOURCES), n=3, cutoff=0.6) if sep else []
            hint = f"; did you mean {', '.join(c + ':' for c in close)}?" if close else ""
            raise ValueError(f"unknown data spec {text!r}{hint} Known kinds: {', '.join(data_sources())} "
                             "(cifar10:PATH[@train|@test], imagenet:PATH[@train|@val], folder:PATH, npz:PATH)")
    if _SOURCES[kind].raw:
        return DataSpec(kind, rest, None, {}, text)
    options: dict[str, str] = {}
    if "?" in rest:
        rest, _, query = rest.rpartition("?")
        for item in filter(None, query.split("&")):
            k, _, v = item.partition("=")
            allowed = _OPTIONS.get(k, ())
            if k not in _OPTIONS or (allowed is not None and v not in allowed) or (allowed is None and not v):
                raise ValueError(f"unknown option {item!r} in data spec {text!r}; use ?stream=1, ?stream=0, "
                                 "?unlabeled, ?layout=nhwc|nchw or ?class_map=FILE.json")
            options[k] = v
    split = None
    if "@" in rest:
        path, _, split = rest.rpartition("@")
        allowed = _SOURCES[kind].splits
        if split not in allowed:
            raise ValueError(f"unknown split {split!r} in data spec {text!r}; use "
                             + " or ".join(f"@{s}" for s in allowed))
        rest = path
    if not rest:
        raise ValueError(f"data spec {text!r} names no path")
    return DataSpec(kind, rest, split, options, text)


def parse_data_spec(spec: str) -> tuple[str, str, str | None]:
    """``"cifar10:PATH@test"`` -> ``("cifar10", "PATH", "test")`` (options after ``?`` dropped)."""
    d = _parse(spec)
    return d.kind, d.path, d.split


def load_data(spec: str | ImageSet, split: str | None = None, *, default_split: str = "test",
              preprocess: Preprocess | None = None, classes: list[str] | None = None,
              class_map: dict | str | os.PathLike | None = None, need_labels: bool = True) -> ImageSet:
    """Load an image set from a data spec (see :mod:`ebmlens.data`). ``split`` overrides the spec's
    ``@split``; without either, ``default_split`` is used (statistics use train, analysis and metrics
    test; ImageNet's test is its ``val``). ``preprocess``: the model's resize / crop
    (``model.preprocess``), applied as files are decoded (not to arrays or archives of CIFAR).

    ``classes`` (``model.class_names``): class folders are matched to these names now
    (:func:`ebmlens.data.classmap.map_classes`; ``cifar10:``/``cifar100:`` default to their own
    names); otherwise the set keeps its folder names until a consumer maps them to its model
    (:func:`ebmlens.data.require_labels`). ``class_map``: a dict or JSON file for folders named otherwise.
    ``need_labels=False`` (consumers that need none: FD/IS/KID images and references, OOD sets): an
    npz without ``labels`` reads as an unlabeled set instead of an error."""
    if isinstance(spec, ImageSet):
        return map_classes(spec, classes, _class_map(class_map)) if classes is not None else spec
    d = _parse(spec)
    src = _SOURCES[d.kind]
    if src.raw:
        return src.fn(d, preprocess)
    want = split or d.split or default_split
    if want not in src.splits and not (split or d.split):
        want = src.splits[-1]  # e.g. imagenet has no "test": its "val" is the held-out split
    if want not in src.splits:
        raise ValueError(f"unknown split {want!r} for {d.kind}: data; use one of {', '.join(src.splits)}")
    opts = d.options if need_labels else {**d.options, "_labels_optional": "1"}
    data = src.fn(DataSpec(d.kind, d.path, want, opts, d.text), preprocess)
    if data.split is None:  # the split read is kept on the set (ImageSet.split): nobody parses the source
        object.__setattr__(data, "split", want)  # the reader's fresh set, frozen or not
    if "unlabeled" in d.options and data.labeled:
        data = _with(data, labeled=False, folder_classes=False)
    cmap = _class_map(class_map if class_map is not None else d.options.get("class_map"))
    if not data.folder_classes:
        return data
    named = classes is not None and list(classes) != [str(i) for i in range(len(classes))]
    if d.kind in _DEFAULT_CLASSES and not named:
        classes = _DEFAULT_CLASSES[d.kind]  # CIFAR's own folders carry CIFAR's names
    if classes is not None:
        return map_classes(data, list(classes), cmap)
    return _with(data, class_map=cmap) if cmap is not None else data


def _class_map(cm: dict | str | os.PathLike | None) -> dict | None:
    if cm is None or isinstance(cm, dict):
        return cm
    if isinstance(cm, (str, os.PathLike)):
        return read_class_map(cm)
    raise TypeError(f"class_map must be a dict or a JSON file path, got {type(cm).__name__}")


def _with(data: ImageSet, **kw) -> ImageSet:
    """``data`` with the flags in ``kw`` (labeled, folder_classes, class_map) changed."""
    if isinstance(data, ImageData):
        return dataclasses.replace(data, **kw)
    for k, v in kw.items():
        setattr(data, k, v)
    return data


def _existing(spec: DataSpec, what: str = "the CIFAR-10 archive or folder") -> Path:
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist (from spec {spec.text!r}); "
                                f"point it at {what}")
    return path


def _cifar(kind: str):
    def load(spec: DataSpec, preprocess: Preprocess | None) -> ImageSet:
        return _load_cifar(kind, _existing(spec), spec.split or "test", spec.text)
    return load


def _npz(spec: DataSpec, preprocess: Preprocess | None) -> ImageSet:
    return _load_npz(_existing(spec, "an .npz file"), spec.text, unlabeled="unlabeled" in spec.options,
                     layout=spec.options.get("layout"), labels_optional="_labels_optional" in spec.options)


def _folder(spec: DataSpec, preprocess: Preprocess | None) -> ImageSet:
    path = _existing(spec, "a folder of images")
    if path.is_dir() and (path / "images.npy").exists() and (path / "labels.npy").exists():
        # an ebmlens samples folder: images memory-mapped (read batch by batch), fingerprinted in chunks
        images, labels = np.load(path / "images.npy", mmap_mode="c"), np.load(path / "labels.npy")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{path / 'images.npy'} is {images.dtype} {images.shape}, not an ebmlens samples array "
                             "(uint8 N, H, W, C); save images.npz instead")
        labels = read_labels(labels, len(images), str(path / "labels.npy"))
        chunks = (images[s:s + 1024] for s in range(0, len(images), 1024))
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
        return ImageData(images, labels, names, spec.text, fingerprint(*chunks, labels))
    if path.is_dir() and (path / "samples.npz").exists():
        return _load_npz(path / "samples.npz", spec.text, unlabeled="unlabeled" in spec.options,
                         labels_optional="_labels_optional" in spec.options)
    if path.is_file() and path.name.endswith(".tar"):  # random access through a member index
        from .tarindex import tar_index

        data = StreamedImages.from_tar(tar_index(path), spec.text, preprocess)
        if spec.stream(len(data) > in_memory_max()):
            return data
        return ImageData(np.concatenate([a for a, _ in data.arrays(256)]), data.labels, data.class_names, spec.text,
                         folder_classes=True)
    if not path.is_dir():
        raise ValueError(f"folder:{path} is not a directory (or an uncompressed .tar of class folders)")
    files = list_folder(path)
    if spec.stream(sum(len(v) for v in files.values()) > in_memory_max()):
        return StreamedImages.from_folder_lists(files, spec.text, preprocess)
    return decode_files(files, path, preprocess, spec.text)


def _imagenet(spec: DataSpec, preprocess: Preprocess | None) -> ImageSet:
    from .imagenet import imagenet_files

    path = _existing(spec, "the ImageNet root (with train/ and val/)")
    files, labels, names = imagenet_files(path, "val" if spec.split in (None, "test") else spec.split)
    # without a model's preprocessing: RobustBench's ImageNet transform (Resize 256, CenterCrop 224)
    data = StreamedImages(tuple(files), labels, names, spec.text, preprocess or Preprocess(256, 224),
                          folder_classes=True)
    if spec.stream(True):
        return data
    arrays = np.concatenate([a for a, _ in data.arrays(256)]) if len(data) else np.zeros((0, 1, 1, 3), np.uint8)
    return ImageData(arrays, labels, names, spec.text, folder_classes=True)


register_data_source("cifar10", _cifar("cifar10"))
register_data_source("cifar100", _cifar("cifar100"))
register_data_source("folder", _folder)
register_data_source("npz", _npz)
register_data_source("imagenet", _imagenet, splits=("train", "val"))


def as_image_data(x: object, what: str = "images", *, default_split: str = "test",
                  preprocess: Preprocess | None = None, need_labels: bool = False) -> ImageSet:
    """An image set from what a user hands in: an :class:`ImageSet` (returned as is); a batch (see
    :func:`to_uint8_images`; an unlabeled set: consumers that need labels refuse it); a folder (an
    ebmlens samples folder or image files); an
    ``.npz``; or a data spec (without ``@split``: ``default_split``). ``what`` names it in errors.
    ``need_labels`` (default ``False``: what reads these needs no labels, e.g. FD/IS/KID): see
    :func:`load_data`; a consumer that needs labels checks them with :func:`require_labels`."""
    if isinstance(x, ImageSet):
        data = x
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        data = ImageData(to_uint8_images(x, what), np.zeros(len(x), np.int64), ["0"], f"{what} array {tuple(x.shape)}",
                         labeled=False)
    elif isinstance(x, (str, os.PathLike)):
        p = Path(x).expanduser()
        if p.is_dir():
            data = load_data(f"folder:{p}", preprocess=preprocess, need_labels=need_labels)
        elif p.suffix == ".npz" and p.is_file():
            data = load_data(f"npz:{p}", need_labels=need_labels)
        elif ":" not in str(x):
            raise FileNotFoundError(f"{what} {str(x)!r} does not exist; give a samples or image folder, an .npz, "
                                    "or a data spec like cifar10:PATH@train")
        else:
            data = load_data(str(x), default_split=default_split, preprocess=preprocess, need_labels=need_labels)
    else:
        raise TypeError(f"{what} must be images (a tensor or array), an ImageData, a folder, an .npz or a data spec "
                        f"like 'cifar10:PATH@train', got {type(x).__name__}")
    if len(data) == 0:
        raise ValueError(f"{what} ({data.source}) holds no images")
    return data
