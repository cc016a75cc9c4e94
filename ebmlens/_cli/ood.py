"""``ebmlens ood``: how well a checkpoint's energies separate its data from out-of-distribution sets.

The Python equivalent of ``ebmlens ood --data D --ood synthetic:uniform --score energy --out ood/``::

    rep = ebmlens.analysis.ood_report("M", "D", {"synthetic:uniform": "synthetic:uniform"}, ["energy"], n=1000)
    rep.to_json("ood/report.json"); rep.table(); rep.plot("ood/ood.png")
"""

from __future__ import annotations

import click

from . import friendly_errors
from ._common import (
    check_threat_model,
    load_model_from_cli,
    model_options,
    runtime_options,
    setup_runtime,
    write_report,
)

SCORE_NAMES = ("energy", "max-logit", "msp", "grad-norm")


def parse_ood_sets(values: tuple[str, ...]) -> dict[str, str]:
    """``--ood SPEC`` or ``--ood NAME=SPEC`` (NAME without ``:``) -> ``{name: spec}``."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or ":" in name or "?" in name or not name:
            name, spec = v, v
        if not spec:
            raise ValueError(f"--ood {v!r} names no data spec; write --ood SPEC or --ood NAME=SPEC")
        if name in out or name == "in":
            raise ValueError(f"--ood name {name!r} is " + ("reserved for the in-distribution set" if name == "in"
                                                           else "given twice") + "; name the sets NAME=SPEC")
        out[name] = spec
    return out


@click.command("ood")
@model_options()
@click.option("--data", default=None, help="In-distribution data spec, e.g. cifar10:PATH (test split by default).")
@click.option("--ood", "ood_sets", multiple=True,
              help="OOD set (repeatable): any data spec, synthetic:uniform|gaussian|constant, interp:SPEC, "
                   "corrupt:NAME@SEVERITY:SPEC; NAME=SPEC names it.")
@click.option("--score", "scores", multiple=True,
              help=f"Score (repeatable): {', '.join(SCORE_NAMES)}. Default: all four.")
@click.option("-n", "--n", default=1000, show_default=True, type=int, help="Images per set, spread evenly.")
@click.option("--batch-size", default=100, show_default=True, type=int)
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap resamples of the intervals.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the bootstrap (and of constructed sets' defaults).")
@runtime_options()
@click.option("--out", default=None, type=click.Path(), help="Folder for report.json, table.md, ood.png.")
@friendly_errors
def ood_cmd(model_spec, model_dir, dataset, threat_model, arch, trust_checkpoint, data, ood_sets, scores, n,
            batch_size, n_boot, seed, device, threads, out) -> None:
    """AUROC, AUPR-in/out and FPR@95%TPR of energy-based OOD scores, with bootstrap intervals."""
    if data is None:
        raise ValueError("--data is required, e.g. --data cifar10:../shared/data/cifar10-jpeg.tar.xz")
    if not ood_sets:
        raise ValueError("give at least one --ood set, e.g. --ood synthetic:uniform --ood corrupt:contrast@3:SPEC")
    if out is None:
        raise ValueError("--out is required: a folder for report.json, table.md and ood.png")
    sets = parse_ood_sets(ood_sets)
    names = list(scores) or list(SCORE_NAMES)
    bad = [s for s in names if s not in SCORE_NAMES]
    if bad:
        raise ValueError(f"unknown --score {bad[0]!r}; choose {', '.join(SCORE_NAMES)}")
    for label, v in (("--n", n), ("--batch-size", batch_size), ("--n-boot", n_boot)):
        if v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    device = setup_runtime(device, threads)
    threat_model = check_threat_model(threat_model)
    from .. import _dist
    from ..analysis import ood_report
    from .energy import _check_out

    folder = _check_out(out)
    _dist.init_if_needed(device)
    dev = _dist.resolve_device(device)
    model = load_model_from_cli(model_spec, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                                arch=arch, trust_checkpoint=trust_checkpoint, device=dev)
    rep = ood_report(model, data, sets, names, n=n, batch_size=batch_size, n_boot=n_boot, seed=seed, device=dev,
                     progress=True)
    if not _dist.is_rank0():
        return
    write_report(folder, rep, "ood.png")
