"""Random access into an uncompressed ``.tar`` of images: a member index (name -> byte range).

An uncompressed tar stores each member's bytes contiguously, so one scan of the headers (no data is
read: ``tarfile`` seeks over it) gives ``(offset, size)`` per image, and any image is then one
``seek`` + ``read``. ``folder:ARCHIVE.tar`` uses this to stream (and strided-subset, and seed
``DataInit`` from) a tar without unpacking it.

Layouts: members ``<class>/<file>`` (or ``<top>/<class>/<file>``: the class is the file's parent
folder), or - as ImageNet's ``ILSVRC2012_img_train.tar`` ships - one inner uncompressed tar per class
(``n01440764.tar`` holding that class's JPEGs), indexed one level deep with absolute offsets.
A compressed archive (``.tar.xz``/``.gz``/``.bz2``) has no random access: decompress it once
(``unxz -k``) or unpack it to a folder.

The index is cached as JSON in ``$EBMLENS_CACHE/data`` keyed by the archive's path, size and mtime
(1.28 M ImageNet members: one ~100 MB file, written once).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._io import atomic_write_json
from ._readers import _IMAGE_EXT, _cache_key, cache_dir

__all__ = ["TarIndex", "tar_index"]

_COMPRESSED = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}
_FORMAT = "ebmlens.tar_index/1"


@dataclass(frozen=True)
class TarIndex:
    """Where each image of an uncompressed tar lies.

    Attributes:
        path: the archive.
        members: ``(name, class, offset, size)`` per image, sorted by class then name; ``name`` is
            the member path (``inner.tar/member`` for members of inner tars).
    """

    path: str
    members: tuple[tuple[str, str, int, int], ...]

    def read(self, i: int) -> bytes:
        """The bytes of image ``i`` (one seek and read; safe in DataLoader workers)."""
        _, _, off, size = self.members[i]
        with open(self.path, "rb") as fh:
            fh.seek(off)
            data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"{self.path} is shorter than its index says (member {self.members[i][0]!r}); "
                             "was it changed while in use? Delete the cached index and retry")
        return data

    def where(self, i: int) -> str:
        """``ARCHIVE:member`` for error messages."""
        return f"{self.path}:{self.members[i][0]}"


def _is_image(name: str) -> bool:
    """An image member: an image extension, and no hidden part (``._x.jpg`` of macOS tar, ``.cache/``)."""
    p = PurePosixPath(name)
    hidden = any(part.startswith(".") and part not in (".", "..") for part in p.parts)
    return p.suffix.lower() in _IMAGE_EXT and not hidden


def _scan(path: Path) -> list[tuple[str, str, int, int]]:
    out: list[tuple[str, str, int, int]] = []
    with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            p = PurePosixPath(m.name)
            if p.suffix.lower() == ".tar":  # a per-class inner tar (ImageNet's train archive)
                with open(path, "rb") as inner_fh:
                    inner_fh.seek(m.offset_data)
                    with tarfile.open(fileobj=inner_fh, mode="r:") as inner:
                        out += [(f"{m.name}/{i.name}", p.stem, i.offset_data, i.size)
                                for i in inner if i.isfile() and _is_image(i.name)]
            elif _is_image(m.name):
                out.append((m.name, p.parent.name or "0", m.offset_data, m.size))
    out.sort(key=lambda t: (t[1], t[0]))
    return out


def tar_index(path: str | Path) -> TarIndex:
    """The member index of the uncompressed tar ``path`` (built once, then read from the cache)."""
    path = Path(path).expanduser().resolve()
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {kind}-compressed: a compressed tar has no random access; decompress it "
                             f"once (e.g. unxz -k / gunzip -k) to a plain .tar, or unpack it to a folder")
    cache = cache_dir() / "data" / f"{path.name}-tarindex-{_cache_key(path, 'tarindex')}.json"
    if cache.is_file():
        try:
            doc = json.loads(cache.read_text())
            if doc.get("format") == _FORMAT:
                return TarIndex(str(path), tuple(tuple(m) for m in doc["members"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuilt below
    try:
        members = _scan(path)
    except tarfile.TarError as e:
        raise ValueError(f"{path} is not a readable uncompressed tar ({e})") from None
    if not members:
        raise ValueError(f"no images found in {path} (looked for {', '.join(_IMAGE_EXT)} members)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, {"format": _FORMAT, "members": [list(m) for m in members]})
    return TarIndex(str(path), tuple(members))
