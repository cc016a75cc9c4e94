"""Energies over an adversarial-training run: one :func:`energy_report` per checkpoint.

Mirza et al. (2024, Sec. 3) follow ``Delta E(x) = E(x) - E(x*)`` (natural minus adversarial, paired
over the same images) across the epochs of a run: for PGD adversarial training it drifts below zero
and then plunges when robust overfitting sets in, while TRADES keeps it near zero. :func:`dynamics`
measures it per checkpoint, with the accuracies, and :class:`DynamicsReport` tabulates and plots it.

Example (checkpoints of an ``ebmlens train`` run)::

    import ebmlens
    dyn = ebmlens.analysis.dynamics("runs/at/epoch_*.pt", "cifar10:PATH", ["pgd"], threat_model="L2",
                                    eps=0.5, n=500)
    print(dyn.table())
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._io import save_figure
from ..attacks import Geometry
from ..data import ImageSet
from ..energy import EnergyModel
from .energies import as_image_data, energy_report
from .report import EnergyReport, Interval, report_json, require_matplotlib, rows_to_csv

__all__ = ["dynamics", "DynamicsReport", "resolve_checkpoints"]


def resolve_checkpoints(checkpoints: str | os.PathLike | Sequence[str | os.PathLike | EnergyModel]) -> list:
    """A glob pattern (``"runs/x/epoch_*.pt"``) or a list of paths/models -> an ordered list.

    Globs are sorted by the epoch number in the file name (``epoch_012.pt`` -> 12), then by name.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        pattern = os.path.expanduser(str(checkpoints))
        found = glob.glob(pattern)
        if not found:
            raise ValueError(f"no checkpoint matches {str(checkpoints)!r}; check the pattern and quote it "
                             "so the shell does not expand it (e.g. 'runs/x/epoch_*.pt')")
        return sorted(found, key=lambda p: (_epoch_from_name(p) if _epoch_from_name(p) is not None else 1 << 30, p))
    items = list(checkpoints)
    if not items:
        raise ValueError("checkpoints is empty; pass a glob pattern or a list of checkpoint paths")
    for c in items:
        if not isinstance(c, (str, os.PathLike, EnergyModel)):
            raise TypeError(f"a checkpoint must be a path or an EnergyModel, got {type(c).__name__}")
        if isinstance(c, (str, os.PathLike)) and ":" not in str(c)[2:] and not Path(c).exists():
            raise FileNotFoundError(f"checkpoint {str(c)!r} does not exist")
    return items


def _epoch_from_name(path: str | os.PathLike) -> int | None:
    m = re.search(r"(?:epoch|ep)[_-]?(\d+)", Path(path).stem)
    return int(m.group(1)) if m else None


def _checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The epoch stored in an ``ebmlens train`` checkpoint's meta, else the one in its file name."""
    try:
        from ..models.file import read_checkpoint, split_checkpoint

        obj, st_meta = read_checkpoint(Path(path))
        _, meta = split_checkpoint(obj, st_meta)
        if meta.get("epoch") is not None:
            return int(meta["epoch"])
    except Exception:  # noqa: BLE001 - a name without meta still has a name
        pass
    return _epoch_from_name(path)


def _gap(report: EnergyReport, attack: str, which: str = "gap_energy") -> Interval:
    """The paired gap of an attack's kind (attacks always have one; only ``natural`` has none)."""
    gap = getattr(report[attack], which)
    if gap is None:
        raise ValueError(f"{attack!r} has no {which} in this report (only attacks do); name an attack")
    return gap

@dataclass(frozen=True, eq=False)
class DynamicsReport:
    """One :class:`EnergyReport` per checkpoint, in training order.

    Attributes:
        checkpoints: the checkpoint names (paths or model names).
        epochs: the epoch of each (from the checkpoint's meta or name; else its position, from 1).
        reports: the per-checkpoint reports.
        config: the settings shared by all of them.
    """

    checkpoints: tuple[str, ...]
    epochs: tuple[int, ...]
    reports: tuple[EnergyReport, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def attacks(self) -> list[str]:
        return [k for k in self.reports[0].kind_names if k != "natural"] if self.reports else []

    def gap(self, attack: str) -> np.ndarray:
        """``Delta E(x) = mean(E(x) - E(x*))`` per checkpoint for ``attack``."""
        return np.array([_gap(r, attack).estimate for r in self.reports])

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for ck, ep, r in zip(self.checkpoints, self.epochs, self.reports):
            nat = r["natural"]
            row: dict[str, Any] = {"epoch": ep, "checkpoint": ck, "n": nat.n, "clean_acc": nat.accuracy,
                                   "natural_energy_mean": nat.energy.mean}
            for a in self.attacks:
                k = r[a]
                row[f"{a}_acc"] = k.accuracy
                row[f"{a}_energy_mean"] = k.energy.mean
                gap, gap_joint = _gap(r, a), _gap(r, a, "gap_joint")
                row[f"{a}_gap_energy"] = gap.estimate
                row[f"{a}_gap_energy_low"] = gap.low
                row[f"{a}_gap_energy_high"] = gap.high
                row[f"{a}_gap_joint"] = gap_joint.estimate
            out.append(row)
        return out

    def table(self) -> str:
        """Markdown: per epoch, clean accuracy, mean E(x), and per attack accuracy and ``ΔE(x)`` with its interval."""
        head = ["epoch", "clean acc", "E(x) natural"]
        for a in self.attacks:
            head += [f"{a} acc", f"E(x*) {a}", f"ΔE(x) {a} [CI]"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for ep, r in zip(self.epochs, self.reports):
            cells = [str(ep), f"{r['natural'].accuracy:.3f}", f"{r['natural'].energy.mean:.3f}"]
            for a in self.attacks:
                cells += [f"{r[a].accuracy:.3f}", f"{r[a].energy.mean:.3f}", str(r[a].gap_energy)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\nΔE(x) = E(x) - E(x*), natural minus adversarial, paired over the same images.\n"

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        return rows_to_csv(self.rows(), path)

    def to_dict(self, *, per_sample: bool = False) -> dict[str, Any]:
        return {"format": "ebmlens.dynamics_report/1", "config": dict(self.config),
                "checkpoints": list(self.checkpoints), "epochs": list(self.epochs),
                "reports": [r.to_dict(per_sample=per_sample) for r in self.reports]}

    def to_json(self, path: str | os.PathLike | None = None, *, per_sample: bool = False) -> str:
        return report_json(self.to_dict(per_sample=per_sample), path)

    def plot(self, path: str | os.PathLike) -> Path:
        """``ΔE(x)`` per epoch (with intervals) per attack, and clean/adversarial accuracy."""
        plt = require_matplotlib()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        try:
            ep = np.asarray(self.epochs)
            for a in self.attacks:
                est = self.gap(a)
                lo = np.array([_gap(r, a).low for r in self.reports])
                hi = np.array([_gap(r, a).high for r in self.reports])
                ax1.plot(ep, est, marker="o", label=a)
                ax1.fill_between(ep, lo, hi, alpha=0.2)
                ax2.plot(ep, [r[a].accuracy for r in self.reports], marker="o", label=f"{a} acc")
            ax2.plot(ep, [r["natural"].accuracy for r in self.reports], marker="o", color="k", label="clean acc")
            ax1.axhline(0.0, color="grey", linewidth=0.8)
            ax1.set_xlabel("epoch")
            ax1.set_ylabel("ΔE(x) = E(x) - E(x*)")
            ax1.legend(fontsize=8)
            ax2.set_xlabel("epoch")
            ax2.set_ylabel("accuracy")
            from matplotlib.ticker import MaxNLocator

            for ax in (ax1, ax2):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax2.legend(fontsize=8)
            fig.tight_layout()
            return save_figure(fig, path)
        finally:
            plt.close(fig)


def dynamics(
    checkpoints: str | os.PathLike | Sequence[str | os.PathLike | EnergyModel],
    data: ImageSet | str,
    attacks: Sequence[str] | str = ("pgd",),
    *,
    eps: float,
    threat_model: str = "Linf",
    n: int | None = 500,
    arch: str | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    progress: bool | Callable[[int, int], None] = False,
    **report_kwargs: Any,
) -> DynamicsReport:
    """Run :func:`energy_report` on every checkpoint of a training run, on the same images.

    Args:
        checkpoints: a glob (``"runs/at/epoch_*.pt"``), or a list of paths / ``source:name`` specs /
            :class:`~ebmlens.EnergyModel` objects, in training order.
        data, attacks, eps, threat_model, n: as in :func:`energy_report` (same images for all).
        arch: architecture for checkpoints that do not record it (``ebmlens train`` ones do).
        load_kwargs: more options for :func:`ebmlens.load_model` (``mean``, ``std``, ``trust_checkpoint``...).
        progress: ``True`` for a bar over checkpoints, or a callback ``(done, total)``.
        **report_kwargs: passed to :func:`energy_report` (``steps``, ``batch_size``, ``seed``...).

    Returns:
        A :class:`DynamicsReport`.
    """
    items = resolve_checkpoints(checkpoints)
    data = as_image_data(data)
    from ..models import load_model

    kw = dict(load_kwargs or {})
    if arch is not None:
        kw["arch"] = arch
    names, epochs, reports = [], [], []
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="ckpt", desc="dynamics", dynamic_ncols=True)
    for i, c in enumerate(items):
        if isinstance(c, EnergyModel):
            model, name, ep = c, f"{c.source}:{c.name}", None
        else:
            spec = str(c)
            is_path = Path(spec).exists()
            model = load_model(f"file:{spec}" if is_path else spec, **kw)
            name, ep = spec, (_checkpoint_epoch(spec) if is_path else None)
        reports.append(energy_report(model, data, attacks, geometry=Geometry.for_model(model, threat_model, eps), n=n,
                                     **report_kwargs))
        names.append(name)
        epochs.append(ep if ep is not None else i + 1)
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(i + 1, len(items))
    if bar is not None:
        bar.close()
    cfg = dict(reports[0].config)
    cfg["data"] = reports[0].data
    return DynamicsReport(tuple(names), tuple(epochs), tuple(reports), cfg)
