"""Target 1 of issue 7: what a full preset costs over the passes it cannot avoid.

A sampler's cost is the classifier's forward + backward pass with respect to the input; everything
else (inits, clipping, projections, noise, energy traces, the pipeline loop) is overhead we control.
This script times

* **pipeline** - a full preset (default ``robust-jem``: GaussianInit -> targeted Linf PGD -> Contrast ->
  SGLD -> Clamp) with per-step energy traces on (``trace_steps=True``), and
* **bare** - a plain loop of the *same number* of input-gradient passes of the same model at the same
  batch size: ``x.requires_grad_(); E = -model.logits(x)[y]; g = autograd.grad(E.sum(), x); x = x - 1e-3 g``,

interleaved (ABBA) after a warm-up, and prints min / median / max and, last, ``overhead: R`` with
``R = median(pipeline) / median(bare)`` (target: R <= 1.10). The passes are counted with a forward hook
on the classifier during one pipeline run (gradient passes and no-grad trace passes separately); the bare
loop repeats the gradient passes only, so trace records and keep-best checks count as overhead.

Default mode also times the pipeline with the runner's per-sample random streams
(:class:`ebmlens.rng.SampleStreams`) and reports memory: peak RSS per image and RSS over repeated runs.

    python benchmarks/overhead.py --quick            # < 40 s on a 2-core CPU
    python benchmarks/overhead.py                    # ResNetSmall, batch 16, full robust-jem
    python benchmarks/overhead.py --device cuda --batch-size 256 --model file:ckpt.pt
    python benchmarks/overhead.py --model wrn-28-10 --batch-size 8 --preset dat2025 --sgld-steps 3 \
        --records none --repeats 3                  # production run of short chains vs the bare loop
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    build_model,
    count_passes,
    fmt_times,
    interleaved,
    machine,
    ratio_band,
    rss_bytes,
    set_threads,
    synthetic_stats,
)


def make_pipeline(args, stats):
    from ebmlens.sampling import presets

    over = {}
    if args.pgd_steps is not None:
        over["attack_steps"] = args.pgd_steps
    if args.sgld_steps is not None:
        over["steps"] = args.sgld_steps
    pipe = presets.get(args.preset, stats=stats, **over)
    from dataclasses import replace

    # records="none" is a production run: no energy records and no per-step traces either
    return replace(pipe, trace_steps=args.records != "none", records=args.records)


def bare_loop(model, x0: torch.Tensor, y: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` forward + backward input-gradient passes of ``E(x, y)``, nothing else."""
    x = x0
    with model.mode("eval"):
        for _ in range(passes):
            xg = x.detach().requires_grad_(True)
            e = -model.logits(xg).gather(1, y.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(e, xg)
            x = xg.detach() - 1e-3 * g
    return x


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model and batch, few repeats (< 40 s on 2 CPU cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (quick: 8)")
    p.add_argument("--model", default=None, help="resnet-small | resnet-tiny | convnet-small | wrn-28-10 | resnet50 | "
                   "any load_model spec "
                   "(default resnet-small; quick: resnet-tiny)")
    p.add_argument("--preset", default="robust-jem")
    p.add_argument("--pgd-steps", type=int, default=None, help="override the preset's attack steps")
    p.add_argument("--sgld-steps", type=int, default=None, help="override the preset's SGLD steps")
    p.add_argument("--repeats", type=int, default=None, help="counted runs per side (default 5; quick 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help="fit class statistics on this data spec (default: synthetic)")
    p.add_argument("--records", default="stages", choices=["stages", "all", "final", "none"],
                   help="the pipeline's energy records (none: also no per-step traces, a production run)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    set_threads(args.threads)
    bs = args.batch_size or (8 if args.quick else 16)
    model_spec = args.model or ("resnet-tiny" if args.quick else "resnet-small")
    repeats = args.repeats or (3 if args.quick else 5)
    if args.quick and args.sgld_steps is None:
        args.sgld_steps = 25  # robust-jem: 15 PGD + 25 SGLD passes
    model = build_model(model_spec, args.device)
    stats = synthetic_stats() if args.data is None else __import__("ebmlens").class_stats(args.data)
    pipe = make_pipeline(args, stats)
    y = torch.arange(bs, device=args.device) % model.num_classes

    with count_passes(model.classifier) as c:
        out = pipe(model, y, generator=torch.Generator().manual_seed(0))
    passes, nograd = c.grad, c.nograd
    x0 = pipe.init(model, y, generator=torch.Generator().manual_seed(0))
    del out

    print(f"machine: {machine()}")
    print(f"model {model_spec} on {args.device}, batch {bs}, preset {args.preset} "
          f"({' -> '.join(type(s).__name__ for s in (pipe.init, *pipe.stages))}), records {pipe.records}, "
          f"trace_steps {'on' if pipe.trace_steps else 'off'}")
    print(f"passes per pipeline run: {passes} forward+backward (input gradient), {nograd} no-grad trace/keep-best")
    try:
        from ebmlens._perf import input_grad_flops

        flops = input_grad_flops(model, 1)
        print(f"model: {flops / 1e6:.1f} MFLOP per image per input-gradient pass")
    except Exception as e:  # noqa: BLE001 - informative only
        flops = 0
        print(f"(flop count unavailable: {e})")

    cands = {
        "pipeline": lambda: pipe(model, y, generator=torch.Generator().manual_seed(1)),
        "bare": lambda: bare_loop(model, x0, y, passes),
    }
    if not args.quick:
        from ebmlens.rng import SampleStreams

        cands["pipeline+streams"] = lambda: pipe(model, y, generator=SampleStreams(1, range(bs)))
    rss_after = []

    def tracked(fn):
        def run():
            fn()
            rss_after.append(rss_bytes()[0])
        return run

    cands["pipeline"] = tracked(cands["pipeline"])
    times = interleaved(cands, repeats=repeats, warmup=1, device=args.device)
    for t in times.values():
        print(fmt_times(t))
    bare = times["bare"]
    if flops:
        print(f"bare loop throughput: {flops * passes * bs / bare.median / 1e9:.2f} GFLOP/s, "
              f"{bs / (bare.median / passes):.1f} image-passes/s")
    if "pipeline+streams" in times:
        r, lo, hi = ratio_band(times["pipeline+streams"], bare)
        print(f"overhead with per-sample streams (runner's generator): {r:.3f} (band {lo:.3f}-{hi:.3f})")
    if not args.quick and args.device == "cpu":
        from ebmlens._perf import peak_memory_per_image

        per = peak_memory_per_image(model, pipe, "cpu", bs)
        print(f"memory: peak RSS rise per image at batch {bs}: {per / 2**20:.2f} MiB")
        print(f"memory: RSS after pipeline run 1: {rss_after[1] / 2**20:.1f} MiB, after run {len(rss_after)}: "
              f"{rss_after[-1] / 2**20:.1f} MiB (growth {(rss_after[-1] - rss_after[1]) / 2**20:+.1f} MiB)")
    elif args.device.startswith("cuda"):
        from ebmlens._perf import peak_memory_per_image

        per = peak_memory_per_image(model, pipe, args.device, bs)
        print(f"memory: peak CUDA memory per image at batch {bs}: {per / 2**20:.2f} MiB")
    r, lo, hi = ratio_band(times["pipeline"], bare)
    print(f"ratio band (min/max .. max/min): {lo:.3f}-{hi:.3f}; wall time {time.perf_counter() - t_start:.1f} s")
    print(f"overhead: {r:.3f}")
    return r


if __name__ == "__main__":
    main()
