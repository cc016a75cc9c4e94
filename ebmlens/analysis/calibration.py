"""Calibration of a classifier on natural and adversarial inputs (Guo et al. 2017; JEM Sec. 5.3).

With confidence ``c_i = max_y softmax(f(x_i))[y]`` and ``correct_i = [argmax f(x_i) = y_i]``, split
the ``N`` predictions into ``B`` bins and take

    ECE = sum_b (n_b / N) |acc_b - conf_b|,

``acc_b`` and ``conf_b`` the mean correctness and confidence in bin ``b``. Equal-width bins are
``((b-1)/B, b/B]`` (confidence 0 goes to the first); equal-mass bins split the predictions sorted by
confidence into ``B`` groups of (nearly) equal size, equal confidences kept in one bin.
:func:`calibration_report` measures both on the natural images and, with ``attack=``, on adversarial
versions of the same images made by a registered attack (:func:`ebmlens.attacks.get_attack`), and draws
the reliability diagrams.

>>> import numpy as np
>>> round(expected_calibration_error(np.full(10, 0.9), np.r_[np.ones(6), np.zeros(4)]), 6)
0.3
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import _dist, rng
from .._io import jsonable, save_figure
from .._measure import few_samples_warning, map_batches
from ..attacks import Geometry, L2Ball, LinfBall, choose_targets
from ..data import ImageSet
from ..energy import EnergyModel
from .energies import as_energy_model, build_attacks, labeled_image_data, resolve_geometry
from .report import report_json, require_matplotlib

__all__ = ["expected_calibration_error", "reliability_bins", "calibration_report", "CalibrationReport",
           "KindCalibration", "model_geometry"]


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = 15, *,
                     equal_mass: bool = False) -> dict[str, np.ndarray]:
    """Per bin: ``count``, mean ``confidence``, ``accuracy`` (NaN for empty bins) and ``edges``."""
    c = np.asarray(conf, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=np.float64).ravel()
    if c.shape != ok.shape or c.size == 0:
        raise ValueError(f"need as many confidences as correctness flags (> 0), got {c.size} and {ok.size}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if not (np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1):
        raise ValueError("confidences must be probabilities in [0, 1]")
    if equal_mass:
        order = np.argsort(c, kind="stable")
        by_rank = np.arange(c.size) * bins // c.size  # bin of the r-th smallest prediction
        _, first, inverse = np.unique(c[order], return_index=True, return_inverse=True)
        which = np.empty(c.size, dtype=np.int64)
        which[order] = by_rank[first][inverse.ravel()]  # equal confidences share the bin of the first
        edges = np.array([0.0] + [float(c[which == b].max()) if (which == b).any() else np.nan for b in range(bins)])
    else:
        which = np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)
        edges = np.linspace(0.0, 1.0, bins + 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=c, minlength=bins) / count
        accuracy = np.bincount(which, weights=ok, minlength=bins) / count
    return {"count": count, "confidence": confidence, "accuracy": accuracy, "edges": edges}


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15, *,
                               equal_mass: bool = False) -> float:
    """``sum_b (n_b / N) |acc_b - conf_b|`` over equal-width (or equal-mass) bins."""
    r = reliability_bins(conf, correct, bins, equal_mass=equal_mass)
    full = r["count"] > 0
    gap = np.abs(r["accuracy"][full] - r["confidence"][full])
    return float(np.sum(r["count"][full] * gap) / r["count"].sum())


@dataclass(frozen=True)
class KindCalibration:
    """Calibration of one input kind (``"natural"`` or the attack's name).

    Attributes: ``n``, ``accuracy``, mean ``confidence``, ``ece`` (equal-width), ``ece_mass``
    (equal-mass), and the equal-width reliability ``bins`` (count, confidence, accuracy per bin).
    """

    kind: str
    n: int
    accuracy: float
    confidence: float
    ece: float
    ece_mass: float
    bins: Mapping[str, list] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CalibrationReport:
    """Calibration on natural images and (optionally) on their adversarial versions."""

    kinds: tuple[KindCalibration, ...]
    model: Mapping[str, Any]
    data: Mapping[str, Any]
    config: Mapping[str, Any]
    warnings: tuple[str, ...] = ()  # fewer than 20 images: the numbers are not reliable

    def __getitem__(self, kind: str) -> KindCalibration:
        for k in self.kinds:
            if k.kind == kind:
                return k
        raise KeyError(f"no input kind {kind!r}; have {[k.kind for k in self.kinds]}")

    def table(self) -> str:
        b = self.config.get("bins")
        lines = [f"| input | n | accuracy | mean confidence | ECE ({b} equal-width bins) | ECE (equal-mass) |",
                 "|---|---|---|---|---|---|"]
        for k in self.kinds:
            lines.append(f"| {k.kind} | {k.n} | {k.accuracy:.3f} | {k.confidence:.3f} | {k.ece:.4f} "
                         f"| {k.ece_mass:.4f} |")
        c, m = self.config, self.model
        foot = f"\n{m.get('source')}:{m.get('name')} on {self.data.get('n')} images of {self.data.get('source')}"
        if c.get("attack"):
            foot += f"; attack {c['attack']['name']} ({c['attack']['threat_model']}, eps {c['attack']['eps']:.4g})"
        return "\n".join(lines) + "\n" + foot + ".\n" + "".join(f"warning: {w}\n" for w in self.warnings)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        d = {"format": "ebmlens.calibration_report/1", "model": dict(self.model), "data": dict(self.data),
             "config": jsonable(dict(self.config)),
             "kinds": [jsonable(asdict(k), finite_floats=False) for k in self.kinds]}
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return report_json(d, path)

    def plot(self, path: str | os.PathLike) -> Path:
        """Reliability diagrams (accuracy per confidence bin against the diagonal), one per kind."""
        plt = require_matplotlib()
        fig, axes = plt.subplots(1, len(self.kinds), figsize=(4 * len(self.kinds), 4), squeeze=False)
        try:
            for ax, k in zip(axes[0], self.kinds):
                nb = len(k.bins["count"])
                centres = (np.arange(nb) + 0.5) / nb
                acc = np.nan_to_num(np.asarray(k.bins["accuracy"], dtype=np.float64))
                ax.bar(centres, acc, width=1.0 / nb, edgecolor="black", linewidth=0.5, label="accuracy")
                ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.set_xlabel("confidence")
                ax.set_ylabel("accuracy")
                ax.set_title(f"{k.kind}: acc {k.accuracy:.3f}, ECE {k.ece:.3f}", fontsize=9)
                ax.legend(fontsize=7, loc="upper left")
            fig.tight_layout()
            return save_figure(fig, path)
        finally:
            plt.close(fig)


def model_geometry(model: EnergyModel, threat_model: str | None, eps: float | None) -> tuple[str, float]:
    """Deprecated: ``(threat_model, eps)`` of :meth:`ebmlens.attacks.Geometry.for_model` (the one resolver)."""
    g = Geometry.for_model(model, threat_model, eps)
    return g.threat_model, float(g.eps)


def calibration_report(
    model: EnergyModel | str,
    data: ImageSet | str,
    bins: int = 15,
    attack: str | None = None,
    *,
    geometry: L2Ball | LinfBall | None = None,
    threat_model: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    n: int | None = 1000,
    batch_size: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> CalibrationReport:
    """ECE (equal-width and equal-mass) and reliability bins, natural and under ``attack``.

    Under ``torchrun`` each rank takes every K-th batch and rank 0 assembles the report (equal to one
    process's; ``config["world_size"] = K``).

    Args:
        model, data: an EnergyModel (or spec) and an ImageData (or spec, test split by default).
        bins: number of bins ``B``.
        attack: a registry name (``"pgd"``, ``"apgd-ce"``, ...) or ``None`` for natural images only;
            targeted attacks get random targets from per-image streams seeded by ``seed``.
        geometry: the attack's threat model and radius (default: :meth:`Geometry.for_model`, the model's own).
        threat_model, eps: deprecated (one release): ``geometry=Geometry.for_model(model, threat_model, eps)``.
        steps: the attack's steps (default: the attack's own).
        n: images spread evenly over ``data`` (``None``: all).
        progress: ``True`` for a tqdm bar, or a callback ``(done, total)``.
    """
    model = as_energy_model(model, device)
    data = labeled_image_data(data, "calibration", model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    atk = None
    if attack is not None:
        geom = resolve_geometry(model, geometry, threat_model, eps, "calibration_report")
        (atk,) = build_attacks([attack], geometry=geom, steps=steps)
    idx = np.arange(len(data)) if n is None or n >= len(data) else data.strided(n)
    dev = next(model.parameters()).device if device is None else torch.device(device)
    kinds = ["natural"] + ([atk.name] if atk else [])

    def measure(x: torch.Tensor, y: torch.Tensor, b: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            logits = model(x)
        xs = {"natural": (x, logits)}
        if atk is not None:
            tgt = None
            if atk.needs_target:
                tgt = choose_targets(logits, y, "random", rng.SampleStreams(rng.sample_seed(seed, 0), b.tolist()))
            xa = atk(model, x, y, target=tgt, generator=rng.SampleStreams(rng.sample_seed(seed, 1), b.tolist()))
            with torch.no_grad():
                xs[atk.name] = (xa, model(xa))
        out = {}
        for k, (_, lg) in xs.items():
            p = torch.softmax(lg.float(), 1)
            c, pred = p.max(1)
            out[f"{k}\tconf"] = c.cpu().numpy()
            out[f"{k}\tcorrect"] = (pred == y).cpu().numpy()
        return out

    d = _dist.init_if_needed(dev)
    with model.mode("eval"):
        merged = map_batches(model, data, measure, indices=idx, batch_size=batch_size, progress=progress or False,
                             device=dev, desc="calibration")
    config = {"bins": bins, "n": n, "batch_size": batch_size, "seed": seed, "device": str(dev),
              "attack": atk.describe() if atk else None}
    if d.world > 1:
        config["world_size"] = d.world
    info = {"source": data.source, "fingerprint": data.fingerprint, "n": int(idx.size), "size": len(data)}
    return _dist.run_on_rank0(_assemble, merged, kinds, bins, model.describe(), info, config)


def _assemble(merged: dict[str, np.ndarray], kinds: list[str], bins: int, model_info: dict, info: dict,
              config: dict) -> CalibrationReport:
    out = []
    for k in kinds:
        c, ok = merged[f"{k}\tconf"], merged[f"{k}\tcorrect"].astype(np.float64)
        r = reliability_bins(c, ok, bins)
        out.append(KindCalibration(k, int(c.size), float(ok.mean()), float(c.mean()),
                                   expected_calibration_error(c, ok, bins),
                                   expected_calibration_error(c, ok, bins, equal_mass=True),
                                   {key: np.asarray(v).tolist() for key, v in r.items()}))
    warn = few_samples_warning({k.kind: k.n for k in out}, "calibration")
    return CalibrationReport(tuple(out), model_info, info, config, tuple(warn))
