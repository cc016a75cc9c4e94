"""Energy reports: the numbers of :func:`~ebmlens.analysis.energy_report` as frozen dataclasses,
with a Markdown/CSV table, JSON and histograms.

For every *input kind* (``"natural"`` and one per attack) the report keeps, per sample,

* ``energy``     - the marginal energy ``E(x) = -logsumexp_y f(x)[y]``;
* ``joint_true`` - ``E(x, y_true) = -f(x)[y_true]``;
* ``joint_adv``  - ``E(x, y_adv)``: ``y_adv`` is the target of a targeted attack that takes one, and
  otherwise the label predicted on that input (for natural inputs: the natural prediction);
* ``pred``       - the predicted label,

and summarizes them (:class:`Stats`: mean, std, quantiles). Gaps follow Mirza et al. (2024, Sec. 3):
``Delta E(x) = E(x) - E(x*)`` with ``x*`` the adversarial version of the natural ``x``, averaged over
the same images (a paired mean) with a bootstrap interval (:func:`bootstrap_mean_ci`). A positive
gap means the attack *lowered* the energy.

>>> import numpy as np
>>> s = Stats.of(np.array([1.0, 2.0, 3.0]))
>>> (s.n, s.mean, s.q50)
(3, 2.0, 2.0)
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import atomic_write_text, jsonable, save_figure

__all__ = ["Stats", "Interval", "KindSummary", "EnergyReport", "bootstrap_mean_ci", "summarize_kind",
           "atomic_write_text", "require_matplotlib"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
VALUE_FIELDS = ("energy", "joint_true", "joint_adv")


# --------------------------------------------------------------------------- small pieces
def report_json(d: Mapping[str, Any], path: str | os.PathLike | None = None) -> str:
    """A report's dict as JSON text (indent 1; NaN kept as in every report); written atomically to
    ``path`` when given. Returns the text."""
    text = json.dumps(d, indent=1, allow_nan=True)
    if path is not None:
        atomic_write_text(path, text)
    return text


def read_report_json(path_or_text: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """The dict of a report written by :func:`report_json` (a path or the JSON text), checked to be ``fmt``."""
    p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
    d = json.loads(p.read_text() if p is not None else str(path_or_text))
    if d.get("format") != fmt:
        raise ValueError(f"{path_or_text!s:.80} is not an ebmlens {what} (format {d.get('format')!r})")
    return d


def rows_to_csv(rows: list[dict[str, Any]], path: str | os.PathLike | None = None) -> str:
    """Rows of equal keys as CSV text; also written atomically to ``path`` when given."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    if path is not None:
        atomic_write_text(path, buf.getvalue())
    return buf.getvalue()


def require_matplotlib():
    """``matplotlib.pyplot`` with the Agg backend, or an ImportError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'ebmlens[plots]' "
                          "(tables and JSON work without it)") from e
    return plt


@dataclass(frozen=True)
class Stats:
    """Summary of one per-sample quantity: ``n``, mean, std (ddof 0) and the 5/25/50/75/95% quantiles."""

    n: int
    mean: float
    std: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Stats":
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        q = np.quantile(v, QUANTILES)
        return cls(int(v.size), float(v.mean()), float(v.std()), *(float(x) for x in q))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def bootstrap_mean_ci(values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (Efron & Tibshirani 1993, ch. 13).

    Resamples ``values`` with replacement ``n_boot`` times (a fixed ``seed``: reports are reproducible)
    and takes the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled means. For a
    paired difference (adversarial minus natural on the same images) pass the per-image differences.

    >>> iv = bootstrap_mean_ci(np.ones(10))
    >>> (iv.estimate, iv.low, iv.high)
    (1.0, 1.0, 1.0)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if v.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, level)
    rs = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, 256):  # chunks keep memory at 256 x n
        k = min(256, n_boot - s)
        means[s:s + k] = v[rs.integers(0, v.size, size=(k, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), level)


@dataclass(frozen=True)
class KindSummary:
    """Statistics of one input kind (``"natural"`` or an attack's name).

    Attributes:
        kind: ``"natural"`` or the attack's registry name.
        targeted: whether the attack is targeted (``None`` for natural inputs).
        n: number of images.
        accuracy: fraction whose prediction equals the true label.
        target_rate: targeted attacks that take a target: fraction predicted as the target.
        energy, joint_true, joint_adv: :class:`Stats` of ``E(x)``, ``E(x, y_true)``, ``E(x, y_adv)``.
        gap_energy: paired mean of ``E(x) - E(x*)`` (natural minus this kind) with a bootstrap
            interval; ``None`` for natural inputs.
        gap_joint: the same for ``E(x, y_true) - E(x*, y_true)``.
    """

    kind: str
    targeted: bool | None
    n: int
    accuracy: float
    target_rate: float | None
    energy: Stats
    joint_true: Stats
    joint_adv: Stats
    gap_energy: Interval | None = None
    gap_joint: Interval | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KindSummary":
        kw = dict(d)
        for k in ("energy", "joint_true", "joint_adv"):
            kw[k] = Stats(**kw[k])
        for k in ("gap_energy", "gap_joint"):
            kw[k] = Interval(**kw[k]) if kw.get(k) else None
        return cls(**kw)


def summarize_kind(kind: str, targeted: bool | None, values: Mapping[str, np.ndarray], labels: np.ndarray,
                   natural: Mapping[str, np.ndarray] | None, *, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> KindSummary:
    """Build a :class:`KindSummary` from per-sample arrays (see the module docs for the keys)."""
    pred = np.asarray(values["pred"])
    tgt = values.get("target")
    gap_e = gap_j = None
    if natural is not None:
        gap_e = bootstrap_mean_ci(natural["energy"] - values["energy"], level=level, n_boot=n_boot, seed=seed)
        gap_j = bootstrap_mean_ci(natural["joint_true"] - values["joint_true"], level=level, n_boot=n_boot, seed=seed)
    return KindSummary(
        kind=kind, targeted=targeted, n=int(pred.size),
        accuracy=float(np.mean(pred == labels)) if pred.size else float("nan"),
        target_rate=float(np.mean(pred == np.asarray(tgt))) if tgt is not None and pred.size else None,
        energy=Stats.of(values["energy"]), joint_true=Stats.of(values["joint_true"]),
        joint_adv=Stats.of(values["joint_adv"]), gap_energy=gap_e, gap_joint=gap_j)


# --------------------------------------------------------------------------- the report
@dataclass(frozen=True, eq=False)
class EnergyReport:
    """Natural vs adversarial energies of one model on one set of images.

    Attributes:
        kinds: one :class:`KindSummary` per input kind, natural first.
        values: per kind, per-sample arrays ``energy``, ``joint_true``, ``joint_adv``, ``pred``
            (and ``target`` for targeted attacks that take one), each ``(n,)``, in image order.
        labels: ``(n,)`` true labels.
        indices: ``(n,)`` indices of the images in the dataset.
        model: the model's provenance (:meth:`EnergyModel.describe`).
        data: the dataset's source, fingerprint and size.
        config: the settings (attacks, eps, threat model, seed, ...).
        adversarial: per attack, the ``(n, C, H, W)`` adversarial images when asked for
            (``keep_adversarial=True``), else ``None``.
        warnings: what makes the numbers weak (fewer than 20 images: the intervals are not reliable).
    """

    kinds: tuple[KindSummary, ...]
    values: Mapping[str, Mapping[str, np.ndarray]]
    labels: np.ndarray
    indices: np.ndarray
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    adversarial: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = ()

    # ------------------------------------------------------------- access
    @property
    def kind_names(self) -> list[str]:
        return [k.kind for k in self.kinds]

    def __getitem__(self, kind: str) -> KindSummary:
        for k in self.kinds:
            if k.kind == kind:
                return k
        raise KeyError(f"no input kind {kind!r} in this report; it has {self.kind_names}")

    def mean_energy(self, kind: str) -> float:
        """Mean ``E(x)`` over the images of ``kind``."""
        return self[kind].energy.mean

    # ------------------------------------------------------------- table
    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per kind (the CSV rows)."""
        out = []
        for k in self.kinds:
            row: dict[str, Any] = {"kind": k.kind, "targeted": "" if k.targeted is None else k.targeted,
                                   "n": k.n, "accuracy": k.accuracy,
                                   "target_rate": "" if k.target_rate is None else k.target_rate}
            for name in VALUE_FIELDS:
                for f in fields(Stats):
                    if f.name != "n":
                        row[f"{name}_{f.name}"] = getattr(getattr(k, name), f.name)
            for name in ("gap_energy", "gap_joint"):
                iv = getattr(k, name)
                for part in ("estimate", "low", "high"):
                    row[f"{name}_{part}"] = "" if iv is None else getattr(iv, part)
            out.append(row)
        return out

    def table(self) -> str:
        """A Markdown table: per kind, accuracy, E(x), E(x, y_true), E(x, y_adv) and the gaps.

        ``Delta E(x)`` is ``E(x) - E(x*)`` averaged over the same images, with its bootstrap interval
        (positive: the attack lowered the energy).
        """
        level = next((k.gap_energy.level for k in self.kinds if k.gap_energy is not None), 0.95)
        head = ["input", "n", "acc", "E(x) mean ± std", "E(x) q05 / q50 / q95", "E(x,y_true) mean ± std",
                "E(x,y_adv) mean ± std", f"ΔE(x) [{level:.0%} CI]", f"ΔE(x,y_true) [{level:.0%} CI]"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for k in self.kinds:
            name = k.kind if k.targeted is None else f"{k.kind} ({'targeted' if k.targeted else 'untargeted'})"
            acc = f"{k.accuracy:.3f}" + (f" (hit {k.target_rate:.3f})" if k.target_rate is not None else "")
            cells = [name, str(k.n), acc,
                     f"{k.energy.mean:.3f} ± {k.energy.std:.3f}",
                     f"{k.energy.q05:.2f} / {k.energy.q50:.2f} / {k.energy.q95:.2f}",
                     f"{k.joint_true.mean:.3f} ± {k.joint_true.std:.3f}",
                     f"{k.joint_adv.mean:.3f} ± {k.joint_adv.std:.3f}",
                     "-" if k.gap_energy is None else str(k.gap_energy),
                     "-" if k.gap_joint is None else str(k.gap_joint)]
            lines.append("| " + " | ".join(cells) + " |")
        c = self.config
        foot = (f"\n{self.model.get('source')}:{self.model.get('name')} on {self.data.get('n')} images of "
                f"{self.data.get('source')}; threat model {c.get('threat_model')}, eps {c.get('eps')}; "
                f"ΔE = natural minus adversarial, paired over the same images.")
        foot += "".join(f"\nwarning: {w}" for w in self.warnings)
        return "\n".join(lines) + "\n" + foot + "\n"

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows of :meth:`rows` as CSV; written atomically to ``path`` when given. Returns the text."""
        return rows_to_csv(self.rows(), path)

    # ------------------------------------------------------------- json
    def to_dict(self, *, per_sample: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``per_sample`` adds the per-image arrays (enough to redraw the plots)."""
        d: dict[str, Any] = {"format": "ebmlens.energy_report/1", "model": dict(self.model), "data": dict(self.data),
                             "config": jsonable(dict(self.config), finite_floats=False),
                             "kinds": [jsonable(asdict(k), finite_floats=False) for k in self.kinds]}
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if per_sample:
            d["labels"] = self.labels.tolist()
            d["indices"] = self.indices.tolist()
            d["values"] = {kind: {key: (np.asarray(v).round(5).tolist() if np.asarray(v).dtype.kind == "f"
                                        else np.asarray(v).tolist()) for key, v in vals.items()}
                           for kind, vals in self.values.items()}
        return d

    def to_json(self, path: str | os.PathLike | None = None, *, per_sample: bool = True) -> str:
        """The report as JSON text; written atomically to ``path`` when given."""
        return report_json(self.to_dict(per_sample=per_sample), path)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "EnergyReport":
        """Read a report written by :meth:`to_json` (a path or the JSON text)."""
        d = read_report_json(path_or_text, "ebmlens.energy_report/1", "energy report")
        values = {kind: {k: np.asarray(v, dtype=np.float64 if k in VALUE_FIELDS else np.int64) for k, v in vals.items()}
                  for kind, vals in d.get("values", {}).items()}
        return cls(tuple(KindSummary.from_dict(k) for k in d["kinds"]), values,
                   np.asarray(d.get("labels", []), dtype=np.int64), np.asarray(d.get("indices", []), dtype=np.int64),
                   d.get("model", {}), d.get("data", {}), d.get("config", {}), None, tuple(d.get("warnings", ())))

    # ------------------------------------------------------------- plot
    def plot(self, path: str | os.PathLike, *, bins: int = 40) -> Path:
        """Overlaid histograms of ``E(x)`` and ``E(x, y_true)`` per input kind, saved to ``path`` (png/pdf/svg).

        Needs matplotlib (the ``plots`` extra) and the per-sample values.
        """
        if not self.values:
            raise ValueError("this report has no per-sample values to plot (read from a JSON written with "
                             "per_sample=False); rerun energy_report or save with per_sample=True")
        plt = require_matplotlib()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        try:
            for ax, key, title in ((axes[0], "energy", "E(x)"), (axes[1], "joint_true", "E(x, y_true)")):
                allv = np.concatenate([np.asarray(v[key], dtype=np.float64) for v in self.values.values()])
                allv = allv[np.isfinite(allv)]
                edges = np.linspace(allv.min(), allv.max(), bins + 1) if allv.size and allv.min() < allv.max() else bins
                for k in self.kinds:
                    v = np.asarray(self.values[k.kind][key], dtype=np.float64)
                    ax.hist(v, bins=edges, histtype="step", linewidth=1.6,
                            label=f"{k.kind} (mean {np.mean(v):.2f})")
                ax.set_xlabel(title + "  (lower = more likely under the model)")
                ax.set_ylabel("images")
                ax.legend(fontsize=8)
            m, c = self.model, self.config
            fig.suptitle(f"{m.get('source')}:{m.get('name')} - {c.get('threat_model')} eps {c.get('eps'):.4g}, "
                         f"n={self.data.get('n')}", fontsize=10)
            fig.tight_layout()
            return save_figure(fig, path)
        finally:
            plt.close(fig)
