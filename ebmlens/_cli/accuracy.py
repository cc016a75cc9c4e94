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

    from ..data import load_data
    from ..train.trainer import evaluate_accuracy
    from ._common import load_model_from_cli

    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=model_threat_model, arch=arch)
    model.to(device)
    ds = load_data(data, default_split="test")
    idx = ds.strided(n) if n else np.arange(len(ds))
    eps_f = parse_number(eps)
    if attack == "pgd":
        res = evaluate_accuracy(model, ds, indices=idx, threat_model=threat_model, eps=eps_f, steps=steps,
                                step_size=parse_number(step_size), batch_size=batch_size, device=device)
    elif attack == "apgd-ce":
        res = _apgd_accuracy(model, ds, idx, threat_model, eps_f, steps, batch_size, device, seed)
    else:
        raise ValueError(f"unknown attack {attack!r} for accuracy; choose 'pgd' or 'apgd-ce'")
    res["model"] = model.describe()
    res["data"] = ds.source
    line = (f"{res['model'].get('name') or model_spec}: n={res['n']} clean_acc={res['clean_acc']:.4f} "
            f"robust_acc={res['robust_acc']:.4f} ({res['attack']}, eps={eps_f:.4g}, steps={res['steps']})")
    click.echo(line)
    if out:
        from .._io import atomic_write_json

        atomic_write_json(out, res)


def _apgd_accuracy(model, ds, idx, threat_model, eps, steps, batch_size, device, seed) -> dict:
    import contextlib
    import io

    import torch

    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("APGD needs torchattacks: pip install 'ebmlens[attacks]'") from e
    clean = robust = 0
    with model.mode("eval"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        atk = torchattacks.APGD(model, norm=threat_model, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)
        for xb, yb in ds.batches(batch_size, idx, device=device):
            with torch.no_grad():
                ok = model.logits(xb).argmax(1) == yb
            with contextlib.redirect_stdout(io.StringIO()):
                xa = atk(xb, yb)
            with torch.no_grad():
                rob = model.logits(xa).argmax(1) == yb
            clean += int(ok.sum())
            robust += int((ok & rob).sum())
    n = len(idx)
    return {"n": n, "clean_acc": clean / n, "robust_acc": robust / n, "attack": f"apgd-ce-{threat_model} (torchattacks)",
            "eps": eps, "steps": steps, "restarts": 1, "seed": seed}
