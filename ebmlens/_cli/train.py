"""``ebmlens train``: adversarial training with PGD-AT, TRADES, WEAT or Robust-JEM; DAT's energy fine-tuning."""

from __future__ import annotations

import click

from . import friendly_errors, parse_number
from ._common import class_map_option, runtime_options, setup_runtime


@click.command("train")
@click.option("--data", required=True,
              help="Data spec, e.g. cifar10:PATH (train split for training, test for evaluation).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints, metrics).")
@click.option("--arch", default=None, help="Registered arch or module.path:factory (default resnet-small, or the "
              "--init-from model's).")
@click.option("--objective", default="pgd-at", show_default=True,
              help="pgd-at, trades, weat-adv, weat-nat, robust-jem, standard or dat (DAT's energy fine-tuning: "
                   "needs --init-from and --negatives; its defaults: lr 1e-3 constant, EMA 0.999, AT step 0.1).")
@click.option("--init-from", default=None, help="Start from this model (ebmlens:NAME, robustbench:NAME, file:PATH).")
@click.option("--threat-model", default="L2", show_default=True, type=click.Choice(["L2", "Linf"]))
@click.option("--eps", default="0.5", show_default=True, help="Attack radius in [0,1] pixels (e.g. 0.5 or 8/255).")
@click.option("--attack-steps", default=10, show_default=True, type=int, help="PGD steps of the training attack.")
@click.option("--attack-step-size", default=None, help="PGD step (default 2.5*eps/steps).")
@click.option("--epochs", default=15, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=0.1, show_default=True, type=float, help="Peak learning rate.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--schedule", default="onecycle", show_default=True,
              type=click.Choice(["onecycle", "cosine", "constant"]))
@click.option("--ema", default=None, type=float, help="Keep an EMA of the weights with this decay (e.g. 0.999); it is "
              "evaluated and exported.")
@click.option("--grid-per-class", default=4, show_default=True, type=int,
              help="Images per class in each interval grid.")
@click.option("--log-every", default=None, type=int, help="Steps between rows of intervals.json (and DAT's grids).")
@click.option("--beta", default=6.0, show_default=True, type=float, help="TRADES/WEAT KL weight (both use 6).")
@click.option("--seed", default=0, show_default=True, type=int)
@runtime_options()
@click.option("--amp", default="none", show_default=True, type=click.Choice(["none", "bf16", "fp16"]))
@click.option("--channels-last/--no-channels-last", default=False, show_default=True)
@click.option("--eval-n", default=1000, show_default=True, type=int,
              help="Held-out test images evaluated each epoch (strided).")
@click.option("--eval-steps", default=10, show_default=True, type=int, help="PGD steps of the evaluation attack.")
@click.option("--max-train-images", default=None, type=int, help="Train on a strided subset (for quick runs).")
@click.option("--checkpoint-every", default=100, show_default=True, type=int, help="Steps between last.pt saves.")
@click.option("--buffer-size", default=10000, show_default=True, type=int, help="robust-jem: replay buffer size.")
@click.option("--reinit-freq", default=0.05, show_default=True, type=float,
              help="robust-jem: chains restarted per step.")
@click.option("--gamma", default=1.0, show_default=True, type=float, help="robust-jem: weight of the generative term.")
@click.option("--sgld-steps", default=10, show_default=True, type=int, help="robust-jem: SGLD outer steps M.")
@click.option("--sgld-inner-steps", default=5, show_default=True, type=int, help="robust-jem: SGLD inner steps N.")
@click.option("--sgld-step-size", default=0.1, show_default=True, type=float,
              help="robust-jem: SGLD step a ([0,1] pixels).")
@click.option("--sgld-noise", default=0.0, show_default=True, type=float, help="robust-jem: SGLD noise std.")
@click.option("--jem-init", default="gaussian", show_default=True, type=click.Choice(["gaussian", "uniform"]),
              help="robust-jem: buffer init (class Gaussians of the training set, as JEM++, or uniform noise).")
@click.option("--negatives", default=None, help="dat: seeds of the negatives: a data spec of other images, or "
              "stats:NAME / stats:PATH for class-Gaussian seeds (e.g. stats:cifar10-l2-small).")
@click.option("--auc-threshold", default=0.8, show_default=True, type=float, help="dat: mean window AUC that raises T.")
@click.option("--auc-window", default=8, show_default=True, type=int, help="dat: batches in the AUC window.")
@click.option("--t-start", default=0, show_default=True, type=int, help="dat: first level of T.")
@click.option("--t-max", default=50, show_default=True, type=int, help="dat: last level of T.")
@click.option("--neg-step-size", default=0.1, show_default=True, type=float, help="dat: step of the negatives' ascent.")
@click.option("--grid-steps", default=33, show_default=True, type=int, help="dat: sampler steps of the interval grids.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt after a kill.")
@class_map_option
@friendly_errors
def train_cmd(resume: bool, eps: str, attack_step_size: str | None, objective: str, beta: float, buffer_size: int,
              reinit_freq: float, gamma: float, sgld_steps: int, sgld_inner_steps: int, sgld_step_size: float,
              sgld_noise: float, jem_init: str, device: str, threads: int | None, negatives: str | None,
              auc_threshold: float, auc_window: int, t_start: int, t_max: int, neg_step_size: float, grid_steps: int,
              **kw) -> None:
    """Train a classifier adversarially and evaluate clean/PGD accuracy each epoch."""
    from .._dist import resolve_device
    from ..train import TrainConfig, train

    kw["device"] = str(resolve_device(setup_runtime(device, threads)))
    if objective == "dat":
        from ..train.objectives import DAT

        if kw["init_from"] is None:
            raise ValueError("--objective dat fine-tunes a trained model: pass --init-from MODEL (e.g. "
                             "ebmlens:cifar10-l2-small)")
        if negatives is None:
            raise ValueError("--objective dat needs --negatives: a data spec of other images, or stats:NAME for "
                             "class-Gaussian seeds (e.g. stats:cifar10-l2-small)")
        attack_step_size = _dat_defaults(kw, attack_step_size)
        obj = DAT(negatives=negatives, threshold=auc_threshold, window=auc_window, t_start=t_start, t_max=t_max,
                  step_size=neg_step_size, grid_steps=grid_steps)
    else:
        obj = objective_from_flags(objective, beta=beta, buffer_size=buffer_size, reinit_freq=reinit_freq,
                                   gamma=gamma, sgld_steps=sgld_steps, sgld_inner_steps=sgld_inner_steps,
                                   sgld_step_size=sgld_step_size, sgld_noise=sgld_noise, init=jem_init)
    step = parse_number(attack_step_size) if attack_step_size is not None else None
    eps_value = parse_number(eps)
    if eps_value is None:
        raise ValueError("--eps needs a number, e.g. 0.5 or 8/255")
    cfg = TrainConfig(eps=eps_value, attack_step_size=step, objective=obj, **kw)
    result = train(cfg, resume=resume, progress=True)
    final = result.final
    click.echo(f"done: {cfg.out} clean_acc={final.get('clean_acc', float('nan')):.4f} "
               f"robust_acc={final.get('robust_acc', float('nan')):.4f} (n={final.get('n')})")


def _dat_defaults(kw: dict, attack_step_size):
    """DAT's settings for the options the user left at their PGD-AT defaults: lr 1e-3, constant schedule,
    EMA 0.999, AT step 0.1; returns the attack step size."""
    ctx = click.get_current_context()

    def unset(name: str) -> bool:
        return ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT)

    for name, value in (("lr", 1e-3), ("schedule", "constant"), ("ema", 0.999)):
        if unset(name):
            kw[name] = value
    return "0.1" if unset("attack_step_size") else attack_step_size


def objective_from_flags(name: str, **flags):
    """``--objective NAME`` and its flags as an objective object (``--beta`` for TRADES/WEAT, the
    robust-jem flags for ``RobustJEM``). Flags an objective has no use for are checked and ignored, as always."""
    from ..train.objectives import RobustJEM, from_name

    if not flags["beta"] >= 0:
        raise ValueError(f"beta must be >= 0, got {flags['beta']}")
    RobustJEM(**{k: v for k, v in flags.items() if k != "beta"})  # the robust-jem flags are checked for any objective
    return from_name(name, **flags)
