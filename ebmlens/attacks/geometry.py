"""Threat-model geometries: the shape of a step (Madry et al. 2018; the MadryLab ``attack_steps`` idea).

A geometry owns three maps, so PGD never changes class to change norm:

* ``random_start(x0, generator)`` - a random point of the ball around ``x0``;
* ``step(x, grad, size)``        - move *up* ``grad`` by ``size`` in the geometry's norm
  (L2: ``x + size * g / ||g||_2``; Linf: ``x + size * sign(g)``; Unconstrained: as L2, no ball);
* ``project(x, x0)``              - back onto ``{x : ||x - x0|| <= eps}``.

Threat-model names are parsed here, once (:func:`parse_threat_model`); every caller that takes a
user's ``"l2"`` / ``"Linf"`` string goes through it. A model's default geometry is resolved here,
once (:meth:`Geometry.for_model`), for the Python API and the CLI alike.

>>> import torch
>>> x0 = torch.zeros(1, 1, 2, 2)
>>> LinfBall(0.1).step(x0, torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]]), 0.5).flatten().tolist()
[0.5, -0.5, 0.0, 0.5]
>>> LinfBall(0.25).project(x0 + 0.5, x0).flatten().tolist()
[0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

from .. import rng

__all__ = ["Geometry", "L2Ball", "LinfBall", "Unconstrained", "make_geometry", "ThreatModel", "parse_threat_model",
           "geometry_for_model", "DEFAULT_EPS"]

#: The default eps of a threat model when the model records none (or another geometry is asked for).
DEFAULT_EPS = {"L2": 0.5, "Linf": 8 / 255}


@runtime_checkable
class Geometry(Protocol):
    """How a threat model steps and projects; ``threat_model`` names it (``"L2"``, ``"Linf"``, ``"none"``)."""

    threat_model: ClassVar[str]

    @staticmethod
    def for_model(model: Any = None, threat_model: str | None = None, eps: float | None = None) -> "L2Ball | LinfBall":
        """The one resolver of a model's attack geometry (see :func:`geometry_for_model`)."""
        return geometry_for_model(model, threat_model, eps)

    def random_start(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor: ...

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor: ...


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    """``g / (||g||_2 + 1e-10)`` per sample: the robustness library's L2 step (Santurkar et al.), so a
    targeted L2 PGD step equals theirs bit for bit; a zero gradient gives a zero step."""
    norm = g.flatten(1).norm(dim=1) + 1e-10
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _check_eps(name: str, eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"{name} expects eps > 0, got {eps!r}")


class _Ball:
    """What our geometries share: :meth:`Geometry.for_model` (they implement the protocol by name)."""

    threat_model: ClassVar[str]

    @staticmethod
    def for_model(model: Any = None, threat_model: str | None = None, eps: float | None = None) -> "L2Ball | LinfBall":
        """The one resolver of a model's attack geometry (see :func:`geometry_for_model`)."""
        return geometry_for_model(model, threat_model, eps)


@dataclass(frozen=True)
class L2Ball(_Ball):
    """``{x : ||x - x0||_2 <= eps}`` (per image, over all pixels).

    >>> import torch
    >>> x0 = torch.zeros(2, 3, 4, 4)
    >>> x = L2Ball(eps=1.0).project(x0 + 5.0, x0)
    >>> bool(torch.allclose(x.flatten(1).norm(dim=1), torch.ones(2)))
    True
    """

    eps: float
    threat_model: ClassVar[str] = "L2"

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
class LinfBall(_Ball):
    """``{x : max |x - x0| <= eps}``."""

    eps: float
    threat_model: ClassVar[str] = "Linf"

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
class Unconstrained(_Ball):
    """No ball: normalized L2 steps (as DAT's sampler), projection is the identity."""

    threat_model: ClassVar[str] = "none"

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

    >>> parse_threat_model("linf"), parse_threat_model("L2"), parse_threat_model("Unconstrained", allow_none=True)
    ('Linf', 'L2', 'none')
    """
    tm = _THREAT_MODELS.get(str(threat_model).strip().lower()) if isinstance(threat_model, str) else None
    if tm is None or (tm == "none" and not allow_none):
        choices = "'L2', 'Linf' or 'none'" if allow_none else "'L2' or 'Linf'"
        raise ValueError(f"unknown threat model {threat_model!r}; choose {choices}")
    return tm  # type: ignore[return-value]


def make_geometry(threat_model: str, eps: float | None) -> Geometry:
    """``"L2"``/``"Linf"``/``"none"`` and an eps -> a geometry (case-insensitive).

    >>> make_geometry("linf", 8 / 255) == LinfBall(8 / 255), make_geometry("none", None)
    (True, Unconstrained())
    """
    tm = parse_threat_model(threat_model, allow_none=True)
    if tm == "L2":
        return L2Ball(float(eps))  # type: ignore[arg-type]
    if tm == "Linf":
        return LinfBall(float(eps))  # type: ignore[arg-type]
    return Unconstrained()


def geometry_for_model(model: Any = None, threat_model: str | None = None,
                       eps: float | None = None) -> L2Ball | LinfBall:
    """A model's attack geometry: the one resolver of defaults, for the Python API and the CLI.

    * threat model: ``threat_model``, else the model's own (``model.threat_model`` when L2/Linf), else Linf;
    * eps: ``eps``, else the model's own ``model.eps`` when the threat model is the model's own, else
      :data:`DEFAULT_EPS` (0.5 for L2, 8/255 for Linf).

    Refused with the fix: eps <= 0; a Linf eps above 1 (every image in [0, 1] lies within it: eps is in
    [0, 1] pixel units, 8/255 not 8); an L2 eps above the input's diameter ``sqrt(C*H*W)`` (when the
    model's ``input_shape`` is known). ``model=None`` resolves without a model (the CLI checks options
    before loading one).

    >>> geometry_for_model(None, "l2", None), geometry_for_model(None, None, 0.1)
    (L2Ball(eps=0.5), LinfBall(eps=0.1))
    """
    raw = getattr(model, "threat_model", None)
    own = _THREAT_MODELS.get(raw.strip().lower()) if isinstance(raw, str) else None
    own = own if own in ("L2", "Linf") else None
    tm = parse_threat_model(threat_model) if threat_model is not None else (own or "Linf")
    if eps is None:
        model_eps = getattr(model, "eps", None)
        eps = model_eps if (model_eps and tm == own) else DEFAULT_EPS[tm]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] pixel units, e.g. 0.5 or 8/255), got {eps!r}")
    eps = float(eps)
    if tm == "Linf" and eps > 1:
        raise ValueError(f"a Linf eps of {eps:g} is above 1, so the ball holds every image in [0, 1]; eps is in "
                         f"[0, 1] pixel units: write {eps:g}/255 (e.g. 8/255), not {eps:g}")
    shape = getattr(model, "input_shape", None)
    if tm == "L2" and shape is not None:
        diameter = math.sqrt(math.prod(int(s) for s in shape))
        if eps > diameter:
            raise ValueError(f"an L2 eps of {eps:g} is above the diameter of the image space ({diameter:.4g} = "
                             f"sqrt(C*H*W) for input_shape {tuple(shape)}), so the ball holds every image; eps is in "
                             "[0, 1] pixel units: use e.g. 0.5")
    return L2Ball(eps) if tm == "L2" else LinfBall(eps)
