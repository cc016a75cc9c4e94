"""The attack registry: one name -> one configured attack (ours or torchattacks').

``get_attack("pgd-targeted", threat_model="L2", eps=0.5)`` returns an :class:`Attack`, a frozen
dataclass that holds hyper-parameters and no model. Calling it runs the attack:
``attack(model, x, y, target=None, generator=None) -> x_adv``. Targets are data: a targeted attack
receives the target labels as a tensor (see :func:`choose_targets`), never a mode set on an object.
Our own PGD (:func:`ebmlens.attacks.pgd`) is always available; torchattacks' attacks need the
``attacks`` extra and run through the adapter (``_torchattacks``), which keeps them from reseeding
the caller's global random state or printing.

>>> a = get_attack("pgd", threat_model="linf", eps=8 / 255)
>>> a.name, a.threat_model, a.targeted, dict(a.options)["steps"]
('pgd', 'Linf', False, 10)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch

from .. import rng
from .._validate import validate_inputs
from . import _torchattacks
from .core import default_step_size, pgd
from .geometry import make_geometry, parse_threat_model

__all__ = ["AttackSpec", "Attack", "ATTACKS", "TargetChoice", "get_attack", "list_attacks",
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
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_TA: Literal["torchattacks"] = "torchattacks"
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
               own_targets=True, torchattacks_class="APGDT", defaults={"steps": 10},
               aliases=("apgdt", "apgd-targeted")),
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
        cls = _torchattacks.check_class(name.strip()[3:])
        return AttackSpec(f"ta:{cls}", False, ("L2", "Linf"), _TA, f"torchattacks {cls} (generic)",
                          torchattacks_class=cls)
    if key in _ALIASES:
        return ATTACKS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=3)
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
    options: Mapping[str, Any] = field(default_factory=dict)

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
        k = getattr(model, "num_classes", None)
        x, labels = validate_inputs(model if hasattr(model, "input_shape") else None, x, y, num_classes=k,
                                    scan=False, allow_other_size=getattr(model, "allow_other_size", False))
        if target is not None:
            target = validate_inputs(None, x, target, scan=False, label_name="target")[1]
        if self.spec.backend == "ebmlens":
            return self._run_ours(model, x, labels, target, generator)  # pgd refuses y=None where it needs y
        if labels is None:
            raise TypeError(f"attack {self.name!r} needs y: (N,) true labels")
        return self._run_torchattacks(model, x, labels, target, generator)

    def _run_ours(self, model, x, y, target, generator) -> torch.Tensor:
        opts = dict(self.options)
        steps = int(opts.pop("steps"))
        step_size = opts.pop("step_size", None) or default_step_size(self.eps, steps)
        geom = make_geometry(self.threat_model, self.eps)
        return pgd(model, x, target if self.targeted else y, geom, steps, float(step_size),
                   targeted=self.targeted, generator=generator, **opts)

    def _run_torchattacks(self, model, x, y, target, generator) -> torch.Tensor:
        cls = self.spec.torchattacks_class
        if cls is None:
            raise ValueError(f"attack {self.name!r} has backend 'torchattacks' but no torchattacks_class")
        return _torchattacks.run(cls, model, x, y, threat_model=self.threat_model,
                                 eps=self.eps, options=self.options, target=target, generator=generator,
                                 name=self.name)


_TA_CANNOT: dict[str, str] = {
    "tpgd": "TPGD maximizes KL to the natural prediction: it has no targeted mode in torchattacks",
    "apgd-ce": "torchattacks' APGD is untargeted only; use 'apgd-t' (APGD-T picks its own targets) or 'pgd-targeted'",
    "apgd-dlr": "torchattacks' APGD is untargeted only; use 'apgd-t' or 'pgd-targeted'",
}


def get_attack(name: str, *, threat_model: str = "Linf", eps: float, **options: Any) -> Attack:
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
        _torchattacks.require()
    return Attack(spec, tm, float(eps), opts)
