"""``ebmlens energy``: natural vs adversarial energies of a checkpoint, or over a run's checkpoints.

The Python equivalent of ``ebmlens energy --model M --data D --attack pgd --eps 0.5 --out report/``::

    model = ebmlens.load_model("M")
    geometry = ebmlens.attacks.Geometry.for_model(model, eps=0.5)  # the model's own threat model
    rep = ebmlens.analysis.energy_report(model, "D", ["pgd"], geometry=geometry, n=1000)
    rep.to_json("report/report.json"); rep.table(); rep.plot("report/energies.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
)


def _print_attacks() -> None:
    from ..attacks import list_attacks

    for s in list_attacks():
        alias = f" (aliases: {', '.join(s.aliases)})" if s.aliases else ""
        kind = "targeted" if s.targeted else "untargeted"
        click.echo(f"{s.name:<16} {kind:<10} {s.backend:<12} {'/'.join(s.threat_models):<8} {s.description}{alias}")
    click.echo("ta:<Class>       untargeted torchattacks L2/Linf   any other torchattacks class, e.g. ta:FGSM")


def _check_out(out: str) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {out!r} is a file; give a folder for report.json, table.md, table.csv, energies.png")
    p.mkdir(parents=True, exist_ok=True)
    return p


@click.command("energy")
@model_options(arch_help="Architecture for checkpoints that do not record it (file:/--checkpoints).")
@click.option("--attack-threat-model", default=None,
              help="Attack in this geometry (L2, Linf) instead of the model's threat model.")
@click.option("--checkpoints", default=None,
              help="Glob of a training run's checkpoints (quote it: 'runs/x/epoch_*.pt'): energies per epoch.")
@click.option("--data", default=None, help="Data spec, e.g. cifar10:PATH (test split by default).")
@click.option("-n", "--n", default=1000, show_default=True, type=int,
              help="Images, spread evenly over the set (under torchrun write -n: torchrun takes --n for its own).")
@click.option("--attack", "attacks", multiple=True,
              help="Attack name (repeatable); see --list-attacks. Default: pgd, pgd-targeted.")
@click.option("--eps", default=None,
              help="Attack radius in [0,1] pixels, e.g. 0.5 or 8/255 "
                   "(default: the model's own, else 0.5 L2 / 8/255 Linf).")
@click.option("--steps", default=None, type=int,
              help="Gradient steps of every attack that has steps (default: each attack's).")
@click.option("--target", default="random", show_default=True, type=click.Choice(["random", "least-likely"]),
              help="Target choice of targeted attacks.")
@click.option("--batch-size", default=100, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@runtime_options()
@click.option("--out", default=None, type=click.Path(),
              help="Folder for report.json, table.md, table.csv, energies.png.")
@click.option("--list-attacks", is_flag=True, help="List the attack names and exit.")
@class_map_option
@friendly_errors
def energy_cmd(model_spec: str, model_dir: str | None, dataset: str | None, threat_model: str | None, arch: str | None,
               trust_checkpoint: bool, attack_threat_model: str | None, checkpoints: str | None, data: str | None,
               n: int, attacks: tuple[str, ...], eps: str | None, steps: int | None, target: str, batch_size: int,
               seed: int, device: str, threads: int | None, out: str | None, list_attacks: bool) -> None:
    """Measure E(x) and E(x,y) on natural and adversarial inputs (Mirza et al. 2024, Sec. 3)."""
    if list_attacks:
        _print_attacks()
        return
    if data is None:
        raise ValueError("--data is required, e.g. --data cifar10:../shared/data/cifar10-jpeg.tar.xz")
    if out is None:
        raise ValueError("--out is required: a folder for report.json, table.md, table.csv and energies.png")
    device = setup_runtime(device, threads)
    threat_model = check_threat_model(threat_model)
    eps_v = parse_number(eps)
    names = list(attacks) or ["pgd", "pgd-targeted"]
    from .. import _dist
    from ..analysis import dynamics, energy_report
    from ..analysis.energies import build_attacks
    from ..analysis.report import require_matplotlib

    # fail on bad names / geometry before loading anything
    build_attacks(names, geometry=attack_geometry(None, attack_threat_model, threat_model, eps_v), steps=steps)
    plots = True
    try:
        require_matplotlib()
    except ImportError:
        plots = False
        if _dist.is_rank0():
            click.echo("note: matplotlib is not installed, so no plot; pip install 'ebmlens[plots]'", err=True)
    folder = _check_out(out)
    _dist.init_if_needed(device)  # under torchrun: join the group first, so "cuda" means cuda:LOCAL_RANK
    dev = _dist.resolve_device(device)
    kw: dict[str, Any] = dict(target=target, n=n, steps=steps, batch_size=batch_size, seed=seed, device=dev,
                              progress=True)
    if checkpoints is not None:
        if model_dir is not None:
            raise ValueError("--model-dir applies to robustbench: models, not to --checkpoints")
        geom = attack_geometry(None, attack_threat_model, threat_model, eps_v)
        dyn = dynamics(checkpoints, data, names, arch=arch, threat_model=geom.threat_model, eps=geom.eps,
                       load_kwargs={"trust_checkpoint": True} if trust_checkpoint else None, **kw)
        _write(dyn, folder, "dynamics.png" if plots else None)
        return
    if model_dir is not None and not str(model_spec).startswith("robustbench:"):
        raise ValueError("--model-dir applies to robustbench: models; for other files use --model file:PATH")
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                                arch=arch, trust_checkpoint=trust_checkpoint, device=dev)
    rep = energy_report(model, data, names, geometry=attack_geometry(model, attack_threat_model, threat_model, eps_v),
                        **kw)
    _write(rep, folder, "energies.png" if plots else None)


def _write(report, folder, plot_name: str | None) -> None:
    """report.json, table.md, table.csv (+ the plot) into ``folder``; only rank 0 writes and prints."""
    from .. import _dist
    from .._io import atomic_write_text

    if not _dist.is_rank0():
        return
    report.to_json(folder / "report.json")
    atomic_write_text(folder / "table.md", report.table())
    report.to_csv(folder / "table.csv")
    if plot_name:
        report.plot(folder / plot_name)
    click.echo(report.table())
    click.echo(f"wrote {folder}/report.json, table.md, table.csv" + (f", {plot_name}" if plot_name else ""))
