"""``ebmlens stats``: per-class statistics of a (large, streamed) image set, one file per class.

Python equivalent::

    from ebmlens.stats import fit_stats_dir
    fit_stats_dir("imagenet:/data/imagenet@train", "in-stats/", downsample=4, rank=64)
"""

from __future__ import annotations

import click

from . import friendly_errors
from ._common import check_out_folder, class_map_option, runtime_options, setup_runtime


@click.command("stats")
@click.option("--data", required=True,
              help="Data spec (train split unless @split is given), e.g. imagenet:/data/imagenet@train.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory to write (resumes: finished classes are kept).")
@click.option("--downsample", default=4, show_default=True, type=int, help="Average-pool factor before fitting.")
@click.option("--rank", default=64, show_default=True, type=int, help="Principal components kept per class.")
@click.option("-n", "--n", "n", default=None, type=int, help="Fit on a strided subset of N images (default: all).")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--resize", default=None, type=int, help="Resize the shorter side of image files to this (default: "
              "imagenet: 256; folders: as stored).")
@click.option("--crop", default=None, type=int, help="Center-crop image files to this (imagenet default 224).")
@runtime_options()
@class_map_option
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out that holds no `ebmlens stats` directory.")
@friendly_errors
def stats_cmd(data, out, downsample, rank, n, batch_size, resize, crop, device, threads, overwrite) -> None:
    """Fit per-class mean, pixel variances and top-RANK principal components (streamed, class by class);
    `ebmlens sample --stats OUT` reads the directory."""
    from .. import _dist
    from ..energy import Preprocess
    from ..stats import fit_stats_dir

    if downsample < 1 or rank < 1 or batch_size < 1:
        raise ValueError(f"--downsample, --rank and --batch-size must be >= 1, got {downsample}, {rank}, {batch_size}")
    # its own directory (meta.json) resumes without a flag; anything else is refused before any fitting
    check_out_folder(out, own="meta.json", overwrite=overwrite, what="`ebmlens stats` directory (meta.json)")
    device = setup_runtime(device, threads)
    pre = Preprocess(resize, crop) if resize or crop else None
    path = fit_stats_dir(data, out, downsample=downsample, rank=rank, n=n, batch_size=batch_size, preprocess=pre,
                         device=_dist.resolve_device(device))
    click.echo(f"class statistics in {path}")
