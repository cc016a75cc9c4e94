"""``folder:ARCHIVE.tar``: random access into uncompressed tars through a member index."""

from __future__ import annotations

import io
import lzma
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlens.data import StreamedImages, load_data, tar_index


def _png(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def images():
    """``{class: [uint8 (8, 8, 3)]}``: three classes of different sizes."""
    rng = np.random.default_rng(0)
    return {c: [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
            for c, n in (("cat", 3), ("ant", 4), ("dog", 2))}


@pytest.fixture
def folder(tmp_path, images):
    root = tmp_path / "folder"
    for c, arrs in images.items():
        (root / c).mkdir(parents=True)
        for i, a in enumerate(arrs):
            (root / c / f"{i:03d}.png").write_bytes(_png(a))
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))


def _flat_tar(path, images):
    with tarfile.open(path, "w") as tar:
        _add(tar, "train/README.txt", b"not an image")
        for c in sorted(images, reverse=True):  # member order is not class order: the index sorts
            for i, a in enumerate(images[c]):
                _add(tar, f"train/{c}/{i:03d}.png", _png(a))
    return path


def _nested_tar(path, images):
    """ImageNet's train layout: one inner uncompressed tar per class."""
    with tarfile.open(path, "w") as outer:
        for c, arrs in images.items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i, a in enumerate(arrs):
                    _add(inner, f"{i:03d}.png", _png(a))
            _add(outer, f"{c}.tar", buf.getvalue())
    return path


@pytest.mark.parametrize("layout", [_flat_tar, _nested_tar])
def test_tar_equals_folder_streamed_and_random_access(tmp_path, folder, images, layout):
    tar = layout(tmp_path / "set.tar", images)
    ref = load_data(f"folder:{folder}")
    streamed = load_data(f"folder:{tar}?stream=1")
    assert isinstance(streamed, StreamedImages) and streamed.tar is not None
    assert streamed.class_names == ["ant", "cat", "dog"] == ref.class_names
    assert np.array_equal(streamed.labels, ref.labels)
    got = np.concatenate([a for a, _ in streamed.arrays(4)])
    assert np.array_equal(got, ref.images)
    idx = [8, 0, 5]  # random access: one seek per image, in any order
    assert torch.equal(streamed.tensor(idx), ref.tensor(idx))
    memory = load_data(f"folder:{tar}")  # small: decoded into memory through the same index
    assert np.array_equal(memory.images, ref.images)


def test_index_is_cached_and_follows_changes(tmp_path, images):
    tar = _flat_tar(tmp_path / "set.tar", images)
    first = tar_index(tar)
    cached = list((tmp_path / "cache" / "data").glob("set.tar-tarindex-*.json"))
    assert len(cached) == 1 and tar_index(tar) == first
    smaller = {c: a[:1] for c, a in images.items()}
    _flat_tar(tar, smaller)
    import os
    os.utime(tar, (1, 1))  # a rewritten archive: new size and mtime -> a new index
    assert len(tar_index(tar).members) == 3


def test_compressed_and_broken_archives_fail_clearly(tmp_path, images):
    tar = _flat_tar(tmp_path / "set.tar", images)
    xz = tmp_path / "set2.tar"
    xz.write_bytes(lzma.compress(tar.read_bytes()))
    with pytest.raises(ValueError, match="xz-compressed: a compressed tar has no random access; decompress"):
        load_data(f"folder:{xz}")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"x" * 2048)
    with pytest.raises(ValueError, match="junk.tar is not a readable uncompressed tar|no images found"):
        load_data(f"folder:{junk}")
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as t:
        _add(t, "a/0.png", _png(images["cat"][0]))
        _add(t, "a/1.png", b"not a png at all")
    data = load_data(f"folder:{bad}?stream=1")
    with pytest.raises(ValueError, match=r"bad.tar:a/1.png"):
        data.tensor([1])
