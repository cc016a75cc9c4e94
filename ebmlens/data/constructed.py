"""Constructed out-of-distribution sets, as data specs, so OOD detection can be measured without
SVHN / CIFAR-100 / CelebA on disk.

* ``synthetic:KIND[?n=N&seed=S]`` - ``uniform`` (every pixel U[0, 1]), ``gaussian``
  (``N(0.5, 0.25^2)`` per pixel, clamped to [0, 1]) or ``constant`` (one uniform colour per image).
  ``n`` defaults to the in-distribution set's size, the shape to the model's ``input_shape``.
* ``interp:SPEC[?lambda=0.5&seed=S&n=N]`` - JEM's interpolations (Grathwohl et al. 2020, Table 3):
  ``lambda x_i + (1 - lambda) x_sigma(i)`` for a seeded permutation ``sigma`` of SPEC's images.
* ``corrupt:NAME@SEVERITY:SPEC[?seed=S]`` - SPEC's images under one of Hendrycks & Dietterich's (2019)
  corruptions at severity 1-5, with their CIFAR-10-C parameters (:data:`CORRUPTIONS`), written here
  with torch and PIL (labels kept, so the set also serves calibration under shift).

Every function maps a spec to an :class:`~ebmlens.data.ImageData` (uint8, like every set) and is
deterministic in its seed. :func:`resolve_ood` is the one entry the analysis calls: an ImageData
passes through, these three kinds are built here, any other spec goes to :func:`ebmlens.data.load_data`.

>>> d = synthetic_data("synthetic:constant?n=3&seed=1", shape=(3, 4, 4))
>>> d.images.shape, bool((d.images[0] == d.images[0, 0, 0]).all())
((3, 4, 4, 3), True)
"""

from __future__ import annotations

import io
import math
from typing import Callable, overload
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F

from ._readers import to_uint8_images
from .memory import ImageData, ImageSet
from .sources import load_data, register_data_source

__all__ = ["synthetic_data", "interp_data", "corrupt_data", "resolve_ood", "CORRUPTIONS", "OOD_KINDS"]

SYNTHETIC_KINDS = ("uniform", "gaussian", "constant")


def _split_query(spec: str, kind: str) -> tuple[str, dict[str, str]]:
    """``"kind:BODY?a=1&b=2"`` -> ``("BODY", {"a": "1", "b": "2"})`` (the prefix is optional)."""
    body = spec[len(kind) + 1:] if spec.startswith(kind + ":") else spec
    head, sep, tail = body.rpartition("?")
    if sep and "=" in tail:
        try:
            return head, dict(parse_qsl(tail, strict_parsing=True))
        except ValueError:
            raise ValueError(f"cannot read the options {tail!r} of {spec!r}; write ?key=value&key=value") from None
    return body, {}


@overload
def _int_opt(opts: dict, key: str, default: int, spec: str, low: int) -> int: ...
@overload
def _int_opt(opts: dict, key: str, default: int | None, spec: str, low: int) -> int | None: ...
def _int_opt(opts: dict, key: str, default: int | None, spec: str, low: int) -> int | None:
    if key not in opts:
        return default
    try:
        v = int(opts.pop(key))
    except ValueError:
        raise ValueError(f"{key}= in {spec!r} must be an integer") from None
    if v < low:
        raise ValueError(f"{key}= in {spec!r} must be >= {low}, got {v}")
    return v


def _no_more(opts: dict, spec: str, allowed: str) -> None:
    if opts:
        raise ValueError(f"unknown option(s) {sorted(opts)} in {spec!r}; this kind takes {allowed}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _as_data(x: torch.Tensor, labels: np.ndarray, names: list[str], source: str, like=None) -> ImageData:
    """Built images; ``like``: the set they came from (its labels' flags carry over)."""
    flags = {} if like is None else {"labeled": like.labeled, "folder_classes": like.folder_classes,
                                     "class_map": like.class_map}
    return ImageData(to_uint8_images(x.clamp(0, 1)), np.asarray(labels, dtype=np.int64), names, source, **flags)


# --------------------------------------------------------------------------- synthetic
def synthetic_data(spec: str, *, n: int | None = None, shape: tuple[int, ...] | None = None) -> ImageData:
    """``synthetic:KIND[?n=N&seed=S]``: noise images; ``n`` (default: the argument, else 1000) and
    ``shape`` ``(C, H, W)`` (default ``(3, 32, 32)``) are supplied by :func:`resolve_ood`."""
    kind, opts = _split_query(spec, "synthetic")
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r} in {spec!r}; choose {', '.join(SYNTHETIC_KINDS)}")
    count = _int_opt(opts, "n", n if n is not None else 1000, spec, 1)
    seed = _int_opt(opts, "seed", 0, spec, 0)
    _no_more(opts, spec, "n= and seed=")
    c, h, w = shape or (3, 32, 32)
    g = _gen(seed)
    if kind == "uniform":
        x = torch.rand(count, c, h, w, generator=g)
    elif kind == "gaussian":
        x = (0.5 + 0.25 * torch.randn(count, c, h, w, generator=g)).clamp(0, 1)
    else:
        x = torch.rand(count, c, 1, 1, generator=g).expand(count, c, h, w)
    return ImageData(to_uint8_images(x), np.zeros(count, np.int64), ["ood"], f"synthetic:{kind}?n={count}&seed={seed}",
                     labeled=False)


# --------------------------------------------------------------------------- interpolations
def interp_data(spec: str, *, n: int | None = None, base: ImageData | None = None) -> ImageData:
    """``interp:SPEC[?lambda=L&seed=S&n=N]``: ``L x_i + (1 - L) x_sigma(i)``, ``sigma`` a permutation
    drawn from ``seed``; ``n`` images spread evenly over SPEC (the spec's, else the argument, else all;
    ``base``: SPEC already loaded). Labels are ``i``'s."""
    inner, opts = _split_query(spec, "interp")
    try:
        lam = float(opts.pop("lambda", 0.5))
    except ValueError:
        raise ValueError(f"lambda= in {spec!r} must be a number in [0, 1]") from None
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda= in {spec!r} must be in [0, 1], got {lam}")
    seed = _int_opt(opts, "seed", 0, spec, 0)
    n = _int_opt(opts, "n", n, spec, 1)
    _no_more(opts, spec, "lambda=, seed= and n=")
    data = base if base is not None else load_data(inner, default_split="test", need_labels=False)
    idx = np.arange(len(data)) if n is None else data.strided(min(n, len(data)))
    perm = torch.randperm(idx.size, generator=_gen(seed)).numpy()
    x = data.tensor(idx)
    x = lam * x + (1.0 - lam) * x[perm]
    return _as_data(x, data.labels[idx], list(data.class_names), f"interp:{data.source}?lambda={lam}&seed={seed}", data)


# --------------------------------------------------------------------------- corruptions
def _gaussian_noise(x, c, g):
    return x + c * torch.randn(x.shape, generator=g)


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x, c, g):
    u = torch.rand(x.shape, generator=g)  # salt and pepper, each on a fraction c/2 of the values
    return torch.where(u < c / 2, torch.zeros_like(x), torch.where(u < c, torch.ones_like(x), x))


def _gaussian_blur(x, c, g):
    r = max(1, int(math.ceil(4 * c)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / c) ** 2)
    k = k / k.sum()
    ch = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(ch, 1, 1, -1), groups=ch)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(ch, 1, -1, 1), groups=ch)


def _contrast(x, c, g):
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * c + m


def _brightness(x, c, g):
    v = x.amax(dim=1, keepdim=True)  # HSV value; hue and saturation kept by scaling RGB
    v2 = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * (v2 / v.clamp(min=1e-12)), v2.expand_as(x))


def _pil_map(x: torch.Tensor, fn: Callable) -> torch.Tensor:
    from PIL import Image

    arr = to_uint8_images(x.clamp(0, 1))
    maps = [np.asarray(fn(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)), dtype=np.uint8) for a in arr]
    out = np.stack([o[..., None] if o.ndim == 2 else o for o in maps])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def _jpeg(x, c, g):
    from PIL import Image

    def enc(im):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert(im.mode).copy()

    return _pil_map(x, enc)


def _pixelate(x, c, g):
    from PIL import Image

    def px(im):
        w, h = im.size
        return im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX)

    return _pil_map(x, px)


#: name -> (function, the five CIFAR-10-C parameters of severities 1-5: noise std, Poisson rate,
#: salt-and-pepper fraction, blur sigma, contrast factor, brightness shift, JPEG quality, pixelate scale)
CORRUPTIONS: dict[str, tuple[Callable, tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "gaussian_blur": (_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "jpeg": (_jpeg, (80, 65, 58, 50, 40)),
    "pixelate": (_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
}


def corrupt_data(spec: str, *, n: int | None = None, base: ImageData | None = None,
                 batch_size: int = 500) -> ImageData:
    """``corrupt:NAME@SEVERITY:SPEC[?seed=S&n=N]``: SPEC's images (``n`` spread evenly: the spec's,
    else the argument, else all)
    under corruption NAME (:data:`CORRUPTIONS`) at severity 1-5; noise from one generator seeded ``S``."""
    body, opts = _split_query(spec, "corrupt")
    head, sep, inner = body.partition(":")
    name, at, sev_s = head.partition("@")
    if not sep or not at:
        raise ValueError(f"cannot read {spec!r}; write corrupt:NAME@SEVERITY:SPEC, "
                         "e.g. corrupt:contrast@3:cifar10:PATH")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} in {spec!r}; choose {', '.join(CORRUPTIONS)}")
    if sev_s not in ("1", "2", "3", "4", "5"):
        raise ValueError(f"severity in {spec!r} must be 1, 2, 3, 4 or 5, got {sev_s!r}")
    seed = _int_opt(opts, "seed", 0, spec, 0)
    n = _int_opt(opts, "n", n, spec, 1)
    _no_more(opts, spec, "seed= and n=")
    data = base if base is not None else load_data(inner, default_split="test", need_labels=False)
    idx = np.arange(len(data)) if n is None else data.strided(min(n, len(data)))
    fn, params = CORRUPTIONS[name]
    c, g = params[int(sev_s) - 1], _gen(seed)
    parts = [fn(data.tensor(idx[s:s + batch_size]), c, g).clamp(0, 1) for s in range(0, idx.size, batch_size)]
    return _as_data(torch.cat(parts), data.labels[idx], list(data.class_names),
                    f"corrupt:{name}@{sev_s}:{data.source}?seed={seed}", data)


OOD_KINDS: dict[str, Callable[..., ImageData]] = {"synthetic": synthetic_data, "interp": interp_data,
                                                  "corrupt": corrupt_data}


def resolve_ood(spec: ImageSet | str, in_data: ImageSet | None = None, model=None, *,
                n: int | None = None) -> ImageSet:
    """An image set from an OOD set given as data or spec (built sets are :class:`ImageData`).

    ``n`` (default ``len(in_data)``): the number of in-distribution images scored; ``synthetic:``
    makes that many, ``interp:`` and ``corrupt:`` build only that many (spread evenly over their
    inner spec) unless the spec says ``?n=``. The shape of ``synthetic:`` is ``model.input_shape``.
    Anything else is :func:`ebmlens.data.load_data` (test split).
    """
    if isinstance(spec, ImageSet):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"an OOD set must be an image set or a data spec string, got {type(spec).__name__}")
    kind = spec.partition(":")[0]
    n = n if n is not None else (len(in_data) if in_data is not None else None)
    if kind == "synthetic":
        shape = tuple(int(s) for s in getattr(model, "input_shape", ())) or None
        return synthetic_data(spec, n=n, shape=shape)
    if kind in OOD_KINDS:
        return OOD_KINDS[kind](spec, n=n)
    return load_data(spec, default_split="test", need_labels=False)


# Registered as data specs: load_data("synthetic:uniform?n=100"), "interp:cifar10:PATH?lambda=0.5", ...
register_data_source("synthetic", lambda spec, preprocess: synthetic_data(spec.text), raw=True)
register_data_source("interp", lambda spec, preprocess: interp_data(spec.text), raw=True)
register_data_source("corrupt", lambda spec, preprocess: corrupt_data(spec.text), raw=True)
