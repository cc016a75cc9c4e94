"""The torchattacks adapter: build a torchattacks object from our (threat model, eps, options) and
run it without side effects.

torchattacks seeds torch's global random state and prints; here every run happens inside
``torch.random.fork_rng`` (the caller's global state comes back unchanged) with ``stdout`` captured
and logged at DEBUG. The attack's own draws follow one seed taken from the caller's generator (0
without one: the global RNG is never consumed). Any torchattacks class is reachable as
``ta:<Class>`` (see :func:`check_class`). Needs the ``attacks`` extra.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import logging
from typing import Any, Mapping

import torch

from .. import rng
from .core import default_step_size

__all__ = ["require", "check_class", "build", "run"]

log = logging.getLogger(__name__)


def require():
    """The ``torchattacks`` module, or an ImportError that names the extra."""
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("this attack needs torchattacks: pip install 'ebmlens[attacks]' "
                          "(our own 'pgd' and 'pgd-targeted' need nothing extra)") from e
    return torchattacks


def check_class(cls: str) -> str:
    """``cls`` if torchattacks has an attack class of that name; else a ValueError with close matches."""
    ta = require()
    if not cls or not isinstance(getattr(ta, cls, None), type):
        close = difflib.get_close_matches(cls, [c for c in dir(ta) if c[:1].isupper()], n=3)
        raise ValueError(f"torchattacks has no attack class {cls!r}" + (f"; did you mean {close}?" if close else ""))
    return cls


def build(cls_name: str, model, threat_model: str, eps: float, options: Mapping[str, Any], seed: int):
    """``Class(model, eps=, norm=, alpha=, seed=, n_classes=, **options)``, filling only the
    parameters the class takes (``alpha`` defaults to :func:`default_step_size`; ``step_size`` is an
    alias of ``alpha``; ``PGD`` under L2 is ``PGDL2``). Unknown options fail with the class's own."""
    ta = require()
    opts = dict(options)
    if cls_name == "PGD" and threat_model == "L2":
        cls_name = "PGDL2"
    cls = getattr(ta, cls_name)
    params = inspect.signature(cls.__init__).parameters
    if "eps" in params:
        opts.setdefault("eps", eps)
    if "norm" in params:
        opts.setdefault("norm", threat_model)
    if "alpha" in params and "steps" in params:
        opts.setdefault("alpha", default_step_size(eps, int(opts.get("steps", 10))))
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


def run(cls_name: str, model, x: torch.Tensor, y: torch.Tensor, *, threat_model: str, eps: float,
        options: Mapping[str, Any], target: torch.Tensor | None = None, generator: rng.GeneratorLike = None,
        name: str = "") -> torch.Tensor:
    """Run torchattacks ``cls_name`` on ``x (N, C, H, W)`` in [0, 1]; ``target (N,)`` makes it targeted.

    Returns ``(N, C, H, W)`` adversarial images, detached, in ``x``'s dtype.
    """
    seed = int(rng.randint(generator, x.shape[0], 2**31 - 1)[0]) if (generator is not None and x.shape[0]) else 0
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    sink = io.StringIO()
    with torch.random.fork_rng(devices=devices), contextlib.redirect_stdout(sink):
        # inside the fork: the attack's own draws follow our seed, the caller's state is restored
        torch.manual_seed(seed)
        atk = build(cls_name, model, threat_model, eps, options, seed)
        if target is not None:
            if "targeted" not in atk.supported_mode:  # pragma: no cover - registry entries are checked
                raise ValueError(f"torchattacks {type(atk).__name__} cannot run targeted")
            fixed = target.to(x.device).long()
            atk.set_mode_targeted_by_function(lambda _inputs, _labels: fixed, quiet=True)
        x_adv = atk(x.detach(), y.to(x.device))
    if sink.getvalue().strip():
        log.debug("torchattacks %s printed: %s", name or cls_name, sink.getvalue().strip()[:500])
    return x_adv.detach().to(x.dtype)
