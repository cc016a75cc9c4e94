"""Architectures that ebmlens can build by name (for ``file:`` checkpoints and ``ebmlens train``).

``get_arch("resnet-small")`` returns a factory ``(num_classes) -> nn.Module``. Three kinds of names:

* a registered name (:data:`ARCHS`: ``resnet-small``, ``convnet-small``, or one added with
  :func:`register_arch`);
* ``source:name`` of a model source that builds architectures (:data:`ARCH_SOURCES`:
  ``timm:resnet18``, ``robustbench:Carmon2019Unlabeled``, ``ebmlens:cifar10-l2-small``): the
  source's own architecture, built without weights;
* ``"package.module:factory"``: a user's code, imported.

**What a file may name.** A checkpoint's metadata may only name the first two kinds:
:func:`arch_from_file` refuses ``module:factory`` *before* anything is imported (importing a
module runs its code) unless the user passes ``trust_checkpoint=True`` (CLI ``--trust-checkpoint``)
or names the architecture themselves (``arch=`` / ``--arch``).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from torch import nn

__all__ = ["ResNetSmall", "ConvNetSmall", "ARCHS", "ARCH_SOURCES", "get_arch", "register_arch", "arch_from_file",
           "is_safe_arch_name"]


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """conv(cin->w) then a residual conv(w->w): ``a = c1(x); out = a + c2(a)``."""

    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.c1 = _conv_bn(cin, w)
        self.c2 = _conv_bn(w, w)

    def forward(self, x):
        a = self.c1(x)
        return a + self.c2(a)


class ResNetSmall(nn.Module):
    """An 8-conv residual net for 32x32 inputs, ~1.2M parameters.

    Four stages of width ``(32, 64, 128, 256)`` at resolutions 32, 16, 8, 4, each two 3x3
    conv-BN-ReLU with a residual connection around the second, 2x2 max-pool between stages,
    global average pooling and a linear classifier. Expects normalized input.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256),
                 in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers.append(_Stage(cin, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class ConvNetSmall(nn.Module):
    """A 4-conv plain net (no residuals), fast enough for unit tests: widths (16, 32, 64, 64)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 64), in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers.append(_conv_bn(cin, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet-small": ResNetSmall,
    "convnet-small": ConvNetSmall,
}


def register_arch(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory(num_classes=...)`` available as ``--arch name``."""
    if not callable(factory):
        raise TypeError(f"arch factory for {name!r} must be callable, got {type(factory).__name__}")
    ARCHS[name] = factory


#: model sources that build an architecture from ``source:name`` without weights, as
#: ``(module of ebmlens.models, function name)``; the function takes the name and returns a factory.
ARCH_SOURCES: dict[str, tuple[str, str]] = {
    "timm": ("timm", "arch_factory"),
    "robustbench": ("robustbench", "arch_factory"),
    "ebmlens": ("bundled", "arch_factory"),
}


def _source_arch(spec: str) -> Callable[..., nn.Module] | None:
    """The factory of a ``source:name`` spec of :data:`ARCH_SOURCES`, else ``None`` (nothing imported)."""
    source, sep, name = spec.partition(":")
    if not sep or source not in ARCH_SOURCES:
        return None
    if not name:
        raise ValueError(f"arch {spec!r} names no {source} architecture; write {source}:NAME")
    module, attr = ARCH_SOURCES[source]
    return getattr(importlib.import_module(f"ebmlens.models.{module}"), attr)(name)


def is_safe_arch_name(spec: object) -> bool:
    """True when ``spec`` is a name a file may carry: a key of :data:`ARCHS` or ``source:name`` of
    :data:`ARCH_SOURCES`. Decided from the string alone: nothing is imported.

    >>> is_safe_arch_name("resnet-small"), is_safe_arch_name("timm:resnet18"), is_safe_arch_name("os:abort")
    (True, True, False)
    """
    if not isinstance(spec, str) or not spec:
        return False
    source, sep, name = spec.partition(":")
    return spec in ARCHS or bool(sep and name and source in ARCH_SOURCES)


def arch_from_file(spec: object, *, path: object, trust_checkpoint: bool = False) -> Callable[..., nn.Module]:
    """The factory for an architecture name read from the file ``path`` (a checkpoint's metadata).

    Registered names and ``source:name`` specs are built; anything else (``"module:function"``)
    would import and run code that the file names, so it is refused before any import unless
    ``trust_checkpoint`` is true.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"checkpoint {str(path)!r} names its architecture as {spec!r}, not a name; pass arch= "
                         "(CLI --arch) with a registered name such as 'resnet-small'")
    if is_safe_arch_name(spec) or trust_checkpoint:
        return get_arch(spec)
    raise ValueError(
        f"checkpoint {str(path)!r} names its architecture {spec!r}, which is not a registered architecture "
        f"({', '.join(sorted(ARCHS))}) or a source:name spec ({', '.join(f'{s}:NAME' for s in ARCH_SOURCES)}); "
        "building it would import and run code named by the file. Pass arch= yourself (CLI --arch), "
        "or trust_checkpoint=True (CLI --trust-checkpoint) if you trust the file's origin")


def get_arch(spec: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A registered name (``resnet-small``), a ``source:name`` spec (``timm:resnet18``),
    ``"package.module:factory"`` (imported: the caller's own code), or a callable.

    Names read from files go through :func:`arch_from_file` instead."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"arch must be a registered name, 'module:factory' or a callable, got {spec!r}")
    if spec in ARCHS:
        return ARCHS[spec]
    built = _source_arch(spec)
    if built is not None:
        return built
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"cannot import module {mod_name!r} for arch {spec!r}: {e}") from e
        fn = getattr(mod, attr, None)
        if fn is None or not callable(fn):
            raise ValueError(f"module {mod_name!r} has no callable {attr!r} (arch {spec!r})")
        return fn
    close = difflib.get_close_matches(spec, list(ARCHS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown arch {spec!r}{hint} Choices: {', '.join(sorted(ARCHS))}, "
                     f"{', '.join(f'{s}:NAME' for s in ARCH_SOURCES)}, or 'module.path:factory'")
