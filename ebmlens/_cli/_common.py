"""Helpers shared by subcommands: model specs from CLI options."""

from __future__ import annotations

from .. import DEFAULT_MODEL


def load_model_from_cli(spec, *, model_dir=None, dataset=None, threat_model=None, arch=None, trust_checkpoint=False):
    """Resolve the CLI's model options to an EnergyModel (default: the bundled model)."""
    from ..models import resolve_model

    return resolve_model(spec or DEFAULT_MODEL, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                         arch=arch, trust_checkpoint=trust_checkpoint)
