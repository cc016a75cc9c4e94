"""Data specs and loaders: the shared CIFAR-10 archive, tar/ImageFolder/torchvision/npz layouts
built in a temporary folder, the cache, and bad specs."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlens.data import CIFAR10_CLASSES, ImageData, atomic_save_npz, load_data, parse_data_spec


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_parse_data_spec(tmp_path):
    assert parse_data_spec("cifar10:/x/y.tar.xz@train") == ("cifar10", "/x/y.tar.xz", "train")
    assert parse_data_spec("folder:/imgs") == ("folder", "/imgs", None)
    assert parse_data_spec(str(tmp_path)) == ("folder", str(tmp_path), None)
    assert parse_data_spec("a.npz") == ("npz", "a.npz", None)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        parse_data_spec("cifar10:/x@val")
    with pytest.raises(ValueError, match="unknown data spec"):
        parse_data_spec("imagenette:/x")
    with pytest.raises(ValueError, match="names no path"):
        parse_data_spec("folder:@test")
    with pytest.raises(TypeError, match="data spec must be a string"):
        parse_data_spec(3)  # type: ignore[arg-type]


def test_shared_cifar10_archive(cifar_test):
    assert len(cifar_test) == 10000 and cifar_test.class_names == CIFAR10_CLASSES
    assert cifar_test.images.shape == (10000, 32, 32, 3) and cifar_test.images.dtype == np.uint8
    assert np.bincount(cifar_test.labels).tolist() == [1000] * 10
    idx = cifar_test.strided(100)
    assert np.bincount(cifar_test.labels[idx], minlength=10).tolist() == [10] * 10
    x = cifar_test.tensor(idx[:4])
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert len(cifar_test.fingerprint) == 16


def test_tar_decode_and_cache(tmp_path):
    imgs = _images(6)
    path = tmp_path / "mini.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for split, rows in (("train", range(4)), ("test", range(4, 6))):
            for i in rows:
                data = _png(imgs[i])
                info = tarfile.TarInfo(f"{split}/{['cat', 'airplane'][i % 2]}/{i:04d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tr = load_data(f"cifar10:{path}@train")
    # classes by name: cat is CIFAR-10's class 3 even when the archive holds only two classes
    assert tr.class_names == CIFAR10_CLASSES and not tr.folder_classes
    assert len(tr) == 4 and tr.labels.tolist() == [0, 0, 3, 3]
    assert np.array_equal(tr.images[0], imgs[1])  # PNG is lossless
    te = load_data(f"cifar10:{path}", default_split="test")
    assert len(te) == 2 and te.source.endswith("@test")
    cached = list((tmp_path / "cache" / "data").glob("*.npz"))
    assert len(cached) == 2
    again = load_data(f"cifar10:{path}@train")
    assert again.fingerprint == tr.fingerprint


def test_imagefolder_and_flat_folder(tmp_path):
    imgs = _images(5, 1)
    for i, cls in enumerate(["bird", "airplane", "bird", "cat", "airplane"]):
        (tmp_path / "train" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(tmp_path / "train" / cls / f"{i}.png")
    ds = load_data(f"cifar10:{tmp_path}@train")
    assert ds.class_names == CIFAR10_CLASSES and sorted(ds.labels.tolist()) == [0, 0, 2, 2, 3]
    fd = load_data(f"folder:{tmp_path / 'train'}")  # folder names kept until a model's classes are known
    assert len(fd) == 5 and fd.folder_classes and fd.class_names == ["airplane", "bird", "cat"]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(imgs[0]).save(flat / "x.png")
    assert not load_data(str(flat)).labeled  # a flat folder has no labels (it was label 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_data(f"folder:{tmp_path / 'empty'}")
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(imgs[0]).save(odd / "a.png")
    Image.fromarray(imgs[0][:16]).save(odd / "b.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_data(f"folder:{odd}")


def test_torchvision_cifar10_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    imgs = _images(12, 2)
    chw = imgs.transpose(0, 3, 1, 2).reshape(12, -1)
    for b in range(1, 6):
        with open(root / f"data_batch_{b}", "wb") as fh:
            pickle.dump({"data": chw[2 * (b - 1):2 * b], "labels": [b - 1, b]}, fh)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({"data": chw[10:], "labels": [9, 3]}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR10_CLASSES}, fh)
    tr = load_data(f"cifar10:{tmp_path}@train")  # the parent folder works too
    assert len(tr) == 10 and np.array_equal(tr.images, imgs[:10]) and tr.labels[:2].tolist() == [0, 1]
    te = load_data(f"cifar10:{root}@test")
    assert te.labels.tolist() == [9, 3] and np.array_equal(te.images, imgs[10:])


def test_torchvision_cifar100_layout(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    imgs = _images(3, 3)
    chw = imgs.transpose(0, 3, 1, 2).reshape(3, -1)
    names = [f"c{i}" for i in range(100)]
    for split, rows in (("train", slice(0, 2)), ("test", slice(2, 3))):
        with open(root / split, "wb") as fh:
            pickle.dump({"data": chw[rows], "fine_labels": [99, 5][: len(range(3)[rows])]}, fh)
    with open(root / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names}, fh)
    tr = load_data(f"cifar100:{tmp_path}@train")
    assert tr.num_classes == 100 and tr.labels.tolist() == [99, 5]


def test_npz_layouts(tmp_path):
    imgs = _images(4, 4)
    p = tmp_path / "a.npz"
    atomic_save_npz(p, images=imgs, labels=np.array([0, 1, 2, 1]), class_names=np.array(["x", "y", "z"]))
    ds = load_data(f"npz:{p}")
    assert ds.class_names == ["x", "y", "z"] and np.array_equal(ds.images, imgs)
    # NCHW floats in [0, 1] without labels: an error unless the spec says ?unlabeled (it was labels 0)
    q = tmp_path / "b.npz"
    np.savez(q, images=imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"no 'labels' array.*\?unlabeled"):
        load_data(str(q))
    ds2 = load_data(f"npz:{q}?unlabeled")
    assert np.array_equal(ds2.images, imgs) and not ds2.labeled
    r = tmp_path / "c.npz"
    np.savez(r, pixels=imgs)
    with pytest.raises(ValueError, match="no 'images' array"):
        load_data(f"npz:{r}")
    s = tmp_path / "d.npz"
    np.savez(s, images=np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="4-D"):
        load_data(f"npz:{s}")


def test_image_data_helpers_and_errors(tmp_path):
    ds = ImageData(_images(10, 5), np.arange(10) % 2, ["a", "b"], "toy")
    batches = list(ds.batches(4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.as_tensor(ds.labels))
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))
    with pytest.raises(ValueError, match="asked for 11 images"):
        ds.strided(11)
    with pytest.raises(ValueError, match="uint8"):
        ImageData(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), ["a"], "bad")
    with pytest.raises(ValueError, match="labels for"):
        ImageData(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3), ["a"], "bad")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'missing.tar.xz'}")
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(ValueError, match="expected the .tar.xz archive or a folder"):
        load_data(f"cifar10:{tmp_path / 'x.txt'}")


def test_one_image_coercion_for_arrays_folders_and_specs(tmp_path):
    from ebmlens.data import as_image_data, to_uint8_images

    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    u8 = to_uint8_images(x)
    assert u8.shape == (5, 8, 8, 3) and u8.dtype == np.uint8
    assert np.array_equal(u8, np.rint(x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8))   # as saved to PNG
    assert np.array_equal(to_uint8_images(u8.transpose(0, 3, 1, 2)), u8)                          # uint8 NCHW
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        to_uint8_images(x * 2)
    with pytest.raises(ValueError, match="channels last"):
        to_uint8_images(x.permute(0, 2, 3, 1))
    # files of other tools: grayscale (N, H, W) read; floats beyond [0, 1] refused with the fix (were clipped)
    assert to_uint8_images(np.full((2, 4, 4), 1.0), strict=False).tolist() == np.full((2, 4, 4, 1), 255).tolist()
    with pytest.raises(ValueError, match=r"x / 255"):
        to_uint8_images(np.full((2, 4, 4), 200.0), strict=False)
    d = as_image_data(x, "samples")  # a tensor without labels is an unlabeled set
    assert np.array_equal(d.images, u8) and not d.labeled and d.source == "samples array (5, 3, 8, 8)"
    folder = tmp_path / "run"
    folder.mkdir()
    atomic_save_npz(folder / "samples.npz", images=u8, labels=np.arange(5))
    assert as_image_data(folder).labels.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(as_image_data(str(folder / "samples.npz")).images, u8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        as_image_data(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no images"):
        as_image_data(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="data spec"):
        as_image_data(3.0)
