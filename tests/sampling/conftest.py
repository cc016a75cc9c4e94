"""Fixtures for the sampling tests: small smooth models on 3x8x8 images (fast contracts), class
statistics of synthetic data, and class statistics of a strided CIFAR-10 subset (cached on disk)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmlens import sampling as S
from ebmlens.energy import EnergyModel

SMALL_SHAPE = (3, 8, 8)
SMALL_K = 4


def make_small_model(seed: int = 0, batchnorm: bool = False) -> EnergyModel:
    """A 2-layer tanh MLP on 3x8x8 images with 4 classes: smooth, non-constant energies, fast."""
    g = torch.Generator().manual_seed(seed)
    d = 3 * 8 * 8
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(d, 32)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.Tanh(), nn.Linear(32, SMALL_K)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (3.0 / p.shape[1] ** 0.5))
    return EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=SMALL_SHAPE, num_classes=SMALL_K,
                       source="test", name="small-mlp")


def synthetic_images(n_per_class: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent smooth images in [0, 1]: a class colour plus low-frequency noise."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(SMALL_K):
        base = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25
        low = torch.randn(n_per_class, 3, 4, 4, generator=g) * 0.08
        x = base + torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
        xs.append((x + 0.02 * torch.randn(n_per_class, *SMALL_SHAPE, generator=g)).clamp(0, 1))
        ys.append(torch.full((n_per_class,), k))
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture
def small_model() -> EnergyModel:
    return make_small_model()


@pytest.fixture(scope="session")
def small_data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_images()


@pytest.fixture(scope="session")
def small_stats(small_data) -> S.ClassStats:
    return S.class_stats(*small_data)


@pytest.fixture(scope="session")
def cifar_stats(cifar_train) -> S.ClassStats:
    """Low-rank + diagonal statistics of 2,000 strided training images (200 per class), cached under
    ebmlens.data.cache_dir() after the first session."""
    return S.class_stats(cifar_train, n=2000, full=False)
