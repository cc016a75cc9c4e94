"""Image sets from local files: in memory (small) or streamed (ImageNet-size). Never downloads.

One grammar for every command (a *data spec*, ``kind:PATH[@split][?stream=0|1]``; kinds are a
registry, :func:`register_data_source`):

* ``cifar10:PATH[@train|@test]`` - PATH is the ``cifar10-jpeg.tar.xz`` archive (decoded once to
  ``cache_dir()/data``), a folder in ImageFolder layout with ``train/`` and ``test/``
  (``<split>/<class>/*.jpg|png``), or torchvision's ``cifar-10-batches-py`` folder (or its parent).
  ``cifar100:`` likewise for torchvision's ``cifar-100-python``.
* ``imagenet:PATH[@train|@val]`` - the ImageNet layout (see :mod:`ebmlens.data.imagenet`); streamed;
  read with the model's preprocessing, else RobustBench's (Resize 256, CenterCrop 224).
* ``folder:PATH`` - an ImageFolder (``PATH/<class>/<image>``), or a flat folder of images
  (an unlabeled set), or an ebmlens samples folder (its ``samples.npz`` is read). Streamed when it holds more
  than ``$EBMLENS_IN_MEMORY_MAX`` (60,000) images or with ``?stream=1``.
* ``npz:PATH[?unlabeled][?layout=nhwc|nchw]`` - arrays ``images`` (uint8, or float in [0, 1];
  N x H x W x C or N x C x H x W) and ``labels`` (required unless ``?unlabeled``); ``class_names``
  optional.

Every source reads under one contract (:mod:`ebmlens.data.contract`): floats finite and in [0, 1]
(a 1e-3 overshoot clamped with a warning), uint8 as is, anything else a one-line error with the fix;
class folders are matched to a model's classes by name (:mod:`ebmlens.data.classmap`; pass
``classes=model.class_names``, or let the consumer do it through :func:`require_labels`).

Every set implements :class:`ImageSet` (len, labels, class_names, source, fingerprint, strided,
arrays, batches, tensor): :class:`ImageData` holds ``uint8 (N, H, W, C)`` arrays;
:class:`StreamedImages` holds file names and decodes batches in DataLoader workers with the model's
:class:`~ebmlens.energy.Preprocess` (``load_data(spec, preprocess=model.preprocess)``; the in-memory
path applies the same transform). Tensors handed to models are float ``(N, C, H, W)`` in [0, 1].

>>> import numpy as np
>>> ds = ImageData(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, ["a", "b"], "toy")
>>> ds.tensor([0, 1]).shape
torch.Size([2, 3, 8, 8])
>>> [tuple(x.shape) for x, _ in ds.batches(3)]
[(3, 3, 8, 8), (1, 3, 8, 8)]
"""

from .._io import atomic_save_npz
from ..energy import Preprocess
from . import constructed  # noqa: F401  (registers synthetic:, interp:, corrupt:)
from ._readers import CIFAR10_CLASSES, CIFAR100_CLASSES, cache_dir, decode_file, default_cifar10_path, to_uint8_images
from .classmap import imagenet_wnids, map_classes, require_labels
from .contract import read_labels, read_pixels
from .memory import ImageData, ImageSet
from .sources import (
    DataSpec,
    as_image_data,
    data_sources,
    in_memory_max,
    load_data,
    parse_data_spec,
    register_data_source,
)
from .streamed import StreamedImages, data_workers
from .tarindex import TarIndex, tar_index

__all__ = ["ImageSet", "ImageData", "StreamedImages", "TarIndex", "tar_index", "Preprocess", "load_data",
           "as_image_data", "to_uint8_images", "parse_data_spec", "cache_dir", "register_data_source", "data_sources",
           "DataSpec", "in_memory_max", "data_workers", "decode_file", "CIFAR10_CLASSES", "CIFAR100_CLASSES",
           "default_cifar10_path",
           "atomic_save_npz", "require_labels", "map_classes", "imagenet_wnids", "read_pixels", "read_labels"]
