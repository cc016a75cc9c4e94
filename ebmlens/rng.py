"""Per-sample random streams from a counter-based generator (Philox-4x32-10).

A sample's noise must not depend on which batch it lands in, how many processes share a run, or
whether the run was resumed. :class:`SampleStreams` gives every sample ``i`` of a run with seed
``s`` its own stream: the ``d``-th draw of row ``i`` (``d`` counts that row's draws, from 0) is a
pure function of ``(s, i, d, shape)``, computed for the whole batch at once in integer tensor ops
on the device the draw is made on: no per-row host work, no host-to-device copy.

**Generator.** Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC'11; the design of curand and of torch's CUDA generator) maps a 128-bit counter and a
64-bit key to 128 random bits. Here the key is the seed, ``(s mod 2**32, s >> 32)``, and the
counter of element block ``j`` is ``(j, d, i mod 2**32, i >> 32)``: every ``(s, i, d, j)`` gets
its own Philox input, the way curand keys by seed and counts by subsequence and offset. Words are
int64 tensors holding 32-bit values; a round's 32x32 -> 64-bit products are taken with the
multiplier minus ``2**32`` (negative, ``|m| < 2**30``), so no product leaves int64's range.

**Floats.** Block ``j`` gives words ``w0..w3``; element ``k * B + j`` of a row of ``n`` values
(``B = ceil(n / 4)`` blocks) comes from word ``k``. Uniforms are ``(w >> 8) * 2**-24`` in
``[0, 1)``; normals come in pairs by Box-Muller from ``(w0, w1)`` and ``(w2, w3)``:
``r = sqrt(-2 log u)`` with ``u = w * 2**-32 + 2**-33`` in ``(0, 1]`` (never ``log 0``),
``theta = 2 pi w' 2**-32``, ``z = (r cos theta, r sin theta)``. Integers in ``[0, high)`` are
``(w0 * high) >> 32`` (bias below ``high / 2**32``). Values are made in float32 and cast to
``dtype``.

**Devices.** The integer words are exact, so uniforms and integers are bit for bit the same on
every device; normals agree to a few float32 ulps (``log``/``cos``/``sin`` differ by backend).
On the **CPU**, a torch-op Philox costs about twice the old per-sample loop for large draws, so a
row's draw of more than ``CPU_LOOP_MIN`` values (an image's noise) takes a CPU fast path by
default: one ``torch.Generator`` per row, seeded with ``(b_i + d m_i) mod 2**32`` from two Philox
words of ``(s, i)``, filling the row in place. It keeps every invariance above on the CPU, but its
numbers differ from the CUDA path, and of the ``K`` row-draws of a run about ``K**2 / 2**33``
pairs share a seed (torch seeds its CPU generator from 32 bits; the old per-sample generators
shared whole streams at that rate). ``SampleStreams(..., portable=True)``
uses Philox for every draw on every device. Draws of at most ``CPU_LOOP_MIN`` values per row, and
all :meth:`~SampleStreams.randint` draws, are Philox everywhere.

Stages accept either a plain :class:`torch.Generator` (one stream for the whole batch; simple
interactive use) or :class:`SampleStreams` (the runner's choice). The helpers :func:`randn`,
:func:`rand` and :func:`randint` dispatch on the two. The library never seeds globally.

>>> s = SampleStreams(seed=0, indices=[3, 4])
>>> t = SampleStreams(seed=0, indices=[4])
>>> bool(torch.equal(s.randn((2,))[1], t.randn((2,))[0]))
True
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch

__all__ = ["SampleStreams", "GeneratorLike", "sample_seed", "randn", "rand", "randint", "streams_subset",
           "philox4x32", "CPU_LOOP_MIN"]

_MASK64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)   # round multipliers (Salmon et al. 2011)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)   # Weyl key increments: golden ratio, sqrt(3) - 1
_M0N, _M1N = (m - (1 << 32) for m in _PHILOX_M)  # hi(c M) = floor(c m / 2**32) + c, lo = c m mod 2**32
CPU_LOOP_MIN = 256                      # CPU draws of more values per row take the per-row fast path
_CHUNK = {"cpu": 1 << 14}               # Philox blocks per chunk: 16k keeps the CPU work in L2
_CHUNK_DEVICE = 1 << 22                 # elsewhere: one launch series per 4M blocks
_TWO_PI_2M32 = 2.0 * math.pi / 2.0**32


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, index)`` (splitmix64 finalizer)."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _round(c0, c1, c2, c3, k0: int, k1: int):
    """One Philox-4x32 round, out of place (inputs may broadcast)."""
    p0, p1 = c0 * _M0N, c2 * _M1N
    return ((p1 >> 32) + c2) ^ c1 ^ k0, p1 & _M32, ((p0 >> 32) + c0) ^ c3 ^ k1, p0 & _M32


def philox4x32(counter: Sequence, key: Sequence[int], rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox-4x32-``rounds`` of a batch of counters under one key.

    Args:
        counter: four int64 tensors (or ints) of 32-bit values ``c0..c3``, broadcastable.
        key: two ints ``k0, k1`` in ``[0, 2**32)``.

    Returns:
        Four int64 tensors of the broadcast shape, values in ``[0, 2**32)``. A round maps
        ``(c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))``
        and the key then grows by the Weyl increments.
    """
    c = [torch.as_tensor(x, dtype=torch.int64) for x in counter]
    device = next((x.device for x in c if x.device.type != "cpu"), torch.device("cpu"))
    c = [x.to(device) for x in c]
    k0, k1 = int(key[0]), int(key[1])
    if len(c) != 4 or not (0 <= k0 <= _M32 and 0 <= k1 <= _M32):
        raise ValueError(f"philox4x32 takes 4 counter words and a key of two 32-bit ints, got {len(c)} words, "
                         f"key {key!r}")
    shape = torch.broadcast_shapes(*(x.shape for x in c))
    r, full = 0, lambda a, b: torch.broadcast_shapes(a.shape, b.shape) == shape
    while r < rounds and not (full(c[2], c[1]) and full(c[0], c[3])):  # rounds on smaller broadcast tensors
        c = list(_round(c[0], c[1], c[2], c[3], k0, k1))
        k0, k1, r = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32, r + 1
    # full-size buffers of our own (the caller's tensors are never written)
    c0, c1, c2, c3 = (x.expand(shape).clone(memory_format=torch.contiguous_format) for x in c)
    p0, p1, t = torch.empty_like(c0), torch.empty_like(c0), torch.empty_like(c0)
    for _ in range(r, rounds):  # the rest in place on full-size buffers
        torch.mul(c0, _M0N, out=p0)
        torch.mul(c2, _M1N, out=p1)
        torch.bitwise_right_shift(p1, 32, out=t)
        c2.add_(t).bitwise_xor_(c1).bitwise_xor_(k0)   # new c0 = hi1 ^ c1 ^ k0
        torch.bitwise_right_shift(p0, 32, out=t)
        c0.add_(t).bitwise_xor_(c3).bitwise_xor_(k1)   # new c2 = hi0 ^ c3 ^ k1
        p1.bitwise_and_(_M32)                          # new c1 = lo1
        p0.bitwise_and_(_M32)                          # new c3 = lo0
        c0, c1, c2, c3, p0, p1 = c2, p1, c0, p0, c1, c3
        k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
    return c0, c1, c2, c3


def _uniform_into(o: torch.Tensor, w: tuple) -> None:
    """``o[:, k] = (w_k >> 8) * 2**-24`` for the ``P = o.shape[1]`` planes."""
    for k in range(o.shape[1]):
        o[:, k] = w[k].bitwise_right_shift_(8).to(torch.float32).mul_(2.0**-24)


def _normal_into(o: torch.Tensor, w: tuple) -> None:
    """Box-Muller: planes ``(2q, 2q + 1)`` from words ``(2q, 2q + 1)``."""
    for q in range(0, o.shape[1], 2):
        r = w[q].to(torch.float32).mul_(2.0**-32).add_(2.0**-33).log_().mul_(-2.0).sqrt_()
        theta = w[q + 1].to(torch.float32).mul_(_TWO_PI_2M32)
        o[:, q] = torch.cos(theta).mul_(r)
        if q + 1 < o.shape[1]:
            o[:, q + 1] = theta.sin_().mul_(r)


class _Counters:
    """The draw counter of every row of a root :class:`SampleStreams`, shared with its subsets."""

    def __init__(self, n: int) -> None:
        self.counts = torch.zeros(n, dtype=torch.int64)


class SampleStreams:
    """One random stream per sample, keyed by ``(seed, index)``; see the module docstring.

    Args:
        seed: the run's seed, in ``[0, 2**64)``.
        indices: the global sample indices of the batch rows, in order (each in ``[0, 2**63)``).
        portable: use Philox for every draw on the CPU too (same numbers as on CUDA; large
            draws cost about twice the CPU fast path).
    """

    def __init__(self, seed: int, indices: Sequence[int], *, portable: bool = False) -> None:
        self.seed = int(seed)
        if not 0 <= self.seed <= _MASK64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.indices = [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < 1 << 63]
        if bad:
            raise ValueError(f"sample indices must be in [0, 2**63), got {bad[0]}")
        self.portable = bool(portable)
        self._index = torch.tensor(self.indices, dtype=torch.int64)
        self._shared = _Counters(len(self.indices))
        self._rows: torch.Tensor | None = None     # positions in the shared counters (None: all, in order)
        self._cache: dict = {}                      # device -> (rows, index lo, index hi) there
        self._base: list | None = None              # CPU fast path: per-row (b, m) seed words

    def __len__(self) -> int:
        return len(self.indices)

    def _next_counters(self, device: torch.device):
        """``(d, i_lo, i_hi)`` as ``(N, 1)`` int64 on ``device``; advances each row's counter by one."""
        sh = self._shared
        sh.counts = sh.counts.to(device)
        dev = sh.counts.device
        if dev not in self._cache:
            rows = None if self._rows is None else self._rows.to(dev)
            idx = self._index.to(dev).view(-1, 1)
            self._cache[dev] = (rows, idx & _M32, idx >> 32)
        rows, lo, hi = self._cache[dev]
        if rows is None:
            d = sh.counts.view(-1, 1) & _M32
            sh.counts.add_(1)
        else:
            d = sh.counts.index_select(0, rows).view(-1, 1) & _M32
            sh.counts.index_add_(0, rows, torch.ones_like(rows))
        return d, lo, hi

    def _philox(self, n_values: int, device, fill: Callable) -> torch.Tensor:
        """``(N, P * B)`` float32: the planes of ``n_values`` per row, filled chunk by chunk."""
        d, lo, hi = self._next_counters(torch.device(device))
        dev = d.device
        blocks = max(1, -(-n_values // 4))
        planes = max(1, -(-n_values // blocks))
        n = len(self)
        out = torch.empty((n, planes, blocks), dtype=torch.float32, device=dev)
        chunk = _CHUNK.get(dev.type, _CHUNK_DEVICE)
        rows_per, cols = max(1, chunk // blocks), min(blocks, chunk)
        key = (self.seed & _M32, self.seed >> 32)
        for r0 in range(0, n, rows_per):
            r1 = min(n, r0 + rows_per)
            for b0 in range(0, blocks, cols):
                j = torch.arange(b0, min(blocks, b0 + cols), dtype=torch.int64, device=dev).view(1, -1)
                w = philox4x32((j, d[r0:r1], lo[r0:r1], hi[r0:r1]), key)
                fill(out[r0:r1, :, b0:b0 + j.shape[1]], w)
        return out.view(n, planes * blocks)

    def _draw(self, kind: str, shape, device, dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        device = torch.device(device or "cpu")
        numel = math.prod(shape)
        if device.type == "cpu" and not self.portable and numel > CPU_LOOP_MIN:
            out = self._cpu_rows(kind, shape)
        else:
            flat = self._philox(numel, device, _normal_into if kind == "normal" else _uniform_into)
            out = flat[:, :numel].reshape(len(self), *shape)
        return out.to(dtype=dtype)

    def _cpu_rows(self, kind: str, shape: tuple) -> torch.Tensor:
        """CPU fast path: row ``i`` from a ``torch.Generator`` seeded with ``(b_i + d m_i) mod 2**32``,
        where ``(b_i, m_i | 1)`` are Philox words of the reserved block ``(2**32 - 1, 0, i)``:
        distinct seeds for the draws of one row, one cheap host step per row and draw."""
        d, lo, hi = self._next_counters(torch.device("cpu"))
        if self._base is None:
            w = philox4x32((_M32, 0, lo, hi), (self.seed & _M32, self.seed >> 32))
            self._base = list(zip(w[0].view(-1).tolist(), (w[1].view(-1) | 1).tolist()))
        out = torch.empty((len(self), *shape), dtype=torch.float32)
        g = torch.Generator()
        for i, ((b, m), di) in enumerate(zip(self._base, d.view(-1).tolist())):
            g.manual_seed((b + di * m) & _M32)
            (out[i].normal_ if kind == "normal" else out[i].uniform_)(generator=g)
        return out

    def randn(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normals, ``(N, *shape)``; row ``i`` from stream ``i`` alone."""
        return self._draw("normal", shape, device, dtype)

    def rand(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Uniforms in ``[0, 1)`` (24 bits), ``(N, *shape)``; row ``i`` from stream ``i`` alone."""
        return self._draw("uniform", shape, device, dtype)

    def randint(self, high: int, *, device=None) -> torch.Tensor:
        """One integer in ``[0, high)`` per sample, shape ``(N,)`` (``1 <= high <= 2**31``)."""
        if not 1 <= int(high) <= 1 << 31:
            raise ValueError(f"randint needs 1 <= high <= 2**31, got high={high}")
        d, lo, hi = self._next_counters(torch.device(device or "cpu"))
        w0 = philox4x32((0, d, lo, hi), (self.seed & _M32, self.seed >> 32))[0]
        return ((w0 * int(high)) >> 32).view(-1)

    def subset(self, rows: Sequence[int]) -> "SampleStreams":
        """The streams of some rows. They share this object's draw counters: a draw through the
        subset advances those rows here too, so the next draws of both stay in sync."""
        n = len(self)
        rows = [int(r) + n if int(r) < 0 else int(r) for r in rows]
        if any(not 0 <= r < n for r in rows) or len(set(rows)) != len(rows):
            raise ValueError(f"subset rows must be distinct rows of this batch of {n}, got {rows}")
        new = SampleStreams.__new__(SampleStreams)
        new.seed, new.portable, new._shared, new._cache, new._base = self.seed, self.portable, self._shared, {}, None
        new.indices = [self.indices[r] for r in rows]
        new._index = torch.tensor(new.indices, dtype=torch.int64)
        base = torch.arange(n) if self._rows is None else self._rows
        new._rows = base[torch.tensor(rows, dtype=torch.int64)]
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
