"""Threat-model geometries and the projected-gradient core shared by sampling, analysis and training.

A geometry owns the shape of a step (Madry et al. 2018; the MadryLab ``attack_steps`` idea):

* ``random_start(x0, generator)`` - a random point of the ball around ``x0``;
* ``step(x, grad, size)``        - move *up* ``grad`` by ``size`` in the geometry's norm
  (L2: ``x + size * g / ||g||_2``; Linf: ``x + size * sign(g)``; Unconstrained: as L2, no ball);
* ``project(x, x0)``              - back onto ``{x : ||x - x0|| <= eps}``.

:func:`pgd` is the one loop over them. Targeting is a sign: an untargeted attack ascends the loss
of the true label; a targeted one descends the loss of the target. Images stay in [0, 1].

>>> import torch
>>> ball = L2Ball(eps=1.0)
>>> x0 = torch.zeros(2, 3, 4, 4)
>>> x = ball.project(x0 + 5.0, x0)
>>> bool(torch.allclose(x.flatten(1).norm(dim=1), torch.ones(2)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from . import rng

__all__ = [
    "Geometry", "L2Ball", "LinfBall", "Unconstrained", "make_geometry", "pgd", "attack_loss", "PGDLoss",
]

PGDLoss = Literal["ce", "joint", "marginal"]


@runtime_checkable
class Geometry(Protocol):
    """How a threat model steps and projects."""

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor: ...

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor: ...


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _check_eps(name: str, eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"{name} expects eps > 0, got {eps!r}")


@dataclass(frozen=True)
class L2Ball:
    """``{x : ||x - x0||_2 <= eps}`` (per image, over all pixels)."""

    eps: float

    def __post_init__(self) -> None:
        _check_eps("L2Ball", self.eps)

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        n = x0.shape[0]
        d = _l2_normalize(rng.randn(generator, n, x0.shape[1:], device=x0.device, dtype=x0.dtype))
        r = rng.rand(generator, n, (), device=x0.device, dtype=x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return x0 + self.eps * r * d

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * _l2_normalize(grad)

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        delta = x - x0
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = torch.clamp(self.eps / norm, max=1.0).view(-1, *([1] * (x.dim() - 1)))
        return x0 + delta * factor


@dataclass(frozen=True)
class LinfBall:
    """``{x : max |x - x0| <= eps}``."""

    eps: float

    def __post_init__(self) -> None:
        _check_eps("LinfBall", self.eps)

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        u = rng.rand(generator, x0.shape[0], x0.shape[1:], device=x0.device, dtype=x0.dtype)
        return x0 + self.eps * (2 * u - 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * grad.sign()

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return torch.max(torch.min(x, x0 + self.eps), x0 - self.eps)


@dataclass(frozen=True)
class Unconstrained:
    """No ball: normalized L2 steps (as DAT's sampler), projection is the identity."""

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        return x0.clone()

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * _l2_normalize(grad)

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x


def make_geometry(threat_model: str, eps: float | None) -> Geometry:
    """``"L2"``/``"Linf"``/``"none"`` and an eps -> a geometry (case-insensitive)."""
    tm = str(threat_model).lower()
    if tm == "l2":
        return L2Ball(float(eps))  # type: ignore[arg-type]
    if tm in ("linf", "l_inf", "inf"):
        return LinfBall(float(eps))  # type: ignore[arg-type]
    if tm in ("none", "unconstrained"):
        return Unconstrained()
    raise ValueError(f"unknown threat model {threat_model!r}; choose 'L2', 'Linf' or 'none'")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: PGDLoss, model=None) -> torch.Tensor:
    """Per-sample loss that PGD ascends (untargeted, y = true label) or descends (targeted, y = target).

    * ``"ce"``: cross-entropy ``-log p(y|x)`` = ``E(x, y) - E(x)``;
    * ``"joint"``: ``E(x, y) = -f(x)[y]``;
    * ``"marginal"``: ``E(x)`` (``y`` unused).
    """
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "joint":
        return -logits.gather(1, y.view(-1, 1)).squeeze(1)
    if loss == "marginal":
        t = getattr(model, "temperature", 1.0)
        return -t * torch.logsumexp(logits / t, dim=1)
    raise ValueError(f"unknown PGD loss {loss!r}; choose 'ce', 'joint' or 'marginal'")


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: Geometry,
    steps: int,
    step_size: float,
    *,
    loss: PGDLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "ce",
    targeted: bool = False,
    random_start: bool = False,
    keep_best: bool = False,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: rng.GeneratorLike = None,
    x0: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Projected gradient descent/ascent on ``model``'s loss (Madry et al., 2018).

    Each step: ``g = d loss / d x``; ``x <- project(step(x, s * g), x0)``; clamp to ``clamp``;
    with ``s = -1`` for targeted attacks (descend to the target) and ``+1`` otherwise.

    Args:
        model: maps [0, 1] images to logits (an :class:`~ebmlens.EnergyModel` or any callable).
        x: ``(N, C, H, W)`` images; the ball is centred on ``x0`` (default: ``x``).
        y: ``(N,)`` true labels (untargeted) or targets (targeted).
        geometry: :class:`L2Ball`, :class:`LinfBall` or :class:`Unconstrained`.
        steps: number of gradient steps (>= 0).
        step_size: step length in the geometry's norm (> 0).
        loss: ``"ce"``, ``"joint"``, ``"marginal"`` (see :func:`attack_loss`) or a callable
            ``(logits, y) -> (N,)``.
        targeted: descend instead of ascend.
        random_start: start from ``geometry.random_start(x0)`` (drawn from ``generator``).
        keep_best: return, per sample, the iterate with the best loss seen (Santurkar et al.);
            costs one extra forward pass at the end.
        clamp: pixel range kept after every step, or ``None``.
        callback: ``callback(step, per_sample_loss)`` after each gradient evaluation.

    Returns:
        The adversarial images, detached, same shape/dtype/device as ``x``.
    """
    if steps < 0:
        raise ValueError(f"pgd steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"pgd step_size must be > 0, got {step_size}")
    loss_fn = loss if callable(loss) else (lambda lg, t: attack_loss(lg, t, loss, model))  # type: ignore[arg-type]
    sign = -1.0 if targeted else 1.0
    x0 = (x if x0 is None else x0).detach()
    xa = geometry.random_start(x0, generator) if random_start else x.detach().clone()
    if clamp is not None:
        xa = xa.clamp(*clamp)
    best_x = xa.clone() if keep_best else None
    best_l = None
    for i in range(steps):
        with torch.enable_grad():
            xg = xa.detach().requires_grad_(True)
            lval = loss_fn(model(xg), y)
            (grad,) = torch.autograd.grad(lval.sum(), xg)
        lval = lval.detach()
        if callback is not None:
            callback(i, lval)
        if keep_best:
            score = sign * lval  # higher is better for the attacker
            better = score > best_l if best_l is not None else torch.ones_like(score, dtype=torch.bool)
            best_l = torch.where(better, score, best_l) if best_l is not None else score
            best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xa, best_x)
        xa = geometry.project(geometry.step(xa, sign * grad, step_size), x0)
        if clamp is not None:
            xa = xa.clamp(*clamp)
    xa = xa.detach()
    if keep_best and steps > 0:
        with torch.no_grad():
            score = sign * loss_fn(model(xa), y).float()
        better = score > best_l
        xa = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xa, best_x)
    return xa
