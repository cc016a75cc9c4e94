"""Threat-model geometries, the projected-gradient core shared by sampling, analysis and training,
and the registry of attack names.

One small module each:

* :mod:`~ebmlens.attacks.geometry` - ``L2Ball``, ``LinfBall``, ``Unconstrained`` (``random_start``,
  ``step``, ``project``) and the one threat-model parser, :func:`parse_threat_model`;
* ``ebmlens/attacks/core.py`` - the PGD loop :func:`pgd` (with per-sample stopping, ``stop_at``, and a
  per-step ``callback(step, loss, logits=)``), its per-sample :func:`attack_loss` and the one default
  step rule, :func:`default_step_size`;
* :mod:`~ebmlens.attacks.registry` - attack names -> configured :class:`Attack` objects
  (:func:`get_attack`, :func:`list_attacks`, :func:`choose_targets`);
* ``_torchattacks`` - the adapter that runs torchattacks' attacks without touching the caller's
  global random state or printing (``attacks`` extra).

:func:`pgd` is the one PGD loop over the geometries (the TargetedPGD sampling stage, analysis and
training call it); its gradient pass is :func:`ebmlens.energy.input_grad`. Targeting is a sign: an
untargeted attack ascends the loss of the true label; a targeted one descends the loss of the target.
Images stay in [0, 1].

>>> import torch
>>> ball = L2Ball(eps=1.0)
>>> x0 = torch.zeros(2, 3, 4, 4)
>>> x = ball.project(x0 + 5.0, x0)
>>> bool(torch.allclose(x.flatten(1).norm(dim=1), torch.ones(2)))
True
"""

from __future__ import annotations

from .core import PGDLoss, attack_loss, default_step_size, pgd
from .geometry import Geometry, L2Ball, LinfBall, ThreatModel, Unconstrained, make_geometry, parse_threat_model
from .registry import (
    ATTACKS,
    Attack,
    AttackSpec,
    TargetChoice,
    choose_targets,
    get_attack,
    list_attacks,
    resolve_attack_name,
)

__all__ = [
    "Geometry", "L2Ball", "LinfBall", "Unconstrained", "make_geometry", "pgd", "attack_loss", "PGDLoss",
    "ThreatModel", "parse_threat_model", "default_step_size",
    "AttackSpec", "Attack", "ATTACKS", "TargetChoice", "get_attack", "list_attacks",
    "resolve_attack_name", "choose_targets",
]
