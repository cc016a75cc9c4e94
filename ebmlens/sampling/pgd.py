"""Targeted projected gradient descent as a sampling stage (Santurkar et al. 2019; DAT).

Each step descends the loss of the *target* class inside a ball around the stage's input ``x0``:

    g = d loss(f(x), y) / d x;   x <- clamp(project(step(x, -g, step_size), x0), 0, 1)

with the geometry's step (L2: ``-step_size * g / ||g||_2``; Linf: ``-step_size * sign(g)``;
Unconstrained: the L2 step with no ball). Losses: ``"ce"`` cross-entropy to the target
``E(x, y) - E(x)`` (Santurkar et al.), ``"joint"`` ``E(x, y) = -f(x)[y]`` (DAT ascends the target
logit), ``"marginal"`` ``E(x)`` (unconditional). With ``keep_best`` each sample returns its iterate of
lowest loss (Santurkar et al.'s ``use_best``). The loop below is :func:`ebmlens.attacks.pgd` with
``targeted=True`` written out (same pieces, same numbers): analysis and training call that core.

>>> import torch
>>> from ebmlens.attacks import L2Ball
>>> stage = TargetedPGD(L2Ball(0.5), steps=3, step_size=0.2)
>>> stage.geometry
L2Ball(eps=0.5)
>>> model = lambda x: 10 * x.flatten(1)[:, :3]  # logits: the first three pixels
>>> x = torch.full((2, 3, 2, 2), 0.5)
>>> out = stage(model, x, torch.tensor([0, 2]))
>>> out.flatten(1)[:, :3].argmax(1).tolist(), bool(((out - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
([0, 2], True)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .. import rng
from ..attacks import Geometry, attack_loss
from ..attacks.core import keep_better, loss_and_grad

if TYPE_CHECKING:
    from .pipeline import StepCallback

__all__ = ["TargetedPGD"]


@dataclass(frozen=True)
class TargetedPGD:
    """Targeted PGD toward class ``y``.

    Args:
        geometry: ``L2Ball(eps)``, ``LinfBall(eps)`` or ``Unconstrained()``; the ball is centred on
            the stage's input.
        steps: gradient steps (>= 0; one forward + backward each).
        step_size: step length in the geometry's norm, pixels in [0, 1].
        loss: ``"ce"`` | ``"joint"`` | ``"marginal"`` (see module doc).
        random_start: start from a random point of the ball (drawn from ``generator``).
        keep_best: return each sample's iterate with the lowest loss (Santurkar et al.'s
            ``use_best``; one extra forward pass).
        clamp: pixel range kept after every step (``None``: none).

    Shapes: ``x (N, C, H, W)``, ``y (N,)`` -> ``(N, C, H, W)``.
    """

    geometry: Geometry
    steps: int
    step_size: float
    loss: Literal["ce", "joint", "marginal"] = "ce"
    random_start: bool = False
    keep_best: bool = False
    clamp: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not all(hasattr(self.geometry, a) for a in ("random_start", "step", "project")):
            raise TypeError(f"TargetedPGD geometry must be L2Ball(eps), LinfBall(eps) or Unconstrained(), got "
                            f"{self.geometry!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"TargetedPGD steps must be an int >= 0, got {self.steps!r}")
        if not self.step_size > 0:
            raise ValueError(f"TargetedPGD step_size must be > 0, got {self.step_size!r}")
        if self.loss not in ("ce", "joint", "marginal"):
            raise ValueError(f"TargetedPGD loss must be 'ce', 'joint' or 'marginal', got {self.loss!r}")

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
        geom, x0 = self.geometry, x.detach()
        xt = self._clamp(geom.random_start(x0, generator) if self.random_start else x0.clone())
        best = None  # (x, -loss) of each sample's best iterate so far
        keep: list = []
        with_logits = callback is not None and _takes_logits(callback)
        loss_fn = _keeping_logits(keep, self.loss, model) if with_logits else self.loss
        for i in range(self.steps):
            loss, grad = loss_and_grad(model, xt, y, loss_fn)  # (N,), (N, C, H, W)
            if callback is not None:
                callback(i, loss, logits=keep[0]) if with_logits else callback(i, loss)
            if self.keep_best:
                best = keep_better(best, xt, -loss)
            xt = self._clamp(geom.project(geom.step(xt, -grad, self.step_size), x0))  # descend toward y
        if best is not None:  # the last iterate has not been scored yet: one more forward pass
            with torch.no_grad():
                xt, _ = keep_better(best, xt, -attack_loss(model(xt), y, self.loss, model))
        return xt.detach()

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.clamp is None else x.clamp(*self.clamp)

    def first_pass_at_input(self, unit_range: bool) -> bool:
        """Whether step 0's gradient pass is at the stage's input ``x`` itself (then the pipeline takes the
        previous point's energies from its logits): no random start, and the start ``clamp(x)`` equals
        ``x`` (no clamp, or an input known to lie in [0, 1] inside a clamp range that holds [0, 1])."""
        fits = self.clamp is None or (unit_range and self.clamp[0] <= 0 and self.clamp[1] >= 1)
        return self.steps > 0 and not self.random_start and fits


def _takes_logits(callback) -> bool:
    """Whether ``callback`` accepts ``logits=`` (older callbacks ``callback(step, loss)`` still work)."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "logits" or p.kind is p.VAR_KEYWORD for p in params)


def _keeping_logits(keep: list, loss: str, model):
    """``attack_loss`` that also leaves each pass's logits (detached) in ``keep[0]``: same computation."""
    def fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        keep[:] = [logits.detach()]
        return attack_loss(logits, y, loss, model)  # type: ignore[arg-type]
    return fn
