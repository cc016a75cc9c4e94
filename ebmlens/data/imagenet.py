"""The ImageNet (ILSVRC-2012) folder layout: ``imagenet:ROOT[@train|@val]``.

* ``ROOT/train/<wnid>/*.JPEG`` - one folder per class; the classes are the sorted folder names
  (the usual order: index ``k`` is the ``k``-th wnid, as torchvision's ImageFolder and every
  ImageNet classifier use).
* ``ROOT/val/`` - either class folders like train, or a flat folder of the 50,000 files with labels
  from ``LOC_val_solution.csv`` (Kaggle: ``ImageId,PredictionString`` whose first word is the
  wnid) or ``val.txt`` (``<file name> <class index>`` per line), looked for in ``ROOT/val`` and ``ROOT``.

Only file names are listed here; the pixels are read by :class:`~ebmlens.data.streamed.StreamedImages`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ._readers import _IMAGE_EXT, list_folder

__all__ = ["imagenet_files"]


def _wnids(root: Path) -> list[str] | None:
    train = root / "train"
    if train.is_dir():
        return sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None


def _label_file(root: Path, split_dir: Path) -> Path | None:
    for d in (split_dir, root):
        for name in ("LOC_val_solution.csv", "val.txt"):
            if (d / name).is_file():
                return d / name
    return None


def imagenet_files(root: Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``(files, labels, class_names)`` of one split, sorted by class then file name."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(f"{root} has no {split}/ folder; imagenet:ROOT expects ROOT/train/<wnid>/ and ROOT/val/")
    subdirs = [p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = _wnids(root)
    if subdirs:
        by_class = list_folder(split_dir)
        names = names or sorted(by_class)
        unknown = sorted(set(by_class) - set(names))
        if unknown:
            raise ValueError(f"{split_dir} has class folders not in {root}/train: {unknown[:5]}")
        index = {c: k for k, c in enumerate(names)}
        files = [str(f) for c in sorted(by_class, key=index.__getitem__) for f in by_class[c]]
        labels = np.concatenate([np.full(len(by_class[c]), index[c], np.int64)
                                 for c in sorted(by_class, key=index.__getitem__)])
        return files, labels, names
    label_file = _label_file(root, split_dir)
    if label_file is None:
        raise ValueError(f"{split_dir} is a flat folder but no label file was found; put LOC_val_solution.csv or "
                         f"val.txt ('<file> <class index>' lines) in {split_dir} or {root}")
    by_stem = {f.stem: f for f in split_dir.iterdir() if f.suffix.lower() in _IMAGE_EXT and not f.name.startswith(".")}
    pairs: list[tuple[int, str]] = []
    if label_file.suffix == ".csv":
        with open(label_file, newline="") as fh:
            rows = [(r["ImageId"], r["PredictionString"].split()[0]) for r in csv.DictReader(fh)]
        names = names or sorted({w for _, w in rows})
        index = {c: k for k, c in enumerate(names)}
        for image_id, wnid in rows:
            if wnid not in index:
                raise ValueError(f"{label_file}: class {wnid!r} of {image_id} is not in {root}/train")
            if image_id in by_stem:
                pairs.append((index[wnid], str(by_stem[image_id])))
    else:
        entries = [line.split() for line in label_file.read_text().splitlines() if line.strip()]
        k_max = max(int(e[1]) for e in entries) if entries else -1
        names = names or [str(k) for k in range(k_max + 1)]
        for e in entries:
            if len(e) != 2 or not e[1].isdigit() or int(e[1]) >= len(names):
                raise ValueError(f"{label_file}: bad line {' '.join(e)!r}; "
                                 f"expected '<file> <class index < {len(names)}>'")
            stem = Path(e[0]).stem
            if stem in by_stem:
                pairs.append((int(e[1]), str(by_stem[stem])))
    if not pairs:
        raise ValueError(f"no image of {split_dir} is named in {label_file}")
    pairs.sort()
    return [f for _, f in pairs], np.asarray([k for k, _ in pairs], np.int64), names
