"""The trainer's files: ``last.pt`` (write and resume), ``epoch_NNN.pt``, ``model.safetensors`` + ``model.json``.

``last.pt`` = ``{"state_dict", "optimizer", "scheduler", ["scaler"], "epoch", "step", "config" (config.json's
dict), "history_json", "epoch_loss_sum", "objective_state", "ema", "intervals_json"}`` (the objective's
state: ``None``, a tensor (Robust JEM's replay buffer) or a dict of plain values (DAT's curriculum); the
EMA's ``{"decay", "n", "shadow"}`` or ``None``), written atomically.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from ._config import TrainConfig

__all__ = ["Position", "save_last", "resume", "save_weights", "export"]

log = logging.getLogger(__name__)

# settings a resumed run must share with the run that wrote last.pt (buffer_size: stateful objectives only)
RESUME_KEYS = ("arch", "objective", "epochs", "batch_size", "seed", "eps", "threat_model", "buffer_size", "init_from",
               "ema")


@dataclass
class Position:
    """Where a run stands: the next step of ``epoch``, the history so far, the loss summed over the
    epoch's steps done (a mid-epoch resume carries it) and the objective's state."""

    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    state: Any = None
    ema: Any = None
    intervals: list = field(default_factory=list)


def save_last(path: Path, cfg: TrainConfig, model, opt, sched, scaler, pos: Position) -> None:
    ck = {"state_dict": model.classifier.state_dict(), "optimizer": opt.state_dict(),
          "scheduler": sched.state_dict(), "epoch": pos.epoch, "step": pos.step, "config": cfg.to_dict(),
          "history_json": json.dumps(pos.history), "epoch_loss_sum": pos.epoch_loss_sum,
          "objective_state": pos.state, "ema": pos.ema, "intervals_json": json.dumps(pos.intervals)}
    if scaler is not None:
        ck["scaler"] = scaler.state_dict()
    atomic_torch_save(ck, path)


def _check_same_run(saved: dict, cfg: TrainConfig, stateful: bool, path: Path) -> None:
    now = cfg.to_dict()
    for k in RESUME_KEYS:
        if k == "buffer_size" and not stateful:
            continue
        if k in saved and saved[k] != now[k]:
            raise ValueError(f"--resume: {k} was {saved[k]!r} in {path} but is {now[k]!r} now; "
                             "resume with the same settings or choose a new --out")


def _to(state, device: torch.device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to(v, device) for k, v in state.items()}
    return state


def resume(path: Path, cfg: TrainConfig, model, opt, sched, scaler, state, device: torch.device) -> Position:
    """Load ``last.pt`` into the model, optimizer, scheduler and scaler; the position to continue from.

    ``state`` is the objective's fresh initial state: a stateful objective (not ``None``) needs one in
    the checkpoint. Refuses a checkpoint of other settings (:data:`RESUME_KEYS`).
    """
    ck = _read_last(path, device)
    _check_same_run(ck.get("config", {}), cfg, state is not None, path)
    try:
        model.classifier.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        epoch, step = int(ck["epoch"]), int(ck["step"])
    except (KeyError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise ValueError(f"--resume: {path} does not fit this run ({type(e).__name__}: {first}); "
                         "choose a new --out") from None
    if scaler is not None and "scaler" in ck:
        scaler.load_state_dict(ck["scaler"])
    if state is not None:
        if ck.get("objective_state") is None:
            raise ValueError(f"--resume: {path} holds no {cfg.objective_name} state; "
                             "it was written by another objective or an older ebmlens: choose a new --out")
        state = _to(ck["objective_state"], device)
    if cfg.ema is not None and ck.get("ema") is None:
        raise ValueError(f"--resume: {path} holds no EMA but this run keeps one; resume with the same settings or "
                         "choose a new --out")
    history = list(ck.get("history_json") and json.loads(ck["history_json"]) or [])
    intervals = list(ck.get("intervals_json") and json.loads(ck["intervals_json"]) or [])
    log.info("resumed from %s at epoch %d step %d", path, epoch, step)
    return Position(epoch, step, history, float(ck.get("epoch_loss_sum", 0.0)), state, _to(ck.get("ema"), device),
                    intervals)


def _read_last(path: Path, device: torch.device) -> dict:
    """``last.pt`` read with ``weights_only=True``; a pickled, truncated or foreign file is a one-line error."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"--resume: {path} holds pickled Python objects, not a checkpoint written by ebmlens train "
                         "(loading it could run code); choose a new --out") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"--resume: {path} is corrupt or truncated ({type(e).__name__}); delete it to start "
                         "over, or choose a new --out") from None
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise ValueError(f"--resume: {path} is not a checkpoint written by ebmlens train; choose a new --out")
    return ck


def _meta(model, cfg: TrainConfig) -> dict:
    mean, std = (cfg.mean, cfg.std) if cfg.init_from is None else (model.mean.flatten().tolist(),
                                                                     model.std.flatten().tolist())
    meta = {"arch": cfg.arch, "num_classes": model.num_classes, "class_names": model.class_names,
            "mean": [round(float(v), 7) for v in mean], "std": [round(float(v), 7) for v in std],
            "input_shape": list(model.input_shape)}
    if cfg.init_from is not None:
        meta["base"] = cfg.init_from  # a source:name spec (never module:function)
    if cfg.ema is not None:
        meta["ema"] = cfg.ema  # these weights are the EMA
    return meta


def save_weights(model, cfg: TrainConfig, path: Path, epoch: int, metrics: dict | None) -> None:
    """``epoch_NNN.pt``: ``{"state_dict", "ebmlens_meta"}`` (read by ``file:`` loading and the dynamics)."""
    meta = {**_meta(model, cfg), "epoch": epoch, "objective": cfg.objective_name, "threat_model": cfg.threat_model,
            "eps": cfg.eps, "metrics": metrics or {}}
    atomic_torch_save({"state_dict": model.classifier.state_dict(), "ebmlens_meta": meta}, path)


def export(model, cfg: TrainConfig, out: Path, history: list) -> None:
    """``model.safetensors`` + ``model.json`` (the run's final weights, config and metrics). The
    safetensors header carries the loading metadata too (``ebmlens_meta``), so ``file:.../model.safetensors``
    opens on its own."""
    base = {**_meta(model, cfg), "threat_model": cfg.threat_model, "eps": cfg.eps}
    atomic_save_safetensors(model.classifier.state_dict(), out / "model.safetensors",
                            metadata={"ebmlens_meta": json.dumps({**base, "objective": cfg.objective_name})})
    meta = {**base, "config": cfg.to_dict(), "final_metrics": history[-1] if history else {}}
    atomic_write_json(out / "model.json", meta)
