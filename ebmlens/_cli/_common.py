"""Helpers shared by subcommands: model specs from CLI options."""

from __future__ import annotations

from .. import DEFAULT_MODEL


def load_model_from_cli(spec, *, model_dir=None, dataset=None, threat_model=None, arch=None, trust_checkpoint=False):
    """Resolve the CLI's model options to an EnergyModel (default: the bundled model)."""
    from ..models import load_model

    spec = spec or DEFAULT_MODEL
    source = spec.split(":", 1)[0] if ":" in spec else "file"
    kwargs: dict = {}
    if source == "robustbench":
        kwargs.update(model_dir=model_dir or "models")
        if dataset:
            kwargs["dataset"] = dataset
        if threat_model:
            kwargs["threat_model"] = threat_model
    if source == "file" and arch:
        kwargs["arch"] = arch
    if trust_checkpoint:
        kwargs["trust_checkpoint"] = True
    return load_model(spec, **kwargs)
