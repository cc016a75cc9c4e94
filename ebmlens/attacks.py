"""Threat-model geometries and the projected-gradient core shared by sampling, analysis and training.

A geometry owns the shape of a step (Madry et al. 2018; the MadryLab ``attack_steps`` idea):

* ``random_start(x0, generator)`` - a random point of the ball around ``x0``;
* ``step(x, grad, size)``        - move *up* ``grad`` by ``size`` in the geometry's norm
  (L2: ``x + size * g / ||g||_2``; Linf: ``x + size * sign(g)``; Unconstrained: as L2, no ball);
* ``project(x, x0)``              - back onto ``{x : ||x - x0|| <= eps}``.

:func:`pgd` is the one loop over them. Targeting is a sign: an untargeted attack ascends the loss
of the true label; a targeted one descends the loss of the target. Images stay in [0, 1].

>>> import torch
>>> ball = L2Ball(eps=1.0)
>>> x0 = torch.zeros(2, 3, 4, 4)
>>> x = ball.project(x0 + 5.0, x0)
>>> bool(torch.allclose(x.flatten(1).norm(dim=1), torch.ones(2)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from . import rng

__all__ = [
    "Geometry", "L2Ball", "LinfBall", "Unconstrained", "make_geometry", "pgd", "attack_loss", "PGDLoss",
    "ThreatModel", "parse_threat_model", "default_step_size",
]

PGDLoss = Literal["ce", "joint", "marginal"]


@runtime_checkable
class Geometry(Protocol):
    """How a threat model steps and projects."""

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor: ...

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor: ...


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _check_eps(name: str, eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"{name} expects eps > 0, got {eps!r}")


@dataclass(frozen=True)
class L2Ball:
    """``{x : ||x - x0||_2 <= eps}`` (per image, over all pixels)."""

    eps: float

    def __post_init__(self) -> None:
        _check_eps("L2Ball", self.eps)

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        n = x0.shape[0]
        d = _l2_normalize(rng.randn(generator, n, x0.shape[1:], device=x0.device, dtype=x0.dtype))
        r = rng.rand(generator, n, (), device=x0.device, dtype=x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return x0 + self.eps * r * d

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * _l2_normalize(grad)

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        delta = x - x0
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = torch.clamp(self.eps / norm, max=1.0).view(-1, *([1] * (x.dim() - 1)))
        return x0 + delta * factor


@dataclass(frozen=True)
class LinfBall:
    """``{x : max |x - x0| <= eps}``."""

    eps: float

    def __post_init__(self) -> None:
        _check_eps("LinfBall", self.eps)

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        u = rng.rand(generator, x0.shape[0], x0.shape[1:], device=x0.device, dtype=x0.dtype)
        return x0 + self.eps * (2 * u - 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * grad.sign()

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return torch.max(torch.min(x, x0 + self.eps), x0 - self.eps)


@dataclass(frozen=True)
class Unconstrained:
    """No ball: normalized L2 steps (as DAT's sampler), projection is the identity."""

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor:
        return x0.clone()

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        return x + size * _l2_normalize(grad)

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x


ThreatModel = Literal["L2", "Linf", "none"]
_THREAT_MODELS = {"l2": "L2", "linf": "Linf", "l_inf": "Linf", "inf": "Linf", "none": "none", "unconstrained": "none"}


def parse_threat_model(threat_model: str, *, allow_none: bool = False) -> ThreatModel:
    """The one threat-model parser: ``"L2"`` / ``"Linf"`` (and ``"none"`` when ``allow_none``), any case;
    aliases ``l_inf``, ``inf``, ``unconstrained``.

    >>> parse_threat_model("linf"), parse_threat_model("L2")
    ('Linf', 'L2')
    """
    tm = _THREAT_MODELS.get(str(threat_model).strip().lower()) if isinstance(threat_model, str) else None
    if tm is None or (tm == "none" and not allow_none):
        choices = "'L2', 'Linf' or 'none'" if allow_none else "'L2' or 'Linf'"
        raise ValueError(f"unknown threat model {threat_model!r}; choose {choices}")
    return tm  # type: ignore[return-value]


def default_step_size(eps: float, steps: int) -> float:
    """The one default PGD step: ``2.5 * eps / steps`` (Madry et al. 2018), so ``steps`` steps can
    cross the ball and come back."""
    return 2.5 * float(eps) / max(int(steps), 1)


def make_geometry(threat_model: str, eps: float | None) -> Geometry:
    """``"L2"``/``"Linf"``/``"none"`` and an eps -> a geometry (case-insensitive)."""
    tm = parse_threat_model(threat_model, allow_none=True)
    if tm == "L2":
        return L2Ball(float(eps))  # type: ignore[arg-type]
    if tm == "Linf":
        return LinfBall(float(eps))  # type: ignore[arg-type]
    return Unconstrained()


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: PGDLoss, model=None) -> torch.Tensor:
    """Per-sample loss that PGD ascends (untargeted, y = true label) or descends (targeted, y = target).

    * ``"ce"``: cross-entropy ``-log p(y|x)`` = ``E(x, y) - E(x)``;
    * ``"joint"``: ``E(x, y) = -f(x)[y]``;
    * ``"marginal"``: ``E(x)`` (``y`` unused).
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


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: Geometry,
    steps: int,
    step_size: float,
    *,
    loss: PGDLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "ce",
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
        step_size: step length in the geometry's norm (> 0).
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
    if steps < 0:
        raise ValueError(f"pgd steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"pgd step_size must be > 0, got {step_size}")
    loss_fn = loss if callable(loss) else (lambda lg, t: attack_loss(lg, t, loss, model))  # type: ignore[arg-type]
    sign = -1.0 if targeted else 1.0
    x0 = (x if x0 is None else x0).detach()
    xa = geometry.random_start(x0, generator) if random_start else x.detach().clone()
    if clamp is not None:
        xa = xa.clamp(*clamp)
    best_x = xa.clone() if keep_best else None
    best_l = None
    for i in range(steps):
        with torch.enable_grad():
            xg = xa.detach().requires_grad_(True)
            lval = loss_fn(model(xg), y)
            (grad,) = torch.autograd.grad(lval.sum(), xg)
        lval = lval.detach()
        if callback is not None:
            callback(i, lval)
        if keep_best:
            score = sign * lval  # higher is better for the attacker
            better = score > best_l if best_l is not None else torch.ones_like(score, dtype=torch.bool)
            best_l = torch.where(better, score, best_l) if best_l is not None else score
            best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xa, best_x)
        xa = geometry.project(geometry.step(xa, sign * grad, step_size), x0)
        if clamp is not None:
            xa = xa.clamp(*clamp)
    xa = xa.detach()
    if keep_best and steps > 0:
        with torch.no_grad():
            score = sign * loss_fn(model(xa), y).float()
        better = score > best_l
        xa = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xa, best_x)
    return xa


# ============================================================================================
# Attack registry for analysis: one name -> one configured attack (ours or torchattacks').
# ============================================================================================
#
# ``get_attack("pgd-targeted", threat_model="L2", eps=0.5)`` returns an :class:`Attack`, a frozen
# dataclass that holds hyper-parameters and no model. Calling it runs the attack:
# ``attack(model, x, y, target=None, generator=None) -> x_adv``. Targets are data: a targeted attack
# receives the target labels as a tensor (see :func:`choose_targets`), never a mode set on an object.
# Our own PGD is always available; torchattacks' attacks need the ``attacks`` extra and run inside
# ``torch.random.fork_rng`` with their printing captured, so they neither reseed the caller's global
# random state nor print.

import contextlib as _contextlib
import difflib as _difflib
import io as _io
from dataclasses import field as _field
import logging as _logging
from typing import Any as _Any, Mapping as _Mapping

log = _logging.getLogger(__name__)
__all__ += ["AttackSpec", "Attack", "ATTACKS", "TargetChoice", "get_attack", "list_attacks",
            "resolve_attack_name", "choose_targets"]

TargetChoice = Literal["random", "least-likely", "given"]


@dataclass(frozen=True)
class AttackSpec:
    """A registry entry: what an attack name means.

    Attributes:
        name: canonical name (``pgd``, ``apgd-ce``, ...).
        targeted: ``True`` when the attack drives inputs towards a target class.
        own_targets: the attack picks its target classes itself (APGD-T, FAB-T): it takes no
            target tensor, and the report's ``y_adv`` is the label predicted on its output.
        threat_models: the threat models it supports (``"L2"``, ``"Linf"``).
        backend: ``"ebmlens"`` (always available) or ``"torchattacks"`` (``attacks`` extra).
        torchattacks_class: the torchattacks class it builds, if any.
        bounded: ``False`` for attacks that do not keep inputs inside the eps-ball (CW).
        defaults: default options (steps, loss, ...), overridable through ``get_attack``.
        description: one line for ``ebmlens energy --list-attacks``.
        aliases: other names that resolve to this entry.
    """

    name: str
    targeted: bool
    threat_models: tuple[str, ...]
    backend: Literal["ebmlens", "torchattacks"]
    description: str
    own_targets: bool = False
    torchattacks_class: str | None = None
    bounded: bool = True
    defaults: _Mapping[str, _Any] = _field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_TA = "torchattacks"
ATTACKS: dict[str, AttackSpec] = {s.name: s for s in (
    AttackSpec("pgd", False, ("L2", "Linf"), "ebmlens",
               "our PGD, untargeted: ascend CE of the true label (10 steps, step 2.5*eps/steps)",
               defaults={"steps": 10, "loss": "ce", "random_start": False},
               aliases=("pgd-untargeted", "untargeted")),
    AttackSpec("pgd-targeted", True, ("L2", "Linf"), "ebmlens",
               "our PGD, targeted: descend CE of the target class (10 steps, step 2.5*eps/steps)",
               defaults={"steps": 10, "loss": "ce", "random_start": False},
               aliases=("targeted-pgd", "pgd-t", "targeted")),
    AttackSpec("ta-pgd", False, ("L2", "Linf"), _TA, "torchattacks PGD / PGDL2, untargeted (random start)",
               torchattacks_class="PGD", defaults={"steps": 10}),
    AttackSpec("ta-pgd-targeted", True, ("L2", "Linf"), _TA, "torchattacks PGD / PGDL2, targeted",
               torchattacks_class="PGD", defaults={"steps": 10}),
    AttackSpec("tpgd", False, ("Linf",), _TA, "torchattacks TPGD: PGD on KL(p(.|x) || p(.|x')) (TRADES' attack)",
               torchattacks_class="TPGD", defaults={"steps": 10}, aliases=("trades-pgd",)),
    AttackSpec("apgd-ce", False, ("L2", "Linf"), _TA, "torchattacks APGD with CE loss (Croce & Hein 2020)",
               torchattacks_class="APGD", defaults={"steps": 10, "loss": "ce"}, aliases=("apgd",)),
    AttackSpec("apgd-dlr", False, ("L2", "Linf"), _TA, "torchattacks APGD with DLR loss",
               torchattacks_class="APGD", defaults={"steps": 10, "loss": "dlr"}),
    AttackSpec("apgd-t", True, ("L2", "Linf"), _TA,
               "torchattacks APGD-T: targeted DLR over the top-9 classes, which it picks itself",
               own_targets=True, torchattacks_class="APGDT", defaults={"steps": 10}, aliases=("apgdt", "apgd-targeted")),
    AttackSpec("fab", False, ("L2", "Linf"), _TA, "torchattacks FAB, untargeted (minimal perturbation)",
               torchattacks_class="FAB", defaults={"steps": 10}),
    AttackSpec("fab-targeted", True, ("L2", "Linf"), _TA, "torchattacks FAB towards a given target class",
               torchattacks_class="FAB", defaults={"steps": 10}),
    AttackSpec("fab-t", True, ("L2", "Linf"), _TA, "torchattacks FAB multi-targeted (top-9 classes, picked itself)",
               own_targets=True, torchattacks_class="FAB", defaults={"steps": 10, "multi_targeted": True}),
    AttackSpec("square", False, ("L2", "Linf"), _TA, "torchattacks Square (score-based, no gradients), untargeted",
               torchattacks_class="Square", defaults={"n_queries": 1000}),
    AttackSpec("square-targeted", True, ("L2", "Linf"), _TA, "torchattacks Square towards a target class",
               torchattacks_class="Square", defaults={"n_queries": 1000}),
    AttackSpec("cw", False, ("L2", "Linf"), _TA, "torchattacks CW-L2, untargeted; unbounded: eps is not enforced",
               torchattacks_class="CW", bounded=False, defaults={"steps": 50}, aliases=("cw-l2",)),
    AttackSpec("cw-targeted", True, ("L2", "Linf"), _TA, "torchattacks CW-L2 towards a target class; unbounded",
               torchattacks_class="CW", bounded=False, defaults={"steps": 50}),
)}
_ALIASES: dict[str, str] = {a: s.name for s in ATTACKS.values() for a in (s.name, *s.aliases)}


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("this attack needs torchattacks: pip install 'ebmlens[attacks]' "
                          "(our own 'pgd' and 'pgd-targeted' need nothing extra)") from e
    return torchattacks


def list_attacks() -> list[AttackSpec]:
    """Every registered attack, ours first; ``ta:<Class>`` reaches any other torchattacks class."""
    return sorted(ATTACKS.values(), key=lambda s: (s.backend != "ebmlens", s.name))


def resolve_attack_name(name: str) -> AttackSpec:
    """A name or alias (case-insensitive) -> its :class:`AttackSpec`; ``ta:<Class>`` -> a generic
    untargeted torchattacks entry. Unknown names fail with the choices and close matches."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"attack name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key.startswith("ta:"):
        cls = name.strip()[3:]
        ta = _torchattacks()
        if not cls or not isinstance(getattr(ta, cls, None), type):
            close = _difflib.get_close_matches(cls, [c for c in dir(ta) if c[:1].isupper()], n=3)
            raise ValueError(f"torchattacks has no attack class {cls!r}" + (f"; did you mean {close}?" if close else ""))
        return AttackSpec(f"ta:{cls}", False, ("L2", "Linf"), _TA, f"torchattacks {cls} (generic)",
                          torchattacks_class=cls)
    if key in _ALIASES:
        return ATTACKS[_ALIASES[key]]
    close = _difflib.get_close_matches(key, list(_ALIASES), n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ValueError(f"unknown attack {name!r}{hint}; choose one of {', '.join(sorted(ATTACKS))}, "
                     "or 'ta:<Class>' for any torchattacks class")


def choose_targets(logits: torch.Tensor, y: torch.Tensor, how: TargetChoice = "random",
                   generator: rng.GeneratorLike = None, *, given: torch.Tensor | None = None) -> torch.Tensor:
    """Target classes for a targeted attack, never equal to ``y``.

    Args:
        logits: ``(N, K)`` logits on the natural inputs (used by ``"least-likely"``).
        y: ``(N,)`` true labels.
        how: ``"random"`` (uniform over the K-1 other classes, drawn from ``generator``),
            ``"least-likely"`` (argmin of the logits among the other classes) or ``"given"``.
        given: ``(N,)`` targets when ``how == "given"``.

    Returns:
        ``(N,)`` long tensor on ``y``'s device.
    """
    n, k = logits.shape
    if how == "random":
        r = rng.randint(generator, n, k - 1, device=y.device)
        return r + (r >= y).long()  # skip the true class
    if how == "least-likely":
        masked = logits.detach().float().clone()
        masked[torch.arange(n, device=masked.device), y] = float("inf")
        return masked.argmin(1).to(y.device)
    if how == "given":
        if given is None:
            raise ValueError("target='given' needs the targets: pass targets=<(N,) tensor of class indices>")
        t = torch.as_tensor(given, device=y.device).long()
        if t.shape != y.shape:
            raise ValueError(f"given targets have shape {tuple(t.shape)}, expected {tuple(y.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(f"given targets must be class indices in [0, {k - 1}], got values up to {int(t.max())}")
        return t
    raise ValueError(f"unknown target choice {how!r}; choose 'random', 'least-likely' or 'given'")


@dataclass(frozen=True)
class Attack:
    """A configured attack: ``attack(model, x, y, target=None, generator=None) -> x_adv``.

    Built by :func:`get_attack`; holds hyper-parameters, no model.

    Args (of the call):
        model: an :class:`~ebmlens.EnergyModel` (or any module mapping [0, 1] images to logits).
        x: ``(N, C, H, W)`` natural images in [0, 1].
        y: ``(N,)`` true labels.
        target: ``(N,)`` target labels for targeted attacks that take them (``spec.targeted`` and
            not ``spec.own_targets``); must be ``None`` otherwise.
        generator: random source (random starts; the seed handed to torchattacks).

    Returns:
        ``(N, C, H, W)`` adversarial images in [0, 1], detached.
    """

    spec: AttackSpec
    threat_model: str
    eps: float
    options: _Mapping[str, _Any] = _field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def targeted(self) -> bool:
        return self.spec.targeted

    @property
    def needs_target(self) -> bool:
        return self.spec.targeted and not self.spec.own_targets

    def describe(self) -> dict:
        return {"name": self.spec.name, "backend": self.spec.backend, "targeted": self.spec.targeted,
                "own_targets": self.spec.own_targets, "threat_model": self.threat_model, "eps": self.eps,
                "bounded": self.spec.bounded, "options": dict(self.options)}

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
                 generator: rng.GeneratorLike = None) -> torch.Tensor:
        if self.needs_target and target is None:
            raise ValueError(f"attack {self.name!r} is targeted: pass target=<(N,) labels> "
                             "(see ebmlens.attacks.choose_targets)")
        if not self.needs_target and target is not None:
            raise ValueError(f"attack {self.name!r} takes no target"
                             + (" (it picks its target classes itself)" if self.spec.own_targets else ""))
        if self.spec.backend == "ebmlens":
            return self._run_ours(model, x, y, target, generator)
        return self._run_torchattacks(model, x, y, target, generator)

    def _run_ours(self, model, x, y, target, generator) -> torch.Tensor:
        opts = dict(self.options)
        steps = int(opts.pop("steps"))
        step_size = opts.pop("step_size", None) or default_step_size(self.eps, steps)
        geom = make_geometry(self.threat_model, self.eps)
        return pgd(model, x, target if self.targeted else y, geom, steps, float(step_size),
                   targeted=self.targeted, generator=generator, **opts)

    def _ta_object(self, ta, model, seed: int):
        cls_name = self.spec.torchattacks_class
        opts = dict(self.options)
        if cls_name == "PGD" and self.threat_model == "L2":
            cls_name = "PGDL2"
        cls = getattr(ta, cls_name)
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if "eps" in params:
            opts.setdefault("eps", self.eps)
        if "norm" in params:
            opts.setdefault("norm", self.threat_model)
        if "alpha" in params and "steps" in params:
            opts.setdefault("alpha", default_step_size(self.eps, int(opts.get("steps", 10))))
        if "seed" in params:
            opts.setdefault("seed", seed)
        if "n_classes" in params:
            opts.setdefault("n_classes", int(getattr(model, "num_classes", 10)))
        if "step_size" in opts and "alpha" in params:
            opts["alpha"] = opts.pop("step_size")
        unknown = [k for k in opts if k not in params]
        if unknown:
            raise ValueError(f"torchattacks {cls_name} has no option {unknown}; it takes "
                             f"{[p for p in params if p not in ('self', 'model')]}")
        return cls(model, **opts)

    def _run_torchattacks(self, model, x, y, target, generator) -> torch.Tensor:
        ta = _torchattacks()
        # one seed drawn from the caller's generator (0 without one: the global RNG is never consumed)
        seed = int(rng.randint(generator, x.shape[0], 2**31 - 1)[0]) if (generator is not None and x.shape[0]) else 0
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        sink = _io.StringIO()
        with torch.random.fork_rng(devices=devices), _contextlib.redirect_stdout(sink):
            torch.manual_seed(seed)  # inside the fork: the attack's own draws follow our seed, the caller's state is restored
            atk = self._ta_object(ta, model, seed)
            if self.needs_target:
                if "targeted" not in atk.supported_mode:  # pragma: no cover - registry entries are checked
                    raise ValueError(f"torchattacks {type(atk).__name__} cannot run targeted")
                fixed = target.to(x.device).long()
                atk.set_mode_targeted_by_function(lambda _inputs, _labels: fixed, quiet=True)
            x_adv = atk(x.detach(), y.to(x.device))
        if sink.getvalue().strip():
            log.debug("torchattacks %s printed: %s", self.name, sink.getvalue().strip()[:500])
        return x_adv.detach().to(x.dtype)


_TA_CANNOT: dict[str, str] = {
    "tpgd": "TPGD maximizes KL to the natural prediction: it has no targeted mode in torchattacks",
    "apgd-ce": "torchattacks' APGD is untargeted only; use 'apgd-t' (APGD-T picks its own targets) or 'pgd-targeted'",
    "apgd-dlr": "torchattacks' APGD is untargeted only; use 'apgd-t' or 'pgd-targeted'",
}


def get_attack(name: str, *, threat_model: str = "Linf", eps: float, **options: _Any) -> Attack:
    """Build a registered attack by name.

    Args:
        name: a registry name or alias (see :func:`list_attacks`), or ``"ta:<Class>"`` for any
            torchattacks class (untargeted, called as ``Class(model, eps=..., norm=..., **options)``).
            A ``"+targeted"`` suffix asks for the targeted mode of an untargeted name and fails
            clearly where torchattacks has none (``apgd-ce+targeted``).
        threat_model: ``"L2"`` or ``"Linf"``.
        eps: radius in [0, 1] pixel units (> 0).
        **options: override the entry's defaults (``steps``, ``step_size``, ``random_start``,
            ``n_queries``, ``loss``...), passed to our PGD or to the torchattacks class.

    >>> get_attack("pgd-t", threat_model="L2", eps=0.5).name
    'pgd-targeted'
    """
    want_targeted = isinstance(name, str) and name.strip().lower().endswith("+targeted")
    base = name.strip()[: -len("+targeted")] if want_targeted else name
    spec = resolve_attack_name(base)
    if want_targeted and not spec.targeted:
        if spec.name in _TA_CANNOT:
            raise ValueError(f"attack {spec.name!r} cannot run targeted: {_TA_CANNOT[spec.name]}")
        cand = ATTACKS.get(f"{spec.name}-targeted")
        if cand is None:
            raise ValueError(f"attack {spec.name!r} has no targeted mode here; targeted attacks: "
                             f"{', '.join(s.name for s in ATTACKS.values() if s.targeted)}")
        spec = cand
    tm = parse_threat_model(threat_model)
    if tm not in spec.threat_models:
        raise ValueError(f"attack {spec.name!r} supports {', '.join(spec.threat_models)} only, not {tm}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] pixel units, e.g. 0.5 or 8/255), got {eps!r}")
    opts = {**dict(spec.defaults), **options}
    if spec.backend == "ebmlens":
        allowed = {"steps", "step_size", "loss", "random_start", "keep_best"}
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ValueError(f"attack {spec.name!r} has no option {bad}; it takes {sorted(allowed)}")
        if int(opts["steps"]) < 1:
            raise ValueError(f"attack steps must be >= 1, got {opts['steps']}")
        if opts.get("step_size") is not None and not float(opts["step_size"]) > 0:
            raise ValueError(f"attack step_size must be > 0, got {opts['step_size']}")
    else:
        _torchattacks()
    return Attack(spec, tm, float(eps), opts)
