"""Many samples: batches, seeds by sample index, shard files, resume, torchrun.

The runner is the only part of ebmlens that knows about more than one batch. It turns a
:class:`~ebmlens.sampling.Pipeline` (or any callable ``pipe(model, y, *, generator) -> Samples``)
into a folder of images::

    OUT/
      samples.npz        images uint8 (N, H, W, C), labels int64 (N,)
      grid.png           classes as rows, up to 10 samples per class
      <class_name>/<idx>.png    one PNG per image (save_png=True)
      run.json           config (pipeline.config()), model.describe(), versions, seed, n, batch size,
                         dtype, device, timings, images/s, and "energy": one record per point of
                         the pipeline (after the init, after each stage) with the mean and std of
                         E(x) ("energy") and E(x, y) ("joint_energy") over all samples, and seconds
      shards/            one .npz per finished batch (kept so that a run can be resumed)

Invariance. Sample ``i`` always gets label ``labels[i]`` and the random stream
``SampleStreams(seed, [i])`` (:mod:`ebmlens.rng`), so for a fixed seed the images do not depend on
the batch size, on the number of processes, nor on whether the run was killed and resumed:
they agree within one uint8 level (float arithmetic of batched convolutions is not bitwise
stable across batch sizes) and labels are identical. The exception is BatchNorm in train mode
(``pipeline.mode == "train"`` or ``model.sampling_mode == "train"``, as JEM++ samples): then the
images of a batch are coupled through the batch statistics and the result depends on the batch
size. The runner records ``"batch_coupled": true`` in run.json and logs a warning.

Labels. By default class-balanced and interleaved: ``labels[i] = classes[i % K]``, so when ``n``
is not a multiple of ``K`` the first ``n mod K`` classes get one sample more, and any prefix of
the run (a killed run, a small ``n``) is as balanced as it can be.

Resume. Every finished batch is written atomically (temporary file + ``os.replace``) as
``shards/shard_<first index>.npz``. With ``resume=True`` the runner reads the shards present,
checks that they belong to the same run (n, seed, labels, pipeline config, model, dtype), and
samples only the missing indices: a killed run loses at most the batches in flight. The batch
size may change between the attempts.

torchrun. Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1`` in the environment) each
process initialises ``torch.distributed`` (gloo on CPU, nccl on CUDA, unless already
initialised), takes every K-th batch of the missing indices, writes its shards, waits at a
barrier, and rank 0 merges the shards in index order into samples.npz, the PNGs, the grid and
run.json. With several nodes (``--nnodes``) ``out_dir`` must be on a filesystem that every node
sees. On CUDA each process uses ``cuda:LOCAL_RANK``.

>>> balanced_labels(5, [3, 7]).tolist()
[3, 7, 3, 7, 3]
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np
import torch

from .. import _dist
from .._io import atomic_save_npz, atomic_write_bytes, atomic_write_json, jsonable, versions
from ..energy import validate_labels
from ..rng import SampleStreams

__all__ = ["sample", "SampleRun", "balanced_labels", "resolve_classes", "DTYPES"]

log = logging.getLogger(__name__)

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
Dtype = Literal["float32", "bfloat16", "float16"]
Progress = Union[bool, Callable[[int, int], Any]]
GRID_PER_CLASS = 10
_SHARD_RE = re.compile(r"^shard_(\d+)\.npz$")


@dataclass(frozen=True)
class SampleRun:
    """What :func:`sample` wrote.

    Attributes:
        out_dir: the run folder.
        n: number of samples.
        images: path of ``samples.npz`` (``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)``).
        grid: path of ``grid.png`` or ``None``.
        run: the content of ``run.json``.
    """

    out_dir: Path
    n: int
    images: Path
    grid: Path | None
    run: dict

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (N, H, W, C), labels int64 (N,))`` from ``samples.npz``."""
        with np.load(self.images) as z:
            return z["images"], z["labels"]


# ----------------------------------------------------------------------------- labels
def resolve_classes(classes: None | str | Sequence[int | str], num_classes: int,
                    class_names: Sequence[str] | None = None) -> list[int]:
    """Class indices from ``None`` / ``"all"`` / a list of indices or class names."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if classes is None or (isinstance(classes, str) and classes == "all"):
        return list(range(num_classes))
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: list[int] = []
    for c in classes:
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            if c not in names:
                import difflib

                close = difflib.get_close_matches(c, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; the classes are {', '.join(names)}"
                raise ValueError(f"unknown class name {c!r}{hint}")
            out.append(names.index(c))
            continue
        try:
            k = int(c)
        except (TypeError, ValueError):
            raise TypeError(f"classes must be 'all' or a list of class indices or names, got {c!r}") from None
        if not 0 <= k < num_classes:
            raise ValueError(f"class index {k} is out of range for a {num_classes}-class model; "
                             f"use indices 0..{num_classes - 1} or names such as {names[0]!r}")
        out.append(k)
    if not out:
        raise ValueError("classes is empty; pass 'all' or at least one class")
    if len(set(out)) != len(out):
        raise ValueError(f"classes lists a class twice: {out}; list each class once")
    return out


def balanced_labels(n: int, classes: Sequence[int]) -> np.ndarray:
    """Class-balanced, interleaved labels: ``labels[i] = classes[i % K]`` (int64, shape ``(n,)``).

    The first ``n mod K`` classes get one sample more.
    """
    if int(n) <= 0:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    if len(classes) == 0:
        raise ValueError("classes is empty; pass at least one class")
    return np.asarray(classes, dtype=np.int64)[np.arange(int(n)) % len(classes)]


# ----------------------------------------------------------------------------- torchrun
# shared with ``ebmlens energy`` / ``evaluate``: see ebmlens/_dist.py
_Dist = _dist.DistInfo
_dist_from_env = _dist.init_if_needed  # join torchrun's process group when WORLD_SIZE > 1


def _resolve_device(device: str | torch.device | None, d: _Dist) -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
        if d.active and dev.index is None:
            dev = torch.device("cuda", d.local_rank)
    return dev


# ----------------------------------------------------------------------------- helpers
def _pipeline_config(pipeline: Any) -> Any:
    cfg = pipeline.config() if callable(getattr(pipeline, "config", None)) else {"repr": repr(pipeline)}
    return jsonable(cfg)


def _to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Float ``(N, C, H, W)`` in [0, 1] -> uint8 ``(N, H, W, C)`` (rounded, clamped)."""
    x = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _safe_name(name: str) -> str:
    s = re.sub(r"[^\w.\-]+", "_", str(name)).strip("._")
    return s or "class"


def _trace_arrays(trace: Any, n: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-sample energies and per-stage seconds from ``Samples.trace``.

    ``trace`` is the pipeline's list of records (dicts with ``"stage"``, ``"energy"``,
    ``"joint_energy"`` ``(n,)``, ``"seconds"``; see :class:`~ebmlens.sampling.Samples`). Returns
    ``({"<j>:<stage>/<quantity>": float32 (n,)}, {"<j>:<stage>": seconds})``; fields that are not
    per-sample vectors (per-step traces, indices) are left out. A pipeline without a trace gives ``{}``.
    """
    vecs: dict[str, np.ndarray] = {}
    secs: dict[str, float] = {}
    if not isinstance(trace, (list, tuple)):
        return vecs, secs
    for j, rec in enumerate(trace):
        if not isinstance(rec, dict):
            continue
        group = f"{j}:{rec.get('stage', 'stage')}"
        for k, v in rec.items():
            if isinstance(v, torch.Tensor) and tuple(v.shape) == (n,):
                vecs[f"{group}/{k}"] = v.detach().float().cpu().numpy()
            elif k == "seconds" and isinstance(v, (int, float)):
                secs[group] = float(v)
    return vecs, secs


def _energy_summary(keys: list[str], arrays: dict[str, np.ndarray], seconds: dict[str, float]) -> list[dict]:
    """``[{"index", "stage", "<quantity>": {"mean", "std"}, "n", "seconds"}, ...]`` over all samples."""
    groups: dict[str, dict] = {}
    for key in keys:
        group, _, qty = key.rpartition("/")
        j, _, stage = group.partition(":")
        g = groups.setdefault(group, {"index": int(j), "stage": stage})
        a = arrays[key].astype(np.float64)
        fin = a[np.isfinite(a)]
        g[qty] = {"mean": float(fin.mean()) if fin.size else None, "std": float(fin.std()) if fin.size else None}
        g["n"] = int(fin.size)
    for group, g in groups.items():
        g["seconds"] = round(seconds.get(group, 0.0), 4)
    return sorted(groups.values(), key=lambda g: g["index"])


def make_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[int], per_class: int = GRID_PER_CLASS,
              pad: int = 2) -> np.ndarray:
    """A uint8 ``(H', W', C)`` grid: one row per class of ``classes`` (in that order), the first
    ``per_class`` samples of that class by index, white padding."""
    _, h, w, c = images.shape
    rows = [np.flatnonzero(labels == k)[:per_class] for k in classes]
    rows = [r for r in rows if r.size]
    cols = max((r.size for r in rows), default=1)
    grid = np.full((pad + len(rows) * (h + pad), pad + cols * (w + pad), c), 255, np.uint8)
    for ri, r in enumerate(rows):
        for ci, idx in enumerate(r):
            y0, x0 = pad + ri * (h + pad), pad + ci * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = images[idx]
    return grid


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- shards
def _read_shards(shard_dir: Path) -> list[Path]:
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if _SHARD_RE.match(p.name))


def _covered(paths: list[Path], n: int) -> np.ndarray:
    done = np.zeros(n, bool)
    for p in paths:
        try:
            with np.load(p) as z:
                idx = z["indices"]
        except Exception as e:  # a shard is written atomically; an unreadable one is foreign
            raise ValueError(f"cannot read shard {p}: {e}; delete it to re-sample its images") from None
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"shard {p} holds sample indices up to {int(idx.max())} but n={n}; "
                             "this folder belongs to another run: pick a new --out")
        done[idx] = True
    return done


def _check_meta(meta_path: Path, meta: dict) -> None:
    if not meta_path.exists():
        return
    old = json.loads(meta_path.read_text())
    for key in ("n", "seed", "labels_sha256", "dtype", "pipeline", "model"):
        if old.get(key) != meta.get(key):
            raise ValueError(
                f"{meta_path.parent.parent} holds a run with a different {key} "
                f"({json.dumps(old.get(key))[:120]} vs {json.dumps(meta.get(key))[:120]}); "
                "resume with the same settings or choose a new output folder")


# ----------------------------------------------------------------------------- runner
def sample(
    model: torch.nn.Module,
    pipeline: Callable,
    n: int,
    out_dir: str | os.PathLike,
    *,
    batch_size: int | Literal["auto"] = 256,
    seed: int = 0,
    classes: None | str | Sequence[int | str] = None,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    resume: bool = False,
    progress: Progress = False,
    device: str | torch.device | None = None,
    dtype: Dtype = "float32",
    save_png: bool = True,
    grid: bool = True,
    channels_last: bool = False,
    compile: bool = False,
) -> SampleRun:
    """Draw ``n`` samples with ``pipeline`` from ``model`` into ``out_dir``.

    Args:
        model: an :class:`~ebmlens.energy.EnergyModel` (moved to ``device``).
        pipeline: a :class:`~ebmlens.sampling.Pipeline` or any callable
            ``pipeline(model, y, *, generator) -> Samples`` (``.images`` float ``(B, C, H, W)`` in
            [0, 1]; ``.trace`` optional). ``pipeline.config()`` is recorded when present.
        n: number of samples (> 0).
        out_dir: run folder (created). It must be empty or hold a run of the same settings
            (then pass ``resume=True``).
        batch_size: images per forward/backward pass (> 0). Does not change the images except
            with BatchNorm in train mode. ``"auto"`` (CUDA only): the largest batch whose
            input-gradient pass fits in memory (:func:`ebmlens._perf.auto_batch_size`), the minimum
            over ranks under torchrun; recorded in run.json.
        seed: sample ``i`` draws its noise from ``SampleStreams(seed, [i])``.
        classes: ``None``/``"all"`` (every class) or a list of class indices or names; labels are
            ``classes[i % K]``.
        labels: explicit labels ``(n,)`` instead of ``classes``.
        resume: continue a killed run in ``out_dir`` (only missing indices are sampled).
        progress: ``True`` for a tqdm bar on stderr (images/s), or a callback
            ``progress(done, n)`` called after every batch (``done`` counts this process's view:
            resumed images plus the ones it finished).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None``/``"auto"``: CUDA when available
            (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        dtype: ``"float32"``, or ``"bfloat16"`` / ``"float16"`` autocast around the pipeline.
        save_png: write ``<class_name>/<idx>.png`` per image.
        grid: write ``grid.png`` (classes as rows, up to 10 per class).
        channels_last: run the model with channels-last weights (faster convolutions on GPUs;
            the model is converted in place). Each forward pass equals the default one up to float
            rounding, but sign steps and long chains amplify rounding, so images differ from a
            contiguous-memory run (same distribution, not the same pixels); recorded in run.json.
        compile: wrap the classifier in :func:`torch.compile` (in place; pays off on long GPU runs).

    Returns:
        :class:`SampleRun` (on every rank under torchrun, after rank 0 has merged).
    """
    # ---- validate (every rank, before any collective)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) <= 0:
        raise ValueError(f"n must be a positive integer number of samples, got {n!r}; e.g. n=64")
    n = int(n)
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                 or int(batch_size) <= 0):
        raise ValueError(f"batch_size must be a positive integer or 'auto' (CUDA), got {batch_size!r}; "
                         "e.g. batch_size=256 (lower it if memory runs out)")
    batch_size = batch_size if batch_size == "auto" else int(batch_size)
    for flag_name, flag in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(flag, bool):
            raise TypeError(f"{flag_name} must be True or False, got {flag!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not callable(pipeline):
        raise TypeError(f"pipeline must be callable as pipeline(model, y, generator=...), got {type(pipeline).__name__}; "
                        "build one with ebmlens.sampling.presets.get(name)")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "num_classes"):
        raise TypeError(f"model must be an ebmlens EnergyModel, got {type(model).__name__}; "
                        "load one with ebmlens.load_model('source:name')")
    num_classes = int(model.num_classes)
    class_names = list(getattr(model, "class_names", None) or [str(i) for i in range(num_classes)])
    if labels is not None:
        if classes is not None and classes != "all":
            raise ValueError("pass either classes= or labels=, not both")
        y_all = validate_labels(torch.as_tensor(np.asarray(labels)), num_classes, n, name="labels").numpy()
        cls_order = sorted(set(int(v) for v in y_all))
    else:
        cls_order = resolve_classes(classes, num_classes, class_names)
        y_all = balanced_labels(n, cls_order)
    y_all = y_all.astype(np.int64)
    mode = getattr(pipeline, "mode", None) or getattr(model, "sampling_mode", "eval")
    batch_coupled = mode == "train"
    if batch_coupled:
        log.warning("sampling with BatchNorm in train mode couples the images of a batch: results depend "
                    "on the batch size (and process count); batch-size invariance does not hold")

    t_start = time.perf_counter()
    d = _dist_from_env(None if device is None else str(device))
    try:
        dev = _resolve_device(device, d)
        if batch_size == "auto" and dev.type != "cuda":
            raise ValueError(f"batch_size='auto' needs a CUDA device, got {str(dev)!r}: on the CPU pass a number "
                             "(e.g. --batch-size 64)")
        if channels_last or compile:
            from .._perf import prepare_model

            model = prepare_model(model, channels_last=channels_last, compile=compile)
        return _run(model, pipeline, n, Path(out_dir), y_all, cls_order, class_names, batch_size, seed, resume,
                    progress, dev, dtype, save_png, grid, mode, batch_coupled, d, t_start,
                    dict(channels_last=channels_last, compile=compile))
    finally:
        d.close()


def _run(model, pipeline, n, out, y_all, cls_order, class_names, batch_size, seed, resume, progress, dev, dtype,
         save_png, grid, mode, batch_coupled, d: _Dist, t_start, fast: dict) -> SampleRun:
    shard_dir = out / "shards"
    meta = {
        "n": n, "seed": seed, "dtype": dtype,
        "labels_sha256": hashlib.sha256(y_all.tobytes()).hexdigest(),
        "pipeline": _pipeline_config(pipeline),
        "model": jsonable(model.describe()) if callable(getattr(model, "describe", None)) else type(model).__name__,
    }
    meta_path = shard_dir / "meta.json"
    # ---- rank 0 prepares the folder; everyone waits
    err: Exception | None = None
    if d.rank == 0:
        try:
            if out.exists() and not out.is_dir():
                raise ValueError(f"out_dir {out} is a file; choose a folder")
            if not resume and out.exists() and (meta_path.exists() or _read_shards(shard_dir)
                                                or (out / "run.json").exists()):
                raise ValueError(f"{out} already holds a sampling run; pass resume=True (--resume) to continue "
                                 "it, or choose a new output folder")
            _check_meta(meta_path, meta)
            shard_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_path, meta)
        except Exception as e:  # report on rank 0, but do not leave the others at the barrier
            err = e
    if d.active:
        flag = torch.tensor([1 if err else 0], device=dev if _is_nccl() else "cpu")
        import torch.distributed as dist

        dist.all_reduce(flag)
        if int(flag.item()) and err is None:
            raise ValueError("rank 0 refused the output folder (see its error above)")
    if err is not None:
        raise err

    model.to(dev)
    amp = DTYPES[dtype]
    autocast = (lambda: torch.autocast(device_type=dev.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    batch_size_asked = batch_size
    if batch_size == "auto":
        batch_size = _auto_batch_size(model, dev, autocast, d)
        log.info("batch_size='auto' chose %d", batch_size)
    done = _covered(_read_shards(shard_dir), n)
    n_resumed = int(done.sum())
    todo = np.flatnonzero(~done)
    batches = [todo[s:s + batch_size] for s in range(0, todo.size, batch_size)]
    mine = batches[d.rank::d.world]
    if n_resumed:
        log.info("resuming %s: %d of %d samples already done", out, n_resumed, n)

    bar = None
    if progress is True and d.rank == 0:
        from tqdm.auto import tqdm

        # under torchrun the bar shows rank 0's share (its rate times the world size is the total rate)
        share = sum(b.size for b in mine)
        desc = "sampling" if not d.active else f"sampling (rank 0 of {d.world})"
        bar = tqdm(total=n if not d.active else share, initial=n_resumed if not d.active else 0, unit="img",
                   desc=desc, dynamic_ncols=True, smoothing=0.1)
    n_done = n_resumed
    t_sampling = time.perf_counter()
    try:
        for idx in mine:
            t0 = time.perf_counter()
            y = torch.from_numpy(y_all[idx]).to(dev)
            gen = SampleStreams(seed, idx.tolist())
            with autocast():
                out_s = pipeline(model, y, generator=gen)
            images = getattr(out_s, "images", out_s)
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != idx.size:
                raise ValueError(f"the pipeline returned {type(images).__name__} "
                                 f"{tuple(getattr(images, 'shape', ()))} for a batch of {idx.size}; "
                                 "a pipeline must return Samples with images (B, C, H, W)")
            arr = _to_uint8_nhwc(images)
            vecs, secs = _trace_arrays(getattr(out_s, "trace", None), idx.size)
            extra = {**{f"trace/{k}": v for k, v in vecs.items()}, **{f"tsec/{k}": np.float64(v) for k, v in secs.items()}}
            atomic_save_npz(shard_dir / f"shard_{int(idx[0]):09d}.npz", indices=idx.astype(np.int64),
                        labels=y_all[idx], images=arr, seconds=np.float64(time.perf_counter() - t0),
                        rank=np.int64(d.rank), **extra)
            n_done += idx.size
            if bar is not None:
                bar.update(idx.size)
            elif callable(progress):
                progress(n_done, n)
    finally:
        if bar is not None:
            bar.close()
    d.barrier(dev)
    t_sampled = time.perf_counter()

    images_path, grid_path = out / "samples.npz", (out / "grid.png" if grid else None)
    if d.rank == 0:
        run = _merge(out, shard_dir, n, y_all, cls_order, class_names, save_png, grid_path, meta,
                     dict(batch_size=batch_size, batch_size_asked=batch_size_asked, **fast,
                          device=str(dev), mode=mode, batch_coupled=batch_coupled,
                          world_size=d.world, n_resumed=n_resumed, n_new=n - n_resumed),
                     t_start, t_sampling, t_sampled)
    d.barrier(dev)
    if d.rank != 0:
        run = json.loads((out / "run.json").read_text())
    return SampleRun(out_dir=out, n=n, images=images_path, grid=grid_path, run=run)


_is_nccl = _dist.is_nccl


def _auto_batch_size(model, dev: torch.device, autocast, d) -> int:
    """The largest batch whose input-gradient pass fits (CUDA), the same on every rank (their minimum)."""
    from .._perf import auto_batch_size
    from ..energy import energy_grad

    def unit(m, b: int) -> None:  # one forward + input-gradient pass: what every stage step costs
        x = torch.rand(b, *m.input_shape, device=dev)
        y = torch.zeros(b, dtype=torch.long, device=dev)
        with autocast():
            energy_grad(lambda z: m.joint_energy(z, y), x)

    size = auto_batch_size(model, unit, dev)
    if d.active:
        import torch.distributed as dist

        t = torch.tensor([size], device=dev if _is_nccl() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        size = int(t.item())
    return size


def _merge(out: Path, shard_dir: Path, n: int, y_all: np.ndarray, cls_order: list[int], class_names: list[str],
           save_png: bool, grid_path: Path | None, meta: dict, info: dict, t_start: float, t_sampling: float,
           t_sampled: float) -> dict:
    """Rank 0: shards -> samples.npz, PNGs, grid.png, run.json, in index order."""
    t0 = time.perf_counter()
    images: np.ndarray | None = None
    seen = np.zeros(n, bool)
    traces: dict[str, np.ndarray] = {}
    trace_keys: list[str] = []
    stage_seconds: dict[str, float] = {}
    batch_seconds = 0.0
    for p in _read_shards(shard_dir):
        with np.load(p) as z:
            idx = z["indices"]
            if images is None:
                images = np.zeros((n, *z["images"].shape[1:]), np.uint8)
            if seen[idx].any():
                raise ValueError(f"shard {p} repeats samples already in another shard; delete {shard_dir} "
                                 "and sample again")
            seen[idx] = True
            images[idx] = z["images"]
            if not np.array_equal(z["labels"], y_all[idx]):
                raise ValueError(f"shard {p} has other labels than this run; choose a new output folder")
            batch_seconds += float(z["seconds"])
            for k in z.files:
                if k.startswith("trace/"):
                    key = k[len("trace/"):]
                    if key not in traces:
                        traces[key] = np.full(n, np.nan, np.float32)
                        trace_keys.append(key)
                    traces[key][idx] = z[k]
                elif k.startswith("tsec/"):
                    stage_seconds[k[5:]] = stage_seconds.get(k[5:], 0.0) + float(z[k])
    if images is None or not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {n} samples are missing from {shard_dir} after sampling; "
                           "run again with resume=True")
    atomic_save_npz(out / "samples.npz", images=images, labels=y_all)
    if save_png:
        width = max(6, len(str(n - 1)))
        dirs: dict[int, Path] = {}
        for i in range(n):
            k = int(y_all[i])
            if k not in dirs:
                dirs[k] = out / _safe_name(class_names[k])
                dirs[k].mkdir(exist_ok=True)
            atomic_write_bytes(dirs[k] / f"{i:0{width}d}.png", _png_bytes(images[i]))
    if grid_path is not None:
        atomic_write_bytes(grid_path, _png_bytes(make_grid(images, y_all, cls_order)))
    t_end = time.perf_counter()
    sampling_s = t_sampled - t_sampling
    counts = np.bincount(y_all, minlength=len(class_names))
    run = {
        "format": "ebmlens.sample/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": n,
        "seed": meta["seed"],
        "batch_size": info["batch_size"],
        "batch_size_asked": info.get("batch_size_asked", info["batch_size"]),
        "dtype": meta["dtype"],
        "channels_last": info.get("channels_last", False),
        "compile": info.get("compile", False),
        "device": info["device"],
        "world_size": info["world_size"],
        "sampling_mode": info["mode"],
        "batch_coupled": info["batch_coupled"],
        "invariance": ("images depend on the batch size (BatchNorm in train mode)" if info["batch_coupled"] else
                       "images depend only on (seed, index): batch size and process count do not change them"),
        "labels": {"order": "classes[i % K]", "classes": cls_order,
                   "class_names": [class_names[k] for k in cls_order],
                   "counts": {class_names[k]: int(counts[k]) for k in cls_order},
                   "sha256": meta["labels_sha256"]},
        "pipeline": meta["pipeline"],
        "model": meta["model"],
        "versions": versions(),
        "files": {"samples": "samples.npz", "grid": grid_path.name if grid_path else None,
                  "png": "<class_name>/<index>.png" if save_png else None, "shards": "shards/"},
        "timings": {
            "total_s": round(t_end - t_start, 4),
            "sampling_s": round(sampling_s, 4),
            "merge_s": round(t_end - t0, 4),
            "batch_s_sum": round(batch_seconds, 4),
            "images_sampled": info["n_new"],
            "images_resumed": info["n_resumed"],
            "images_per_s": round(info["n_new"] / sampling_s, 4) if sampling_s > 0 and info["n_new"] else None,
        },
        "energy": _energy_summary(trace_keys, traces, stage_seconds),
    }
    run = jsonable(run)
    atomic_write_json(out / "run.json", run)
    log.info("wrote %d samples to %s (%.1f images/s)", n, out, run["timings"]["images_per_s"] or 0.0)
    return run


def record_evaluation(out_dir: str | Path, record: dict) -> None:
    """Record an evaluation of a finished run: ``metrics.json`` and the ``evaluation`` key of
    ``run.json`` (both written atomically). The runner owns ``run.json``; callers hand it the record."""
    out = Path(out_dir)
    path = out / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: evaluate a finished sampling run (its folder holds run.json)")
    atomic_write_json(out / "metrics.json", record)
    run = json.loads(path.read_text())
    run["evaluation"] = record
    atomic_write_json(path, run)
