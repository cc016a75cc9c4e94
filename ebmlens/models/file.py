"""``file:PATH`` - a local checkpoint of any ``nn.Module`` plus the factory that builds it.

Reads a plain state dict, ``{"state_dict": ...}``, ``{"model": ...}``, DataParallel
``module.``/``model.`` prefixes, and ``.safetensors``. Checkpoints written by ``ebmlens train``
carry ``{"state_dict", "ebmlens_meta": {arch, num_classes, class_names, mean, std, input_shape,
threat_model, ...}}`` and load with no options. Loading is safe by default
(``torch.load(weights_only=True)`` or safetensors); pickled objects need ``trust_checkpoint=True``.

>>> import torch, tempfile, os
>>> from ebmlens.models.archs import ConvNetSmall
>>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
>>> torch.save({"state_dict": ConvNetSmall(num_classes=10).state_dict()}, path)
>>> m = load(path, arch="convnet-small", mean=(0.5,), std=(0.25,))
>>> m.num_classes, m.input_shape
(10, (3, 32, 32))
"""

from __future__ import annotations

import inspect
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..energy import EnergyModel
from .archs import arch_from_file, get_arch

__all__ = ["load", "read_checkpoint", "split_checkpoint", "match_state_dict", "check_weights_file"]

log = logging.getLogger(__name__)

_HTML_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head")


def check_weights_file(path: Path | str, *, where: str | None = None) -> Path:
    """Fail early, naming the path, when a weights file is missing, empty or an HTML page
    (what a failed Google Drive download leaves behind)."""
    p = Path(path).expanduser()
    put = f" Put the weights file at {str(p)!r}" + (f" ({where})" if where else "") + "."
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist.{put}")
    if p.is_dir():
        raise ValueError(f"checkpoint {str(p)!r} is a directory, not a weights file")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {str(p)!r} is empty (0 bytes): an interrupted download?{put}")
    with open(p, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith(_HTML_STARTS):
        raise ValueError(f"checkpoint {str(p)!r} is an HTML page ({size} bytes), not weights: a failed "
                         "download (Google Drive answers large files with a warning page). Download the file "
                         f"in a browser and replace it.{put}")
    return p


def read_checkpoint(path: Path | str, *, trust_checkpoint: bool = False, where: str | None = None
                    ) -> tuple[Any, dict]:
    """Read a ``.pt``/``.pth``/``.safetensors`` file safely.

    Returns ``(obj, safetensors_metadata)``: the loaded object (a dict for safetensors) and the
    safetensors header metadata (``{}`` for torch files).
    """
    p = check_weights_file(path, where=where)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a checkpoint: not a readable safetensors "
                             f"file ({e}); it may be truncated: download it again") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_checkpoint), {}
    except pickle.UnpicklingError as e:
        if ("weights only" in str(e).lower() or "weights_only" in str(e)) and _looks_pickled(p):
            first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
            raise ValueError(
                f"checkpoint {str(p)!r} holds pickled Python objects, not only tensors ({first}). Loading it "
                "could run code from the file; if you trust its origin pass trust_checkpoint=True "
                "(CLI: --trust-checkpoint)") from None
        raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a checkpoint ({_first_line(e)}); "
                         "download it again or check the path") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a checkpoint ({type(e).__name__}: "
                         f"{_first_line(e)}); download it again or check the path") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _looks_pickled(p: Path) -> bool:
    """True for torch's zip format or a pickle stream (protocol 2-5): files whose refusal by
    ``weights_only`` means "holds Python objects", not "corrupt"."""
    if zipfile.is_zipfile(p):
        return True
    with open(p, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def split_checkpoint(obj: Any, safetensors_meta: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """``(state_dict, ebmlens_meta)`` from a loaded checkpoint.

    Accepts a state dict, ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``,
    ``{"net": ...}``. The meta comes from ``obj["ebmlens_meta"]``, a trainer's ``obj["config"]``,
    or a safetensors header entry ``"ebmlens_meta"`` (JSON).
    """
    meta: dict = {}
    if safetensors_meta and "ebmlens_meta" in safetensors_meta:
        meta = json.loads(safetensors_meta["ebmlens_meta"])
    if not isinstance(obj, Mapping):
        if isinstance(obj, nn.Module):  # a pickled whole model (trust_checkpoint=True)
            return dict(obj.state_dict()), meta
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict or a dict with 'state_dict'")
    if isinstance(obj.get("ebmlens_meta"), Mapping):
        meta = dict(obj["ebmlens_meta"])
    elif isinstance(obj.get("config"), Mapping) and "arch" in obj["config"]:  # ebmlens train's last.pt
        cfg = obj["config"]
        meta = {k: cfg[k] for k in ("arch", "mean", "std", "threat_model", "eps") if k in cfg}
    sd: Any = obj
    for key in ("state_dict", "model_state_dict", "model", "net", "state_dict_ema"):
        if isinstance(obj.get(key), Mapping):
            sd = obj[key]
            break
        if isinstance(obj.get(key), nn.Module):
            sd = obj[key].state_dict()
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint has no tensors (top-level keys: {sorted(map(str, obj))[:12]})")
    return tensors, meta


def match_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module,
                     prefixes: Sequence[str] = ("module.", "model.", "_orig_mod.")) -> dict:
    """Strip wrapper prefixes (DataParallel ``module.``, ``model.``, compiled ``_orig_mod.``)
    when that makes the keys match ``model``'s; otherwise return ``sd`` unchanged."""
    want = set(model.state_dict())
    best, best_hits = dict(sd), len(want & set(sd))
    frontier = [dict(sd)]
    for _ in range(2):  # up to two nested wrappers, e.g. 'module.model.'
        nxt = []
        for cand in frontier:
            for p in prefixes:
                if any(k.startswith(p) for k in cand):
                    new = {(k[len(p):] if k.startswith(p) else k): v for k, v in cand.items()}
                    hits = len(want & set(new))
                    if hits > best_hits:
                        best, best_hits = new, hits
                    nxt.append(new)
        frontier = nxt
    return best


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], *, path: Path | str, strict: bool = True) -> None:
    """``model.load_state_dict`` with a readable error (first missing/unexpected/mismatched keys)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            parts.append(f"{len(shape)} with other shapes (e.g. {'; '.join(shape[:2])})")
        raise ValueError(f"weights in {str(path)!r} do not fit the architecture {type(model).__name__}: "
                         f"{', '.join(parts)} keys. Check arch= and num_classes=")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=strict)


def _build(factory: Callable[..., nn.Module], num_classes: int | None, sd: Mapping[str, torch.Tensor]) -> nn.Module:
    try:
        params = inspect.signature(factory).parameters
        takes_nc = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        needs_nc = "num_classes" in params and params["num_classes"].default is inspect.Parameter.empty
    except (TypeError, ValueError):
        takes_nc, needs_nc = True, False
    if num_classes is None and needs_nc:  # the last 2-D weight is the classifier's (K, features)
        mats = [v for k, v in sd.items() if v.ndim == 2 and k.endswith("weight")]
        if not mats:
            raise ValueError("cannot tell num_classes from the checkpoint; pass num_classes=")
        num_classes = int(mats[-1].shape[0])
    net = factory(num_classes=num_classes) if (num_classes is not None and takes_nc) else factory()
    if not isinstance(net, nn.Module):
        raise TypeError(f"arch factory {getattr(factory, '__name__', factory)!r} returned "
                        f"{type(net).__name__}, not an nn.Module")
    return net


def load(
    name: str,
    *,
    arch: str | Callable[..., nn.Module] | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    dataset: str | None = None,
    threat_model: str | None = None,
    temperature: float = 1.0,
    sampling_mode: str = "eval",
    strict: bool = True,
    trust_checkpoint: bool = False,
) -> EnergyModel:
    """Load ``file:PATH`` as an :class:`~ebmlens.EnergyModel`.

    Args:
        name: the checkpoint path (``.pt``/``.pth``/``.safetensors``).
        arch: a registered architecture name (``"resnet-small"``), a ``source:name`` spec
            (``"timm:resnet18"``), ``"module.path:factory"`` or a callable
            ``factory(num_classes=K) -> nn.Module``. Optional for ``ebmlens train`` checkpoints. An
            architecture named by the *file* may only be a registered name or a ``source:name`` spec;
            a ``module:factory`` there is refused before anything is imported unless
            ``trust_checkpoint=True`` (see :func:`ebmlens.models.archs.arch_from_file`).
        num_classes: ``K``; default from the checkpoint's meta, else from one forward pass.
        mean, std: the normalization the classifier expects (default: meta, else ``(0,)``/``(1,)``,
            i.e. a model that normalizes itself; check with :func:`ebmlens.normalization_check`).
        input_shape: ``(C, H, W)``, default meta or ``(3, 32, 32)``.
        class_names, dataset, threat_model, temperature, sampling_mode: as in :class:`EnergyModel`.
        strict: require every key to match.
        trust_checkpoint: allow pickled Python objects and a ``module:factory`` architecture named by
            the file (both run code from the file; trusted files only).
    """
    path = Path(name).expanduser()
    obj, st_meta = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    sd, meta = split_checkpoint(obj, st_meta)
    if arch is not None:  # the caller's own choice: their code may be imported
        factory = get_arch(arch)
    elif meta.get("arch") is None:
        raise ValueError(f"checkpoint {str(path)!r} holds weights but does not say which architecture they "
                         "belong to; pass arch= (a registered name such as 'resnet-small', "
                         "'package.module:factory', or a callable returning the nn.Module)")
    else:  # named by the file: registered names and source:name only, unless trusted
        factory = arch_from_file(meta["arch"], path=path, trust_checkpoint=trust_checkpoint)
    nc = num_classes if num_classes is not None else meta.get("num_classes")
    net = _build(factory, None if nc is None else int(nc), sd)
    load_into(net, match_state_dict(sd, net), path=path, strict=strict)
    shape = tuple(input_shape or meta.get("input_shape") or (3, 32, 32))
    net.eval()
    if nc is None:
        with torch.no_grad():
            nc = int(net(torch.zeros(1, *shape)).shape[1])
    if mean is None and std is None and "mean" not in meta:
        log.info("file:%s: no mean/std given or stored; assuming the model normalizes itself", path)
    return EnergyModel(
        net,
        mean=mean if mean is not None else meta.get("mean", (0.0,)),
        std=std if std is not None else meta.get("std", (1.0,)),
        input_shape=shape,
        num_classes=int(nc),
        class_names=class_names if class_names is not None else meta.get("class_names"),
        temperature=temperature,
        sampling_mode=sampling_mode,  # type: ignore[arg-type]
        source="file",
        name=str(path),
        dataset=dataset or meta.get("dataset"),
        threat_model=threat_model or meta.get("threat_model"),
        eps=meta.get("eps") if not threat_model or threat_model == meta.get("threat_model") else None,
    )
