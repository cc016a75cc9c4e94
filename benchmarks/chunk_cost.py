"""Issue 22 item 5: the cost of fixed compute chunks (``EnergyModel.chunked(m)``), side by side in one run.

A sampling step is one forward + input-gradient pass (``input_grad`` of ``E(x, y)``). This times that
pass on one batch with the classifier called on the whole batch (``m = None``, the old way) and on
chunks of exactly ``m`` rows (the last one padded), interleaved (ABBA) after a warm-up, CPU time on
the CPU (``_common.interleaved``). It also runs the ``--preset`` once per batch size in
``--check-sizes`` with the default chunk and checks that the images are the same bits (a smoke check
of what tests/sampling/test_batch_invariance.py tests).

Printed last: ``ratio m=M: R (band lo-hi)`` = chunked time / whole-batch time (> 1: chunks cost more).

    OMP_NUM_THREADS=1 python benchmarks/chunk_cost.py                    # bundled model, batch 256, ~2 min
    python benchmarks/chunk_cost.py --batch-size 64 --chunks 8,16,32 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_model, fmt_times, interleaved, machine, ratio_band, set_threads  # noqa: E402

from ebmlens.energy import input_grad  # noqa: E402
from ebmlens.runs.options import CPU_COMPUTE_CHUNK  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ebmlens:cifar10-l2-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunks", default="8,16,32", help="comma-separated m values")
    ap.add_argument("--passes", type=int, default=3, help="forward + input-gradient passes per repeat")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="robust-jem")
    ap.add_argument("--check-sizes", default="1,3,7,16", help="batch sizes of the smoke check ('' = none)")
    a = ap.parse_args()
    set_threads(a.threads)
    model = build_model(a.model, a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch_size, *model.input_shape, generator=g).to(a.device)
    y = torch.randint(0, model.num_classes, (a.batch_size,), generator=g).to(a.device)

    def passes(m):
        def run() -> None:
            with model.chunked(m):
                for _ in range(a.passes):
                    input_grad(model, x, model.joint_energy_from_logits, y)
        return run

    chunks = [int(c) for c in a.chunks.split(",") if c]
    cands = {"whole batch": passes(None), **{f"m={m}": passes(m) for m in chunks}}
    print(machine())
    print(f"model {a.model}, batch {a.batch_size}, {a.passes} forward + input-gradient passes per repeat, "
          f"{a.repeats} repeats")
    times = interleaved(cands, a.repeats, device=a.device)
    for t in times.values():
        print(fmt_times(t))
    if a.check_sizes:
        print(_check(model, a, [int(s) for s in a.check_sizes.split(",")]))
    for m in chunks:
        r, lo, hi = ratio_band(times[f"m={m}"], times["whole batch"])
        print(f"ratio m={m}: {r:.3f} (band {lo:.3f}-{hi:.3f})")


def _check(model, a, sizes: list[int]) -> str:
    """The preset (5 attack + 5 SGLD steps where it has them) on 16 samples at each batch size."""
    from ebmlens.models.bundled import bundled_stats
    from ebmlens.rng import SampleStreams
    from ebmlens.sampling import presets

    pipe = presets.get(a.preset, stats=bundled_stats(model.name), steps=5,
                       **({"attack_steps": 5} if a.preset == "robust-jem" else {}))
    y = torch.arange(16, device=a.device) % model.num_classes
    outs = []
    with model.chunked(CPU_COMPUTE_CHUNK):
        for b in sizes:
            outs.append(torch.cat([pipe(model, y[s:s + b],
                                        generator=SampleStreams(0, list(range(s, min(16, s + b))))).images
                                   for s in range(0, 16, b)]))
    same = all(torch.equal(o, outs[0]) for o in outs)
    return f"{a.preset} with m={CPU_COMPUTE_CHUNK}, batch sizes {sizes}: images {'identical' if same else 'DIFFER'}"


if __name__ == "__main__":
    main()
