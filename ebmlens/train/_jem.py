"""Robust JEM's pure functions: the replay buffer, JEM++'s SGLD sampler and the loss (re-exported by
:mod:`.objectives`, whose :class:`~ebmlens.train.objectives.RobustJEM` wraps them for the trainer).

``robust_jem(model, x, y, attack, buffer, ...) -> (loss, new_buffer)``: the state (a replay buffer)
goes in and a new one comes out; the input buffer is never modified.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .. import rng
from ._losses import AttackConfig, adversarial_examples

__all__ = ["init_replay_buffer", "jempp_sgld", "robust_jem"]


def init_replay_buffer(model, size: int, *, init=None, generator=None, device=None) -> torch.Tensor:
    """A JEM replay buffer of ``size`` images ``(size, C, H, W)`` in [0, 1], drawn from ``init``.

    ``init``: any initializer ``init(model, y, *, generator) -> x`` (default
    :class:`~ebmlens.sampling.NoiseInit` uniform, JEM's buffer; JEM++ uses
    :class:`~ebmlens.sampling.GaussianInit` on the training set's class statistics), with labels
    drawn uniformly from ``generator``.
    """
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"replay buffer size must be an int >= 1, got {size!r}")
    from ..sampling.init import NoiseInit

    y = rng.randint(generator, size, model.num_classes, device=device)
    return (init or NoiseInit("uniform"))(model, y, generator=generator).detach().to(device)


def jempp_sgld(steps: int = 10, inner_steps: int = 5, step_size: float = 0.1, noise: float = 0.0,
               grad_clip: float | None = 2.0, energy: Literal["joint", "marginal"] = "marginal"):
    """JEM++'s training sampler as an :class:`~ebmlens.sampling.SGLD` stage (pixels in [0, 1]).

    JEM++ (Yang & Ji, ICCV 2021) trains with M = 10 outer x N = 5 inner steps, lr 0.2 on
    gradients clipped to [-1, 1] in [-1, 1] pixel units, no noise; in [0, 1] units (see
    :mod:`ebmlens.sampling.sgld`) that is ``step_size = 0.1``, ``grad_clip = 2``, ``noise = 0``.
    Unconditional (``E(x)``) by default: JEM's generative term models ``p(x)``.
    """
    from ..sampling.sgld import SGLD

    return SGLD(step_size=step_size, noise=noise, steps=steps, inner_steps=inner_steps, grad_clip=grad_clip,
                energy=energy)


def robust_jem(model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, buffer: torch.Tensor, *,
               generator=None, gamma: float = 1.0, reinit_freq: float = 0.05, sgld=None, init=None,
               sampling_mode: Literal["train", "eval"] = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Robust JEM: JEM++'s generative term with a replay buffer + adversarial cross-entropy
    (Korst & Asadulaev, "Adversarial training improves joint energy-based generative modelling").

    ``loss = mean_i CE(f(x*_i), y_i) + gamma * (mean_i E(x_i) - mean_j E(x~_j))``

    * ``x* = PGD(x, y)`` (:func:`adversarial_examples`, eval mode), as in :func:`~ebmlens.train.objectives.pgd_at`;
    * ``x~ = SGLD(x~_0)`` with ``x~_0`` taken from ``buffer`` (``n`` distinct random entries), each
      replaced with probability ``reinit_freq`` by a fresh draw of ``init``; the SGLD stage runs
      with BatchNorm in ``sampling_mode`` (JEM++: train; running statistics restored afterwards);
    * ``E(x) = -logsumexp f(x)``: the generative term ``E(x) - E(x~)`` is the gradient estimator of
      ``-log p(x)`` (JEM, Grathwohl et al. 2020); ``x~`` is detached.

    Pure: ``buffer`` is not modified; the returned buffer is a new tensor with the ``n`` sampled
    entries replaced by ``x~`` (JEM's persistent chains).

    Args:
        buffer: ``(B, C, H, W)`` replay buffer in [0, 1], ``B >= N`` (:func:`init_replay_buffer`).
        generator: a :class:`torch.Generator` (buffer indices are drawn for the whole batch).
        gamma: weight of the generative term (1, as JEM/JEM++).
        reinit_freq: fraction of chains restarted from ``init`` (JEM/JEM++: 0.05).
        sgld: the sampler stage (default :func:`jempp_sgld`: M=10, N=5, step 0.1, clip 2, no noise).
        init: initializer for restarts (default uniform noise; JEM++ uses GaussianInit).

    Returns:
        ``(loss, new_buffer)``.

    Defaults: JEM++ buffer size 10,000, reinit 0.05, M=10, N=5; Robust JEM's attack: PGD Linf
    eps 0.1 in [-1, 1] units (0.05 here), 15 steps (``AttackConfig("Linf", 0.05, 15)``).
    """
    from ..sampling.init import NoiseInit

    if not isinstance(buffer, torch.Tensor) or buffer.dim() != x.dim() or buffer.shape[1:] != x.shape[1:]:
        got = tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else type(buffer).__name__
        raise ValueError(f"replay buffer must be a tensor (B, {', '.join(map(str, x.shape[1:]))}), got {got}; "
                         "make one with init_replay_buffer(model, size)")
    n = x.shape[0]
    if buffer.shape[0] < n:
        raise ValueError(f"replay buffer holds {buffer.shape[0]} images, fewer than the batch of {n}")
    if not 0 <= reinit_freq <= 1:
        raise ValueError(f"reinit_freq must be in [0, 1], got {reinit_freq!r}")
    if not (isinstance(gamma, (int, float)) and gamma >= 0):
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if sampling_mode not in ("train", "eval"):
        raise ValueError(f"sampling_mode must be 'train' or 'eval', got {sampling_mode!r}")
    if isinstance(generator, rng.SampleStreams):
        raise TypeError("robust_jem draws replay-buffer indices for the whole batch: pass a torch.Generator")
    sgld = sgld or jempp_sgld()
    init = init or NoiseInit("uniform")

    x_adv = adversarial_examples(model, x, y, attack, generator=generator)
    gdev = generator.device if generator is not None else buffer.device
    idx = torch.randperm(buffer.shape[0], generator=generator, device=gdev)[:n].to(buffer.device)
    y_q = rng.randint(generator, n, model.num_classes, device=x.device)
    restart = rng.rand(generator, n, (), device=x.device) < reinit_freq
    x_start = torch.where(restart.view(-1, *([1] * (x.dim() - 1))), init(model, y_q, generator=generator).to(x.dtype),
                          buffer[idx].to(x.device, x.dtype))
    with model.mode(sampling_mode):
        x_q = sgld(model, x_start, y_q, generator=generator).detach()
    new_buffer = buffer.index_copy(0, idx, x_q.to(buffer.device, buffer.dtype))

    ce = F.cross_entropy(model(x_adv).float(), y)
    e_data = model.energy_from_logits(model(x))
    e_model = model.energy_from_logits(model(x_q))
    return ce + gamma * (e_data.mean() - e_model.mean()), new_buffer
