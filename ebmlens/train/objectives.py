"""Adversarial-training objectives: small frozen dataclasses with one call signature.

An objective is an object with

* ``objective(model, x, y, attack, state, *, generator=None) -> (loss, new_state)``: ``loss`` a
  scalar tensor with a graph to the model's parameters, ``state`` what the objective carries from
  step to step (``None`` for the stateless ones, returned unchanged; Robust JEM's replay buffer);
* ``objective.init_state(model, *, generator=None, device=None) -> state``: the state of step 0;
* ``objective.for_data(data, n=None) -> objective``: the objective with anything it draws from the
  training set resolved (Robust JEM's ``init="gaussian"``: class Gaussians of the first ``n``
  strided images); the stateless ones return themselves.

So the trainer calls any objective, built-in or yours, with one line:

>>> import torch
>>> from ebmlens.energy import EnergyModel
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
>>> model = EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=(3, 4, 4), num_classes=3)
>>> x, y = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
>>> objective = Trades(beta=6.0)
>>> state = objective.init_state(model)
>>> loss, state = objective(model, x, y, AttackConfig("L2", 0.5, 2), state, generator=torch.Generator())
>>> loss.shape, state
(torch.Size([]), None)

``model`` is an :class:`~ebmlens.EnergyModel` taking pixels in [0, 1] and ``attack`` an
:class:`AttackConfig` (the attack stays an explicit argument: the trainer builds it from its
``threat_model`` / ``eps`` / ``attack_steps`` / ``attack_step_size``). The losses themselves are
pure functions, also exported here for your own loop: :func:`pgd_at`, :func:`trades`,
:func:`weat_adv`, :func:`weat_nat`, :func:`standard` and :func:`robust_jem` (``(loss, new_buffer)``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

import torch

from ._dat import DAT, curriculum_update, dat_loss, move_negatives, pairwise_auc
from ._jem import init_replay_buffer, jempp_sgld, robust_jem
from ._losses import (
    AttackConfig,
    _check_beta,
    adversarial_examples,
    attack_loss,
    pgd_at,
    standard,
    trades,
    trades_examples,
    weat_adv,
    weat_nat,
)

__all__ = ["Objective", "Standard", "PGDAT", "Trades", "WeatAdv", "WeatNat", "RobustJEM", "DAT", "from_name",
           "objective_name", "objective_params", "AttackConfig", "pgd_at", "trades", "trades_examples", "weat_adv",
           "weat_nat", "robust_jem", "init_replay_buffer", "jempp_sgld", "standard", "adversarial_examples",
           "attack_loss", "dat_loss", "move_negatives", "pairwise_auc", "curriculum_update", "OBJECTIVES",
           "OBJECTIVE_TYPES"]


@runtime_checkable
class Objective(Protocol):
    """What the trainer calls (see the module docstring)."""

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, state: Any = None, *,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]: ...

    def init_state(self, model, *, generator: torch.Generator | None = None, device=None) -> Any: ...


class _Stateless:
    """Calls ``self.function(model, x, y, attack, generator=..., **self.kwargs())``; state stays ``None``."""

    name: ClassVar[str]
    function: ClassVar[Callable[..., torch.Tensor]]

    def kwargs(self) -> dict:
        """The keyword arguments this objective passes to its loss function."""
        return {}

    def __call__(self, model, x, y, attack, state=None, *, generator=None):
        return type(self).function(model, x, y, attack, generator=generator, **self.kwargs()), state

    def init_state(self, model, *, generator=None, device=None):
        return None

    def for_data(self, data, n: int | None = None):
        return self


@dataclass(frozen=True)
class Standard(_Stateless):
    """Plain cross-entropy on natural images (:func:`standard`; a non-robust baseline)."""

    name: ClassVar[str] = "standard"
    function: ClassVar = staticmethod(standard)


@dataclass(frozen=True)
class PGDAT(_Stateless):
    """PGD adversarial training (:func:`pgd_at`): ``mean CE(f(x*), y)``, ``x* = PGD(x, y)``."""

    name: ClassVar[str] = "pgd-at"
    function: ClassVar = staticmethod(pgd_at)


@dataclass(frozen=True)
class _BetaObjective(_Stateless):
    beta: float = 6.0

    def __post_init__(self) -> None:
        _check_beta(self.name, self.beta)

    def kwargs(self) -> dict:
        return {"beta": float(self.beta)}


@dataclass(frozen=True)
class Trades(_BetaObjective):
    """TRADES (:func:`trades`): ``CE(f(x), y) + beta * KL(p(.|x) || p(.|x*))``; beta 6."""

    name: ClassVar[str] = "trades"
    function: ClassVar = staticmethod(trades)


@dataclass(frozen=True)
class WeatAdv(_BetaObjective):
    """WEAT-adv (:func:`weat_adv`): energy-weighted TRADES with the adversarial CE; beta 6."""

    name: ClassVar[str] = "weat-adv"
    function: ClassVar = staticmethod(weat_adv)


@dataclass(frozen=True)
class WeatNat(_BetaObjective):
    """WEAT-nat (:func:`weat_nat`): energy-weighted TRADES with the natural CE; beta 6."""

    name: ClassVar[str] = "weat-nat"
    function: ClassVar = staticmethod(weat_nat)


@dataclass(frozen=True)
class RobustJEM:
    """Robust JEM (:func:`robust_jem`): ``CE(f(x*), y) + gamma * (mean E(x) - mean E(x~))``; the state
    is the replay buffer ``(buffer_size, C, H, W)``.

    Attributes (JEM++'s defaults):
        gamma: weight of the generative term (1).
        reinit_freq: fraction of chains restarted from ``init`` each step (0.05).
        buffer_size: replay buffer size (10,000); at least the batch size.
        sgld_steps, sgld_inner_steps, sgld_step_size, sgld_noise: the sampler, :func:`jempp_sgld`
            (M = 10 outer x N = 5 inner steps, step 0.1 in [0, 1] pixels, no noise, clip 2).
        init: the buffer's initializer and restarts: ``"gaussian"`` (JEM++: class Gaussians of the
            training images, resolved by :meth:`for_data`), ``"uniform"`` (JEM's noise) or any
            initializer ``init(model, y, *, generator) -> x``.
        sampling_mode: BatchNorm mode of the SGLD chains (``"train"``, as JEM++).
    """

    name: ClassVar[str] = "robust-jem"
    gamma: float = 1.0
    reinit_freq: float = 0.05
    buffer_size: int = 10000
    sgld_steps: int = 10
    sgld_inner_steps: int = 5
    sgld_step_size: float = 0.1
    sgld_noise: float = 0.0
    init: Any = "gaussian"
    sampling_mode: Literal["train", "eval"] = "train"

    def __post_init__(self) -> None:
        for k in ("buffer_size", "sgld_steps", "sgld_inner_steps"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)!r} (an int)")
        if not 0 <= self.reinit_freq <= 1:
            raise ValueError(f"reinit_freq must be in [0, 1], got {self.reinit_freq}")
        if not (self.gamma >= 0 and self.sgld_step_size > 0 and self.sgld_noise >= 0):
            raise ValueError(f"need gamma >= 0, sgld_step_size > 0, sgld_noise >= 0; got {self.gamma}, "
                             f"{self.sgld_step_size}, {self.sgld_noise}")
        if isinstance(self.init, str) and self.init not in ("gaussian", "uniform"):
            raise ValueError(f"init must be 'gaussian', 'uniform' or an initializer, got {self.init!r}")
        if not (isinstance(self.init, str) or callable(self.init)):
            raise TypeError(f"init must be 'gaussian', 'uniform' or an initializer, got {type(self.init).__name__}")
        if self.sampling_mode not in ("train", "eval"):
            raise ValueError(f"sampling_mode must be 'train' or 'eval', got {self.sampling_mode!r}")

    def sampler(self):
        """The SGLD stage of the generative term (:func:`jempp_sgld` with this object's settings)."""
        return jempp_sgld(steps=self.sgld_steps, inner_steps=self.sgld_inner_steps, step_size=self.sgld_step_size,
                          noise=self.sgld_noise)

    def initializer(self):
        """The initializer of the buffer and of restarted chains (after :meth:`for_data` for ``"gaussian"``)."""
        if self.init == "gaussian":
            raise ValueError("RobustJEM(init='gaussian') draws from the training set's class Gaussians: call "
                             ".for_data(train_data) first, or pass init='uniform' or an initializer")
        if self.init == "uniform":
            from ..sampling.init import NoiseInit

            return NoiseInit("uniform")
        return self.init

    def for_data(self, data, n: int | None = None) -> "RobustJEM":
        """``init="gaussian"`` resolved to :class:`~ebmlens.sampling.GaussianInit` on the class
        statistics of ``data`` (its first ``n`` strided images; all when ``n`` is None)."""
        if self.init != "gaussian":
            return self
        from dataclasses import replace

        from ..sampling.init import GaussianInit
        from ..stats import class_stats

        return replace(self, init=GaussianInit(class_stats(data, n=n if n is not None and n < len(data) else None)))

    def init_state(self, model, *, generator=None, device=None) -> torch.Tensor:
        return init_replay_buffer(model, self.buffer_size, init=self.initializer(), generator=generator, device=device)

    def kwargs(self) -> dict:
        return {"gamma": self.gamma, "reinit_freq": self.reinit_freq, "sgld": self.sampler(),
                "init": self.initializer(), "sampling_mode": self.sampling_mode}

    def __call__(self, model, x, y, attack, state=None, *, generator=None):
        return robust_jem(model, x, y, attack, state, generator=generator, **self.kwargs())


OBJECTIVE_TYPES: dict[str, type] = {t.name: t for t in (PGDAT, Trades, Standard, WeatAdv, WeatNat, RobustJEM, DAT)}

# the pure loss functions by name (as before objectives were objects)
OBJECTIVES = {"pgd-at": pgd_at, "trades": trades, "standard": standard, "weat-adv": weat_adv,
              "weat-nat": weat_nat, "robust-jem": robust_jem}


def from_name(name: str, **params) -> Objective:
    """The objective called ``name`` (``"pgd-at"``, ``"trades"``, ...) with ``params`` it accepts.

    >>> from_name("trades", beta=3)
    Trades(beta=3)
    """
    if name not in OBJECTIVE_TYPES:
        import difflib

        close = difflib.get_close_matches(str(name), list(OBJECTIVE_TYPES))
        raise ValueError(f"unknown objective {name!r}" + (f"; did you mean {close[0]}?" if close else "")
                         + f" Choices: {', '.join(sorted(OBJECTIVE_TYPES))}")
    cls = OBJECTIVE_TYPES[name]
    accepted = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in accepted})


def objective_name(objective) -> str:
    """The name an objective is recorded under (config.json's ``"objective"``)."""
    return getattr(objective, "name", None) or type(objective).__name__


def objective_params(objective) -> dict:
    """An objective's settings as JSON-able values (config.json's ``"objective_params"``)."""
    try:
        items = {f.name: getattr(objective, f.name) for f in fields(objective)}
    except TypeError:  # not a dataclass
        return {}
    return {k: (v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)) for k, v in items.items()}


_ = (adversarial_examples, trades_examples, attack_loss)  # re-exported
