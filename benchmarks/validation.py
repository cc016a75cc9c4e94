"""What input checks cost, and how fast the CLI answers ``--help``.

1. ``model.energy(x)`` (validated: layout, dtype, NaN/inf, pixel range; one device sync) against the
   unchecked ``model.energy_from_logits(model(x))`` on the bundled model, batch 256, one thread,
   measured side by side (alternating, median of ``--repeats``). Target: ratio <= 1.02.
2. On CUDA (if present): device-to-host syncs per checked ``energy()`` / ``joint_energy()`` call,
   counted with ``torch.cuda.set_sync_debug_mode("warn")``. Target: <= 1.
3. ``ebmlens --help`` and ``ebmlens sample --help`` wall time in a fresh process (median of 5).
   Target: < 0.5 s on an idle machine.

    python benchmarks/validation.py [--repeats 30] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import torch

import ebmlens


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def validation_cost(batch_size: int, repeats: int) -> float:
    torch.set_num_threads(1)
    m = ebmlens.load_model(ebmlens.DEFAULT_MODEL)
    x = torch.rand(batch_size, *m.input_shape, generator=torch.Generator().manual_seed(0))
    checked = lambda: m.energy(x)  # noqa: E731
    unchecked = lambda: m.energy_from_logits(m(x))  # noqa: E731
    with torch.no_grad():
        checked(), unchecked()  # warm up
        a, b = [], []
        for _ in range(repeats):  # alternate, so load changes hit both
            a += _time(checked, 1)
            b += _time(unchecked, 1)
    ra, rb = statistics.median(a), statistics.median(b)
    print(f"energy() checked {ra * 1e3:.2f} ms vs unchecked {rb * 1e3:.2f} ms (batch {batch_size}, 1 thread, "
          f"median of {repeats})")
    return ra / rb


def cuda_syncs() -> str:
    if not torch.cuda.is_available():
        return "not measured (no CUDA device)"
    m = ebmlens.load_model(ebmlens.DEFAULT_MODEL, device="cuda")
    x = torch.rand(64, *m.input_shape, device="cuda")
    y = torch.zeros(64, dtype=torch.long, device="cuda")
    counts = {}
    with torch.no_grad():
        for name, fn in (("energy", lambda: m.energy(x)), ("joint_energy", lambda: m.joint_energy(x, y))):
            fn()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fn()
            torch.cuda.set_sync_debug_mode("default")
            counts[name] = sum("synchroniz" in str(r.message) for r in w)
    return ", ".join(f"{k}: {v} sync(s) per call" for k, v in counts.items())


def help_time(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ebmlens", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    ratio = validation_cost(a.batch_size, a.repeats)
    print(f"CUDA syncs: {cuda_syncs()}")
    for args in (["--help"], ["sample", "--help"]):
        print(f"ebmlens {' '.join(args)}: {help_time(args):.3f} s (median of 5, fresh process)")
    print(f"validation overhead: {ratio:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
