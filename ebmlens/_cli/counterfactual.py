"""``ebmlens counterfactual``: real images moved to another class by the model's own gradients.

The Python equivalent of ``ebmlens counterfactual --data D --n 16 --target next --eps 2 --out cf/``::

    cf = ebmlens.analysis.counterfactuals("M", "D", target="next", eps=2.0, n=16)
    cf.to_json("cf/counterfactuals.json"); cf.grid("cf/grid.png")
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
)


def parse_target(text: str) -> str | int:
    """``next``, ``random``, ``least-likely`` or a class index."""
    t = str(text).strip().lower()
    if t in ("next", "random", "least-likely"):
        return t
    if t.isdigit():
        return int(t)
    raise ValueError(f"unknown --target {text!r}; choose next, random, least-likely or a class index like 3")


@click.command("counterfactual")
@model_options()
@click.option("--data", default=None, help="Data spec, e.g. cifar10:PATH (test split by default).")
@click.option("-n", "--n", default=16, show_default=True, type=int, help="Images, spread evenly over the set.")
@click.option("--target", default="next", show_default=True, help="next | random | least-likely | <class index>.")
@click.option("--eps", default="2", show_default=True, help="Radius of the ball in [0,1] pixels (e.g. 2, or 8/255).")
@click.option("--attack-threat-model", default=None,
              help="Move in this geometry (L2, Linf) instead of the model's threat model (default: the model's own, "
                   "else L2).")
@click.option("--steps", default=100, show_default=True, type=int)
@click.option("--step-size", default=None, help="PGD step (default 2.5*eps/steps).")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of --target random.")
@runtime_options()
@click.option("--out", default=None, type=click.Path(), help="Folder for counterfactuals.json, table.md, grid.png.")
@class_map_option
@friendly_errors
def counterfactual_cmd(model_spec, model_dir, dataset, threat_model, arch, trust_checkpoint, data, n, target, eps,
                       attack_threat_model, steps, step_size, batch_size, seed, device, threads, out) -> None:
    """Targeted PGD toward another class inside an eps-ball; the flip step, distances and energies."""
    if data is None:
        raise ValueError("--data is required, e.g. --data cifar10:../shared/data/cifar10-jpeg.tar.xz")
    if out is None:
        raise ValueError("--out is required: a folder for counterfactuals.json, table.md and grid.png")
    tgt = parse_target(target)
    for label, v in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        if v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    eps_v = parse_number(eps)
    size = parse_number(step_size)
    if size is not None and not size > 0:
        raise ValueError(f"--step-size must be > 0, got {step_size}")
    device = setup_runtime(device, threads)
    threat_model = check_threat_model(threat_model)
    attack_geometry(None, attack_threat_model, threat_model or "L2", eps_v)  # bad geometry or eps fails before loading
    from .. import _dist
    from ..analysis import counterfactuals
    from .energy import _check_out

    folder = _check_out(out)
    _dist.init_if_needed(device)  # under torchrun: join the group first, so "cuda" means cuda:LOCAL_RANK
    dev = _dist.resolve_device(device)
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                                arch=arch, trust_checkpoint=trust_checkpoint, device=dev)
    own = model.threat_model if model.threat_model in ("L2", "Linf") else "L2"  # counterfactuals: L2 by default
    geom = attack_geometry(model, attack_threat_model, threat_model or own, eps_v)
    cf = counterfactuals(model, data, target=tgt, geometry=geom, steps=steps, step_size=size, n=n,
                         batch_size=batch_size, seed=seed, device=dev, progress=True)
    if not _dist.is_rank0():
        return
    from .._io import atomic_write_text

    cf.to_json(folder / "counterfactuals.json")
    atomic_write_text(folder / "table.md", cf.table())
    cf.grid(folder / "grid.png")
    click.echo(cf.table())
    click.echo(f"wrote {folder}/counterfactuals.json, table.md, grid.png")
