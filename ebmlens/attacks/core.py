"""The projected-gradient core shared by sampling, analysis and training (Madry et al. 2018).

One step, for any :class:`~ebmlens.attacks.Geometry`::

    g = d loss(f(x), y) / d x                     # per-sample loss, input gradient only
    x <- clamp(project(step(x, s * g, size), x0))  # s = +1 untargeted, -1 targeted

Targeting is a sign: an untargeted attack ascends the loss of the true label; a targeted one
descends the loss of the target. ``keep_best`` returns, per sample, the iterate with the best loss
seen (Santurkar et al. 2019's ``use_best``). The two pieces every PGD loop needs,
:func:`loss_and_grad` and :func:`keep_better`, are here so that a loop written out elsewhere (the
TargetedPGD sampling stage) stays the same computation.

>>> default_step_size(0.5, 10)
0.125
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .. import rng
from .._validate import validate_inputs
from .geometry import Geometry

__all__ = ["pgd", "attack_loss", "PGDLoss", "default_step_size", "loss_and_grad", "keep_better"]

PGDLoss = Literal["ce", "joint", "marginal"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_step_size(eps: float, steps: int) -> float:
    """The one default PGD step: ``2.5 * eps / steps`` (Madry et al. 2018), so ``steps`` steps can
    cross the ball and come back."""
    return 2.5 * float(eps) / max(int(steps), 1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: PGDLoss, model=None) -> torch.Tensor:
    """Per-sample loss that PGD ascends (untargeted, y = true label) or descends (targeted, y = target).

    * ``"ce"``: cross-entropy ``-log p(y|x)`` = ``E(x, y) - E(x)``;
    * ``"joint"``: ``E(x, y) = -f(x)[y]``;
    * ``"marginal"``: ``E(x)`` (``y`` unused).

    >>> import torch
    >>> attack_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), "joint").tolist()
    [-2.0]
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


def _loss_fn(loss: PGDLoss | LossFn, model) -> LossFn:
    return loss if callable(loss) else (lambda lg, t: attack_loss(lg, t, loss, model))  # type: ignore[arg-type]


def loss_and_grad(model, x: torch.Tensor, y: torch.Tensor,
                  loss: PGDLoss | LossFn = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss (N,), d sum(loss) / d x (N, C, H, W))`` at ``x``, both detached; gradients are taken
    with respect to the input only (``torch.autograd.grad``), never accumulated into parameters."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lval = _loss_fn(loss, model)(model(xg), y)
        (grad,) = torch.autograd.grad(lval.sum(), xg)
    return lval.detach(), grad


def keep_better(best: tuple[torch.Tensor, torch.Tensor] | None, x: torch.Tensor,
                score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, ``(x, score)`` where ``score`` beats ``best``'s score, else ``best`` (ties keep the
    earlier iterate); ``best=None`` takes ``(x, score)``. Higher score is better.

    >>> import torch
    >>> best = keep_better(None, torch.zeros(2, 1), torch.tensor([1.0, 1.0]))
    >>> x, s = keep_better(best, torch.ones(2, 1), torch.tensor([0.0, 2.0]))
    >>> x.flatten().tolist(), s.tolist()
    ([0.0, 1.0], [1.0, 2.0])
    """
    if best is None:
        return x, score
    better = score > best[1]
    return torch.where(better.view(-1, *([1] * (x.dim() - 1))), x, best[0]), torch.where(better, score, best[1])


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: Geometry,
    steps: int,
    step_size: float,
    *,
    loss: PGDLoss | LossFn = "ce",
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
        step_size: step length in the geometry's norm (> 0); see :func:`default_step_size`.
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
    x, y = validate_inputs(model if hasattr(model, "input_shape") else None, x, y,
                           num_classes=getattr(model, "num_classes", None), scan=False,
                           allow_other_size=getattr(model, "allow_other_size", False))
    if steps < 0:
        raise ValueError(f"pgd steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"pgd step_size must be > 0, got {step_size}")
    sign = -1.0 if targeted else 1.0  # the attacker's score is sign * loss: higher is better
    x0 = (x if x0 is None else x0).detach()
    xa = geometry.random_start(x0, generator) if random_start else x.detach().clone()
    if clamp is not None:
        xa = xa.clamp(*clamp)
    best = None
    for i in range(steps):
        lval, grad = loss_and_grad(model, xa, y, loss)
        if callback is not None:
            callback(i, lval)
        if keep_best:
            best = keep_better(best, xa, sign * lval)
        xa = geometry.project(geometry.step(xa, sign * grad, step_size), x0)
        if clamp is not None:
            xa = xa.clamp(*clamp)
    xa = xa.detach()
    if keep_best and best is not None:
        with torch.no_grad():
            xa, _ = keep_better(best, xa, sign * _loss_fn(loss, model)(model(xa), y).float())
    return xa
