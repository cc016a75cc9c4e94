"""The sampling loop of one process: its batches through the pipeline, each handed to the writer.

For every batch of sample indices ``idx`` (this rank's share, :mod:`.runner`): labels
``plan.labels[idx]``, streams ``SampleStreams(seed, idx)``, the pipeline under autocast, then the
images (uint8, still on the device) and the trace go to a :class:`~.writer.BatchWriter`, which writes the shard and the
batch's PNGs while the next batch samples. Progress is reported when a batch is handed over.

After each batch the freed heap pages go back to the OS (:func:`trim_heap`): glibc raises its mmap
threshold after the first large free, so later batch-sized buffers come from the heap and the
resident set crept up with the number of batches (+38 MiB from 200 to 2,000 samples at 224x224,
``benchmarks/memory.py``); trimming keeps the peak flat at a cost of well under a millisecond a batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from typing import Any, Callable, Union

import numpy as np
import torch

from .. import _dist
from .._perf import autocast_context
from ..rng import SampleStreams
from ..sampling.records import trace_to_cpu
from . import shards
from .outputs import nhwc_numpy, to_uint8, write_pngs
from .plan import RunPlan
from .writer import BatchWriter

__all__ = ["sample_batches", "write_batch", "auto_batch_size_all_ranks", "trim_heap"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return free heap memory of every malloc arena to the OS (glibc ``malloc_trim(0)``); ``False``
    where the C library has no such call."""
    fn = _malloc_trim()
    return bool(fn is not None and fn(0) is not None)

Progress = Union[bool, Callable[[int, int], Any]]


def write_batch(plan: RunPlan, idx: np.ndarray, images: torch.Tensor, seconds: float, rank: int, trace) -> None:
    """One batch's files (in the writer thread): the shard, then its PNGs. ``images``: uint8
    ``(B, C, H, W)`` on the sampling device, or already a numpy ``(B, H, W, C)`` array."""
    u8 = images if isinstance(images, np.ndarray) else nhwc_numpy(images)  # a GPU's device-to-host copy
    shards.write(plan.out_dir / "shards", idx, plan.labels[idx], u8, seconds, rank, trace)
    if plan.options.png:
        write_pngs(plan.out_dir, u8, plan.labels[idx], plan.class_names, indices=idx, n=plan.n)


def sample_batches(plan: RunPlan, model, mine: list[np.ndarray], dev: torch.device, d: _dist.DistInfo,
                   progress: Progress, n_done: int, total: int) -> None:
    """This rank's batches: pipeline under autocast, one shard per batch (written in the background),
    progress after each. ``total``: the images of this run or task (the bar's and callback's total)."""
    bar = None
    if progress is True and d.rank == 0:
        from tqdm.auto import tqdm

        # under torchrun the bar shows rank 0's share (its rate times the world size is the total rate)
        share = sum(b.size for b in mine)
        desc = "sampling" if not d.active else f"sampling (rank 0 of {d.world})"
        bar = tqdm(total=total if not d.active else share, initial=n_done if not d.active else 0, unit="img",
                   desc=desc, dynamic_ncols=True, smoothing=0.1)
    writer = BatchWriter()
    try:
        for idx in mine:
            t0 = time.perf_counter()
            y = torch.from_numpy(plan.labels[idx]).to(dev)
            with autocast_context(dev, plan.options.dtype):
                out = plan.pipeline(model, y, generator=SampleStreams(plan.options.seed, idx.tolist()))
            images = getattr(out, "images", out)
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != idx.size:
                raise ValueError(f"the pipeline returned {type(images).__name__} "
                                 f"{tuple(getattr(images, 'shape', ()))} for a batch of {idx.size}; "
                                 "a pipeline must return Samples with images (B, C, H, W)")
            trace = trace_to_cpu(() if out is images else getattr(out, "trace", ()))  # one copy per batch
            t8 = to_uint8(images)  # a quarter of the float batch waits for the writer; the float one is freed
            # large buffers are made and freed in one thread (glibc keeps per-thread arenas: +50 MiB at 224x224
            # measured otherwise): on the CPU the numpy copy is made here
            u8: torch.Tensor | np.ndarray = nhwc_numpy(t8) if t8.device.type == "cpu" else t8
            del t8
            del out, images
            writer.submit(write_batch, plan, idx, u8, time.perf_counter() - t0, d.rank, trace)
            n_done += idx.size
            trim_heap()
            if bar is not None:
                bar.update(idx.size)
            elif callable(progress):
                progress(n_done, total)
    finally:
        try:
            writer.close()  # what was handed over is written, also when the loop was interrupted
        finally:
            if bar is not None:
                bar.close()


def auto_batch_size_all_ranks(model, dev: torch.device, dtype: str, d: _dist.DistInfo) -> int:
    """The largest batch whose input-gradient pass fits (CUDA), the same on every rank (their minimum)."""
    from .._perf import auto_batch_size
    from ..energy import input_grad

    def unit(m, b: int) -> None:  # one forward + input-gradient pass: what every stage step costs
        x = torch.rand(b, *m.input_shape, device=dev)
        y = torch.zeros(b, dtype=torch.long, device=dev)
        with autocast_context(dev, dtype):
            input_grad(m, x, m.joint_energy_from_logits, y)

    size = auto_batch_size(model, unit, dev)
    if d.active:
        import torch.distributed as dist

        t = torch.tensor([size], device=dev if _dist.is_nccl() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        size = int(t.item())
    return size
