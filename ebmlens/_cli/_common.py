"""The CLI's one vocabulary: shared options and the helpers that turn them into library calls.

Every command that loads a model takes the same model options (``--model``, ``--model-dir``,
``--dataset``, ``--threat-model``, ``--arch``, ``--trust-checkpoint``); every command that computes
takes ``--device`` (default ``auto``) and ``--threads``. ``--threat-model`` is always the *model's*
threat model (RobustBench look-up, and the default of every attack); commands that attack take
``--attack-threat-model`` to attack in another geometry. Options are checked by the library
(:func:`ebmlens._dist.parse_device`, :func:`ebmlens.attacks.parse_threat_model`) before any model
is loaded. Nothing here imports torch at import time (``--help`` stays fast).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from .. import DEFAULT_MODEL
from .._io import check_writable

TRUST_HELP = ("Allow a checkpoint that holds pickled Python objects (torch.load with weights_only=False). "
              "Loading such a file runs code from it: only for files you trust. Plain state dicts and "
              "safetensors files need no flag.")
THREAT_MODEL_HELP = ("The model's threat model (L2, Linf, corruptions): the RobustBench look-up and the default "
                     "of every attack (default: the model's own, when it records one).")


def model_options(*, model_default: str | None = DEFAULT_MODEL, arch_help: str | None = None) -> Callable:
    """``--model --model-dir --dataset --threat-model --arch --trust-checkpoint`` on a command."""
    opts = [
        click.option("--model", "model_spec", default=model_default, show_default=model_default is not None,
                     help="Model spec: ebmlens:NAME, robustbench:NAME, timm:NAME, hf:ORG/NAME[@REV] or file:PATH."),
        click.option("--model-dir", default=None, help="Folder of RobustBench checkpoints (default: models/)."),
        click.option("--dataset", default=None, help="RobustBench dataset of the model (cifar10, cifar100, imagenet)."),
        click.option("--threat-model", default=None, help=THREAT_MODEL_HELP),
        click.option("--arch", default=None,
                     help=arch_help or "Architecture of a file: checkpoint (registered name or module:factory)."),
        click.option("--trust-checkpoint", is_flag=True, help=TRUST_HELP),
    ]
    return _stack(opts)


def with_class_map(spec: str | None, class_map: str | None) -> str | None:
    """``spec`` with ``?class_map=FILE`` added (how ``--class-map`` reaches every reader)."""
    if not spec or not class_map:
        return spec
    return f"{spec}{'&' if '?' in spec else '?'}class_map={class_map}"


def class_map_option(fn: Callable) -> Callable:
    """``--class-map FILE.json``: ``{"folder": "class name" or index}`` for class folders of ``--data``
    not named as the model's classes; added to the data spec (``?class_map=FILE``)."""
    import functools

    @functools.wraps(fn)
    def run(*args, class_map: str | None = None, **kw):
        if class_map is not None:
            if not kw.get("data"):
                raise click.UsageError("--class-map needs --data")
            kw["data"] = with_class_map(kw["data"], class_map)
        return fn(*args, **kw)

    return click.option("--class-map", "class_map", default=None, type=click.Path(dir_okay=False),
                        help='JSON {"folder": "class name" or index} for class folders of --data not named as '
                             "the model's classes (folders match by name otherwise).")(run)


def runtime_options(*, device_default: str = "auto") -> Callable:
    """``--device`` (default auto) and ``--threads``."""
    return _stack([
        click.option("--device", default=device_default, show_default=True,
                     help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps."),
        click.option("--threads", default=None, type=int,
                     help="CPU threads of torch (default: torch's own; under torchrun cores / local processes)."),
    ])


def _stack(opts: list) -> Callable:
    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def setup_runtime(device: str | None, threads: int | None) -> str:
    """Check ``--device`` (no model is loaded yet) and apply ``--threads``; returns the device name."""
    from .._dist import parse_device

    name = parse_device(device)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {threads!r}")
        import torch

        torch.set_num_threads(threads)
    else:
        from .._dist import local_world_size

        local = local_world_size()
        if local > 1:  # torchrun / srun: share the cores among the processes of this machine
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return name


def check_threat_model(threat_model: str | None) -> str | None:
    """``--threat-model`` as the library spells it (``L2``, ``Linf``) or ``corruptions``; None stays None."""
    if threat_model is None or str(threat_model).strip().lower() == "corruptions":
        return None if threat_model is None else "corruptions"
    from ..attacks import parse_threat_model

    return parse_threat_model(threat_model)


def attack_geometry(model: Any, attack_threat_model: str | None, threat_model: str | None, eps: float | None):
    """The attack's geometry (an ``L2Ball`` / ``LinfBall``): :meth:`ebmlens.attacks.Geometry.for_model` of
    ``--attack-threat-model``, else ``--threat-model`` (the model's), and ``--eps``: the Python API's one
    resolver, so the CLI and the API agree. ``model=None`` checks the options before a model is loaded."""
    from ..attacks import Geometry

    if eps is not None and not eps > 0:
        raise ValueError(f"--eps must be > 0, got {eps}")
    tm = attack_threat_model or (None if threat_model == "corruptions" else threat_model)
    return Geometry.for_model(model, tm, eps)


def write_report(folder, report: Any, plot_name: str) -> None:
    """``report.json``, ``table.md`` and, with matplotlib, the plot into ``folder``; prints the table and
    what was written (a note, not an error, when matplotlib is missing)."""
    from .._io import atomic_write_text

    report.to_json(folder / "report.json")
    atomic_write_text(folder / "table.md", report.table())
    written = "report.json, table.md"
    try:
        report.plot(folder / plot_name)
        written += f", {plot_name}"
    except ImportError:
        click.echo("note: matplotlib is not installed, so no plot; pip install 'ebmlens[plots]'", err=True)
    click.echo(report.table())
    click.echo(f"wrote {folder}/{written}")


def load_model_from_cli(spec, *, model_dir=None, dataset=None, threat_model=None, arch=None, trust_checkpoint=False,
                        device=None):
    """Resolve the CLI's model options to an EnergyModel (default: the bundled model)."""
    from ..models import resolve_model

    return resolve_model(spec or DEFAULT_MODEL, model_dir=model_dir, dataset=dataset,
                         threat_model=check_threat_model(threat_model), arch=arch,
                         trust_checkpoint=trust_checkpoint, device=None if device in (None, "auto") else device)


def overwrite_option() -> Callable:
    """``--overwrite``: replace an existing ``--out`` file."""
    return click.option("--overwrite", is_flag=True, help="Replace --out if it exists (refused otherwise).")


def check_out_file(out: str | None, *, overwrite: bool, flag: str = "--out") -> None:
    """Before anything is computed: a file ``--out`` must not exist (unless ``--overwrite``) and its folder must
    be one we can create or write in. ``None`` (no ``--out``) passes."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{flag} {out} is a folder; give a file name (e.g. {path / 'result.json'})")
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {out} exists; pass --overwrite to replace it, or choose another file")
    check_writable(path.parent, f"{flag} {out}", f"choose another {flag}")


def check_out_folder(out: str, *, own: str, overwrite: bool, what: str, flag: str = "--out") -> None:
    """Before anything is computed: a folder ``--out`` must be creatable and writable, and empty unless it holds
    this command's own record ``own`` (a file name inside it: the command then continues its work there)
    or ``--overwrite`` is given."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out} is a file; choose a folder")
    check_writable(path, f"{flag} {out}", f"choose another {flag}")
    if path.is_dir() and not overwrite and not (path / own).exists():
        found = sorted(p.name for p in path.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise ValueError(f"{flag} {out} is not empty and holds no {what} ({shown}); choose an empty or new "
                             "folder, or pass --overwrite to write into it")
