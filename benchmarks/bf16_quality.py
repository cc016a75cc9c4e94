"""Target 3 of issue 7 (quality half): does bf16 autocast change sample quality?

Runs one preset twice on the same seeds, in fp32 and under bfloat16 autocast, then measures both sets
in fp32: the final joint energy E(x, y) (mean, std, and a bootstrap interval of the paired mean
difference) and the fraction of samples that the model assigns to their target class. Prints the
speed ratio (fp32 time / bf16 time) last. On a CPU bf16 is usually *slower* (no bf16 matrix units);
the speed half of the target is a GPU measurement.

    python benchmarks/bf16_quality.py --n 100 --preset robust-jem [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch

import ebmlens
from ebmlens import sampling as S
from ebmlens.rng import SampleStreams


def run(model, pipe, y, seed, dtype, device, batch_size):
    out, secs = [], 0.0
    for s in range(0, len(y), batch_size):
        idx = list(range(s, min(s + batch_size, len(y))))
        g = SampleStreams(seed, idx)
        t0 = time.perf_counter()
        ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
        with ctx:
            x = pipe(model, y[idx], generator=g).images
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        out.append(x.float())
    return torch.cat(out), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ebmlens:cifar10-l2-small")
    ap.add_argument("--preset", default="robust-jem")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = ebmlens.load_model(args.model).to(device)
    stats = ebmlens.bundled_stats(args.model) if args.model.startswith("ebmlens:") else None
    pipe = S.presets.get(args.preset, stats=stats)
    y = torch.arange(args.n, device=device) % model.num_classes
    res = {}
    for dtype in ("fp32", "bf16"):
        x, secs = run(model, pipe, y, args.seed, dtype, device, args.batch_size)
        with torch.no_grad():
            logits = model.logits(x).float()
        e = model.joint_energy_from_logits(logits, y).cpu().numpy()
        hit = (logits.argmax(1) == y).float().cpu().numpy()
        res[dtype] = (e, hit, secs)
        print(f"{dtype}: final E(x,y) {e.mean():.3f} +- {e.std():.3f}; target accuracy {hit.mean():.3f}; "
              f"{secs:.1f} s ({args.n / secs:.2f} images/s)")
    d = res["bf16"][0] - res["fp32"][0]
    rng = np.random.default_rng(0)
    boot = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"paired E(x,y) difference bf16 - fp32: {d.mean():+.3f} (95% bootstrap {lo:+.3f} .. {hi:+.3f}); "
          f"fp32 spread (std) {res['fp32'][0].std():.3f}")
    print(f"target accuracy fp32 {res['fp32'][1].mean():.3f} vs bf16 {res['bf16'][1].mean():.3f}")
    print(f"machine: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"ratio fp32/bf16 time: {res['fp32'][2] / res['bf16'][2]:.3f}")


if __name__ == "__main__":
    main()
