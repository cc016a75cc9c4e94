"""DAT's energy fine-tuning (Yin, Zhang, Steele, Shavit, Wang, ICLR 2026; code xuwangyin/DAT), written here.

One training step on a batch split in two halves, ``(x, y)`` for the energy term and ``(x2, y2)`` for
adversarial training::

    s(x)   = logsumexp_k f(x)[k]  (= -E(x))
    x~     = T steps of  x~ <- clamp(x~ + a g/||g||_2, 0, 1),  g = d f(x~)[y] / d x~,  from seeds x~_0
    BCE    = mean over both sets of  BCEWithLogits(s(x), 1)  and  BCEWithLogits(s(x~), 0)
    loss   = BCE + w * mean CE(f(x2*), y2),   x2* = L2 PGD(x2, y2)  (eps 0.5, no random start)

``T`` follows a curriculum: it starts at ``t_start`` and rises by one when the last ``window``
per-batch AUCs of ``f(x)[y]`` (real) against ``f(x~)[y]`` (negatives), measured in eval mode
before the update, are all there and their mean reaches ``threshold``; the window then empties.
The model stays in eval mode throughout (BatchNorm frozen, as DAT's ``use_batchnorm: false``):
:attr:`DAT.model_mode` tells the trainer so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from ..attacks import Unconstrained, pgd
from ._losses import AttackConfig, adversarial_examples

__all__ = ["DAT", "DATTerms", "dat_loss", "move_negatives", "pairwise_auc", "curriculum_update", "new_state"]


class DATTerms(NamedTuple):
    """The loss and its parts: ``loss = bce + at_weight * ce``; ``auc`` of ``f(x)[y]`` real vs negatives."""

    loss: torch.Tensor
    bce: float
    ce: float
    auc: float


def pairwise_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """``P(pos > neg) + P(pos = neg) / 2`` over all pairs (the Mann-Whitney AUC).

    >>> pairwise_auc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0]))
    0.875
    """
    d = pos.detach().float().view(-1, 1) - neg.detach().float().view(1, -1)
    return float((d > 0).float().mean() + 0.5 * (d == 0).float().mean())


def move_negatives(model, seeds: torch.Tensor, y: torch.Tensor, steps: int, step_size: float = 0.1) -> torch.Tensor:
    """DAT's negatives: ``steps`` steps of ``x <- clamp(x + step_size g/||g||_2, 0, 1)``, ``g = d f(x)[y]/dx``
    (targeted PGD on the joint energy ``E(x, y) = -f(x)[y]`` with the :class:`Unconstrained` geometry),
    the model in eval mode, no random start. ``steps = 0`` returns the seeds (clamped)."""
    with model.mode("eval"):
        return pgd(model, seeds, y, Unconstrained(), int(steps), step_size, loss="joint", targeted=True)


def dat_loss(model, x: torch.Tensor, x_neg: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, y_adv: torch.Tensor,
             *, at_weight: float = 1.0) -> DATTerms:
    """DAT's loss on real images ``x``, moved negatives ``x_neg`` (labels ``y`` for both) and adversarial
    examples ``x_adv`` of a second batch with labels ``y_adv`` (one forward for all three)."""
    n, m = x.shape[0], x_neg.shape[0]
    logits = model(torch.cat([x, x_neg, x_adv])).float()
    s = torch.logsumexp(logits[:n + m], dim=1)
    target = torch.cat([torch.ones(n, device=s.device), torch.zeros(m, device=s.device)])
    bce = F.binary_cross_entropy_with_logits(s, target)
    ce = F.cross_entropy(logits[n + m:], y_adv) if x_adv.shape[0] else s.new_zeros(())
    fy = logits[:n + m].detach().gather(1, torch.cat([y, y]).view(-1, 1)).squeeze(1)
    return DATTerms(bce + at_weight * ce, float(bce.detach()), float(ce.detach()), pairwise_auc(fy[:n], fy[n:]))


def new_state(t_start: int = 0) -> dict:
    """A curriculum at level ``t_start``, empty window, empty interval sums."""
    return {"T": int(t_start), "window": [], "levels": [], "step": 0, "sums": _zero_sums()}


def _zero_sums() -> dict:
    return {"n": 0, "loss": 0.0, "bce": 0.0, "ce": 0.0, "auc": 0.0}


def curriculum_update(state: dict, auc: float, *, window: int, threshold: float, t_max: int) -> dict:
    """The state after one batch's AUC: appended to the window (the last ``window`` kept); ``T`` + 1 and
    the window emptied when it is full and its mean reaches ``threshold`` (below ``t_max``)."""
    win = (list(state["window"]) + [float(auc)])[-int(window):]
    t, levels = int(state["T"]), list(state["levels"])
    step = int(state.get("step", 0)) + 1
    if len(win) >= window and sum(win) / len(win) >= threshold and t < t_max:
        t, win = t + 1, []
        levels.append(step)  # the step (1-based) after which T rose
    return {**state, "T": t, "window": win, "levels": levels, "step": step}


@dataclass(frozen=True)
class DAT:
    """DAT's energy fine-tuning (see the module docstring) as a trainer objective.

    The trainer's batch is split in two halves: the first is the real batch of the energy term (and
    labels the negatives), the second the adversarial-training batch, so ``batch_size=256`` is
    DAT's 128 + 128. Start from a trained robust model (``TrainConfig(init_from=...)``), with a
    constant learning rate (DAT: 1e-3) and an EMA of the weights (0.999).

    Attributes:
        negatives: the seeds of the negatives: a data spec (``"cifar10:PATH@test"``, ``"npz:..."``,
            any set whose images have the model's size; DAT uses 80M Tiny Images), ``"stats:NAME"``
            (class-Gaussian seeds from a bundled model's statistics, e.g. ``stats:cifar10-l2-small``),
            ``"stats:PATH"`` (a saved ClassStats), an ImageSet, or an initializer
            ``init(model, y, *, generator) -> x``. Resolved by :meth:`for_data`.
        threshold: mean window AUC that raises ``T`` (DAT: 0.8; 0.7 for its best CIFAR-10 model).
        window: batches in the AUC window (DAT: ~1000 / batch images, 8 for 128).
        t_start, t_max: first and last level of ``T``.
        step_size: step of the negatives' ascent (0.1 in [0, 1] pixels).
        at_weight: weight of the adversarial cross-entropy (1).
        at_random_start: random start of the AT attack (DAT: none).
        grid_steps, grid_step_size: the sampler of the per-interval grid (DAT samples with 33-35 steps of 0.2).
    """

    name: ClassVar[str] = "dat"
    model_mode: ClassVar[str] = "eval"  # BatchNorm frozen: the trainer keeps the model in eval mode
    negatives: Any = None
    threshold: float = 0.8
    window: int = 8
    t_start: int = 0
    t_max: int = 50
    step_size: float = 0.1
    at_weight: float = 1.0
    at_random_start: bool = False
    grid_steps: int = 33
    grid_step_size: float = 0.2

    def __post_init__(self) -> None:
        if self.negatives is None:
            raise ValueError("DAT needs negatives' seeds: negatives='stats:cifar10-l2-small' (class Gaussians), a data "
                             "spec of another image set, an ImageSet or an initializer (CLI: --negatives SPEC)")
        for k in ("window", "t_max", "grid_steps"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ValueError(f"DAT {k} must be an int >= 1, got {getattr(self, k)!r}")
        if not (isinstance(self.t_start, int) and 0 <= self.t_start <= self.t_max):
            raise ValueError(f"DAT t_start must be an int in [0, t_max={self.t_max}], got {self.t_start!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"DAT threshold must be in (0, 1], got {self.threshold}")
        if not (self.step_size > 0 and self.grid_step_size > 0 and self.at_weight >= 0):
            raise ValueError(f"DAT needs step_size > 0, grid_step_size > 0, at_weight >= 0; got {self.step_size}, "
                             f"{self.grid_step_size}, {self.at_weight}")

    def for_data(self, data, n: int | None = None) -> "DAT":
        """``negatives`` given as a spec resolved: ``stats:...`` to :class:`~ebmlens.sampling.GaussianInit`,
        any other string to its data set (:func:`ebmlens.data.load_data`)."""
        neg = self.negatives
        if not isinstance(neg, str):
            return self
        if neg.startswith("stats:"):
            return replace(self, negatives=_gaussian_seeds(neg[len("stats:"):]))
        from ..data import load_data

        return replace(self, negatives=load_data(neg))

    def init_state(self, model, *, generator=None, device=None) -> dict:
        return new_state(self.t_start)

    def seeds(self, model, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One seed per label: a random image of the negatives' set, or the initializer's draw."""
        neg = self.negatives
        if isinstance(neg, str):
            raise ValueError("DAT negatives are still a spec: call .for_data(train_data) first (the trainer does)")
        if callable(neg) and not hasattr(neg, "tensor"):
            x = neg(model, y, generator=generator)
        else:
            idx = torch.randint(0, len(neg), (y.shape[0],), generator=generator)
            x = neg.tensor(idx.numpy())
        if tuple(x.shape[1:]) != tuple(model.input_shape):
            raise ValueError(f"DAT negatives have images of shape {tuple(x.shape[1:])} but the model takes "
                             f"{tuple(model.input_shape)}; choose negatives of the training images' size")
        return x.to(y.device)

    def __call__(self, model, x, y, attack: AttackConfig, state=None, *, generator=None):
        if x.shape[0] < 2:
            raise ValueError(f"DAT splits each batch into a real half and an AT half: batch_size must be >= 2, "
                             f"got {x.shape[0]}")
        state = new_state(self.t_start) if state is None else state
        b = x.shape[0] // 2
        xr, yr, x2, y2 = x[:b], y[:b], x[b:], y[b:]
        x_neg = move_negatives(model, self.seeds(model, yr, generator), yr, state["T"], self.step_size)
        x_adv = adversarial_examples(model, x2, y2, replace(attack, random_start=self.at_random_start),
                                     generator=generator)
        terms = dat_loss(model, xr, x_neg, yr, x_adv, y2, at_weight=self.at_weight)
        state = curriculum_update(state, terms.auc, window=self.window, threshold=self.threshold, t_max=self.t_max)
        s = state["sums"]
        sums = {"n": s["n"] + 1, "loss": s["loss"] + float(terms.loss.detach()), "bce": s["bce"] + terms.bce,
                "ce": s["ce"] + terms.ce, "auc": s["auc"] + terms.auc}
        return terms.loss, {**state, "sums": sums}

    def interval_summary(self, state: dict) -> tuple[dict, dict]:
        """Means of the loss terms and the AUC since the last summary, the level ``T`` and the steps at
        which it rose; and the state with the sums emptied."""
        s = state["sums"]
        n = max(int(s["n"]), 1)
        row = {"T": int(state["T"]), "batches": int(s["n"]), "loss": s["loss"] / n, "bce": s["bce"] / n,
               "ce": s["ce"] / n, "auc": s["auc"] / n, "window": len(state["window"]), "levels": list(state["levels"])}
        return row, {**state, "sums": _zero_sums()}

    def samples(self, model, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Samples for the interval grid: the negatives' seeds moved by ``grid_steps`` steps of ``grid_step_size``."""
        return move_negatives(model, self.seeds(model, y, generator), y, self.grid_steps, self.grid_step_size)


def _gaussian_seeds(what: str):
    """``GaussianInit`` on a bundled model's statistics (``NAME`` or ``ebmlens:NAME``) or a saved ClassStats."""
    from pathlib import Path

    from ..sampling.init import GaussianInit
    from ..stats import ClassStats

    if Path(what).expanduser().exists():
        return GaussianInit(ClassStats.load(str(Path(what).expanduser())))
    from ..models.bundled import bundled_stats

    stats = bundled_stats(what)
    if stats is None:
        raise ValueError(f"bundled model {what!r} ships no class statistics; pass negatives='stats:PATH' with a "
                         "saved ClassStats (ebmlens stats) or a data spec")
    return GaussianInit(stats)
