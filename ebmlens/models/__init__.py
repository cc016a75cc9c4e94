"""Where classifiers come from: one front door, ``load_model("source:name", ...)``.

Sources (timm's ``create_model`` idea, with a ``source:`` prefix):

* ``ebmlens:NAME``     - models that ship inside the package (:mod:`ebmlens.models.bundled`);
* ``robustbench:NAME`` - the RobustBench zoo, local-first (:mod:`ebmlens.models.robustbench`);
* ``timm:NAME``        - any timm model with local weights (:mod:`ebmlens.models.timm`);
* ``hf:ORG/NAME[@REV]`` - a timm-style model from the local Hugging Face cache (:mod:`ebmlens.models.hf`);
* ``file:PATH``        - a local checkpoint of any ``nn.Module`` (:mod:`ebmlens.models.file`);
  a bare path to an existing file means ``file:PATH``.

Every loader returns an :class:`~ebmlens.EnergyModel` carrying ``source``, ``name``,
``dataset`` and ``threat_model``. Users add their own source with :func:`register_source`.
Nothing here touches the network unless a loader is told ``download=True``.

>>> "ebmlens" in sources()
True
>>> parse_model_spec("robustbench:Carmon2019Unlabeled")
('robustbench', 'Carmon2019Unlabeled')
"""

from __future__ import annotations

import difflib
import importlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..energy import EnergyModel, validate_images, validate_labels

__all__ = [
    "load_model", "resolve_model", "list_models", "register_source", "sources", "parse_model_spec",
    "unknown_name_error",
    "normalization_check", "NormalizationCheck", "Source",
]

log = logging.getLogger(__name__)

ModelLoader = Callable[..., EnergyModel]
ModelLister = Callable[..., list]


@dataclass(frozen=True)
class Source:
    """A registered model source: ``loader(name, **kwargs) -> EnergyModel`` and an optional
    offline ``lister(**filters) -> list[str]`` of the names it can load."""

    name: str
    loader: ModelLoader
    lister: ModelLister | None = None


_SOURCES: dict[str, Source] = {}


def unknown_name_error(what: str, name: str, choices: Iterable[str], hint: str = "", *, show: int = 30) -> ValueError:
    """A ``ValueError`` naming ``name``, its close matches (difflib) and the choices."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    if not close:  # case-insensitive second chance: 'carmon2019unlabeled'
        low = {c.lower(): c for c in choices}
        close = [low[c] for c in difflib.get_close_matches(name.lower(), list(low), n=5, cutoff=0.6)]
    msg = f"unknown {what} {name!r}"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    if choices:
        shown = ", ".join(choices[:show]) + (f", ... ({len(choices)} in all)" if len(choices) > show else "")
        msg += f" Choices: {shown}."
    else:
        msg += " (no choices are available)."
    return ValueError(msg + (f" {hint}" if hint else ""))


def register_source(name: str, loader: ModelLoader, lister: ModelLister | None = None, *,
                    overwrite: bool = False) -> None:
    """Make ``load_model(f"{name}:X", **kw)`` call ``loader("X", **kw)``.

    Args:
        name: the prefix, letters/digits/``-``/``_`` (e.g. ``"mylab"``).
        loader: ``(name: str, **kwargs) -> EnergyModel``. Raise ``ValueError`` for unknown names
            (:func:`unknown_name_error` writes the message).
        lister: optional ``(**filters) -> list[str]``, offline, used by :func:`list_models`.
        overwrite: replace an existing source of that name (built-in ones included).

    Example (see ``docs/models.md``)::

        def load_mine(name, **kw):
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
            return ebmlens.EnergyModel(net, num_classes=10, source="mine", name=name)
        ebmlens.register_source("mine", load_mine, lambda: ["linear"])
        ebmlens.load_model("mine:linear")
    """
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ValueError(f"source name must be a non-empty word of letters, digits, '-' or '_', got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader for source {name!r} must be callable, got {type(loader).__name__}")
    if lister is not None and not callable(lister):
        raise TypeError(f"lister for source {name!r} must be callable or None, got {type(lister).__name__}")
    if name in _SOURCES and not overwrite:
        raise ValueError(f"model source {name!r} is already registered; pass overwrite=True to replace it")
    _SOURCES[name] = Source(name, loader, lister)


def sources() -> list[str]:
    """Names of the registered sources."""
    return sorted(_SOURCES)


def parse_model_spec(spec: str | Path) -> tuple[str, str]:
    """``"source:name"`` -> ``(source, name)``; an existing file path -> ``("file", path)``."""
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"model spec must be a string like 'ebmlens:cifar10-l2-small', got {spec!r}")
    source, sep, name = spec.partition(":")
    if sep and source in _SOURCES:
        if not name:
            raise ValueError(f"model spec {spec!r} names no model after '{source}:'")
        return source, name
    if Path(spec).expanduser().is_file():  # a bare path (also 'C:\\x.pt' on Windows)
        return "file", spec
    if not sep:
        raise ValueError(f"model spec {spec!r} has no source; write 'SOURCE:NAME' with SOURCE one of "
                         f"{', '.join(sources())} (e.g. 'ebmlens:cifar10-l2-small'), or give a path to an existing "
                         "file")
    raise unknown_name_error("model source", source, _SOURCES, f"(from model spec {spec!r})")


def load_model(spec: str | EnergyModel, *, device: str | torch.device | None = None,
               allow_other_size: bool | None = None, check_range: bool | None = None, **kwargs) -> EnergyModel:
    """Load a classifier as an :class:`~ebmlens.EnergyModel` from a ``source:name`` spec.

    Args:
        spec: ``"ebmlens:cifar10-l2-small"``, ``"robustbench:Carmon2019Unlabeled"``,
            ``"timm:resnet18.a1_in1k"``, ``"hf:timm/resnet18.a1_in1k"``, ``"file:runs/x/epoch_010.pt"``,
            or a path. An :class:`~ebmlens.EnergyModel` is returned as is (moved to ``device``).
        device: where to put the model (default: CPU, where it was loaded).
        allow_other_size, check_range: set on the returned model (see :class:`~ebmlens.EnergyModel`):
            accept other image sizes at its checked entry points / turn the pixel-range check off.
        **kwargs: the source's options (``dataset=``, ``threat_model=``, ``model_dir=``,
            ``checkpoint=``, ``arch=``, ``trust_checkpoint=`` ...); see each source module.

    Example (needs ``models/cifar10/Linf/Carmon2019Unlabeled.pt``)::

        import ebmlens
        m = ebmlens.load_model("robustbench:Carmon2019Unlabeled", threat_model="Linf", model_dir="models/")
    """
    if isinstance(spec, EnergyModel):
        if kwargs:
            raise TypeError(f"load_model got an EnergyModel and options {sorted(kwargs)}; options only apply to specs")
        return spec.to(device) if device is not None else spec
    source, name = parse_model_spec(spec)
    model = _SOURCES[source].loader(name, **kwargs)
    if not isinstance(model, EnergyModel):
        raise TypeError(f"the loader of source {source!r} returned {type(model).__name__}, not an EnergyModel")
    if model.source is None:
        model.source = source
    if model.name is None:
        model.name = name
    if allow_other_size is not None:
        model.allow_other_size = bool(allow_other_size)
    if check_range is not None:
        model.check_range = bool(check_range)
    model.eval()
    return model.to(device) if device is not None else model


#: loader options that only some sources take: :func:`resolve_model` routes them there.
_OPTION_SOURCES: dict[str, tuple[str, ...]] = {
    "model_dir": ("robustbench",), "dataset": ("robustbench",), "threat_model": ("robustbench", "hf"),
    "arch": ("file", "hf"), "trust_checkpoint": ("file", "robustbench", "timm", "hf"),
}


def resolve_model(model: str | Path | EnergyModel, *, device: str | torch.device | None = None,
                  **options) -> EnergyModel:
    """The one way from what a caller names to an :class:`~ebmlens.EnergyModel` (metrics, analysis, CLI).

    An EnergyModel is returned as is (moved to ``device``); a spec is loaded with :func:`load_model`.
    Options left at ``None`` or ``False`` are dropped, and ``model_dir`` / ``dataset`` /
    ``threat_model`` (robustbench, hf), ``arch`` (file, hf) and ``trust_checkpoint`` (file, robustbench,
    timm, hf) reach only the sources that take them, so a caller can hand over every option it has.

    >>> resolve_model("ebmlens:cifar10-l2-small", arch=None, model_dir="models").name
    'cifar10-l2-small'
    """
    if isinstance(model, EnergyModel):
        return model.to(device) if device is not None else model
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be an ebmlens.EnergyModel or a 'source:name' spec, got {type(model).__name__}; "
                        "wrap a plain classifier with ebmlens.EnergyModel(net, mean=..., std=..., num_classes=K)")
    source, _ = parse_model_spec(model)
    kwargs = {k: v for k, v in options.items()
              if v is not None and v is not False and source in _OPTION_SOURCES.get(k, (source,))}
    return load_model(str(model), device=device, **kwargs)


def list_models(source: str | None = None, **filters) -> list[str]:
    """Names that can be loaded, offline.

    ``list_models("robustbench", dataset="cifar10", threat_model="L2")`` lists bare names of
    one source; ``list_models()`` lists ``source:name`` for every source with a lister (sources
    whose optional dependency is missing are skipped, with a log message).
    """
    if source is None:
        if filters:
            raise TypeError(f"filters {sorted(filters)} need a source, e.g. list_models('robustbench', ...)")
        out: list[str] = []
        for s in sources():
            each = _SOURCES[s].lister
            if each is None:
                continue
            try:
                out += [f"{s}:{n}" for n in each()]
            except ImportError as e:
                log.info("skipping model source %s: %s", s, e)
        return out
    if source not in _SOURCES:
        raise unknown_name_error("model source", str(source), _SOURCES)
    lister = _SOURCES[source].lister
    if lister is None:
        raise ValueError(f"model source {source!r} cannot list its models (it was registered without a lister)")
    try:
        return list(lister(**filters))
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"list_models({source!r}) got unknown filters {sorted(filters)}: {e}") from None
        raise


# ---------------------------------------------------------------- built-in sources (lazy imports)
def _lazy(module: str, attr: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)(*args, **kwargs)

    call.__name__ = f"{module}.{attr}"
    call.__doc__ = f"Calls ebmlens.models.{module}.{attr} (imported on first use)."
    return call


register_source("ebmlens", _lazy("bundled", "load"), _lazy("bundled", "list_names"))
register_source("robustbench", _lazy("robustbench", "load"), _lazy("robustbench", "list_names"))
register_source("timm", _lazy("timm", "load"), _lazy("timm", "list_names"))
register_source("hf", _lazy("hf", "load"), _lazy("hf", "list_names"))
register_source("file", _lazy("file", "load"), None)


# ---------------------------------------------------------------- normalization check
_REFERENCE_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class NormalizationCheck:
    """Accuracy of a model on one labelled batch under three input normalizations.

    Attributes:
        configured: with the model's own ``(x - mean) / std`` (what ebmlens uses).
        none: with no normalization (the classifier sees [0, 1] pixels).
        doubled: with the normalization applied twice. When the model's own normalization is the
            identity (a classifier that normalizes itself, as RobustBench's do), "doubled" applies
            the dataset's usual statistics once on top, so the check still tests for an extra one.
        n: number of images.
        expected_accuracy: the accuracy the model claims, if given.
        ok: the configured normalization is best by ``margin`` and not far below the claim.
    """

    configured: float
    none: float
    doubled: float
    n: int
    expected_accuracy: float | None
    ok: bool


def normalization_check(model: EnergyModel, images: torch.Tensor, labels: torch.Tensor,
                        expected_accuracy: float | None = None, *, margin: float = 0.05,
                        tolerance: float = 0.15, batch_size: int = 256) -> NormalizationCheck:
    """Catch double or missing normalization on a small labelled batch, and warn.

    Compares top-1 accuracy of ``model`` with its configured normalization against none and
    doubled. A model fed wrongly normalized pixels is usually much less accurate, so the
    configured variant should win by a clear ``margin``; when it does not, or when its accuracy
    is more than ``tolerance`` below ``expected_accuracy``, a ``UserWarning`` explains the fix.

    Args:
        model: the :class:`~ebmlens.EnergyModel`.
        images: ``(N, C, H, W)`` float pixels in [0, 1] (a few hundred test images suffice).
        labels: ``(N,)`` true classes.
        expected_accuracy: the model's claimed clean accuracy in [0, 1], if known.
        margin: how much better the configured variant must be than the others.
        tolerance: how far below ``expected_accuracy`` is tolerated (small-batch noise).

    Returns:
        :class:`NormalizationCheck` with the three accuracies.
    """
    if not isinstance(model, EnergyModel):
        raise TypeError(f"normalization_check expects an EnergyModel, got {type(model).__name__}")
    x = validate_images(images, model, name="images")
    y = validate_labels(labels, model.num_classes, x.shape[0], name="labels")
    if x.shape[0] == 0:
        raise ValueError("normalization_check needs at least one labelled image")
    if expected_accuracy is not None and not (0.0 <= float(expected_accuracy) <= 1.0):
        raise ValueError(f"expected_accuracy must be a fraction in [0, 1], got {expected_accuracy}")
    mean, std = model.mean, model.std
    if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
        raise TypeError(f"normalization_check: the model's mean/std are {type(mean).__name__}/{type(std).__name__}, "
                        "not tensors; build it with ebmlens.EnergyModel(net, mean=..., std=...)")
    identity = bool(torch.all(mean == 0) and torch.all(std == 1))
    if identity:
        ref = _REFERENCE_STATS.get(str(model.dataset or "").lower(), _REFERENCE_STATS["imagenet"])
        c = mean.shape[1]
        m2 = torch.tensor(ref[0][:c] if c == 3 else [sum(ref[0]) / 3] * c).view(1, c, 1, 1)
        s2 = torch.tensor(ref[1][:c] if c == 3 else [sum(ref[1]) / 3] * c).view(1, c, 1, 1)
    else:
        m2, s2 = mean, std
    variants = {
        "configured": lambda t: (t - mean) / std,
        "none": lambda t: t,
        "doubled": lambda t: ((t - mean) / std - m2.to(t)) / s2.to(t),
    }
    correct = dict.fromkeys(variants, 0)
    dev = mean.device
    with model.mode("eval"), torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
            for k, fn in variants.items():
                correct[k] += int((model.classifier(fn(xb)).argmax(1) == yb).sum())
    n = int(x.shape[0])
    acc = {k: v / n for k, v in correct.items()}
    others = [acc["doubled"]] if identity else [acc["none"], acc["doubled"]]
    problems = []
    if acc["configured"] < max(others) + margin:
        best = max(variants, key=lambda k: acc[k])
        problems.append(f"accuracy on {n} images is {acc['configured']:.1%} with the model's normalization, "
                        f"{acc['none']:.1%} with none and {acc['doubled']:.1%} with it doubled "
                        f"(best: {best}); the configured mean/std may be wrong or applied twice")
    if expected_accuracy is not None and acc["configured"] < float(expected_accuracy) - tolerance:
        problems.append(f"accuracy {acc['configured']:.1%} is far below the expected {float(expected_accuracy):.1%}")
    if problems:
        warnings.warn(f"normalization_check({model.source}:{model.name}): " + "; ".join(problems) +
                      ". ebmlens models take [0, 1] pixels and normalize inside: pass mean=/std= when loading "
                      "a classifier that expects normalized input, and mean=(0,), std=(1,) for one that "
                      "normalizes itself.", stacklevel=2)
    return NormalizationCheck(configured=acc["configured"], none=acc["none"], doubled=acc["doubled"], n=n,
                              expected_accuracy=None if expected_accuracy is None else float(expected_accuracy),
                              ok=not problems)
