"""TRADES written in energies (Mirza et al., ECCV 2024, Sec. 3; TRADES: Zhang et al., ICML 2019).

With joint energy ``E(x, k) = -f(x)[k]``, marginal energy ``E(x) = -logsumexp_k f(x)[k]`` and
``p(k|x) = softmax(f(x))[k] = exp(E(x) - E(x, k))``, the two TRADES terms are energy differences:

* natural cross-entropy      ``CE(f(x), y) = E(x, y) - E(x)``
* robustness regularizer     ``KL(p(.|x) || p(.|x*))
  = sum_k p(k|x) [E(x*, k) - E(x, k)]   +   E(x) - E(x*)``
  (a p-weighted *joint-energy* part, then the *marginal energy gap*).

Derivation: ``log p(k|x) = E(x) - E(x, k)``, so
``KL = sum_k p(k|x) [log p(k|x) - log p(k|x*)]
     = sum_k p(k|x) [E(x) - E(x, k) - E(x*) + E(x*, k)]`` and ``sum_k p(k|x) = 1``.
The marginal gap ``E(x) - E(x*)`` is what TRADES keeps near 0 during training while PGD-AT
lets it drift (Mirza et al.'s energy-divergence observation).

Energies here are at temperature 1 (the softmax TRADES uses), whatever the model's
``temperature``. These are the formulas that :func:`ebmlens.train.objectives.trades` and the
WEAT objectives compute their losses with (one implementation).

>>> import torch
>>> lg, lg_adv = torch.randn(4, 10), torch.randn(4, 10)
>>> t = trades_terms_from_logits(lg, lg_adv, torch.tensor([0, 1, 2, 3]))
>>> ref = torch.nn.functional.kl_div(lg_adv.log_softmax(1), lg.softmax(1), reduction="none").sum(1)
>>> bool(torch.allclose(t.kl, ref, atol=1e-5))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TradesTerms", "trades_energy_terms", "trades_terms_from_logits"]


@dataclass(frozen=True)
class TradesTerms:
    """Per-sample TRADES terms in energies; every field has shape ``(N,)`` (float32, or float64 for float64 logits).

    Attributes:
        energy: ``E(x)`` of the natural inputs.
        energy_adv: ``E(x*)`` of the adversarial inputs.
        joint_energy: ``E(x, y)`` (``None`` without labels).
        ce: ``CE(f(x), y) = E(x, y) - E(x)`` (``None`` without labels).
        kl_joint: ``sum_k p(k|x) [E(x*, k) - E(x, k)]``.
        marginal_gap: ``E(x) - E(x*)``.
        kl: ``KL(p(.|x) || p(.|x*)) = kl_joint + marginal_gap`` (>= 0 up to rounding).
    """

    energy: torch.Tensor
    energy_adv: torch.Tensor
    joint_energy: torch.Tensor | None
    ce: torch.Tensor | None
    kl_joint: torch.Tensor
    marginal_gap: torch.Tensor
    kl: torch.Tensor

    def loss(self, beta: float = 6.0) -> torch.Tensor:
        """The TRADES loss ``mean(CE) + beta * mean(KL)`` (needs labels)."""
        if self.ce is None:
            raise ValueError("the TRADES loss needs labels: pass y to trades_energy_terms")
        return self.ce.mean() + beta * self.kl.mean()


def _check_logits(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, K), got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, K) with K >= 2 classes, got {tuple(t.shape)}")
    return t if t.dtype == torch.float64 else t.float()  # at least float32 (autocast gives bf16/fp16)


def trades_terms_from_logits(logits: torch.Tensor, logits_adv: torch.Tensor,
                             y: torch.Tensor | None = None) -> TradesTerms:
    """TRADES terms from natural logits ``f(x)`` and adversarial logits ``f(x*)``, both ``(N, K)``.

    Differentiable through both logits (TRADES back-propagates through ``p(.|x)`` too).
    ``y``: optional ``(N,)`` labels for the cross-entropy term.
    """
    lg = _check_logits("logits", logits)
    lg_adv = _check_logits("logits_adv", logits_adv)
    if lg.shape != lg_adv.shape:
        raise ValueError(f"natural and adversarial logits differ in shape: {tuple(lg.shape)} vs {tuple(lg_adv.shape)}")
    e_x = -torch.logsumexp(lg, dim=1)                 # E(x)
    e_adv = -torch.logsumexp(lg_adv, dim=1)           # E(x*)
    p = torch.exp(e_x.unsqueeze(1) + lg)              # p(k|x) = exp(E(x) - E(x, k)), E(x, k) = -f(x)[k]
    kl_joint = (p * (lg - lg_adv)).sum(1)             # sum_k p(k|x) [E(x*, k) - E(x, k)]
    gap = e_x - e_adv                                 # E(x) - E(x*)
    joint = ce = None
    if y is not None:
        from ..energy import validate_labels

        y = validate_labels(y, lg.shape[1], lg.shape[0]).to(lg.device)
        joint = -lg.gather(1, y.view(-1, 1)).squeeze(1)   # E(x, y)
        ce = joint - e_x                                  # E(x, y) - E(x) = -log p(y|x)
    return TradesTerms(energy=e_x, energy_adv=e_adv, joint_energy=joint, ce=ce,
                       kl_joint=kl_joint, marginal_gap=gap, kl=kl_joint + gap)


def trades_energy_terms(model, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor | None = None) -> TradesTerms:
    """TRADES terms of ``model`` at natural ``x`` and adversarial ``x_adv`` (pixels in [0, 1], NCHW).

    Args:
        model: an :class:`~ebmlens.EnergyModel` (or any callable ``x -> (N, K)`` logits), used in
            its current train/eval mode; wrap the call in ``torch.no_grad()`` to measure only.
        x, x_adv: ``(N, C, H, W)`` natural and adversarial images.
        y: optional ``(N,)`` labels (for ``ce`` and ``joint_energy``).

    Returns:
        :class:`TradesTerms`, per-sample tensors of shape ``(N,)``.
    """
    from ..energy import validate_images

    validate_images(x, None, name="x")
    validate_images(x_adv, None, name="x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    logits_fn = model.logits if hasattr(model, "logits") else model
    return trades_terms_from_logits(logits_fn(x), logits_fn(x_adv), y)
