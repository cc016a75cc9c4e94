"""Target 2 of issue 7: ebmlens's stages against the reference samplers' loops, re-implemented plainly.

Three published update rules, written here as the plain fp32 loops their code runs (our own code,
from the published descriptions; see /work/shared/BRIEF.md), each timed against the equivalent
ebmlens stage at equal steps, on the same model, batch and starting images:

1. **JEM++ SGLD / PYLD** (Yang & Ji 2021, ``eval_jempp.py``'s ``sample_q``): pixels ``u`` in [-1, 1], the
   classifier takes ``u``. Per outer step one full forward + backward gives ``df_y/du`` and, in the same
   backward, the gradient ``p`` at the first layer's output; then ``u <- clip(u + lr clip(df_y/du, -1, 1), -1, 1)``
   and ``N`` inner updates, each re-evaluating the first layer only (``H(u) = <layer1(u), p>``,
   ``u <- clip(u + lr clip(dH/du, -1, 1), -1, 1)``), then ``u <- u + s z``. Defaults: ``M = 10, N = 5,
   lr = 0.2, s = 0.01``, BatchNorm in train mode. That is ``1 + N`` clipped updates per outer step, so the
   ebmlens side is ``SGLD(step_size=0.1, grad_clip=2, noise=0.005, steps=M, inner_steps=N + 1)`` (the
   conversion of :mod:`ebmlens.sampling.sgld`); ebmlens reuses the outer gradient instead of the first-layer
   re-evaluations (equal for the affine first layer) and clamps after the noise too.
2. **Mirza et al. 2024 momentum SGLD** (their ``image_generation`` code, Eq. 7): ``x`` in [0, 1],
   ``v <- zeta v - (eta/2) dE(x,y)/dx``, ``x <- clip(x + clip(v + sqrt(2 eta) 0.001 z, -1, 1), 0, 1)``;
   ``eta = 0.8``, 50 steps, ``zeta = 0``. ebmlens: ``MomentumSGLD()`` (its defaults are these).
3. **robustness library targeted L2 PGD** (Santurkar et al. 2019's generation): ``x`` in [0, 1],
   per step the per-sample cross-entropy to the target, ``x <- x - a g/(||g||_2 + 1e-10)``, the difference
   to the seed renormed to ``||.||_2 <= eps``, clamp to [0, 1], keeping each sample's lowest-loss iterate
   (checked once more after the last step); ``eps = 30, a = 0.5``, 60 steps. ebmlens:
   ``TargetedPGD(L2Ball(30), 60, 0.5, loss="ce", keep_best=True)``.

Every comparison is interleaved (ABBA) after a warm-up, reported as min / median / max; the ratio is
``median(reference) / median(ebmlens)`` (> 1: ebmlens faster) with the band ``min/max .. max/min``.
Quality: the final ``E(x, y)`` of both sides (BatchNorm in eval mode), mean +- std, a Kolmogorov-Smirnov
and a Welch t statistic on runs with *independent* noise; with ``--same-noise`` (default on, not in quick)
also the largest pixel difference when both draw the same noise (an equivalence check). Precision:
fp32 on both sides, as published. Ratios are printed last.

    python benchmarks/reference_loops.py --quick
    python benchmarks/reference_loops.py --model file:runs/cifar10-l2-small/epoch_001.pt
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    build_model,
    fmt_times,
    interleaved,
    machine,
    ratio_band,
    set_threads,
    summary_line,
    synthetic_stats,
    two_sample,
)


# ============================================================================ reference 1: JEM++ PYLD
class USpaceNet(nn.Module):
    """The classifier as JEM++'s code sees it: input ``u = 2x - 1`` in [-1, 1]; the normalization of the
    ebmlens wrapper is folded into one affine map, so a forward costs what ``EnergyModel.logits`` costs."""

    def __init__(self, model) -> None:
        super().__init__()
        self.classifier = model.classifier
        self.register_buffer("shift", 2 * model.mean - 1)   # (x - m)/s = (u - (2m - 1)) / (2s)
        self.register_buffer("scale", 2 * model.std)
        self.layer_one = next(m for m in self.classifier.modules() if isinstance(m, nn.Conv2d))
        self.layer_one_out: torch.Tensor | None = None
        self.layer_one.register_forward_hook(self._keep)

    def _keep(self, mod, args, out) -> None:
        self.layer_one_out = out

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.classifier((u - self.shift) / self.scale)

    def layer_one_only(self, u: torch.Tensor) -> torch.Tensor:
        return self.layer_one((u - self.shift) / self.scale)


def jempp_reference(f: USpaceNet, u: torch.Tensor, y: torch.Tensor, *, n_steps: int = 10, in_steps: int = 5,
                    lr: float = 0.2, std: float = 0.01, generator: torch.Generator) -> torch.Tensor:
    """JEM++'s PYLD loop in [-1, 1] (see module doc). Returns ``u``."""
    u = u.clone()
    for _ in range(n_steps):
        uk = u.requires_grad_(True)
        logits = f(uk)
        e = logits.gather(1, y.view(-1, 1)).sum()             # f(u)[y], ascended
        eta, p = torch.autograd.grad(e, [uk, f.layer_one_out])
        tmp = torch.clamp(uk.detach() + lr * eta.clamp(-1, 1), -1, 1)
        for _ in range(in_steps):
            tmp = tmp.requires_grad_(True)
            h = (f.layer_one_only(tmp) * p).sum()              # the first layer's "Hamiltonian"
            (g,) = torch.autograd.grad(h, tmp)
            tmp = torch.clamp(tmp.detach() + lr * g.clamp(-1, 1), -1, 1)
        u = tmp.detach()
        if std > 0:
            u = u + std * torch.randn(u.shape, generator=generator, device=u.device)
    return u.detach()


# ============================================================================ reference 2: Mirza et al.
def mirza_reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eta: float = 0.8, steps: int = 50,
                    zeta: float = 0.0, sigma: float = 0.001, generator: torch.Generator) -> torch.Tensor:
    """Momentum SGLD of Mirza et al. (Eq. 7 with their code's clipping), ``x`` in [0, 1]."""
    v = torch.zeros_like(x)
    x = x.clone()
    for _ in range(steps):
        xk = x.requires_grad_(True)
        energy = -net(xk).gather(1, y.view(-1, 1)).sum()       # E(x, y)
        (g,) = torch.autograd.grad(energy, xk)
        v = zeta * v - eta / 2 * g
        noise = math.sqrt(2 * eta) * sigma * torch.randn(x.shape, generator=generator, device=x.device)
        x = torch.clamp(xk.detach() + torch.clamp(v + noise, -1, 1), 0, 1)
    return x.detach()


# ============================================================================ reference 3: robustness L2 PGD
def robustness_pgd_reference(net: nn.Module, x0: torch.Tensor, target: torch.Tensor, *, eps: float = 30.0,
                             step_size: float = 0.5, iterations: int = 60) -> torch.Tensor:
    """Targeted L2 PGD with normalized steps, renorm projection, clamp and keep-best (robustness library's
    rule as used for generation), ``x`` in [0, 1]."""
    x = x0.clone()
    best_x, best_loss = None, None
    for _ in range(iterations):
        xk = x.requires_grad_(True)
        losses = F.cross_entropy(net(xk), target, reduction="none")
        (g,) = torch.autograd.grad(-losses.mean(), xk)         # targeted: ascend -loss
        losses = losses.detach()
        if best_loss is None:
            best_x, best_loss = xk.detach().clone(), losses.clone()
        else:
            better = losses < best_loss
            best_x[better] = xk.detach()[better]
            best_loss[better] = losses[better]
        norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x = xk.detach() + step_size * g / (norm + 1e-10)
        diff = (x - x0).renorm(p=2, dim=0, maxnorm=eps)
        x = torch.clamp(x0 + diff, 0, 1)
    with torch.no_grad():
        losses = F.cross_entropy(net(x), target, reduction="none")
    better = losses < best_loss
    best_x[better] = x[better]
    return best_x


# ============================================================================ harness
def final_energy(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.mode("eval"):
        return model.joint_energy(x, y).cpu()


def compare(name, model, ref_fn, ours_fn, y, repeats, warmup, device, same_noise: bool, log):
    """Time ``ref_fn(seed)`` vs ``ours_fn(seed)`` (each returns images in [0, 1]) and compare final energies."""
    times = interleaved({f"{name} reference": lambda: ref_fn(1), f"{name} ebmlens": lambda: ours_fn(1)},
                        repeats=repeats, warmup=warmup, device=device)
    for t in times.values():
        log(fmt_times(t))
    xr, xo = ref_fn(11), ours_fn(12)                      # independent noise
    er, eo = final_energy(model, xr, y), final_energy(model, xo, y)
    st = two_sample(er, eo)
    log(f"{name}: final E(x,y) reference {summary_line(er)} | ebmlens {summary_line(eo)} | "
        f"KS {st['ks']:.3f} (p={st['ks_p']:.2f}), Welch t {st['t']:+.2f} (p={st['t_p']:.2f})")
    if same_noise:
        d = (ref_fn(5) - ours_fn(5)).abs().max().item()
        log(f"{name}: same noise, max |x_reference - x_ebmlens| = {d:.2e}")
    return ratio_band(times[f"{name} reference"], times[f"{name} ebmlens"]), st


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, batch 8, fewer steps (a smoke run, ~1 min)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (quick: 8)")
    p.add_argument("--model", default=None, help="resnet-small (default) | resnet-tiny | any load_model spec")
    p.add_argument("--repeats", type=int, default=None, help="counted runs per side (default 3; quick 2)")
    p.add_argument("--only", default="jempp,mirza,robustness", help="comma-separated subset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help="fit the seeds' class statistics on this data spec (default synthetic)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    set_threads(args.threads)
    dev = args.device
    bs = args.batch_size or (8 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 3)
    model = build_model(args.model or ("resnet-tiny" if args.quick else "resnet-small"), dev)
    stats = synthetic_stats() if args.data is None else __import__("ebmlens").class_stats(args.data)
    from ebmlens.attacks import L2Ball
    from ebmlens.sampling import SGLD, GaussianInit, MomentumSGLD, TargetedPGD

    y = torch.arange(bs, device=dev) % model.num_classes
    x0 = GaussianInit(stats)(model, y, generator=torch.Generator().manual_seed(0))   # (N, 3, 32, 32) in [0, 1]
    steps = {"jempp": 10, "mirza": 20 if args.quick else 50, "robustness": 20 if args.quick else 60}
    same_noise = not args.quick
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    log(f"machine: {machine()}")
    log(f"model {model.name} on {dev}, batch {bs}, fp32 both sides, steps {steps}, repeats {repeats} (+1 warm-up)")
    ratios = {}
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]

    if "jempp" in wanted:
        fu = USpaceNet(model).to(dev)
        stage = SGLD(step_size=0.1, noise=0.005, steps=steps["jempp"], inner_steps=6, grad_clip=2.0, energy="joint")

        def ref(seed):
            with model.mode("train"):
                u = jempp_reference(fu, 2 * x0 - 1, y, n_steps=steps["jempp"], in_steps=5,
                                    generator=torch.Generator().manual_seed(seed))
            return ((u + 1) / 2).clamp(0, 1)

        def ours(seed):
            with model.mode("train"):
                return stage(model, x0, y, generator=torch.Generator().manual_seed(seed))

        ratios["jempp-sgld"] = compare("jempp-sgld", model, ref, ours, y, repeats, 1, dev, same_noise, log)

    if "mirza" in wanted:
        stage_m = MomentumSGLD(steps=steps["mirza"])

        def ref_m(seed):
            with model.mode("eval"):
                return mirza_reference(model, x0, y, steps=steps["mirza"],
                                       generator=torch.Generator().manual_seed(seed))

        def ours_m(seed):
            with model.mode("eval"):
                return stage_m(model, x0, y, generator=torch.Generator().manual_seed(seed))

        ratios["mirza-momentum-sgld"] = compare("mirza-momentum-sgld", model, ref_m, ours_m, y, repeats, 1, dev,
                                                same_noise, log)

    if "robustness" in wanted:
        stage_p = TargetedPGD(L2Ball(30.0), steps=steps["robustness"], step_size=0.5, loss="ce", keep_best=True)

        def ref_p(seed):
            with model.mode("eval"):
                return robustness_pgd_reference(model, x0, y, iterations=steps["robustness"])

        def ours_p(seed):
            with model.mode("eval"):
                return stage_p(model, x0, y, generator=None)

        ratios["robustness-l2-pgd"] = compare("robustness-l2-pgd", model, ref_p, ours_p, y, repeats, 1, dev,
                                              same_noise, log)

    print(f"wall time {time.perf_counter() - t0:.1f} s")
    if not dev.startswith("cuda"):
        print("GPU 3x target: not measured (no GPU in this session)")
    print("ratios (reference time / ebmlens time; > 1 means ebmlens is faster; band = min/max .. max/min):")
    for k, ((r, lo, hi), _) in ratios.items():
        print(f"ratio {k}: {r:.3f} (band {lo:.3f}-{hi:.3f})")
    return ratios


if __name__ == "__main__":
    main()
