"""Initializers: where a sample starts. ``init(model, y, *, generator) -> x``.

Every initializer returns float ``(N, C, H, W)`` images in [0, 1] on the device of ``y`` and draws
all its randomness from ``generator`` (a :class:`torch.Generator` or :class:`~ebmlens.rng.SampleStreams`),
one row per sample, so with sample streams a sample's start never depends on its batch.

* :class:`GaussianInit` - class-conditional Gaussian ``N(mu_y, Sigma_y + reg I)`` (Santurkar et al. 2019;
  JEM++, Yang & Ji 2021), full covariance via its Cholesky factor, or low-rank + diagonal.
* :class:`PCAInit` - ``mu_y + sum_i sigma * s_i * z_i * u_i`` over the class's leading principal
  components (Mirza et al. 2024).
* :class:`NoiseInit` - uniform or Gaussian noise.
* :class:`DataInit` - images of any set (e.g. natural images of another distribution, as DAT), + noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .. import rng
from ..stats import ClassStats, coerce_stats

__all__ = ["GaussianInit", "PCAInit", "NoiseInit", "DataInit"]


def _resize(x: torch.Tensor, model, mode: str) -> torch.Tensor:
    hw = tuple(model.input_shape[1:])
    if tuple(x.shape[2:]) == hw:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=hw, mode="nearest")
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def _check_model_stats(model, stats: ClassStats, who: str) -> None:
    if model.input_shape[0] != stats.shape[0]:
        raise ValueError(f"{who}: statistics describe {stats.shape[0]}-channel images but the model takes "
                         f"{model.input_shape[0]} channels (input_shape {model.input_shape})")
    if stats.num_classes != model.num_classes:
        raise ValueError(f"{who}: statistics have {stats.num_classes} classes but the model has "
                         f"{model.num_classes}; fit them on the model's dataset")


def _per_class_matmul(z: torch.Tensor, mats: torch.Tensor, y: torch.Tensor, gather: bool | None = None) -> torch.Tensor:
    """Row ``n``: ``mats[y[n]] @ z[n]``; ``z (N, J)``, ``mats (K, D, J)`` -> ``(N, D)``.

    One matrix-vector product per row, of the same shapes for every row, on a fresh (aligned) copy of
    ``z[n]``: a row's arithmetic never depends on how many rows share its batch, their classes or its
    position, so a sample's start is bit-identical for any batch size. (A product per class, or one
    batched product, was not: BLAS blocks the rows it is given, and float32 results moved by ~1e-7
    with the batch's composition; Linf PGD's sign steps turned that into whole steps.) On the CPU the
    rows read their class's matrix in place; elsewhere each row gathers it by indexing with a
    one-element index tensor (no host sync). ``gather`` forces a path (tests)."""
    n, d = z.shape[0], mats.shape[1]
    out = z.new_empty(n, d)
    if not (y.device.type != "cpu" if gather is None else gather):
        for i, k in enumerate(y.tolist()):
            out[i] = torch.mv(mats[k], z[i].clone())           # bf16 under autocast: cast on assignment
    else:
        for i in range(n):
            out[i] = torch.mv(mats.index_select(0, y[i:i + 1])[0], z[i].clone())
    return out


@dataclass(frozen=True)
class GaussianInit:
    """Class-conditional Gaussian seeds: ``x = clamp(mu_y + A_y z, 0, 1)``, ``z ~ N(0, I)``.

    Santurkar et al. (NeurIPS 2019) and JEM++ (Yang & Ji, ICCV 2021) fit one full-covariance
    Gaussian per class and sample ``mu_y + L_y z`` with ``L_y = cholesky(Sigma_y + 1e-4 I)``.
    With mixture statistics (:func:`ebmlens.stats.class_mixture`) each sample first draws one of its
    class's components (``u ~ U[0, 1)`` from its stream, by the components' image counts), then that
    component's Gaussian.

    Args:
        stats: :class:`~ebmlens.sampling.ClassStats` (held by reference; recorded by fingerprint).
        covariance: ``"full"`` (Cholesky factor; needs full stats), ``"lowrank"``
            (``mu + U sqrt(lambda) z1 + sqrt(d) z2``: top principal components plus the residual pixel
            variance, see ``ClassStats.compact``), or ``"auto"`` (full when the stats hold it).
        rank: components used by ``"lowrank"`` (default: all held).
        scale: multiplies the deviation from the mean (1 = the fitted Gaussian).
        clamp: clamp to [0, 1] (both sources do).
        upsample: interpolation when the stats were fitted at a lower resolution (``downsample``
            in :func:`~ebmlens.class_stats`; Santurkar et al.'s ImageNet seeds are 4x upsampled).

    Shapes: ``y (N,)`` -> ``x (N, C, H, W)`` on ``y.device``.
    """

    stats: ClassStats = field(compare=False, repr=False)
    covariance: Literal["auto", "full", "lowrank"] = "auto"
    rank: int | None = None
    scale: float = 1.0
    clamp: bool = True
    upsample: Literal["nearest", "bilinear"] = "nearest"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", coerce_stats(self.stats, "GaussianInit"))
        if self.covariance not in ("auto", "full", "lowrank"):
            raise ValueError(f"GaussianInit covariance must be 'auto', 'full' or 'lowrank', got {self.covariance!r}")
        if self.stats.is_mixture and self.covariance == "full":
            raise ValueError("GaussianInit(covariance='full') does not take mixture statistics (they are compact): "
                             "use covariance='auto' or 'lowrank'")
        if self.covariance == "full" and self.stats.chol is None:
            raise ValueError("GaussianInit(covariance='full') needs full statistics (with a Cholesky factor); these "
                             "are compact: use covariance='lowrank', or ebmlens.class_stats('cifar10:PATH')")
        if self.rank is not None and not (isinstance(self.rank, int) and 1 <= self.rank <= self.stats.rank):
            raise ValueError(f"GaussianInit rank must be in [1, {self.stats.rank}], got {self.rank!r}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"GaussianInit scale must be >= 0, got {self.scale!r}")

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its images lie in [0, 1] when clamped (what the pipeline's records plan on)."""
        return bool(self.clamp)

    def __call__(self, model, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        s, dev = self.stats, y.device
        _check_model_stats(model, s, "GaussianInit")
        full = self.covariance == "full" or (self.covariance == "auto" and s.chol is not None)
        n, d = y.shape[0], s.dim
        r = self.rank or s.rank
        u = rng.rand(generator, n, (1,), device=dev).view(-1) if s.is_mixture else None  # component choice
        z = rng.randn(generator, n, (d if full else r + d,), device=dev)      # (N, D) or (N, r + D)
        k = s.rows(y, u)                                                       # (N,) rows of the arrays
        x = s.on(dev, "mean")[k].clone()                                       # (N, D)
        if full:
            x += self.scale * _per_class_matmul(z, s.on(dev, "chol"), k)
        else:
            vecs, vals = s.on(dev, "eigvecs")[:, :, :r], s.on(dev, "eigvals")[:, :r]
            sd = s.lowrank_diag(r, device=dev).sqrt()
            low = _per_class_matmul(z[:, :r] * vals.clamp_min(0).sqrt()[k], vecs, k)
            x += self.scale * (low + z[:, r:] * sd[k])
        x = _resize(x.view(n, *s.shape), model, self.upsample)
        return x.clamp(0, 1) if self.clamp else x


@dataclass(frozen=True)
class PCAInit:
    """Class-wise PCA seeds (Mirza et al., ECCV 2024, image_generation/ "pca" init).

    ``x0 = clip(mu_y + sum_{i<m} sigma * s_i * z_i * u_i, 0, 1)``, ``z_i ~ N(0, 1)``, where ``u_i`` are
    the class's principal directions, ``m`` the fewest components reaching ``variance`` of its total
    variance, and ``s_i = sqrt((n - 1) * lambda_i)`` the singular values of the centred class data
    matrix (what scikit-learn's ``PCA.singular_values_`` holds; ``n`` = images of the class). With
    CIFAR-10's 5,000 images per class and ``sigma = 0.005`` each component gets ~0.35 of its
    standard deviation: a shrunken, low-contrast prior.

    Args:
        stats: :class:`~ebmlens.sampling.ClassStats` (full or compact; compact ones may hold fewer
            components than ``variance`` needs: all held are then used).
        sigma: ``sigma_pca`` (0.005, the code's default).
        variance: retained variance (0.95). Their evaluation script divides it by 100, which keeps
            no component; that is a bug we do not reproduce.
        n_images: the ``n`` in ``s_i``; ``None`` uses the class counts of ``stats`` (statistics from
            a subset therefore give a smaller prior; pass 5000 to match CIFAR-10's full classes).
    """

    stats: ClassStats = field(compare=False, repr=False)
    sigma: float = 0.005
    variance: float = 0.95
    n_images: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", coerce_stats(self.stats, "PCAInit"))
        if self.stats.is_mixture:
            raise ValueError("PCAInit takes one Gaussian per class, not mixture statistics; use GaussianInit with them")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"PCAInit sigma must be >= 0, got {self.sigma!r}")
        if not 0 < self.variance <= 1:
            raise ValueError(f"PCAInit variance must be in (0, 1], got {self.variance!r}")
        if self.n_images is not None and self.n_images < 2:
            raise ValueError(f"PCAInit n_images must be >= 2, got {self.n_images!r}")

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its images lie in [0, 1] (what the pipeline's records plan on)."""
        return True

    def __call__(self, model, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        s, dev = self.stats, y.device
        _check_model_stats(model, s, "PCAInit")
        n = y.shape[0]
        z = rng.randn(generator, n, (s.rank,), device=dev)                     # (N, r)
        k = s.rows(y)                                                          # (N,) rows of the arrays
        x = s.on(dev, "mean")[k].clone()                                       # (N, D)
        x += _per_class_matmul(self.sigma * self._singular_values(s, dev)[k] * z, s.on(dev, "eigvecs"), k)
        return _resize(x.view(n, *s.shape), model, "nearest").clamp(0, 1)

    def _singular_values(self, s: ClassStats, dev) -> torch.Tensor:
        """``(rows, r)`` ``s_i`` of each class held, zero past its ``m`` retained components (host-side,
        per call: ``K x r`` numbers)."""
        sv = torch.zeros(s.counts.shape[0], s.rank)
        vals = s.eigvals.float()
        for k in range(s.counts.shape[0]):
            m = s.retained_components(k, self.variance)
            nk = self.n_images if self.n_images is not None else int(s.counts[k])
            sv[k, :m] = (vals[k, :m].clamp_min(0) * (nk - 1)).sqrt()
        return sv.to(dev)


@dataclass(frozen=True)
class NoiseInit:
    """Noise seeds: ``"uniform"`` U[0, 1) (JEM's replay-buffer init, mapped to [0, 1]) or
    ``"gaussian"`` ``clamp(mean + std * z, 0, 1)``."""

    kind: Literal["uniform", "gaussian"] = "uniform"
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "gaussian"):
            raise ValueError(f"NoiseInit kind must be 'uniform' or 'gaussian', got {self.kind!r}")
        if not self.std >= 0:
            raise ValueError(f"NoiseInit std must be >= 0, got {self.std!r}")

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its images lie in [0, 1] (what the pipeline's records plan on)."""
        return True

    def __call__(self, model, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        shape = tuple(model.input_shape)
        if self.kind == "uniform":
            return rng.rand(generator, y.shape[0], shape, device=y.device)
        return (self.mean + self.std * rng.randn(generator, y.shape[0], shape, device=y.device)).clamp(0, 1)


@dataclass(frozen=True)
class DataInit:
    """Seeds taken from an image set, optionally with Gaussian noise: ``clamp(x_j + noise * z, 0, 1)``.

    Each sample picks the seed index ``j`` uniformly from ``generator`` (per sample stream with
    :class:`~ebmlens.rng.SampleStreams`, so the choice depends only on the sample's index and seed).
    DAT (Yin et al.) starts from natural images of *another* distribution; any set works.

    Args:
        images: an image set (:class:`~ebmlens.data.ImageData` or a streamed folder) or a float tensor
            ``(M, C, H, W)`` in [0, 1] (held by reference; recorded by fingerprint). Resized (bilinear,
            antialiased) when its size differs from the model's.
        noise: std of the added Gaussian noise (0 = none).
        same_class: pick seeds of the target class only (needs labelled images).
    """

    images: Any = field(compare=False, repr=False)
    noise: float = 0.0
    same_class: bool = False

    def __post_init__(self) -> None:
        from ..data import ImageSet, load_data, require_labels

        imgs = self.images
        if isinstance(imgs, str):
            imgs = load_data(imgs)
            object.__setattr__(self, "images", imgs)
        if isinstance(imgs, ImageSet):  # in memory or streamed (random access: decoded per batch)
            if self.same_class and not imgs.labeled:
                require_labels(imgs, "DataInit(same_class=True)")  # raises: an unlabeled set has no classes
            if len(imgs) == 0:
                raise ValueError("DataInit got an empty image set")
        elif isinstance(imgs, torch.Tensor):
            if imgs.dim() != 4 or not imgs.is_floating_point() or imgs.shape[0] == 0:
                raise ValueError(f"DataInit images must be a non-empty float (M, C, H, W) tensor in [0, 1], got "
                                 f"{imgs.dtype} {tuple(imgs.shape)}")
            if self.same_class:
                raise ValueError("DataInit(same_class=True) needs labelled images: pass an ImageData")
        else:
            raise TypeError(f"DataInit images must be an ImageData, a data spec or a (M, C, H, W) tensor, got "
                            f"{type(imgs).__name__}")
        if not self.noise >= 0:
            raise ValueError(f"DataInit noise must be >= 0, got {self.noise!r}")

    def unit_range_after(self, unit_in: bool) -> bool:
        """Its images lie in [0, 1] (what the pipeline's records plan on)."""
        return True

    def __call__(self, model, y: torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        imgs, n, dev = self.images, y.shape[0], y.device
        if self.same_class:
            from ..data import require_labels  # class folders map to the model's classes (once, cached)

            labels = torch.as_tensor(require_labels(imgs, "DataInit(same_class=True)", model).labels)
            u = rng.rand(generator, n, (), device="cpu")
            idx = torch.empty(n, dtype=torch.long)
            for k in torch.unique(y).tolist():
                pool = torch.nonzero(labels == k).flatten()
                if len(pool) == 0:
                    raise ValueError(f"DataInit(same_class=True): the image set has no image of class {k}")
                rows = torch.nonzero(y.cpu() == k).flatten()
                idx[rows] = pool[(u[rows] * len(pool)).long().clamp_max(len(pool) - 1)]
        else:
            idx = rng.randint(generator, n, len(imgs), device="cpu")
        if isinstance(imgs, torch.Tensor):
            x = imgs[idx.to(imgs.device)].to(dev, torch.float32)
        else:
            x = imgs.tensor(idx.numpy(), device=dev)
        if x.shape[1] != model.input_shape[0]:
            raise ValueError(f"DataInit images have {x.shape[1]} channels; the model takes {model.input_shape[0]}")
        x = _resize(x, model, "bilinear")
        if self.noise > 0:
            x = x + self.noise * rng.randn(generator, n, tuple(x.shape[1:]), device=dev)
        return x.clamp(0, 1)
