"""Per-class image statistics for the informative inits (Gaussian and PCA).

For each class ``k`` with images ``x`` flattened to ``D = C*H*W`` pixels in [0, 1]:

* ``mean[k]``           ``mu_k = E[x]``                                      ``(K, D)``
* covariance            ``Sigma_k = Cov[x]`` (unbiased, ``n_k - 1``), held as its Cholesky factor
  ``chol[k] = cholesky(Sigma_k + reg * I)``                                   ``(K, D, D)`` (full only)
* PCA                   the leading eigenpairs ``Sigma_k = sum_i lambda_i u_i u_i^T``:
  ``eigvecs[k]`` ``(D, r)`` and ``eigvals[k]`` ``(r,)``, enough components to cover
  ``pca_variance`` of ``trace(Sigma_k)`` (``total_var[k]``);
* ``diag[k]``           the pixel variances ``diag(Sigma_k)``                 ``(K, D)``

Statistics are accumulated in float64 one class at a time over batches (sums and outer products),
so a 50,000 x 3,072 float64 copy of the data never exists. The leading eigenpairs come from a
randomized subspace iteration with a fixed local seed (deterministic; the library never touches the
global RNG).

**Compact statistics** (:meth:`ClassStats.compact`) keep only ``mean``, ``diag``, the top ``rank``
eigenpairs (eigenvectors stored as float16) and ``total_var``: a *low-rank + diagonal* covariance
``Sigma_k ~ U diag(lambda) U^T + diag(d)`` with ``d = diag(Sigma_k) - diag(U diag(lambda) U^T)``, so the
pixel variances are exact and the top-``rank`` principal subspace is exact, but correlations
outside it are dropped. For 10 classes of 3x32x32 at rank 48 that is ~3.2 MB (the full factor is
~380 MB). This is the documented deviation that lets the bundled model ship its statistics.

>>> import torch
>>> x = torch.rand(40, 3, 4, 4); y = torch.arange(40) % 2
>>> s = class_stats(x, y)
>>> s.mean.shape, s.num_classes, s.kind
(torch.Size([2, 48]), 2, 'full')
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_save_safetensors, fingerprint

__all__ = ["ClassStats", "class_stats"]

log = logging.getLogger(__name__)

_FORMAT = "ebmlens.class_stats/1"
_ALGO_VERSION = 1


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Per-class mean, covariance (Cholesky factor) and PCA basis of an image set.

    Build with :func:`class_stats`; load with :meth:`load`. Tensors live on the CPU in float32; the
    inits move what they need to the sampling device once (cached per device).

    Attributes:
        mean: ``(K, D)`` class means, pixels in [0, 1].
        diag: ``(K, D)`` pixel variances.
        eigvecs: ``(K, D, r)`` leading principal directions (unit columns), per class.
        eigvals: ``(K, r)`` their variances ``lambda_i`` (descending; 0 where a class has fewer).
        total_var: ``(K,)`` ``trace(Sigma_k)``, the denominator of "retained variance".
        counts: ``(K,)`` images per class.
        shape: ``(C, H, W)`` of the images the statistics describe (after ``downsample``).
        chol: ``(K, D, D)`` ``cholesky(Sigma_k + reg I)``, or ``None`` for compact statistics.
        reg: the ridge ``reg`` added to the covariance (and to the compact diagonal).
        source, split: provenance.
        class_names: names of the ``K`` classes.
        downsample: the factor the images were average-pooled by before fitting.
    """

    mean: torch.Tensor
    diag: torch.Tensor
    eigvecs: torch.Tensor
    eigvals: torch.Tensor
    total_var: torch.Tensor
    counts: torch.Tensor
    shape: tuple[int, int, int]
    chol: torch.Tensor | None = field(default=None, repr=False)
    reg: float = 1e-4
    source: str = "tensors"
    split: str | None = None
    class_names: tuple[str, ...] = ()
    downsample: int = 1

    def __post_init__(self) -> None:
        k, d = self.mean.shape
        if int(np.prod(self.shape)) != d:
            raise ValueError(f"ClassStats shape {self.shape} does not match {d} pixels per image")
        for name, t, want in (("diag", self.diag, (k, d)), ("total_var", self.total_var, (k,)),
                              ("counts", self.counts, (k,))):
            if tuple(t.shape) != want:
                raise ValueError(f"ClassStats.{name} must have shape {want}, got {tuple(t.shape)}")
        if self.eigvecs.shape[:2] != (k, d) or tuple(self.eigvals.shape) != (k, self.eigvecs.shape[2]):
            raise ValueError(f"ClassStats eigvecs {tuple(self.eigvecs.shape)} / eigvals {tuple(self.eigvals.shape)} "
                             f"do not match K={k}, D={d}")
        if self.chol is not None and tuple(self.chol.shape) != (k, d, d):
            raise ValueError(f"ClassStats.chol must be (K, D, D) = {(k, d, d)}, got {tuple(self.chol.shape)}")
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(k)))
        object.__setattr__(self, "_device_cache", {})

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    @property
    def rank(self) -> int:
        """Number of principal components held."""
        return int(self.eigvecs.shape[2])

    @property
    def kind(self) -> Literal["full", "compact"]:
        return "full" if self.chol is not None else "compact"

    @property
    def prior(self) -> torch.Tensor:
        """Class frequencies ``counts / counts.sum()`` ``(K,)``: the class prior for unconditional sampling."""
        c = self.counts.double()
        return (c / c.sum()).float()

    def lowrank_diag(self, rank: int | None = None) -> torch.Tensor:
        """``(K, D)`` the diagonal ``d`` of the low-rank + diagonal covariance with the top ``rank``
        components (default all held): ``diag(Sigma) - diag(U diag(lambda) U^T)``, ``>= 0``, ``+ reg``."""
        r = self.rank if rank is None else rank
        explained = (self.eigvecs[:, :, :r].float() ** 2 * self.eigvals[:, :r].float().unsqueeze(1)).sum(2)
        return (self.diag - explained).clamp_min(0.0) + self.reg

    def on(self, device: torch.device | str, name: str) -> torch.Tensor:
        """``getattr(self, name)`` as float32 on ``device``, cached (moved once per device)."""
        key = (str(torch.device(device)), name)
        cache: dict = self.__dict__["_device_cache"]
        if key not in cache:
            if name.startswith("lowrank_diag"):  # "lowrank_diag:<rank>"
                t = self.lowrank_diag(int(name.partition(":")[2] or self.rank))
            else:
                t = getattr(self, name)
            if t is None:
                raise ValueError(f"these {self.kind} class statistics have no {name!r}; "
                                 "compute full statistics with ebmlens.class_stats(...)")
            cache[key] = t.to(device=device, dtype=torch.float32)
        return cache[key]

    # ------------------------------------------------------------------ provenance
    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What ``run.json`` records instead of the tensors: source, split, kind, shape, rank and a
        sha256 (first 16 hex digits) of the arrays."""
        arrays = (self.mean, self.diag, self.eigvals, self.total_var, self.counts, self.eigvecs, self.chol)
        sha = fingerprint(*(t for t in arrays if t is not None))
        return {"source": self.source, "split": self.split, "kind": self.kind, "shape": list(self.shape),
                "num_classes": self.num_classes, "rank": self.rank, "reg": self.reg,
                "downsample": self.downsample, "count": int(self.counts.sum()), "sha256": sha}

    def retained_components(self, k: int, variance: float) -> int:
        """Smallest number of leading components of class ``k`` whose variance reaches ``variance``
        of ``total_var[k]`` (capped at :attr:`rank`)."""
        frac = torch.cumsum(self.eigvals[k].double(), 0) / max(float(self.total_var[k]), 1e-30)
        m = int(torch.searchsorted(frac, torch.tensor([variance], dtype=frac.dtype)).item()) + 1
        return min(m, self.rank)

    # ------------------------------------------------------------------ compact
    def compact(self, rank: int = 48) -> "ClassStats":
        """Low-rank + diagonal version: top ``rank`` eigenpairs, pixel variances, no Cholesky factor.

        ~``K * D * rank * 2`` bytes on disk (float16 eigenvectors): 10 classes x 3,072 pixels at rank 48
        is ~3.2 MB with means and diagonals. GaussianInit samples ``mu + U (sqrt(lambda) z1) + sqrt(d) z2``
        from it; PCAInit uses its ``rank`` components (fewer than 95% of the variance may be held:
        see :meth:`retained_components`).
        """
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"compact rank must be a positive int, got {rank!r}")
        if rank > self.rank:
            raise ValueError(f"compact(rank={rank}) asks for more components than the {self.rank} held; "
                             f"use rank <= {self.rank} or recompute with a higher pca_variance")
        vecs = self.eigvecs[:, :, :rank].to(torch.float16).float()  # what a saved compact file holds
        return replace(self, eigvecs=vecs, eigvals=self.eigvals[:, :rank].clone(), chol=None)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file (arrays) with the metadata as JSON in its header.

        Compact statistics store eigenvectors as float16. Written atomically.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
        arrays = {"mean": self.mean, "diag": self.diag, "eigvals": self.eigvals, "total_var": self.total_var,
                  "counts": self.counts.to(torch.int64),
                  "eigvecs": self.eigvecs.to(torch.float16) if self.chol is None else self.eigvecs}
        if self.chol is not None:
            arrays["chol"] = self.chol
        meta = {"format": _FORMAT, "shape": list(self.shape), "reg": self.reg, "source": self.source,
                "split": self.split, "class_names": list(self.class_names), "downsample": self.downsample}
        return atomic_save_safetensors(arrays, path, metadata={"ebmlens": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> "ClassStats":
        """Read a file written by :meth:`save` (safetensors: no code is executed)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"class statistics file {str(path)!r} not found; create one with "
                                    "ebmlens.class_stats('cifar10:PATH').save(path)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("ebmlens", "{}"))
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as e:  # noqa: BLE001 - corrupt/foreign file
            raise ValueError(f"{path} is not a readable safetensors file of class statistics ({e})") from e
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an ebmlens class statistics file (format {meta.get('format')!r})")
        return cls(mean=arrays["mean"].float(), diag=arrays["diag"].float(), eigvecs=arrays["eigvecs"].float(),
                   eigvals=arrays["eigvals"].float(), total_var=arrays["total_var"].float(),
                   counts=arrays["counts"].long(), shape=tuple(meta["shape"]), chol=arrays.get("chol"),
                   reg=float(meta["reg"]), source=meta.get("source", str(path)), split=meta.get("split"),
                   class_names=tuple(meta.get("class_names") or ()), downsample=int(meta.get("downsample", 1)))


# --------------------------------------------------------------------------- computing
def _top_eigen(cov: torch.Tensor, variance: float, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of a symmetric PSD ``(D, D)`` covariance of ``n`` samples, covering
    ``variance`` of its trace.

    Randomized subspace iteration (Halko et al. 2011) in float32 with a local generator; the subspace
    doubles until the retained variance is reached (exact ``eigh`` once it would cover half of ``D``).
    A covariance of ``n <= q`` samples has rank ``< q``, so one pass is exact (no power iterations).
    """
    d = cov.shape[0]
    total = float(torch.trace(cov))
    if total <= 0:
        return torch.zeros(d, 1), torch.zeros(1)
    g = torch.Generator().manual_seed(seed)
    c32 = cov.float()
    q = min(max(n, 32), 256)
    while True:
        if 2 * q >= d:
            vals, vecs = torch.linalg.eigh(cov)
            vals, vecs = vals.flip(0).clamp_min(0).float(), vecs.flip(1).float()
            break
        y = c32 @ torch.randn(d, q + 8, generator=g)
        for _ in range(0 if n <= q else 2):  # power iterations sharpen the spectrum
            y, _ = torch.linalg.qr(y)
            y = c32 @ y
        basis, _ = torch.linalg.qr(y)
        vals, w = torch.linalg.eigh(basis.T @ c32 @ basis)
        vals, vecs = vals.flip(0).clamp_min(0)[:q], (basis @ w.flip(1))[:, :q]
        if float(vals.sum()) / total >= variance or n <= q:
            break
        q *= 2
    frac = torch.cumsum(vals.double(), 0) / total
    m = min(int(torch.searchsorted(frac, torch.tensor([variance], dtype=frac.dtype)).item()) + 1, len(vals))
    return vecs[:, :m].contiguous(), vals[:m]


def _flatten_batch(x: torch.Tensor, downsample: int) -> torch.Tensor:
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    return x.reshape(x.shape[0], -1).double()


def _fit(batches_per_class, shape: tuple[int, int, int], num_classes: int, *, reg: float, pca_variance: float,
         full: bool = True) -> dict[str, torch.Tensor]:
    d = int(np.prod(shape))
    mean = torch.zeros(num_classes, d)
    diag = torch.zeros(num_classes, d)
    total = torch.zeros(num_classes)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    chol = torch.zeros(num_classes, d, d) if full else None
    vecs_l, vals_l = [], []
    for k in range(num_classes):
        s1 = torch.zeros(d, dtype=torch.float64)
        s2 = torch.zeros(d, d, dtype=torch.float64)
        n = 0
        for xb in batches_per_class(k):
            s1 += xb.sum(0)
            s2.addmm_(xb.T, xb)
            n += xb.shape[0]
        if n < 2:
            raise ValueError(f"class {k} has {n} image(s); class statistics need at least 2 per class")
        mu = s1 / n
        cov = (s2 - n * torch.outer(mu, mu)) / (n - 1)
        cov = (cov + cov.T) / 2
        mean[k], diag[k], total[k], counts[k] = mu.float(), cov.diagonal().clamp_min(0).float(), float(cov.trace()), n
        vecs, vals = _top_eigen(cov, pca_variance, n, seed=k)
        vecs_l.append(vecs.float())
        vals_l.append(vals.float())
        if chol is not None:
            cov.diagonal().add_(reg)
            chol[k] = torch.linalg.cholesky(cov).float()
        del s2, cov
    r = max(v.shape[1] for v in vecs_l)
    eigvecs = torch.zeros(num_classes, d, r)
    eigvals = torch.zeros(num_classes, r)
    for k, (v, lam) in enumerate(zip(vecs_l, vals_l)):
        eigvecs[k, :, : v.shape[1]] = v
        eigvals[k, : lam.shape[0]] = lam
    return {"mean": mean, "diag": diag, "eigvecs": eigvecs, "eigvals": eigvals, "total_var": total,
            "counts": counts, "chol": chol}


def class_stats(
    source: Any,
    labels: Any = None,
    *,
    split: str | None = None,
    n: int | None = None,
    cache: bool = True,
    downsample: int = 1,
    reg: float = 1e-4,
    pca_variance: float = 0.99,
    num_classes: int | None = None,
    full: bool = True,
    batch_size: int = 1000,
) -> ClassStats:
    """Fit per-class Gaussian/PCA statistics of an image set.

    Args:
        source: a data spec (``"cifar10:PATH"``; the **train** split unless the spec or ``split``
            says otherwise), an :class:`~ebmlens.data.ImageData`, a ``.safetensors`` statistics file,
            or a float tensor ``(N, C, H, W)`` in [0, 1] (then ``labels`` is required).
        labels: ``(N,)`` class indices when ``source`` is a tensor.
        split: ``"train"``/``"test"`` for data specs.
        n: use an evenly strided subset of ``n`` images (``ImageData.strided``) instead of all.
        cache: keep the result under ``ebmlens.data.cache_dir()/stats`` keyed by the dataset's
            fingerprint and every setting here (data specs and ImageData only).
        downsample: average-pool images by this factor before fitting (Santurkar et al. fit
            ImageNet at 4x downsampling; GaussianInit upsamples back).
        reg: ridge added to each covariance before its Cholesky factorization (1e-4, as
            Santurkar et al. and JEM++).
        pca_variance: keep leading components up to this fraction of each class's variance
            (PCAInit may then use any ``variance <=`` this).
        num_classes: ``K`` for tensors (default ``max(labels) + 1``).
        full: also factor each full covariance (Cholesky; ~K*D*D*4 bytes). ``False`` skips it and
            returns low-rank + diagonal statistics holding every component up to ``pca_variance``.
        batch_size: images per accumulation step.

    Returns:
        :class:`ClassStats` (with the Cholesky factor when ``full``); ``.compact(rank)`` for the
        shippable form.
    """
    from .data import ImageData, cache_dir, load_data

    if not (isinstance(downsample, int) and downsample >= 1):
        raise ValueError(f"downsample must be an int >= 1, got {downsample!r}")
    if not (math.isfinite(reg) and reg >= 0):
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    if not 0 < pca_variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {pca_variance!r}")
    if isinstance(source, (str, Path)) and str(source).endswith(".safetensors"):
        return ClassStats.load(source)
    if isinstance(source, torch.Tensor):
        return _from_tensors(source, labels, num_classes=num_classes, downsample=downsample, reg=reg,
                             pca_variance=pca_variance, full=full, batch_size=batch_size)
    if labels is not None:
        raise TypeError("labels= is only for tensor images; a data spec or ImageData carries its own labels")
    if isinstance(source, (str, Path)):
        data = load_data(str(source), split, default_split="train")
    elif isinstance(source, ImageData):
        data = source
    else:
        raise TypeError(f"class_stats source must be a data spec like 'cifar10:PATH', an ImageData, a "
                        f".safetensors file or an image tensor, got {type(source).__name__}")
    idx = np.arange(len(data)) if n is None else data.strided(int(n))
    key_src = f"{data.fingerprint}|{n}|{downsample}|{reg}|{pca_variance}|{full}|v{_ALGO_VERSION}"
    key = fingerprint(key_src)
    fname = cache_dir() / "stats" / f"class-stats-{key}.safetensors"
    if cache and fname.exists():
        try:
            log.info("class statistics from cache %s", fname)
            return ClassStats.load(fname)
        except ValueError:
            log.warning("cached statistics %s unreadable; recomputing", fname)
    labels_np = data.labels[idx]
    k_classes = data.num_classes
    h, w, c = (int(s) for s in data.images.shape[1:])
    shape = _pooled_shape((c, h, w), downsample)

    def per_class(k: int):
        members = idx[labels_np == k]
        for s in range(0, len(members), batch_size):
            yield _flatten_batch(data.tensor(members[s:s + batch_size]), downsample)

    log.info("fitting class statistics on %d images of %s", len(idx), data.source)
    fit = _fit(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full)
    src, _, sp = data.source.rpartition("@")
    stats = ClassStats(**fit, shape=shape, reg=reg, source=(src if sp in ("train", "test") else data.source)
                       + ("" if n is None else f"[strided {n}]"), split=sp if sp in ("train", "test") else None,
                       class_names=tuple(data.class_names), downsample=downsample)
    if cache:
        stats.save(fname)
    return stats


def _pooled_shape(shape: tuple[int, int, int], downsample: int) -> tuple[int, int, int]:
    c, h, w = shape
    if h % downsample or w % downsample:
        raise ValueError(f"downsample={downsample} does not divide the image size {h}x{w}")
    return (c, h // downsample, w // downsample)


def _from_tensors(images: torch.Tensor, labels: Any, *, num_classes: int | None, downsample: int, reg: float,
                  pca_variance: float, full: bool, batch_size: int) -> ClassStats:
    from .energy import validate_images, validate_labels

    if labels is None:
        raise ValueError("class_stats(images, labels): labels are required with tensor images")
    images = validate_images(images, name="images")
    k_classes = int(num_classes) if num_classes is not None else (int(torch.as_tensor(labels).max()) + 1)
    labels_t = validate_labels(labels, k_classes, images.shape[0], name="labels").cpu()
    shape = _pooled_shape(tuple(int(s) for s in images.shape[1:]), downsample)
    images = images.detach().cpu()

    def per_class(k: int):
        members = torch.nonzero(labels_t == k).flatten()
        for s in range(0, len(members), batch_size):
            yield _flatten_batch(images[members[s:s + batch_size]], downsample)

    fit = _fit(per_class, shape, k_classes, reg=reg, pca_variance=pca_variance, full=full)
    return ClassStats(**fit, shape=shape, reg=reg, source="tensors", downsample=downsample)


def coerce_stats(stats: Any, who: str) -> ClassStats:
    """Accept ClassStats or a path to a saved file; anything else gets an error saying how to get stats."""
    if isinstance(stats, ClassStats):
        return stats
    if isinstance(stats, (str, Path)):
        return ClassStats.load(stats) if str(stats).endswith(".safetensors") else class_stats(str(stats))
    raise missing_stats_error(who) if stats is None else TypeError(
        f"{who} expects ClassStats (from ebmlens.class_stats), got {type(stats).__name__}")


def missing_stats_error(who: str) -> ValueError:
    return ValueError(
        f"{who} needs per-class statistics: pass stats=ebmlens.class_stats('cifar10:PATH') (computed once, "
        "cached), stats=ClassStats.load('stats.safetensors'), or the compact stats that ship with the "
        "bundled model ebmlens:cifar10-l2-small; on the CLI give --data cifar10:PATH")
