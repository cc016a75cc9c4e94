"""Streamed image sets, the data-source registry, the ImageNet layout and class statistics at scale,
on a synthetic ImageNet-layout folder (the suite has no ImageNet) and a tiny model with 224 input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ebmlens.data import ImageData, Preprocess, StreamedImages, load_data, parse_data_spec, register_data_source
from ebmlens.energy import EnergyModel

K, PER_CLASS, VAL_PER_CLASS = 6, 5, 2


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory):
    """ROOT/train/<wnid>/*.JPEG (256x256 and one 300x256), ROOT/val/ flat with LOC_val_solution.csv and val.txt."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    wnids = [f"n{1000 + 7 * k:08d}" for k in range(K)]
    base = np.linspace(0, 255, 300, dtype=np.float32)
    for k, w in enumerate(wnids):
        (root / "train" / w).mkdir(parents=True)
        for i in range(PER_CLASS):
            hw = (256, 300) if (k, i) == (0, 0) else (256, 256)  # one landscape file: resize + crop needed
            px = np.clip(rng.normal(40 * k, 30, (*hw, 3)) + base[: hw[1]][None, :, None] / 4, 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(root / "train" / w / f"{w}_{i}.JPEG", quality=90)
    (root / "val").mkdir()
    rows, lines = ["ImageId,PredictionString"], []
    for j in range(K * VAL_PER_CLASS):
        k = (j * 5) % K
        name = f"ILSVRC2012_val_{j + 1:08d}"
        px = np.clip(rng.normal(40 * k, 30, (256, 256, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / "val" / f"{name}.JPEG", quality=90)
        rows.append(f"{name},{wnids[k]} 1 2 3 4")
        lines.append(f"{name}.JPEG {k}")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "val_txt").mkdir()
    (root / "val_txt" / "val.txt").write_text("\n".join(lines) + "\n")
    return root, wnids


class Tiny224(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.fc = torch.nn.Linear(4, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Features(torch.nn.Module):
    """A fixed random feature network for FID (features: the input of ``fc``)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x - 0.5))).flatten(1))


@pytest.fixture
def model224():
    return EnergyModel(Tiny224(), input_shape=(3, 224, 224), num_classes=K, dataset="imagenet",
                       preprocess=Preprocess(256, 224))


@pytest.fixture(autouse=True)
def _one_worker(monkeypatch):
    monkeypatch.setenv("EBMLENS_DATA_WORKERS", "0")


def test_preprocess_resize_crop_and_describe(model224):
    im = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
    assert Preprocess(256, 224)(im).size == (224, 224)
    assert Preprocess(256, None)(im).size == (341, 256)
    assert model224.describe()["preprocess"] == {"resize": 256, "crop": 224, "interpolation": "bilinear"}
    with pytest.raises(ValueError, match="center-crop 224"):
        Preprocess(None, 224)(Image.fromarray(np.zeros((100, 100, 3), np.uint8)))
    with pytest.raises(ValueError, match="resize must be a positive int"):
        Preprocess(0)


def test_registry_unknown_kind_and_custom_source(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data spec 'imagenette:/x'; did you mean imagenet:"):
        parse_data_spec("imagenette:/x")
    with pytest.raises(ValueError, match="unknown option 'strem=1'"):
        parse_data_spec("folder:/x?strem=1")
    with pytest.raises(ValueError, match="unknown split 'test'.*use @train or @val"):
        parse_data_spec("imagenet:/x@test")
    toy = ImageData(np.zeros((3, 4, 4, 3), np.uint8), np.arange(3), ["a", "b", "c"], "toy")
    register_data_source("toyset", lambda spec, pre: toy, splits=("train",))
    try:
        assert load_data("toyset:anything") is toy
        with pytest.raises(ValueError, match="already registered"):
            register_data_source("toyset", lambda spec, pre: toy)
    finally:
        from ebmlens.data import sources

        sources._SOURCES.pop("toyset")


def test_imagenet_layout_train_and_val_label_files(imagenet_root, tmp_path):
    root, wnids = imagenet_root
    tr = load_data(f"imagenet:{root}@train")
    assert isinstance(tr, StreamedImages) and tr.class_names == wnids and len(tr) == K * PER_CLASS
    assert tr.labels.tolist() == sorted(tr.labels.tolist()) and tr.image_shape == (224, 224, 3)
    va = load_data(f"imagenet:{root}")  # default split of analysis: ImageNet's val
    want = sorted((j * 5) % K for j in range(K * VAL_PER_CLASS))
    assert va.labels.tolist() == want and va.source.endswith(str(root))
    # the same val folder labelled by val.txt (a copy of the folder with the txt file)
    import shutil

    alt = tmp_path / "in"
    shutil.copytree(root / "train", alt / "train")
    shutil.copytree(root / "val", alt / "val")
    shutil.copy(root / "val_txt" / "val.txt", alt / "val" / "val.txt")
    va2 = load_data(f"imagenet:{alt}@val")
    assert va2.labels.tolist() == want
    assert [p.rsplit("/", 1)[1] for p in va2.files] == [p.rsplit("/", 1)[1] for p in va.files]
    (alt / "val" / "val.txt").unlink()
    with pytest.raises(ValueError, match="no label file"):
        load_data(f"imagenet:{alt}@val")


def test_stream_option_and_threshold_give_the_same_images(imagenet_root, monkeypatch):
    root, _ = imagenet_root
    spec = f"folder:{root / 'train'}"
    pre = Preprocess(256, 224)
    mem = load_data(spec, preprocess=pre)
    st = load_data(spec + "?stream=1", preprocess=pre)
    assert isinstance(mem, ImageData) and isinstance(st, StreamedImages)
    monkeypatch.setenv("EBMLENS_IN_MEMORY_MAX", str(K * PER_CLASS - 1))
    assert isinstance(load_data(spec, preprocess=pre), StreamedImages)
    assert isinstance(load_data(spec + "?stream=0", preprocess=pre), ImageData)
    monkeypatch.setenv("EBMLENS_DATA_WORKERS", "1")  # decoded in a DataLoader worker process
    idx = st.strided(7)
    got = np.concatenate([a for a, _ in st.arrays(3, idx)])
    np.testing.assert_array_equal(got, mem.images[idx])
    np.testing.assert_array_equal(st.tensor(idx).numpy(), mem.tensor(idx).numpy())
    assert [x.shape[0] for x, _ in st.batches(4)] == [4] * 7 + [2]
    with pytest.raises(ValueError, match="different sizes"):
        load_data(spec + "?stream=1").tensor([0, 1])  # no preprocess: the 300-wide file does not stack


def test_energy_report_and_evaluate_streamed_equal_in_memory(imagenet_root, model224):
    from ebmlens.analysis import energy_report
    from ebmlens.metrics import evaluate

    root, _ = imagenet_root
    spec = f"folder:{root / 'train'}"
    mem = load_data(spec + "?stream=0", preprocess=model224.preprocess)
    a = energy_report(model224, mem, ["pgd"], eps=0.5, threat_model="L2", steps=2, batch_size=8, n=None)
    b = energy_report(model224, spec + "?stream=1", ["pgd"], eps=0.5, threat_model="L2", steps=2, batch_size=8, n=None)
    for kind in ("natural", "pgd"):
        np.testing.assert_allclose(a.values[kind]["energy"], b.values[kind]["energy"], rtol=1e-6)
    with torch.no_grad():  # and both are the model's energies of the images in index order
        direct = model224.energy(mem.tensor()).numpy()
    np.testing.assert_allclose(b.values["natural"]["energy"], direct, rtol=1e-5)
    assert a.data["sha256" if "sha256" in a.data else "fingerprint"] != ""
    fm = Features()
    r1 = evaluate(mem, ref=load_data(spec + "?stream=1", preprocess=model224.preprocess), metrics="fid",
                  feature_model=fm, batch_size=7)
    r2 = evaluate(load_data(spec + "?stream=1", preprocess=model224.preprocess), ref=mem, metrics="fid",
                  feature_model=fm, batch_size=7)
    assert r1.values == pytest.approx(r2.values, abs=1e-6) and r1.image_size == (224, 224)


def test_streamed_peak_memory_does_not_grow_with_images(imagenet_root):
    root, _ = imagenet_root
    st = load_data(f"imagenet:{root}@train")

    def peak(n: int) -> int:
        tracemalloc.start()
        for _ in st.arrays(2, np.arange(n)):
            pass
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    small, large = peak(4), peak(K * PER_CLASS)
    assert large < small + 2 * 224 * 224 * 3, (small, large)  # 30 images would be 4.5 MB held


def test_stats_dir_cli_and_sampling_from_it(imagenet_root, tmp_path, model224):
    from ebmlens.cli import main
    from ebmlens.sampling import GaussianInit, PCAInit
    from ebmlens.stats import ClassStats, class_stats, coerce_stats

    root, wnids = imagenet_root
    out = tmp_path / "in-stats"
    res = CliRunner().invoke(main, ["stats", "--data", f"imagenet:{root}@train", "--downsample", "8", "--rank", "3",
                                    "--out", str(out), "--device", "cpu", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["class-%05d.safetensors" % k for k in range(K)] + ["meta.json"]
    s = ClassStats.load(out)
    ref = class_stats(load_data(f"imagenet:{root}@train?stream=0"), downsample=8, full=False, rank=3, cache=False)
    assert s.shape == (3, 28, 28) and s.class_names == tuple(wnids) and s.kind == "compact" and s.rank == 3
    torch.testing.assert_close(s.mean, ref.mean)
    torch.testing.assert_close(s.diag, ref.diag)
    torch.testing.assert_close(s.eigvals, ref.eigvals, rtol=1e-3, atol=1e-6)
    assert s.counts.tolist() == [PER_CLASS] * K
    assert coerce_stats(str(out), "test").fingerprint == s.fingerprint
    part = ClassStats.load(out, classes=[4, 2])  # only the classes a run samples: rows for those alone
    assert part.row_class == (2, 4) and part.num_classes == K and part.mean.shape[0] == 2
    assert part.eigvecs.shape[0] == 2 and torch.equal(part.mean[1], s.mean[4])
    assert part.prior.tolist() == [0, 0, 0.5, 0, 0.5, 0]
    y, g = torch.tensor([4, 2, 4]), (lambda: torch.Generator().manual_seed(3))
    for init in (GaussianInit, PCAInit):
        torch.testing.assert_close(init(part)(model224, y, generator=g()), init(s)(model224, y, generator=g()))
    with pytest.raises(ValueError, match=r"labels \[0\] are not among the classes"):
        GaussianInit(part)(model224, torch.tensor([0, 2]), generator=g())
    part.save(tmp_path / "part.safetensors")
    assert ClassStats.load(tmp_path / "part.safetensors").row_class == (2, 4)
    x = GaussianInit(s, covariance="lowrank")(model224, torch.tensor([0, 5]),
                                              generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 224, 224)
    res = CliRunner().invoke(main, ["stats", "--data", f"imagenet:{root}@train", "--rank", "4", "--downsample", "8",
                                    "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 2 and "other settings (rank)" in res.output


def test_presets_take_the_models_dataset():
    from ebmlens.sampling import presets

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert presets.get("dat2025", data=x).stages[0].steps == 22
    pgd = presets.get("dat2025", data=x, dataset="imagenet").stages[0]
    assert (pgd.steps, pgd.step_size) == (13, 7.0)
    assert presets.get("dat2025", data=x, dataset="imagenet", steps=5).stages[0].steps == 5  # overrides win
    cfg = presets.get("dat2025", data=x, dataset="imagenet").config()
    assert "7.0" in str(cfg) and "13" in str(cfg)
    from ebmlens.stats import class_stats

    st = class_stats(torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2)
    san = presets.get("santurkar2019", stats=st, dataset="imagenet").stages[0]
    assert (san.geometry.eps, san.step_size, san.steps) == (40.0, 1.0, 60)
    assert presets.get("santurkar2019", stats=st, dataset="cifar10").stages[0].geometry.eps == 30.0
