"""``TrainConfig(init_from=MODEL_SPEC)``: start from a model ``load_model`` can open instead of random weights.

The run records the base as its ``source:name`` spec and the architecture as a name a file may carry
(a registered name or ``source:name``, see :func:`ebmlens.models.archs.is_safe_arch_name`): for
``ebmlens:``, ``robustbench:`` and ``timm:`` bases the spec itself; for ``hf:ORG/NAME`` ``timm:ARCH`` of its
cached ``config.json``; for ``file:PATH`` the file's own architecture name (or ``arch=`` given by the user).
"""

from __future__ import annotations

from ..energy import EnergyModel
from ..models import load_model, parse_model_spec
from ..models.archs import ARCH_SOURCES, is_safe_arch_name

__all__ = ["base_arch", "load_base"]


def base_arch(init_from: str, arch: str | None) -> str | None:
    """The architecture to record for a run starting from ``init_from`` (``None``: read from the file later)."""
    source, name = parse_model_spec(init_from)
    if arch is not None:
        return arch
    if source in ARCH_SOURCES:
        return f"{source}:{name}"
    if source == "hf":  # the cached config.json's timm architecture
        from ..models.hf import arch_name

        return arch_name(name)
    return None


def _file_meta(init_from: str) -> dict:
    from ..models.file import read_checkpoint, split_checkpoint

    _, path = parse_model_spec(init_from)
    obj, st_meta = read_checkpoint(path)
    return split_checkpoint(obj, st_meta)[1]


def file_arch(init_from: str) -> str:
    """The architecture name that the checkpoint ``file:PATH`` carries, refused unless it is one a file may name."""
    arch = _file_meta(init_from).get("arch")
    if not is_safe_arch_name(arch):
        raise ValueError(f"--init-from {init_from!r}: the checkpoint names its architecture as {arch!r}, not a "
                         "registered name or a source:name spec; pass --arch NAME (the run records that name)")
    return str(arch)


def load_base(init_from: str, arch: str, data, threat_model: str) -> EnergyModel:
    """The base model, checked against the training data's image shape and classes."""
    source, _ = parse_model_spec(init_from)
    kw: dict = {}
    h, w, c = data.image_shape
    shape = (int(c), int(h), int(w))
    if source == "file":  # what the file's metadata does not say is taken from the data
        meta = _file_meta(init_from)
        kw.update(arch=arch, **({} if "num_classes" in meta else {"num_classes": data.num_classes}),
                  **({} if "input_shape" in meta else {"input_shape": shape}))
    elif source == "robustbench":
        kw["threat_model"] = threat_model
    model = load_model(init_from, **kw)
    if tuple(model.input_shape) != shape:
        raise ValueError(f"--init-from {init_from!r} takes images of shape {tuple(model.input_shape)} but the training "
                         f"data has {shape}; choose a model for this data")
    if model.num_classes != data.num_classes:
        raise ValueError(f"--init-from {init_from!r} has {model.num_classes} classes but the training data has "
                         f"{data.num_classes}; choose a model for this data")
    return model
