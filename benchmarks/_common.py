"""Shared helpers of the benchmarks: models, synthetic statistics, interleaved timing, memory.

Timing on a shared machine is noisy, so every comparison here runs its candidates *interleaved*
(A, B, B, A, A, B, ...: an ABBA order, so a slow drift hits both sides alike), after warm-up
runs that are not counted, and reports min / median / max of the repeats. The minimum is the
least disturbed estimate of the true cost; the spread is the noise band.

Clock. On the CPU the ratios use the **CPU time of this process** (``time.process_time``; torch runs
single-threaded here), which other processes competing for the core barely disturb, while wall time
on a loaded 2-core machine varies by +-30%; wall time is printed beside it. On CUDA the clock is wall
time after ``torch.cuda.synchronize()``.

Not part of the package (benchmarks are not run as tests); ``python benchmarks/overhead.py --help``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ebmlens._perf import _cpu_rss

__all__ = ["Timing", "set_threads", "build_model", "synthetic_stats", "interleaved", "ratio_band",
           "rss_bytes", "machine", "count_passes", "fmt_times", "summary_line", "two_sample"]


@dataclass(frozen=True)
class Timing:
    """Seconds of the counted repeats of one candidate."""

    name: str
    seconds: tuple[float, ...]
    wall: tuple[float, ...] = ()
    clock: str = "wall"

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)


def set_threads(n: int = 1) -> None:
    """Same thread count for both sides of every comparison (1 by default: fair on a shared machine)."""
    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def build_model(spec: str, device: str, seed: int = 0):
    """``"resnet-small"`` / ``"convnet-small"`` (random weights, seeded), ``"resnet-tiny"`` (ResNetSmall
    with widths (16, 32, 64, 128), for ``--quick``), ``"wrn-28-10"`` / ``"resnet50"`` (:func:`_big_model`) or any
    :func:`ebmlens.load_model` spec (``file:PATH``, ``ebmlens:NAME``, ...). Returns an :class:`ebmlens.EnergyModel`
    in eval mode on ``device``."""
    from ebmlens.energy import EnergyModel
    from ebmlens.models.archs import ConvNetSmall, ResNetSmall

    builders = {"resnet-small": lambda: ResNetSmall(10), "convnet-small": lambda: ConvNetSmall(10),
                "resnet-tiny": lambda: ResNetSmall(10, widths=(16, 32, 64, 128))}
    if spec in ("wrn-28-10", "resnet50"):
        return _big_model(spec, device, seed)
    if spec in builders:
        torch.manual_seed(seed)  # a benchmark script is the top level: seeding here is ours to do
        net = builders[spec]()
        model = EnergyModel(net, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
                            input_shape=(3, 32, 32), num_classes=10, source="random", name=spec)
    else:
        import ebmlens

        model = ebmlens.load_model(spec)
    return model.to(device).eval()


def _big_model(spec: str, device: str, seed: int):
    """``"wrn-28-10"``: the RobustBench zoo's WideResNet-28-10 (CIFAR-10, 32x32; needs robustbench, imported
    offline through :func:`ebmlens.models.robustbench.import_zoo`); ``"resnet50"``: torchvision's ResNet-50
    at 224x224, 1,000 classes. Random weights (seeded), RobustBench-style (normalization inside: none here)."""
    from ebmlens.energy import EnergyModel

    torch.manual_seed(seed)  # a benchmark script is the top level: seeding here is ours to do
    if spec == "wrn-28-10":
        from ebmlens.models.robustbench import import_zoo

        import_zoo()
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        net, shape, k = WideResNet(depth=28, widen_factor=10, num_classes=10), (3, 32, 32), 10
    else:
        import torchvision

        net, shape, k = torchvision.models.resnet50(weights=None), (3, 224, 224), 1000
    model = EnergyModel(net, input_shape=shape, num_classes=k, source="random", name=spec)
    return model.to(device).eval()


def synthetic_stats(shape=(3, 32, 32), num_classes: int = 10, rank: int = 16, seed: int = 0):
    """Compact class statistics with a random low-rank + diagonal covariance per class (no data needed).

    Means are smooth colour blobs around 0.5, eigenvalues decay as ``0.5 / (i + 1)``: the seeds look like
    low-contrast noise, enough to time the inits exactly as real statistics would (same tensor shapes).
    Pass ``--data cifar10:PATH`` to the benchmarks to fit real statistics instead.
    """
    from ebmlens.stats import ClassStats

    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    mean = (0.5 + 0.15 * torch.randn(num_classes, shape[0], 1, 1, generator=g)
            + 0.05 * torch.randn(num_classes, *shape, generator=g)).clamp(0.05, 0.95).reshape(num_classes, d)
    vecs = torch.linalg.qr(torch.randn(num_classes, d, rank, generator=g)).Q
    vals = (0.5 / torch.arange(1, rank + 1, dtype=torch.float32)).expand(num_classes, rank).clone()
    diag = (vecs ** 2 * vals.unsqueeze(1)).sum(2) + 1e-3
    return ClassStats(mean=mean, diag=diag, eigvecs=vecs, eigvals=vals, total_var=diag.sum(1),
                      counts=torch.full((num_classes,), 100), shape=tuple(shape), source="synthetic")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                device: str = "cpu") -> dict[str, Timing]:
    """Time each zero-argument callable ``repeats`` times, interleaved in ABBA order after ``warmup``
    uncounted rounds. Returns ``{name: Timing}`` on the CPU-time clock for ``device="cpu"``, else wall."""
    names = list(candidates)
    cpu = not str(device).startswith("cuda")
    for _ in range(warmup):
        for n in names:
            candidates[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            candidates[n]()
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            wall[n].append(t1 - t0)
            out[n].append(c1 - c0 if cpu else t1 - t0)
    return {n: Timing(n, tuple(out[n]), tuple(wall[n]), "cpu" if cpu else "wall") for n in names}


def ratio_band(num: Timing, den: Timing) -> tuple[float, float, float]:
    """``(median ratio, low, high)``: the ratio of medians and the band spanned by ``min/max`` and
    ``max/min`` of the repeats, the widest ratio the noise allows."""
    return num.median / den.median, num.min / den.max, num.max / den.min


def fmt_times(t: Timing) -> str:
    w = f"  [wall median {statistics.median(t.wall):.3f} s]" if t.clock == "cpu" and t.wall else ""
    return (f"{t.name:<28s} {t.clock} time: min {t.min:7.3f} s  median {t.median:7.3f} s  max {t.max:7.3f} s"
            f"  (n={len(t.seconds)}){w}")


def rss_bytes() -> tuple[int, int]:
    """``(current RSS, peak RSS since the last reset)`` of this process in bytes (Linux /proc)."""
    return _cpu_rss()


def machine() -> str:
    """One line naming the machine: CPU model, cores, threads used, load, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}; {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}); torch threads "
            f"{torch.get_num_threads()}; load average {load}; {gpu}; torch {torch.__version__}")


class count_passes:
    """Context manager counting forward calls of ``module``, split into gradient-enabled calls
    (``.grad``: forward + backward input-gradient passes) and no-grad calls (``.nograd``: trace records,
    keep-best checks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.grad, self.nograd, self.images = module, 0, 0, 0

    def _hook(self, mod, args, out) -> None:
        if torch.is_grad_enabled():
            self.grad += 1
            self.images += int(args[0].shape[0])
        else:
            self.nograd += 1

    def __enter__(self) -> "count_passes":
        self._h = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._h.remove()


def summary_line(values: torch.Tensor) -> str:
    v = values.double()
    return f"{float(v.mean()):+.4f} +- {float(v.std()):.4f} (n={v.numel()})"


def two_sample(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Kolmogorov-Smirnov and Welch t statistics (scipy) of two samples of final energies."""
    from scipy import stats

    a_, b_ = a.double().numpy(), b.double().numpy()
    ks = stats.ks_2samp(a_, b_)
    t = stats.ttest_ind(a_, b_, equal_var=False)
    return {"ks": float(ks.statistic), "ks_p": float(ks.pvalue), "t": float(t.statistic), "t_p": float(t.pvalue)}
