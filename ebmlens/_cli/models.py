"""``ebmlens models [SOURCE]``: list the models that can be loaded offline.

Python equivalent::

    import ebmlens
    ebmlens.list_models("robustbench", dataset="cifar10", threat_model="L2")
    ebmlens.list_models("hf")                      # what the Hugging Face cache holds that ebmlens can open
    ebmlens.models.hf.scan()                       # every cached revision, with what is missing
"""

from __future__ import annotations

from pathlib import Path

import click

from . import friendly_errors


def _robustbench_rows(dataset: str | None, threat_model: str | None, model_dir: str | None, local_only: bool):
    from ..models import robustbench as rb

    zoo = rb.import_zoo()
    ds_filter = rb._norm_dataset(zoo, dataset) if dataset else None
    tm_filter = rb._norm_threat(threat_model) if threat_model else None
    for ds_enum, tms in zoo.items():
        if ds_filter and ds_enum.value != ds_filter:
            continue
        for tm_enum, models in tms.items():
            if tm_filter and tm_enum.value != tm_filter:
                continue
            for name in models:
                path = None if model_dir is None else rb.weights_path(name, ds_enum.value, tm_enum.value, model_dir)
                have = path is not None and path.is_file()
                if local_only and not have:
                    continue
                yield name, ds_enum.value, tm_enum.value, have


def _hf_rows(download: str | None) -> None:
    from ..models import hf

    if download is not None:
        repo, revision = hf.parse_repo(download)
        click.echo(f"downloaded {hf.download_to_cache(repo, revision)}", err=True)
    entries = hf.scan()
    for e in entries:
        if e.ok:
            click.echo(f"hf:{e.spec}\t{e.detail}\t{e.commit[:12]}")
    for e in entries:
        if not e.ok:
            click.echo(f"cannot open hf:{e.spec}: {e.detail}", err=True)
    if not any(e.ok for e in entries):
        click.echo(f"no models ebmlens can open in the Hugging Face cache {hf.cache_dir()}", err=True)


@click.command("models")
@click.argument("source", required=False)
@click.option("--dataset", default=None, help="robustbench: cifar10, cifar100 or imagenet.")
@click.option("--threat-model", default=None, help="robustbench: Linf, L2 or corruptions.")
@click.option("--model-dir", default=None, type=click.Path(file_okay=False),
              help="robustbench: root of DATASET/THREAT/NAME.pt; marks the models whose weights are there.")
@click.option("--local", "local_only", is_flag=True, help="robustbench: only models whose weights are in --model-dir.")
@click.option("--pattern", default="", help="timm: a name pattern such as 'resnet*'.")
@click.option("--download", "download", default=None, metavar="ORG/NAME[@REV]",
              help="hf: fetch this repository's config.json and weights into the Hugging Face cache first "
                   "(the only command that goes online; needs huggingface_hub).")
@friendly_errors
def models_cmd(source: str | None, dataset: str | None, threat_model: str | None, model_dir: str | None,
               local_only: bool, pattern: str, download: str | None) -> None:
    """List loadable models of SOURCE (ebmlens, robustbench, timm, hf, or your own), offline.

    Without SOURCE: the bundled models and what the other sources offer. 'hf' lists what the
    Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub) holds that
    'hf:ORG/NAME[@REV]' can open, and on stderr what it cannot, with the reason.
    """
    from .. import models as M

    if download is not None and source != "hf":
        raise ValueError(f"--download applies to 'ebmlens models hf', not to {source or 'no source'!r}")
    if source == "hf":
        if dataset or threat_model or pattern or model_dir or local_only:
            raise ValueError("'ebmlens models hf' takes only --download; the cache is $HF_HUB_CACHE or $HF_HOME/hub")
        _hf_rows(download)
        return
    if local_only and model_dir is None:
        raise ValueError("--local needs --model-dir (the folder that holds DATASET/THREAT/NAME.pt)")
    if source is None:
        names = M.list_models("ebmlens")
        click.echo("bundled (ebmlens:NAME):" + ("" if names else " none installed"))
        for n in names:
            click.echo(f"  ebmlens:{n}")
        if model_dir is not None:
            rows = list(_robustbench_rows(dataset, threat_model, model_dir, True))
            click.echo(f"robustbench weights in {model_dir}:" + ("" if rows else " none"))
            for name, ds, tm, _ in rows:
                click.echo(f"  robustbench:{name}  --dataset {ds} --threat-model {tm}")
        click.echo("more: 'ebmlens models robustbench [--dataset D] [--threat-model T] [--model-dir DIR]', "
                   "'ebmlens models timm --pattern PATTERN', 'ebmlens models hf' (the Hugging Face cache); "
                   "'file:PATH --arch ARCH' loads any checkpoint")
        return
    if source == "robustbench":
        rows = list(_robustbench_rows(dataset, threat_model, model_dir, local_only))
        for name, ds, tm, have in rows:
            mark = ("  [local]" if have else "  [missing]") if model_dir is not None else ""
            click.echo(f"robustbench:{name}\t{ds}\t{tm}{mark}")
        if model_dir is not None:
            n_local = sum(r[3] for r in rows)
            click.echo(f"{n_local} of {len(rows)} have weights under {Path(model_dir)}", err=True)
        return
    if dataset or threat_model:
        raise ValueError(f"--dataset/--threat-model apply to robustbench, not to {source!r}")
    if source == "timm":
        names = M.list_models("timm", pattern=pattern)
    elif pattern:
        raise ValueError(f"--pattern applies to timm, not to {source!r}")
    else:
        names = M.list_models(source)
    for n in names:
        click.echo(f"{source}:{n}")
    if not names:
        click.echo(f"no {source} models found", err=True)
