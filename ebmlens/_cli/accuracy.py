"""``ebmlens accuracy``: clean and robust accuracy of a model (the numbers of a model card)."""

from __future__ import annotations

import click

from . import friendly_errors, parse_number
from ._common import (
    attack_geometry,
    check_out_file,
    check_threat_model,
    class_map_option,
    load_model_from_cli,
    model_options,
    overwrite_option,
    runtime_options,
    setup_runtime,
)


@click.command("accuracy")
@model_options(model_default=None)
@click.option("--model-threat-model", default=None, hidden=True, help="Deprecated alias of --threat-model.")
@click.option("--attack-threat-model", default=None,
              help="Attack in this geometry (L2, Linf) instead of the model's threat model.")
@click.option("--data", required=True, help="Data spec; the test split is used unless @train is given.")
@click.option("-n", "--n", "n", default=None, type=int, help="Evaluate a strided subset of N images (default: all).")
@click.option("--attack", default="pgd", show_default=True,
              help="pgd (ours, deterministic: no random start) or apgd-ce (torchattacks APGD, "
                   "needs the attacks extra).")
@click.option("--eps", default=None,
              help="Radius in [0,1] pixels (0.5, 8/255, ...; default: the model's own, else 0.5 L2 / 8/255 Linf).")
@click.option("--steps", default=10, show_default=True, type=int)
@click.option("--step-size", default=None, help="PGD step (default 2.5*eps/steps).")
@click.option("--batch-size", default=250, show_default=True, type=int)
@runtime_options()
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of randomized attacks (APGD).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the result as JSON here.")
@class_map_option
@overwrite_option()
@friendly_errors
def accuracy_cmd(model_spec, model_dir, dataset, threat_model, arch, trust_checkpoint, model_threat_model,
                 attack_threat_model, data, n, attack, eps, steps, step_size, batch_size, device, threads, seed,
                 out, overwrite) -> None:
    """Clean accuracy and robust accuracy under an attack, on a dataset's test split."""
    import numpy as np

    from .. import _dist
    from ..attacks import get_attack
    from ..data import load_data
    from ..metrics import robust_accuracy

    check_out_file(out, overwrite=overwrite)  # before anything is computed
    if model_threat_model is not None:
        click.echo("note: --model-threat-model is deprecated; use --threat-model (the model's threat model)", err=True)
        if threat_model is not None and check_threat_model(threat_model) != check_threat_model(model_threat_model):
            raise ValueError(f"--model-threat-model {model_threat_model} and --threat-model {threat_model} disagree; "
                             "give --threat-model only")
        threat_model = model_threat_model
    if attack not in ("pgd", "apgd-ce"):
        raise ValueError(f"unknown attack {attack!r} for accuracy; choose 'pgd' or 'apgd-ce'")
    device = setup_runtime(device, threads)
    threat_model = check_threat_model(threat_model)
    eps_v = parse_number(eps)
    options = {"step_size": parse_number(step_size)} if attack == "pgd" else {"seed": seed}
    geom0 = attack_geometry(None, attack_threat_model, threat_model, eps_v)  # bad eps or geometry fails here
    get_attack(attack, threat_model=geom0.threat_model, eps=geom0.eps, steps=steps, **options)  # and bad options
    dev = _dist.resolve_device(device)
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model, arch=arch,
                                trust_checkpoint=trust_checkpoint, device=dev)
    geom = attack_geometry(model, attack_threat_model, threat_model, eps_v)
    eps_f = geom.eps
    atk = get_attack(attack, threat_model=geom.threat_model, eps=eps_f, steps=steps, **options)
    ds = load_data(data, default_split="test", preprocess=model.preprocess)
    idx = ds.strided(n) if n else np.arange(len(ds))
    res = robust_accuracy(model, ds, atk, indices=idx, batch_size=batch_size, device=dev).to_dict()
    res["model"] = model.describe()
    res["data"] = ds.source
    line = (f"{res['model'].get('name') or model_spec}: n={res['n']} clean_acc={res['clean_acc']:.4f} "
            f"robust_acc={res['robust_acc']:.4f} ({res['attack']}, eps={eps_f:.4g}, steps={res['steps']})")
    click.echo(line)
    if out:
        from .._io import atomic_write_json

        atomic_write_json(out, res)
