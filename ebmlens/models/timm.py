"""``timm:NAME`` - any timm model, with weights from a local file or timm's own cache. Never downloads.

* ``checkpoint=PATH`` (``.safetensors``/``.pth``/``.pt``): built with ``pretrained=False`` and
  loaded safely (safetensors or ``torch.load(weights_only=True)``). Files in the original
  (non-timm) layout are passed through timm's own key filter for that architecture.
* no checkpoint, a model whose weights live on the Hugging Face Hub (``hf_hub_id``, most of timm's):
  read from the local Hugging Face cache as ``hf:`` reads it (:mod:`ebmlens.models.hf`: safetensors
  first, never timm's hub loader); ``download=True`` fetches them first.
* no checkpoint, weights at a URL: ``pretrained=True`` with the network blocked, which succeeds only
  when they are already in torch's hub cache (``~/.cache/torch/hub/checkpoints``).

Mean, std and input size come from ``timm.data.resolve_model_data_config``; 1000-class models get
ImageNet class names from timm's bundled WordNet lemmas.

>>> m = load("resnet10t", pretrained=False)  # random weights: for tests and training from scratch
>>> m.input_shape, m.num_classes, m.class_names[0]
((3, 224, 224), 1000, 'tench')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Literal, Sequence

from torch import nn

from ..energy import EnergyModel, Preprocess
from ._offline import NetworkBlocked, no_network
from .file import load_into, match_state_dict, read_checkpoint, split_checkpoint

__all__ = ["load", "list_names", "imagenet_class_names", "arch_factory"]

log = logging.getLogger(__name__)

_EXTRA = "pip install 'ebmlens[timm]'"


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError(f"timm models need the timm package: {_EXTRA}") from None
    return timm


def list_names(pattern: str = "", pretrained: bool = False) -> list[str]:
    """timm's model names matching ``pattern`` (``"resnet*"``); ``pretrained=True`` lists
    ``arch.tag`` names that have published weights. Offline: this is timm's registry."""
    return list(_timm().list_models(pattern or "", pretrained=pretrained))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (WordNet lemmas, as timm ships them)."""
    from timm.data import ImageNetInfo

    return [d.split(",")[0].strip() for d in ImageNetInfo("imagenet-1k").label_descriptions()]


def _check_name(timm, name: str) -> None:
    if not timm.is_model(name):
        from . import unknown_name_error

        raise unknown_name_error("timm model", name, timm.list_models(), "(list them with "
                                 "ebmlens.list_models('timm', pattern='resnet*'))", show=20)
    try:
        from timm.models import get_pretrained_cfg

        get_pretrained_cfg(name)
    except RuntimeError as e:  # a known arch with an unknown '.tag'
        arch = name.split(".")[0]
        from . import unknown_name_error

        raise unknown_name_error("timm pretrained tag", name, timm.list_models(arch, pretrained=True), str(e)) from None


def arch_factory(name: str) -> Callable[..., nn.Module]:
    """``timm:NAME`` as an architecture (for a checkpoint fine-tuned from a timm model):
    ``factory(num_classes=K)`` builds the registered timm model with random weights, no download."""
    timm = _timm()
    _check_name(timm, name)

    def factory(num_classes: int | None = None) -> nn.Module:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kwargs)

    factory.__name__ = f"timm:{name}"
    return factory


def load(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    dataset: str | None = None,
    threat_model: str | None = None,
    trust_checkpoint: bool = False,
    cache_dir: str | Path | None = None,
    download: bool = False,
    temperature: float = 1.0,
    sampling_mode: str = "eval",
    **timm_kwargs,
) -> EnergyModel:
    """Load ``timm:NAME`` as an :class:`~ebmlens.EnergyModel`.

    Args:
        name: a timm model name, optionally with its weights tag (``"resnet50.tv_in1k"``).
        checkpoint: a local weights file; without it, the Hugging Face cache (``cache_dir``, default
            ``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``) or torch's hub cache.
        download: fetch Hub-hosted weights into the Hugging Face cache first (needs huggingface_hub).
        pretrained: ``False`` builds random weights (tests, or training from scratch).
        num_classes: override the classifier size (a fine-tuned checkpoint).
        class_names: names of the classes (default: ImageNet names for 1000 classes, else indices).
        trust_checkpoint: allow pickled objects in ``checkpoint`` (or a cached ``pytorch_model.bin``).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``).
    """
    timm = _timm()
    _check_name(timm, name)
    if num_classes is not None:
        timm_kwargs["num_classes"] = int(num_classes)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        obj, meta = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
        net = _from_weights(timm, name, split_checkpoint(obj, meta)[0], path, timm_kwargs)
    elif pretrained:
        net = _pretrained(timm, name, timm_kwargs, cache_dir=cache_dir, download=download,
                          trust_checkpoint=trust_checkpoint)
    else:
        net = timm.create_model(name, pretrained=False, **timm_kwargs)
    net.eval()
    cfg = timm.data.resolve_model_data_config(net, use_test_size=True)  # evaluation resolution
    k = int(getattr(net, "num_classes", 0) or 0)
    if k < 2:
        raise ValueError(f"timm model {name!r} has no classifier head (num_classes={k}); pass num_classes=")
    if class_names is None and k == 1000:
        class_names = imagenet_class_names()
        dataset = dataset or "imagenet"
    return EnergyModel(
        net,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_shape=tuple(cfg["input_size"]),
        num_classes=k,
        class_names=class_names,
        temperature=temperature,
        sampling_mode=sampling_mode,  # type: ignore[arg-type]
        source="timm",
        name=name,
        dataset=dataset,
        threat_model=threat_model,
        preprocess=_preprocess(cfg),
    )


def _from_weights(timm, name: str, sd: dict, path: Path, timm_kwargs: dict) -> nn.Module:
    """Build ``name`` with ``pretrained=False`` and load ``sd``; weights in the original (non-timm)
    layout go through timm's key filter for the architecture (a dict overlay: no file, no network)."""
    net = timm.create_model(name, pretrained=False, **timm_kwargs)
    sd2 = match_state_dict(sd, net)
    if set(sd2) == set(net.state_dict()):
        load_into(net, sd2, path=path)
        return net
    try:
        with no_network():
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": sd2}, **timm_kwargs)
    except (RuntimeError, KeyError, ValueError, NetworkBlocked):
        load_into(net, sd2, path=path)  # raises the readable key-mismatch error
        return net


def _pretrained(timm, name: str, timm_kwargs: dict, *, cache_dir, download: bool, trust_checkpoint: bool) -> nn.Module:
    """Published weights, offline: the Hugging Face cache for Hub-hosted ones (read by ebmlens, as
    ``hf:`` does), else torch's hub cache through timm with the network blocked."""
    from . import _hf_cache as hf

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    missed = ""
    if hub_id:
        repo, revision = hf.parse_repo(hub_id)
        if download:
            hf.download_to_cache(repo, revision, cache_dir)
        files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else hf.WEIGHT_FILES
        try:
            path = hf.weights_file(repo, revision, cache_dir, names=files)
        except hf.NotInCache as e:  # damaged entries (dangling links, interrupted downloads) raise as such
            missed = f"{e.short} (cache {str(hf.cache_dir(cache_dir))!r}); "
        else:
            return _from_weights(timm, name, hf.read_weights(path, repo, trust_checkpoint=trust_checkpoint), path,
                                 timm_kwargs)
    url = getattr(cfg, "url", None)
    if url or not hub_id:
        try:
            with no_network():
                return timm.create_model(name, pretrained=True, **timm_kwargs)
        except (NetworkBlocked, RuntimeError, OSError, ValueError):
            missed += f"not in torch's hub cache ({url or 'no URL'}); "
    fetch = (f"load_model('timm:{name}', download=True) fetches them into the Hugging Face cache "
             f"(pip install 'ebmlens[hf]'), " if hub_id else "")
    raise FileNotFoundError(f"timm weights for {name!r} are not in the local cache: {missed}ebmlens does not "
                            f"download unless asked: {fetch}or pass checkpoint=PATH to a local .safetensors/.pth "
                            "file, or set HF_HUB_CACHE / HF_HOME to the cache that holds them") from None


def _preprocess(cfg: dict) -> Preprocess | None:
    """timm's evaluation transform from its data config: resize to ``size / crop_pct`` then center
    crop ``size`` (``crop_mode="center"``); ``None`` for small (CIFAR-size) inputs."""
    size = int(cfg["input_size"][-1])
    if size < 64:
        return None
    pct = float(cfg.get("crop_pct") or 1.0)
    interp = _INTERPOLATIONS.get(str(cfg.get("interpolation") or "bilinear"), "bilinear")
    return Preprocess(int(size / pct), size, interp)


#: timm's interpolation names that Preprocess (PIL) applies as such; others fall back to bilinear.
_INTERPOLATIONS: dict[str, Literal["nearest", "bilinear", "bicubic"]] = {
    "nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}
