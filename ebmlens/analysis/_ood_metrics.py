"""Detection metrics for an in-distribution (positive) vs out-of-distribution (negative) score.

Scores are "higher = more in-distribution". With ``s_in`` (``m`` values) and ``s_out`` (``n`` values):

* **AUROC** = ``P(s_in > s_out) + 1/2 P(s_in = s_out)``, the Mann-Whitney count divided by ``m n``,
  computed from mid-ranks (ties count 1/2);
* **AUPR-in**: average precision with in-distribution as the positive class,
  ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds in decreasing order (no
  interpolation; tied scores enter together);
* **AUPR-out**: the same with out-of-distribution as the positive class and the score negated;
* **FPR@95%TPR**: with ``t`` the largest threshold that keeps ``TPR = #{s_in >= t} / m >= 0.95``
  (``t`` = the ``ceil(0.95 m)``-th largest in-score), the fraction of out-scores ``>= t``.

:func:`bootstrap_ood_metrics` adds 95% percentile intervals: in and out are resampled
independently (``n_boot`` times, one seeded ``numpy`` generator), as the two sets are independent.

>>> import numpy as np
>>> auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
1.0
>>> fpr_at_tpr(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
0.5
"""

from __future__ import annotations

import math

import numpy as np

from .report import Interval

__all__ = ["auroc", "average_precision", "fpr_at_tpr", "ood_metrics", "bootstrap_ood_metrics", "METRICS"]

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def _check(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(s_in, dtype=np.float64).ravel()
    b = np.asarray(s_out, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"need in- and out-of-distribution scores, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores contain NaN or infinite values; check the score function")
    return a, b


def auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Area under the ROC curve, in-distribution positive: the Mann-Whitney ``U / (m n)`` (ties 1/2).

    >>> auroc(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    0.75
    """
    a, b = _check(s_in, s_out)
    b = np.sort(b)
    below = np.searchsorted(b, a, side="left")      # out-scores strictly below each in-score
    ties = np.searchsorted(b, a, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (a.size * b.size))


def average_precision(s_pos: np.ndarray, s_neg: np.ndarray) -> float:
    """Average precision of ``s_pos`` (positives) against ``s_neg``, higher score = positive.

    >>> average_precision(np.array([2.0]), np.array([1.0]))
    1.0
    """
    a, b = _check(s_pos, s_neg)
    s = np.concatenate([a, b])
    pos = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each distinct threshold
    tp = np.cumsum(pos)[last]
    precision = tp / (last + 1)
    recall = tp / a.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(s_in: np.ndarray, s_out: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate (out-scores accepted) at the largest threshold keeping ``TPR >= tpr``."""
    a, b = _check(s_in, s_out)
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    k = max(1, math.ceil(tpr * a.size - 1e-9))
    t = np.sort(a)[::-1][k - 1]
    return float(np.mean(b >= t))


def ood_metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` point estimates (see the module docs)."""
    a, b = _check(s_in, s_out)
    return {"auroc": auroc(a, b), "aupr_in": average_precision(a, b),
            "aupr_out": average_precision(-b, -a), "fpr95": fpr_at_tpr(a, b)}


def bootstrap_ood_metrics(s_in: np.ndarray, s_out: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> dict[str, Interval]:
    """:func:`ood_metrics` with percentile-bootstrap intervals (in and out resampled independently).

    >>> iv = bootstrap_ood_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0]), n_boot=20)["auroc"]
    >>> (iv.estimate, iv.low, iv.high)
    (1.0, 1.0, 1.0)
    """
    a, b = _check(s_in, s_out)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    point = ood_metrics(a, b)
    rs = np.random.default_rng(seed)
    draws = {k: np.empty(n_boot) for k in METRICS}
    for i in range(n_boot):
        ra = a[rs.integers(0, a.size, a.size)]
        rb = b[rs.integers(0, b.size, b.size)]
        for k, v in ood_metrics(ra, rb).items():
            draws[k][i] = v
    q = ((1 - level) / 2, (1 + level) / 2)
    out = {}
    for k in METRICS:
        low, high = (float(x) for x in np.quantile(draws[k], q))
        out[k] = Interval(point[k], low, high, level)
    return out
