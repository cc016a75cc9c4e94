"""Langevin-type samplers on the classifier's energy.

:class:`SGLD` - JEM / JEM++ (Grathwohl et al. 2020; Yang & Ji 2021). Per outer step, one gradient
``g = clip(dE/dx, -c, c)`` of ``E(x, y)`` (``energy="joint"``) or ``E(x)`` (``"marginal"``), then

    repeat inner_steps:  x <- clamp(x - (a / 2) * g, 0, 1)        (JEM++'s cheap inner updates)
    x <- clamp(x + sigma * z, 0, 1),   z ~ N(0, I)

With ``inner_steps = 1`` and no clipping this is the textbook Langevin step
``x <- x - (a/2) dE/dx + sigma z`` (stationary density ``exp(-E)`` when ``sigma = sqrt(a)``).
JEM++'s PYLD sampler runs ``M`` outer steps of a full forward/backward and ``N`` inner steps that
re-evaluate only the first layer; for an affine first layer the inner gradient equals the outer
one, so its ``N`` inner updates reuse ``g``: that is what ``inner_steps`` does.

:class:`MomentumSGLD` - Mirza et al. (ECCV 2024), Eq. 7:
``v <- zeta v - (eta/2) dE(x,y)/dx``; ``x <- clamp(x + clip(v + sqrt(2 eta) sigma z, -u, u), 0, 1)``.

Conversions from sources in [-1, 1] (``u = 2x - 1``): ``dE/du = (1/2) dE/dx``, so a source update
``u <- u - lr * clip(dE/du, -1, 1) + s z`` is ``x <- x - (lr/4) clip(dE/dx, -2, 2) + (s/2) z`` here:
``step_size a = lr / 2``, ``grad_clip = 2``, ``noise = s / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch

from .. import rng
from ..energy import input_grad

if TYPE_CHECKING:
    from .pipeline import StepCallback

__all__ = ["SGLD", "MomentumSGLD"]


def _energy(model, energy: str) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``value(logits, y)`` for :func:`~ebmlens.energy.input_grad`: ``E(x, y)`` or ``E(x)`` from the logits."""
    if energy == "joint":
        return model.joint_energy_from_logits
    return lambda logits, _y: model.energy_from_logits(logits)


def _check_clamp(name: str, clamp) -> None:
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise ValueError(f"{name} clamp must be (lo, hi) with lo < hi or None, got {clamp!r}")


@dataclass(frozen=True)
class SGLD:
    """Stochastic-gradient Langevin dynamics with JEM++'s outer x inner schedule.

    Args:
        step_size: ``a`` (the gradient is scaled by ``a / 2``), pixels in [0, 1].
        noise: ``sigma``, std of the Gaussian noise added once per outer step.
        steps: outer steps ``M`` (one forward + backward each).
        inner_steps: updates per gradient, ``N`` (1 = plain SGLD).
        grad_clip: clip each gradient entry to ``[-c, c]`` (``None``: no clipping).
        energy: ``"joint"`` ``E(x, y)`` (class-conditional) or ``"marginal"`` ``E(x)`` (unconditional).
        clamp: pixel range kept after every update (``None``: none, as Robust JEM after its
            contrast step; end the pipeline with a ``Clamp`` stage then).

    Shapes: ``x (N, C, H, W)``, ``y (N,)`` -> ``(N, C, H, W)``.
    """

    step_size: float
    noise: float
    steps: int
    inner_steps: int = 1
    grad_clip: float | None = None
    energy: Literal["joint", "marginal"] = "joint"
    clamp: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"SGLD step_size must be > 0, got {self.step_size!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"SGLD noise must be >= 0, got {self.noise!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"SGLD steps must be an int >= 0, got {self.steps!r}")
        if not (isinstance(self.inner_steps, int) and self.inner_steps >= 1):
            raise ValueError(f"SGLD inner_steps must be an int >= 1, got {self.inner_steps!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"SGLD grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.energy not in ("joint", "marginal"):
            raise ValueError(f"SGLD energy must be 'joint' or 'marginal', got {self.energy!r}")
        _check_clamp("SGLD", self.clamp)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
        value = _energy(model, self.energy)
        x = x.detach().clone()
        for t in range(self.steps):
            e, g, logits = input_grad(model, x, value, y)  # unchecked passes: x may leave [0, 1] between steps
            if callback is not None:
                callback(t, e, logits=logits)
            if self.grad_clip is not None:
                g = g.clamp(-self.grad_clip, self.grad_clip)
            for _ in range(self.inner_steps):
                x = x - 0.5 * self.step_size * g
                if self.clamp is not None:
                    x = x.clamp(*self.clamp)
            if self.noise > 0:
                x = x + self.noise * rng.randn(generator, x.shape[0], tuple(x.shape[1:]), device=x.device,
                                               dtype=x.dtype)
                if self.clamp is not None:
                    x = x.clamp(*self.clamp)
        return x

    def first_pass_at_input(self, unit_range: bool) -> bool:
        """Step 0's gradient pass is at the stage's input (``steps > 0``): its logits, handed to the
        callback, give the previous point's energies."""
        return self.steps > 0

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its output lies in [0, 1] when its clamp range does (what the pipeline's records plan on)."""
        return self.clamp is not None and self.clamp[0] >= 0 and self.clamp[1] <= 1


@dataclass(frozen=True)
class MomentumSGLD:
    """Langevin dynamics with momentum (Mirza et al., ECCV 2024, Eq. 7; their image_generation code).

    ``v_{n+1} = zeta v_n - (eta / 2) dE(x_n, y)/dx``;
    ``x_{n+1} = clamp(x_n + clip(v_{n+1} + sqrt(2 eta) * sigma * z, -u, u), 0, 1)``, ``v_0 = 0``.

    Args:
        eta: step size ``eta`` (code default 0.8), pixels in [0, 1].
        steps: iterations (code default 50; one forward + backward each).
        momentum: ``zeta`` (code default 0; one notebook: 0.8 with eta 0.025 and 500 steps).
        noise: ``sigma`` (0.001): the noise std is ``sqrt(2 eta) * sigma``, tiny on purpose.
        update_clip: ``u``, per-pixel bound on each update (1.0; ``None``: none). The velocity itself
            is not clipped.
        energy: ``"joint"`` (their code) or ``"marginal"``.
        clamp: pixel range after every step.
    """

    eta: float = 0.8
    steps: int = 50
    momentum: float = 0.0
    noise: float = 0.001
    update_clip: float | None = 1.0
    energy: Literal["joint", "marginal"] = "joint"
    clamp: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta) and self.eta > 0):
            raise ValueError(f"MomentumSGLD eta must be > 0, got {self.eta!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"MomentumSGLD steps must be an int >= 0, got {self.steps!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"MomentumSGLD momentum must be in [0, 1), got {self.momentum!r}")
        if not self.noise >= 0:
            raise ValueError(f"MomentumSGLD noise must be >= 0, got {self.noise!r}")
        if self.update_clip is not None and not self.update_clip > 0:
            raise ValueError(f"MomentumSGLD update_clip must be > 0 or None, got {self.update_clip!r}")
        if self.energy not in ("joint", "marginal"):
            raise ValueError(f"MomentumSGLD energy must be 'joint' or 'marginal', got {self.energy!r}")
        _check_clamp("MomentumSGLD", self.clamp)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, generator: rng.GeneratorLike = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
        value = _energy(model, self.energy)
        x = x.detach().clone()
        v = torch.zeros_like(x)
        sigma = math.sqrt(2 * self.eta) * self.noise
        for t in range(self.steps):
            e, g, logits = input_grad(model, x, value, y)  # (N,), (N, C, H, W), (N, K)
            if callback is not None:
                callback(t, e, logits=logits)
            v = self.momentum * v - 0.5 * self.eta * g
            upd = v
            if sigma > 0:
                upd = v + sigma * rng.randn(generator, x.shape[0], tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
            if self.update_clip is not None:
                upd = upd.clamp(-self.update_clip, self.update_clip)
            x = x + upd
            if self.clamp is not None:
                x = x.clamp(*self.clamp)
        return x

    def first_pass_at_input(self, unit_range: bool) -> bool:
        """Step 0's gradient pass is at the stage's input (``steps > 0``): its logits, handed to the
        callback, give the previous point's energies."""
        return self.steps > 0

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its output lies in [0, 1] when its clamp range does (what the pipeline's records plan on)."""
        return self.clamp is not None and self.clamp[0] >= 0 and self.clamp[1] <= 1
