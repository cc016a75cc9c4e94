"""Class folders map to a model's classes by name, never by position.

A folder layout (``folder:``, ``folder:ARCHIVE.tar``, ``imagenet:``, the ``cifar10:``/``cifar100:``
folders and archives) names classes by its folder names. :func:`map_classes` matches each folder to
the model's class names, in this order:

1. a ``class_map`` entry (``{"folder": "class name" or index}``; ``?class_map=FILE.json`` in the
   data spec, ``--class-map FILE.json`` on the command line, ``class_map=`` in the API);
2. the exact class name, then the same name ignoring case, ``_``, ``-`` and spaces
   (``Pickup Truck`` = ``pickup_truck``);
3. an ImageNet wnid (``n01440764``) through the 1000-wnid table of ImageNet-1k's standard order
   (``ebmlens/data/imagenet_wnids.txt``, taken from timm 1.0.9's bundled ``ImageNetInfo``), when
   the model has 1000 classes;
4. a numeric name (``3``: an ebmlens samples folder) as the class index.

A folder that matches nothing is an error listing it with close matches. A model without class
names (its names are ``0..K-1``) takes numeric folders as indices and any other folders in sorted
order, with a warning saying so (the set's ``label_note`` records it).

>>> import numpy as np
>>> from ebmlens.data import ImageData, CIFAR10_CLASSES
>>> d = ImageData(np.zeros((2, 1, 1, 3), np.uint8), np.array([0, 1]), ["cat", "dog"], "toy", folder_classes=True)
>>> map_classes(d, CIFAR10_CLASSES).labels.tolist()
[3, 5]
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._io import fingerprint

__all__ = ["map_classes", "require_labels", "imagenet_wnids", "read_class_map"]

log = logging.getLogger("ebmlens.data")
_WNID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in the standard class order (index ``k`` is class ``k``)."""
    return tuple((Path(__file__).parent / "imagenet_wnids.txt").read_text().split())


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", "", s).lower()


def read_class_map(path: str | os.PathLike) -> dict[str, str | int]:
    """A ``--class-map`` JSON file: ``{"folder name": "class name" or class index}``."""
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"class map {str(p)!r} does not exist; give a JSON file "
                                '{"folder": "class name" or index}') from None
    except (OSError, ValueError) as e:
        raise ValueError(f"class map {p} is not readable JSON ({e}); "
                         f"write {{\"folder\": \"class name\" or index}}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                            for v in doc.values()):
        raise ValueError(f"class map {p} must be a JSON object {{\"folder\": \"class name\" or index}}")
    return {str(k): v for k, v in doc.items()}


def _lookup(folder: str, classes: Sequence[str], k: int, cmap: Mapping[str, str | int] | None,
            named: bool) -> int | None:
    """The class index of ``folder``, or ``None``."""
    if cmap is not None and folder in cmap:
        v = cmap[folder]
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit() and v not in classes):
            i = int(v)
            if not 0 <= i < k:
                raise ValueError(f"class map sends folder {folder!r} to index {i}, but the model has {k} classes")
            return i
        target = str(v)
        if target not in classes and _norm(target) not in {_norm(c) for c in classes}:
            close = difflib.get_close_matches(target, list(classes), n=3)
            raise ValueError(f"class map sends folder {folder!r} to {target!r}, a class the model does not have"
                             + (f"; close: {', '.join(close)}" if close else ""))
        folder, named = target, True
    if named:
        if folder in classes:
            return list(classes).index(folder)
        norm = [_norm(c) for c in classes]
        if _norm(folder) in norm:
            return norm.index(_norm(folder))
    if k == 1000 and _WNID.match(folder):
        table = imagenet_wnids()
        if folder in table:
            return table.index(folder)
    if folder.isdigit() and int(folder) < k:
        return int(folder)
    return None


def map_classes(data: Any, classes: Sequence[str] | None, class_map: Mapping[str, str | int] | None = None):
    """``data`` (a set whose ``class_names`` are folder names) with labels in the order of
    ``classes`` (see the module docs); ``classes=None``: a model without class names."""
    if not getattr(data, "folder_classes", False):
        return data
    folders = list(data.class_names)
    cmap = class_map if class_map is not None else getattr(data, "class_map", None)
    key = (None if classes is None else tuple(classes), None if cmap is None else json.dumps(cmap, sort_keys=True))
    done = data.__dict__.setdefault("_mapped", {})  # a consumer that maps per batch (DataInit) maps once
    if key not in done:
        done[key] = _map(data, folders, classes, cmap)
    return done[key]


def _map(data: Any, folders: list[str], classes: Sequence[str] | None, cmap: Mapping[str, str | int] | None):
    if classes is not None and not isinstance(classes, (list, tuple)):
        raise TypeError(f"classes must be a list of class names, got {type(classes).__name__}")
    named = classes is not None and list(classes) != [str(i) for i in range(len(classes))]
    k = len(classes) if classes is not None else 0
    note = None
    if classes is None or not named:
        numeric = all(f.isdigit() for f in folders)
        wnids = k == 1000 and all(_WNID.match(f) for f in folders)
        if not (numeric or wnids or cmap):
            note = "no class names to match (the model has none): class folders taken in sorted order " + ", ".join(
                f"{f}={i}" for i, f in list(enumerate(sorted(folders)))[:5]) + (" ..." if len(folders) > 5 else "")
            log.warning("%s: %s", data.source, note)
            index = {f: i for i, f in enumerate(sorted(folders))}
            k = max(k, len(folders))
        elif classes is None:  # indices: numeric folders, class-map indices
            ints = [int(f) for f in folders if f.isdigit()] + [int(v) for v in (cmap or {}).values()
                                                               if isinstance(v, int) or str(v).isdigit()]
            k = max(ints, default=-1) + 1
    if note is None:
        names = list(classes) if classes is not None else [str(i) for i in range(k)]
        index, missing = {}, []
        for f in folders:
            i = _lookup(f, names, k, cmap, named)
            if i is None:
                missing.append(f)
            else:
                index[f] = i
        if missing:
            hints = []
            for f in missing[:5]:
                close = difflib.get_close_matches(f, names, n=2, cutoff=0.5) + [
                    c for c in names if _norm(c) and (_norm(c) in _norm(f) or _norm(f) in _norm(c))][:1]
                hints.append(f"{f!r}" + (f" (close: {', '.join(dict.fromkeys(close))})" if close else ""))
            raise ValueError(f"{data.source}: class folder(s) {', '.join(hints)}{' ...' if len(missing) > 5 else ''} "
                             f"match none of the {k} classes; rename them or give --class-map FILE.json "
                             '({"folder": "class name"})')
    out_names = list(classes) if classes is not None and named else (
        sorted(folders) if note else [str(i) for i in range(k)])
    old = np.asarray(data.labels, dtype=np.int64)
    lut = np.asarray([index[f] for f in folders], dtype=np.int64)
    labels = lut[old] if len(old) else old
    return _relabeled(data, labels, out_names, note)


def _relabeled(data: Any, labels: np.ndarray, names: list[str], note: str | None):
    from .memory import ImageData
    from .streamed import StreamedImages

    if isinstance(data, ImageData):
        same = np.array_equal(labels, data.labels)
        fp = data.fingerprint if same else fingerprint(data.fingerprint, labels)
        return dataclasses.replace(data, labels=labels, class_names=names, fingerprint=fp, folder_classes=False,
                                   label_note=note)
    if isinstance(data, StreamedImages):
        out = StreamedImages(data.files, labels, names, data.source, data.preprocess, data.workers, data.tar)
        out.label_note = note
        return out
    raise TypeError(f"cannot relabel a {type(data).__name__}; map its classes before wrapping it")


def _model_classes(model: Any) -> tuple[list[str] | None, int | None]:
    if model is None:
        return None, None
    k = getattr(model, "num_classes", None)
    names = getattr(model, "class_names", None)
    return (list(names) if names is not None else None), (int(k) if k is not None else None)


def require_labels(data: Any, who: str, model: Any = None):
    """``data`` checked for a consumer that needs labels, with labels in the model's class order.

    A set without labels (``npz:PATH?unlabeled``, a flat folder, a tensor given without labels)
    is refused, naming ``who`` and the fix. Class folders not yet matched to classes are mapped to
    ``model.class_names`` (see :func:`ebmlens.data.classmap.map_classes`). Labels outside
    ``[0, model.num_classes)`` are refused. Returns the (possibly relabeled) set.
    """
    if not getattr(data, "labeled", True):
        raise ValueError(f"{who} needs class labels but {getattr(data, 'source', 'the data')} has none; give a "
                         "labeled set (an npz with a 'labels' array, or class folders)")
    names, k = _model_classes(model)
    if getattr(data, "folder_classes", False):
        data = map_classes(data, names if names is not None else (None if k is None else [str(i) for i in range(k)]))
    if k is not None and len(data):
        lo, hi = int(data.labels.min()), int(data.labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{who}: {data.source} has labels in [{lo}, {hi}] but the model has {k} classes "
                             f"(0..{k - 1}); give data of the model's classes (or a --class-map FILE.json)")
    return data
