"""The OOD detection report of :func:`~ebmlens.analysis.ood_report`: per OOD set and score, AUROC,
AUPR-in, AUPR-out and FPR@95%TPR with bootstrap intervals; a Markdown table, JSON and histograms.

>>> from ebmlens.analysis.report import Interval
>>> iv = Interval(0.9, 0.85, 0.95, 0.95)
>>> rep = OODReport((OODResult("noise", "energy", iv, iv, iv, iv),), {}, {}, {}, {})
>>> rep["noise", "energy"].auroc.estimate
0.9
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import jsonable, save_figure
from .report import Interval, read_report_json, report_json, require_matplotlib

__all__ = ["OODResult", "OODReport"]

FORMAT = "ebmlens.ood_report/1"


@dataclass(frozen=True)
class OODResult:
    """One OOD set under one score (in-distribution = positive, higher score = in).

    Attributes:
        set: the OOD set's name.
        score: the score's name.
        auroc, aupr_in, aupr_out, fpr95: point estimates with percentile-bootstrap intervals.
    """

    set: str
    score: str
    auroc: Interval
    aupr_in: Interval
    aupr_out: Interval
    fpr95: Interval


def _fmt(iv: Interval) -> str:
    return f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


@dataclass(frozen=True, eq=False)
class OODReport:
    """Scores of one model on an in-distribution set and several OOD sets.

    Attributes:
        results: one :class:`OODResult` per (OOD set, score), sets in the order given.
        values: per set (``"in"`` first), per score, the per-image scores ``(n,)`` in image order.
        model: the model's provenance (:meth:`EnergyModel.describe`).
        sets: per set, its source, fingerprint, ``n`` scored and size.
        config: scores, n, batch size, ``n_boot``, level, bootstrap ``seed``, temperature, device.
    """

    results: tuple[OODResult, ...]
    values: Mapping[str, Mapping[str, np.ndarray]]
    model: Mapping[str, Any] = field(default_factory=dict)
    sets: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # sets of fewer than 20 images: the intervals are not reliable

    def __getitem__(self, key: tuple[str, str]) -> OODResult:
        for r in self.results:
            if (r.set, r.score) == tuple(key):
                return r
        raise KeyError(f"no result for (set, score) = {key!r}; have {[(r.set, r.score) for r in self.results]}")

    def table(self) -> str:
        """A Markdown table: per OOD set and score, AUROC, AUPR-in, AUPR-out, FPR@95%TPR [interval]."""
        level = self.results[0].auroc.level if self.results else 0.95
        head = ["OOD set", "n", "score", f"AUROC [{level:.0%} CI]", "AUPR-in", "AUPR-out", "FPR@95%TPR"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for r in self.results:
            n = self.sets.get(r.set, {}).get("n", "")
            lines.append("| " + " | ".join([r.set, str(n), r.score, _fmt(r.auroc), _fmt(r.aupr_in), _fmt(r.aupr_out),
                                            _fmt(r.fpr95)]) + " |")
        m, c, s = self.model, self.config, self.sets.get("in", {})
        foot = (f"\n{m.get('source')}:{m.get('name')}; in-distribution: {s.get('n')} images of {s.get('source')} "
                f"(positive class); {c.get('n_boot')} bootstrap resamples, seed {c.get('seed')}, "
                f"temperature {c.get('temperature')}.")
        foot += "".join(f"\nwarning: {w}" for w in self.warnings)
        return "\n".join(lines) + "\n" + foot + "\n"

    def to_dict(self, *, per_sample: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``per_sample`` adds the per-image scores (enough to redraw the plot)."""
        d: dict[str, Any] = {"format": FORMAT, "model": dict(self.model), "sets": jsonable(dict(self.sets)),
                             "config": jsonable(dict(self.config)),
                             "results": [jsonable(asdict(r), finite_floats=False) for r in self.results]}
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if per_sample:
            d["values"] = {k: {s: np.asarray(v, dtype=np.float64).round(6).tolist() for s, v in vals.items()}
                           for k, vals in self.values.items()}
        return d

    def to_json(self, path: str | os.PathLike | None = None, *, per_sample: bool = True) -> str:
        """The report as JSON text; written atomically to ``path`` when given."""
        return report_json(self.to_dict(per_sample=per_sample), path)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "OODReport":
        """Read a report written by :meth:`to_json` (a path or the JSON text)."""
        d = read_report_json(path_or_text, FORMAT, "OOD report")
        res = tuple(OODResult(r["set"], r["score"],
                              *(Interval(**r[k]) for k in ("auroc", "aupr_in", "aupr_out", "fpr95")))
                    for r in d["results"])
        values = {k: {s: np.asarray(v, dtype=np.float64) for s, v in vals.items()}
                  for k, vals in d.get("values", {}).items()}
        return cls(res, values, d.get("model", {}), d.get("sets", {}), d.get("config", {}),
                   tuple(d.get("warnings", ())))

    def plot(self, path: str | os.PathLike, *, bins: int = 40) -> Path:
        """One panel per score: histograms (densities) of the in-distribution set and each OOD set."""
        if not self.values:
            raise ValueError("this report has no per-image scores to plot; save it with per_sample=True")
        plt = require_matplotlib()
        scores = list(next(iter(self.values.values())))
        fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.4), squeeze=False)
        try:
            for ax, s in zip(axes[0], scores):
                allv = np.concatenate([np.asarray(v[s], dtype=np.float64) for v in self.values.values()])
                allv = allv[np.isfinite(allv)]
                lo, hi = (np.quantile(allv, [0.005, 0.995]) if allv.size else (0.0, 1.0))
                edges = np.linspace(lo, hi, bins + 1) if hi > lo else bins
                for name, vals in self.values.items():
                    v = np.clip(np.asarray(vals[s], dtype=np.float64), lo, hi)
                    label = "in" if name == "in" else f"{name} (AUROC {self[name, s].auroc.estimate:.3f})"
                    ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.6 if name == "in" else 1.1,
                            label=label)
                ax.set_xlabel(f"{s}  (higher = more in-distribution)")
                ax.set_ylabel("density")
                ax.legend(fontsize=7)
            m = self.model
            fig.suptitle(f"{m.get('source')}:{m.get('name')} - in: {self.sets.get('in', {}).get('source')}", fontsize=9)
            fig.tight_layout()
            return save_figure(fig, path)
        finally:
            plt.close(fig)
