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

Modules, each importing only ones listed before it (no circle): :mod:`~ebmlens.stats.moments` (sums and
eigenpairs of plain tensors), :mod:`~ebmlens.stats.files` (the file and directory formats: arrays and
metadata), :mod:`~ebmlens.stats.classstats` (the :class:`ClassStats` type; reads and writes through
``files``), :mod:`~ebmlens.stats.fit` (fitting a data set: :func:`class_stats`, :func:`fit_stats_dir`),
:mod:`~ebmlens.stats.mixture` (:func:`class_mixture`).
"""

from .classstats import ClassStats
from .fit import class_stats, coerce_stats, fit_stats_dir, missing_stats_error
from .mixture import class_mixture

__all__ = ["ClassStats", "class_stats", "class_mixture", "coerce_stats", "missing_stats_error", "fit_stats_dir"]
