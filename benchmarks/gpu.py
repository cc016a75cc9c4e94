"""Issue 12's GPU benchmark: ebmlens's samplers against the reference loops on WRN-28-10 and ResNet-50.

One command; designed for under 8 minutes on one H100/H200 including compilation (compile time is
printed apart). Models, random weights: the RobustBench zoo's WideResNet-28-10 (CIFAR-10, 32x32) and
torchvision's ResNet-50 at 224x224. Per model, each comparison starts both sides from the same images
and runs equal steps:

* ``santurkar2019`` (targeted L2 PGD, keep best), ``mirza2024`` (momentum SGLD) and ``jempp`` (PYLD)
  against their reference loops (``reference_loops.py``: the robustness library, Mirza et al.'s code,
  JEM++'s ``sample_q``), each at the same dtype: **fp32 vs fp32** and **bf16 vs the reference loop
  under the same autocast**; then the **best ebmlens path** (fastest of fp32 / bf16 / ``fast``) against
  the **fp32 reference**, labelled as such;
* ``robust-jem`` (no public code) against the **bare loop** of the same number of input-gradient passes.

``fast`` = what ``ebmlens sample --fast`` does on CUDA (:data:`ebmlens._perf.FAST_CUDA`: bf16 autocast,
channels_last, torch.compile "reduce-overhead" with CUDA graphs, TF32 matmuls) on a copy of the model;
on the CPU it is skipped (it does nothing there). Reported for each ebmlens run: images/s, achieved
TFLOP/s (``ebmlens._perf.input_grad_flops`` x counted gradient passes), the fraction of the device's
dense peak for that dtype (table :data:`PEAKS` keyed by ``torch.cuda.get_device_name()``, each number
with its source; "peak unknown" otherwise), peak memory per image (CUDA allocator; CPU: peak RSS rise)
and the share of time spent generating noise (``ebmlens.rng`` draws, timed in a separate run with a
device sync around each draw). Equal quality is checked by ``bf16_quality.py`` (not here). Ratios
(reference time / ebmlens time; > 1: ebmlens faster) print last; ``--json PATH`` writes everything.

    python benchmarks/gpu.py                               # CUDA: wrn-28-10 + resnet50, published steps
    OMP_NUM_THREADS=2 python benchmarks/gpu.py --quick     # CPU smoke run, small models, < ~60 s on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_model, count_passes, interleaved, machine, set_threads  # noqa: E402
from reference_loops import USpaceNet, jempp_reference, mirza_reference, robustness_pgd_reference  # noqa: E402

#: dense (no sparsity) peak TFLOP/s per dtype; keys are substrings of ``torch.cuda.get_device_name()``,
#: tried in order. Sources: NVIDIA's data sheets (sparsity figures halved).
PEAKS: list[tuple[str, dict[str, float], str]] = [
    ("H200", {"bfloat16": 989.5, "float32": 67.0},
     "NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 TFLOPS with sparsity, FP32 67 TFLOPS"),
    ("H100 PCIe", {"bfloat16": 756.5, "float32": 51.0},
     "NVIDIA H100 Tensor Core GPU datasheet (PCIe): BF16 1,513 TFLOPS with sparsity, FP32 51 TFLOPS"),
    ("H100", {"bfloat16": 989.5, "float32": 67.0},
     "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS with sparsity, FP32 67 TFLOPS"),
    ("A100", {"bfloat16": 312.0, "float32": 19.5},
     "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense, FP32 19.5 TFLOPS"),
]


def peak_for(device: str, dtype: str) -> tuple[float | None, str]:
    """``(dense peak TFLOP/s, source)`` of ``device`` for ``dtype`` (fast runs count as bf16)."""
    if not device.startswith("cuda"):
        return None, "peak unknown (CPU)"
    name = torch.cuda.get_device_name()
    for key, peaks, source in PEAKS:
        if key in name and "NVL" not in name:
            return peaks["bfloat16" if dtype in ("bfloat16", "fast") else "float32"], source
    return None, f"peak unknown ({name})"


@dataclasses.dataclass
class Case:
    """One comparison: ``ref(x0, y, seed)`` and ``ours(model, x0, y, seed)`` return images."""

    name: str
    ref: object            # None: the bare loop of ours's gradient passes
    ours: object
    mode: str = "eval"


def cases(model, steps: dict[str, int], stats) -> list[Case]:
    from ebmlens.attacks import L2Ball
    from ebmlens.rng import SampleStreams
    from ebmlens.sampling import SGLD, DataInit, MomentumSGLD, TargetedPGD, presets

    def streams(seed, n):
        return SampleStreams(seed, range(n))

    pgd = TargetedPGD(L2Ball(30.0), steps=steps["santurkar2019"], step_size=0.5, loss="ce", keep_best=True)
    mom = MomentumSGLD(steps=steps["mirza2024"])
    pyld = SGLD(step_size=0.1, noise=0.005, steps=steps["jempp"], inner_steps=6, grad_clip=2.0)
    fu = USpaceNet(model)

    def gen(seed, x):
        return torch.Generator(device=x.device).manual_seed(seed)

    def robust_jem(m, x0, y, seed):
        pipe = presets.get("robust-jem", stats=stats, attack_steps=steps["robust-jem-pgd"],
                           steps=steps["robust-jem-sgld"])
        pipe = dataclasses.replace(pipe, init=DataInit(x0))  # same starting images as the bare loop
        return pipe(m, y, generator=streams(seed, len(y))).images

    return [
        Case("santurkar2019",
             lambda x0, y, s: robustness_pgd_reference(model, x0, y, iterations=steps["santurkar2019"]),
             lambda m, x0, y, s: pgd(m, x0, y)),
        Case("mirza2024",
             lambda x0, y, s: mirza_reference(model, x0, y, steps=steps["mirza2024"], generator=gen(s, x0)),
             lambda m, x0, y, s: mom(m, x0, y, generator=streams(s, len(y)))),
        Case("jempp", lambda x0, y, s: ((jempp_reference(fu, 2 * x0 - 1, y, n_steps=steps["jempp"], in_steps=5,
                                                         generator=gen(s, x0)) + 1) / 2).clamp(0, 1),
             lambda m, x0, y, s: pyld(m, x0, y, generator=streams(s, len(y))), mode="train"),
        Case("robust-jem", None, robust_jem),
    ]


def bare_loop(model, x0, y, passes: int):
    x = x0
    for _ in range(passes):
        xg = x.detach().requires_grad_(True)
        e = -model(xg).float().gather(1, y.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(e, xg)
        x = xg.detach() - 1e-3 * g
    return x


def noise_share(fn, device: str) -> float:
    """Share of ``fn()``'s wall time inside ``ebmlens.rng`` draws (synced around each draw on CUDA)."""
    from ebmlens import rng

    spent = [0.0]
    originals = {k: getattr(rng, k) for k in ("randn", "rand", "randint")}

    def timed(f):
        def run(*a, **k):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = f(*a, **k)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            spent[0] += time.perf_counter() - t
            return out
        return run

    for k, f in originals.items():
        setattr(rng, k, timed(f))
    try:
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
    finally:
        for k, f in originals.items():
            setattr(rng, k, f)
    return spent[0] / total if total > 0 else 0.0


def run_model(spec: str, bs: int, steps: dict[str, int], args, log) -> dict:
    from _common import synthetic_stats

    from ebmlens._perf import (
        autocast_context,
        fast_settings,
        input_grad_flops,
        matmul_precision,
        peak_memory_per_image,
        prepare_model,
    )

    dev = args.device
    t_build = time.perf_counter()
    model = build_model(spec, dev)
    shape, k = tuple(model.input_shape), int(model.num_classes)
    stats = synthetic_stats(shape=(3, 8, 8), num_classes=k, rank=2)  # robust-jem's preset: its init is replaced
    y = torch.arange(bs, device=dev) % k
    x0 = torch.rand(bs, *shape, generator=torch.Generator().manual_seed(0)).to(dev)  # same start, both sides
    flops = input_grad_flops(model, 1)
    log(f"\n== {spec}: input {shape}, {k} classes, batch {bs}, {flops / 1e9:.2f} GFLOP per image per "
        f"input-gradient pass (built in {time.perf_counter() - t_build:.1f} s)")
    fast_model = None
    if dev.startswith("cuda"):
        f = fast_settings(dev)
        fast_model = prepare_model(model, channels_last=f["channels_last"], compile=True,
                                   compile_mode=f["compile_mode"], inplace=False)
    results = {}
    for case in cases(model, steps, stats):
        with count_passes(model.classifier) as c, model.mode(case.mode):
            case.ours(model, x0, y, 0)
        passes = c.grad
        ref = case.ref if case.ref is not None else (lambda x0_, y_, s, n=passes: bare_loop(model, x0_, y_, n))
        ref_name = "reference" if case.ref is not None else "bare loop"
        entry: dict = {"gradient_passes": passes, "no_grad_forwards": c.nograd, "against": ref_name, "runs": {}}
        variants = [("float32", model, "float32", None), ("bfloat16", model, "bfloat16", None)]
        if fast_model is not None:
            variants.append(("fast", fast_model, "bfloat16", "high"))
        for label, m, dtype, prec in variants:
            with model.mode(case.mode), matmul_precision(prec):
                ctx = autocast_context(dev, dtype)

                def run_ours(m=m, ctx=ctx):
                    return _in(ctx, lambda: case.ours(m, x0, y, 1))

                def run_ref(ctx=ctx):
                    return _in(ctx, lambda: ref(x0, y, 1))

                compile_s = None
                if label == "fast":
                    t = time.perf_counter()
                    run_ours()
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t   # first call: compile + CUDA-graph capture
                cands = {f"{ref_name} {dtype}": run_ref, f"ebmlens {label}": run_ours}
                if label == "fast":
                    cands = {f"ebmlens {label}": run_ours}
                times = interleaved(cands, repeats=args.repeats, warmup=0 if args.quick else 1, device=dev)
                sec = times[f"ebmlens {label}"].median
                peak, source = peak_for(dev, label)
                tflops = flops * passes * bs / sec / 1e12
                run = {"seconds": sec, "images_per_s": bs / sec, "tflops": tflops,
                       "fraction_of_peak": (tflops / peak) if peak else None, "peak_source": source}
                if compile_s is not None:
                    run["compile_s"] = compile_s
                if label != "fast":
                    run["reference_seconds"] = times[f"{ref_name} {dtype}"].median
                    run["ratio"] = run["reference_seconds"] / sec
                run["noise_share"] = noise_share(run_ours, dev)
                if label == "float32":
                    def unit(mm, b):
                        return _in(ctx, lambda: case.ours(mm, x0[:b], y[:b], 2))

                    run["peak_memory_per_image_mb"] = peak_memory_per_image(m, unit, dev, bs) / 2**20
                entry["runs"][label] = run
                frac = f"{run['fraction_of_peak']:.1%} of peak" if run["fraction_of_peak"] is not None else source
                log(f"{case.name:<14s} {label:<9s} {sec:8.3f} s  {bs / sec:9.1f} img/s  {tflops:7.3f} TFLOP/s  "
                    f"({frac})  noise {run['noise_share']:.1%}"
                    + (f"  compile {compile_s:.1f} s" if compile_s is not None else "")
                    + (f"  {ref_name} {run['reference_seconds']:.3f} s" if "reference_seconds" in run else ""))
        best = min(entry["runs"], key=lambda v: entry["runs"][v]["seconds"])
        entry["best"] = {"path": best, "ratio_vs_fp32_reference":
                         entry["runs"]["float32"]["reference_seconds"] / entry["runs"][best]["seconds"]}
        results[case.name] = entry
    return results


def _in(ctx, fn):
    with ctx:
        return fn()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: small models, few steps (< ~60 s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=None, help="counted runs per side (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's own)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.threads:
        set_threads(args.threads)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        models = [("resnet-tiny", 4), ("convnet-small", 4)]
        steps = {"santurkar2019": 2, "mirza2024": 2, "jempp": 1, "robust-jem-pgd": 1, "robust-jem-sgld": 2}
    else:
        models = [("wrn-28-10", 256), ("resnet50", 128)]
        steps = {"santurkar2019": 60, "mirza2024": 50, "jempp": 10, "robust-jem-pgd": 15, "robust-jem-sgld": 50}
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    log(f"machine: {machine()}")
    log(f"device {args.device}; steps {steps}; repeats {args.repeats} (+{0 if args.quick else 1} warm-up); clock: "
        f"{'wall after cuda.synchronize' if args.device.startswith('cuda') else 'CPU time of this process'}")
    if args.quick:
        log("--quick: a smoke run of the whole benchmark (1 repeat, no warm-up): its times are not measurements")
    if not args.device.startswith("cuda"):
        log("fast path skipped: it does nothing on the CPU (ebmlens sample --fast); GPU numbers: not measured here")
    out = {"machine": machine(), "device": args.device, "quick": args.quick, "steps": steps, "models": {}}
    for spec, bs in models:
        out["models"][spec] = run_model(spec, bs, steps, args, log)
    out["wall_s"] = time.perf_counter() - t0
    log(f"\nwall time {out['wall_s']:.1f} s (compile times above are included)")
    log("ratios (reference time / ebmlens time at the same dtype; > 1: ebmlens faster):")
    for spec, res in out["models"].items():
        for name, e in res.items():
            for label, r in e["runs"].items():
                if "ratio" in r:
                    log(f"ratio {spec} {name} {label} vs {e['against']} {label}: {r['ratio']:.3f}")
            log(f"ratio {spec} {name} best ebmlens path ({e['best']['path']}) vs fp32 {e['against']}: "
                f"{e['best']['ratio_vs_fp32_reference']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
