"""Fixtures for the metrics tests: a small fixed random feature network."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallNet(nn.Module):
    """A small fixed random conv net (seeded): features are the 64-d input of ``fc``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):           # seeded init without touching the global stream
            torch.manual_seed(seed)
            self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x - 0.5)).flatten(1))


@pytest.fixture
def small_net():
    """``small_net(seed=0)`` builds a :class:`SmallNet`."""
    return SmallNet
