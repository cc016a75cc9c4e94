"""Feature extractors behind :mod:`ebmlens.metrics`: the standard Inception and any ``nn.Module``.

Both take a batch of ``uint8`` images ``(n, H, W, 3)`` (the form every input is brought to) and
return ``(features (n, d) float32, logits (n, K) float32 or None)`` on the CPU.

* :class:`InceptionFeatures` - torch-fidelity's ``inception-v3-compat`` (the TensorFlow 2015-12-05
  Inception, ported), fed ``uint8`` NCHW tensors; torch-fidelity resizes to 299x299 with its
  TF1-compatible bilinear resize. Features: the 2048-d pool, logits: ``logits_unbiased`` (what
  torch-fidelity's IS uses). The weights file is checked before torch-fidelity unpickles it.
* :class:`ModuleFeatures` - any classifier; an :class:`~ebmlens.energy.EnergyModel` is run with its
  own normalization. Features: the input of the last ``nn.Linear`` (the penultimate layer) by
  default, or any graph node named with ``layer`` (torchvision's feature extraction).

:func:`extractor` picks one from what the caller named; :func:`extract` runs it over a dataset in
batches (sharded under torchrun) and folds the features into streamed moments.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import _dist
from .._measure import map_batches
from ..data import ImageSet, as_image_data
from ._math import _Moments

log = logging.getLogger(__name__)

#: The official file's sha256 starts with this (torch hub's naming rule: the name carries the prefix).
OFFICIAL_INCEPTION_SHA256_PREFIX = "6726825d"
#: Names the official file goes by (pytorch-fid's and torch-fidelity's releases; same hash prefix).
INCEPTION_FILE_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_NETWORK = "inception-v3-compat"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class InceptionWeights:
    """A checked Inception weights file: its path, sha256, and whether it is the official one."""

    path: str
    sha256: str
    official: bool


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inception_search_paths() -> list[Path]:
    """Where a missing ``inception_weights`` is looked for (no network): ``$EBMLENS_INCEPTION_WEIGHTS``,
    ``<ebmlens cache>/weights/<name>``, and torch hub's checkpoint folder (torch-fidelity's own cache)."""
    from ..data import cache_dir

    paths: list[Path] = []
    env = os.environ.get("EBMLENS_INCEPTION_WEIGHTS")
    if env:
        paths.append(Path(env).expanduser())
    for name in INCEPTION_FILE_NAMES:
        paths.append(cache_dir() / "weights" / name)
        paths.append(Path(torch.hub.get_dir()) / "checkpoints" / name)
    return paths


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file to use; a clear ``FileNotFoundError`` when there is none."""
    from ..data import cache_dir

    hint = (f"the standard IS/FID/KID need the official Inception weights file {INCEPTION_FILE_NAMES[0]} "
            f"(also published as {INCEPTION_FILE_NAMES[1]}; sha256 starts with {OFFICIAL_INCEPTION_SHA256_PREFIX}). "
            "ebmlens never downloads it: copy it to this machine and pass inception_weights=PATH "
            "(CLI: --inception-weights PATH), set EBMLENS_INCEPTION_WEIGHTS, or put it in "
            f"{cache_dir() / 'weights'}; or measure in another network (feature_model=..., CLI --feature-model), "
            "whose scores are not standard")
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights file {str(p)!r} does not exist; " + hint)
        return p
    for p in inception_search_paths():
        if p.is_file():
            return p
    raise FileNotFoundError("no Inception weights file found; " + hint)


def check_inception_weights(path: Path, trust_checkpoint: bool = False) -> InceptionWeights:
    """Refuse any file whose sha256 is not the official one, unless ``trust_checkpoint``.

    torch-fidelity loads the file with ``torch.load(weights_only=False)`` (pickle: a file can run
    code), so an unverified file is only loaded on the caller's explicit word.
    """
    sha = file_sha256(path)
    official = sha.startswith(OFFICIAL_INCEPTION_SHA256_PREFIX)
    m = _HASH_IN_NAME.search(path.name)
    if m and not sha.startswith(m.group(1)):
        problem = (f"{path} is named for sha256 {m.group(1)}... but its sha256 is {sha[:16]}...: "
                   "a corrupted download or a different file")
    elif not official:
        problem = (f"{path} is not the official Inception file (sha256 {sha[:16]}..., expected "
                   f"{OFFICIAL_INCEPTION_SHA256_PREFIX}...)")
    else:
        problem = ""
    if problem:
        if not trust_checkpoint:
            raise ValueError(problem + "; it would be unpickled (it can run code), so it is refused. Use the official "
                             f"{INCEPTION_FILE_NAMES[0]}, or pass trust_checkpoint=True (CLI --trust-checkpoint) "
                             "for a file you trust; its numbers are then not standard IS/FID")
        log.warning("%s; loading it anyway (trust_checkpoint=True); numbers are not standard", problem)
    return InceptionWeights(str(path), sha, official)


def _check_torch_fidelity():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise ImportError("the standard Inception metrics need torch-fidelity and scipy: "
                          "pip install 'ebmlens[metrics]'") from e
    return torch_fidelity


class InceptionFeatures:
    """torch-fidelity's Inception: 2048-d pool features and unbiased logits of ``uint8`` images."""

    standard = True
    network = INCEPTION_NETWORK
    layer = "2048"
    logits_layer = "logits_unbiased"

    def __init__(self, weights: InceptionWeights, device: torch.device) -> None:
        tf = _check_torch_fidelity()
        from torch_fidelity.utils import create_feature_extractor

        self.weights = weights
        self.device = device
        self.version = tf.__version__
        self.net = create_feature_extractor(INCEPTION_NETWORK, ["2048", "logits_unbiased"], cuda=False, verbose=False,
                                            feature_extractor_weights_path=weights.path).to(device)

    def fingerprint(self) -> str:
        return self.weights.sha256[:16]

    @contextlib.contextmanager
    def active(self) -> Iterator["InceptionFeatures"]:
        yield self

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (n,3,H,W) u8
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous().to(self.device)
        feats, logits = self.net(x)
        return feats.float().cpu(), logits.float().cpu()


def slug(name: str) -> str:
    """A network name fit for a result key: ``"ebmlens:cifar10-l2-small"`` -> ``"ebmlens-cifar10-l2-small"``."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "net"


class ModuleFeatures:
    """Features (and logits, if it is a classifier) of any ``nn.Module``.

    Args:
        module: an :class:`~ebmlens.energy.EnergyModel` (its classifier is run on normalized input)
            or any module taking float ``(N, C, H, W)`` pixels in [0, 1].
        layer: a graph node name (``torchvision.models.feature_extraction.get_graph_node_names``);
            ``None``: the input of the last ``nn.Linear`` (penultimate features); ``"output"``: the
            module's output itself. 4-D node outputs are averaged over space, others flattened.
        device: where to run; ``None`` keeps the module where it is.
        name: the network's name in reports (default: the model's ``source:name`` or class name).
    """

    standard = False
    weights = None

    def __init__(self, module: nn.Module, layer: str | None = None, device: torch.device | None = None,
                 name: str | None = None) -> None:
        from ..energy import EnergyModel

        if not isinstance(module, nn.Module):
            raise TypeError(f"feature_model must be an nn.Module, a model name like 'ebmlens:cifar10-l2-small', "
                            f"or None (standard Inception), got {type(module).__name__}")
        self.module = module
        self.net = module.classifier if isinstance(module, EnergyModel) else module
        if device is not None:
            module.to(device)
        p = next(iter(module.parameters()), None)
        self.device = p.device if p is not None else (device or torch.device("cpu"))
        if isinstance(module, EnergyModel):
            self.input_shape: tuple[int, ...] | None = tuple(module.input_shape)
            default_name = f"{module.source}:{module.name}" if module.name else type(self.net).__name__
        else:
            self.input_shape = None
            default_name = type(module).__name__
        self.network = name or default_name
        # the short name in result keys: a file checkpoint goes by its file name (network keeps the path)
        file_stem = Path(str(module.name)).stem if isinstance(module, EnergyModel) and module.source == "file" else None
        self.key_name = name or (f"file-{file_stem}" if file_stem else default_name)
        self._captured: torch.Tensor | None = None
        self._hooked = self._fx = None
        self.layer = layer or ""
        if layer == "output":
            pass
        elif layer is None:
            linears = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"{self.network} has no nn.Linear, so there is no default penultimate layer; name a "
                                 f"layer (layer=..., CLI --layer), one of: {', '.join(self._node_names()[-8:])}")
            self.layer = f"{linears[-1]}:input"
            self._hooked = self.net.get_submodule(linears[-1])
        else:
            names = self._node_names()
            if layer not in names:
                close = difflib.get_close_matches(layer, names, n=4)
                raise ValueError(f"{self.network} has no layer {layer!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else "")
                                 + f" Layers: {', '.join(names)}")
            from torchvision.models.feature_extraction import create_feature_extractor

            nodes = {layer: "feat"}
            if names[-1] != layer:
                nodes[names[-1]] = "out"
            self._fx = create_feature_extractor(self.net, return_nodes=nodes)

    def _node_names(self) -> list[str]:
        from torchvision.models.feature_extraction import get_graph_node_names

        try:
            return list(get_graph_node_names(self.net)[1])
        except Exception as e:  # torch.fx cannot trace every model
            raise ValueError(f"cannot trace {self.network} to find layers by name ({type(e).__name__}: {e}); "
                             "use the default penultimate layer (layer=None)") from e

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @contextlib.contextmanager
    def active(self) -> Iterator["ModuleFeatures"]:
        """Eval mode (restored afterwards) and, for the default layer, the capturing hook."""
        was = [(m, m.training) for m in self.module.modules()]
        handle = None
        if self._hooked is not None:
            def grab(_mod, inputs):
                self._captured = inputs[0]
            handle = self._hooked.register_forward_pre_hook(grab)
        self.module.eval()
        try:
            yield self
        finally:
            if handle is not None:
                handle.remove()
            for m, t in was:
                m.training = t
            self._captured = None

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        from ..energy import EnergyModel

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.network} expects images of shape {self.input_shape} (C, H, W), got "
                             f"{tuple(x.shape[1:])}; resize the images to the model's size first")
        if isinstance(self.module, EnergyModel):
            x = (x - self.module.mean) / self.module.std
        if self._fx is None:
            out = self.net(x)
            feat = self._captured if self._hooked is not None else out
            if feat is None:
                raise RuntimeError(f"the last nn.Linear of {self.network} was not called in forward; name a layer")
        else:
            d = self._fx(x)
            feat, out = d["feat"], d.get("out", d["feat"])
        feat = feat.mean(dim=(2, 3)) if feat.dim() == 4 else feat.flatten(1)
        logits = out.float().cpu() if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] >= 2 else None
        return feat.float().cpu(), logits


# ---------------------------------------------------------------------------- choosing and running one
def extractor(feature_model: object, *, inception_weights=None, layer=None, arch=None, device=None,
              trust_checkpoint=False, feature_name=None) -> InceptionFeatures | ModuleFeatures:
    """``None`` / ``"inception"``: the standard Inception (checked weights file); an ``nn.Module``
    or a model spec (:func:`ebmlens.models.resolve_model`): :class:`ModuleFeatures` at ``layer``."""
    if feature_model is None or feature_model == "inception":
        if layer not in (None, "2048"):
            raise ValueError(f"the standard Inception uses its 2048-d pool features; layer={layer!r} is not offered")
        weights = check_inception_weights(find_inception_weights(inception_weights), trust_checkpoint)
        return InceptionFeatures(weights, _dist.resolve_device(device))
    if isinstance(feature_model, (str, os.PathLike)):
        from ..models import resolve_model

        spec = str(feature_model)
        feature_model = resolve_model(spec, arch=arch, trust_checkpoint=trust_checkpoint)
        feature_name = feature_name or (None if getattr(feature_model, "name", None) else spec)
    if not isinstance(feature_model, nn.Module):
        raise TypeError(f"feature_model must be an nn.Module, a model name like 'ebmlens:cifar10-l2-small', "
                        f"or None (standard Inception), got {type(feature_model).__name__}")
    return ModuleFeatures(feature_model, layer, None if device is None else _dist.resolve_device(device), feature_name)


def rgb_images(x: object, what: str = "images") -> ImageSet:
    """What the feature networks read: :func:`ebmlens.data.as_image_data` of ``x``, RGB only."""
    data = as_image_data(x, what)
    c = data.image_shape[-1]
    if c != 3:
        raise ValueError(f"{what} ({data.source}) are {'grayscale' if c == 1 else f'{c}-channel'} images (C={c}); "
                         "the metrics need RGB: repeat the channel, e.g. x.repeat(1, 3, 1, 1)")
    return data


def extract(ext, data: ImageSet, batch_size: int, progress: bool, desc: str, keep: bool = True,
            local: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None, _Moments | None]:
    """Run ``ext`` over ``data`` in batches: ``(features (N, d) or None, logits or None, moments)``.

    The batches go through :func:`ebmlens._measure.map_batches`: under torchrun each rank extracts
    every world-th batch; the batches are gathered to rank 0, which folds them into the moments in
    index order (so the numbers equal a single process's). The other ranks get ``(None, None, None)``.
    ``local=True``: no sharding, every process does all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    d = _dist.DistInfo() if local else _dist.init_if_needed(getattr(ext, "device", None))
    mom = _Moments()

    def features(arr: np.ndarray, _y: torch.Tensor, _idx: np.ndarray) -> dict[str, torch.Tensor]:
        f, z = ext(arr)
        if not d.active:
            mom.update(f.numpy())  # streamed: without keep, one process never holds all features
        out = {"f": f} if keep or d.active else {}
        if z is not None and (keep or d.active):
            out["z"] = z
        return out

    with ext.active():
        got = map_batches(None, data, features, batch_size=batch_size, progress=progress, arrays=True,
                          labels=False, shard=not local, desc=desc, device=getattr(ext, "device", None) or "cpu")
    if got is None:
        return None, None, None
    if d.active:  # rank 0: every rank's features, folded batch by batch in index order (as one process)
        for s in range(0, len(got["f"]), batch_size):
            mom.update(got["f"][s:s + batch_size].numpy())
    return (got.get("f") if keep else None), (got.get("z") if keep else None), mom
