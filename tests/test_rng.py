"""Per-sample random streams: a sample's noise depends on (seed, index) only, never on its batch."""

from __future__ import annotations

import pytest
import torch

from ebmlens import rng


def test_rows_independent_of_batch_composition():
    a = rng.SampleStreams(7, [0, 1, 2, 3])
    b = rng.SampleStreams(7, [3, 1])
    xa, xb = a.randn((3, 2)), b.randn((3, 2))
    assert torch.equal(xa[3], xb[0]) and torch.equal(xa[1], xb[1])
    # successive draws advance each stream on its own
    ya, yb = a.rand((5,)), b.rand((5,))
    assert torch.equal(ya[3], yb[0])
    assert torch.equal(a.randint(100)[1], b.randint(100)[1])


def test_seeds_and_indices_differ():
    x = rng.SampleStreams(0, [0, 1]).randn((16,))
    assert not torch.equal(x[0], x[1])
    assert not torch.equal(rng.SampleStreams(1, [0]).randn((16,))[0], x[0])
    assert len({rng.sample_seed(s, i) for s in range(20) for i in range(50)}) == 1000
    with pytest.raises(ValueError, match=">= 0"):
        rng.sample_seed(-1, 0)


def test_helpers_dispatch_and_devices():
    g = torch.Generator().manual_seed(0)
    t = rng.randn(g, 3, (2, 2))
    assert t.shape == (3, 2, 2) and t.dtype == torch.float32
    assert rng.rand(None, 2, (4,), dtype=torch.float64).dtype == torch.float64
    s = rng.SampleStreams(0, range(3))
    assert rng.randn(s, 3, (2,)).shape == (3, 2)
    assert rng.randint(s, 3, 5).shape == (3,)
    assert bool(((rng.randint(g, 100, 5) >= 0) & (rng.randint(g, 100, 5) < 5)).all())
    with pytest.raises(ValueError, match="3 streams for a batch of 4"):
        rng.randn(s, 4, (2,))
    with pytest.raises(ValueError, match="3 streams for a batch of 2"):
        rng.rand(s, 2, (2,))


def test_subset_shares_streams():
    s = rng.SampleStreams(5, [10, 11, 12])
    ref = rng.SampleStreams(5, [10, 11, 12])
    sub = rng.streams_subset(s, [2])
    assert sub.indices == [12]
    assert torch.equal(sub.randn((4,))[0], ref.randn((4,))[2])
    # the parent's stream 12 advanced too: the next draws of the two stay in sync
    assert torch.equal(s.randn((4,))[2], ref.randn((4,))[2])
    g = torch.Generator()
    assert rng.streams_subset(g, [0]) is g


def test_empty_batch():
    s = rng.SampleStreams(0, [])
    assert rng.randn(s, 0, (3,)).shape == (0, 3)
