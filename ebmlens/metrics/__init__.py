"""Sample quality: Inception Score, FID and KID, offline; accuracy-style measures of conditional
samples; clean and robust accuracy of a model.

Standard numbers (the published CIFAR-10 convention: 50,000 fresh class-balanced samples, IS with
10 splits, FID against the 50,000 training images) come from torch-fidelity's Inception
(``inception-v3-compat``, the 2015-12-05 TensorFlow weights), fed ``uint8`` images and resized to
299x299 by torch-fidelity itself. Its weights file is given by path (``inception_weights=``) and
checked by sha256; nothing is downloaded. The metrics on those features are torch-fidelity's own
functions, so the numbers are torch-fidelity's.

In any other feature network (a CIFAR-10 classifier, say) the same measures are computed by ebmlens's
own :func:`inception_score`, :func:`frechet_distance` and :func:`kernel_distance` and named after the network
(``fd_<net>``, ``kd_<net>_mean``, ``is_<net>_mean``) so that nobody takes them for standard FID.

* Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))``, averaged over
  ``splits`` disjoint splits of the (shuffled) samples, mean and std over splits.
* Frechet distance (Heusel et al. 2017) between Gaussians fitted to features:
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.
* Kernel distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``k(a, b) = (a.b / d + 1)^3``, averaged over random subsets.
* Precision / recall (Kynkaanniemi et al. 2019, k = 3), density / coverage (Naeem et al. 2020, k = 5)
  and within-class diversity (mean ``1 - cos`` of features over pairs of one class): fidelity and
  diversity as separate numbers (:mod:`ebmlens.metrics.manifold`; ``metrics="precision,recall,..."``).
* Robust accuracy: the fraction of images classified correctly both as they are and after an
  untargeted attack (:func:`robust_accuracy`).

Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1``) :func:`evaluate` and :func:`reference_stats`
extract the features of every K-th batch per rank; rank 0 gathers them in index order, computes the
numbers (equal to a single process's) and writes ``out``; every rank returns the same result.

One module per concern:

* ``_math``       - the formulas on features and logits (no networks, no files);
* ``features``    - the feature networks (standard Inception, any ``nn.Module``) and batched extraction;
* ``reference``   - reference statistics files;
* ``manifold``    - precision / recall (k-NN manifolds), density / coverage, within-class diversity;
* ``quality``     - :func:`evaluate`: IS / FID / KID and those as a sequence of per-metric calls;
* ``conditional`` - per-class measures of conditional samples;
* ``accuracy``    - :func:`robust_accuracy`.

>>> import torch
>>> p = torch.eye(4) * 0.96 + 0.01                 # p(y|x): 0.97 on its class, 0.01 on the others
>>> logits = torch.log(p).repeat(25, 1)            # 100 confident predictions, balanced classes
>>> round(inception_score(logits, splits=1)[0], 4)  # exp(0.97 ln(4 * 0.97) + 0.03 ln(4 * 0.01))
3.3824
"""

from __future__ import annotations

from ._math import feature_stats, frechet_distance, inception_score, kernel_distance
from .accuracy import RobustAccuracy, robust_accuracy
from .conditional import ClassMeasure, class_diversity, conditional_accuracy
from .manifold import (
    ClassDiversity,
    DensityCoverage,
    PrecisionRecall,
    density_coverage,
    knn_radii,
    precision_recall,
    within_class_diversity,
)
from .quality import EvalResult, evaluate, parse_metrics
from .reference import ReferenceStats, load_reference_stats, reference_stats

__all__ = ["evaluate", "EvalResult", "reference_stats", "ReferenceStats", "load_reference_stats",
           "inception_score", "frechet_distance", "kernel_distance", "feature_stats",
           "conditional_accuracy", "class_diversity", "ClassMeasure", "robust_accuracy", "RobustAccuracy",
           "parse_metrics", "precision_recall", "PrecisionRecall", "density_coverage", "DensityCoverage",
           "within_class_diversity", "ClassDiversity", "knn_radii"]
