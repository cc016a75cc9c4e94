"""``ebmlens merge OUT``: merge the shards of a job array (``ebmlens sample --shard i/K``) into a run.

The command is :func:`ebmlens.runs.merge`::

    from ebmlens.runs import merge
    run = merge("samples/")

It takes ``OUT/.lock``, refuses while a task still runs, names the missing tasks and indices, and
writes images.npy, labels.npy, samples.npz (up to 2 GiB), the missing PNGs, grid.png and run.json.
"""

from __future__ import annotations

import click

from . import friendly_errors


@click.command("merge")
@click.argument("out", type=click.Path(file_okay=False))
@friendly_errors
def merge_cmd(out: str) -> None:
    """Merge the shards of a finished job array in OUT (after every `ebmlens sample --shard i/K` task)."""
    from ..runs.runner import merge

    run = merge(out)
    files = ", ".join(v for k, v in run.run["files"].items() if v and k in ("images", "labels", "samples", "grid"))
    click.echo(f"merged {run.n} samples in {run.out_dir} ({files})")
