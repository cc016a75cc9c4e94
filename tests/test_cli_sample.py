"""``ebmlens sample``: the default path (bundled model + its shipped statistics), file: models,
overrides, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ebmlens.cli import main
from ebmlens.data import CIFAR10_CLASSES
from ebmlens.models.archs import ConvNetSmall
from ebmlens.sampling import class_stats

SHAPE = (3, 16, 16)  # small images keep the Gaussian statistics and the passes cheap
QUICK = ["--set", "attack_steps=2", "--set", "steps=2", "--set", "inner_steps=1"]  # robust-jem, shortened


def _net(seed: int = 0) -> ConvNetSmall:
    g = torch.Generator().manual_seed(seed)
    net = ConvNetSmall(num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    return net.eval()


def _meta() -> dict:
    return {"arch": "convnet-small", "num_classes": 10, "class_names": CIFAR10_CLASSES, "mean": [0.5] * 3,
            "std": [0.25] * 3, "input_shape": list(SHAPE), "dataset": "cifar10", "threat_model": "L2"}


def _stats():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, *SHAPE, generator=g) * 0.5 + 0.25 * torch.arange(10).repeat(20).view(-1, 1, 1, 1) / 10
    return class_stats(x, torch.arange(10).repeat(20)).compact(8)


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    """A bundled-model folder standing in for the package's (weights + json + compact stats)."""
    d = tmp_path_factory.mktemp("bundled")
    name = "cifar10-l2-small"
    save_file({k: v.contiguous() for k, v in _net().state_dict().items()}, str(d / f"{name}.safetensors"))
    (d / f"{name}.json").write_text(json.dumps(_meta()))
    _stats().save(d / f"{name}.stats.safetensors")
    return d


@pytest.fixture
def bundled(fake_bundle, monkeypatch):
    monkeypatch.setenv("EBMLENS_BUNDLED_DIR", str(fake_bundle))
    return fake_bundle


def _invoke(args):
    return CliRunner().invoke(main, ["sample", *args], catch_exceptions=False)


def test_default_model_and_shipped_stats(bundled, tmp_path):
    out = tmp_path / "s"
    r = _invoke(["--n", "12", "--classes", "0,cat,9", "--batch-size", "5", "--out", str(out), *QUICK])
    assert r.exit_code == 0, r.output
    assert f"wrote 12 samples to {out}" in r.output
    with np.load(out / "samples.npz") as z:
        assert z["images"].shape == (12, 16, 16, 3) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [0, 3, 9] * 4
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["source"] == "ebmlens" and run["model"]["name"] == "cifar10-l2-small"
    names = [s["name"] for s in run["pipeline"]["stages"]]
    assert run["pipeline"]["init"]["name"] == "GaussianInit" and names == ["TargetedPGD", "Contrast", "SGLD", "Clamp"]
    assert run["pipeline"]["stages"][0]["steps"] == 2 and run["pipeline"]["stages"][2]["steps"] == 2
    # the statistics are recorded by fingerprint, never as tensors
    assert "<array" not in json.dumps(run["pipeline"])
    assert sorted(p.parent.name for p in out.glob("*/*.png")) == ["airplane"] * 4 + ["cat"] * 4 + ["truck"] * 4
    assert (out / "grid.png").exists()
    # --records stages (default): the init, each stage feeding the next, the final point; not the point after
    # SGLD (only Clamp follows); the init's and the Contrast's energies come from the next stage's first pass
    assert [(r["index"], r["stage"], r["source"]) for r in run["energy"]] == [
        (0, "GaussianInit", "pass"), (1, "TargetedPGD", "record"), (2, "Contrast", "pass"), (4, "Clamp", "record")]
    assert run["options"]["records"] == "stages" and run["options"]["fast"] is False

    # --resume on a finished run re-merges, samples nothing, gives the same images and keeps the run's timings;
    # the batch size may change, --no-png (an identity option) may not
    r2 = _invoke(["--n", "12", "--classes", "0,cat,9", "--batch-size", "4", "--out", str(out), "--resume", *QUICK])
    assert r2.exit_code == 0, r2.output
    run2 = json.loads((out / "run.json").read_text())
    assert run2["attempts"][-1]["images_sampled"] == 0 and run2["attempts"][-1]["images_resumed"] == 12
    assert run2["timings"] == run["timings"] and run2["attempts"][-1]["batch_size"] == 4
    bad = _invoke(["--n", "12", "--classes", "0,cat,9", "--out", str(out), "--resume", "--no-png", *QUICK])
    assert bad.exit_code == 2 and "different png" in bad.output and len(bad.output.strip().splitlines()) == 1
    with np.load(out / "samples.npz") as z:
        assert z["labels"].tolist() == [0, 3, 9] * 4


def test_records_none_and_fast_on_the_cpu(bundled, tmp_path):
    out = tmp_path / "prod"
    r = _invoke(["--n", "4", "--batch-size", "4", "--out", str(out), "--no-png", "--no-grid", "--records", "none",
                 "--fast", "--device", "cpu", *QUICK])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["records"] == "none" and run["energy"] == []
    # --fast changes nothing on the CPU and says so in run.json's resolved settings (the attempt's)
    a = run["attempts"][-1]
    assert run["options"]["fast"] is True and a["dtype"] == "float32" and a["channels_last"] is False
    assert a["compile"] is False and run["compile_mode"] is None
    bad = CliRunner().invoke(main, ["sample", "--records", "some", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--records" in bad.output


def test_file_model_with_stats_file_and_dtype(tmp_path):
    ckpt = tmp_path / "m.pt"
    torch.save({"state_dict": _net(2).state_dict(), "ebmlens_meta": _meta()}, ckpt)
    stats = _stats().save(tmp_path / "stats.safetensors")
    out = tmp_path / "f"
    r = _invoke(["--model", f"file:{ckpt}", "--stats", str(stats), "--preset", "santurkar2019", "--set", "steps=2",
                 "--n", "4", "--out", str(out), "--no-png", "--no-grid", "--dtype", "bfloat16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["dtype"] == "bfloat16" and run["options"]["device"] == "cpu"
    assert run["attempts"][-1]["device"] == "cpu" and run["files"]["grid"] is None
    assert run["pipeline"]["stages"][0]["name"] == "TargetedPGD" and run["pipeline"]["stages"][0]["steps"] == 2
    assert not (out / "grid.png").exists() and not list(out.glob("*/*.png"))


def test_evaluate_after_sampling(bundled, tmp_path):
    """--evaluate runs ebmlens.metrics.evaluate on the finished run (here IS in a small classifier, offline)."""
    ckpt = tmp_path / "feat.pt"
    torch.save({"state_dict": _net(3).state_dict(), "ebmlens_meta": _meta()}, ckpt)
    out = tmp_path / "e"
    r = _invoke(["-n", "10", "--out", str(out), "--no-png", *QUICK, "--evaluate", "is",
                 "--feature-model", f"file:{ckpt}"])
    assert r.exit_code == 0, r.output
    assert "evaluated 10 samples" in r.output
    rec = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"] == rec and rec["num_images"] == 10
    (key,) = [k for k in rec["values"] if k.endswith("_mean")]
    assert key.startswith("is_") and 1.0 <= rec["values"][key] <= 10.0


@pytest.mark.parametrize("args, needle", [
    (["--evaluate", "fid"], "needs a reference"),
    (["--evaluate", "fidd"], "unknown metrics"),
    (["--n", "0"], "--n must be a positive"),
    (["--n", "-5"], "--n must be a positive"),
    (["--preset", "robust-jm"], "unknown preset 'robust-jm'; did you mean robust-jem"),
    (["--classes", "3,10"], "class index 10 is out of range"),
    (["--classes", "kat"], "unknown class name 'kat'; did you mean cat"),
    (["--batch-size", "0"], "--batch-size must be a positive integer or 'auto'"),
    (["--batch-size", "big"], "--batch-size must be a positive integer or 'auto'"),
    (["--set", "steps"], "--set expects KEY=VALUE"),
    (["--set", "bogus=1"], "has no option 'bogus'"),
    (["--stats", "/nonexistent/stats.safetensors"], "does not exist"),
])
def test_bad_arguments_one_line_exit_2(bundled, tmp_path, args, needle):
    r = _invoke(["--out", str(tmp_path / "x"), *args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert not (tmp_path / "x" / "samples.npz").exists()


def test_missing_stats_is_a_one_line_error(bundled, tmp_path):
    (bundled / "cifar10-l2-small.stats.safetensors").rename(bundled / "hidden.bin")
    try:
        r = _invoke(["--out", str(tmp_path / "x"), "--n", "2"])
    finally:
        (bundled / "hidden.bin").rename(bundled / "cifar10-l2-small.stats.safetensors")
    assert r.exit_code == 2
    line = r.output.strip()
    assert "\n" not in line and line.startswith("error: ") and "needs per-class statistics" in line
    assert "--data" in line


def test_refuses_to_overwrite_without_resume(bundled, tmp_path):
    args = ["--n", "2", "--out", str(tmp_path / "o"), "--no-png", *QUICK]
    assert _invoke(args).exit_code == 0
    r = _invoke(args)
    assert r.exit_code == 2 and "--resume" in r.output and r.output.count("\n") == 1


def test_evaluate_fid_against_ref_after_sampling(bundled, tmp_path):
    """--evaluate fid,kid --ref: the distances to the given reference, in a feature network (offline)."""
    from ebmlens.metrics import evaluate

    ckpt = tmp_path / "feat.pt"
    torch.save({"state_dict": _net(3).state_dict(), "ebmlens_meta": _meta()}, ckpt)
    g = torch.Generator().manual_seed(4)
    ref = tmp_path / "ref.npz"
    np.savez(ref, images=torch.randint(0, 256, (40, 16, 16, 3), generator=g, dtype=torch.uint8).numpy(),
             labels=np.arange(40) % 10)
    out = tmp_path / "fid"
    feat = ["--feature-model", f"file:{ckpt}"]
    r = _invoke(["-n", "10", "--out", str(out), "--no-png", "--no-grid", *QUICK, "--evaluate", "fid,kid",
                 "--ref", f"npz:{ref}", *feat])
    assert r.exit_code == 0, r.output
    assert "evaluated 10 samples" in r.output
    rec = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"] == rec and rec["num_images"] == 10
    (fd,) = [k for k in rec["values"] if k.startswith("fd_")]
    assert any(k.startswith("kd_") for k in rec["values"])
    assert all(np.isfinite(v) for v in rec["values"].values())
    # the value is the distance to --ref: the same as evaluate() against it, far from the samples' own
    direct = evaluate(out, ref=f"npz:{ref}", metrics="fid", feature_model=f"file:{ckpt}").values[fd]
    to_self = evaluate(out, ref=out, metrics="fid", feature_model=f"file:{ckpt}").values[fd]
    assert rec["values"][fd] == pytest.approx(direct, rel=1e-4)
    assert abs(to_self) < 1e-3 * rec["values"][fd] and rec["values"][fd] > 0
