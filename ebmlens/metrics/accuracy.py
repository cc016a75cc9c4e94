"""Clean and robust accuracy: the numbers of a model card, of ``ebmlens accuracy`` and of the
trainer's per-epoch evaluation, all from :func:`robust_accuracy`.

For images ``x_i`` with labels ``y_i`` (``i`` in the chosen indices) and an untargeted attack ``A``:

* ``clean_acc  = mean_i [argmax f(x_i) = y_i]``
* ``robust_acc = mean_i [argmax f(x_i) = y_i and argmax f(A(x_i, y_i)) = y_i]``

An image the model already gets wrong counts as broken (the attack need not succeed on it), so
``robust_acc <= clean_acc`` always.

>>> import torch, ebmlens
>>> from ebmlens.data import ImageData
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2, bias=False))
>>> with torch.no_grad():
...     _ = net[1].weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))   # logit margin 2 (x_0 - 0.5)
>>> model = ebmlens.EnergyModel(net, num_classes=2, input_shape=(3, 1, 1), mean=(0.5,), std=(1.0,))
>>> px = np.array([0, 60, 140, 255], np.uint8)                              # x_0 = 0, .24, .55, 1
>>> data = ImageData(np.stack([px, px, px], 1).reshape(4, 1, 1, 3), np.array([1, 1, 0, 0]), ["a", "b"], "toy")
>>> attack = ebmlens.attacks.get_attack("pgd", threat_model="Linf", eps=0.1, steps=5)
>>> r = robust_accuracy(model, data, attack)
>>> r.clean_acc, r.robust_acc     # only x_0 = .55 lies within 0.1 of the boundary x_0 = 0.5
(1.0, 0.75)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import rng
from .._measure import map_batches
from ..attacks import Attack, default_step_size
from ..data import ImageSet, load_data, require_labels
from ..energy import EnergyModel

__all__ = ["robust_accuracy", "RobustAccuracy"]


@dataclass(frozen=True)
class RobustAccuracy:
    """What :func:`robust_accuracy` measured: ``n`` images, two fractions, and the attack used."""

    n: int
    clean_acc: float
    robust_acc: float
    attack: Attack

    def to_dict(self) -> dict:
        """The record written by ``ebmlens accuracy --out`` and kept per epoch by the trainer.

        Our PGD: ``attack`` ``"pgd-L2"``, ``eps``, ``steps``, ``step_size``, ``random_start``;
        torchattacks: ``attack`` ``"apgd-ce-L2 (torchattacks)"``, ``eps``, ``steps``, ``restarts``, ``seed``.
        """
        a, opts = self.attack, dict(self.attack.options)
        name = f"{a.name}-{a.threat_model}" + ("" if a.spec.backend == "ebmlens" else f" ({a.spec.backend})")
        d = {"n": self.n, "clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
             "attack": name, "eps": a.eps, "steps": opts.get("steps")}
        if a.spec.backend == "ebmlens":
            d.update(step_size=opts.get("step_size") or default_step_size(a.eps, int(opts["steps"])),
                     random_start=bool(opts.get("random_start", False)))
        else:
            d.update(restarts=int(opts.get("n_restarts", 1)), seed=opts.get("seed"))
        return d


def robust_accuracy(model: EnergyModel | str, data: ImageSet | str, attack: Attack, *,
                    indices: Sequence[int] | np.ndarray | None = None, batch_size: int = 250, device=None,
                    autocast: torch.dtype | None = None, generator: rng.GeneratorLike = None) -> RobustAccuracy:
    """Clean and robust accuracy of ``model`` on ``data`` under an untargeted ``attack``.

    Args:
        model: an :class:`~ebmlens.EnergyModel` or a model spec (:func:`ebmlens.models.resolve_model`).
        data: an :class:`~ebmlens.data.ImageData` or a data spec (test split unless ``@train``).
        attack: from :func:`ebmlens.attacks.get_attack`: ``"pgd"`` (ours: deterministic without a
            random start) or a torchattacks entry such as ``"apgd-ce"`` (seeded by its ``seed`` option).
        indices: the images to use, in order (default: all).
        batch_size: images per batch; device: where the batches go (default: the model's device).
        autocast: run forward passes under ``torch.autocast`` in this dtype (``None``: float32).
        generator: handed to the attack for each batch (random starts, torchattacks' seed).

    Returns:
        :class:`RobustAccuracy` (``.to_dict()`` is the ``ebmlens accuracy`` record).
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be an ebmlens.attacks.Attack (get_attack('pgd', threat_model='L2', eps=0.5)), "
                        f"got {type(attack).__name__}")
    if attack.needs_target or attack.targeted:
        raise ValueError(f"robust accuracy needs an untargeted attack, got {attack.name!r}; use 'pgd' or 'apgd-ce'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from ..models import resolve_model

    model = resolve_model(model)
    data = require_labels(load_data(data, default_split="test", preprocess=getattr(model, "preprocess", None)),
                          "robust_accuracy", model)
    if not isinstance(data, ImageSet):  # pragma: no cover - require_labels returns an ImageSet
        raise TypeError(f"robust_accuracy: require_labels gave {type(data).__name__}, not an ImageSet")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    idx = np.arange(len(data)) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        raise ValueError(f"robust accuracy needs at least one image; {data.source} gave none for these indices")
    amp = contextlib.nullcontext() if autocast is None else torch.autocast(device_type=device.type, dtype=autocast)

    def hits(xb: torch.Tensor, yb: torch.Tensor, _idx: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        xa = attack(model, xb, yb, generator=generator)
        with torch.no_grad():
            rob = model(xa).argmax(1) == yb
        return {"clean": ok, "robust": ok & rob}

    with model.mode("eval"), amp:  # every process measures all images (the trainer calls this on each rank)
        got = map_batches(model, data, hits, indices=idx, batch_size=batch_size, device=device, shard=False,
                          desc="accuracy")
    if got is None:  # pragma: no cover - shard=False: every process gets the result
        raise RuntimeError("map_batches returned nothing without sharding")
    clean, robust = int(got["clean"].sum()), int(got["robust"].sum())
    return RobustAccuracy(len(idx), clean / len(idx), robust / len(idx), attack)
