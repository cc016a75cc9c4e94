"""Reference statistics: the feature mean and covariance of a reference set, computed once
(streamed batch by batch) and saved as an ``.npz`` of arrays (no pickle).

File format (unchanged): ``mu (d,)``, ``sigma (d, d)`` float64, ``count``, ``fingerprint``,
``source``, ``network``, ``layer``, ``network_fingerprint`` and, when kept, ``features (N, d)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _dist
from .._io import atomic_save_npz
from ..data import ImageSet
from .features import extract, extractor, rgb_images

__all__ = ["ReferenceStats", "reference_stats", "load_reference_stats", "is_stats_file", "check_stats"]


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


def is_stats_file(x: object) -> bool:
    """Whether ``x`` names an ``.npz`` holding ``mu`` and ``sigma`` (a statistics file, not images)."""
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
        Other arguments as in :func:`ebmlens.metrics.evaluate`, which must later use the same network,
        layer and name.
    """
    data = rgb_images(source, "reference")
    _dist.init_if_needed(device)  # under torchrun: join first, so "cuda" means cuda:LOCAL_RANK
    ext = extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                    trust_checkpoint=trust_checkpoint, feature_name=feature_name)
    f, _, mom = extract(ext, data, batch_size, progress, "reference features", keep=keep_features)
    return _dist.run_on_rank0(_finish_stats, f, mom, data, ext, out)  # under torchrun: rank 0 computes and writes


def _finish_stats(f, mom, data: ImageSet, ext, out) -> ReferenceStats:
    mu, sigma = mom.result()
    stats = ReferenceStats(mu, sigma, mom.n, data.fingerprint, data.source, ext.network, ext.layer,
                           ext.fingerprint(), None if f is None else f.numpy().astype(np.float32))
    if out is not None:
        stats.save(out)
    return stats


def check_stats(stats: ReferenceStats, ext, need_features: bool) -> None:
    """Refuse statistics made in another network, layer or weights, or without features KID needs."""
    if (stats.network, stats.layer) != (ext.network, ext.layer):
        raise ValueError(f"the reference statistics ({stats.source}) were computed in {stats.network} at "
                         f"{stats.layer}, but these features come from {ext.network} at {ext.layer}; recompute "
                         "them with the same feature network")
    if stats.network_fingerprint and stats.network_fingerprint != ext.fingerprint():
        raise ValueError(f"the reference statistics were computed with other weights of {stats.network} "
                         f"({stats.network_fingerprint} vs {ext.fingerprint()}); recompute them")
    if need_features and stats.features is None:
        raise ValueError("KID needs the reference features (so do precision, recall, density, coverage), and "
                         "this statistics file holds only mu/sigma; rebuild "
                         "it with keep_features=True (CLI --keep-features) or drop those from metrics")
