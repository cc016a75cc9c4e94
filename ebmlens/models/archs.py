"""Architectures that ebmlens can build by name (for ``file:`` checkpoints and ``ebmlens train``).

``get_arch("resnet-small")`` returns a factory ``(num_classes) -> nn.Module``; ``"pkg.module:fn"``
imports a user's factory. The bundled model uses ``resnet-small``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from torch import nn

__all__ = ["ResNetSmall", "ConvNetSmall", "ARCHS", "get_arch", "register_arch"]


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

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256), in_channels: int = 3) -> None:
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


def get_arch(spec: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A registered name (``resnet-small``), ``"package.module:factory"``, or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"arch must be a registered name, 'module:factory' or a callable, got {spec!r}")
    if spec in ARCHS:
        return ARCHS[spec]
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
    raise ValueError(f"unknown arch {spec!r}{hint} Choices: {', '.join(sorted(ARCHS))}, or 'module.path:factory'")
