"""The trainer's configuration: :class:`TrainConfig`, its JSON form (config.json) and the mapping of the
old flat objective settings (``objective="trades", beta=6``; the robust-jem keys of older config.json files)
onto objective objects."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..attacks import parse_threat_model
from ..models.archs import get_arch
from . import objectives as O

__all__ = ["TrainConfig", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# config.json's flat robust-jem keys -> RobustJEM's fields
JEM_FIELDS = {"buffer_size": "buffer_size", "reinit_freq": "reinit_freq", "gamma": "gamma", "sgld_steps": "sgld_steps",
              "sgld_inner_steps": "sgld_inner_steps", "sgld_step_size": "sgld_step_size", "sgld_noise": "sgld_noise",
              "jem_init": "init"}
DEFAULT_BETA = 6.0  # recorded as config.json's "beta" for objectives without one (as before)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (saved as config.json by :meth:`to_dict`; ``ebmlens train``
    options map onto it).

    ``objective`` is an objective object (:class:`~ebmlens.train.objectives.PGDAT`, ``Trades(beta)``,
    ``RobustJEM(...)``, ... or your own, see :mod:`ebmlens.train.objectives`) or, for one more
    release, its name: ``objective="trades", beta=6`` becomes ``Trades(beta=6)``. After construction
    ``cfg.objective`` is always the object and ``beta`` is ``None``. Robust-JEM settings go on the
    object: ``objective=RobustJEM(buffer_size=..., init=...)``.
    """

    data: str
    out: str
    arch: str | None = None  # resnet-small, or the init_from model's (see ebmlens.train._base)
    objective: Any = "pgd-at"
    threat_model: Literal["L2", "Linf"] = "L2"
    eps: float = 0.5
    attack_steps: int = 10
    attack_step_size: float | None = None
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = 0.25
    beta: float | None = None  # with a string objective only
    seed: int = 0
    device: str = "cpu"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    eval_n: int = 1000
    eval_steps: int = 10
    checkpoint_every: int = 100
    max_train_images: int | None = None
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    init_from: str | None = None  # a load_model spec to start from (its normalization replaces mean/std)
    ema: float | None = None  # decay of the weights' EMA (evaluated, saved and exported), e.g. 0.999
    log_every: int | None = None  # steps between intervals.json rows (and grids for DAT); None: epochs only
    grid_per_class: int = 4  # images per class in each interval grid

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", _as_objective(self.objective, self.beta))
        object.__setattr__(self, "beta", None)
        if self.init_from is not None:
            if not isinstance(self.init_from, str):
                raise TypeError(f"init_from must be a model spec such as 'ebmlens:cifar10-l2-small', got "
                                f"{type(self.init_from).__name__}")
            from ._base import base_arch

            object.__setattr__(self, "arch", base_arch(self.init_from, self.arch))
        elif self.arch is None:
            object.__setattr__(self, "arch", "resnet-small")
        if self.arch is not None:
            get_arch(self.arch)  # raises with choices
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1) such as 0.999, or None, got {self.ema}")
        if self.log_every is not None and not (isinstance(self.log_every, int) and self.log_every >= 1):
            raise ValueError(f"log_every must be an int >= 1 or None, got {self.log_every!r}")
        if not (isinstance(self.grid_per_class, int) and self.grid_per_class >= 0):
            raise ValueError(f"grid_per_class must be an int >= 0, got {self.grid_per_class!r}")
        object.__setattr__(self, "threat_model", parse_threat_model(self.threat_model))
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be > 0, got {self.eps}")
        for name in ("epochs", "batch_size", "attack_steps", "checkpoint_every", "eval_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {self.schedule!r}")
        size = getattr(self.objective, "buffer_size", None)
        if size is not None and size < self.batch_size:
            raise ValueError(f"buffer_size {size} is smaller than batch_size {self.batch_size}")

    @property
    def attack(self) -> O.AttackConfig:
        return O.AttackConfig(self.threat_model, float(self.eps), int(self.attack_steps), self.attack_step_size)

    @property
    def objective_name(self) -> str:
        return O.objective_name(self.objective)

    def to_dict(self) -> dict:
        """config.json: every field, the objective by name with its settings in the old flat keys
        (``beta``, ``buffer_size``, ``gamma``, ``sgld_*``, ``jem_init``; their defaults where the
        objective has none) and all of them under ``"objective_params"``."""
        obj = self.objective
        jem = obj if isinstance(obj, O.RobustJEM) else O.RobustJEM()
        d: dict = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "objective":
                v = O.objective_name(obj)
            elif f.name == "beta":
                v = float(getattr(obj, "beta", DEFAULT_BETA))
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d.update({k: O.objective_params(jem)[v] for k, v in JEM_FIELDS.items()})
        d["objective_params"] = O.objective_params(obj)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from :meth:`to_dict`'s output, an older config.json or a bundled model's
        ``training_config`` (flat keys read without a warning; unknown keys ignored)."""
        d = dict(d)
        params = d.pop("objective_params", None)
        legacy = {JEM_FIELDS[k]: d.pop(k) for k in list(d) if k in JEM_FIELDS}
        beta = d.pop("beta", None)
        name = d.get("objective", "pgd-at")
        if params is None:
            params = {**legacy, **({"beta": beta} if beta is not None else {})}
        d["objective"] = O.from_name(name, **params) if isinstance(name, str) else name
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _as_objective(objective, beta):
    """``objective`` as an object: a name with ``beta``, or an object."""
    if isinstance(objective, str):
        params = {"beta": beta} if beta is not None else {}
        if beta is not None and not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta must be >= 0, got {beta}")
        return O.from_name(objective, **params)
    if not (callable(objective) and callable(getattr(objective, "init_state", None))):
        raise TypeError(f"objective must be a name ({', '.join(sorted(O.OBJECTIVE_TYPES))}) or an objective object "
                        f"with __call__ and init_state (ebmlens.train.objectives), got {type(objective).__name__}")
    if beta is not None:
        raise ValueError(f"TrainConfig(beta=...) applies to a named objective only; pass it to the objective "
                         f"object instead, e.g. {O.objective_name(objective)} -> {type(objective).__name__}(...)")
    return objective
