"""Fast-path helpers for sampling on a GPU (used by the runner; measured in ``benchmarks/``).

The cost of every sampler is the classifier's forward + backward pass with respect to the input;
these helpers make that pass cheaper or fill the device with more of them:

* :func:`prepare_model` - ``channels_last`` memory format (faster convolutions on tensor-core GPUs)
  and optional :func:`torch.compile` of the classifier (in place, or on a copy: the runner's way);
* :func:`fast_settings` - what ``--fast`` turns on for a device type (:data:`FAST_CUDA`; nothing on
  the CPU) and :func:`matmul_precision`, the float32 matmul policy as a context;
* :func:`autocast_context` - bf16 / fp16 autocast around a pipeline (energies stay float32: the
  :class:`~ebmlens.EnergyModel` computes them from ``logits.float()``);
* :func:`auto_batch_size` - the largest batch that runs without running out of CUDA memory
  (doubling, then bisecting back between the last size that fitted and the first that did not);
* :func:`peak_memory_per_image` - peak memory of one batch divided by its size (CUDA allocator peak,
  or the process's peak resident memory on the CPU);
* :func:`input_grad_flops` - floating-point operations of one input-gradient pass (convolutions and
  linear layers), for throughput as a fraction of the device's peak.

>>> import torch
>>> with autocast_context("cpu", "float32"):
...     torch.ones(2).dtype
torch.float32
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from ._validate import parse_device

__all__ = ["prepare_model", "autocast_context", "auto_batch_size", "peak_memory_per_image", "input_grad_flops",
           "AUTOCAST_DTYPES", "FAST_CUDA", "fast_settings", "matmul_precision", "MATMUL_PRECISIONS"]

log = logging.getLogger(__name__)

#: names accepted by :func:`autocast_context` (``None`` / ``"float32"``: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: ``fast=True on CUDA: bf16 autocast (float32 energies), channels-last weights, torch.compile in
#: ``"reduce-overhead"`` mode (CUDA graphs; ``dynamic=False``: a partial last batch compiles once more),
#: TF32 float32 matmuls. On the CPU nothing (compile is slower there, channels_last gains nothing).
FAST_CUDA: dict[str, Any] = {"dtype": "bfloat16", "channels_last": True, "compile": True,
                             "compile_mode": "reduce-overhead", "matmul_precision": "high"}

#: :func:`torch.set_float32_matmul_precision` values.
MATMUL_PRECISIONS = ("highest", "high", "medium")


def fast_settings(device: str | torch.device, *, dtype: str = "float32", channels_last: bool = False,
                  compile: bool = False) -> dict[str, Any]:
    """The settings ``fast=True`` gives on ``device``: :data:`FAST_CUDA` on CUDA (an fp16 dtype asked for is
    kept), elsewhere the ones passed in.

    >>> fast_settings("cpu")["compile_mode"], fast_settings("cuda", dtype="float16")["dtype"]
    (None, 'float16')
    """
    if _device(device, "fast_settings").type != "cuda":
        return {"dtype": dtype, "channels_last": channels_last, "compile": compile, "compile_mode": None,
                "matmul_precision": None}
    return {**FAST_CUDA, "dtype": FAST_CUDA["dtype"] if dtype == "float32" else dtype}


@contextlib.contextmanager
def matmul_precision(precision: str | None) -> Iterator[str]:
    """A block under ``torch.set_float32_matmul_precision(precision)`` (``None``: as it is), restored after;
    yields the policy in effect (what run.json records)."""
    if precision is not None and precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {', '.join(MATMUL_PRECISIONS)} or None, got {precision!r}")
    old = torch.get_float32_matmul_precision()
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    try:
        yield torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision(old)


class _CudaGraphSteps(nn.Module):
    """A classifier compiled in ``"reduce-overhead"`` mode that marks a new step before every call (the
    samplers' forward + input-gradient passes have no optimizer step to mark it; CUDA-graph trees)."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        if mark is not None:
            mark()
        return self.compiled(x)


def _shallow_copy(model: nn.Module) -> nn.Module:
    """A new module sharing the weights, with its own submodule table (replacing ``.classifier`` leaves
    ``model`` as it was)."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out._parameters = dict(model._parameters)
    out._buffers = dict(model._buffers)
    return out


def prepare_model(model: nn.Module, *, channels_last: bool = False, compile: bool = False,
                  compile_mode: str | None = None, inplace: bool = True) -> nn.Module:
    """Put a model on the fast path and return it: **in place** by default, or with ``inplace=False`` on
    a copy, leaving ``model`` as it was (the runner's way: the user's model is never changed).

    Args:
        model: an :class:`~ebmlens.EnergyModel` (its ``classifier`` is compiled) or any ``nn.Module``
            (compiled as a whole).
        channels_last: convert 4-D parameters and buffers to ``torch.channels_last``; convolutions then
            also run channels-last on NCHW inputs. Outputs are unchanged up to float rounding.
        compile: wrap the classifier in :func:`torch.compile` (compiled at the first call, per batch
            shape; worth it for long runs on a GPU).
        compile_mode: :func:`torch.compile`'s ``mode`` (``None``: its default). ``"reduce-overhead"``
            captures CUDA graphs, compiles with ``dynamic=False`` (one graph per batch shape) and marks
            a new step before every call.
        inplace: convert ``model`` itself (default) or a copy: a deep copy for ``channels_last`` (new
            weight tensors), else a shallow one sharing the weights.

    Returns:
        ``model`` itself (``inplace=True``) or the copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_model expects an nn.Module (e.g. an ebmlens.EnergyModel), got {type(model).__name__}")
    for name, flag in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(flag, bool):
            raise TypeError(f"prepare_model {name} must be True or False, got {flag!r}")
    if not inplace and (channels_last or compile):
        model = copy.deepcopy(model) if channels_last else _shallow_copy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        if not hasattr(torch, "compile"):
            raise ImportError("prepare_model(compile=True) needs torch >= 2.0 (torch.compile)")
        graphs = compile_mode == "reduce-overhead"
        kw: dict[str, Any] = {**({} if compile_mode is None else {"mode": compile_mode}),
                              **({"dynamic": False} if graphs else {})}

        def compiled(mod: nn.Module) -> nn.Module:
            out = torch.compile(mod, **kw)
            return _CudaGraphSteps(out) if graphs else out  # type: ignore[return-value]

        classifier = getattr(model, "classifier", None)
        if isinstance(classifier, nn.Module):
            model.classifier = compiled(classifier)
        else:
            model = compiled(model)
    return model


def _device(device: Any, who: str) -> torch.device:
    name = parse_device(device, available=False)  # the one parser; a device this machine lacks is fine here
    if name == "auto":
        raise ValueError(f"{who}: 'auto' is not a device here; use 'cpu', 'cuda' or 'cuda:N'")
    return torch.device(name)


def autocast_context(device: str | torch.device, dtype: str | torch.dtype | None) -> ContextManager:
    """A context that runs ops in ``dtype`` under :func:`torch.autocast` on ``device``'s type.

    Args:
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ... (only its type matters).
        dtype: ``None`` / ``"float32"`` / ``torch.float32`` (a no-op context), ``"bfloat16"`` or
            ``"float16"`` (or the torch dtypes). fp16 on CUDA only: the CPU's autocast is bf16.

    Sampling quality under bf16 must be checked against fp32 (energies, classifier accuracy of the
    samples): ``benchmarks/`` does; see its README.
    """
    dev = _device(device, "autocast_context")
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in AUTOCAST_DTYPES.items() if v is not None}
        if dtype == torch.float32:
            dtype = None
        elif dtype in names:
            dtype = names[dtype]
        else:
            raise ValueError(f"autocast_context dtype must be one of {list(AUTOCAST_DTYPES)}, got {dtype}")
    if dtype is None or dtype == "float32":
        return contextlib.nullcontext()
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_context dtype must be one of {list(AUTOCAST_DTYPES)}, got {dtype!r}")
    if dev.type == "cpu" and dtype == "float16":
        raise ValueError("autocast_context: float16 autocast is for CUDA; on the CPU use 'bfloat16' or 'float32'")
    if dev.type == "cuda" and dtype == "bfloat16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError("autocast_context: this GPU does not support bfloat16; use 'float16' or 'float32'")
    return torch.autocast(device_type=dev.type, dtype=AUTOCAST_DTYPES[dtype])


# ------------------------------------------------------------------------------------ work at a batch size
def _work_fn(model: Any, work: Any, device: torch.device) -> Callable[[int], Any]:
    """``work`` as ``fn(batch_size)``: a pipeline/initializer-like callable ``work(model, y, *, generator)``
    gets ``y = arange(b) % K``; a step function ``work(model, batch_size)`` is called as is."""
    if not callable(work):
        raise TypeError(f"expected a Pipeline or a step function fn(model, batch_size), got {type(work).__name__}")
    if hasattr(work, "stages") and hasattr(work, "init"):
        k = int(model.num_classes)
        gen = torch.Generator().manual_seed(0)
        return lambda b: work(model, torch.arange(b, device=device) % k, generator=gen)
    return lambda b: work(model, b)


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _search(fits: Callable[[int], bool], start: int, max_: int) -> int | None:
    """Largest ``b`` in ``[1, max_]`` with ``fits(b)``, assuming fitting is monotone in ``b``: double from
    ``start`` until a size fails (or ``max_``), then bisect between the last success and the first
    failure. Below ``start`` it halves. ``None`` if not even 1 fits."""
    good, bad = 0, None
    b = min(start, max_)
    while True:
        if fits(b):
            good = b
            if b >= max_:
                return b
            b = min(2 * b, max_)
        else:
            bad = b
            break
    if good == 0:  # start itself failed: halve down
        while b > 1:
            b //= 2
            if fits(b):
                good = b
                break
            bad = b
        if good == 0:
            return None
    while bad - good > max(1, good // 16):  # bisect to ~6% of the answer: a few more tries
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def auto_batch_size(model: Any, pipeline_or_step_fn: Any, device: str | torch.device, *, start: int = 64,
                    max_: int = 8192, headroom: float = 0.9) -> int:
    """The largest batch that runs on a CUDA device without running out of memory.

    Runs the work at ``start``, doubling until it runs out of memory (or reaches ``max_``), then bisects
    between the last size that fitted and the first that did not; returns ``floor(headroom * found)``
    so that fragmentation and the runner's own tensors have room. Each try frees the cache.

    Args:
        model: the :class:`~ebmlens.EnergyModel` on ``device``.
        pipeline_or_step_fn: a :class:`~ebmlens.sampling.Pipeline` (run as is at each size; to keep the
            search short give it few steps: memory depends on the batch, not on the step count) or a
            function ``fn(model, batch_size)`` that runs one representative unit of work.
        device: a CUDA device. On the CPU there is no allocator limit to probe: ``ValueError``.
        start, max_: first size tried and upper bound (``max_ >= start >= 1``).
        headroom: fraction of the found size returned, in ``(0, 1]``.

    Raises:
        ValueError: a CPU (or non-CUDA) device, bad bounds, or not even one image fits.
    """
    dev = _device(device, "auto_batch_size")
    if dev.type != "cuda":
        raise ValueError(f"auto_batch_size needs a CUDA device, got {str(dev)!r}: on the CPU memory is not the "
                         "limit; pass a batch size yourself (e.g. --batch-size 64)")
    if not torch.cuda.is_available():
        raise ValueError("auto_batch_size: CUDA is not available in this torch build or machine")
    if not (isinstance(start, int) and isinstance(max_, int) and 1 <= start <= max_):
        raise ValueError(f"auto_batch_size needs integers 1 <= start <= max_, got start={start!r}, max_={max_!r}")
    if not 0 < headroom <= 1:
        raise ValueError(f"auto_batch_size headroom must be in (0, 1], got {headroom!r}")
    run = _work_fn(model, pipeline_or_step_fn, dev)

    def fits(b: int) -> bool:
        try:
            run(b)
            torch.cuda.synchronize(dev)
            ok = True
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected; re-raised otherwise
            if not _is_oom(e):
                raise
            ok = False
        gc.collect()
        torch.cuda.empty_cache()
        log.debug("auto_batch_size: %d %s", b, "fits" if ok else "out of memory")
        return ok

    found = _search(fits, start, max_)
    if found is None:
        raise ValueError("auto_batch_size: not even a batch of 1 fits in CUDA memory; free memory or use a "
                         "smaller model")
    return max(1, int(math.floor(headroom * found)))


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _cpu_rss() -> tuple[int, int]:
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def peak_memory_per_image(model: Any, pipeline_or_step_fn: Any, device: str | torch.device,
                          batch_size: int) -> float:
    """Bytes of peak memory per image while running the work once at ``batch_size``.

    CUDA: ``(torch.cuda.max_memory_allocated() - allocated before) / batch_size`` (tensors only,
    not the allocator's cache). CPU (Linux): the rise of the process's peak resident memory
    (``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident memory before the run,
    divided by ``batch_size``: includes allocator slack, so it is an upper bound. Run the work once
    before (warm-up) so that one-time allocations are not counted.

    Args:
        model, pipeline_or_step_fn: as :func:`auto_batch_size`.
        device: where the work runs.
        batch_size: images per run (>= 1).
    """
    dev = _device(device, "peak_memory_per_image")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"peak_memory_per_image batch_size must be an int >= 1, got {batch_size!r}")
    run = _work_fn(model, pipeline_or_step_fn, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        run(batch_size)
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / batch_size
    if dev.type != "cpu":
        raise ValueError(f"peak_memory_per_image supports 'cpu' and 'cuda' devices, got {str(dev)!r}")
    try:
        _cpu_rss()
    except OSError as e:
        raise ValueError("peak_memory_per_image on the CPU reads /proc/self/status (Linux only)") from e
    gc.collect()
    if not _reset_cpu_peak():
        raise ValueError("peak_memory_per_image on the CPU needs a writable /proc/self/clear_refs (Linux) to "
                         "reset the peak resident memory")
    before, _ = _cpu_rss()
    run(batch_size)
    _, peak = _cpu_rss()
    return max(0, peak - before) / batch_size


def input_grad_flops(model: Any, batch_size: int = 1, *, device: str | torch.device | None = None) -> int:
    """Floating-point operations of one forward + backward pass w.r.t. the input at ``batch_size``.

    Counts the convolutions and linear layers (2 per multiply-add; what dominates any image classifier):
    a forward hook adds ``2 * out.numel() * (C_in / groups) * k_h * k_w`` per ``Conv2d`` and
    ``2 * out.numel() * in_features`` per ``Linear``; the backward pass with respect to the *input* costs the
    same again (a transposed convolution / matmul of the same size; no weight gradients are needed), so the
    pass is ``2 x`` the forward. Throughput as a fraction of the device's peak is then
    ``flops * passes / seconds / peak``.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"input_grad_flops batch_size must be an int >= 1, got {batch_size!r}")
    shape = getattr(model, "input_shape", None)
    if shape is None or not hasattr(model, "logits"):
        raise TypeError("input_grad_flops expects an ebmlens.EnergyModel (it reads model.input_shape)")
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    total = [0]

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total[0] += 2 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.rand(batch_size, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return 2 * total[0]
