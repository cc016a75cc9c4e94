"""Adversarial-training objectives as pure loss functions.

Each objective is ``objective(model, x, y, attack, ...) -> loss`` (a scalar tensor with a graph to
the model's parameters), where ``model`` is an :class:`~ebmlens.EnergyModel` taking pixels in
[0, 1] and ``attack`` an :class:`AttackConfig`. Adversarial examples are generated with the model
in eval mode (BatchNorm statistics untouched by the attack); the loss is computed in whatever mode
the caller put the model in (the trainer uses train mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..attacks import attack_loss, make_geometry, pgd

__all__ = ["AttackConfig", "pgd_at", "trades", "adversarial_examples", "OBJECTIVES"]


@dataclass(frozen=True)
class AttackConfig:
    """The training attack.

    Attributes:
        threat_model: ``"L2"`` or ``"Linf"``.
        eps: radius in [0, 1] pixel units (L2 0.5 or Linf 8/255 are the usual choices).
        steps: PGD steps.
        step_size: PGD step; ``None`` means ``2.5 * eps / steps`` (Madry et al.'s rule).
        random_start: start from a random point of the ball.
    """

    threat_model: Literal["L2", "Linf"] = "L2"
    eps: float = 0.5
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.threat_model not in ("L2", "Linf"):
            raise ValueError(f"threat_model must be 'L2' or 'Linf', got {self.threat_model!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if int(self.steps) < 1:
            raise ValueError(f"attack steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps


def adversarial_examples(model, x, y, attack: AttackConfig, *, loss="ce", generator=None, x_ref=None) -> torch.Tensor:
    """Untargeted PGD examples for training, made with the model in eval mode (mode restored)."""
    geom = make_geometry(attack.threat_model, attack.eps)
    with model.mode("eval"):
        return pgd(model, x, y, geom, attack.steps, attack.alpha, loss=loss,
                   random_start=attack.random_start, generator=generator, x0=x_ref)


def pgd_at(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, generator=None) -> torch.Tensor:
    """PGD adversarial training (Madry et al., ICLR 2018).

    ``min_theta E_(x,y) [ max_{||d|| <= eps} CE(f(x + d), y) ]`` with the inner max by PGD:
    ``loss = mean_i CE(f(x*_i), y_i)``, ``x* = PGD(x, y)``.
    Defaults (BRIEF): L2 eps 0.5, step 0.1, 10 steps; Linf eps 8/255, step 2/255, 10 steps.
    """
    x_adv = adversarial_examples(model, x, y, attack, generator=generator)
    return F.cross_entropy(model.logits(x_adv).float(), y)


def trades(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, beta: float = 6.0, generator=None) -> torch.Tensor:
    """TRADES (Zhang et al., ICML 2019).

    ``loss = CE(f(x), y) + beta * KL(p(.|x) || p(.|x*))`` where ``x*`` maximizes the KL term
    (KL-PGD from ``x + 0.001 N(0, I)``). Defaults: beta 6, 10 KL-PGD steps.
    The energy form of the same terms is :func:`ebmlens.analysis.trades_energy_terms`.
    """
    if not beta >= 0:
        raise ValueError(f"TRADES beta must be >= 0, got {beta}")
    from .. import rng

    geom = make_geometry(attack.threat_model, attack.eps)
    with model.mode("eval"):
        with torch.no_grad():
            p_nat = F.softmax(model.logits(x).float(), dim=1)
        start = (x + 0.001 * rng.randn(generator, x.shape[0], x.shape[1:], device=x.device)).clamp(0, 1)

        def kl_loss(logits, _y):
            return F.kl_div(F.log_softmax(logits.float(), dim=1), p_nat, reduction="none").sum(1)

        x_adv = pgd(model, start, y, geom, attack.steps, attack.alpha, loss=kl_loss, x0=x)
    logits_nat = model.logits(x).float()
    logits_adv = model.logits(x_adv).float()
    ce = F.cross_entropy(logits_nat, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
    return ce + beta * kl


def standard(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig | None = None, *, generator=None) -> torch.Tensor:
    """Plain cross-entropy on natural images (a non-robust baseline)."""
    return F.cross_entropy(model.logits(x).float(), y)


OBJECTIVES = {
    "pgd-at": pgd_at,
    "trades": trades,
    "standard": standard,
}

_ = attack_loss  # re-exported for users composing their own objectives
