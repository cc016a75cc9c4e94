"""Per-sample noise of issue 12: the counter-based :class:`ebmlens.rng.SampleStreams` against the
old per-sample generator loop, measured side by side in one run.

* **old** - one CPU ``torch.Generator`` per sample, seeded with ``sample_seed(seed, i)``; every draw
  loops over the batch in Python, stacks the rows and copies them to the device (the
  ``SampleStreams`` of ebmlens <= issue 11, re-implemented here as the reference);
* **new** - ``SampleStreams`` as shipped: Philox-4x32-10 in int64 tensor ops on the draw's device;
  on the CPU, rows of more than ``CPU_LOOP_MIN`` values take the per-row fast path;
* **new portable** - ``SampleStreams(..., portable=True)``: Philox for every draw (what CUDA runs).

Cases: (a) a ``randn`` of 256 x 3x32x32 (one SGLD step's noise at batch 256); (b) a one-value
``randn`` (and ``rand``, ``randint``) per row at 1,024 and 16,384 rows. Each candidate is timed
over ``--inner`` draws per repeat, interleaved (ABBA) after a warm-up; CPU time on the CPU (wall
after ``cuda.synchronize`` on CUDA). Printed last: ``ratio a`` (new / old per draw, target <= 1)
and ``ratio b`` (16,384 rows / 1,024 rows per implementation, target <= 5).

    OMP_NUM_THREADS=1 python benchmarks/noise.py             # CPU, 1 thread, ~30 s
    python benchmarks/noise.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, ratio_band, set_threads  # noqa: E402

from ebmlens.rng import CPU_LOOP_MIN, SampleStreams, sample_seed  # noqa: E402


class OldStreams:
    """The per-sample generator loop that SampleStreams replaced (reference only)."""

    def __init__(self, seed: int, indices) -> None:
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]

    def randn(self, shape, *, device=None) -> torch.Tensor:
        rows = [torch.randn(shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(device or "cpu")

    def rand(self, shape, *, device=None) -> torch.Tensor:
        rows = [torch.rand(shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(device or "cpu")

    def randint(self, high: int, *, device=None) -> torch.Tensor:
        vals = [int(torch.randint(high, (1,), generator=g)) for g in self.generators]
        return torch.tensor(vals, dtype=torch.long, device=device or "cpu")


def _times(label: str, make: dict, call, inner: int, repeats: int, device: str) -> dict:
    """``{name: Timing}`` of ``inner`` calls of ``call(streams)`` per repeat, per draw in seconds."""
    streams = {name: f() for name, f in make.items()}
    cands = {f"{label} {name}": (lambda s=s: [call(s) for _ in range(inner)]) for name, s in streams.items()}
    out = interleaved(cands, repeats, warmup=1, device=device)
    return {k: dataclasses.replace(t, seconds=tuple(x / inner for x in t.seconds),
                                   wall=tuple(x / inner for x in t.wall)) for k, t in out.items()}


def _fmt(t) -> str:
    wall = f"  [wall median {statistics.median(t.wall) * 1e3:8.3f} ms]" if t.wall else ""
    return (f"{t.name:<34s} {t.clock} ms per draw: min {t.min * 1e3:8.3f}  median {t.median * 1e3:8.3f}  "
            f"max {t.max * 1e3:8.3f}  (n={len(t.seconds)}){wall}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=5, help="draws per timed repeat")
    args = p.parse_args(argv)
    set_threads(args.threads)
    dev = args.device
    print(machine())
    print(f"device {dev}; CPU_LOOP_MIN = {CPU_LOOP_MIN} values per row; times are per draw\n")

    def kinds(n: int) -> dict:
        return {"old": lambda: OldStreams(0, range(n)), "new": lambda: SampleStreams(0, range(n)),
                "new-portable": lambda: SampleStreams(0, range(n), portable=True)}

    a = _times("a randn 256x3x32x32", kinds(256), lambda s: s.randn((3, 32, 32), device=dev),
               args.inner, args.repeats, dev)
    b = {}
    for what, call in (("randn", lambda s: s.randn((), device=dev)), ("rand", lambda s: s.rand((), device=dev)),
                       ("randint", lambda s: s.randint(10, device=dev))):
        for n in (1024, 16384):
            make = {k: v for k, v in kinds(n).items() if k != "new-portable"}   # one value: Philox on both
            b[(what, n)] = _times(f"b {what} () x{n}", make, call, max(1, args.inner * 1024 // n),
                                  max(3, args.repeats - 2 if n > 1024 else args.repeats), dev)
    for t in [*a.values(), *(t for d in b.values() for t in d.values())]:
        print(_fmt(t))

    old, new, port = (a[f"a randn 256x3x32x32 {k}"] for k in ("old", "new", "new-portable"))
    print()
    for name, t in (("new", new), ("new-portable", port)):
        r, lo, hi = ratio_band(t, old)
        print(f"ratio a {name}/old (256 x 3x32x32 randn, per draw {t.median * 1e3:.2f} ms vs "
              f"{old.median * 1e3:.2f} ms): {r:.2f} (band {lo:.2f}-{hi:.2f}; target <= 1)")
    for what in ("randn", "rand", "randint"):
        parts = []
        for k in ("old", "new"):
            big, small = (b[(what, n)][f"b {what} () x{n} {k}"] for n in (16384, 1024))
            r, lo, hi = ratio_band(big, small)
            ms = f"{small.median * 1e3:.2f} -> {big.median * 1e3:.2f} ms"
            parts.append(f"{k} {r:.1f}x (band {lo:.1f}-{hi:.1f}; {ms})")
        print(f"ratio b {what}: 16,384 rows / 1,024 rows: " + ", ".join(parts) + "; target new <= 5")


if __name__ == "__main__":
    main()
