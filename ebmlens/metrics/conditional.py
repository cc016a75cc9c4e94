"""Measures of conditional samples, per class: does an independent classifier agree with the
target (:func:`conditional_accuracy`), and how spread out are the samples of each class in a
feature network (:func:`class_diversity`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .._measure import check_labels
from ..data import ImageSet
from .features import extract, extractor, rgb_images

__all__ = ["ClassMeasure", "conditional_accuracy", "class_diversity"]


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


def _labelled(images: object, labels: object) -> tuple[ImageSet, np.ndarray]:
    data = rgb_images(images, "images")
    if labels is None:
        if not isinstance(images, (ImageSet, str, os.PathLike)):
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
    ext = extractor(classifier, layer="output", arch=arch, device=device, trust_checkpoint=trust_checkpoint)
    _, logits, _ = extract(ext, data, batch_size, False, "classify", local=True)
    if logits is None:
        raise ValueError(f"{ext.network} does not output (N, K) logits; conditional_accuracy needs a classifier")
    check_labels(y, int(logits.shape[1]), f"{data.source} (the targets of conditional_accuracy)")
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
    ext = extractor(feature_model, inception_weights=inception_weights, layer=layer, arch=arch, device=device,
                    trust_checkpoint=trust_checkpoint)
    feats, _, _ = extract(ext, data, batch_size, False, "features", local=True)
    if feats is None:  # pragma: no cover - local=True always returns the features
        raise RuntimeError("feature extraction returned no features")
    per = {int(c): float(torch.pdist(feats[torch.from_numpy(y == c)].double()).mean())
           for c in sorted(set(y.tolist())) if (y == c).sum() >= 2}
    if not per:
        raise ValueError("class_diversity needs at least two images of some class")
    return ClassMeasure("class_diversity", float(np.mean(list(per.values()))), per,
                        {c: int((y == c).sum()) for c in per}, ext.network, ext.layer)
