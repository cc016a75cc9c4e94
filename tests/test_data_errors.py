"""Unreadable image files are named (folder path, archive member), never shown as a BytesIO repr."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ebmlens.data import load_data


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_folder_names_the_unreadable_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    for c in ("a", "b"):
        (tmp_path / "set" / c).mkdir(parents=True)
        (tmp_path / "set" / c / "0.png").write_bytes(_png(0))
    bad = tmp_path / "set" / "b" / "1.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{tmp_path / 'set'}")
    assert str(bad) in str(e.value) and "BytesIO" not in str(e.value)


def test_archive_names_the_unreadable_member(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    arc = tmp_path / "c10.tar"
    with tarfile.open(arc, "w") as tar:
        for name, data in (("train/cat/0.png", _png(1)), ("train/dog/0.png", _png(2)), ("train/dog/1.png", b"junk")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError) as e:
        load_data(f"cifar10:{arc}@train")
    assert "train/dog/1.png" in str(e.value) and str(arc) in str(e.value) and "BytesIO" not in str(e.value)
