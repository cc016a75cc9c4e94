"""Peak memory of ``ebmlens sample`` does not grow with the number of samples (issue 13).

Each measurement runs ``ebmlens sample`` in a fresh child process (a tiny classifier that takes any
image size, the ``dat2025`` preset with 2 steps from 16 seed images, ``--no-png``, ``--threads 1``,
CPU) and reads the peak resident set size of the command (``VmHWM``, reset after the imports: see
:data:`PROBE`). The peak of
one child varies by tens of MiB from run to run (allocator), so each ``n`` runs ``--repeats`` times,
interleaved, and the medians are compared. The sampling
loop holds a batch or two; the merge streams the shards into ``images.npy`` (and copies it into
``samples.npz``), so the peak should be the same at every ``n`` up to a few bytes per sample (labels
and energies). Checks (the issue's bounds):

* CIFAR size 3x32x32: peak(n = 20,000) <= peak(n = 1,000) + 16 MiB
* 3x224x224: peak(n = 2,000) <= peak(n = 200) + 32 MiB

    python benchmarks/memory.py                 # both checks
    python benchmarks/memory.py --quick         # CIFAR 1,000 vs 5,000 and 224 200 vs 600 (smoke run)
    python benchmarks/memory.py --sizes 32:1000,20000 --sizes 224:200,2000 --batch-size 100

Prints one line per run (n, size, peak MiB, seconds) and ``memory SIZE: +X MiB ... (bound +B MiB) ok|FAIL``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
BOUNDS_MIB = {32: 16, 224: 32}


def tiny_net(num_classes: int = 10) -> nn.Module:
    """A strided conv, pooling and a linear layer: any input size, negligible compute."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def make_files(tmp: Path, size: int) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    net = tiny_net()
    meta = {"arch": "memory:tiny_net", "num_classes": 10, "class_names": [f"c{k}" for k in range(10)],
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_shape": [3, size, size]}
    ckpt = tmp / f"tiny{size}.pt"
    torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, ckpt)
    seeds = tmp / f"seeds{size}.npz"
    images = (torch.rand(16, size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    np.savez(seeds, images=images, labels=np.arange(16) % 10)
    return ckpt, seeds


def peak_rss(ckpt: Path, seeds: Path, n: int, out: Path, batch_size: int) -> tuple[float, float]:
    """``(peak RSS MiB, seconds)`` of one ``ebmlens sample`` child."""
    cmd = ["sample", "--model", f"file:{ckpt}", "--preset", "dat2025",
           "--data", f"npz:{seeds}", "--set", "steps=2", "-n", str(n), "--batch-size", str(batch_size),
           "--device", "cpu", "--threads", "1", "--no-png", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"), str(HERE.parent)) if p)}
    t0 = time.perf_counter()
    # cwd: the run folder's parent, so that the child imports ebmlens from PYTHONPATH, not from the cwd
    proc = subprocess.run([sys.executable, "-c", PROBE, *cmd], env=env, capture_output=True, text=True,
                          cwd=out.parent)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ebmlens sample failed:\n{proc.stderr[-3000:]}")
    kib = int(proc.stdout.strip().splitlines()[-1].split()[1])  # Linux: KiB
    return kib / 1024, seconds


#: the child: import what the command imports, reset the peak (Linux: clear_refs 5 sets VmHWM to the
#: current RSS), run ``ebmlens sample`` in-process, print VmHWM. Without the reset the peak is set by
#: library loading at start-up (~900 MiB with a CUDA build of torch) and hides the run itself.
PROBE = """
import sys
import torch, ebmlens.cli, ebmlens.runs.runner, ebmlens.sampling.presets, ebmlens.models, ebmlens.data
torch.set_num_threads(1)
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    print("cannot reset the peak (no /proc/self/clear_refs): the figures include start-up", file=sys.stderr)
try:
    ebmlens.cli.main.main(args=sys.argv[1:], standalone_mode=False)
finally:
    print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).strip())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", action="append", default=None, metavar="SIZE:N1,N2",
                    help="image side and the two sample counts (repeatable); default 32:1000,20000 and 224:200,2000")
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="children per n; the median peak is compared")
    ap.add_argument("--quick", action="store_true", help="smaller n (a smoke run; the bounds are the same)")
    args = ap.parse_args()
    specs = args.sizes or (["32:1000,5000", "224:200,600"] if args.quick else ["32:1000,20000", "224:200,2000"])
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores; batch size {args.batch_size}; peak RSS of the ebmlens sample child")
    failed = False
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for spec in specs:
            size_s, _, ns = spec.partition(":")
            size = int(size_s)
            small, large = (int(v) for v in ns.split(","))
            ckpt, seeds = make_files(tmp, size)
            peaks: dict[int, list[float]] = {small: [], large: []}
            for r in range(args.repeats):  # interleaved, so a drift of the machine hits both
                for n in (small, large):
                    peak, sec = peak_rss(ckpt, seeds, n, tmp / f"out{size}-{n}-{r}", args.batch_size)
                    peaks[n].append(peak)
                    gib = n * 3 * size * size / 2 ** 30
                    print(f"  {size}x{size} n={n:>6}: peak {peak:8.1f} MiB  ({sec:6.1f} s; images {gib:.3f} GiB)",
                          flush=True)
                    shutil.rmtree(tmp / f"out{size}-{n}-{r}")
            med = {n: float(np.median(v)) for n, v in peaks.items()}
            rise, bound = med[large] - med[small], BOUNDS_MIB.get(size, 32)
            ok = rise <= bound
            failed |= not ok
            print(f"memory {size}: {rise:+.1f} MiB from n={small} to n={large}, medians of {args.repeats} "
                  f"({med[small]:.1f} -> {med[large]:.1f} MiB; bound +{bound} MiB) "
                  f"{'ok' if ok else 'FAIL'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
