"""A small adversarial trainer: augmentation, SGD with one-cycle or cosine, checkpoints, resume.

Determinism: the initial weights, the data order of epoch ``e`` and the augmentation/attack noise of
step ``s`` come from generators seeded by ``seed``, ``(seed, e)`` and ``(seed, e, s)``; torch's global
RNG is neither used nor changed (the init runs under ``torch.random.fork_rng``).
A run killed and resumed from ``last.pt`` therefore continues at the same step with the same
numbers as an uninterrupted run (on the same device and thread count).

The objective is an object (:mod:`ebmlens.train.objectives`): each step is
``loss, state = objective(model, x, y, cfg.attack, state, generator=g)``, whatever the objective.

Files in ``out``: ``last.pt`` (model, optimizer, scheduler, position, objective state; rewritten
atomically every ``checkpoint_every`` steps and at each epoch's end), ``epoch_NNN.pt`` (weights +
metadata, read by :func:`ebmlens.analysis.dynamics` and ``file:`` loading), ``metrics.json``
(per-epoch clean and robust accuracy), ``config.json`` (:meth:`TrainConfig.to_dict`) and, at the
end, ``model.safetensors`` + ``model.json`` (see :mod:`ebmlens.train._checkpoint`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write_json
from .._perf import autocast_context
from .._validate import parse_device
from ..data import ImageData, load_data, require_labels
from ..energy import EnergyModel
from ..models.archs import get_arch
from ..rng import sample_seed
from . import _checkpoint as ckpt
from ._config import CIFAR10_MEAN, CIFAR10_STD, TrainConfig
from ._ema import EMA
from ._interval import interval_row, save_intervals

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate_accuracy", "build_model", "CIFAR10_MEAN", "CIFAR10_STD"]

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # TrainConfig.amp -> autocast_context


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
    """``amp`` (``"none"``, ``"bf16"``, ``"fp16"``) as :func:`ebmlens._perf.autocast_context`."""
    return autocast_context(device, AMP_DTYPES[amp])


@torch.no_grad()
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


def _check_data_path(spec: str) -> None:
    """Fail on a missing data path before anything is written to the run folder."""
    from ..data import parse_data_spec

    if isinstance(spec, str):
        _, path, _ = parse_data_spec(spec)
        if not Path(path).expanduser().exists():
            raise FileNotFoundError(f"data path {path!r} does not exist (from --data {spec!r}); "
                                    "point it at the CIFAR-10 archive or an npz/folder of images")


_RUN_FILES = ("last.pt", "config.json", "metrics.json", "model.safetensors", "intervals.json")


def _prepare_out(out: Path, resume: bool = False) -> None:
    """Make ``out`` (writable), refusing to start over an earlier run there unless resuming it."""
    if not resume and out.is_dir():
        found = [n for n in _RUN_FILES if (out / n).exists()] + sorted(p.name for p in out.glob("epoch_*.pt"))[:1]
        if found:
            raise ValueError(f"--out {str(out)!r} holds an earlier training run ({', '.join(found)}); pass --resume to "
                             "continue it, or choose a new --out (nothing was overwritten)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {str(out)!r} is not writable ({e}); choose another --out") from e


def _fit_to_data(cfg: TrainConfig, n_train: int) -> tuple[TrainConfig, list[str]]:
    """Quick runs on few images: a batch larger than the set shrinks to the set, and a one-cycle
    schedule too short to warm up (``pct_start * steps < 2``, where OneCycleLR divides by zero)
    becomes cosine. Each change is logged and returned as a note (config.json records them)."""
    notes = []
    if n_train < cfg.batch_size:
        notes.append(f"batch_size {cfg.batch_size} is larger than the {n_train} training images: using {n_train}")
        cfg = replace(cfg, batch_size=n_train)
    total = (n_train // cfg.batch_size) * cfg.epochs
    if cfg.schedule == "onecycle" and cfg.pct_start * total < 2:
        notes.append(f"one-cycle needs pct_start * steps >= 2 (got {cfg.pct_start} * {total}): using the cosine "
                     "schedule")
        cfg = replace(cfg, schedule="cosine")
    for note in notes:
        log.warning("%s", note)
    return cfg, notes


def _optimizer(cfg: TrainConfig, model: EnergyModel, total: int):
    """Nesterov SGD (no weight decay on biases and BatchNorm) and the one-cycle or cosine schedule."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.classifier.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start)
    if cfg.schedule == "constant":
        return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)


def _legacy_objective_fn(fn: Callable, objective) -> Callable:
    """``train(objective_fn=fn)`` (deprecated): ``fn`` called as the named objective's loss function was."""
    warnings.warn("train(objective_fn=...) is deprecated: pass TrainConfig(objective=<an objective object>) "
                  "(ebmlens.train.objectives)", DeprecationWarning, stacklevel=3)
    kwargs = objective.kwargs() if callable(getattr(objective, "kwargs", None)) else {}

    def call(model, x, y, attack, state=None, *, generator=None):
        if state is None:
            return fn(model, x, y, attack, generator=generator, **kwargs), None
        return fn(model, x, y, attack, state, generator=generator, **kwargs)

    return call


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | Callable[[dict], None] = False,
          objective_fn: Callable | None = None) -> TrainResult:
    """Run (or resume) adversarial training described by ``cfg``; returns per-epoch metrics.

    ``progress``: ``True`` for a tqdm bar, or a callable given ``{"epoch", "step", "loss",
    "images_per_s"}`` after each step. ``objective_fn`` is deprecated (use ``cfg.objective``).
    """
    _check_data_path(cfg.data)
    name = parse_device(cfg.device)  # the one device parser (fails when the device is not here)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    _autocast(device, cfg.amp)  # an amp the device cannot run fails here, before anything is written
    out = Path(cfg.out)
    _prepare_out(out, resume)
    if cfg.init_from is not None and cfg.arch is None:  # file:PATH: the architecture the file names
        from ._base import file_arch

        cfg = replace(cfg, arch=file_arch(cfg.init_from))
    train_data = require_labels(load_data(cfg.data, "train"), "train")
    # folder:/npz: specs have no split: the same images
    test_data = require_labels(load_data(cfg.data, "test"), "train")
    n_train = len(train_data) if cfg.max_train_images is None else min(len(train_data), int(cfg.max_train_images))
    train_idx = train_data.strided(n_train) if n_train < len(train_data) else np.arange(len(train_data))
    eval_idx = test_data.strided(min(cfg.eval_n, len(test_data)))

    # The initial weights come from cfg.seed: torch's global generator starts from a random seed in
    # each process, so an unseeded init would make the same command give different models.
    if cfg.init_from is not None:
        from ._base import load_base

        model = load_base(cfg.init_from, str(cfg.arch), train_data, cfg.threat_model)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(cfg.seed, 3_000_017))
            model = build_model(str(cfg.arch), train_data.num_classes, cfg.mean, cfg.std, train_data.class_names,
                                input_shape=(train_data.image_shape[2], *train_data.image_shape[:2]),
                                source="file", name=cfg.arch, dataset=train_data.source, threat_model=cfg.threat_model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg, notes = _fit_to_data(cfg, n_train)
    steps_per_epoch = n_train // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt, sched = _optimizer(cfg, model, total)
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp == "fp16" and device.type == "cuda") else None
    objective = cfg.objective.for_data(train_data, n_train) if hasattr(cfg.objective, "for_data") else cfg.objective
    state = objective.init_state(model, generator=_gen(cfg.seed, 2_000_003), device=device)  # its own seed
    if objective_fn is not None:
        objective = _legacy_objective_fn(objective_fn, objective)

    train_mode = getattr(objective, "model_mode", "train") == "train"  # DAT: eval (BatchNorm frozen)
    ema = EMA(model.classifier, cfg.ema) if cfg.ema is not None else None
    last = out / "last.pt"
    pos = ckpt.Position(state=state)
    if resume and last.exists():
        pos = ckpt.resume(last, cfg, model, opt, sched, scaler, state, device)
        if ema is not None:
            ema.load_state_dict(pos.ema)
    elif resume:
        log.info("--resume given but %s does not exist; starting fresh", last)

    def evaluated():  # the model that is evaluated, saved and exported: the EMA when on
        return ema.copy_of(model) if ema is not None else model

    def accuracy(m):
        return evaluate_accuracy(m, test_data, indices=eval_idx, threat_model=cfg.threat_model, eps=cfg.eps,
                                 steps=cfg.eval_steps, device=device, amp=cfg.amp)

    def save_last():
        pos.ema = ema.state_dict() if ema is not None else None
        ckpt.save_last(last, cfg, model, opt, sched, scaler, pos)
    atomic_write_json(out / "config.json", {**cfg.to_dict(), "notes": notes})

    report = progress if callable(progress) else None
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=pos.epoch * steps_per_epoch + pos.step, unit="batch", dynamic_ncols=True)
    attack = cfg.attack
    while pos.epoch < cfg.epochs:
        perm = torch.from_numpy(train_idx)[torch.randperm(n_train, generator=_gen(cfg.seed, pos.epoch))]
        model.classifier.train(train_mode)
        t0, seen, loss_sum = time.perf_counter(), 0, pos.epoch_loss_sum  # carries over a mid-epoch resume
        while pos.step < steps_per_epoch:
            g = _gen(cfg.seed, pos.epoch, pos.step + 1_000_003)
            b = perm[pos.step * cfg.batch_size:(pos.step + 1) * cfg.batch_size].tolist()
            xb = _augment(train_data.tensor(b), g).to(device)
            yb = train_data.label_tensor(b, device)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                loss, pos.state = objective(model, xb, yb, attack, pos.state, generator=g)
            _optimizer_step(loss, opt, sched, scaler)
            if ema is not None:
                ema.update(model.classifier)
            pos.step += 1
            seen += len(b)
            loss_sum += float(loss.detach())
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=pos.epoch + 1, loss=f"{loss_sum / pos.step:.3f}", img_s=f"{ips:.0f}")
            if report is not None:
                report({"epoch": pos.epoch, "step": pos.step, "loss": float(loss.detach()), "images_per_s": ips})
            gstep = pos.epoch * steps_per_epoch + pos.step
            if cfg.log_every is not None and gstep % cfg.log_every == 0:
                row, pos.state = interval_row(objective, pos.state, evaluated(), accuracy, step=gstep, out=out,
                                              per_class=cfg.grid_per_class, generator=_gen(cfg.seed, 4_000_037))
                model.classifier.train(train_mode)
                pos.intervals.append({**row, "epoch": pos.epoch + 1, "images": gstep * cfg.batch_size})
                save_intervals(out, pos.intervals)
                log.info("interval %s", row)
                if bar is not None:
                    bar.write("step " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in row.items() if k not in ("levels", "grid")))
            if pos.step % cfg.checkpoint_every == 0 and pos.step < steps_per_epoch:
                pos.epoch_loss_sum = loss_sum
                save_last()
        final = evaluated()
        metrics = accuracy(final)
        metrics.update(epoch=pos.epoch + 1, train_loss=loss_sum / max(steps_per_epoch, 1), lr=sched.get_last_lr()[0])
        pos.history.append(metrics)
        log.info("epoch %d: clean %.4f robust %.4f", pos.epoch + 1, metrics["clean_acc"], metrics["robust_acc"])
        if bar is not None:
            bar.write(f"epoch {pos.epoch + 1}/{cfg.epochs}: loss {metrics['train_loss']:.4f} clean acc "
                      f"{metrics['clean_acc']:.4f} robust acc {metrics['robust_acc']:.4f} (n={metrics['n']}, "
                      f"PGD-{cfg.threat_model} eps {cfg.eps})")
        ckpt.save_weights(final, cfg, out / f"epoch_{pos.epoch + 1:03d}.pt", pos.epoch + 1, metrics)
        pos.epoch, pos.step, pos.epoch_loss_sum = pos.epoch + 1, 0, 0.0
        save_last()
        atomic_write_json(out / "metrics.json", pos.history)
    if bar is not None:
        bar.close()
    ckpt.export(evaluated(), cfg, out, pos.history)
    return TrainResult(str(out), pos.history)


def _optimizer_step(loss: torch.Tensor, opt, sched, scaler) -> None:
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    sched.step()

