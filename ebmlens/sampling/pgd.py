"""Targeted projected gradient descent as a sampling stage (Santurkar et al. 2019; DAT).

Each step descends the loss of the *target* class inside a ball around the stage's input ``x0``:

    g = d loss(f(x), y) / d x;   x <- clamp(project(step(x, -g, step_size), x0), 0, 1)

with the geometry's step (L2: ``-step_size * g / ||g||_2``; Linf: ``-step_size * sign(g)``;
Unconstrained: the L2 step with no ball). Losses: ``"ce"`` cross-entropy to the target
``E(x, y) - E(x)`` (Santurkar et al.), ``"joint"`` ``E(x, y) = -f(x)[y]`` (DAT ascends the target
logit), ``"marginal"`` ``E(x)`` (unconditional). With ``keep_best`` each sample returns its iterate of
lowest loss (Santurkar et al.'s ``use_best``). With ``stop_at = tau`` each sample stops as soon as the
model's own ``p(y | x) >= tau`` at its current iterate (checked on the pass that computes its gradient)
and leaves the batch: it moves only as far as its class needs, and later passes run on the remaining
rows only (gradient evaluations per sample fall; one host sync per step to shrink the batch). The loop
is :func:`ebmlens.attacks.pgd` with ``targeted=True``: the one PGD loop, which analysis and training
call too.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .. import rng
from ..attacks import Geometry, pgd

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
        stop_at: per-sample stopping threshold ``tau`` in (0, 1) on ``p(y | x)`` (``None``: all steps).

    Shapes: ``x (N, C, H, W)``, ``y (N,)`` -> ``(N, C, H, W)``.
    """

    geometry: Geometry
    steps: int
    step_size: float
    loss: Literal["ce", "joint", "marginal"] = "ce"
    random_start: bool = False
    keep_best: bool = False
    clamp: tuple[float, float] | None = (0.0, 1.0)
    stop_at: float | None = None

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
        if self.stop_at is not None and not (isinstance(self.stop_at, (int, float)) and 0 < self.stop_at < 1):
            raise ValueError(f"TargetedPGD stop_at must be a probability in (0, 1) or None, got {self.stop_at!r}")
        if self.stop_at is not None and self.keep_best:
            raise ValueError("TargetedPGD: stop_at and keep_best do not combine (a stopped sample keeps its last "
                             "iterate); choose one")

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
        return pgd(model, x, y, self.geometry, self.steps, self.step_size, loss=self.loss, targeted=True,
                   random_start=self.random_start, keep_best=self.keep_best, clamp=self.clamp,
                   generator=generator, stop_at=self.stop_at, callback=callback)

    def first_pass_at_input(self, unit_range: bool) -> bool:
        """Whether step 0's gradient pass is at the stage's input ``x`` itself (then the pipeline takes the
        previous point's energies from its logits): no random start, and the start ``clamp(x)`` equals
        ``x`` (no clamp, or an input known to lie in [0, 1] inside a clamp range that holds [0, 1])."""
        fits = self.clamp is None or (unit_range and self.clamp[0] <= 0 and self.clamp[1] >= 1)
        return self.steps > 0 and not self.random_start and fits

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its output lies in [0, 1] when its clamp range does (what the pipeline's records plan on)."""
        return self.clamp is not None and self.clamp[0] >= 0 and self.clamp[1] <= 1

