"""The torch.distributed pieces shared by ``ebmlens sample``, ``energy`` and ``evaluate`` under torchrun.

``torchrun --nproc_per_node=K -m ebmlens <command> ...`` starts K processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment. Each process calls :func:`init_if_needed`
(gloo on the CPU, nccl on CUDA; a no-op for a single process or a group that already exists), works
on its share of the indices, and the results travel to rank 0 with :func:`gather_to_rank0`, which
keeps rank order, so rank 0 can restore index order. Only rank 0 writes files and prints.

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is a cheap no-op, so library code
calls them unconditionally.

SLURM. ``srun ebmlens <command> ...`` (one task per GPU) works without torchrun: when ``WORLD_SIZE``
is unset, SLURM's variables are mapped, but only inside a job step launched by srun
(``SLURM_STEP_ID`` set) with ``SLURM_NTASKS > 1``, so that a plain command in an sbatch script
(which sees ``SLURM_NTASKS`` too) runs alone and never waits for peers: rank = ``SLURM_PROCID``,
world = ``SLURM_NTASKS``, local rank = ``SLURM_LOCALID``, master = the first host of
``SLURM_NODELIST`` (:func:`expand_nodelist`), port = ``MASTER_PORT``, else
``29500 + SLURM_JOB_ID % 1000``. This is the one place that reads these variables.

>>> expand_nodelist("n[01-03,07],m5")
['n01', 'n02', 'n03', 'n07', 'm5']
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch

from ._validate import parse_device  # the one device parser; re-exported for the callers here

__all__ = ["DistInfo", "dist_env", "init_if_needed", "barrier", "gather_to_rank0", "broadcast_from_rank0",
           "is_rank0", "is_nccl", "run_on_rank0", "shard", "parse_device", "resolve_device", "expand_nodelist",
           "slurm_env", "local_world_size"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine.

    ``owns_group``: this call created the process group (so :meth:`close` may destroy it).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world > 1

    def barrier(self, device: torch.device | None = None) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.active:
            barrier(device)

    def close(self) -> None:
        """Destroy the process group if this call created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def dist_env() -> DistInfo:
    """Rank, world size and local rank from an existing process group, else from torchrun's environment
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else from srun's (:func:`slurm_env`).

    Does not initialise anything. ``world > 1`` means distributed.

    Raises:
        ValueError: ``WORLD_SIZE > 1`` without ``RANK`` (not launched by torchrun).
    """
    if _group():
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        slurm = slurm_env()
        if "LOCAL_RANK" not in os.environ and slurm is not None:
            local = slurm[0].local_rank
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    if "WORLD_SIZE" not in os.environ:
        slurm = slurm_env()
        return slurm[0] if slurm is not None else DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer; launch with torchrun "
                         "or unset WORLD_SIZE") from e
    if world <= 1:
        return DistInfo()
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun, "
                         "or unset WORLD_SIZE for a single process")
    return DistInfo(int(os.environ["RANK"]), world, local, False)


def _slurm_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"srun set SLURM_STEP_ID but not {name}; launch with srun (or torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; launch with srun or unset it") from None


def slurm_env() -> tuple[DistInfo, str, int] | None:
    """``(DistInfo, master host, port)`` inside an srun step of more than one task, else ``None``.

    A command that only runs inside an sbatch allocation (no ``SLURM_STEP_ID``), or a step of one task,
    gets ``None``: it runs alone."""
    if "SLURM_STEP_ID" not in os.environ or _slurm_int("SLURM_NTASKS", 1) <= 1:
        return None
    world = _slurm_int("SLURM_NTASKS")
    nodes = next((os.environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
                  if os.environ.get(k)), None)
    if not nodes:
        raise ValueError("srun set SLURM_STEP_ID but no SLURM_NODELIST: cannot find the master host")
    port = os.environ.get("MASTER_PORT")
    d = DistInfo(_slurm_int("SLURM_PROCID"), world, _slurm_int("SLURM_LOCALID", 0), False)
    return d, os.environ.get("MASTER_ADDR") or expand_nodelist(nodes)[0], \
        int(port) if port else 29500 + _slurm_int("SLURM_JOB_ID", 0) % 1000


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compressed host list in full: ``"n[01-03,07],m5"`` -> ``n01 n02 n03 n07 m5``.

    Commas outside brackets separate entries; ``[a-b,c]`` ranges keep the zero padding of their
    first bound; several bracket groups in one name combine (``r[1-2]n[1-2]`` -> 4 names).

    >>> expand_nodelist("gpu[8-10]"), expand_nodelist("r[1-2]n[1-2]")
    (['gpu8', 'gpu9', 'gpu10'], ['r1n1', 'r1n2', 'r2n1', 'r2n2'])
    """
    items, depth, cur = [], 0, ""
    for ch in str(text).strip():
        depth += (ch == "[") - (ch == "]")
        if depth < 0 or depth > 1:
            raise ValueError(f"cannot read the SLURM node list {text!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"cannot read the SLURM node list {text!r}: unbalanced brackets")
    items.append(cur)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            raise ValueError(f"cannot read the SLURM node list {text!r}: an empty entry")
        out += _expand_one(item, text)
    return out


def _expand_one(item: str, text: str) -> list[str]:
    if "[" not in item:
        return [item]
    head, _, rest = item.partition("[")
    body, _, tail = rest.partition("]")
    names = []
    for part in body.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(f"cannot read the SLURM node list {text!r}: bad range {part!r}")
        names += [f"{head}{k:0{len(lo)}d}" for k in range(int(lo), int(hi if dash else lo) + 1)]
    return [n + t for n in names for t in _expand_one(tail, text)] if tail else names


def local_world_size() -> int:
    """Processes on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else srun's tasks on this node
    (``SLURM_STEP_TASKS_PER_NODE``'s first entry, e.g. ``4(x2)``), else 1."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"] or 1)
    if slurm_env() is None:
        return 1
    raw = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE") or "1"
    first = raw.split(",")[0].split("(")[0]
    return int(first) if first.isdigit() else 1


def _destroy_at_exit() -> None:
    if _group():
        import torch.distributed as dist

        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def init_if_needed(device: str | torch.device | None = None) -> DistInfo:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (or srun's, see the module docs); idempotent.

    Args:
        device: the device the caller will use; CUDA (or ``None``/``"auto"`` with CUDA present)
            selects nccl and ``cuda:LOCAL_RANK``, anything else gloo.

    Returns:
        :class:`DistInfo`; ``owns_group`` is True only for the call that created the group.
    """
    d = dist_env()
    if not d.active or _group():
        return d
    import torch.distributed as dist

    if not dist.is_available():
        raise ImportError("this torch build has no torch.distributed; run a single process")
    hint = None if device is None else str(device)
    use_cuda = torch.cuda.is_available() and (hint in (None, "auto") or hint.startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    kwargs: dict = {"backend": backend, "timeout": datetime.timedelta(minutes=60)}
    slurm = slurm_env() if "WORLD_SIZE" not in os.environ else None
    if slurm is not None:  # srun: rendezvous at the first host of the node list
        _, host, port = slurm
        kwargs.update(init_method=f"tcp://{host}:{port}", rank=d.rank, world_size=d.world)
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
        kwargs["device_id"] = torch.device("cuda", d.local_rank)
    try:
        dist.init_process_group(**kwargs)
    except TypeError:  # torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(**kwargs)
    atexit.register(_destroy_at_exit)
    log.info("joined process group: rank %d of %d (%s)", d.rank, d.world, backend)
    return DistInfo(d.rank, d.world, d.local_rank, True)


def resolve_device(device: str | torch.device | None, d: DistInfo | None = None) -> torch.device:
    """The one device parser: :func:`parse_device`, then ``auto`` -> CUDA if available else CPU; under
    torchrun a bare ``cuda`` (or auto on CUDA) means ``cuda:LOCAL_RANK``."""
    d = dist_env() if d is None else d
    name = parse_device(device)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and d.active:
        dev = torch.device("cuda", d.local_rank)
    return dev


def is_nccl() -> bool:
    """True when the process group exists and uses nccl."""
    import torch.distributed as dist

    return _group() and dist.get_backend() == "nccl"


def barrier(device: torch.device | None = None) -> None:
    """Wait for every rank; a no-op without a process group."""
    if not _group():
        return
    import torch.distributed as dist

    if is_nccl() and device is not None and torch.device(device).type == "cuda":
        dist.barrier(device_ids=[torch.device(device).index or 0])
    else:
        dist.barrier()


def is_rank0() -> bool:
    """True for rank 0 and for a single process."""
    return dist_env().rank == 0


def shard(items: list, d: DistInfo | None = None) -> list:
    """This rank's share of ``items``: every ``world``-th item starting at ``rank``."""
    d = dist_env() if d is None else d
    return list(items)[d.rank::d.world]


def gather_to_rank0(obj: Any) -> list | None:
    """Everyone's ``obj`` on rank 0, as a list in rank order; ``None`` on the other ranks.

    Tensors travel as tensors (CPU; any first-dimension length per rank, same trailing shape and
    dtype), anything else is pickled. A single process gets ``[obj]``.
    """
    if not _group():
        return [obj]
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        shapes: list = [None] * world
        dist.all_gather_object(shapes, (tuple(t.shape), str(t.dtype)))
        if len({(s[1:], dt) for s, dt in shapes}) != 1:
            raise ValueError(f"gather_to_rank0: the ranks hold tensors of different shapes/dtypes {shapes}; "
                             "only the first dimension may differ")
        longest = max(s[0] if s else 1 for s, _ in shapes)
        pad = torch.zeros((longest, *t.shape[1:]) if t.dim() else (1,), dtype=t.dtype)
        pad[:t.shape[0] if t.dim() else 1] = t if t.dim() else t.reshape(1)
        dev = torch.device("cuda", torch.cuda.current_device()) if is_nccl() else torch.device("cpu")
        bufs = [torch.empty_like(pad, device=dev) for _ in range(world)]
        dist.all_gather(bufs, pad.to(dev))
        if rank != 0:
            return None
        return [b.cpu()[:s[0]] if s else b.cpu()[0].reshape(()) for b, (s, _) in zip(bufs, shapes)]
    out: list | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled); the object itself for a single process."""
    if not _group():
        return obj
    import torch.distributed as dist

    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_rank0(fn, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on rank 0, its result (or its exception, re-raised) on every rank.

    The other ranks wait for rank 0 rather than hang when it fails.
    """
    if not _group():
        return fn(*args, **kwargs)
    box: tuple = (None, None)
    if is_rank0():
        try:
            box = (fn(*args, **kwargs), None)
        except Exception as e:
            try:
                pickle.dumps(e)
                box = (None, e)
            except Exception:
                box = (None, RuntimeError(f"{type(e).__name__}: {e}"))
    res, err = broadcast_from_rank0(box)
    if err is not None:
        raise err  # on every rank, so each exits the same way
    return res
