"""``ebmlens:NAME`` - small models that ship inside the package (the default: :data:`DEFAULT_MODEL`).

Each model is a pair in the ``bundled/`` folder next to this file:

* ``NAME.safetensors`` - the weights (may be stored in float16; cast to float32 on load);
* ``NAME.json``        - ``{"arch", "num_classes", "class_names", "mean", "std", "input_shape",
  "threat_model", "eps", "dataset", "card": {...}}``; the card records how it was trained and
  measured. Optional: ``"stats": OTHER`` (use ``OTHER.stats.safetensors``, e.g. a fine-tuned model's
  base, which saw the same training images) and ``"sampling": {"preset": NAME, "set": {...}}`` (the
  preset, with overrides, that ``ebmlens sample`` uses for this model when no ``--preset`` is given).

The folder can be redirected with ``$EBMLENS_BUNDLED_DIR`` or by setting :data:`BUNDLED_DIR`.

>>> isinstance(list_names(), list)
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import DEFAULT_MODEL  # defined in the light top-level package so the CLI starts without torch
from ..energy import EnergyModel
from .archs import arch_from_file
from .file import load_into, read_checkpoint

__all__ = ["DEFAULT_MODEL", "BUNDLED_DIR", "bundled_dir", "list_names", "load", "model_card", "model_meta",
           "bundled_stats", "sampling_preset"]

#: Override for the folder of bundled models (``None``: ``$EBMLENS_BUNDLED_DIR`` or the package's).
BUNDLED_DIR: Path | None = None

_REQUIRED = ("arch", "num_classes", "mean", "std", "input_shape")


def bundled_dir() -> Path:
    """The folder holding ``NAME.safetensors`` + ``NAME.json`` pairs."""
    if BUNDLED_DIR is not None:
        return Path(BUNDLED_DIR)
    env = os.environ.get("EBMLENS_BUNDLED_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "bundled"


def list_names() -> list[str]:
    """Names of the bundled models present (a ``.json`` with its ``.safetensors``)."""
    d = bundled_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if p.with_suffix(".safetensors").is_file())


def model_meta(name: str) -> dict:
    """The ``NAME.json`` of a bundled model, checked."""
    names = list_names()
    if name not in names:
        from . import unknown_name_error

        hint = (f"No bundled models were found in {bundled_dir()}; reinstall ebmlens"
                if not names else f"Bundled models live in {bundled_dir()}.")
        raise unknown_name_error("bundled model", name, names, hint)
    path = bundled_dir() / f"{name}.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"bundled model file {str(path)!r} is not valid JSON ({e}); reinstall ebmlens") from None
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"bundled model file {str(path)!r} lacks {', '.join(missing)}")
    return meta


def model_card(name: str) -> dict:
    """The model card (training command, data, seed, measured accuracies) of a bundled model."""
    return dict(model_meta(name).get("card", {}))


def arch_factory(name: str):
    """``ebmlens:NAME`` as an architecture (for a model fine-tuned from a bundled one):
    ``factory(num_classes=K)`` builds the bundled model's architecture with random weights."""
    meta = model_meta(name)
    base = arch_from_file(meta["arch"], path=bundled_dir() / f"{name}.json")
    k = int(meta["num_classes"])

    def factory(num_classes: int | None = None):
        return base(num_classes=k if num_classes is None else num_classes)

    factory.__name__ = f"ebmlens:{name}"
    return factory


def load(name: str, *, temperature: float = 1.0, sampling_mode: str = "eval") -> EnergyModel:
    """Load the bundled model ``name`` (float32, eval mode, CPU)."""
    meta = model_meta(name)
    path = bundled_dir() / f"{name}.safetensors"
    sd, _ = read_checkpoint(path, where="reinstall ebmlens")
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    net = arch_from_file(meta["arch"], path=bundled_dir() / f"{name}.json")(num_classes=int(meta["num_classes"]))
    load_into(net, sd, path=path, strict=True)
    return EnergyModel(
        net,
        mean=meta["mean"],
        std=meta["std"],
        input_shape=meta["input_shape"],
        num_classes=int(meta["num_classes"]),
        class_names=meta.get("class_names"),
        temperature=temperature,
        sampling_mode=sampling_mode,  # type: ignore[arg-type]
        source="ebmlens",
        name=name,
        dataset=meta.get("dataset"),
        threat_model=meta.get("threat_model"),
        eps=meta.get("eps"),
    )


def bundled_stats(name: str):
    """The compact class statistics shipped with bundled model ``name`` (``NAME.stats.safetensors``,
    a :class:`~ebmlens.stats.ClassStats`), or ``None`` when the model ships none.

    >>> from ebmlens.models.bundled import bundled_stats
    >>> bundled_stats("cifar10-l2-small").mean.shape
    torch.Size([10, 3072])
    """
    name = name.split(":", 1)[1] if name.startswith("ebmlens:") else name
    meta = model_meta(name)  # unknown names fail with the choices
    owner = meta.get("stats", name)  # a fine-tuned model shares its base's statistics
    if not isinstance(owner, str) or owner not in list_names():
        raise ValueError(f"bundled model file {str(bundled_dir() / (name + '.json'))!r} names stats {owner!r}, "
                         "not a bundled model; reinstall ebmlens")
    path = bundled_dir() / f"{owner}.stats.safetensors"
    if not path.is_file():
        return None
    from ..stats import ClassStats

    return ClassStats.load(path)


def sampling_preset(name: str) -> tuple[str, dict] | None:
    """``(preset, overrides)`` that the bundled model ``name``'s card recommends (``"sampling"`` in its
    JSON: e.g. a DAT-fine-tuned model's ``dat2025`` with the step count chosen for it), else ``None``.

    >>> sampling_preset("cifar10-l2-small") is None
    True
    """
    name = name.split(":", 1)[1] if name.startswith("ebmlens:") else name
    rec = model_meta(name).get("sampling")
    if rec is None:
        return None
    if not (isinstance(rec, dict) and isinstance(rec.get("preset"), str) and isinstance(rec.get("set", {}), dict)):
        raise ValueError(f"bundled model file {str(bundled_dir() / (name + '.json'))!r} has a malformed 'sampling' "
                         f"entry {rec!r}; reinstall ebmlens")
    return rec["preset"], dict(rec.get("set", {}))
