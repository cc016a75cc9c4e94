"""``ebmlens accuracy``: clean and robust accuracy of a model (the numbers of a model card)."""

from __future__ import annotations


import click

from ..cli import friendly_errors, main, parse_number


@main.command("accuracy")
@click.option("--model", "model_spec", default=None, help="Model spec (default: the bundled ebmlens:cifar10-l2-small).")
@click.option("--model-dir", default="models", show_default=True, help="Folder of RobustBench checkpoints.")
@click.option("--dataset", default=None, help="RobustBench dataset (cifar10, cifar100, imagenet).")
@click.option("--model-threat-model", default=None, help="RobustBench threat model of the checkpoint.")
@click.option("--arch", default=None, help="Architecture for file: checkpoints.")
@click.option("--data", required=True, help="Data spec; the test split is used unless @train is given.")
@click.option("-n", "--n", "n", default=None, type=int, help="Evaluate a strided subset of N images (default: all).")
@click.option("--attack", default="pgd", show_default=True,
              help="pgd (ours, deterministic: no random start) or apgd-ce (torchattacks APGD, needs the attacks extra).")
@click.option("--threat-model", default="L2", show_default=True, type=click.Choice(["L2", "Linf"]))
@click.option("--eps", default="0.5", show_default=True, help="Radius in [0,1] pixels (0.5, 8/255, ...).")
@click.option("--steps", default=10, show_default=True, type=int)
@click.option("--step-size", default=None, help="PGD step (default 2.5*eps/steps).")
@click.option("--batch-size", default=250, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of randomized attacks (APGD).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the result as JSON here.")
@friendly_errors
def accuracy_cmd(model_spec, model_dir, dataset, model_threat_model, arch, data, n, attack, threat_model, eps, steps,
                 step_size, batch_size, device, seed, out) -> None:
    """Clean accuracy and robust accuracy under an attack, on a dataset's test split."""
    import numpy as np

    from ..attacks import get_attack
    from ..data import load_data
    from ..metrics import robust_accuracy
    from ._common import load_model_from_cli

    if attack not in ("pgd", "apgd-ce"):
        raise ValueError(f"unknown attack {attack!r} for accuracy; choose 'pgd' or 'apgd-ce'")
    eps_f = parse_number(eps)
    options = {"step_size": parse_number(step_size)} if attack == "pgd" else {"seed": seed}
    atk = get_attack(attack, threat_model=threat_model, eps=eps_f, steps=steps, **options)
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=model_threat_model, arch=arch)
    model.to(device)
    ds = load_data(data, default_split="test")
    idx = ds.strided(n) if n else np.arange(len(ds))
    res = robust_accuracy(model, ds, atk, indices=idx, batch_size=batch_size, device=device).to_dict()
    res["model"] = model.describe()
    res["data"] = ds.source
    line = (f"{res['model'].get('name') or model_spec}: n={res['n']} clean_acc={res['clean_acc']:.4f} "
            f"robust_acc={res['robust_acc']:.4f} ({res['attack']}, eps={eps_f:.4g}, steps={res['steps']})")
    click.echo(line)
    if out:
        from .._io import atomic_write_json

        atomic_write_json(out, res)
