"""Input validation at public entry points: images and labels, with the fix in every message.

Checked entry points (``EnergyModel.logits`` / ``energy`` / ``joint_energy`` / ``log_prob_y``,
``ebmlens.sample``, ``class_stats``, ``energy_report``, attacks called by users) go through
:func:`validate_inputs`; the library's own loops call the unchecked paths (``model(x)``,
``energy_from_logits``), so a sampler may leave [0, 1] between steps. The value scan (NaN/inf,
pixel range, label range) costs one device-to-host sync per call.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["parse_device", "validate_images", "validate_labels", "validate_inputs"]

# ---------------------------------------------------------------------- validation
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_tensor(x: object, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if type(x).__module__ == "numpy" and hasattr(x, "shape"):
        return torch.as_tensor(x)
    raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W) with pixels in [0, 1], got "
                    f"{type(x).__name__}; build one with torch.as_tensor(...)")


def _check_image_layout(x: torch.Tensor, shape: tuple[int, ...] | None, allow_other_size: bool, name: str) -> None:
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no data); pass real pixels")
    if x.dtype == torch.bool or x.dtype in _INT_DTYPES:
        raise TypeError(f"{name} must be a float tensor with pixels in [0, 1], got dtype {x.dtype}; "
                        "convert with x.float() / 255")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with pixels in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4:
        hint = ("add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else
                "pass a batch of images (N, C, H, W)")
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}; {hint}")
    if shape is None:
        return
    c = shape[0]
    if x.shape[1] != c:
        if x.shape[3] == c:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, which looks like NHWC; the model takes NCHW "
                             f"{tuple(shape)}: use x.permute(0, 3, 1, 2)")
        raise ValueError(f"{name} has {x.shape[1]} channels but the model expects {c} (input_shape "
                         f"{tuple(shape)}); images are never broadcast across channels")
    if tuple(x.shape[2:]) != tuple(shape[1:]) and not allow_other_size:
        raise ValueError(f"{name} has spatial size {tuple(x.shape[2:])} but the model's input_shape is "
                         f"{tuple(shape)}; resize the images, or build the model with allow_other_size=True "
                         "if the classifier really accepts other sizes")


def _scan_error(x: torch.Tensor, stats: list[float], check_range: bool, name: str) -> Exception | None:
    """The error (or None) for ``stats = [min, max]`` of ``x`` (non-finite when x holds NaN / inf)."""
    lo, hi = stats
    if not (math.isfinite(lo) and math.isfinite(hi)):  # the error path may sync again to name the images
        nonfinite = ~torch.isfinite(x)
        bad = int(nonfinite.sum())
        per = nonfinite.flatten(1).any(1).nonzero().flatten().tolist()
        shown = ", ".join(str(i) for i in per[:10]) + (", ..." if len(per) > 10 else "")
        return ValueError(f"{name} contains {int(bad)} NaN or infinite value(s) in {len(per)} image(s) "
                          f"(indices {shown}); energies of such inputs are NaN")
    if not check_range:
        return None
    if hi > 2:
        return ValueError(f"{name} has values up to {hi:.4g}: looks like 0-255 pixels: divide by 255 "
                          "(ebmlens models take pixels in [0, 1])")
    if lo < -0.5 or hi > 1.5:
        return ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]: looks like normalized or [-1, 1] input: "
                          "pass pixels in [0, 1]; the model normalizes (or build it with check_range=False)")
    return None


def _label_tensor(y: object, n: int | None, name: str) -> torch.Tensor:
    if isinstance(y, bool):
        raise TypeError(f"{name} must hold integer class indices, got a bool")
    if isinstance(y, int):
        if n is None:
            raise ValueError(f"{name}={y} (one class for every image) needs the number of images")
        return torch.full((n,), y, dtype=torch.long)
    if isinstance(y, (list, tuple, range)) or (type(y).__module__ == "numpy" and hasattr(y, "shape")):
        try:
            y = torch.as_tensor(y if not isinstance(y, range) else list(y))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a sequence of integer class indices ({e})") from None
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, list or array of class indices, or an int, got {type(y).__name__}")
    if y.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no data); pass real labels")
    if y.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}; use y.long() if the "
                        "values are whole class numbers")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,) or (N, 1), got shape {tuple(y.shape)}")
    if n is not None and y.numel() != n:
        raise ValueError(f"{name} has {y.numel()} labels for {n} images; give one label per image")
    return y


def _label_range_error(lo: int, hi: int, num_classes: int, name: str) -> Exception | None:
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        return ValueError(f"{name} contains class index {bad}, outside [0, {num_classes - 1}] for a "
                          f"{num_classes}-class model")
    return None


def validate_inputs(model: Any, x: object, y: object = None, *, num_classes: int | None = None,
                    scan: bool = True, check_range: bool = True, allow_other_size: bool = False,
                    name: str = "x", label_name: str = "y") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (and labels) at a public entry point, checked with at most one device-to-host sync.

    Images: 4-D NCHW float with ``(C, H, W) == model.input_shape`` (other sizes only with
    ``allow_other_size``); integer dtypes, NHWC layout, channel mismatches refused; float64/16/bfloat16
    cast to the classifier's dtype; with ``scan``: NaN/inf refused (naming the images), and with
    ``check_range`` values above 2 ("0-255 pixels") or outside [-0.5, 1.5] ("normalized input") refused.
    Labels: see :func:`validate_labels`; moved to the images' device; their range is checked with
    ``scan`` when the number of classes is known. ``scan=False`` checks layout and dtypes only (no sync).
    """
    x = _as_tensor(x, name)
    shape = tuple(model.input_shape) if model is not None else None
    _check_image_layout(x, shape, allow_other_size, name)
    want = _param_dtype(model) if model is not None else torch.float32
    if x.dtype != want and x.dtype in (torch.float64, torch.float16, torch.bfloat16, torch.float32):
        x = x.to(want)
    k = num_classes if num_classes is not None else (model.num_classes if model is not None else None)
    yt = None
    if y is not None:
        yt = _label_tensor(y, x.shape[0], label_name)
        if yt.device != x.device:
            yt = yt.to(x.device)
    parts = []
    if scan and x.numel():
        lo, hi = torch.aminmax(x.detach())  # NaN propagates, inf shows: one pass finds both
        parts += [lo.to(torch.float64), hi.to(torch.float64)]
    if scan and k is not None and yt is not None and yt.numel():
        parts += [yt.min().to(torch.float64), yt.max().to(torch.float64)]
    vals = torch.stack(parts).tolist() if parts else []  # the one sync
    if scan and x.numel():
        err = _scan_error(x, vals[:2], check_range, name)
        if err is not None:
            raise err
        vals = vals[2:]
    if yt is not None and k is not None and vals:
        err = _label_range_error(int(vals[0]), int(vals[1]), int(k), label_name)
        if err is not None:
            raise err
    return x, (yt.long() if yt is not None else None)


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def validate_images(x: object, model: Any = None, *, name: str = "x", scan: bool = True,
                    check_range: bool | None = None, allow_other_size: bool | None = None) -> torch.Tensor:
    """Check an image batch at a public entry point and return it (cast to the classifier's dtype).

    Float NCHW, ``(C, H, W)`` equal to the model's ``input_shape`` (unless the model or the call allows
    other sizes), finite, and, unless ``check_range=False`` (on the call or the model), in roughly
    [0, 1]: pixels above 2 are refused as 0-255 values, values below -0.5 or above 1.5 as
    normalized input. Every error names the problem and the fix. ``scan=False`` skips the value
    scan (shape and dtype only, no device sync).
    """
    if check_range is None:
        check_range = getattr(model, "check_range", True)
    if allow_other_size is None:
        allow_other_size = getattr(model, "allow_other_size", False)
    return validate_inputs(model, x, None, scan=scan, check_range=check_range, allow_other_size=allow_other_size,
                           name=name)[0]


def validate_labels(y: object, num_classes: int, n: int | None = None, *, name: str = "y",
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Check labels and return them as ``int64`` ``(N,)``.

    Accepted: integer tensors (uint8/int8/int16/int32/int64) of shape ``(N,)`` or ``(N, 1)``, lists,
    tuples, ranges and numpy arrays of integers, or a Python int meaning that class for every one of
    ``n`` images. Refused: floats, bools, other shapes, the meta device, a length other than ``n``,
    values outside ``[0, num_classes)``. Moved to ``device`` when given.
    """
    yt = _label_tensor(y, n, name)
    if device is not None and yt.device != torch.device(device):
        yt = yt.to(device)
    if yt.numel():
        lo, hi = torch.stack([yt.min(), yt.max()]).tolist()
        err = _label_range_error(int(lo), int(hi), int(num_classes), name)
        if err is not None:
            raise err
    return yt.long()


# ---------------------------------------------------------------------- devices
def parse_device(device: str | torch.device | None, *, available: bool = True) -> str:
    """The one device-name parser, without touching the device: ``"auto"`` (or None), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"``, ``"mps"``; anything else fails naming the choices. ``available``: also fail
    when this machine lacks the device. Returns the normalized name (:func:`ebmlens._dist.resolve_device`
    turns ``auto`` into a device)."""
    if device is None:
        return "auto"
    text = str(device).strip().lower()
    if text == "auto":
        return text
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (index.isdigit() and kind == "cuda")):
        raise ValueError(f"unknown device {str(device)!r}; choose auto, cpu, cuda, cuda:N or mps")
    if not available:
        return text
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for but CUDA is not available here; use --device cpu "
                         "(or auto)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} asked for but MPS is not available here; use --device cpu")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text
