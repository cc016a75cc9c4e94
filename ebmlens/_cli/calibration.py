"""``ebmlens calibration``: expected calibration error and reliability diagrams, natural and under attack.

The Python equivalent of ``ebmlens calibration --data D --bins 15 --attack pgd --out cal/``::

    cal = ebmlens.analysis.calibration_report("M", "D", bins=15, attack="pgd", n=1000)
    cal.to_json("cal/report.json"); cal.table(); cal.plot("cal/reliability.png")
"""

from __future__ import annotations

import click

from . import friendly_errors, parse_number
from ._common import (
    attack_geometry,
    check_threat_model,
    class_map_option,
    load_model_from_cli,
    model_options,
    runtime_options,
    setup_runtime,
    write_report,
)


@click.command("calibration")
@model_options()
@click.option("--data", default=None, help="Data spec, e.g. cifar10:PATH (test split by default).")
@click.option("--bins", default=15, show_default=True, type=int, help="Confidence bins of the ECE.")
@click.option("--attack", default=None,
              help="Also measure on adversarial versions of the same images (pgd, apgd-ce, ...).")
@click.option("--attack-threat-model", default=None,
              help="Attack in this geometry instead of the model's threat model.")
@click.option("--eps", default=None,
              help="Attack radius in [0,1] pixels (default: the model's own, else 0.5 L2 / 8/255 Linf).")
@click.option("--steps", default=None, type=int, help="Attack steps (default: the attack's own).")
@click.option("-n", "--n", default=1000, show_default=True, type=int, help="Images, spread evenly over the set.")
@click.option("--batch-size", default=100, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@runtime_options()
@click.option("--out", default=None, type=click.Path(), help="Folder for report.json, table.md, reliability.png.")
@class_map_option
@friendly_errors
def calibration_cmd(model_spec, model_dir, dataset, threat_model, arch, trust_checkpoint, data, bins, attack,
                    attack_threat_model, eps, steps, n, batch_size, seed, device, threads, out) -> None:
    """ECE (equal-width and equal-mass bins) and reliability diagrams (Guo et al. 2017)."""
    if data is None:
        raise ValueError("--data is required, e.g. --data cifar10:../shared/data/cifar10-jpeg.tar.xz")
    if out is None:
        raise ValueError("--out is required: a folder for report.json, table.md and reliability.png")
    for label, v in (("--bins", bins), ("--n", n), ("--batch-size", batch_size)):
        if v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    device = setup_runtime(device, threads)
    threat_model = check_threat_model(threat_model)
    eps_v = parse_number(eps)
    from .. import _dist
    from ..analysis import calibration_report
    from ..analysis.energies import build_attacks
    from .energy import _check_out

    if attack is not None:  # a bad name fails before the model loads
        build_attacks([attack], geometry=attack_geometry(None, attack_threat_model, threat_model, eps_v), steps=steps)
    folder = _check_out(out)
    _dist.init_if_needed(device)  # under torchrun: join the group first, so "cuda" means cuda:LOCAL_RANK
    dev = _dist.resolve_device(device)
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                                arch=arch, trust_checkpoint=trust_checkpoint, device=dev)
    geom = attack_geometry(model, attack_threat_model, threat_model, eps_v) if attack is not None else None
    cal = calibration_report(model, data, bins=bins, attack=attack, geometry=geom, steps=steps, n=n,
                             batch_size=batch_size, seed=seed, device=dev, progress=True)
    if _dist.is_rank0():
        write_report(folder, cal, "reliability.png")
