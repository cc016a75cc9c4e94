"""``ebmlens sample``: class-conditional samples from a classifier with a named preset.

The command is :func:`ebmlens.sample` with a preset::

    model = ebmlens.load_model("ebmlens:cifar10-l2-small")
    pipe = ebmlens.sampling.presets.get("robust-jem", stats=stats, **overrides)
    ebmlens.sample(model, pipe, n=64, out_dir="samples/", batch_size=256, seed=0)

Every run option is a field of :class:`ebmlens.runs.RunOptions` and one flag here (``--no-png`` is
``png=False``, ``--no-grid`` ``grid=False``, ``--compile`` ``compile=True``).

Under ``torchrun --nproc_per_node=K -m ebmlens sample ...`` (or ``srun``) the sample indices are split
across the K processes and rank 0 merges the shards (see :mod:`ebmlens.runs.runner`). In a job
array, ``--shard i/K`` (or ``--shard auto`` from SLURM's array variables) samples task i's block of
indices only; ``ebmlens merge OUT`` merges after the last task.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Literal

import click

from . import friendly_errors
from ._common import load_model_from_cli, model_options, runtime_options, setup_runtime


def _chunk(text: str) -> int | Literal["auto"] | None:
    """``--compute-chunk``: ``auto``, ``none`` or a positive int (RunOptions checks the value)."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    try:
        return int(t)
    except ValueError:
        raise click.BadParameter(f"expected auto, none or a positive integer, got {text!r}",
                                 param_hint="--compute-chunk") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"steps=20"`` -> ``("steps", 20)``; values become int, float (``8/255`` too), bool, None or str.

    >>> parse_override("eps=8/255")[1] == 8 / 255, parse_override("covariance=full")
    (True, ('covariance', 'full'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise ValueError(f"--set expects KEY=VALUE (e.g. --set steps=20), got {text!r}")
    raw = raw.strip()
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null"):
        return key, None
    try:
        return key, int(raw)
    except ValueError:
        pass
    try:
        return key, float(raw)
    except ValueError:
        pass
    try:
        return key, float(Fraction(raw))
    except (ValueError, ZeroDivisionError):
        return key, raw


def parse_classes(text: str | None) -> str | list[str]:
    """``"all"`` or ``"0,3,cat"`` -> ``"all"`` / ``["0", "3", "cat"]`` (resolved against the model later)."""
    if text is None or text.strip().lower() == "all":
        return "all"
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--classes expects 'all' or a comma list of class indices or names, got {text!r}")
    return parts


def card_preset(model, preset: str | None, opts: dict) -> tuple[str, dict, str]:
    """The preset to run: ``--preset`` when given; else the bundled model card's (its overrides under the
    user's ``--set``); else ``robust-jem``. Also says where it came from, for the closing line."""
    if preset is not None:
        return preset, opts, ""
    if getattr(model, "source", None) == "ebmlens" and getattr(model, "name", None):
        from ..models.bundled import sampling_preset

        rec = sampling_preset(model.name)
        if rec is not None:
            return rec[0], {**rec[1], **opts}, ", the model card's preset"
    return "robust-jem", opts, ""


def bundled_stats(model) -> Any:
    """The compact class statistics shipped with a bundled model, else ``None``."""
    if getattr(model, "source", None) != "ebmlens" or not getattr(model, "name", None):
        return None
    from ..models.bundled import bundled_stats as _stats

    return _stats(model.name)


@click.command("sample")
@model_options()
@click.option("--data", default=None,
              help="Data spec (cifar10:PATH): class statistics for the preset (train split), seeds for dat2025.")
@click.option("--stats", "stats_path", default=None, type=click.Path(),
              help="A saved ClassStats file (.safetensors) or an `ebmlens stats` directory, "
                   "instead of fitting on --data.")
@click.option("--preset", default=None,
              help="Sampler preset (see docs/cli.md); default: the model card's preset, else robust-jem.")
@click.option("-n", "--n", "--num-samples", "n", default=64, show_default=True, type=int,
              help="Number of samples. Under torchrun write -n or --num-samples: torchrun's own parser "
                   "rejects --n as an abbreviation of its --nnodes/--nproc-per-node.")
@click.option("--classes", default="all", show_default=True,
              help="'all' or a comma list of class indices or names; labels cycle through them.")
@click.option("--batch-size", default="256", show_default=True,
              help="Images per pass, or 'auto' (CUDA: the largest batch that fits in memory).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last weights, on a copy of the model (measured effect: docs/cli.md).")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile a copy of the classifier (measured effect: docs/cli.md).")
@click.option("--fast", is_flag=True,
              help="CUDA: bf16 autocast (float32 energies), channels_last, torch.compile with CUDA graphs "
                   "(reduce-overhead; a partial last batch compiles once more), TF32 matmuls; recorded in run.json; "
                   "CPU: does nothing (measured effect of each fast path: docs/cli.md).")
@click.option("--records", default="stages", show_default=True, type=click.Choice(["stages", "all", "final", "none"]),
              help="Energy records in run.json: stages = the init, each stage feeding the next and the final point "
                   "(taken from the next stage's first gradient pass where it is at that point: no extra forward); "
                   "all = every point; final; none (production runs).")
@click.option("--seed", default=0, show_default=True, type=int, help="Sample i uses stream (seed, i).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--resume", is_flag=True, help="Continue a killed run in --out (same settings; batch size, device "
              "and threads may change).")
@click.option("--overwrite", is_flag=True, help="Sample into a non-empty --out: an earlier run there "
              "(shards/, run.json and the run files) is removed first; other files are kept unless a run file "
              "replaces them.")
@click.option("--shard", default=None, metavar="i/K|auto",
              help="Be task i (0-based) of a K-task job array: sample only its index block, no merge (then "
                   "`ebmlens merge OUT`); 'auto': SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT.")
@runtime_options()
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Autocast precision of the model passes (energies stay float32; measured effect: docs/cli.md).")
@click.option("--compute-chunk", default="auto", show_default=True, metavar="auto|N|none",
              help="Rows per model pass (the last chunk padded): fixed chunks give the same images for any "
                   "--batch-size; auto = 16 on the CPU, whole batches on CUDA (docs/sampling.md).")
@click.option("--no-png", is_flag=True, help="Skip the per-image PNGs (samples.npz and grid.png are written).")
@click.option("--no-grid", is_flag=True, help="Skip grid.png.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a preset option (repeatable), e.g. --set steps=20 --set eps=8/255.")
@click.option("--evaluate", "eval_metrics", default=None, metavar="METRICS",
              help="After sampling, measure the samples: is, fid, kid, precision, recall, density, coverage, "
                   "diversity or a comma list (ebmlens.metrics.evaluate); "
                   "written to OUT/metrics.json and run.json.")
@click.option("--ref", default=None,
              help="Reference images or statistics .npz for FID/KID (default: --data's train split).")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="The Inception weights file for standard IS/FID/KID (never downloaded).")
@click.option("--feature-model", default=None,
              help="Measure in another network (e.g. ebmlens:cifar10-l2-small): non-standard fd_/kd_/is_ scores.")
@friendly_errors
def sample_cmd(model_spec, model_dir, dataset, threat_model, arch, trust_checkpoint, data, stats_path, preset, n,
               classes, batch_size, channels_last, compile_model, fast, records, seed, out, resume, overwrite, shard,
               device, threads, dtype, compute_chunk, no_png, no_grid, overrides, eval_metrics, ref, inception_weights,
               feature_model) -> None:
    """Draw class-conditional samples with a preset; writes PNGs, samples.npz, grid.png and run.json."""
    from .._dist import dist_env
    from ..runs.jobs import check_out_dir
    from ..runs.labels import resolve_classes
    from ..runs.options import RunOptions, check_n, cli_names
    from ..runs.plan import RunPlan
    from ..runs.runner import run as run_plan
    from ..sampling import presets

    # cheap checks first (the options' own checks, in the flags' names): no model is loaded for a typo
    batch_size = int(batch_size) if batch_size.strip().lstrip("-").isdigit() else batch_size
    with cli_names():
        check_n(n)
        options = RunOptions(batch_size=batch_size, seed=seed, dtype=dtype, device=device, png=not no_png,
                             grid=not no_grid, channels_last=channels_last, compile=compile_model, fast=fast,
                             records=records, threads=threads, compute_chunk=_chunk(compute_chunk), shard=shard,
                             resume=resume, overwrite=overwrite)
    task = options.shard
    if task is not None and eval_metrics is not None:
        raise ValueError("--evaluate needs the merged run, not one task: after the job array run "
                         f"`ebmlens merge {out}` then `ebmlens evaluate {out} --metrics {eval_metrics}`")
    check_out_dir(out, resume=resume, overwrite=overwrite, shard=task)  # before any model or statistics
    setup_runtime(device, threads)
    if preset is not None and preset not in presets.names():
        presets.get(preset)  # raises the error with close matches
    opts = dict(parse_override(s) for s in overrides)
    metrics = ref_spec = None
    if eval_metrics is not None:
        from ..metrics import parse_metrics

        metrics = parse_metrics(eval_metrics)
        ref_spec = ref or (default_ref(data) if data else None)
        needs_ref = [m for m in metrics if m not in ("is", "diversity")]
        if ref_spec is None and needs_ref:
            raise ValueError(f"--evaluate {'/'.join(needs_ref)} needs a reference: --ref cifar10:PATH@train (or a "
                             "statistics .npz), or --data; or evaluate 'is' / 'diversity' only")
    wanted = parse_classes(classes)
    if stats_path is not None and not os.path.exists(stats_path):
        raise FileNotFoundError(f"--stats file {stats_path!r} does not exist; save one with "
                                "ebmlens.class_stats('cifar10:PATH').save(PATH)")

    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model, arch=arch,
                                trust_checkpoint=trust_checkpoint)
    order = resolve_classes(wanted, model.num_classes, model.class_names)  # bad classes fail before any fitting
    stats: Any = None
    if stats_path is not None:
        from ..stats import ClassStats

        stats = ClassStats.load(stats_path, classes=order)  # a per-class directory: only the classes sampled
    elif data is None:
        stats = bundled_stats(model)
    preset, opts, how = card_preset(model, preset, opts)
    pipe = presets.get(preset, stats=stats, data=data, dataset=model.dataset, **opts)
    plan = RunPlan.build(model, pipe, n, out, classes=wanted, options=options)
    run = run_plan(plan, progress=True)
    if dist_env().rank != 0:
        return
    if task is not None:
        lo, hi = run.run["indices"]
        click.echo(f"shard {task[0]}/{task[1]}: {run.run['images_sampled']} new samples (indices {lo}..{hi - 1}) "
                   f"in {run.out_dir}/shards; after every task: ebmlens merge {run.out_dir}")
        return
    t = run.run["timings"]
    ips = f", {t['images_per_s']:.2f} images/s" if t.get("images_per_s") else ""
    grid = f", grid {run.grid}" if run.grid else ""
    click.echo(f"wrote {run.n} samples to {run.out_dir}{grid} ({preset}{how}{ips})")
    if metrics is not None:
        evaluate_run(run, metrics, ref_spec, inception_weights=inception_weights, feature_model=feature_model,
                     device=device, batch_size=run.run["attempts"][-1]["batch_size"], trust_checkpoint=trust_checkpoint)


def default_ref(data: str) -> str:
    """The FID/KID reference by convention: the train split of ``--data``."""
    base, sep, split = data.rpartition("@")
    return f"{base if sep and split in ('train', 'test') else data}@train"


def evaluate_run(run, metrics, ref, *, inception_weights=None, feature_model=None, device=None, batch_size=256,
                 trust_checkpoint=False) -> None:
    """Measure a finished run with :func:`ebmlens.metrics.evaluate`; write ``metrics.json`` and add it
    to ``run.json`` (both atomically); print the values on one line."""
    from ..metrics import evaluate
    from ..runs.record import record_evaluation

    res = evaluate(run.out_dir, ref=ref, metrics=metrics, feature_model=feature_model,
                   inception_weights=inception_weights, device=None if device == "auto" else device,
                   batch_size=batch_size, progress=True, trust_checkpoint=trust_checkpoint)
    record_evaluation(run.out_dir, res.to_dict())
    shown = ", ".join(f"{k}={v:.4g}" for k, v in res.values.items())
    click.echo(f"evaluated {res.num_images} samples in {res.network}: {shown}")
