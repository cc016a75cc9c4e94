"""Runner contracts: batch-size invariance, resume after a kill, files and run.json, validation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlens import _perf, rng
from ebmlens.data import CIFAR10_CLASSES
from ebmlens.energy import EnergyModel
from ebmlens.models.archs import ConvNetSmall
from ebmlens.runs import RunOptions
from ebmlens.runs.runner import SampleRun, balanced_labels, make_grid, resolve_classes, sample
from ebmlens.sampling import class_stats, presets

N = 23  # 3 classes x 7 + 2: exercises the remainder rule
SHAPE = (3, 16, 16)  # small images keep the class statistics and the passes cheap
QUICK = dict(attack_steps=2, steps=2, inner_steps=1)  # robust-jem (the CLI default), shortened


@pytest.fixture(scope="module")
def stats():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(10).repeat(20)
    x = (torch.rand(200, *SHAPE, generator=g) * 0.5 + 0.05 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    return class_stats(x, y).compact(8)


def _tiny_model(seed: int = 0) -> EnergyModel:
    """A small random ConvNet (as in conftest's tiny_model; module-scoped here)."""
    g = torch.Generator().manual_seed(seed)
    net = ConvNetSmall(num_classes=10, widths=(8, 16, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    return EnergyModel(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=10, input_shape=SHAPE,
                       class_names=CIFAR10_CLASSES, source="test", name="tiny")


PIPES: dict = {}


def _run(model, out, **kw) -> SampleRun:
    kw.setdefault("classes", [0, 1, 2])
    return sample(model, kw.pop("pipeline", PIPES["robust-jem"]), kw.pop("n", N), out, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, stats):
    PIPES["robust-jem"] = presets.get("robust-jem", stats=stats, **QUICK)
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
    assert ref.run["options"]["batch_size"] == 16 and other.run["attempts"][-1]["batch_size"] == 7
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
    assert again.run["attempts"][-1]["images_sampled"] == 5 and again.run["attempts"][-1]["batch_size"] == 16
    assert again.run["timings"] == done.run["timings"]  # a finished run keeps its timings
    assert [a["batch_size"] for a in again.run["attempts"]] == [5, 4, 16]  # every attempt, as it ran
    _assert_same(ref, again)


def test_files_shapes_and_dtypes(reference):
    model, ref = reference
    out = ref.out_dir
    with np.load(out / "samples.npz") as z:
        assert set(z.files) == {"images", "labels"}
        assert z["images"].dtype == np.uint8 and z["images"].shape == (N, 16, 16, 3)
        assert z["labels"].dtype == np.int64 and z["labels"].tolist() == balanced_labels(N, [0, 1, 2]).tolist()
        images = z["images"]
    names = model.class_names
    pngs = sorted(out.glob("*/*.png"))
    assert len(pngs) == N
    assert sorted({p.parent.name for p in pngs}) == sorted(names[:3])
    first = out / names[1] / "000001.png"
    assert np.array_equal(np.asarray(Image.open(first)), images[1])
    grid = np.asarray(Image.open(out / "grid.png"))
    # 3 rows (classes), min(10, 8) columns, 16 px tiles with 2 px padding
    assert grid.shape == (2 + 3 * 18, 2 + 8 * 18, 3)
    assert np.array_equal(grid[2:18, 2:18], images[0]) and np.array_equal(grid[20:36, 2:18], images[1])
    assert np.array_equal(grid[20:36, 20:36], images[4])  # row "class 1": samples 1, 4, 7, ...
    labels = balanced_labels(N, [0, 1, 2])
    assert np.array_equal(make_grid(images, labels, [2])[2:18, 20:36], images[np.flatnonzero(labels == 2)[1]])


def test_run_json_content(reference):
    model, ref = reference
    run = json.loads((ref.out_dir / "run.json").read_text())
    assert run == ref.run
    o = run["options"]
    assert run["format"] == "ebmlens.sample/2" and set(o) == set(RunOptions().stored())
    assert run["n"] == N and o["seed"] == 0 and o["batch_size"] == 16 and o["dtype"] == "float32"
    assert run["attempts"][-1]["device"] == "cpu" and run["attempts"][-1]["threads"] == torch.get_num_threads()
    assert run["world_size"] == 1 and run["batch_coupled"] is False
    assert run["pipeline"] == json.loads(json.dumps(PIPES["robust-jem"].config()))
    assert run["model"]["name"] == "tiny" and run["model"]["num_classes"] == 10
    assert set(run["versions"]) >= {"ebmlens", "torch"}
    assert run["labels"]["counts"] == {model.class_names[0]: 8, model.class_names[1]: 8, model.class_names[2]: 7}
    t = run["timings"]
    assert t["images_sampled"] == N and t["images_per_s"] > 0 and t["total_s"] >= t["sampling_s"] > 0
    e = run["energy"]
    # records="stages": the point after SGLD differs from the final one only by Clamp and is not kept
    assert [(r["index"], r["stage"], r["source"]) for r in e] == [
        (0, "GaussianInit", "pass"), (1, "TargetedPGD", "record"), (2, "Contrast", "pass"), (4, "Clamp", "record")]
    assert o["records"] == "stages" and o["fast"] is False and run["compile_mode"] is None
    assert run["matmul_precision"] in ("highest", "high", "medium")
    for r in e:
        assert r["n"] == N and r["seconds"] >= 0
        for q in ("energy", "joint_energy"):
            assert np.isfinite(r[q]["mean"]) and r[q]["std"] >= 0
        assert r["energy"]["mean"] <= r["joint_energy"]["mean"]  # E(x) <= E(x, y) at T = 1
    # the summary is over every sample: recompute one entry from the shards
    vals = np.concatenate([np.load(p)["trace/1:TargetedPGD/joint_energy"]
                           for p in sorted((ref.out_dir / "shards").glob("shard_*.npz"))])
    assert vals.shape == (N,)
    assert e[1]["joint_energy"]["mean"] == pytest.approx(float(vals.astype(np.float64).mean()), rel=1e-6)
    # the targeted attack lowered E(x, y) from the init
    assert e[1]["joint_energy"]["mean"] < e[0]["joint_energy"]["mean"]


def test_options_no_png_no_grid_labels_and_train_mode(reference, stats, tmp_path):
    model, _ = reference
    labels = [9, 9, 3]
    jempp = presets.get("jempp", stats=stats, steps=1, inner_steps=1)  # JEM++ samples with BN in train mode
    r = sample(model, jempp, 3, tmp_path / "o", labels=labels, batch_size=2, png=False, grid=False)
    assert r.grid is None and not (tmp_path / "o" / "grid.png").exists()
    assert not list((tmp_path / "o").glob("*/*.png"))
    assert r.load()[1].tolist() == labels
    assert r.run["batch_coupled"] is True and r.run["sampling_mode"] == "train"
    assert "batch size" in r.run["invariance"]


def test_bfloat16_autocast_runs_and_is_recorded(reference, tmp_path):
    model, ref = reference
    r = _run(model, tmp_path / "bf", n=6, batch_size=6, dtype="bfloat16", png=False)
    assert r.run["options"]["dtype"] == "bfloat16"
    img = r.load()[0]
    assert img.shape == (6, 16, 16, 3)
    # the same init noise; bf16 only perturbs the passes: far closer than another seed's images
    other = _run(model, tmp_path / "s9", n=6, batch_size=6, seed=9, png=False).load()[0]
    ref6 = ref.load()[0][:6].astype(int)
    assert np.abs(img.astype(int) - ref6).mean() < 0.5 * np.abs(other.astype(int) - ref6).mean()


def test_channels_last_runs_and_is_recorded(tmp_path, stats):
    model = _tiny_model()
    classifier, weights = model.classifier, {k: v.clone() for k, v in model.state_dict().items()}
    r = _run(model, tmp_path / "cl", n=6, batch_size=6, channels_last=True, png=False)
    assert r.run["options"]["channels_last"] is True and r.run["options"]["compile"] is False
    # the caller's model is unchanged: the runner converted a copy
    assert model.classifier is classifier
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    # the copy's forwards equal the contiguous ones up to rounding
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    fast = _perf.prepare_model(model, channels_last=True, inplace=False)
    assert fast is not model and fast.classifier.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.logits(x), model.logits(x), atol=1e-4)
    assert r.load()[0].shape == (6, 16, 16, 3)


def test_fast_does_nothing_on_the_cpu_and_is_recorded(reference, tmp_path, caplog):
    model, ref = reference
    with caplog.at_level(logging.INFO, logger="ebmlens.runs.plan"):
        r = _run(model, tmp_path / "fast", fast=True, records="final", batch_size=16, png=False, grid=False)
    assert "changes nothing on cpu" in caplog.text
    o, a = r.run["options"], r.run["attempts"][-1]
    assert o["fast"] is True and a["dtype"] == "float32" and a["channels_last"] is False
    assert a["compile"] is False and o["records"] == "final"
    assert [(e["index"], e["source"]) for e in r.run["energy"]] == [(4, "record")]
    assert r.run["energy"][0] == {**ref.run["energy"][-1], "seconds": r.run["energy"][0]["seconds"]}
    np.testing.assert_array_equal(r.load()[0], ref.load()[0])
    with pytest.raises(TypeError, match="needs an ebmlens Pipeline"):
        _run(model, tmp_path / "own", pipeline=_noise, records="none")


def test_any_callable_pipeline(reference, tmp_path):
    """A user's own pipeline: any callable returning images (no config(), no trace)."""
    model, _ = reference

    def noise(model, y, *, generator=None):
        return rng.rand(generator, len(y), model.input_shape)

    a = sample(model, noise, 5, tmp_path / "a", batch_size=2, png=False)
    b = sample(model, noise, 5, tmp_path / "b", batch_size=5, png=False)
    assert np.array_equal(a.load()[0], b.load()[0])  # noise alone is bitwise batch-size invariant
    assert a.run["energy"] == [] and "noise" in a.run["pipeline"]["repr"]
    with pytest.raises(ValueError, match="a pipeline must return Samples with images"):
        sample(model, lambda m, y, generator=None: torch.zeros(3), 2, tmp_path / "c")


@pytest.mark.parametrize("kw, match", [
    ({"n": 0}, "n must be a positive"),
    ({"n": -3}, "n must be a positive"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"seed": -1}, "seed must be"),
    ({"classes": [0, 10]}, "class index 10 is out of range"),
    ({"dtype": "fp8"}, "dtype must be one of"),
    ({"labels": [0, 1], "classes": None}, "labels has 2 labels for 23"),
    ({"labels": [0] * 23}, "either classes= or labels="),
    ({"batch_size": "auto"}, "batch_size='auto' needs a CUDA device"),
    ({"batch_size": "big"}, "batch_size must be a positive integer or 'auto'"),
])
def test_bad_arguments_teach(reference, tmp_path, kw, match):
    model, _ = reference
    with pytest.raises(ValueError, match=match):
        _run(model, tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()


def _noise(model, y, *, generator=None):
    return rng.rand(generator, len(y), model.input_shape)


def test_dtype_reaches_the_model_passes(reference, tmp_path):
    """bf16 autocast wraps the pipeline: its passes run in bf16 (fails if the runner ignores dtype)."""
    model, _ = reference
    seen = []

    def probe(model, y, *, generator=None):
        x = _noise(model, y, generator=generator)
        seen.append(model.logits(x).dtype)
        return x

    sample(model, probe, 2, tmp_path / "bf", batch_size=2, dtype="bfloat16", png=False, grid=False)
    sample(model, probe, 2, tmp_path / "f32", batch_size=2, png=False, grid=False)
    assert seen == [torch.bfloat16, torch.float32]
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16 or not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="float16 autocast is for CUDA"):
        sample(model, probe, 2, tmp_path / "f16", device="cpu", dtype="float16")
    assert not (tmp_path / "f16").exists()


@pytest.fixture
def noise_run(reference, tmp_path):
    """A finished 6-sample run in two shards (indices 0-2 and 3-5)."""
    model, _ = reference
    out = tmp_path / "run"
    sample(model, _noise, 6, out, batch_size=3, classes=[0, 1], png=False, grid=False)
    shards = sorted((out / "shards").glob("shard_*.npz"))
    assert [p.name for p in shards] == ["shard_000000000.npz", "shard_000000003.npz"]
    return model, out, shards


def _rewrite(src, dst, **changes):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(dst, **arrays)


def _resume(model, out):
    return sample(model, _noise, 6, out, batch_size=3, classes=[0, 1], png=False, grid=False, resume=True)


def test_resume_of_a_complete_run_merges_again(noise_run):
    model, out, _ = noise_run
    first = json.loads((out / "run.json").read_text())
    again = _resume(model, out)
    assert again.run["attempts"][-1]["images_sampled"] == 0 and again.run["attempts"][-1]["images_resumed"] == 6
    # the finished run keeps its timings and creation time; the attempt is added (issue 22 item 4)
    assert again.run["timings"] == first["timings"] and again.run["created"] == first["created"]
    assert len(again.run["attempts"]) == len(first["attempts"]) + 1


def test_repeated_shard_is_refused_by_name(noise_run):
    model, out, shards = noise_run
    copy = out / "shards" / "shard_000000001.npz"
    _rewrite(shards[0], copy)                       # a second shard holding indices 0-2
    with pytest.raises(ValueError, match=r"shard_000000001\.npz repeats samples already in shard .*shard_000000000"):
        _resume(model, out)
    _rewrite(shards[0], copy, indices=np.array([1, 1, 2]), labels=np.array([1, 1, 0]))  # repeats within itself
    copy.unlink()
    _rewrite(shards[1], shards[1], indices=np.array([3, 3, 5]), labels=np.array([1, 1, 1]))
    with pytest.raises(ValueError, match=r"shard_000000003\.npz repeats samples already in itself"):
        _resume(model, out)


def test_shard_with_foreign_labels_is_refused_by_name(noise_run):
    model, out, shards = noise_run
    with np.load(shards[1]) as z:
        labels = z["labels"].copy()
    _rewrite(shards[1], shards[1], labels=(labels + 1) % 10)
    with pytest.raises(ValueError, match=r"shard .*shard_000000003\.npz has other labels than this run"):
        _resume(model, out)


def test_shard_with_out_of_range_indices_is_refused_by_name(noise_run):
    model, out, shards = noise_run
    _rewrite(shards[1], out / "shards" / "shard_000000006.npz", indices=np.array([6, 7, 8]))
    with pytest.raises(ValueError, match=r"shard .*shard_000000006\.npz holds sample indices 6\.\.8 but n=6"):
        _resume(model, out)


def test_run_plan_is_built_once_and_frozen(reference, tmp_path):
    from dataclasses import FrozenInstanceError

    from ebmlens.runs import RunOptions, RunPlan
    from ebmlens.runs.runner import run

    model, _ = reference
    plan = RunPlan.build(model, _noise, 5, tmp_path / "p", batch_size=2, classes=["cat", 0], png=False)
    assert plan.labels.tolist() == [3, 0, 3, 0, 3] and plan.classes == (3, 0) and plan.class_names[3] == "cat"
    assert plan.mode == "eval" and not plan.batch_coupled and plan.options.device is None
    with pytest.raises(FrozenInstanceError):
        plan.n = 3
    r = run(plan)
    assert r.load()[1].tolist() == [3, 0, 3, 0, 3] and r.run["labels"]["classes"] == [3, 0]
    with pytest.raises(ValueError, match="--batch-size must be a positive integer or 'auto'"):
        RunOptions.from_cli(batch_size=0)
    with pytest.raises(FrozenInstanceError):
        plan.options.seed = 3
