"""A small adversarial trainer: augmentation, SGD with one-cycle or cosine, checkpoints, resume.

Determinism: the initial weights, the data order of epoch ``e`` and the augmentation/attack noise of
step ``s`` come from generators seeded by ``seed``, ``(seed, e)`` and ``(seed, e, s)``; torch's global
RNG is neither used nor changed (the init runs under ``torch.random.fork_rng``).
A run killed and resumed from ``last.pt`` therefore continues at the same step with the same
numbers as an uninterrupted run (on the same device and thread count).

Files in ``out``: ``last.pt`` (model, optimizer, scheduler, position; rewritten atomically every
``checkpoint_every`` steps and at each epoch's end), ``epoch_NNN.pt`` (weights + metadata, read
by :func:`ebmlens.analysis.dynamics` and ``file:`` loading), ``metrics.json`` (per-epoch clean and
robust accuracy), ``config.json`` and, at the end, ``model.safetensors`` + ``model.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from ..attacks import default_step_size, make_geometry, pgd
from ..data import ImageData, load_data
from ..energy import EnergyModel
from ..models.archs import get_arch
from ..rng import sample_seed
from . import objectives as O

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate_accuracy", "build_model", "CIFAR10_MEAN", "CIFAR10_STD"]

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

BETA_OBJECTIVES = ("trades", "weat-adv", "weat-nat")  # objectives that take ``beta=cfg.beta``
STATEFUL_OBJECTIVES = ("robust-jem",)  # ``(loss, state) = objective(model, x, y, attack, state, ...)``


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (saved as config.json; ``ebmlens train`` options map onto it)."""

    data: str
    out: str
    arch: str = "resnet-small"
    objective: str = "pgd-at"
    threat_model: Literal["L2", "Linf"] = "L2"
    eps: float = 0.5
    attack_steps: int = 10
    attack_step_size: float | None = None
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    pct_start: float = 0.25
    beta: float = 6.0
    seed: int = 0
    device: str = "cpu"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    eval_n: int = 1000
    eval_steps: int = 10
    checkpoint_every: int = 100
    max_train_images: int | None = None
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    # robust-jem only (JEM++'s defaults; see ebmlens.train.objectives.robust_jem)
    buffer_size: int = 10000
    reinit_freq: float = 0.05
    gamma: float = 1.0
    sgld_steps: int = 10
    sgld_inner_steps: int = 5
    sgld_step_size: float = 0.1
    sgld_noise: float = 0.0
    jem_init: Literal["gaussian", "uniform"] = "gaussian"

    def __post_init__(self) -> None:
        if self.objective not in O.OBJECTIVES:
            import difflib

            close = difflib.get_close_matches(self.objective, list(O.OBJECTIVES))
            raise ValueError(f"unknown objective {self.objective!r}"
                             + (f"; did you mean {close[0]}?" if close else "")
                             + f" Choices: {', '.join(sorted(O.OBJECTIVES))}")
        get_arch(self.arch)  # raises with choices
        if self.threat_model not in ("L2", "Linf"):
            raise ValueError(f"threat_model must be 'L2' or 'Linf', got {self.threat_model!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be > 0, got {self.eps}")
        for name in ("epochs", "batch_size", "attack_steps", "checkpoint_every", "eval_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        for name in ("buffer_size", "sgld_steps", "sgld_inner_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.reinit_freq <= 1:
            raise ValueError(f"reinit_freq must be in [0, 1], got {self.reinit_freq}")
        if not (self.gamma >= 0 and self.sgld_step_size > 0 and self.sgld_noise >= 0):
            raise ValueError(f"need gamma >= 0, sgld_step_size > 0, sgld_noise >= 0; got {self.gamma}, "
                             f"{self.sgld_step_size}, {self.sgld_noise}")
        if self.jem_init not in ("gaussian", "uniform"):
            raise ValueError(f"jem_init must be 'gaussian' or 'uniform', got {self.jem_init!r}")
        if self.objective in STATEFUL_OBJECTIVES and self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size {self.buffer_size} is smaller than batch_size {self.batch_size}")

    @property
    def attack(self) -> O.AttackConfig:
        return O.AttackConfig(self.threat_model, float(self.eps), int(self.attack_steps), self.attack_step_size)


@dataclass(frozen=True)
class TrainResult:
    out: str
    epochs: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def build_model(arch: str, num_classes: int = 10, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=None,
                input_shape=(3, 32, 32), **provenance) -> EnergyModel:
    net = get_arch(arch)(num_classes=num_classes)
    return EnergyModel(net, mean=mean, std=std, input_shape=input_shape, num_classes=num_classes,
                       class_names=class_names, **provenance)


def _gen(*keys: int) -> torch.Generator:
    s = 0
    for k in keys:
        s = sample_seed(s, int(k))
    return torch.Generator().manual_seed(s)


def _augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip (the standard CIFAR augmentation)."""
    n, c, h, w = xb.shape
    padded = F.pad(xb, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_r = rows.view(n, 1, h, 1).expand(n, c, h, w + 8)
    out = padded.gather(2, idx_r)
    idx_c = cols.view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, idx_c)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _clean_correct(model: EnergyModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.logits(x).argmax(1) == y


def evaluate_accuracy(model: EnergyModel, data: ImageData, *, indices=None, threat_model: str = "L2", eps: float = 0.5,
                      steps: int = 10, step_size: float | None = None, batch_size: int = 250,
                      device=None, amp: str = "none") -> dict:
    """Clean accuracy and PGD robust accuracy (untargeted CE, no random start: deterministic).

    ``step_size`` defaults to ``2.5 * eps / steps``. Returns ``{"n", "clean_acc", "robust_acc", ...}``:
    :func:`ebmlens.metrics.robust_accuracy` with our PGD, as a dict.
    """
    from ..attacks import get_attack
    from ..metrics import robust_accuracy

    attack = get_attack("pgd", threat_model=threat_model, eps=eps, steps=steps, step_size=step_size)
    dtype = None if amp == "none" else (torch.bfloat16 if amp == "bf16" else torch.float16)
    return robust_accuracy(model, data, attack, indices=indices, batch_size=batch_size, device=device,
                           autocast=dtype).to_dict()


def _save_weights_ckpt(model: EnergyModel, cfg: TrainConfig, path: Path, epoch: int, metrics: dict | None) -> None:
    meta = {"arch": cfg.arch, "num_classes": model.num_classes, "class_names": model.class_names,
            "mean": list(cfg.mean), "std": list(cfg.std), "input_shape": list(model.input_shape),
            "epoch": epoch, "objective": cfg.objective, "threat_model": cfg.threat_model, "eps": cfg.eps,
            "metrics": metrics or {}}
    atomic_torch_save({"state_dict": model.classifier.state_dict(), "ebmlens_meta": meta}, path)




def _check_data_path(spec: str) -> None:
    """Fail on a missing data path before anything is written to the run folder."""
    from ..data import parse_data_spec

    if isinstance(spec, str):
        _, path, _ = parse_data_spec(spec)
        if not Path(path).expanduser().exists():
            raise FileNotFoundError(f"data path {path!r} does not exist (from --data {spec!r}); "
                                    "point it at the CIFAR-10 archive or an npz/folder of images")


def _objective_kwargs(cfg: TrainConfig, data: ImageData, n_train: int) -> dict:
    """Keyword arguments of a stateful objective, built once per run."""
    if cfg.objective != "robust-jem":
        return {}
    from ..sampling.init import GaussianInit, NoiseInit

    if cfg.jem_init == "gaussian":  # JEM++'s informative init: class Gaussians of the training images
        from ..stats import class_stats

        init = GaussianInit(class_stats(data, n=n_train if n_train < len(data) else None))
    else:
        init = NoiseInit("uniform")
    sgld = O.jempp_sgld(steps=cfg.sgld_steps, inner_steps=cfg.sgld_inner_steps, step_size=cfg.sgld_step_size,
                        noise=cfg.sgld_noise)
    return {"gamma": cfg.gamma, "reinit_freq": cfg.reinit_freq, "sgld": sgld, "init": init}


def _initial_objective_state(cfg: TrainConfig, model: EnergyModel, device: torch.device, kwargs: dict):
    """The state a stateful objective starts from (``None`` for the stateless ones); its own seed."""
    if cfg.objective != "robust-jem":
        return None
    return O.init_replay_buffer(model, cfg.buffer_size, init=kwargs["init"], generator=_gen(cfg.seed, 2_000_003),
                                device=device)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | Callable[[dict], None] = False,
          objective_fn: Callable | None = None) -> TrainResult:
    """Run (or resume) adversarial training described by ``cfg``; returns per-epoch metrics."""
    _check_data_path(cfg.data)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {str(out)!r} is not writable ({e}); choose another --out") from e
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")
    train_data = load_data(cfg.data, "train")
    test_data = load_data(cfg.data, "test")  # folder:/npz: specs have no split: the same images
    n_train = len(train_data) if cfg.max_train_images is None else min(len(train_data), int(cfg.max_train_images))
    train_idx = train_data.strided(n_train) if n_train < len(train_data) else np.arange(len(train_data))
    eval_idx = test_data.strided(min(cfg.eval_n, len(test_data)))

    # The initial weights come from cfg.seed: torch's global generator starts from a random seed in
    # each process, so an unseeded init would make the same command give different models.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(cfg.seed, 3_000_017))
        model = build_model(cfg.arch, train_data.num_classes, cfg.mean, cfg.std, train_data.class_names,
                            input_shape=(train_data.images.shape[3], *train_data.images.shape[1:3]),
                            source="file", name=cfg.arch, dataset=train_data.source, threat_model=cfg.threat_model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n_train} training images")
    total = steps_per_epoch * cfg.epochs
    decay, no_decay = [], []
    for n_, p in model.classifier.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.schedule == "onecycle" and cfg.pct_start * total < 2:  # OneCycleLR divides by zero below that
        raise ValueError(f"the one-cycle schedule needs pct_start * total steps >= 2, got {cfg.pct_start} * {total}; "
                         "train longer, raise --max-train-images, or use --schedule cosine")
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp == "fp16" and device.type == "cuda") else None
    objective = objective_fn or O.OBJECTIVES[cfg.objective]
    obj_kwargs = _objective_kwargs(cfg, train_data, n_train)
    state = _initial_objective_state(cfg, model, device, obj_kwargs)

    epoch, step, history, epoch_loss_sum = 0, 0, [], 0.0
    last = out / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, map_location=device, weights_only=True)
        saved_cfg = ck.get("config", {})
        for k in ("arch", "objective", "epochs", "batch_size", "seed", "eps", "threat_model", "buffer_size"):
            if k in saved_cfg and saved_cfg[k] != getattr(cfg, k):
                raise ValueError(f"--resume: {k} was {saved_cfg[k]!r} in {last} but is {getattr(cfg, k)!r} now; "
                                 "resume with the same settings or choose a new --out")
        model.classifier.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(ck.get("history_json") and json.loads(ck["history_json"]) or [])
        epoch_loss_sum = float(ck.get("epoch_loss_sum", 0.0))
        if state is not None:
            if ck.get("objective_state") is None:
                raise ValueError(f"--resume: {last} holds no {cfg.objective} state (replay buffer); "
                                 "it was written by another objective or an older ebmlens: choose a new --out")
            state = ck["objective_state"].to(device)
        log.info("resumed from %s at epoch %d step %d", last, epoch, step)
    elif resume:
        log.info("--resume given but %s does not exist; starting fresh", last)
    atomic_write_json(out / "config.json", asdict(cfg))

    def save_last(e: int, s: int, loss_so_far: float = 0.0) -> None:
        ck = {"state_dict": model.classifier.state_dict(), "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "epoch": e, "step": s, "config": asdict(cfg),
              "history_json": json.dumps(history), "epoch_loss_sum": loss_so_far, "objective_state": state}
        if scaler is not None:
            ck["scaler"] = scaler.state_dict()
        atomic_torch_save(ck, last)

    report = progress if callable(progress) else None
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=epoch * steps_per_epoch + step, unit="batch", dynamic_ncols=True)
    attack = cfg.attack
    while epoch < cfg.epochs:
        perm = torch.from_numpy(train_idx)[torch.randperm(n_train, generator=_gen(cfg.seed, epoch))]
        model.classifier.train()
        t0, seen, loss_sum = time.perf_counter(), 0, epoch_loss_sum  # loss_sum carries over a mid-epoch resume
        epoch_loss_sum = 0.0
        while step < steps_per_epoch:
            g = _gen(cfg.seed, epoch, step + 1_000_003)
            b = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size].numpy()
            xb = _augment(train_data.tensor(b), g).to(device)
            yb = train_data.label_tensor(b, device)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                if cfg.objective in STATEFUL_OBJECTIVES:  # objectives that carry state (a replay buffer)
                    loss, state = objective(model, xb, yb, attack, state, generator=g, **obj_kwargs)
                elif cfg.objective in BETA_OBJECTIVES:
                    loss = objective(model, xb, yb, attack, beta=cfg.beta, generator=g)
                else:
                    loss = objective(model, xb, yb, attack, generator=g)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            step += 1
            seen += len(b)
            loss_sum += float(loss.detach())
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / step if step else 0:.3f}", img_s=f"{ips:.0f}")
            if report is not None:
                report({"epoch": epoch, "step": step, "loss": float(loss.detach()), "images_per_s": ips})
            if step % cfg.checkpoint_every == 0 and step < steps_per_epoch:
                save_last(epoch, step, loss_sum)
        metrics = evaluate_accuracy(model, test_data, indices=eval_idx, threat_model=cfg.threat_model, eps=cfg.eps,
                                    steps=cfg.eval_steps, device=device, amp=cfg.amp)
        metrics.update(epoch=epoch + 1, train_loss=loss_sum / max(steps_per_epoch, 1), lr=sched.get_last_lr()[0])
        history.append(metrics)
        log.info("epoch %d: clean %.4f robust %.4f", epoch + 1, metrics["clean_acc"], metrics["robust_acc"])
        if bar is not None:
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['train_loss']:.4f} clean acc {metrics['clean_acc']:.4f} "
                      f"robust acc {metrics['robust_acc']:.4f} (n={metrics['n']}, PGD-{cfg.threat_model} eps {cfg.eps})")
        _save_weights_ckpt(model, cfg, out / f"epoch_{epoch + 1:03d}.pt", epoch + 1, metrics)
        epoch, step = epoch + 1, 0
        save_last(epoch, step)
        atomic_write_json(out / "metrics.json", history)
    if bar is not None:
        bar.close()
    _export(model, cfg, out, history)
    return TrainResult(str(out), history)


def _export(model: EnergyModel, cfg: TrainConfig, out: Path, history: list) -> None:
    atomic_save_safetensors(model.classifier.state_dict(), out / "model.safetensors")
    meta = {"arch": cfg.arch, "num_classes": model.num_classes, "class_names": model.class_names,
            "mean": list(cfg.mean), "std": list(cfg.std), "input_shape": list(model.input_shape),
            "threat_model": cfg.threat_model, "eps": cfg.eps, "config": asdict(cfg),
            "final_metrics": history[-1] if history else {}}
    atomic_write_json(out / "model.json", meta)


def config_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
