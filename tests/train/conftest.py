"""A tiny learnable image set for trainer tests: 4 classes of 16x16 images, each class a colour
pattern plus noise (an npz file; the trainer trains and evaluates on it in seconds)."""

import numpy as np
import pytest

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_npz(path, n_per_class: int = 24, size: int = 16, seed: int = 0, classes: int = 4):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(classes, size, size, 3))
    images, labels = [], []
    for c in range(classes):
        x = base[c] + 0.15 * rng.standard_normal((n_per_class, size, size, 3))
        images.append((np.clip(x, 0, 1) * 255).astype(np.uint8))
        labels.append(np.full(n_per_class, c, np.int64))
    np.savez(path, images=np.concatenate(images), labels=np.concatenate(labels),
             class_names=np.array(["a", "b", "c", "d"] if classes == 4 else CIFAR10_NAMES[:classes]))
    return path


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> str:
    return "npz:" + str(write_tiny_npz(tmp_path_factory.mktemp("tinydata") / "tiny.npz"))
