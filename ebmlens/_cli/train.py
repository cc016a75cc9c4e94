"""``ebmlens train``: adversarial training with PGD-AT, TRADES, WEAT or Robust-JEM."""

from __future__ import annotations

import click

from . import friendly_errors, parse_number
from ._common import class_map_option, runtime_options, setup_runtime


@click.command("train")
@click.option("--data", required=True, help="Data spec, e.g. cifar10:PATH (train split for training, test for evaluation).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints, metrics).")
@click.option("--arch", default="resnet-small", show_default=True, help="Registered arch or module.path:factory.")
@click.option("--objective", default="pgd-at", show_default=True,
              help="pgd-at, trades, weat-adv, weat-nat, robust-jem or standard.")
@click.option("--threat-model", default="L2", show_default=True, type=click.Choice(["L2", "Linf"]))
@click.option("--eps", default="0.5", show_default=True, help="Attack radius in [0,1] pixels (e.g. 0.5 or 8/255).")
@click.option("--attack-steps", default=10, show_default=True, type=int, help="PGD steps of the training attack.")
@click.option("--attack-step-size", default=None, help="PGD step (default 2.5*eps/steps).")
@click.option("--epochs", default=15, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=0.1, show_default=True, type=float, help="Peak learning rate.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--schedule", default="onecycle", show_default=True, type=click.Choice(["onecycle", "cosine"]))
@click.option("--beta", default=6.0, show_default=True, type=float, help="TRADES/WEAT KL weight (both use 6).")
@click.option("--seed", default=0, show_default=True, type=int)
@runtime_options()
@click.option("--amp", default="none", show_default=True, type=click.Choice(["none", "bf16", "fp16"]))
@click.option("--channels-last/--no-channels-last", default=False, show_default=True)
@click.option("--eval-n", default=1000, show_default=True, type=int, help="Held-out test images evaluated each epoch (strided).")
@click.option("--max-train-images", default=None, type=int, help="Train on a strided subset (for quick runs).")
@click.option("--checkpoint-every", default=100, show_default=True, type=int, help="Steps between last.pt saves.")
@click.option("--buffer-size", default=10000, show_default=True, type=int, help="robust-jem: replay buffer size.")
@click.option("--reinit-freq", default=0.05, show_default=True, type=float, help="robust-jem: chains restarted per step.")
@click.option("--gamma", default=1.0, show_default=True, type=float, help="robust-jem: weight of the generative term.")
@click.option("--sgld-steps", default=10, show_default=True, type=int, help="robust-jem: SGLD outer steps M.")
@click.option("--sgld-inner-steps", default=5, show_default=True, type=int, help="robust-jem: SGLD inner steps N.")
@click.option("--sgld-step-size", default=0.1, show_default=True, type=float, help="robust-jem: SGLD step a ([0,1] pixels).")
@click.option("--sgld-noise", default=0.0, show_default=True, type=float, help="robust-jem: SGLD noise std.")
@click.option("--jem-init", default="gaussian", show_default=True, type=click.Choice(["gaussian", "uniform"]),
              help="robust-jem: buffer init (class Gaussians of the training set, as JEM++, or uniform noise).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt after a kill.")
@class_map_option
@friendly_errors
def train_cmd(resume: bool, eps: str, attack_step_size: str | None, objective: str, beta: float, buffer_size: int,
              reinit_freq: float, gamma: float, sgld_steps: int, sgld_inner_steps: int, sgld_step_size: float,
              sgld_noise: float, jem_init: str, device: str, threads: int | None, **kw) -> None:
    """Train a classifier adversarially and evaluate clean/PGD accuracy each epoch."""
    from .._dist import resolve_device
    from ..train import TrainConfig, train

    kw["device"] = str(resolve_device(setup_runtime(device, threads)))
    step = parse_number(attack_step_size) if attack_step_size is not None else None
    obj = objective_from_flags(objective, beta=beta, buffer_size=buffer_size, reinit_freq=reinit_freq, gamma=gamma,
                               sgld_steps=sgld_steps, sgld_inner_steps=sgld_inner_steps, sgld_step_size=sgld_step_size,
                               sgld_noise=sgld_noise, init=jem_init)
    cfg = TrainConfig(eps=parse_number(eps), attack_step_size=step, objective=obj, **kw)
    result = train(cfg, resume=resume, progress=True)
    final = result.final
    click.echo(f"done: {cfg.out} clean_acc={final.get('clean_acc', float('nan')):.4f} "
               f"robust_acc={final.get('robust_acc', float('nan')):.4f} (n={final.get('n')})")


def objective_from_flags(name: str, **flags):
    """``--objective NAME`` and its flags as an objective object (``--beta`` for TRADES/WEAT, the
    robust-jem flags for ``RobustJEM``). Flags an objective has no use for are checked and ignored, as always."""
    from ..train.objectives import RobustJEM, from_name

    if not flags["beta"] >= 0:
        raise ValueError(f"beta must be >= 0, got {flags['beta']}")
    RobustJEM(**{k: v for k, v in flags.items() if k != "beta"})  # the robust-jem flags are checked for any objective
    return from_name(name, **flags)
