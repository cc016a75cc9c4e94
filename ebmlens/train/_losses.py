"""The stateless adversarial-training losses as pure functions (re-exported by :mod:`.objectives`).

Each is ``loss_fn(model, x, y, attack, *, generator=None, ...) -> loss`` (a scalar tensor with a graph
to the model's parameters). ``model`` is an :class:`~ebmlens.EnergyModel` taking pixels in [0, 1] and
``attack`` an :class:`AttackConfig`. Adversarial examples are generated with the model in eval mode
(BatchNorm statistics untouched by the attack); the loss is computed in whatever mode the caller put
the model in (the trainer uses train mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .. import rng
from ..analysis.trades import trades_terms_from_logits
from ..analysis.weat import weat_terms_from_logits
from ..attacks import attack_loss, default_step_size, make_geometry, parse_threat_model, pgd  # attack_loss: re-exported

__all__ = ["AttackConfig", "pgd_at", "trades", "trades_examples", "weat_adv", "weat_nat", "standard",
           "adversarial_examples", "attack_loss"]


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
        object.__setattr__(self, "threat_model", parse_threat_model(self.threat_model))
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if int(self.steps) < 1:
            raise ValueError(f"attack steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else default_step_size(self.eps, self.steps)


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
    return F.cross_entropy(model(x_adv).float(), y)


def trades_examples(model, x: torch.Tensor, attack: AttackConfig, *, generator=None) -> torch.Tensor:
    """TRADES' inner maximization: ``x* = argmax_{x' in ball(x)} KL(p(.|x) || p(.|x'))`` by PGD.

    Starts from ``x + 0.001 N(0, I)`` (clamped to [0, 1]), steps in the attack's geometry, eval mode
    (mode restored), ``p(.|x)`` fixed. The same examples serve TRADES and both WEAT objectives.
    """
    geom = make_geometry(attack.threat_model, attack.eps)
    with model.mode("eval"):
        with torch.no_grad():
            logits_nat = model(x)
        start = (x + 0.001 * rng.randn(generator, x.shape[0], x.shape[1:], device=x.device)).clamp(0, 1)

        def kl_loss(logits, _y):
            return trades_terms_from_logits(logits_nat, logits).kl

        return pgd(model, start, logits_nat.argmax(1), geom, attack.steps, attack.alpha, loss=kl_loss, x0=x)


def _check_beta(name: str, beta: float) -> None:
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"{name} beta must be a number >= 0, got {beta!r}")


def trades(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, beta: float = 6.0,
           generator=None) -> torch.Tensor:
    """TRADES (Zhang et al., ICML 2019).

    ``loss = mean_i CE(f(x_i), y_i) + beta * mean_i KL(p(.|x_i) || p(.|x*_i))`` where ``x*``
    maximizes the KL term (:func:`trades_examples`: KL-PGD from ``x + 0.001 N(0, I)``).
    Both terms are computed in energies by :func:`ebmlens.analysis.trades_terms_from_logits`:
    ``CE = E(x, y) - E(x)``, ``KL = sum_k p(k|x) [E(x*, k) - E(x, k)] + E(x) - E(x*)``.
    Defaults (TRADES paper/code): beta 6; Linf eps 8/255, step 2/255, 10 KL-PGD steps.
    """
    _check_beta("TRADES", beta)
    x_adv = trades_examples(model, x, attack, generator=generator)
    return trades_terms_from_logits(model(x), model(x_adv), y).loss(beta)


def _weat(model, x, y, attack, kind: Literal["adv", "nat"], beta: float, generator) -> torch.Tensor:
    _check_beta(f"WEAT-{kind}", beta)
    x_adv = trades_examples(model, x, attack, generator=generator)
    e_w = None
    if not model.classifier.training:  # the weights come from a train-mode forward (BN buffers restored);
        with torch.no_grad(), model.mode("train"):  # before the loss's forwards: restoring the buffers
            e_w = -torch.logsumexp(model(x).float(), dim=1)  # in place would break their graph
    logits = model(x)
    logits_adv = model(x_adv)
    return weat_terms_from_logits(logits, logits_adv, y, energy_for_weights=e_w).loss(kind, beta)


def weat_adv(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, beta: float = 6.0,
             generator=None) -> torch.Tensor:
    """WEAT-adv: energy-weighted TRADES with the adversarial cross-entropy (Mirza et al., ECCV 2024).

    ``loss = mean_i(w_i CE(f(x*_i), y_i)) + beta * mean_i(w_i KL(p(.|x_i) || p(.|x*_i)))``,
    ``w_i = 1 / softplus(|E(x_i)|)`` (:func:`ebmlens.analysis.weat_weights`): marginal energy of the
    natural input in train mode, detached, not normalized. ``x*`` from :func:`trades_examples`.
    If the model is in eval mode, one extra no-grad train-mode forward gives the weights (the
    model's mode and BatchNorm buffers are restored); in train mode (the trainer) the loss's own
    forward of ``x`` gives them, as in the authors' code.

    Defaults: ``beta = 6``: the authors' training script passes 6 to both WEAT losses, although
    the ``WEAT_adv`` function's own default says 7. Their attack: TRADES KL-PGD, Linf eps 8/255,
    step 2/255, 10 steps (``AttackConfig("Linf", 8/255, 10, 2/255)``); ResNet-18, SGD 0.1,
    momentum 0.9, weight decay 5e-4, batch 128, 100 epochs, one-cycle (pct_start 0.25).
    """
    return _weat(model, x, y, attack, "adv", beta, generator)


def weat_nat(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, beta: float = 6.0,
             generator=None) -> torch.Tensor:
    """WEAT-nat: as :func:`weat_adv` with the cross-entropy on the natural input (Mirza et al., ECCV 2024).

    ``loss = mean_i(w_i CE(f(x_i), y_i)) + beta * mean_i(w_i KL(p(.|x_i) || p(.|x*_i)))``,
    ``w_i = 1 / softplus(|E(x_i)|)`` detached. Defaults as :func:`weat_adv` (beta 6, the code's value).
    """
    return _weat(model, x, y, attack, "nat", beta, generator)


def standard(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig | None = None, *,
             generator=None) -> torch.Tensor:
    """Plain cross-entropy on natural images (a non-robust baseline)."""
    return F.cross_entropy(model(x).float(), y)
