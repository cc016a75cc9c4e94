"""``ebmlens evaluate``: IS / FID / KID of a samples folder (standard Inception or a named feature network),
and ``--make-ref-stats`` to precompute reference statistics once."""

from __future__ import annotations

import click

from . import friendly_errors
from ._common import TRUST_HELP, check_out_file, load_model_from_cli, overwrite_option, runtime_options, setup_runtime


@click.command("evaluate")
@click.argument("samples", required=False)
@click.option("--ref", default=None, help="Reference images: data spec (cifar10:PATH@train), folder or .npz.")
@click.option("--ref-stats", default=None, type=click.Path(dir_okay=False),
              help="Precomputed reference statistics (.npz from --make-ref-stats) instead of --ref.")
@click.option("--make-ref-stats", default=None, metavar="SPEC",
              help="Compute reference statistics of SPEC and write them to --out (.npz); no SAMPLES.")
@click.option("--keep-features", is_flag=True, help="With --make-ref-stats: also store the features (KID needs them).")
@click.option("--metrics", default="is,fid,kid", show_default=True,
              help="Comma-separated: is, fid, kid, precision, recall, density, coverage, diversity "
                   "(fidelity and diversity apart: k-NN manifolds, within-class 1 - cos).")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="The official pt_inception-2015-12-05-6726825d.pth (standard IS/FID/KID).")
@click.option("--feature-model", default=None,
              help="Measure in this network instead of Inception: ebmlens:NAME, file:CKPT (with --arch), ...")
@click.option("--arch", default=None, help="Architecture of a file: feature model.")
@click.option("--layer", default=None, help="Feature layer by graph node name (default: penultimate).")
@click.option("--batch-size", default=100, show_default=True, type=int)
@runtime_options()
@click.option("--splits", default=10, show_default=True, type=int, help="Inception Score splits.")
@click.option("--kid-subsets", default=100, show_default=True, type=int)
@click.option("--kid-subset-size", default=None, type=int, help="Default: min(1000, N, N_ref).")
@click.option("--trust-checkpoint", is_flag=True,
              help=TRUST_HELP + " Also: an Inception weights file other than the official one.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the result (.json), or the statistics (.npz) with --make-ref-stats. SAMPLES/metrics.json "
                   "of a sampling run records the evaluation in its run.json too.")
@overwrite_option()
@friendly_errors
def evaluate_cmd(samples, ref, ref_stats, make_ref_stats, keep_features, metrics, inception_weights, feature_model,
                 arch, layer, batch_size, device, threads, splits, kid_subsets, kid_subset_size, trust_checkpoint,
                 out, overwrite) -> None:
    """Inception Score, FID, KID (and precision, recall, density, coverage, diversity) of SAMPLES (a samples folder,
    image folder, .npz or data spec).

    Standard numbers need the official Inception weights file (never downloaded); with
    --feature-model the numbers are named after that network (fd_<net>, kd_<net>, is_<net>).
    """
    from pathlib import Path

    from .. import _dist
    from .. import metrics as M

    # --out first, before anything is computed; SAMPLES/metrics.json of a sampling run is its evaluation record
    # (the one file a command may write into another command's folder; a new evaluation replaces it)
    into_run = bool(out and samples and not make_ref_stats and (Path(samples) / "run.json").is_file()
                    and Path(out).resolve() == (Path(samples) / "metrics.json").resolve())
    check_out_file(out, overwrite=overwrite or into_run)
    device = setup_runtime(device, threads)
    _dist.init_if_needed(device)  # under torchrun: join first (each rank extracts a share; rank 0 writes)
    device = _dist.resolve_device(device)
    fm = None
    if feature_model:
        fm = load_model_from_cli(feature_model, arch=arch, trust_checkpoint=trust_checkpoint)
    elif arch:
        raise ValueError("--arch applies to a file: --feature-model; the standard Inception takes none")
    common = dict(inception_weights=inception_weights, layer=layer, batch_size=batch_size, device=device,
                  trust_checkpoint=trust_checkpoint, progress=True)
    if make_ref_stats:
        if samples or ref or ref_stats:
            raise ValueError("--make-ref-stats takes no SAMPLES, --ref or --ref-stats")
        if not out or not out.endswith(".npz"):
            raise ValueError("--make-ref-stats needs --out FILE.npz")
        s = M.reference_stats(make_ref_stats, fm, keep_features=keep_features, out=out, **common)
        if not _dist.is_rank0():
            return
        click.echo(f"wrote {out}: {s.count} images of {s.source} in {s.network} at {s.layer}"
                   + (" (with features)" if s.features is not None else ""))
        return
    if not samples:
        raise ValueError("give SAMPLES (a samples folder, image folder, .npz or data spec), or --make-ref-stats SPEC")
    if ref and ref_stats:
        raise ValueError("give either --ref or --ref-stats, not both")
    r = M.evaluate(samples, ref_stats or ref, metrics, fm, splits=splits, kid_subsets=kid_subsets,
                   kid_subset_size=kid_subset_size, **common)
    if not _dist.is_rank0():  # under torchrun only rank 0 writes and prints
        return
    text = r.to_json()
    if into_run:
        from ..runs.record import record_evaluation

        record_evaluation(samples, r.to_dict())  # metrics.json and run.json's "evaluation"
    elif out:
        from .._io import atomic_write_text

        atomic_write_text(out, text + "\n")
        click.echo(" ".join(f"{k}={v:.6g}" for k, v in r.values.items())
                   + f" (n={r.num_images}, {r.network}; details in {out})")
    else:
        click.echo(text)
