"""``robustbench:NAME`` - every model of the RobustBench zoo (Croce et al., 2021), local-first.

The weights of ``NAME`` trained on ``dataset`` for ``threat_model`` are read from
``{model_dir}/{dataset}/{threat_model}/{NAME}.pt`` (RobustBench's own layout). They are
downloaded only when the file is missing and ``download=True``. The architecture comes from
``robustbench.model_zoo.model_dicts``; the weights are loaded by ebmlens with
``torch.load(weights_only=True)`` (pickles only with ``trust_checkpoint=True``). RobustBench
models take [0, 1] pixels and normalize inside, so the :class:`~ebmlens.EnergyModel` has mean 0 and
std 1. Zoo entries whose constructor downloads weights (XCiT through timm, ImageNet ``Standard_R50``
through torchvision) are built with the network blocked: they load from a local file or cache, or
fail with the path to put the file at. The PyPI release 1.1.1 imports ``autoattack`` (published on
PyPI as ``pyautoattack``) and ``pkg_resources`` (removed in setuptools 81); :func:`import_zoo` makes
it importable.

>>> "Carmon2019Unlabeled" in list_names("cifar10", "Linf")
True
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..attacks import parse_threat_model
from ..data import CIFAR100_CLASSES
from ..energy import EnergyModel, Preprocess
from ._offline import NetworkBlocked, no_network
from .file import check_weights_file, read_checkpoint

__all__ = ["load", "list_names", "import_zoo", "weights_path", "resolve", "arch_factory", "CIFAR100_CLASSES"]

log = logging.getLogger(__name__)

_EXTRA = "pip install 'ebmlens[robustbench]'"

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def _autoattack_usable() -> bool:
    """True when an ``autoattack`` with the ``autoattack.state`` module robustbench needs is importable.

    Some packages ship an unrelated top-level ``autoattack`` without ``state`` (torchattacks 3.3.0
    does); then the name is pointed at ``pyautoattack`` too.
    """
    if "autoattack.state" in sys.modules:
        return True
    try:
        return (importlib.util.find_spec("autoattack") is not None
                and importlib.util.find_spec("autoattack.state") is not None)
    except (ImportError, ValueError):
        return False


def import_zoo() -> Any:
    """Import ``robustbench`` 1.1.1 and return ``robustbench.model_zoo.model_dicts``.

    Before importing, points the module name ``autoattack`` (and ``autoattack.state``, the two that
    robustbench imports) at the ``pyautoattack`` package when no usable ``autoattack`` is installed, and
    checks that ``pkg_resources`` (setuptools < 81) is importable.
    """
    if not _autoattack_usable():
        try:
            aa = importlib.import_module("pyautoattack")
            aa_state = importlib.import_module("pyautoattack.state")
        except ImportError:
            raise ImportError("robustbench needs the AutoAttack package (PyPI name 'pyautoattack'): "
                              f"{_EXTRA}") from None
        sys.modules["autoattack"] = aa
        sys.modules["autoattack.state"] = aa_state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources' own deprecation warning
        try:
            importlib.import_module("pkg_resources")
        except ImportError:
            raise ImportError("robustbench 1.1.1 imports pkg_resources, which setuptools 81 removed: "
                              f"pip install 'setuptools<81' (or {_EXTRA})") from None
        try:
            zoo = importlib.import_module("robustbench.model_zoo")
        except ImportError as e:
            raise ImportError(f"the RobustBench zoo is not importable ({e}): {_EXTRA}") from None
    return zoo.model_dicts


def _datasets(zoo) -> dict[str, Any]:
    return {k.value: k for k in zoo}


def list_names(dataset: str | None = None, threat_model: str | None = None) -> list[str]:
    """Names in the zoo (offline), optionally for one dataset and/or threat model, in zoo order."""
    zoo = import_zoo()
    out: list[str] = []
    for ds_key, ds_enum in _datasets(zoo).items():
        if dataset is not None and ds_key != _norm_dataset(zoo, dataset):
            continue
        for tm_enum, models in zoo[ds_enum].items():
            if threat_model is not None and tm_enum.value != _norm_threat(threat_model):
                continue
            out += [n for n in models if n not in out]
    return out


def _norm_dataset(zoo, dataset: str) -> str:
    choices = list(_datasets(zoo))
    d = str(dataset).lower().replace("-", "").replace("_", "")
    for c in choices:
        if c == d:
            return c
    from . import unknown_name_error

    raise unknown_name_error("RobustBench dataset", str(dataset), choices)


def _norm_threat(threat_model: str) -> str:
    """A user's threat model -> RobustBench's folder name: ``L2`` / ``Linf`` through the one parser
    (:func:`ebmlens.attacks.parse_threat_model`), plus RobustBench's own ``corruptions(_3d)``."""
    t = str(threat_model).strip()
    if t.lower() in ("corruptions", "corruptions_3d"):
        return t.lower()
    try:
        return parse_threat_model(t)
    except ValueError:
        raise ValueError(f"unknown threat model {threat_model!r}; "
                         "choose Linf, L2, corruptions or corruptions_3d") from None


def resolve(name: str, dataset: str | None = None, threat_model: str | None = None) -> tuple[str, str, dict]:
    """Find the zoo entry: ``(dataset, threat_model, entry)``; explains ambiguity and unknown names."""
    zoo = import_zoo()
    ds_filter = _norm_dataset(zoo, dataset) if dataset is not None else None
    tm_filter = _norm_threat(threat_model) if threat_model is not None else None
    if tm_filter == "corruptions_3d":
        tm_filter = "corruptions"  # RobustBench keeps one 'corruptions' folder for both
    hits = []
    for ds_key, ds_enum in _datasets(zoo).items():
        for tm_enum, models in zoo[ds_enum].items():
            if name in models:
                hits.append((ds_key, tm_enum.value, models[name]))
    where = [f"{d}/{t}" for d, t, _ in hits]
    match = [h for h in hits if (ds_filter in (None, h[0])) and (tm_filter in (None, h[1]))]
    if not hits:
        from . import unknown_name_error

        pool = list_names(ds_filter, tm_filter) if (ds_filter or tm_filter) else list_names()
        raise unknown_name_error("RobustBench model", name, pool, "(names are case-sensitive; list them with "
                                 "ebmlens.list_models('robustbench', dataset=..., threat_model=...))")
    if not match:
        raise ValueError(f"RobustBench model {name!r} does not exist for dataset={ds_filter or 'any'}, "
                         f"threat_model={tm_filter or 'any'}; it exists under {', '.join(where)}")
    if len(match) > 1:
        raise ValueError(f"RobustBench model {name!r} exists under {', '.join(f'{d}/{t}' for d, t, _ in match)}; "
                         "say which with dataset= and threat_model= (CLI: --dataset, --threat-model)")
    return match[0]


def arch_factory(name: str) -> Callable[..., nn.Module]:
    """``robustbench:NAME`` (or ``DATASET/THREAT_MODEL/NAME``) as an architecture: no weights, no network."""
    parts = name.split("/")
    if len(parts) not in (1, 3):
        raise ValueError(f"robustbench architecture {name!r}: write NAME or DATASET/THREAT_MODEL/NAME")
    ds, tm, entry = resolve(parts[-1], *(parts[:2] if len(parts) == 3 else (None, None)))
    if "model" not in entry:
        raise ValueError(f"robustbench:{name} ({ds}/{tm}) has no architecture constructor in RobustBench")
    k = _NUM_CLASSES[ds]

    def factory(num_classes: int | None = None) -> nn.Module:
        if num_classes not in (None, k):
            raise ValueError(f"robustbench:{name} is a {k}-class {ds} architecture, not {num_classes}-class")
        return _build_offline(entry["model"], f"robustbench:{name} ({ds}/{tm})", False)

    factory.__name__ = f"robustbench:{name}"
    return factory


def weights_path(name: str, dataset: str, threat_model: str, model_dir: str | Path = "models") -> Path:
    """``{model_dir}/{dataset}/{threat_model}/{name}.pt``, RobustBench's layout."""
    return Path(model_dir).expanduser() / dataset / threat_model / f"{name}.pt"


def _input_shape(entry: dict, dataset: str) -> tuple[int, int, int]:
    if dataset != "imagenet":
        return (3, 32, 32)
    m = re.search(r"(?:Crop|Res)(\d+)$", str(entry.get("preprocessing", "")))
    side = int(m.group(1)) if m else 224
    return (3, side, side)


def _build_offline(ctor, what: str, allow_network: bool) -> nn.Module:
    """Run a zoo constructor; unless allowed, with the network blocked (a clear error if it tries)."""
    if allow_network:
        return ctor()
    err: BaseException | None = None
    with no_network() as attempts, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # its 'pretrained' deprecation
        try:
            net = ctor()
        except NetworkBlocked as e:
            err = e
        except Exception as e:  # a blocked download may surface as any wrapped error
            if not attempts:
                raise
            err = e
    if attempts or err is not None:
        raise ValueError(
            f"{what} builds its architecture by downloading pretrained weights ({attempts[0] if attempts else err}); "
            "ebmlens stays offline unless you pass download=True. Run once with download=True on a machine with "
            "internet access (the weights land in torch's or timm's cache, e.g. ~/.cache/torch/hub), then load "
            "offline") from None
    return net


def _timm_entry(name: str, dataset: str, threat_model: str) -> str | None:
    """RobustBench serves some entries (XCiT) as timm models named ``{name}_{dataset}_{threat}``."""
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
    return timm_name if timm.is_model(timm_name) else None


def _strip(sd: dict, sub: str) -> dict:
    # RobustBench's rule (robustbench.utils.rm_substr_from_state_dict): drop the prefix where present
    return {(k[len(sub):] if sub in k else k): v for k, v in sd.items()}


def _state_dict_from(ckpt: Any, name: str, ensemble: bool = False) -> dict:
    if ("Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding") and "last" in ckpt:
        ckpt = ckpt["last"]  # their release holds 'last' and 'best' (RobustBench evaluates 'last'); else a state dict
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        sd = _strip(ckpt["state_dict"], "module.")
    else:
        sd = _strip(ckpt, "module.")
    return sd if ensemble else _strip(sd, "model.")


def _load_weights(net: nn.Module, name: str, sd: dict, dataset: str, path: Path) -> nn.Module:
    from robustbench.model_zoo.enums import BenchmarkDataset
    from robustbench.utils import _safe_load_state_dict

    try:
        return _safe_load_state_dict(net, name, sd, BenchmarkDataset(dataset))
    except RuntimeError as e:
        first = str(e).splitlines()
        raise ValueError(f"weights in {str(path)!r} do not fit RobustBench's {name} architecture "
                         f"({' '.join(first[:2])[:300]}); "
                         "is it the right file for this dataset/threat model?") from None


#: RobustBench's leaderboard radii (its README / paper), the default eps of attacks on a zoo model.
BENCHMARK_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar10", "L2"): 0.5, ("cifar100", "Linf"): 8 / 255,
                 ("cifar100", "L2"): 0.5, ("imagenet", "Linf"): 4 / 255}


def load(
    name: str,
    *,
    dataset: str | None = None,
    threat_model: str | None = None,
    model_dir: str | Path = "models",
    download: bool = False,
    trust_checkpoint: bool = False,
    temperature: float = 1.0,
    sampling_mode: str = "eval",
) -> EnergyModel:
    """Load ``robustbench:NAME`` as an :class:`~ebmlens.EnergyModel` (mean 0, std 1: it normalizes itself).

    Args:
        name: the zoo name, e.g. ``"Carmon2019Unlabeled"`` (case-sensitive).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``; needed when the name exists for several.
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"``; needed when the name exists under several.
        model_dir: root of ``{dataset}/{threat_model}/{name}.pt``.
        download: fetch missing weights (Google Drive / timm / torch hub). Off by default.
        trust_checkpoint: allow pickled objects in the weights file.
    """
    ds, tm, entry = resolve(name, dataset, threat_model)
    what = f"robustbench:{name} ({ds}/{tm})"
    path = weights_path(name, ds, tm, model_dir)
    kw: dict[str, Any] = dict(mean=(0.0,), std=(1.0,), input_shape=_input_shape(entry, ds),
              num_classes=_NUM_CLASSES[ds], temperature=temperature, sampling_mode=sampling_mode,
              source="robustbench", name=name, dataset=ds, threat_model=tm, eps=BENCHMARK_EPS.get((ds, tm)))
    if ds == "cifar10":
        from ..data import CIFAR10_CLASSES

        kw["class_names"] = CIFAR10_CLASSES
    elif ds == "cifar100":
        kw["class_names"] = CIFAR100_CLASSES
    else:
        kw["preprocess"] = imagenet_preprocess(entry.get("preprocessing"))

    timm_name = _timm_entry(name, ds, tm)
    if timm_name is not None:
        return EnergyModel(_load_timm_entry(timm_name, what, path, download, trust_checkpoint), **kw)

    gid = entry.get("gdrive_id")
    if gid is None or "model" not in entry:
        raise ValueError(f"{what} has no downloadable weights in RobustBench 1.1.1 (no gdrive_id), "
                         "so it cannot be loaded")
    if ds == "imagenet" and "Standard" in name:  # torchvision's pretrained weights, from its cache
        return EnergyModel(_build_offline(entry["model"], what, download).eval(), **kw)

    if isinstance(gid, (list, tuple)):
        return EnergyModel(_load_ensemble(entry, name, ds, path, list(gid), download, trust_checkpoint, what), **kw)

    net = _build_offline(entry["model"], what, download)
    if not path.exists() and download:
        _download(gid, path)
    ckpt, _ = read_checkpoint(path, trust_checkpoint=trust_checkpoint, where=_where(gid, download))
    sd = _state_dict_from(ckpt, name)
    if ds == "imagenet":
        sd = _imagenet_fixups(sd, name, net)
    net = _load_weights(net, name, sd, ds, path)
    return EnergyModel(net.eval(), **kw)


def imagenet_preprocess(name: str | None) -> Preprocess:
    """RobustBench's ImageNet transform by its model-table name (``"Res256Crop224"``, the default,
    is ``Resize(256)`` + ``CenterCrop(224)``; ``"BicubicRes256Crop224"``; ``"Crop288"``).

    >>> imagenet_preprocess(None)
    Preprocess(resize=256, crop=224, interpolation='bilinear')
    """
    m = re.fullmatch(r"(Bicubic)?(?:Res(\d+))?(?:Crop(\d+))?", name or "Res256Crop224")
    if not m or not (m.group(2) or m.group(3)):
        raise ValueError(f"unknown RobustBench preprocessing {name!r}; expected e.g. 'Res256Crop224'")
    return Preprocess(int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None,
                      "bicubic" if m.group(1) else "bilinear")


def _where(gid: str, download: bool) -> str:
    return (f"RobustBench hosts it at https://drive.google.com/uc?id={gid}"
            + ("" if download else "; or pass download=True to fetch it"))


def _download(gid: str, path: Path) -> None:
    from robustbench.utils import download_gdrive_new

    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from Google Drive (id %s)", path, gid)
    download_gdrive_new(gid, path)
    check_weights_file(path, where=_where(gid, True))


def _imagenet_fixups(sd: dict, name: str, net: nn.Module) -> dict:
    """RobustBench's ImageNet adjustments: newer-timm Swin keys, and the ``model.`` prefix of the
    normalization wrapper for all but a few entries."""
    if name in ("Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
                "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L"):
        try:
            from timm.models.swin_transformer import checkpoint_filter_fn

            sd = checkpoint_filter_fn(sd, net.model)
        except Exception:  # noqa: BLE001 - RobustBench also falls back to the raw keys
            pass
    if name not in ("Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
                    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
                    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
                    "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L"):
        sd = {"model." + k: v for k, v in sd.items()}
    return sd


def _load_ensemble(entry, name, ds, path, gids, download, trust, what) -> nn.Module:
    net = _build_offline(entry["model"], what, download)
    members = getattr(net, "models", None)
    if members is None or len(members) != len(gids):
        raise ValueError(f"{what} is an ensemble with a custom layout that ebmlens does not load yet; "
                         "load it with robustbench.utils.load_model and wrap it in ebmlens.EnergyModel(..., "
                         "mean=(0,), std=(1,))")
    for i, gid in enumerate(gids):
        p = Path(f"{path}_m{i}.pt")  # RobustBench's naming: NAME.pt_m0.pt, NAME.pt_m1.pt, ...
        if not p.exists() and download:
            _download(gid, p)
        ckpt, _ = read_checkpoint(p, trust_checkpoint=trust,
                                  where=f"member {i} of the ensemble; " + _where(gid, download))
        members[i] = _load_weights(members[i], name, _state_dict_from(ckpt, name, ensemble=True), ds, p).eval()
    return net.eval()


def _load_timm_entry(timm_name: str, what: str, path: Path, download: bool, trust: bool) -> nn.Module:
    """XCiT entries: timm builds the model; its weights come from ``path`` (the file RobustBench
    publishes, e.g. ``debenedetti2022light-xcit-s-cifar10-linf.pth.tar`` renamed to ``NAME.pt``)."""
    import timm

    if path.exists():
        ckpt, _ = read_checkpoint(path, trust_checkpoint=trust)
        sd = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else ckpt
        sd = _strip(dict(sd or {}), "module.")
        with no_network():  # the weights come from the overlay; nothing may be fetched
            return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"state_dict": sd}).eval()
    url = timm.models.get_pretrained_cfg(timm_name).url if hasattr(timm.models, "get_pretrained_cfg") else None
    if download:
        return timm.create_model(timm_name, pretrained=True).eval()
    raise FileNotFoundError(f"{what} is served through timm ({timm_name}) and its weights are not local. Put the "
                            f"file{f' from {url}' if url else ''} at {str(path)!r}, or pass download=True")
