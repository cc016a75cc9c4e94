"""The PGD loop shared by sampling, analysis and training (Madry et al. 2018).

One step, for any :class:`~ebmlens.attacks.Geometry`::

    g = d loss(f(x), y) / d x                     # per-sample loss, input gradient only
    x <- clamp(project(step(x, s * g, size), x0))  # s = +1 untargeted, -1 targeted

Targeting is a sign: an untargeted attack ascends the loss of the true label; a targeted one
descends the loss of the target. ``keep_best`` returns, per sample, the iterate with the best loss
seen (Santurkar et al. 2019's ``use_best``); ``stop_at`` (targeted only) lets each sample leave the
batch once the model's ``p(y | x)`` reaches it. :func:`pgd` is the one PGD loop of ebmlens: the
TargetedPGD sampling stage, the analysis attacks, counterfactuals and the adversarial training
objectives all call it; its gradient pass is :func:`ebmlens.energy.input_grad`.

>>> default_step_size(0.5, 10)
0.125
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .. import rng
from .._validate import validate_inputs
from ..energy import input_grad
from .geometry import Geometry

__all__ = ["pgd", "attack_loss", "PGDLoss", "default_step_size"]

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
    if callable(loss):
        return loss
    if loss not in ("ce", "joint", "marginal"):
        raise ValueError(f"unknown PGD loss {loss!r}; choose 'ce', 'joint', 'marginal' or a callable "
                         "(logits, y) -> (N,)")
    return lambda lg, t: attack_loss(lg, t, loss, model)


def _keep_better(best: tuple[torch.Tensor, torch.Tensor] | None, x: torch.Tensor,
                 score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, ``(x, score)`` where ``score`` beats ``best``'s score, else ``best`` (ties keep the
    earlier iterate); ``best=None`` takes ``(x, score)``. Higher score is better.

    >>> import torch
    >>> best = _keep_better(None, torch.zeros(2, 1), torch.tensor([1.0, 1.0]))
    >>> x, s = _keep_better(best, torch.ones(2, 1), torch.tensor([0.0, 2.0]))
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
    stop_at: float | None = None,
    callback: Callable[..., object] | None = None,
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
        stop_at: targeted only: a probability ``tau`` in (0, 1); a sample stops (keeps its iterate)
            once the model's ``p(y | x) >= tau`` on the pass that computes its gradient, and later
            passes run on the rows still moving only (one host sync per step). Not with ``keep_best``.
        callback: ``callback(step, loss, logits=logits)`` once per step, with the ``(N,)`` loss and
            ``(N, K)`` logits (detached) of that step's gradient pass at the iterate ``x_step``
            (step 0: the start); the protocol of :class:`ebmlens.sampling.StepCallback`.
            Under ``stop_at`` a stopped row reports the loss and logits of its last pass.

    Returns:
        The adversarial images, detached, same shape/dtype/device as ``x``.
    """
    if y is None:
        raise TypeError("pgd needs y: (N,) true labels (untargeted) or target classes (targeted)")
    x, labels = validate_inputs(model if hasattr(model, "input_shape") else None, x, y,
                                num_classes=getattr(model, "num_classes", None), scan=False,
                                allow_other_size=getattr(model, "allow_other_size", False))
    assert labels is not None  # validate_inputs returns labels whenever it is given some
    y = labels
    if steps < 0:
        raise ValueError(f"pgd steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"pgd step_size must be > 0, got {step_size}")
    if stop_at is not None:
        if not targeted:
            raise ValueError("pgd stop_at works for targeted runs only (it stops a sample at p(target | x) >= "
                             "stop_at); pass targeted=True or stop_at=None")
        if not (isinstance(stop_at, (int, float)) and 0 < stop_at < 1):
            raise ValueError(f"pgd stop_at must be a probability in (0, 1) or None, got {stop_at!r}")
        if keep_best:
            raise ValueError("pgd: stop_at and keep_best do not combine (a stopped sample keeps its last iterate); "
                             "choose one")
    value = _loss_fn(loss, model)
    sign = -1.0 if targeted else 1.0  # the attacker's score is sign * loss: higher is better
    x0 = (x if x0 is None else x0).detach()
    xa = geometry.random_start(x0, generator) if random_start else x.detach().clone()
    if clamp is not None:
        xa = xa.clamp(*clamp)
    best = None
    rows = None if stop_at is None else torch.arange(xa.shape[0], device=xa.device)  # the rows still moving
    seen = None  # (loss (N,), logits (N, K)) of every row's last pass, for the callback
    for i in range(steps):
        if rows is None or rows.numel():
            xs, ys, cs = (xa, y, x0) if rows is None else (xa[rows], y[rows], x0[rows])
            lval, grad, logits = input_grad(model, xs, value, ys)  # (n,), (n, C, H, W), (n, K)
            seen = _merge(seen, rows, lval, logits)
            if rows is not None and stop_at is not None:  # the rows whose p(y | x) reached stop_at leave
                go = logits.float().softmax(1).gather(1, ys.view(-1, 1)).squeeze(1) < stop_at
                xs, grad, cs, rows = xs[go], grad[go], cs[go], rows[go]
            if keep_best:
                best = _keep_better(best, xa, sign * lval)
            xs = geometry.project(geometry.step(xs, sign * grad, step_size), cs)
            if clamp is not None:
                xs = xs.clamp(*clamp)
            xa = xs if rows is None else xa.index_copy(0, rows, xs)
        if callback is not None and seen is not None:
            _report(callback, i, *seen)
    xa = xa.detach()
    if keep_best and best is not None:  # the last iterate has not been scored yet: one more forward pass
        with torch.no_grad():
            xa, _ = _keep_better(best, xa, sign * value(model(xa), y).float())
    return xa


def _report(callback: Callable[..., object], step: int, loss: torch.Tensor, logits: torch.Tensor) -> None:
    try:
        callback(step, loss, logits=logits)
    except TypeError as e:
        if "unexpected keyword argument 'logits'" not in str(e):
            raise
        raise TypeError(f"pgd calls callback(step, loss, logits=logits); {callback!r} takes no logits: add a "
                        "`logits` parameter (the two-argument callback(step, loss) form is gone)") from e


def _merge(seen: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor | None, lval: torch.Tensor,
           logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's loss and logits of its last pass: ``rows`` (all rows when ``None``) get this pass's
    values, in new tensors (a callback that keeps what it was handed keeps that step's values)."""
    if seen is None or rows is None:
        return lval, logits
    return seen[0].index_put((rows,), lval), seen[1].index_put((rows,), logits.to(seen[1].dtype))
