"""The local Hugging Face hub cache, read without huggingface_hub: where it is, which snapshot a
revision names, and which file a snapshot holds, with one-line errors for the ways a cache breaks
(a dangling blob link, a ref naming a deleted snapshot, a ``.no_exist`` marker, an ``.incomplete``
blob). The layout (``huggingface_hub``'s)::

    models--ORG--NAME/
      refs/main                 the commit that the branch or tag 'main' names (40 hex digits)
      snapshots/<commit>/       the files of that commit: links into blobs/ (copies on Windows)
      blobs/<hash>              the contents; '<hash>.incomplete' while a download runs
      .no_exist/<commit>/FILE   "the Hub has no FILE at that commit" (a cached miss)

Only :func:`download_to_cache` touches the network (through huggingface_hub), and only when asked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from .file import _HTML_STARTS, read_checkpoint, split_checkpoint

__all__ = ["read_weights", "NotInCache", "cache_dir", "parse_repo", "snapshot", "cached_file", "weights_file",
           "download_to_cache", "read_config", "WEIGHT_FILES", "repo_folder", "refs"]

_EXTRA = "pip install 'ebmlens[hf]'"
#: weight files looked for in a snapshot, in this order (safetensors first: it cannot run code).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_REV = re.compile(r"^[\w.-]+(/[\w.-]+)*$")


class NotInCache(FileNotFoundError):
    """The cache holds nothing of this repository, revision or file (as opposed to a damaged entry);
    ``short`` is the finding without the advice."""

    def __init__(self, short: str, hint: str = "") -> None:
        super().__init__(f"{short}; {hint}" if hint else short)
        self.short = short


def cache_dir(cache: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: ``cache``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub`` (huggingface_hub's order)."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def parse_repo(name: str) -> tuple[str, str | None]:
    """``"ORG/NAME[@REVISION]"`` -> ``(repo_id, revision or None)``."""
    if not isinstance(name, str):
        raise TypeError(f"hf model name must be a string 'ORG/NAME[@REVISION]', got {type(name).__name__}")
    repo, sep, rev = name.strip().partition("@")
    if not _REPO.match(repo) or "--" in repo or ".." in repo:
        raise ValueError(f"hf model {name!r} is not ORG/NAME[@REVISION]; write e.g. 'hf:timm/resnet18.a1_in1k' "
                         "or 'hf:timm/resnet18.a1_in1k@main'")
    if sep and (not _REV.match(rev) or ".." in rev.split("/")):
        raise ValueError(f"hf model {name!r}: revision {rev!r} is not a branch, tag or commit name")
    return repo, (rev if sep else None)


def _fetch_hint(repo: str, revision: str | None) -> str:
    at = f"@{revision}" if revision else ""
    return (f"ebmlens reads only the local cache: fetch it once with load_model('hf:{repo}{at}', download=True), "
            f"'ebmlens models hf --download {repo}{at}' or 'hf download {repo}' (pip install 'ebmlens[hf]'), "
            "or point HF_HUB_CACHE / HF_HOME at the cache that holds it")


def repo_folder(repo: str, cache: Path) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


def refs(folder: Path) -> dict[str, str]:
    """``{ref name: commit}`` from ``folder/refs`` (names may hold '/': ``refs/pr/1``)."""
    refs = folder / "refs"
    return {str(p.relative_to(refs)): p.read_text().strip() for p in refs.rglob("*") if p.is_file()} \
        if refs.is_dir() else {}


def _snapshots(folder: Path) -> str:
    snaps = folder / "snapshots"
    return ", ".join(sorted(p.name[:12] for p in snaps.iterdir())) if snaps.is_dir() else "none"


def snapshot(repo: str, revision: str | None = None, cache: str | Path | None = None) -> tuple[str, Path]:
    """``(commit, snapshot folder)`` of ``repo`` at ``revision`` (default ``main``) in the cache."""
    root = cache_dir(cache)
    folder = repo_folder(repo, root)
    rev = revision or "main"
    if not folder.is_dir():
        raise NotInCache(f"hf:{repo} is not in the Hugging Face cache {str(root)!r} (no {folder.name}/)",
                         _fetch_hint(repo, revision))
    ref = folder / "refs" / rev
    snaps = folder / "snapshots"
    if ref.is_file():
        commit, how = ref.read_text().strip(), f"refs/{rev}"
    elif (snaps / rev).is_dir():
        commit, how = rev, "commit"
    else:
        raise NotInCache(f"hf:{repo}@{rev}: the cache {str(root)!r} has no ref or snapshot {rev!r} (refs: "
                         f"{', '.join(sorted(refs(folder))) or 'none'}; snapshots: {_snapshots(folder)})",
                         _fetch_hint(repo, revision))
    if not re.fullmatch(r"[\w.-]+", commit) or commit in (".", ".."):  # a ref is read, never followed as a path
        raise ValueError(f"hf:{repo}: {how} holds {commit[:60]!r}, not a commit; delete {str(ref)!r} and download "
                         "again")
    if not (snaps / commit).is_dir():
        raise FileNotFoundError(f"hf:{repo}: {how} names commit {commit[:12]!r} but {folder.name}/snapshots/{commit} "
                                f"is missing (a partly deleted cache; snapshots there: {_snapshots(folder)}); "
                                f"name one with hf:{repo}@COMMIT, or " + _fetch_hint(repo, revision))
    return commit, snaps / commit


def cached_file(repo: str, filename: str, revision: str | None = None, cache: str | Path | None = None) -> Path:
    """The path of ``filename`` in the snapshot of ``repo`` at ``revision``; :class:`NotInCache` when it
    is not there or the Hub has none (a ``.no_exist`` marker), ``FileNotFoundError`` for a damaged entry."""
    commit, snap = snapshot(repo, revision, cache)
    folder = snap.parent.parent
    p = snap / filename
    if p.is_symlink() and not p.exists():  # a link into blobs/ whose blob is gone
        blob = (p.parent / os.readlink(p)).resolve(strict=False)
        part = blob.with_name(blob.name + ".incomplete")
        if part.exists():
            raise FileNotFoundError(f"hf:{repo}: the download of {filename} was interrupted (blobs/{part.name}, "
                                    f"{part.stat().st_size} bytes); delete {str(part)!r} and download it again. "
                                    + _fetch_hint(repo, revision))
        raise FileNotFoundError(f"hf:{repo}: {filename} in snapshot {commit[:12]} links to blobs/{blob.name}, "
                                f"which is missing (a damaged cache); delete {str(p)!r} and download it again. "
                                + _fetch_hint(repo, revision))
    if p.is_file():
        return p
    if (folder / ".no_exist" / commit / filename).is_file():
        raise NotInCache(f"hf:{repo} has no {filename} at commit {commit[:12]} (the cache records the Hub's "
                         f"answer in .no_exist/{commit[:12]}.../{filename})")
    partial = sorted(b.name for b in (folder / "blobs").glob("*.incomplete"))
    raise NotInCache(f"hf:{repo}: {filename} is not in the cached snapshot {commit[:12]}"
                     + (f" (an interrupted download left blobs/{partial[0]}: delete it and download again)"
                        if partial else ""), _fetch_hint(repo, revision))


def weights_file(repo: str, revision: str | None = None, cache: str | Path | None = None,
                 names: Sequence[str] = WEIGHT_FILES) -> Path:
    """The first of ``names`` that the snapshot holds; one error naming why each is unusable (a missing
    repository or revision is named as such first)."""
    snapshot(repo, revision, cache)
    why = []
    for name in names:
        try:
            return cached_file(repo, name, revision, cache)
        except NotInCache as e:
            marker = ".no_exist" in str(e)
            why.append(f"{name}: {'not on the Hub at this commit (.no_exist marker)' if marker else 'not cached'}")
    partial = sorted(b.name for b in (repo_folder(repo, cache_dir(cache)) / "blobs").glob("*.incomplete"))
    raise NotInCache(f"hf:{repo}{'@' + revision if revision else ''} has no usable weights in the cache "
                     f"({', '.join(why)})" + (f"; an interrupted download left blobs/{partial[0]}: delete it"
                                              if partial else ""), _fetch_hint(repo, revision))


def read_config(repo: str, revision: str | None = None, cache: str | Path | None = None) -> dict:
    """``config.json`` of the snapshot, checked to be a JSON object."""
    p = cached_file(repo, "config.json", revision, cache)
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"hf:{repo}: config.json ({str(p)!r}) is not JSON ({e}); download it again") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"hf:{repo}: config.json holds a {type(cfg).__name__}, not a JSON object")
    return cfg


def download_to_cache(repo: str, revision: str | None = None, cache: str | Path | None = None) -> str:
    """Fetch ``config.json`` and the weights of ``repo`` into the cache (the only network access here);
    returns the weights' path."""
    try:
        import huggingface_hub as hub
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise ImportError(f"download=True needs the huggingface_hub package: {_EXTRA}") from None
    where = str(cache_dir(cache))
    hub.hf_hub_download(repo, "config.json", revision=revision, cache_dir=where)
    for name in WEIGHT_FILES:
        try:
            return hub.hf_hub_download(repo, name, revision=revision, cache_dir=where)
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"hf:{repo} has none of {', '.join(WEIGHT_FILES)} on the Hub")


def _check_not_junk(path: Path, repo: str) -> None:
    """An empty file or an HTML page (a failed download) is named as such, before any reader sees it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    what = "empty (0 bytes)" if size == 0 else ("an HTML page, not weights" if head.startswith(_HTML_STARTS) else "")
    if what:
        raise ValueError(f"hf:{repo}: the cached {path.name} ({str(path)!r}) is {what}: a failed download; "
                         "delete it and download it again")


def read_weights(path: Path, repo: str, *, trust_checkpoint: bool = False) -> dict:
    """The state dict of a cached weights file, through ``file:``'s reader (safetensors, or
    ``torch.load(weights_only=True)`` unless trusted); an empty file or an HTML page is named as such."""
    _check_not_junk(path, repo)
    try:
        obj, st_meta = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    except ValueError as e:
        raise ValueError(f"hf:{repo}: {e}") from None
    return split_checkpoint(obj, st_meta)[0]
