"""Small, fast models and data for the analysis tests (the direction tests use the shipped models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ebmlens.data import ImageData
from ebmlens.energy import EnergyModel


def make_linear_model(seed: int = 0, num_classes: int = 10, shape=(3, 8, 8), scale: float = 0.05) -> EnergyModel:
    """A linear classifier on raw pixels: fast, smooth, with useful gradients everywhere."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), num_classes))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(net[1].weight.shape, generator=g) * scale)
        net[1].bias.zero_()
    return EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=shape, num_classes=num_classes,
                       source="test", name=f"linear{seed}")


def make_image_data(n: int = 32, shape=(8, 8, 3), num_classes: int = 10, seed: int = 0) -> ImageData:
    rs = np.random.default_rng(seed)
    images = rs.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.int64)
    return ImageData(images, labels, [f"c{i}" for i in range(num_classes)], f"synthetic:{n}")


@pytest.fixture
def linear_model() -> EnergyModel:
    return make_linear_model()


@pytest.fixture
def toy_data() -> ImageData:
    return make_image_data()


@pytest.fixture(scope="session")
def standard_model() -> EnergyModel:
    """The shipped non-robust model (ebmlens:cifar10-standard-small), never retrained in tests."""
    import ebmlens

    return ebmlens.load_model("ebmlens:cifar10-standard-small")
