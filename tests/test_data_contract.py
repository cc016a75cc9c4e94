"""The reading contract (issue 22 item 2): the table rows of files that used to become confident wrong
numbers, labels required unless the spec says ``?unlabeled``, class folders mapped by name."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ebmlens.data import CIFAR10_CLASSES, ImageData, imagenet_wnids, load_data, require_labels


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))


CIFAR_MODEL = SimpleNamespace(class_names=CIFAR10_CLASSES, num_classes=10)


def _floats(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------ the table rows
def test_row_float_npz_with_one_nan_pixel_is_an_error(tmp_path):
    x = _floats()
    x[2, 1, 3, 4] = np.nan
    p = _npz(tmp_path / "nan.npz", images=x, labels=np.arange(4))
    with pytest.raises(ValueError, match=r"nan\.npz: 1 pixel value\(s\) are NaN or infinite"):
        load_data(f"npz:{p}")


def test_row_float_npz_slightly_above_one_is_clamped_with_one_warning(tmp_path, caplog):
    x = _floats() * 1.0001  # rounding from a resize: max just above 1
    x[0, 0, 0, 0] = 1.0001
    p = _npz(tmp_path / "over.npz", images=x, labels=np.arange(4))
    with caplog.at_level(logging.WARNING, logger="ebmlens.data"):
        d = load_data(f"npz:{p}")
    want = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(d.images, want)  # the right pixels, not every image black
    assert sum("clamped" in r.getMessage() for r in caplog.records) == 1


def test_row_float_npz_in_minus_one_one_names_the_fix(tmp_path):
    p = _npz(tmp_path / "pm1.npz", images=_floats() * 2 - 1, labels=np.arange(4))
    with pytest.raises(ValueError, match=r"pm1\.npz.*\[-1, 1\] use \(x \+ 1\) / 2"):
        load_data(f"npz:{p}")


def test_row_npz_without_labels_is_an_error_unless_unlabeled(tmp_path):
    x = _floats()
    p = _npz(tmp_path / "nolab.npz", images=x)
    with pytest.raises(ValueError, match=r"nolab\.npz has no 'labels' array.*\?unlabeled"):
        load_data(f"npz:{p}")
    d = load_data(f"npz:{p}?unlabeled")
    assert not d.labeled and len(d) == 4
    with pytest.raises(ValueError, match="energy_report needs class labels"):
        require_labels(d, "energy_report", CIFAR_MODEL)


def _cat_dog(root, n=2):
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_row_folder_with_cat_and_dog_maps_to_cifar10_classes(tmp_path):
    root = _cat_dog(tmp_path / "cd")
    d = load_data(f"folder:{root}", classes=CIFAR10_CLASSES)
    assert d.labels.tolist() == [3, 3, 5, 5] and d.class_names == CIFAR10_CLASSES
    late = require_labels(load_data(f"folder:{root}"), "accuracy", CIFAR_MODEL)  # mapped by the consumer
    assert late.labels.tolist() == [3, 3, 5, 5]
    arc = tmp_path / "cd.tar"  # folder:ARCHIVE.tar and the cifar10: layout as well
    with tarfile.open(arc, "w") as tar:
        for c in ("cat", "dog"):
            for f in sorted((root / c).iterdir()):
                tar.add(f, arcname=f"test/{c}/{f.name}")
    assert require_labels(load_data(f"folder:{arc}"), "x", CIFAR_MODEL).labels.tolist() == [3, 3, 5, 5]
    assert load_data(f"cifar10:{arc}@test").labels.tolist() == [3, 3, 5, 5]


# ------------------------------------------------------------------ mapping rules
def _folders(root, names):
    for c in names:
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / c / "0.png")
    return root


def test_unmatched_folders_are_listed_with_close_matches(tmp_path):
    root = _folders(tmp_path / "s", ["cats", "dog"])
    with pytest.raises(ValueError, match=r"'cats' \(close: cat.*--class-map FILE\.json"):
        load_data(f"folder:{root}", classes=CIFAR10_CLASSES)


def test_class_map_file_numeric_folders_and_case(tmp_path):
    root = _folders(tmp_path / "s", ["kitty", "Dog"])
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"kitty": "cat"}))
    assert load_data(f"folder:{root}?class_map={cmap}", classes=CIFAR10_CLASSES).labels.tolist() == [5, 3]
    assert load_data(f"folder:{root}", classes=CIFAR10_CLASSES, class_map={"kitty": 9}).labels.tolist() == [5, 9]
    nums = _folders(tmp_path / "n", ["3", "7"])
    assert require_labels(load_data(f"folder:{nums}"), "x", CIFAR_MODEL).labels.tolist() == [3, 7]


def test_imagenet_wnids_table_and_model_without_names(tmp_path, caplog):
    table = imagenet_wnids()
    assert len(table) == 1000 and len(set(table)) == 1000 and table[0] == "n01440764" and table[999] == "n15075141"
    root = _folders(tmp_path / "w", [table[7], table[500]])
    m1000 = SimpleNamespace(class_names=[str(i) for i in range(1000)], num_classes=1000)  # no names: wnids still map
    assert require_labels(load_data(f"folder:{root}"), "x", m1000).labels.tolist() == [7, 500]
    nameless = SimpleNamespace(class_names=[str(i) for i in range(10)], num_classes=10)
    with caplog.at_level(logging.WARNING, logger="ebmlens.data"):
        d = require_labels(load_data(f"folder:{_folders(tmp_path / 'c', ['dog', 'cat'])}"), "x", nameless)
    assert d.labels.tolist() == [0, 1] and "sorted order" in d.label_note and "cat=0" in caplog.text


def test_labels_outside_the_models_classes_are_refused(tmp_path):
    d = ImageData(np.zeros((2, 4, 4, 3), np.uint8), np.array([3, 12]), [str(i) for i in range(13)], "toy")
    with pytest.raises(ValueError, match=r"labels in \[3, 12\] but the model has 10 classes"):
        require_labels(d, "calibration", CIFAR_MODEL)
    assert require_labels(d, "ood") is d  # no model: nothing to check against


def test_tensor_without_labels_is_unlabeled():
    from ebmlens.data import as_image_data

    d = as_image_data(_floats(), "x")
    with pytest.raises(ValueError, match="counterfactual needs class labels"):
        require_labels(d, "counterfactual")


def test_tar_png_bytes_are_the_same_through_every_reader(tmp_path):
    root = _cat_dog(tmp_path / "cd", n=1)
    buf = io.BytesIO()
    Image.open(root / "cat" / "0.png").save(buf, "PNG")
    a = load_data(f"folder:{root}", classes=CIFAR10_CLASSES)
    assert np.array_equal(a.images[0], np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def test_cli_accuracy_on_cat_and_dog_folders_maps_by_name(tmp_path, cifar_test):
    """The issue's row end to end: real CIFAR cats and dogs in cat/ and dog/ score what the same images
    score with their true labels (it was 0.00: labels 0 and 1); other names need --class-map."""
    from click.testing import CliRunner

    from ebmlens.cli import main

    idx = np.concatenate([np.flatnonzero(cifar_test.labels == k)[:12] for k in (3, 5)])
    for name, k in (("cat", 3), ("kitty", 3), ("dog", 5)):
        for i in idx[cifar_test.labels[idx] == k]:
            (tmp_path / "f" / name).mkdir(parents=True, exist_ok=True)
            if name != "kitty":
                Image.fromarray(cifar_test.images[i]).save(tmp_path / "f" / name / f"{i}.png")
            (tmp_path / "g" / name).mkdir(parents=True, exist_ok=True)
            if name != "cat":
                Image.fromarray(cifar_test.images[i]).save(tmp_path / "g" / name / f"{i}.png")
    np.savez(tmp_path / "true.npz", images=cifar_test.images[idx], labels=cifar_test.labels[idx])
    (tmp_path / "map.json").write_text(json.dumps({"kitty": "cat"}))
    args = ["accuracy", "--model", "ebmlens:cifar10-l2-small", "--steps", "1", "--device", "cpu", "--out"]
    res = {}
    for key, extra in (("folder", ["--data", f"folder:{tmp_path / 'f'}"]),
                       ("npz", ["--data", f"npz:{tmp_path / 'true.npz'}"]),
                       ("mapped", ["--data", f"folder:{tmp_path / 'g'}", "--class-map", str(tmp_path / "map.json")])):
        r = CliRunner().invoke(main, args + [str(tmp_path / f"{key}.json")] + extra)
        assert r.exit_code == 0, r.output
        res[key] = json.loads((tmp_path / f"{key}.json").read_text())["clean_acc"]
    assert res["folder"] == res["npz"] == res["mapped"] > 0.3
    r = CliRunner().invoke(main, args + [str(tmp_path / "x.json"), "--data", f"folder:{tmp_path / 'g'}"])
    assert r.exit_code == 2 and "'kitty'" in r.output and "--class-map" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_datainit_same_class_seeds_map_folders_to_the_models_classes(tmp_path):
    """DataInit(same_class=True) on a cat/dog folder seeds class 3 from cat/ (it took folder positions)."""
    import torch

    from ebmlens.sampling import DataInit

    root = tmp_path / "cd"
    for c, v in (("cat", 30), ("dog", 200)):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), v, np.uint8)).save(root / c / "0.png")
    init = DataInit(load_data(f"folder:{root}"), same_class=True)
    model = SimpleNamespace(class_names=CIFAR10_CLASSES, num_classes=10, input_shape=(3, 4, 4))
    x = init(model, torch.tensor([3, 5, 3]), generator=torch.Generator().manual_seed(0))
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [30.0, 200.0, 30.0]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / "a.png")
    with pytest.raises(ValueError, match=r"DataInit\(same_class=True\) needs class labels"):
        DataInit(load_data(f"folder:{flat}"), same_class=True)
