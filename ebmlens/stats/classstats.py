"""``ClassStats``: per-class means, covariances and PCA bases as data (compact form, provenance, files).

Fitting lives in :mod:`ebmlens.stats.fit` (on :mod:`ebmlens.stats.moments`), the file formats in
:mod:`ebmlens.stats.files`; the math is described in :mod:`ebmlens.stats`.
"""


from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from .._io import fingerprint
from . import files

__all__ = ["ClassStats"]

_TENSORS = ("mean", "diag", "eigvecs", "eigvals", "total_var", "counts", "chol")


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
        row_class: the class of each row of the arrays; ``None``: row ``k`` is class ``k``. Distinct
            classes: only some of the ``K`` classes were loaded (``ClassStats.load(dir, classes=...)``).
            A class on several rows: a *mixture* (:func:`ebmlens.stats.class_mixture`), each row one
            Gaussian component weighted by its ``counts``. Index rows with :meth:`rows` (the inits do),
            never with raw labels.
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
    row_class: tuple[int, ...] | None = None

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
        if self.row_class is not None:
            rc = tuple(int(c) for c in self.row_class)
            if len(rc) != k or not all(0 <= c < len(self.class_names) for c in rc):
                raise ValueError(f"ClassStats.row_class must give the class (in [0, {len(self.class_names)})) of "
                                 f"each of the {k} rows, got {self.row_class!r}")
            object.__setattr__(self, "row_class", rc)
        object.__setattr__(self, "_device_cache", {})

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        """``K``, the classes of the dataset (also when only some are loaded, or rows are components)."""
        return int(self.mean.shape[0]) if self.row_class is None else len(self.class_names)

    @property
    def is_mixture(self) -> bool:
        """Whether some class has several rows (mixture components)."""
        return self.row_class is not None and len(set(self.row_class)) < len(self.row_class)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, M)`` row ids of each class's components (-1: none) and their cumulative weights."""
        key = (str(device), "row_tables")
        cache: dict = self.__dict__["_device_cache"]
        if key not in cache:
            rc = list(self.row_class or range(self.num_classes))
            m = max(1, max((rc.count(c) for c in set(rc)), default=1))
            rows = torch.full((self.num_classes, m), -1, dtype=torch.long)
            w = torch.zeros(self.num_classes, m, dtype=torch.float64)
            fill = [0] * self.num_classes
            for r, c in enumerate(rc):
                rows[c, fill[c]], w[c, fill[c]] = r, max(float(self.counts[r]), 1e-12)
                fill[c] += 1
            cdf = (w.cumsum(1) / w.sum(1, keepdim=True).clamp_min(1e-300)).float()
            cdf[torch.arange(m).expand(self.num_classes, m) >= torch.tensor(fill).view(-1, 1)] = 1.0
            cache[key] = (rows.to(device), cdf.to(device))
        return cache[key]

    def rows(self, y: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """Row of each label ``y (N,)`` in the arrays: ``y`` itself when row ``k`` is class ``k``. For a
        mixture, the component of each sample is chosen by ``u (N,)`` uniform in [0, 1) (inverse CDF of
        the class's component weights). A label without rows fails (one host sync, only when
        :attr:`row_class` is set)."""
        if self.row_class is None:
            return y
        table, cdf = self._tables(y.device)
        if table.shape[1] == 1:
            r = table[y, 0]
        else:
            if u is None:
                raise ValueError("mixture statistics choose a component per sample: pass u (N,) uniform in [0, 1)")
            j = (u.view(-1, 1) >= cdf[y]).sum(1).clamp(max=table.shape[1] - 1)
            r = table[y].gather(1, j.view(-1, 1)).squeeze(1)
        if bool((r < 0).any()):
            bad = sorted(set(y[r < 0].tolist()))[:5]
            raise ValueError(f"labels {bad} are not among the classes these statistics were loaded for; load them "
                             "with ClassStats.load(dir, classes=...) including those classes")
        return r

    @property
    def row_weights(self) -> torch.Tensor:
        """``(rows,)`` share of the images in each row: ``counts / counts.sum()``."""
        c = self.counts.double()
        return (c / c.sum()).float()

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
        if self.row_class is not None:
            c = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, torch.tensor(self.row_class), c)
        return (c / c.sum()).float()

    def lowrank_diag(self, rank: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """``(K, D)`` the diagonal ``d`` of the low-rank + diagonal covariance with the top ``rank``
        components (default all held): ``diag(Sigma) - diag(U diag(lambda) U^T)``, ``>= 0``, ``+ reg``.
        With ``device``: float32 there, computed once per device and rank (the inits call it per batch)."""
        r = self.rank if rank is None else rank
        if not (isinstance(r, int) and 0 <= r <= self.rank):
            raise ValueError(f"lowrank_diag rank must be an int in [0, {self.rank}], got {rank!r}")
        if device is None:
            explained = (self.eigvecs[:, :, :r].float() ** 2 * self.eigvals[:, :r].float().unsqueeze(1)).sum(2)
            return (self.diag - explained).clamp_min(0.0) + self.reg
        key = (str(torch.device(device)), f"lowrank_diag/{r}")
        cache: dict = self.__dict__["_device_cache"]
        if key not in cache:
            cache[key] = self.lowrank_diag(r).to(device=device, dtype=torch.float32)
        return cache[key]

    def on(self, device: torch.device | str,
           name: Literal["mean", "diag", "eigvecs", "eigvals", "total_var", "counts", "chol"]) -> torch.Tensor:
        """The tensor field ``name`` as float32 on ``device``, cached (moved once per device)."""
        if name not in _TENSORS:
            raise ValueError(f"ClassStats.on: {name!r} is not a tensor field; use one of {', '.join(_TENSORS)} "
                             "(the low-rank diagonal: lowrank_diag(rank, device=...))")
        key = (str(torch.device(device)), name)
        cache: dict = self.__dict__["_device_cache"]
        if key not in cache:
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
                "downsample": self.downsample, "count": int(self.counts.sum()), "sha256": sha,
                **({} if self.row_class is None else {"row_class": list(self.row_class)})}

    def retained_components(self, k: int, variance: float) -> int:
        """Smallest number of leading components of row ``k`` (class ``k`` unless :attr:`row_class`) whose
        variance reaches ``variance`` of ``total_var[k]`` (capped at :attr:`rank`)."""
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
        """Write a ``.safetensors`` file (arrays) with the metadata as JSON in its header
        (:mod:`ebmlens.stats.files`). Compact statistics store eigenvectors as float16. Written atomically."""
        arrays = {"mean": self.mean, "diag": self.diag, "eigvals": self.eigvals, "total_var": self.total_var,
                  "counts": self.counts.to(torch.int64),
                  "eigvecs": self.eigvecs.to(torch.float16) if self.chol is None else self.eigvecs}
        if self.chol is not None:
            arrays["chol"] = self.chol
        meta: dict[str, Any] = {"shape": list(self.shape), "reg": self.reg, "source": self.source,
                                "split": self.split, "class_names": list(self.class_names),
                                "downsample": self.downsample}
        if self.row_class is not None:
            meta["row_class"] = list(self.row_class)
        return files.write_file(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path, classes: Sequence[int] | None = None) -> "ClassStats":
        """Read a file written by :meth:`save` (safetensors: no code is executed), or a per-class
        directory written by ``ebmlens stats`` (:func:`ebmlens.stats.fit_stats_dir`; compact kind).

        ``classes`` (directories; a file is read whole): read and hold only these classes' files (the
        classes a run samples): the arrays then have one row per loaded class (:attr:`row_class`), so memory
        follows the classes sampled, not ``K`` (1,000 ImageNet classes at D = 9,408, rank 64 would be 2.5 GB
        of float32 rows).
        """
        path = Path(path)
        if path.is_dir() and (path / "meta.json").is_file():
            arrays, meta, rows = files.read_dir(path, classes)
            row_class = None if len(rows) == int(meta["num_classes"]) else tuple(rows)
        else:  # one file is read whole
            arrays, meta = files.read_file(path)
            row_class = tuple(meta["row_class"]) if meta.get("row_class") is not None else None
        return cls(mean=arrays["mean"].float(), diag=arrays["diag"].float(), eigvecs=arrays["eigvecs"].float(),
                   eigvals=arrays["eigvals"].float(), total_var=arrays["total_var"].float(),
                   counts=arrays["counts"].long(), shape=tuple(meta["shape"]), chol=arrays.get("chol"),
                   reg=float(meta["reg"]), source=meta.get("source", str(path)), split=meta.get("split"),
                   class_names=tuple(meta.get("class_names") or ()), downsample=int(meta.get("downsample", 1)),
                   row_class=row_class)
