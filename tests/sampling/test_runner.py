"""Runner contracts: batch-size invariance, resume after a kill, files and run.json, validation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlens import rng
from ebmlens.data import CIFAR10_CLASSES
from ebmlens.energy import EnergyModel, energy_grad
from ebmlens.models.archs import ConvNetSmall
from ebmlens.sampling.runner import SampleRun, balanced_labels, make_grid, resolve_classes, sample


# A stand-in with the Pipeline contract: uniform-noise init, then L2-normalised descent of E(x, y).
@dataclass(frozen=True)
class _Samples:
    images: torch.Tensor
    labels: torch.Tensor
    trace: list


@dataclass(frozen=True)
class StandIn:
    steps: int = 2
    step_size: float = 0.5
    mode: str | None = None

    def __call__(self, model, y, *, generator=None, progress=None):
        x = rng.rand(generator, len(y), model.input_shape)
        trace = []
        with torch.no_grad():
            lg = model.logits(x)
        trace.append({"stage": "init", "E(x)": model.energy_from_logits(lg),
                      "E(x,y)": model.joint_energy_from_logits(lg, y)})
        for _ in range(self.steps):
            _, g = energy_grad(lambda z: model.joint_energy(z, y), x)
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = (x - self.step_size * g).clamp(0, 1)
        with torch.no_grad():
            lg = model.logits(x)
        trace.append({"stage": "descent", "E(x)": model.energy_from_logits(lg),
                      "E(x,y)": model.joint_energy_from_logits(lg, y)})
        return _Samples(x, y, trace)

    def config(self):
        return {"type": "StandIn", **asdict(self)}


PIPE = StandIn()
N = 23  # 3 classes x 7 + 2: exercises the remainder rule


def _tiny_model(seed: int = 0) -> EnergyModel:
    """A small random ConvNet (as in conftest's tiny_model; module-scoped here)."""
    g = torch.Generator().manual_seed(seed)
    net = ConvNetSmall(num_classes=10, widths=(8, 16, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    return EnergyModel(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=10,
                       class_names=CIFAR10_CLASSES, source="test", name="tiny")


def _run(model, out, **kw) -> SampleRun:
    kw.setdefault("classes", [0, 1, 2])
    return sample(model, kw.pop("pipeline", PIPE), kw.pop("n", N), out, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _tiny_model()
    return model, _run(model, tmp_path_factory.mktemp("ref"), batch_size=16)


def _assert_same(a: SampleRun, b: SampleRun) -> None:
    ia, la = a.load()
    ib, lb = b.load()
    assert np.array_equal(la, lb)
    assert np.abs(ia.astype(int) - ib.astype(int)).max() <= 1


def test_labels_balanced_interleaved_remainder_first():
    y = balanced_labels(23, [4, 1, 7])
    assert y.tolist()[:6] == [4, 1, 7, 4, 1, 7]
    assert {k: int((y == k).sum()) for k in (4, 1, 7)} == {4: 8, 1: 8, 7: 7}
    assert resolve_classes("all", 3) == [0, 1, 2]
    assert resolve_classes(["cat", 0], 3, ["dog", "x", "cat"]) == [2, 0]
    with pytest.raises(ValueError, match="out of range"):
        resolve_classes([3], 3)
    with pytest.raises(ValueError, match="did you mean cat"):
        resolve_classes(["cta"], 3, ["dog", "x", "cat"])


def test_batch_size_invariance(reference, tmp_path):
    model, ref = reference
    other = _run(model, tmp_path / "b7", batch_size=7)
    _assert_same(ref, other)
    assert ref.run["batch_size"] == 16 and other.run["batch_size"] == 7
    # a different seed gives different images
    third = _run(model, tmp_path / "s1", batch_size=16, seed=1)
    assert np.abs(third.load()[0].astype(int) - ref.load()[0].astype(int)).max() > 10


def test_resume_after_kill_equals_uninterrupted(reference, tmp_path):
    model, ref = reference
    calls = []

    def killer(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _run(model, tmp_path / "r", batch_size=5, progress=killer)
    assert calls == [5, 10] and len(list((tmp_path / "r" / "shards").glob("shard_*.npz"))) == 2
    assert not (tmp_path / "r" / "samples.npz").exists()
    with pytest.raises(ValueError, match="resume"):
        _run(model, tmp_path / "r", batch_size=5)  # refuses to overwrite
    with pytest.raises(ValueError, match="different seed"):
        _run(model, tmp_path / "r", batch_size=5, seed=3, resume=True)
    seen = []
    done = _run(model, tmp_path / "r", batch_size=4, resume=True, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (14, N) and seen[-1] == (N, N)  # only the 13 missing images were sampled
    assert done.run["timings"]["images_resumed"] == 10 and done.run["timings"]["images_sampled"] == 13
    _assert_same(ref, done)

    # a lost shard (deleted) is re-sampled on resume; the rest is kept
    shard = sorted((tmp_path / "r" / "shards").glob("shard_*.npz"))[1]
    shard.unlink()
    again = _run(model, tmp_path / "r", batch_size=16, resume=True)
    assert again.run["timings"]["images_sampled"] == 5
    _assert_same(ref, again)


def test_files_shapes_and_dtypes(reference):
    model, ref = reference
    out = ref.out_dir
    with np.load(out / "samples.npz") as z:
        assert set(z.files) == {"images", "labels"}
        assert z["images"].dtype == np.uint8 and z["images"].shape == (N, 32, 32, 3)
        assert z["labels"].dtype == np.int64 and z["labels"].tolist() == balanced_labels(N, [0, 1, 2]).tolist()
        images = z["images"]
    names = model.class_names
    pngs = sorted(out.glob("*/*.png"))
    assert len(pngs) == N
    assert sorted({p.parent.name for p in pngs}) == sorted(names[:3])
    first = out / names[1] / "000001.png"
    assert np.array_equal(np.asarray(Image.open(first)), images[1])
    grid = np.asarray(Image.open(out / "grid.png"))
    # 3 rows (classes), min(10, 8) columns, 32 px tiles with 2 px padding
    assert grid.shape == (2 + 3 * 34, 2 + 8 * 34, 3)
    assert np.array_equal(grid[2:34, 2:34], images[0]) and np.array_equal(grid[36:68, 2:34], images[1])
    assert np.array_equal(make_grid(images, z_labels := balanced_labels(N, [0, 1, 2]), [2])[2:34, 36:68],
                          images[np.flatnonzero(z_labels == 2)[1]])


def test_run_json_content(reference):
    model, ref = reference
    run = json.loads((ref.out_dir / "run.json").read_text())
    assert run == ref.run
    assert run["n"] == N and run["seed"] == 0 and run["batch_size"] == 16 and run["dtype"] == "float32"
    assert run["device"] == "cpu" and run["world_size"] == 1 and run["batch_coupled"] is False
    assert run["pipeline"] == PIPE.config()
    assert run["model"]["name"] == "tiny" and run["model"]["num_classes"] == 10
    assert set(run["versions"]) >= {"ebmlens", "torch"}
    assert run["labels"]["counts"] == {model.class_names[0]: 8, model.class_names[1]: 8, model.class_names[2]: 7}
    t = run["timings"]
    assert t["images_sampled"] == N and t["images_per_s"] > 0 and t["total_s"] >= t["sampling_s"] > 0
    e = run["energy"]
    assert list(e) == ["0:init/E(x)", "0:init/E(x,y)", "1:descent/E(x)", "1:descent/E(x,y)"]
    assert all(v["n"] == N and np.isfinite(v["mean"]) and v["std"] >= 0 for v in e.values())
    # the summary is the mean over every sample: recompute from the shards
    vals = np.concatenate([np.load(p)["trace/1:descent/E(x,y)"]
                           for p in sorted((ref.out_dir / "shards").glob("shard_*.npz"))])
    assert e["1:descent/E(x,y)"]["mean"] == pytest.approx(float(vals.astype(np.float64).mean()), rel=1e-6)
    # descending E(x, y) lowered it
    assert e["1:descent/E(x,y)"]["mean"] < e["0:init/E(x,y)"]["mean"]


def test_options_no_png_no_grid_labels_and_train_mode(reference, tmp_path):
    model, _ = reference
    labels = [9, 9, 3]
    r = sample(model, StandIn(steps=1, mode="train"), 3, tmp_path / "o", labels=labels, batch_size=2,
               save_png=False, grid=False)
    assert r.grid is None and not (tmp_path / "o" / "grid.png").exists()
    assert not list((tmp_path / "o").glob("*/*.png"))
    assert r.load()[1].tolist() == labels
    assert r.run["batch_coupled"] is True and r.run["sampling_mode"] == "train"
    assert "batch size" in r.run["invariance"]


def test_bfloat16_autocast_runs_and_is_recorded(reference, tmp_path):
    model, ref = reference
    r = _run(model, tmp_path / "bf", n=6, batch_size=6, dtype="bfloat16", save_png=False)
    assert r.run["dtype"] == "bfloat16"
    img = r.load()[0]
    assert img.shape == (6, 32, 32, 3)
    # the init noise is the same; bf16 only perturbs the descent
    assert np.abs(img.astype(int) - ref.load()[0][:6].astype(int)).mean() < 20


@pytest.mark.parametrize("kw, match", [
    ({"n": 0}, "n must be a positive"),
    ({"n": -3}, "n must be a positive"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"seed": -1}, "seed must be"),
    ({"classes": [0, 10]}, "class index 10 is out of range"),
    ({"dtype": "fp8"}, "dtype must be one of"),
    ({"labels": [0, 1], "classes": None}, "labels has 2 labels for 23"),
    ({"labels": [0] * 23}, "either classes= or labels="),
])
def test_bad_arguments_teach(reference, tmp_path, kw, match):
    model, _ = reference
    with pytest.raises(ValueError, match=match):
        _run(model, tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()
