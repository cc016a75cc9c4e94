"""Counterfactual explanations: a real image of class ``a`` moved toward class ``b`` by the
classifier's own gradients, inside a small ball (Santurkar et al. 2019; DAT, Mirza et al. 2024).

For each image ``x`` (label ``a``) and target ``b != a``, targeted PGD (:func:`ebmlens.attacks.pgd`,
the project's one loop) descends the cross-entropy ``-log p(b | x')`` inside ``||x' - x|| <= eps``
(L2 or Linf; default: the model's own threat model, else L2) and records, at every iterate ``x_k``
(``k = 0 .. steps``), the energies ``E(x_k)``, ``E(x_k, b)`` and the prediction. The *flip step* is
the first ``k`` with ``argmax f(x_k) = b``; an image whose final iterate is not predicted ``b`` is
"not flipped" (the ball is too small for this model and image).

Targets (``target=``): ``"next"`` = ``(a + 1) mod K``; ``"random"`` = uniform over the other classes
(per-image streams seeded by ``(seed, index)``); ``"least-likely"`` = the lowest natural logit; an
``int`` = that class for every image (images of that class are skipped).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import _dist, rng
from .._io import atomic_write_bytes, jsonable
from .._measure import map_batches
from ..attacks import Geometry, L2Ball, LinfBall, choose_targets, default_step_size, pgd
from ..data import ImageSet
from ..energy import EnergyModel
from .energies import as_energy_model, labeled_image_data, resolve_geometry
from .report import report_json

__all__ = ["counterfactuals", "Counterfactuals", "Target"]

Target = Union[str, int]

#: The default radius of a counterfactual move (L2, [0, 1] pixels): larger than an attack's.
DEFAULT_EPS = 2.0


@dataclass(frozen=True, eq=False)
class Counterfactuals:
    """Originals, counterfactuals and the path of each move.

    Attributes:
        originals, counterfactuals: ``(n, C, H, W)`` float in [0, 1] (CPU).
        indices, labels, targets, pred: ``(n,)`` dataset indices, true labels, targets, final predictions.
        flipped: ``(n,)`` bool, the final prediction is the target.
        flip_step: ``(n,)`` first iterate predicted as the target, ``-1`` when never.
        l2, linf: ``(n,)`` distances ``||x_cf - x||``.
        energy, joint_target: ``(n, steps + 1)`` ``E(x_k)`` and ``E(x_k, b)`` along the path.
        model, data, config: provenance and settings.
    """

    originals: torch.Tensor
    counterfactuals: torch.Tensor
    indices: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    pred: np.ndarray
    flipped: np.ndarray
    flip_step: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    energy: np.ndarray
    joint_target: np.ndarray
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def flip_rate(self) -> float:
        return float(np.mean(self.flipped))

    def rows(self) -> list[dict[str, Any]]:
        names = list(self.config.get("class_names") or [])
        out = []
        for i in range(len(self.indices)):
            a, b = int(self.labels[i]), int(self.targets[i])
            out.append({"index": int(self.indices[i]), "label": a, "target": b,
                        "label_name": names[a] if a < len(names) else str(a),
                        "target_name": names[b] if b < len(names) else str(b),
                        "pred": int(self.pred[i]), "flipped": bool(self.flipped[i]),
                        "status": "flipped" if self.flipped[i] else "not flipped",
                        "flip_step": None if self.flip_step[i] < 0 else int(self.flip_step[i]),
                        "l2": float(self.l2[i]), "linf": float(self.linf[i]),
                        "energy_start": float(self.energy[i, 0]), "energy_end": float(self.energy[i, -1]),
                        "joint_target_start": float(self.joint_target[i, 0]),
                        "joint_target_end": float(self.joint_target[i, -1]),
                        "energy_path": np.round(self.energy[i], 5).tolist(),
                        "joint_target_path": np.round(self.joint_target[i], 5).tolist()})
        return out

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        d = {"format": "ebmlens.counterfactuals/1", "model": dict(self.model), "data": dict(self.data),
             "config": jsonable(dict(self.config)), "flip_rate": self.flip_rate, "images": self.rows()}
        return report_json(d, path)

    def table(self) -> str:
        lines = ["| index | label -> target | status | flip step | L2 | Linf | E(x) start -> end "
                 "| E(x,b) start -> end |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows():
            lines.append(f"| {r['index']} | {r['label_name']} -> {r['target_name']} | {r['status']} | "
                         f"{'-' if r['flip_step'] is None else r['flip_step']} | {r['l2']:.3f} | {r['linf']:.3f} | "
                         f"{r['energy_start']:.2f} -> {r['energy_end']:.2f} | "
                         f"{r['joint_target_start']:.2f} -> {r['joint_target_end']:.2f} |")
        c = self.config
        return "\n".join(lines) + (f"\n\n{int(self.flipped.sum())} of {len(self.flipped)} flipped; "
                                   f"{c.get('threat_model')} eps {c.get('eps'):.4g}, {c.get('steps')} steps.\n")

    def grid(self, path: str | os.PathLike, *, scale: int = 2) -> Path:
        """A PNG: one row per image, ``original | counterfactual | 0.5 + 5 (x_cf - x)`` clamped to [0, 1]."""
        from PIL import Image

        diff = (0.5 + 5.0 * (self.counterfactuals - self.originals)).clamp(0, 1)
        rows = torch.cat([self.originals, self.counterfactuals, diff], dim=3)  # (n, C, H, 3W)
        pad = torch.ones(rows.shape[0], rows.shape[1], 2, rows.shape[3])
        img = torch.cat([torch.cat([r, p], dim=1) for r, p in zip(rows, pad)], dim=1)  # (C, n(H+2), 3W)
        if scale > 1:
            img = F.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        im = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        return atomic_write_bytes(path, buf.getvalue())


def _pick(data: ImageSet, n: int, target: Target) -> np.ndarray:
    pool = np.arange(len(data))
    if isinstance(target, int):
        pool = pool[data.labels != target]
        if pool.size == 0:
            raise ValueError(f"every image is of the target class {target}; choose another target")
    n = min(n, pool.size)
    return pool[np.floor(np.arange(n) * (pool.size / n)).astype(np.int64)]


def counterfactuals(
    model: EnergyModel | str,
    data: ImageSet | str,
    target: Target = "next",
    eps: float | None = 2.0,
    threat_model: str | None = None,
    *,
    geometry: L2Ball | LinfBall | None = None,
    steps: int = 100,
    step_size: float | None = None,
    n: int = 16,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> Counterfactuals:
    """Targeted moves of ``n`` real images toward ``target`` inside an eps-ball.

    Under ``torchrun`` each rank moves every K-th batch and every rank returns rank 0's assembled
    result (equal to one process's).

    Args:
        model, data: an EnergyModel (or spec) and an ImageData (or spec, test split by default).
        target: ``"next"``, ``"random"``, ``"least-likely"`` or a class index (see the module docs).
        eps: the radius in [0, 1] pixels (``None``: the model's own eps, see :meth:`Geometry.for_model`);
            counterfactuals move farther than attacks, hence 2.0 by default.
        threat_model: ``"L2"`` or ``"Linf"`` (``None``: the model's own, else L2).
        geometry: the ball itself, e.g. ``L2Ball(2.0)`` (instead of ``eps`` / ``threat_model``, which are
            deprecated for one release when given explicitly).
        steps, step_size: PGD steps and step length (default :func:`ebmlens.attacks.default_step_size`).
        n: images, spread evenly over the set (over the images not of the target class for an int).
        batch_size, seed, device: memory, the per-image random streams of ``"random"``, placement.
        progress: ``True`` for a tqdm bar, or a callback ``(done, total)``.
    """
    model = as_energy_model(model, device)
    data = labeled_image_data(data, "counterfactual", model)
    if isinstance(target, bool) or not (isinstance(target, int) or target in ("next", "random", "least-likely")):
        raise ValueError(f"unknown target {target!r}; choose 'next', 'random', 'least-likely' or a class index")
    if isinstance(target, int) and not 0 <= target < model.num_classes:
        raise ValueError(f"target class {target} is not in [0, {model.num_classes - 1}]")
    for name, v in (("steps", steps), ("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    own = model.threat_model if model.threat_model in ("L2", "Linf") else None
    if geometry is not None:
        given = None if eps == DEFAULT_EPS else eps
        geometry = resolve_geometry(model, geometry, threat_model, given, "counterfactuals")
    elif threat_model is None and (eps is None or eps == DEFAULT_EPS):  # the defaults: no warning
        geometry = Geometry.for_model(model, own or "L2", eps)
    else:  # the deprecated keywords, with this function's default threat model (the model's own, else L2)
        geometry = resolve_geometry(model, None, threat_model or own or "L2", eps, "counterfactuals")
    tm, e = geometry.threat_model, float(geometry.eps)
    if tm == "Linf" and e >= 1.0:
        raise ValueError(f"a Linf ball of eps {e:g} holds every image in [0, 1]; give a Linf eps such as 8/255 "
                         "or threat_model='L2'")
    size = default_step_size(e, steps) if step_size is None else float(step_size)
    if not size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    idx = _pick(data, n, target)
    dev = next(model.parameters()).device if device is None else torch.device(device)
    with model.mode("eval"):
        def move(x: torch.Tensor, y: torch.Tensor, b: np.ndarray) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                logits0 = model(x)
            if target == "next":
                t = (y + 1) % model.num_classes
            elif isinstance(target, int):
                t = torch.full_like(y, target)
            else:
                streams = rng.SampleStreams(rng.sample_seed(seed, 0), b.tolist())
                t = choose_targets(logits0, y, target, streams)  # type: ignore[arg-type]
            path_e, path_ej, path_pred = [], [], []

            def record(step: int, _loss: torch.Tensor, logits: torch.Tensor) -> None:  # the pass at x_step
                path_e.append(model.energy_from_logits(logits))
                path_ej.append(model.joint_energy_from_logits(logits, t))
                path_pred.append(logits.argmax(1))

            xc = pgd(model, x, t, geometry, steps, size, loss="ce", targeted=True, callback=record)
            with torch.no_grad():
                record(steps, torch.empty(0), model(xc))
            preds = torch.stack(path_pred, 1)  # (b, steps + 1)
            hit = preds == t[:, None]
            first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(t, -1))
            return {"x": x, "xc": xc, "t": t, "pred": preds[:, -1], "flip": first,
                    "e": torch.stack(path_e, 1), "ej": torch.stack(path_ej, 1)}

        d = _dist.init_if_needed(dev)
        cat = map_batches(model, data, move, indices=idx, batch_size=batch_size, progress=progress, device=dev,
                          desc="counterfactuals")
    config = {"target": target, "threat_model": tm, "eps": e, "steps": steps, "step_size": size, "seed": seed,
              "n": int(idx.size), "loss": "ce (targeted)", "class_names": list(model.class_names), "device": str(dev)}
    if d.world > 1:
        config["world_size"] = d.world
    info = {"source": data.source, "fingerprint": data.fingerprint, "size": len(data)}
    return _dist.run_on_rank0(_assemble, cat, idx, data.labels[idx].astype(np.int64), model.describe(), info, config)


def _assemble(cat: dict[str, torch.Tensor], idx: np.ndarray, labels: np.ndarray, model_info: dict, info: dict,
              config: dict) -> Counterfactuals:
    delta = (cat["xc"] - cat["x"]).flatten(1)
    targets = cat["t"].numpy()
    return Counterfactuals(cat["x"], cat["xc"], idx.copy(), labels, targets,
                           cat["pred"].numpy(), cat["pred"].numpy() == targets, cat["flip"].numpy(),
                           delta.norm(dim=1).numpy(), delta.abs().amax(1).numpy(),
                           cat["e"].numpy(), cat["ej"].numpy(), model_info, info, config)
