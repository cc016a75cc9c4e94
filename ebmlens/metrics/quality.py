"""Sample quality: IS / FID / KID, precision / recall / density / coverage and within-class diversity
of a set of images against a reference, as a short sequence of per-metric calls (:func:`evaluate`).

In the standard Inception the numbers are torch-fidelity's own functions on its features; in any
other network ebmlens's formulas (:mod:`ebmlens.metrics._math`) under names that say the network
(``fd_<net>``, ``kd_<net>_mean``, ``is_<net>_mean``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from .. import _dist
from .._io import versions
from ..data import ImageSet, require_labels
from ._math import frechet_distance, inception_score, kernel_distance
from .features import INCEPTION_NETWORK, extract, extractor, rgb_images, slug
from .manifold import density_coverage, precision_recall, within_class_diversity
from .reference import ReferenceStats, check_stats, is_stats_file, load_reference_stats

__all__ = ["evaluate", "EvalResult"]

log = logging.getLogger(__name__)
_METRICS = ("is", "fid", "kid")
#: Measures that separate fidelity from diversity (:mod:`ebmlens.metrics.manifold`); not in the default set.
_MANIFOLD = ("precision", "recall", "density", "coverage")
_ALL = _METRICS + _MANIFOLD + ("diversity",)


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


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """``"is,fid"`` or ``["fid"]`` -> ``("is", "fid")`` (lower case, deduplicated), checked against the
    known metrics; an unknown name fails with the choices."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out = tuple(dict.fromkeys(str(m).strip().lower() for m in items if str(m).strip()))
    bad = [m for m in out if m not in _ALL]
    if bad or not out:
        raise ValueError(f"unknown metrics {bad or list(items)}; choose from {', '.join(_ALL)} (e.g. 'is,fid,kid' "
                         "or 'fid,precision,recall,density,coverage,diversity')")
    return out


def evaluate(images: object, ref: object = None, metrics: str | Sequence[str] = _METRICS, feature_model: object = None,
             *, inception_weights: str | os.PathLike | None = None, layer: str | None = None, arch: str | None = None,
             feature_name: str | None = None, batch_size: int = 100, device: str | torch.device | None = None,
             splits: int = 10, trust_checkpoint: bool = False, kid_subsets: int = 100,
             kid_subset_size: int | None = None, seed: int = 2020, progress: bool = False,
             labels: object = None, prc_k: int = 3, dc_k: int = 5) -> EvalResult:
    """IS / FID / KID (and the fidelity / diversity measures) of ``images`` against ``ref`` in the standard
    Inception or another feature network.

    Args:
        images: float ``(N, 3, H, W)`` in [0, 1] or uint8 ``(N, H, W, 3)`` images, an ImageData, a
            folder (an ebmlens samples folder: its ``samples.npz``; or image files), an .npz, or a data
            spec (``cifar10:PATH@test``). Everything is quantized to uint8 first (as when saved to PNG).
        ref: the reference for FID/KID: the same kinds of input, or a statistics .npz from
            :func:`reference_stats` (KID then needs one saved with ``keep_features=True``).
            A data spec without ``@split`` means the test split; the convention is ``@train``.
        metrics: any of ``"is"``, ``"fid"``, ``"kid"``, ``"precision"``, ``"recall"`` (k-NN manifolds,
            ``prc_k`` = 3), ``"density"``, ``"coverage"`` (``dc_k`` = 5), ``"diversity"`` (within-class
            mean ``1 - cos`` of the features, by ``labels``; per class too), a sequence or ``"is,fid"``;
            see :mod:`ebmlens.metrics.manifold`. Keys: ``precision``... in the standard Inception
            (precision/recall by torch-fidelity's ``prc``), ``precision_<net>``... in another network.
        labels: ``(N,)`` target classes for ``"diversity"`` (default: the labels stored with the images).
        feature_model: ``None`` - torch-fidelity's Inception with the weights file
            ``inception_weights`` (see :func:`ebmlens.metrics.features.find_inception_weights`);
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
    metrics = parse_metrics(metrics)
    data = rgb_images(images, "images")
    if "is" in metrics and not 1 <= splits <= len(data):
        raise ValueError(f"Inception Score with splits={splits} needs at least {splits} images, got {len(data)}; "
                         "pass more images or fewer splits")
    stats, ref_data = _reference_input(ref, metrics)
    _dist.init_if_needed(device)  # under torchrun: join first, so "cuda" means cuda:LOCAL_RANK
    ext = extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                    trust_checkpoint=trust_checkpoint, feature_name=feature_name)
    if stats is not None:
        check_stats(stats, ext, "kid" in metrics or any(m in _MANIFOLD for m in metrics))
    feats, logits, mom = extract(ext, data, batch_size, progress, "features")
    ref_out = None  # every rank extracts its share of the reference (collective under torchrun)
    if ref_data is not None:
        ref_out = extract(ext, ref_data, batch_size, progress, "reference features",
                          keep="kid" in metrics or any(m in _MANIFOLD for m in metrics))

    def finish() -> EvalResult:  # rank 0 (or the single process): the metrics on the gathered features
        scores: list[_Score] = []
        if feats is None or mom is None:  # pragma: no cover - rank 0 holds every rank's features
            raise RuntimeError("evaluate: the gathered features are missing on rank 0")
        if "is" in metrics:
            scores.append(_inception_score(ext, logits, splits, seed))
        r = _Reference.of(stats, ref_data, ref_out) if (stats is not None or ref_data is not None) else None
        if "fid" in metrics:
            scores.append(_frechet(ext, mom, _need(r)))
        size = None
        if "kid" in metrics:
            size = int(kid_subset_size) if kid_subset_size is not None else min(1000, len(feats), len(_need(r).feats()))
            scores.append(_kernel(ext, feats, _need(r), kid_subsets, size, seed))
        if any(m in _MANIFOLD or m == "diversity" for m in metrics):
            scores.append(_manifold(
                ext, feats, r, metrics, prc_k, dc_k,
                require_labels(data, "within-class diversity").labels if labels is None else labels))
        values = {k: float(v) for sc in scores for k, v in sc.values.items()}
        w = ext.weights
        log.info("evaluated %d images in %s (%s): %s", len(data), ext.network, ext.layer, values)
        return EvalResult(
            values=values, network=ext.network, layer=ext.layer, standard=bool(ext.standard and w is not None
                                                                                and w.official),
            implementation={k: v for sc in scores for k, v in sc.implementation.items()}, num_images=len(data),
            source=data.source, fingerprint=data.fingerprint, image_size=(data.image_shape[0], data.image_shape[1]),
            ref=r.source if r else None, num_ref_images=r.count if r else None,
            ref_fingerprint=r.fingerprint if r else None, splits=splits if "is" in metrics else None,
            kid_subsets=kid_subsets if "kid" in metrics else None, kid_subset_size=size,
            weights=w.path if w else None, weights_sha256=w.sha256 if w else None,
            weights_official=w.official if w else None, seconds=round(time.perf_counter() - t0, 3),
            versions=versions(**({"torch-fidelity": tf} if (tf := getattr(ext, "version", None)) else {})))

    return _dist.run_on_rank0(finish)


def _reference_input(ref: object, metrics: tuple[str, ...]) -> tuple[ReferenceStats | None, ImageSet | None]:
    """What FID/KID compare against: saved statistics, or images to extract (neither for IS only)."""
    if not any(m in ("fid", "kid") + _MANIFOLD for m in metrics):
        return None, None
    if ref is None:
        raise ValueError(f"{'/'.join(m for m in metrics if m not in ('is', 'diversity'))} need a reference: "
                         "ref='cifar10:PATH@train' (CLI --ref) or a statistics file "
                         "(CLI --ref-stats FILE.npz); or ask for metrics='is' or 'diversity' only")
    if isinstance(ref, ReferenceStats):
        return ref, None
    if isinstance(ref, (str, os.PathLike)) and is_stats_file(ref):
        return load_reference_stats(ref), None
    return None, rgb_images(ref, "reference")


@dataclass(frozen=True)
class _Reference:
    """The reference side of FID/KID: moments, features (or None) and where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor | None
    source: str
    count: int
    fingerprint: str

    @classmethod
    def of(cls, stats: ReferenceStats | None, data: ImageSet | None, extracted) -> "_Reference":
        if stats is not None:
            feats = None if stats.features is None else torch.from_numpy(stats.features)
            return cls(stats.mu, stats.sigma, feats, stats.source, stats.count, stats.fingerprint)
        feats, _, mom = extracted
        if data is None or mom is None:  # pragma: no cover - reference images were extracted
            raise ValueError("a reference needs statistics or images")
        mu, sigma = mom.result()
        return cls(mu, sigma, feats, data.source, len(data), data.fingerprint)

    def feats(self) -> torch.Tensor:
        """The reference features (KID, precision/recall, density/coverage need them)."""
        if self.features is None:
            raise ValueError(f"the reference statistics of {self.source} hold no features; KID, precision/recall and "
                             "density/coverage need them: give reference images, or statistics saved with features")
        return self.features


def _need(r: _Reference | None) -> _Reference:
    if r is None:  # _reference_input refuses this earlier; a guard for the types
        raise ValueError("FID/KID and precision/recall need a reference: ref='cifar10:PATH@train' (CLI --ref) or a "
                         "statistics file (CLI --ref-stats FILE.npz)")
    return r


@dataclass(frozen=True)
class _Score:
    """One metric's numbers (under their result keys) and how each was computed."""

    values: dict[str, float]
    implementation: dict[str, str]


def _tf(ext) -> str:
    return f"torch-fidelity {getattr(ext, 'version', '')}"


def _inception_score(ext, logits: torch.Tensor | None, splits: int, seed: int) -> _Score:
    """IS of the class logits: torch-fidelity's on the standard Inception, ours in another network."""
    if logits is None:
        raise ValueError(f"IS needs class logits, but {ext.network} does not output (N, K) logits; "
                         "drop 'is' from metrics or use a classifier")
    if ext.standard:
        from torch_fidelity.metric_isc import isc_features_to_metric

        r = isc_features_to_metric(logits, splits, True, seed)
        return _Score({"is_mean": r["inception_score_mean"], "is_std": r["inception_score_std"]},
                      {"is": f"{_tf(ext)} isc_features_to_metric on {ext.logits_layer} (1008 classes)"})
    net = slug(ext.key_name)
    m, s = inception_score(logits, splits, seed=seed)
    return _Score({f"is_{net}_mean": m, f"is_{net}_std": s},
                  {f"is_{net}": f"ebmlens.metrics.inception_score on {ext.network} logits ({logits.shape[1]} classes)"})


def _frechet(ext, mom, ref: _Reference) -> _Score:
    """FID (torch-fidelity, standard Inception) or ``fd_<net>`` (ours) of the two Gaussians."""
    mu, sigma = mom.result()
    if ext.standard:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        fid = fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": ref.mu, "sigma": ref.sigma},
                                       False)["frechet_inception_distance"]
        return _Score({"fid": fid}, {"fid": f"{_tf(ext)} fid_statistics_to_metric on 2048-d pool features "
                                            "(float64 mean/cov by ebmlens)"})
    net = slug(ext.key_name)
    return _Score({f"fd_{net}": frechet_distance(mu, sigma, ref.mu, ref.sigma)},
                  {f"fd_{net}": f"ebmlens.metrics.frechet_distance (eigh) on {ext.network} {ext.layer}"})


def _kernel(ext, feats: torch.Tensor, ref: _Reference, subsets: int, size: int, seed: int) -> _Score:
    """KID (torch-fidelity, standard Inception) or ``kd_<net>`` (ours) over ``subsets`` subsets of ``size``."""
    if ext.standard:
        from torch_fidelity.metric_kid import kid_features_to_metric

        if not 2 <= size <= min(len(feats), len(ref.feats())):
            raise ValueError(f"KID subset size {size} must be in [2, {min(len(feats), len(ref.feats()))}]")
        r = kid_features_to_metric(feats, ref.feats(), kid_subsets=subsets, kid_subset_size=size,
                                   rng_seed=seed, verbose=False)
        return _Score({"kid_mean": r["kernel_inception_distance_mean"], "kid_std": r["kernel_inception_distance_std"]},
                      {"kid": f"{_tf(ext)} kid_features_to_metric (poly kernel, degree 3) on 2048-d pool features"})
    net = slug(ext.key_name)
    m, s = kernel_distance(feats, ref.feats(), subsets, size, seed=seed)
    return _Score({f"kd_{net}_mean": m, f"kd_{net}_std": s},
                  {f"kd_{net}": "ebmlens.metrics.kernel_distance (poly kernel, degree 3) "
                                f"on {ext.network} {ext.layer}"})


def _manifold(ext, feats: torch.Tensor, ref: _Reference | None, metrics: tuple[str, ...], prc_k: int, dc_k: int,
              labels: object) -> _Score:
    """Precision / recall (torch-fidelity's ``prc`` in the standard Inception), density / coverage and
    within-class diversity (ours, :mod:`ebmlens.metrics.manifold`)."""
    sfx = "" if ext.standard else f"_{slug(ext.key_name)}"
    if any(m in metrics for m in ("precision", "recall", "density", "coverage")):
        ref_feats = _need(ref).feats()
    where = f"on {ext.network} {ext.layer}"
    values: dict[str, float] = {}
    impl: dict[str, str] = {}
    if "precision" in metrics or "recall" in metrics:
        if ext.standard:
            from torch_fidelity.metric_prc import prc_features_to_metric

            r = prc_features_to_metric(feats.double(), ref_feats.double(), prc_neighborhood=prc_k,
                                       prc_batch_size=1024, save_cpu_ram=True, verbose=False)
            pr, how = (r["precision"], r["recall"]), f"{_tf(ext)} prc_features_to_metric (k={prc_k}) {where}"
        else:
            p = precision_recall(feats, ref_feats, prc_k)
            pr, how = (p.precision, p.recall), f"ebmlens.metrics.precision_recall (k={prc_k}) {where}"
        for name, v in zip(("precision", "recall"), pr):
            if name in metrics:
                values[name + sfx], impl[name + sfx] = float(v), how
    if "density" in metrics or "coverage" in metrics:
        d = density_coverage(feats, ref_feats, dc_k)
        for name in ("density", "coverage"):
            if name in metrics:
                values[name + sfx] = getattr(d, name)
                impl[name + sfx] = f"ebmlens.metrics.density_coverage (k={dc_k}) {where}"
    if "diversity" in metrics:
        dv = within_class_diversity(feats, labels)
        values["diversity" + sfx] = dv.overall
        values.update({f"diversity{sfx}_class{c}": v for c, v in dv.per_class.items()})
        impl["diversity" + sfx] = f"ebmlens.metrics.within_class_diversity (mean 1 - cos over pairs of a class) {where}"
    return _Score(values, impl)
