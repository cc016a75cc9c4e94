"""Label policy of a sampling run: which classes, and which label each sample index gets.

By default labels are class-balanced and interleaved: ``labels[i] = classes[i % K]``, so when ``n`` is
not a multiple of ``K`` the first ``n mod K`` classes get one sample more, and any prefix of the run
(a killed run, a small ``n``) is as balanced as it can be.

>>> balanced_labels(5, [3, 7]).tolist()
[3, 7, 3, 7, 3]
>>> resolve_classes(["cat", 0], 3, ["dog", "x", "cat"])
[2, 0]
"""

from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np

from ..energy import validate_labels

__all__ = ["resolve_classes", "balanced_labels", "run_labels"]


def resolve_classes(classes: None | str | Sequence[int | str], num_classes: int,
                    class_names: Sequence[str] | None = None) -> list[int]:
    """Class indices from ``None`` / ``"all"`` / a list of indices or class names."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if classes is None or (isinstance(classes, str) and classes == "all"):
        return list(range(num_classes))
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: list[int] = []
    for c in classes:
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            if c not in names:
                close = difflib.get_close_matches(c, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; the classes are {', '.join(names)}"
                raise ValueError(f"unknown class name {c!r}{hint}")
            out.append(names.index(c))
            continue
        try:
            k = int(c)
        except (TypeError, ValueError):
            raise TypeError(f"classes must be 'all' or a list of class indices or names, got {c!r}") from None
        if not 0 <= k < num_classes:
            raise ValueError(f"class index {k} is out of range for a {num_classes}-class model; "
                             f"use indices 0..{num_classes - 1} or names such as {names[0]!r}")
        out.append(k)
    if not out:
        raise ValueError("classes is empty; pass 'all' or at least one class")
    if len(set(out)) != len(out):
        raise ValueError(f"classes lists a class twice: {out}; list each class once")
    return out


def balanced_labels(n: int, classes: Sequence[int]) -> np.ndarray:
    """Class-balanced, interleaved labels: ``labels[i] = classes[i % K]`` (int64, shape ``(n,)``).

    The first ``n mod K`` classes get one sample more.
    """
    if int(n) <= 0:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    if len(classes) == 0:
        raise ValueError("classes is empty; pass at least one class")
    return np.asarray(classes, dtype=np.int64)[np.arange(int(n)) % len(classes)]


def run_labels(n: int, num_classes: int, class_names: Sequence[str], classes=None,
               labels=None) -> tuple[np.ndarray, list[int]]:
    """``(labels int64 (n,), class order)`` of a run: explicit ``labels`` (their classes in increasing
    order), or :func:`balanced_labels` over :func:`resolve_classes` (``classes`` order)."""
    if labels is not None:
        if classes is not None and classes != "all":
            raise ValueError("pass either classes= or labels=, not both")
        y = validate_labels(labels, num_classes, n, name="labels").cpu().numpy()
        return y.astype(np.int64), sorted(set(int(v) for v in y))
    order = resolve_classes(classes, num_classes, class_names)
    return balanced_labels(n, order).astype(np.int64), order
