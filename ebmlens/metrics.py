"""Sample quality: Inception Score, FID and KID, offline; and accuracy-style measures of conditional samples.

Standard numbers (the published CIFAR-10 convention: 50,000 fresh class-balanced samples, IS with
10 splits, FID against the 50,000 training images) come from torch-fidelity's Inception
(``inception-v3-compat``, the 2015-12-05 TensorFlow weights), fed ``uint8`` images and resized to
299x299 by torch-fidelity itself. Its weights file is given by path (``inception_weights=``) and
checked by sha256; nothing is downloaded. The metrics on those features are torch-fidelity's own
functions, so the numbers are torch-fidelity's.

In any other feature network (a CIFAR-10 classifier, say) the same measures are computed by ebmlens's
own :func:`inception_score`, :func:`frechet_distance` and :func:`kernel_distance` and named after the network (``fd_<net>``, ``kd_<net>_mean``,
``is_<net>_mean``) so that nobody takes them for standard FID.

* Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))``, averaged over
  ``splits`` disjoint splits of the (shuffled) samples, mean and std over splits.
* Frechet distance (Heusel et al. 2017) between Gaussians fitted to features:
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.
* Kernel distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``k(a, b) = (a.b / d + 1)^3``, averaged over random subsets.

Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1``) :func:`evaluate` and :func:`reference_stats`
extract the features of every K-th batch per rank; rank 0 gathers them in index order, computes the
numbers (equal to a single process's) and writes ``out``; every rank returns the same result.

>>> import torch
>>> p = torch.eye(4) * 0.96 + 0.01                 # p(y|x): 0.97 on its class, 0.01 on the others
>>> logits = torch.log(p).repeat(25, 1)            # 100 confident predictions, balanced classes
>>> round(inception_score(logits, splits=1)[0], 4)  # exp(0.97 ln(4 * 0.97) + 0.03 ln(4 * 0.01))
3.3824
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import _dist
from ._metrics_math import _Moments, feature_stats, frechet_distance, inception_score, kernel_distance
from ._metrics_features import (INCEPTION_NETWORK, InceptionFeatures, ModuleFeatures, check_inception_weights,
                                find_inception_weights, slug)
from ._io import atomic_save_npz, versions
from .data import ImageData, load_data

__all__ = ["evaluate", "EvalResult", "reference_stats", "ReferenceStats", "load_reference_stats",
           "inception_score", "frechet_distance", "kernel_distance", "feature_stats",
           "conditional_accuracy", "class_diversity", "ClassMeasure"]

log = logging.getLogger(__name__)
_METRICS = ("is", "fid", "kid")


# ---------------------------------------------------------------------------- inputs
def _as_images(x: object, what: str = "images") -> ImageData:
    """An :class:`ImageData` (uint8 NHWC) from images, a folder, an .npz or a data spec."""
    if isinstance(x, ImageData):
        data = x
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        data = _array_images(x, what)
    elif isinstance(x, (str, os.PathLike)):
        p = Path(x).expanduser()
        if p.is_dir():
            data = load_data(f"folder:{p}")
        elif p.suffix == ".npz" and p.is_file():
            data = load_data(f"npz:{p}")
        elif ":" not in str(x):
            raise FileNotFoundError(f"{what} {str(x)!r} does not exist; give a samples or image folder, an .npz, "
                                    "or a data spec like cifar10:PATH@train")
        else:
            data = load_data(str(x), default_split="test")
    else:
        raise TypeError(f"{what} must be images (a tensor or array), an ImageData, a folder, an .npz or a data spec "
                        f"like 'cifar10:PATH@train', got {type(x).__name__}")
    n, h, w, c = data.images.shape
    if n == 0:
        raise ValueError(f"{what} ({data.source}) holds no images")
    if c != 3:
        raise ValueError(f"{what} ({data.source}) are {'grayscale' if c == 1 else f'{c}-channel'} images (C={c}); "
                         "the metrics need RGB: repeat the channel, e.g. x.repeat(1, 3, 1, 1)")
    return data


def _array_images(x: torch.Tensor | np.ndarray, what: str) -> ImageData:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 4:
        raise ValueError(f"{what} must be a 4-D batch (float N,C,H,W in [0,1] or uint8 N,H,W,C), got shape {a.shape}")
    if a.dtype == np.uint8:
        if a.shape[-1] not in (1, 3) and a.shape[1] in (1, 3):
            a = a.transpose(0, 2, 3, 1)                  # uint8 NCHW, unambiguous
    elif np.issubdtype(a.dtype, np.floating):
        if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
            raise ValueError(f"{what}: float images must be (N, C, H, W), got shape {a.shape} (channels last?); "
                             "use x.permute(0, 3, 1, 2)")
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
            raise ValueError(f"{what} has values in [{a.min():.3g}, {a.max():.3g}]; float images must be in [0, 1] "
                             "(for [-1, 1] images pass (x + 1) / 2)")
        a = np.clip(np.rint(a.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)  # as saved to PNG
    else:
        raise TypeError(f"{what} must be float in [0, 1] or uint8, got dtype {a.dtype}")
    return ImageData(np.ascontiguousarray(a), np.zeros(len(a), np.int64), ["0"], f"{what} array {tuple(x.shape)}")


# ---------------------------------------------------------------------------- feature networks
def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e


def _extractor(feature_model: object, *, inception_weights=None, layer=None, arch=None, device=None,
               trust_checkpoint=False, feature_name=None):
    if feature_model is None or feature_model == "inception":
        if layer not in (None, "2048"):
            raise ValueError(f"the standard Inception uses its 2048-d pool features; layer={layer!r} is not offered")
        weights = check_inception_weights(find_inception_weights(inception_weights), trust_checkpoint)
        return InceptionFeatures(weights, _device(device))
    if isinstance(feature_model, str):
        spec, feature_model = feature_model, _load_model(feature_model, arch, trust_checkpoint)
        feature_name = feature_name or (None if getattr(feature_model, "name", None) else spec)
    return ModuleFeatures(feature_model, layer, None if device is None else _device(device), feature_name)


def _load_model(spec: str, arch: str | None, trust_checkpoint: bool) -> nn.Module:
    from .models import load_model

    source = spec.split(":", 1)[0] if ":" in spec else "file"
    kw: dict = {}
    if arch is not None:
        if source != "file":
            raise ValueError(f"arch applies to file: checkpoints only, not to {spec!r}")
        kw["arch"] = arch
    if trust_checkpoint and source == "file":
        kw["trust_checkpoint"] = True
    return load_model(spec, **kw)


def _features(ext, data: ImageData, batch_size: int, progress: bool, desc: str, keep: bool = True,
              local: bool = False):
    """Run ``ext`` over ``data`` in batches: ``(features (N, d) or None, logits or None, moments)``.

    Under torchrun each rank extracts every world-th batch; the batches are gathered to rank 0,
    which folds them into the moments in index order (so the numbers equal a single process's).
    The other ranks get ``(None, None, None)``. ``local=True``: no sharding, every process does all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    d = _dist.DistInfo() if local else _dist.init_if_needed(getattr(ext, "device", None))
    starts = _dist.shard(list(range(0, len(data), batch_size)), d)
    parts, mom = [], _Moments()
    share = sum(min(batch_size, len(data) - s) for s in starts)
    with ext.active(), tqdm(total=share, desc=desc if not d.active else f"{desc} (rank 0 of {d.world})", unit="img",
                            disable=not progress or d.rank != 0, leave=False) as bar:
        for s in starts:
            f, z = ext(data.images[s:s + batch_size])
            if not d.active:
                mom.update(f.numpy())  # streamed: without keep, one process never holds all features
            if keep or d.active:
                parts.append((s, f, z))
            bar.update(len(f))
    if d.active:
        gathered = _dist.gather_to_rank0(parts)
        if gathered is None:
            return None, None, None
        parts = sorted((p for rank_parts in gathered for p in rank_parts), key=lambda p: p[0])
        for _, f, _ in parts:
            mom.update(f.numpy())
    f_all = torch.cat([f for _, f, _ in parts]) if keep else None
    zs = [z for _, _, z in parts if z is not None]
    z_all = torch.cat(zs) if keep and zs else None
    return f_all, z_all, mom


# ---------------------------------------------------------------------------- reference statistics
@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Feature statistics of a reference set, computed once (streamed) and saved as .npz.

    Attributes:
        mu, sigma: float64 mean ``(d,)`` and covariance ``(d, d)`` of the features.
        count: number of images.
        fingerprint: the source images' fingerprint (sha256 prefix of the arrays).
        source: the data spec or description.
        network, layer: the feature network and layer (``inception-v3-compat``/``2048`` for standard FID).
        network_fingerprint: sha256 prefix of the network's weights (the Inception file's sha256).
        features: the ``(N, d)`` float32 features when kept (KID needs them), else ``None``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    fingerprint: str
    source: str
    network: str
    layer: str
    network_fingerprint: str
    features: np.ndarray | None = None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"reference statistics are saved as .npz, got {str(path)!r}")
        extra = {} if self.features is None else {"features": self.features}
        atomic_save_npz(path, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                        fingerprint=np.str_(self.fingerprint), source=np.str_(self.source),
                        network=np.str_(self.network), layer=np.str_(self.layer),
                        network_fingerprint=np.str_(self.network_fingerprint), **extra)
        return path


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
    """Read a statistics file written by :func:`reference_stats` (arrays only; no pickle)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {str(path)!r} does not exist; make one with "
                                "ebmlens evaluate --make-ref-stats SPEC --out FILE.npz")
    with np.load(path, allow_pickle=False) as z:
        missing = {"mu", "sigma", "count", "network", "layer"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not an ebmlens statistics file (missing {sorted(missing)})")
        get = lambda k, d="": str(z[k]) if k in z.files else d  # noqa: E731
        return ReferenceStats(z["mu"], z["sigma"], int(z["count"]), get("fingerprint"), get("source", str(path)),
                              get("network"), get("layer"), get("network_fingerprint"),
                              z["features"] if "features" in z.files else None)


def _is_stats_file(x: object) -> bool:
    if not isinstance(x, (str, os.PathLike)) or Path(x).suffix != ".npz" or not Path(x).is_file():
        return False
    with np.load(Path(x), allow_pickle=False) as z:
        return "mu" in z.files and "sigma" in z.files


def reference_stats(source: object, feature_model: object = None, *, inception_weights=None, layer: str | None = None,
                    arch: str | None = None, feature_name: str | None = None, batch_size: int = 100, device=None,
                    trust_checkpoint: bool = False, keep_features: bool = False, out: str | os.PathLike | None = None,
                    progress: bool = False) -> ReferenceStats:
    """Feature mean/covariance of a reference set, streamed batch by batch; saved to ``out`` if given.

    Args:
        source: images, an ImageData, a folder or a data spec. A spec without ``@split`` means the
            test split; the published FID convention uses ``cifar10:PATH@train``.
        feature_model: ``None`` (standard Inception, needs ``inception_weights``) or a feature network.
        keep_features: also store the ``(N, d)`` features (needed for KID; 50,000 x 2048 float32 is 400 MB).
        Other arguments as in :func:`evaluate`, which must later use the same network, layer and name.
    """
    data = _as_images(source, "reference")
    _dist.init_if_needed(device)  # under torchrun: join first, so "cuda" means cuda:LOCAL_RANK
    ext = _extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                     trust_checkpoint=trust_checkpoint, feature_name=feature_name)
    f, _, mom = _features(ext, data, batch_size, progress, "reference features", keep=keep_features)
    return _dist.run_on_rank0(_finish_stats, f, mom, data, ext, out)  # under torchrun: rank 0 computes and writes


def _finish_stats(f, mom, data: ImageData, ext, out) -> ReferenceStats:
    mu, sigma = mom.result()
    stats = ReferenceStats(mu, sigma, mom.n, data.fingerprint, data.source, ext.network, ext.layer,
                           ext.fingerprint(), None if f is None else f.numpy().astype(np.float32))
    if out is not None:
        stats.save(out)
    return stats


# ---------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured, with everything needed to reproduce it.

    ``values`` holds the numbers under names that say which network made them: ``is_mean``,
    ``is_std``, ``fid``, ``kid_mean``, ``kid_std`` for the standard Inception; ``is_<net>_mean``,
    ``fd_<net>``, ``kd_<net>_mean``... for any other network. The properties ``fid``,
    ``inception_score``, ``kid`` (and ``is_mean``...) return the standard ones, or ``None``.
    """

    values: dict[str, float]
    network: str
    layer: str
    standard: bool
    implementation: dict[str, str]
    num_images: int
    source: str
    fingerprint: str
    image_size: tuple[int, int]
    ref: str | None = None
    num_ref_images: int | None = None
    ref_fingerprint: str | None = None
    splits: int | None = None
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    weights_official: bool | None = None
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def _std(self, key: str) -> float | None:
        return self.values.get(key) if self.network == INCEPTION_NETWORK else None

    is_mean = property(lambda self: self._std("is_mean"), doc="Inception Score (standard Inception), or None.")
    is_std = property(lambda self: self._std("is_std"))
    fid = property(lambda self: self._std("fid"), doc="FID (standard Inception), or None.")
    kid_mean = property(lambda self: self._std("kid_mean"))
    kid_std = property(lambda self: self._std("kid_std"))
    inception_score = is_mean
    kid = kid_mean

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _metric_list(metrics: str | Iterable[str]) -> tuple[str, ...]:
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out = tuple(dict.fromkeys(str(m).strip().lower() for m in items if str(m).strip()))
    bad = [m for m in out if m not in _METRICS]
    if bad or not out:
        raise ValueError(f"unknown metrics {bad or list(items)}; choose from is, fid, kid (e.g. 'is,fid,kid')")
    return out


def evaluate(images: object, ref: object = None, metrics: str | Sequence[str] = _METRICS, feature_model: object = None,
             *, inception_weights: str | os.PathLike | None = None, layer: str | None = None, arch: str | None = None,
             feature_name: str | None = None, batch_size: int = 100, device: str | torch.device | None = None,
             splits: int = 10, trust_checkpoint: bool = False, kid_subsets: int = 100,
             kid_subset_size: int | None = None, seed: int = 2020, progress: bool = False) -> EvalResult:
    """IS / FID / KID of ``images`` against ``ref`` in the standard Inception or another feature network.

    Args:
        images: float ``(N, 3, H, W)`` in [0, 1] or uint8 ``(N, H, W, 3)`` images, an ImageData, a
            folder (an ebmlens samples folder: its ``samples.npz``; or image files), an .npz, or a data
            spec (``cifar10:PATH@test``). Everything is quantized to uint8 first (as when saved to PNG).
        ref: the reference for FID/KID: the same kinds of input, or a statistics .npz from
            :func:`reference_stats` (KID then needs one saved with ``keep_features=True``).
            A data spec without ``@split`` means the test split; the convention is ``@train``.
        metrics: any of ``"is"``, ``"fid"``, ``"kid"`` (a sequence or ``"is,fid"``).
        feature_model: ``None`` - torch-fidelity's Inception with the weights file
            ``inception_weights`` (see :func:`ebmlens._metrics_features.find_inception_weights`);
            or an ``nn.Module`` / EnergyModel / model name (``"ebmlens:cifar10-l2-small"``,
            ``"file:ckpt.pt"`` with ``arch``), measured at ``layer`` (default: the penultimate one).
        splits: IS splits (10 by convention). kid_subsets / kid_subset_size: KID subsets
            (default size: min(1000, N, N_ref)). seed: the shuffle / subset seed (torch-fidelity's 2020).
        trust_checkpoint: load an Inception file whose sha256 is not the official one (pickle).

    Returns:
        :class:`EvalResult`. Example (a CPU-sized run in a small classifier's features)::

            r = evaluate("runs/samples", ref="cifar10:data/cifar10-jpeg.tar.xz@train",
                         feature_model="ebmlens:cifar10-l2-small", metrics="fid,kid")
            r.values["fd_ebmlens-cifar10-l2-small"]
    """
    t0 = time.perf_counter()
    metrics = _metric_list(metrics)
    data = _as_images(images, "images")
    if "is" in metrics and not 1 <= splits <= len(data):
        raise ValueError(f"Inception Score with splits={splits} needs at least {splits} images, got {len(data)}; "
                         "pass more images or fewer splits")
    needs_ref = "fid" in metrics or "kid" in metrics
    if needs_ref and ref is None:
        raise ValueError("FID/KID need a reference: ref='cifar10:PATH@train' (CLI --ref) or a statistics file "
                         "(CLI --ref-stats FILE.npz); or ask for metrics='is' only")
    stats = ref_data = None
    if needs_ref:
        if isinstance(ref, ReferenceStats):
            stats = ref
        elif _is_stats_file(ref):
            stats = load_reference_stats(ref)
        else:
            ref_data = _as_images(ref, "reference")
    _dist.init_if_needed(device)  # under torchrun: join first, so "cuda" means cuda:LOCAL_RANK
    ext = _extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                     trust_checkpoint=trust_checkpoint, feature_name=feature_name)
    if stats is not None:
        _check_stats(stats, ext, "kid" in metrics)

    feats, logits, mom = _features(ext, data, batch_size, progress, "features")
    ref_extracted = None
    if needs_ref and stats is None:  # every rank extracts its share (collective under torchrun)
        ref_extracted = _features(ext, ref_data, batch_size, progress, "reference features", keep="kid" in metrics)

    def finish() -> EvalResult:  # rank 0 (or the single process): the metrics on the gathered features
        std = ext.standard
        net = "" if std else slug(ext.key_name)
        values: dict[str, float] = {}
        impl: dict[str, str] = {}
        tf = f"torch-fidelity {getattr(ext, 'version', '')}"
        if "is" in metrics:
            if logits is None:
                raise ValueError(f"IS needs class logits, but {ext.network} does not output (N, K) logits; "
                                 "drop 'is' from metrics or use a classifier")
            if std:
                from torch_fidelity.metric_isc import isc_features_to_metric

                r = isc_features_to_metric(logits, splits, True, seed)
                m, s = r["inception_score_mean"], r["inception_score_std"]
                impl["is"] = f"{tf} isc_features_to_metric on {ext.logits_layer} (1008 classes)"
            else:
                m, s = inception_score(logits, splits, seed=seed)
                impl[f"is_{net}"] = (f"ebmlens.metrics.inception_score on {ext.network} logits "
                                     f"({logits.shape[1]} classes)")
            values.update({"is_mean": m, "is_std": s} if std else {f"is_{net}_mean": m, f"is_{net}_std": s})
        ref_feats = None
        ref_desc = ref_n = ref_fp = None
        if needs_ref:
            if stats is not None:
                mu_r, sigma_r = stats.mu, stats.sigma
                ref_desc, ref_n, ref_fp = stats.source, stats.count, stats.fingerprint
                ref_feats = None if stats.features is None else torch.from_numpy(stats.features)
            else:
                ref_feats, _, mom_r = ref_extracted
                mu_r, sigma_r = mom_r.result()
                ref_desc, ref_n, ref_fp = ref_data.source, len(ref_data), ref_data.fingerprint
        if "fid" in metrics:
            mu, sigma = mom.result()
            if std:
                from torch_fidelity.metric_fid import fid_statistics_to_metric

                values["fid"] = fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": mu_r, "sigma": sigma_r},
                                                         False)["frechet_inception_distance"]
                impl["fid"] = f"{tf} fid_statistics_to_metric on 2048-d pool features (float64 mean/cov by ebmlens)"
            else:
                values[f"fd_{net}"] = frechet_distance(mu, sigma, mu_r, sigma_r)
                impl[f"fd_{net}"] = f"ebmlens.metrics.frechet_distance (eigh) on {ext.network} {ext.layer}"
        size = None
        if "kid" in metrics:
            size = int(kid_subset_size) if kid_subset_size is not None else min(1000, len(feats), len(ref_feats))
            if std:
                from torch_fidelity.metric_kid import kid_features_to_metric

                if not 2 <= size <= min(len(feats), len(ref_feats)):
                    raise ValueError(f"KID subset size {size} must be in [2, {min(len(feats), len(ref_feats))}]")
                r = kid_features_to_metric(feats, ref_feats, kid_subsets=kid_subsets, kid_subset_size=size,
                                           rng_seed=seed, verbose=False)
                values.update(kid_mean=r["kernel_inception_distance_mean"], kid_std=r["kernel_inception_distance_std"])
                impl["kid"] = f"{tf} kid_features_to_metric (poly kernel, degree 3) on 2048-d pool features"
            else:
                m, s = kernel_distance(feats, ref_feats, kid_subsets, size, seed=seed)
                values.update({f"kd_{net}_mean": m, f"kd_{net}_std": s})
                impl[f"kd_{net}"] = (f"ebmlens.metrics.kernel_distance (poly kernel, degree 3) on {ext.network} "
                                     f"{ext.layer}")
        w = ext.weights
        log.info("evaluated %d images in %s (%s): %s", len(data), ext.network, ext.layer, values)
        return EvalResult(
            values={k: float(v) for k, v in values.items()}, network=ext.network, layer=ext.layer,
            standard=bool(std and w is not None and w.official), implementation=impl, num_images=len(data),
            source=data.source, fingerprint=data.fingerprint, image_size=tuple(int(s) for s in data.images.shape[1:3]),
            ref=ref_desc, num_ref_images=ref_n, ref_fingerprint=ref_fp, splits=splits if "is" in metrics else None,
            kid_subsets=kid_subsets if "kid" in metrics else None, kid_subset_size=size,
            weights=w.path if w else None, weights_sha256=w.sha256 if w else None,
            weights_official=w.official if w else None,
            seconds=round(time.perf_counter() - t0, 3), versions=versions(**({"torch-fidelity": ext.version} if getattr(ext, "version", None) else {})))

    return _dist.run_on_rank0(finish)


def _check_stats(stats: ReferenceStats, ext, need_features: bool) -> None:
    if (stats.network, stats.layer) != (ext.network, ext.layer):
        raise ValueError(f"the reference statistics ({stats.source}) were computed in {stats.network} at "
                         f"{stats.layer}, but these features come from {ext.network} at {ext.layer}; recompute "
                         "them with the same feature network")
    if stats.network_fingerprint and stats.network_fingerprint != ext.fingerprint():
        raise ValueError(f"the reference statistics were computed with other weights of {stats.network} "
                         f"({stats.network_fingerprint} vs {ext.fingerprint()}); recompute them")
    if need_features and stats.features is None:
        raise ValueError("KID needs the reference features, and this statistics file holds only mu/sigma; rebuild "
                         "it with keep_features=True (CLI --keep-features) or drop 'kid' from metrics")


# ---------------------------------------------------------------------------- conditional samples
@dataclass(frozen=True)
class ClassMeasure:
    """A per-class measure of conditional samples: ``overall`` and one value per class label."""

    measure: str
    overall: float
    per_class: dict[int, float]
    counts: dict[int, int]
    network: str
    layer: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _labelled(images: object, labels: object) -> tuple[ImageData, np.ndarray]:
    data = _as_images(images, "images")
    if labels is None:
        if not isinstance(images, (ImageData, str, os.PathLike)):
            raise ValueError("labels are required for image arrays (the target class of each image)")
        y = data.labels
    else:
        y = (labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels))
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
    if len(y) != len(data):
        raise ValueError(f"{len(y)} labels for {len(data)} images")
    return data, y.astype(np.int64)


def conditional_accuracy(images: object, labels: object, classifier: object, *, arch: str | None = None,
                         batch_size: int = 100, device=None, trust_checkpoint: bool = False) -> ClassMeasure:
    """Fraction of conditional samples that an (independent) ``classifier`` assigns to their target.

    ``labels`` are the targets (``None``: the labels stored with an ImageData or samples folder).
    ``classifier``: an EnergyModel, any module mapping [0, 1] images to logits, or a model name.
    """
    data, y = _labelled(images, labels)
    if classifier is None:
        raise ValueError("conditional_accuracy needs a classifier (an nn.Module, EnergyModel or model name)")
    ext = _extractor(classifier, layer="output", arch=arch, device=device, trust_checkpoint=trust_checkpoint)
    _, logits, _ = _features(ext, data, batch_size, False, "classify", local=True)
    if logits is None:
        raise ValueError(f"{ext.network} does not output (N, K) logits; conditional_accuracy needs a classifier")
    hit = logits.argmax(1).numpy() == y
    classes = sorted(set(y.tolist()))
    return ClassMeasure("conditional_accuracy", float(hit.mean()), {c: float(hit[y == c].mean()) for c in classes},
                        {c: int((y == c).sum()) for c in classes}, ext.network)


def class_diversity(images: object, labels: object, feature_model: object, *, layer: str | None = None,
                    arch: str | None = None, inception_weights=None, batch_size: int = 100, device=None,
                    trust_checkpoint: bool = False) -> ClassMeasure:
    """Per-class diversity: the mean pairwise Euclidean distance between the features of the
    samples of each class (all pairs i < j), and ``overall`` = the unweighted mean over classes
    with at least two samples. Near-identical samples of a class give values near 0; compare with
    the same measure on real images of the class in the same network."""
    data, y = _labelled(images, labels)
    ext = _extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                     trust_checkpoint=trust_checkpoint)
    feats, _, _ = _features(ext, data, batch_size, False, "features", local=True)
    per = {int(c): float(torch.pdist(feats[torch.from_numpy(y == c)].double()).mean())
           for c in sorted(set(y.tolist())) if (y == c).sum() >= 2}
    if not per:
        raise ValueError("class_diversity needs at least two images of some class")
    return ClassMeasure("class_diversity", float(np.mean(list(per.values()))), per,
                        {c: int((y == c).sum()) for c in per}, ext.network, ext.layer)
