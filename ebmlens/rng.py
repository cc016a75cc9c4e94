"""Per-sample random streams.

A sample's noise must not depend on which batch it lands in, nor on how many processes share a
run. :class:`SampleStreams` holds one CPU :class:`torch.Generator` per sample, seeded from
``(seed, sample index)``; every draw returns an ``(N, *shape)`` tensor whose row ``i`` comes
from stream ``i`` alone, then moves to the requested device. Drawing on the CPU keeps the
numbers identical on every device.

Stages accept either a plain :class:`torch.Generator` (one stream for the whole batch; simple
interactive use) or :class:`SampleStreams` (the runner's choice). The helpers :func:`randn`,
:func:`rand` and :func:`randint` dispatch on the two. The library never seeds globally.

>>> s = SampleStreams(seed=0, indices=[3, 4])
>>> t = SampleStreams(seed=0, indices=[4])
>>> bool(torch.equal(s.randn((2,))[1], t.randn((2,))[0]))
True
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

__all__ = ["SampleStreams", "GeneratorLike", "sample_seed", "randn", "rand", "randint", "streams_subset"]

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, index)`` (splitmix64 finalizer)."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class SampleStreams:
    """One random stream per sample, seeded by ``(seed, index)``.

    Args:
        seed: the run's seed (>= 0).
        indices: the global sample indices of the batch rows, in order.
    """

    def __init__(self, seed: int, indices: Sequence[int]) -> None:
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.generators = [torch.Generator().manual_seed(sample_seed(self.seed, i)) for i in self.indices]

    def __len__(self) -> int:
        return len(self.generators)

    def _draw(self, fn, shape, device, dtype) -> torch.Tensor:
        rows = [fn(g) for g in self.generators]
        out = torch.stack(rows) if rows else torch.empty((0, *shape))
        return out.to(device=device or "cpu", dtype=dtype)

    def randn(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        shape = tuple(shape)
        return self._draw(lambda g: torch.randn(shape, generator=g), shape, device, dtype)

    def rand(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        shape = tuple(shape)
        return self._draw(lambda g: torch.rand(shape, generator=g), shape, device, dtype)

    def randint(self, high: int, *, device=None) -> torch.Tensor:
        """One integer in ``[0, high)`` per sample, shape ``(N,)``."""
        vals = [int(torch.randint(high, (1,), generator=g)) for g in self.generators]
        return torch.tensor(vals, dtype=torch.long, device=device or "cpu")

    def subset(self, rows: Sequence[int]) -> "SampleStreams":
        """The streams of some rows (the same generator objects, so draws stay in sync)."""
        new = SampleStreams.__new__(SampleStreams)
        new.seed = self.seed
        new.indices = [self.indices[r] for r in rows]
        new.generators = [self.generators[r] for r in rows]
        return new


GeneratorLike = Union[torch.Generator, SampleStreams, None]


def _check_n(generator: SampleStreams, n: int) -> None:
    if len(generator) != n:
        raise ValueError(f"SampleStreams has {len(generator)} streams for a batch of {n}; "
                         "build it with one index per image")


def randn(generator: GeneratorLike, n: int, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of shape ``(n, *shape)`` from ``generator``."""
    if isinstance(generator, SampleStreams):
        _check_n(generator, n)
        return generator.randn(shape, device=device, dtype=dtype)
    gdev = generator.device if generator is not None else device
    return torch.randn((n, *shape), generator=generator, device=gdev, dtype=dtype).to(device or gdev)


def rand(generator: GeneratorLike, n: int, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) noise of shape ``(n, *shape)`` from ``generator``."""
    if isinstance(generator, SampleStreams):
        _check_n(generator, n)
        return generator.rand(shape, device=device, dtype=dtype)
    gdev = generator.device if generator is not None else device
    return torch.rand((n, *shape), generator=generator, device=gdev, dtype=dtype).to(device or gdev)


def randint(generator: GeneratorLike, n: int, high: int, *, device=None) -> torch.Tensor:
    """``n`` integers in ``[0, high)`` from ``generator``."""
    if isinstance(generator, SampleStreams):
        _check_n(generator, n)
        return generator.randint(high, device=device)
    gdev = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=gdev).to(device or gdev)


def streams_subset(generator: GeneratorLike, rows: Sequence[int]) -> GeneratorLike:
    """The part of ``generator`` for some batch rows (a plain generator is shared as is)."""
    if isinstance(generator, SampleStreams):
        return generator.subset(rows)
    return generator
