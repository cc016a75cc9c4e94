"""WEAT: energy-weighted adversarial training (Mirza, Briglia, Beadini, Masi, ECCV 2024).

Each training sample is weighted by its natural input's marginal energy ``E(x)``:

    ``w(x) = 1 / softplus(|E(x)|) = 1 / log(1 + exp|E(x)|)``

detached (a weight, not a path for gradients) and not normalized over the batch
(``w = 1 / log 2 = 1.4427`` at ``E = 0``, about ``1 / |E|`` for large ``|E|``): samples whose
energy is far from 0 in either direction count less. The two losses (TRADES terms,
:mod:`ebmlens.analysis.trades`, weighted per sample):

* WEAT-adv ``= mean_i(w_i CE(f(x*_i), y_i)) + beta * mean_i(w_i KL(p(.|x_i) || p(.|x*_i)))``
* WEAT-nat ``= mean_i(w_i CE(f(x_i),  y_i)) + beta * mean_i(w_i KL(p(.|x_i) || p(.|x*_i)))``

with ``CE(f(x), y) = E(x, y) - E(x)``. In the authors' code (``Adversarial ML/WEAT_loss.py``)
``E(x)`` comes from the same train-mode forward pass of the natural batch that the loss uses.
The training objectives are :func:`ebmlens.train.objectives.weat_adv` / ``weat_nat``.

>>> import torch
>>> round(float(weat_weights(torch.tensor([0.0]))[0]), 4)
1.4427
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .trades import trades_terms_from_logits

__all__ = ["weat_weights", "WeatTerms", "weat_terms_from_logits"]


def weat_weights(energy: torch.Tensor) -> torch.Tensor:
    """WEAT sample weights ``1 / softplus(|E(x)|)`` of marginal energies ``(N,)``; detached, float32.

    ``softplus(|E|) >= log 2 > 0``, so the weights lie in ``(0, 1/log 2]``; they are not normalized.
    """
    if not isinstance(energy, torch.Tensor):
        raise TypeError(f"energy must be a torch.Tensor of marginal energies E(x), got {type(energy).__name__}")
    if not energy.is_floating_point():
        raise TypeError(f"energy must be a float tensor, got dtype {energy.dtype}")
    return 1.0 / F.softplus(energy.detach().float().abs())


@dataclass(frozen=True)
class WeatTerms:
    """Per-sample pieces of the WEAT losses, each ``(N,)``.

    Attributes:
        weights: ``w = 1 / softplus(|E(x)|)`` of the natural inputs (detached).
        energy: ``E(x)`` of the natural inputs (with its graph).
        ce_nat: ``CE(f(x), y) = E(x, y) - E(x)``.
        ce_adv: ``CE(f(x*), y) = E(x*, y) - E(x*)``.
        kl: ``KL(p(.|x) || p(.|x*))`` in energies (see :mod:`ebmlens.analysis.trades`).
    """

    weights: torch.Tensor
    energy: torch.Tensor
    ce_nat: torch.Tensor
    ce_adv: torch.Tensor
    kl: torch.Tensor

    def loss(self, kind: Literal["adv", "nat"] = "adv", beta: float = 6.0) -> torch.Tensor:
        """``mean(w * CE) + beta * mean(w * KL)`` with CE on ``x*`` (``"adv"``) or on ``x`` (``"nat"``)."""
        if kind not in ("adv", "nat"):
            raise ValueError(f"WEAT kind must be 'adv' or 'nat', got {kind!r}")
        ce = self.ce_adv if kind == "adv" else self.ce_nat
        return (self.weights * ce).mean() + beta * (self.weights * self.kl).mean()


def weat_terms_from_logits(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                           energy_for_weights: torch.Tensor | None = None) -> WeatTerms:
    """WEAT pieces from natural logits ``f(x)``, adversarial logits ``f(x*)`` (``(N, K)``) and labels.

    ``energy_for_weights``: the ``E(x)`` the weights come from; default the ``E(x)`` of ``logits``
    (pass another when the loss's forward pass is not the train-mode one the method prescribes).
    """
    nat = trades_terms_from_logits(logits, logits_adv, y)
    adv = trades_terms_from_logits(logits_adv, logits_adv, y)  # ce of x*: E(x*, y) - E(x*)
    e_w = nat.energy if energy_for_weights is None else energy_for_weights
    if e_w.shape != nat.energy.shape:
        raise ValueError(f"energy_for_weights must have shape {tuple(nat.energy.shape)}, got {tuple(e_w.shape)}")
    if nat.ce is None or adv.ce is None:  # pragma: no cover - labels were given, so both have a CE
        raise ValueError("WEAT needs labels y for its cross-entropy terms")
    return WeatTerms(weights=weat_weights(e_w), energy=nat.energy, ce_nat=nat.ce, ce_adv=adv.ce, kl=nat.kl)
