"""``hf:ORG/NAME[@REVISION]`` - a classifier from the local Hugging Face cache. Never downloads
unless ``download=True``.

The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (the
folders ``huggingface_hub`` fills: ``models--ORG--NAME/{refs,snapshots,blobs,.no_exist}``, read by
:mod:`ebmlens.models._hf_cache`).
``REVISION`` is a branch, a tag or a commit (default ``main``). ``config.json`` is read here, in
timm's form (``architecture``, ``num_classes``, ``model_args``, ``label_names``; mean, std, input
size in ``pretrained_cfg``, or at the top level in the old form), and the weights
(``model.safetensors``, else ``pytorch_model.bin`` under the trust rules) go through the checkpoint
reader of ``file:``. The net is built with ``timm.create_model(architecture, pretrained=False)``,
never timm's hub loader. ``config.json`` is a file: its ``architecture`` must be a registered timm
name (or a name that :func:`ebmlens.models.archs.arch_from_file` accepts); ``arch=`` overrides it.

>>> parse_repo("timm/resnet18.a1_in1k@v1.0")
('timm/resnet18.a1_in1k', 'v1.0')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..energy import EnergyModel
from ._hf_cache import (
    WEIGHT_FILES,
    NotInCache,
    _check_not_junk,
    cache_dir,
    cached_file,
    download_to_cache,
    parse_repo,
    read_config,
    read_weights,
    refs,
    snapshot,
    weights_file,
)
from .archs import ARCHS, arch_from_file, get_arch
from .file import _build, load_into, match_state_dict

__all__ = ["load", "list_names", "scan", "cache_dir", "parse_repo", "snapshot", "cached_file", "weights_file",
           "read_config", "download_to_cache", "read_weights", "NotInCache", "CacheEntry", "WEIGHT_FILES"]

log = logging.getLogger(__name__)

#: ``model_args`` keys that would make ``timm.create_model`` read files or the network: refused.
_LOADING_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def _form(cfg: dict) -> tuple[dict, Any]:
    """``(pretrained_cfg, architecture)`` of a timm config.json: the new form nests the data config in
    ``pretrained_cfg``, the old one has it at the top level."""
    pc = cfg["pretrained_cfg"] if isinstance(cfg.get("pretrained_cfg"), dict) else cfg
    return pc, cfg.get("architecture") or pc.get("architecture")


def _field(cfg: dict, pc: dict, key: str, check: Callable[[Any], bool], want: str, repo: str) -> Any:
    """``key`` of the config: ``num_classes`` at the top level wins over ``pretrained_cfg`` (as in timm),
    the data fields (mean, std, input_size) are read from ``pretrained_cfg`` first."""
    first, then = (cfg, pc) if key == "num_classes" else (pc, cfg)
    value = first.get(key, then.get(key))
    if value is not None and not check(value):
        raise ValueError(f"hf:{repo}: config.json field {key!r} is {value!r}, expected {want}")
    return value


def _numbers(n: int | None) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, list) and bool(v) and (n is None or len(v) == n)
                      and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v))


def _class_names(cfg: dict, pc: dict, k: int) -> list[str] | None:
    names = cfg.get("label_names") or pc.get("label_names") or cfg.get("labels") or pc.get("labels")
    if isinstance(names, dict):  # {"0": "tench", ...}
        try:
            names = [names[i] for i in sorted(names, key=int)] if sorted(map(int, names)) == list(range(k)) else None
        except (TypeError, ValueError):
            names = None
    if not isinstance(names, list) or len(names) != k or not all(isinstance(n, str) for n in names):
        return None
    desc = cfg.get("label_descriptions") or pc.get("label_descriptions")
    if isinstance(desc, dict) and all(isinstance(desc.get(n), str) for n in names):  # synsets -> 'tench'
        names = [desc[n].split(",")[0].strip() for n in names]
    return names if len(set(names)) == k else None


def _build_net(arch: str, model_args: dict, nc: int | None, sd: dict, *, repo: str, config_path: Path,
               user_arch: Any, trust_checkpoint: bool) -> tuple[nn.Module, bool]:
    """``(net, built_by_timm)``: the caller's ``arch``, else the config's timm name (or a name
    :func:`arch_from_file` accepts); ``module:function`` named by the file only when trusted."""
    if user_arch is not None:
        return _build(get_arch(user_arch), nc, sd), False
    if ":" in arch or arch in ARCHS:
        return _build(arch_from_file(arch, path=config_path, trust_checkpoint=trust_checkpoint), nc, sd), False
    from .timm import _timm

    timm = _timm()
    if not timm.is_model(arch):
        from . import unknown_name_error

        raise unknown_name_error("timm architecture", arch, timm.list_models(),
                                 f"(named by config.json of hf:{repo}; pass arch= to build another)", show=10)
    bad = sorted(set(model_args) & set(_LOADING_ARGS))
    if bad:
        raise ValueError(f"hf:{repo}: config.json model_args set {', '.join(bad)}, which would make timm read "
                         "other files; remove them from config.json or pass arch=")
    kwargs = dict(model_args, **({} if nc is None else {"num_classes": nc}))
    try:
        return timm.create_model(arch, pretrained=False, **kwargs), True
    except TypeError as e:
        raise ValueError(f"hf:{repo}: timm cannot build {arch!r} with model_args {model_args} ({e})") from None


def load(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    download: bool = False,
    arch: str | Callable[..., nn.Module] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    dataset: str | None = None,
    threat_model: str | None = None,
    trust_checkpoint: bool = False,
    temperature: float = 1.0,
    sampling_mode: str = "eval",
) -> EnergyModel:
    """Load ``hf:ORG/NAME[@REVISION]`` from the local Hugging Face cache.

    Args:
        name: ``"ORG/NAME"`` or ``"ORG/NAME@REVISION"`` (branch, tag or commit).
        cache_dir: the hub cache (default: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``).
        download: fetch ``config.json`` and the weights first (needs ``huggingface_hub`` and the network).
        arch: build this architecture instead of the one ``config.json`` names (as ``file:``'s ``arch``).
        num_classes, class_names, dataset, threat_model, temperature, sampling_mode: as in
            :class:`~ebmlens.EnergyModel`; defaults from ``config.json``.
        trust_checkpoint: allow pickled objects in ``pytorch_model.bin`` and a ``module:function``
            architecture named by ``config.json``.
    """
    from . import timm as T

    repo, revision = parse_repo(name)
    if download:
        download_to_cache(repo, revision, cache_dir)
    commit, snap = snapshot(repo, revision, cache_dir)
    try:
        cfg = read_config(repo, commit, cache_dir)
    except NotInCache:
        if arch is None:
            raise FileNotFoundError(f"hf:{repo}: the cached snapshot {commit[:12]} has no config.json, so the "
                                    "architecture is unknown; pass arch= (CLI --arch)") from None
        cfg = {}
    pc, arch_name = _form(cfg)
    if arch is None and not isinstance(arch_name, str):
        raise ValueError(f"hf:{repo}: config.json names no 'architecture' (found {arch_name!r}); pass arch=")
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ValueError(f"hf:{repo}: config.json model_args is {model_args!r}, expected an object")
    nc = num_classes if num_classes is not None else _field(
        cfg, pc, "num_classes", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 1,
        "an integer > 1", repo)
    mean = _field(cfg, pc, "mean", _numbers(None), "a list of numbers", repo)
    std = _field(cfg, pc, "std", _numbers(None), "a list of numbers", repo)
    size = _field(cfg, pc, "input_size", _numbers(3), "[C, H, W]", repo)
    path = weights_file(repo, commit, cache_dir)
    sd = read_weights(path, repo, trust_checkpoint=trust_checkpoint)
    net, by_timm = _build_net(str(arch_name), model_args, None if nc is None else int(nc), sd, repo=repo,
                              config_path=snap / "config.json", user_arch=arch, trust_checkpoint=trust_checkpoint)
    load_into(net, match_state_dict(sd, net), path=path)
    net.eval()
    data_cfg: dict = {"input_size": size, "mean": mean, "std": std, "crop_pct": pc.get("crop_pct"),
                      "interpolation": pc.get("interpolation")}
    if by_timm and None in (size, mean, std):  # fill the gaps from timm's defaults for the architecture
        got = T._timm().data.resolve_model_data_config(net, use_test_size=True)
        data_cfg = {k: (data_cfg[k] if data_cfg[k] is not None else got.get(k)) for k in data_cfg}
    k = int(getattr(net, "num_classes", 0) or nc or 0)
    if k < 2:
        with torch.no_grad():
            k = int(net(torch.zeros(1, *(data_cfg["input_size"] or (3, 32, 32)))).shape[1])
    names = list(class_names) if class_names is not None else _class_names(cfg, pc, k)
    if names is None and k == 1000 and by_timm:
        names, dataset = T.imagenet_class_names(), dataset or "imagenet"
    return EnergyModel(
        net,
        mean=tuple(data_cfg["mean"] or (0.0,)),
        std=tuple(data_cfg["std"] or (1.0,)),
        input_shape=tuple(data_cfg["input_size"] or (3, 32, 32)),
        num_classes=k,
        class_names=names,
        temperature=temperature,
        sampling_mode=sampling_mode,  # type: ignore[arg-type]
        source="hf",
        name=f"{repo}@{commit}",
        dataset=dataset,
        threat_model=threat_model,
        preprocess=T._preprocess(data_cfg) if data_cfg["input_size"] else None,
    )


def arch_name(name: str, cache_dir: str | Path | None = None) -> str:
    """The architecture of ``hf:ORG/NAME[@REV]`` as a name a checkpoint may carry (``timm:ARCH`` or the
    config's registered name), for a model fine-tuned from it; read from the cached ``config.json``.
    ``model_args`` other than ``num_classes`` cannot be carried by a name: refused (pass ``arch=``)."""
    repo, revision = parse_repo(name)
    commit, _ = snapshot(repo, revision, cache_dir)
    cfg = read_config(repo, commit, cache_dir)
    arch = _form(cfg)[1]
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"hf:{repo}: config.json names no 'architecture' (found {arch!r}); pass --arch")
    extra = sorted(set(cfg.get("model_args") or {}) - {"num_classes"})
    if extra:
        raise ValueError(f"hf:{repo}: config.json model_args set {', '.join(extra)}, which a fine-tuned "
                         "checkpoint's architecture name cannot record; pass --arch with a factory that builds it")
    return arch if (":" in arch or arch in ARCHS) else f"timm:{arch}"


@dataclass(frozen=True)
class CacheEntry:
    """One cached revision: ``spec`` (``ORG/NAME`` for main, else ``ORG/NAME@REV``), its commit, whether
    ebmlens can open it, and why not."""

    spec: str
    commit: str
    ok: bool
    detail: str


def _check_entry(repo: str, rev: str, cache: Path) -> str:
    cfg = read_config(repo, rev, cache)
    pc = cfg["pretrained_cfg"] if isinstance(cfg.get("pretrained_cfg"), dict) else cfg
    arch = cfg.get("architecture") or pc.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ValueError("config.json names no architecture")
    weights = weights_file(repo, rev, cache)
    _check_not_junk(weights, repo)
    nc = cfg.get("num_classes", pc.get("num_classes"))
    return f"{arch}, {nc if nc is not None else '?'} classes, {weights.name}"


def scan(cache: str | Path | None = None) -> list[CacheEntry]:
    """Every cached model revision (refs, and snapshots no ref names), offline, with what is missing."""
    root = cache_dir(cache)
    out: list[CacheEntry] = []
    for folder in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        repo = folder.name[len("models--"):].replace("--", "/", 1)
        refs_ = refs(folder)
        named = set(refs_.values())
        snaps = folder / "snapshots"
        revs = sorted(refs_.items()) + [(p.name, p.name) for p in (sorted(snaps.iterdir()) if snaps.is_dir() else [])
                                       if p.name not in named]
        for rev, commit in revs:
            spec = repo if rev == "main" else f"{repo}@{rev}"
            try:
                out.append(CacheEntry(spec, commit, True, _check_entry(repo, rev, root)))
            except (ValueError, OSError) as e:
                out.append(CacheEntry(spec, commit, False, " ".join(str(e).split())))
    return out


def list_names(cache_dir: str | Path | None = None) -> list[str]:
    """``ORG/NAME[@REV]`` of the cached models that have a ``config.json`` and weights (offline)."""
    return [e.spec for e in scan(cache_dir) if e.ok]
