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


# --- counter-based generator (issue 12) -------------------------------------------------------------

# Known answers of Philox-4x32 from Random123's tests/kat_vectors (D. E. Shaw Research, the
# reference implementation of Salmon et al., SC'11), lines "philox4x32 R ctr[4] key[2] -> out[4]".
_M = 0xFFFFFFFF
_PI_CTR, _PI_KEY = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)
KAT = [
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (_M, _M, _M, _M), (_M, _M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, _PI_CTR, _PI_KEY, (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (_M, _M, _M, _M), (_M, _M), (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, _PI_CTR, _PI_KEY, (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("rounds,ctr,key,want", KAT)
def test_philox_known_answers(rounds, ctr, key, want):
    out = rng.philox4x32(ctr, key, rounds=rounds)
    assert [int(w) for w in out] == list(want)
    # the same counter in a broadcast batch, next to others: every copy gives the answer
    batch = [torch.tensor([[c, c ^ 1]] * 3) for c in ctr]
    out = rng.philox4x32(batch, key, rounds=rounds)
    assert all(o.shape == (3, 2) and bool((o[:, 0] == w).all()) for o, w in zip(out, want))
    assert not any(bool((o[:, 1] == w).all()) for o, w in zip(out, want))


def _philox_reference(ctr, key, rounds=10):
    """Philox-4x32 on Python ints, from the published round function."""
    c, k = list(ctr), list(key)
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & _M, (p0 >> 32) ^ c[3] ^ k[1], p0 & _M]
        k = [(k[0] + 0x9E3779B9) & _M, (k[1] + 0xBB67AE85) & _M]
    return c


def test_philox_matches_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    ctr = [torch.randint(0, 2**32, (64,), generator=g) for _ in range(4)]
    ctr[0][:4] = torch.tensor([0, _M, 2**31, 2**31 - 1])  # products at the int64 edges
    keys = [(0, 0), (_M, _M), (0x12345678, 0x9ABCDEF0)]
    for key in keys:
        out = torch.stack(rng.philox4x32(ctr, key), 1).tolist()
        want = [_philox_reference([int(x[i]) for x in ctr], key) for i in range(64)]
        assert out == want
    before = [x.clone() for x in ctr]
    rng.philox4x32(ctr, keys[0])
    assert all(torch.equal(a, b) for a, b in zip(ctr, before))  # inputs untouched
    with pytest.raises(ValueError, match="key of two 32-bit ints"):
        rng.philox4x32(ctr, (2**32, 0))


DRAWS = [("randn", ()), ("randn", (3,)), ("rand", (5,)), ("randn", (3, 16, 16)), ("rand", (3, 16, 16))]


@pytest.mark.parametrize("portable", [False, True])
def test_row_identical_in_batches_of_1_and_512(portable):
    """Row i's noise depends on (seed, i, draw count) only: batch size, order, company and resume
    (a fresh object with the same seed and index) change nothing."""
    idx = torch.randperm(10_000, generator=torch.Generator().manual_seed(1))[:512].tolist()
    big = rng.SampleStreams(9, idx, portable=portable)
    a = [getattr(big, k)(shape) for k, shape in DRAWS] + [big.randint(1000)]
    for pos in (0, 17, 511):
        one = rng.SampleStreams(9, [idx[pos]], portable=portable)
        b = [getattr(one, k)(shape) for k, shape in DRAWS] + [one.randint(1000)]
        assert all(torch.equal(x[pos], y[0]) for x, y in zip(a, b))
    rev = rng.SampleStreams(9, idx[::-1], portable=portable)
    c = [getattr(rev, k)(shape) for k, shape in DRAWS] + [rev.randint(1000)]
    assert all(torch.equal(x.flip(0), y) for x, y in zip(a, c))


def test_small_draws_same_with_and_without_cpu_fast_path():
    """Up to 256 values per row (labels, radii, low-rank codes) are Philox on every device; an
    image's noise takes the CPU fast path unless portable=True."""
    fast, port = rng.SampleStreams(4, range(6)), rng.SampleStreams(4, range(6), portable=True)
    assert rng.CPU_LOOP_MIN >= 256
    for shape in [(), (16,), (256,), (2, 128)]:
        assert torch.equal(fast.randn(shape), port.randn(shape)) and torch.equal(fast.rand(shape), port.rand(shape))
    assert torch.equal(fast.randint(7), port.randint(7))
    x, y = fast.randn((3, 32, 32)), port.randn((3, 32, 32))   # fast path vs Philox
    assert x.shape == y.shape == (6, 3, 32, 32) and not torch.equal(x, y)


def test_uniform_and_integer_grids():
    s = rng.SampleStreams(0, range(64), portable=True)
    u = s.rand((1000,))
    assert bool(((u >= 0) & (u < 1)).all()) and torch.equal(u * 2**24, (u * 2**24).floor())
    assert s.rand((3,), dtype=torch.float64).dtype == torch.float64
    k = s.randint(7)
    assert k.dtype == torch.long and bool(((k >= 0) & (k < 7)).all())
    assert int(rng.SampleStreams(0, range(4)).randint(2**31).max()) < 2**31
    for bad in (0, 2**31 + 1):
        with pytest.raises(ValueError, match="1 <= high <= 2"):
            s.randint(bad)


def test_box_muller_edges_finite():
    """Words 0 and 2**32 - 1 (u at its ends) give finite normals: log(0) cannot happen."""
    w = tuple(torch.tensor([[0, _M, 1, 2**31]]) for _ in range(4))
    o = torch.empty(1, 4, 4)
    rng._normal_into(o, w)
    assert bool(torch.isfinite(o).all()) and abs(float(o.abs().max()) - 6.764) < 1e-3  # sqrt(-2 log 2**-33), at w = 0


def test_seed_and_index_validation():
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        rng.SampleStreams(2**64, [0])
    with pytest.raises(ValueError, match="sample indices must be in"):
        rng.SampleStreams(0, [3, -1])
    s = rng.SampleStreams(2**64 - 1, [2**63 - 1, 2**32, 2**32 + 1])   # the high words count
    x = s.randn((8,))
    assert not torch.equal(x[1], x[2])
    with pytest.raises(ValueError, match="distinct rows of this batch of 3"):
        s.subset([0, 0])
    with pytest.raises(ValueError, match="distinct rows"):
        s.subset([3])


def test_subset_of_subset_and_negative_rows_keep_counters():
    s, ref = rng.SampleStreams(2, range(10, 16)), rng.SampleStreams(2, range(10, 16))
    sub = s.subset([5, 1, 3]).subset([-1, 0])              # rows 3 and 5 of s
    assert sub.indices == [13, 15]
    r = ref.rand((4,))
    assert torch.equal(sub.rand((4,)), r[[3, 5]])
    r = ref.rand((4,))
    x = s.rand((4,))
    assert torch.equal(x[[3, 5]], r[[3, 5]])               # advanced through the subset
    assert not torch.equal(x[0], r[0])                     # row 0 is one draw behind
    assert torch.equal(x[0], rng.SampleStreams(2, [10]).rand((4,))[0])


# --- statistics (cheap: < 2 s in all) -----------------------------------------------------------------

def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


@pytest.mark.parametrize("portable", [True, False])
def test_statistics_normal_uniform(portable):
    """Moments, KS against N(0, 1) and U(0, 1), and no correlation between neighbouring sample
    indices or successive draws of one sample. n = 2**17 values: the standard error of a normal
    mean is 0.003, of a correlation 0.003; bounds are ~5 standard errors."""
    stats = pytest.importorskip("scipy.stats")
    s = rng.SampleStreams(12345, range(256), portable=portable)
    shape = (512,) if portable else (rng.CPU_LOOP_MIN + 256,)
    z1, z2 = s.randn(shape), s.randn(shape)
    z = z1.double().flatten()
    assert abs(float(z.mean())) < 0.015 and abs(float(z.var()) - 1) < 0.02
    assert abs(float((z**3).mean())) < 0.035 and abs(float((z**4).mean()) - 3) < 0.07
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert abs(_corr(z1[:-1], z1[1:])) < 0.015            # neighbouring indices, same draw
    assert abs(_corr(z1, z2)) < 0.015                      # successive draws, same sample
    assert abs(_corr(z1[:, :-1], z1[:, 1:])) < 0.015       # neighbouring elements of a row
    u1, u2 = s.rand(shape), s.rand(shape)
    u = u1.double().flatten()
    assert abs(float(u.mean()) - 0.5) < 0.004 and abs(float(u.var()) - 1 / 12) < 0.002
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    assert abs(_corr(u1[:-1], u1[1:])) < 0.015 and abs(_corr(u1, u2)) < 0.015


def test_statistics_one_value_per_row_and_integers():
    """The runner's small draws: one value per sample over 2**16 samples, and class labels."""
    stats = pytest.importorskip("scipy.stats")
    s = rng.SampleStreams(7, range(2**16))
    z, u = s.randn(()), s.rand(())
    assert stats.kstest(z.double().numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(u.double().numpy(), "uniform").pvalue > 1e-3
    assert abs(_corr(z[:-1], z[1:])) < 0.02 and abs(_corr(z, u)) < 0.02
    k = s.randint(10)
    counts = torch.bincount(k, minlength=10).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    assert abs(_corr(k[:-1], k[1:])) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_philox():
    """On CUDA every draw is Philox on the device: integers and uniforms bit for bit as on the CPU
    (portable), normals within float32 rounding of log/cos/sin."""
    for ctr, key, want in [(c, k, w) for r, c, k, w in KAT if r == 10]:
        out = rng.philox4x32([torch.tensor([x], device="cuda") for x in ctr], key)
        assert [int(o) for o in out] == list(want)
    cpu, gpu = rng.SampleStreams(3, range(40), portable=True), rng.SampleStreams(3, range(40))
    for _ in range(2):
        a, b = cpu.randn((3, 32, 32)), gpu.randn((3, 32, 32), device="cuda")
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), rtol=1e-5, atol=1e-5)
        assert torch.equal(cpu.rand((3, 32, 32)), gpu.rand((3, 32, 32), device="cuda").cpu())
        assert torch.equal(cpu.randint(1000), gpu.randint(1000, device="cuda").cpu())
    sub = gpu.subset([5])
    assert torch.equal(sub.rand((4,), device="cuda").cpu()[0], cpu.subset([5]).rand((4,))[0])
