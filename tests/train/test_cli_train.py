"""`ebmlens train`: options map onto TrainConfig; user errors are one line and exit code 2."""

import json

import pytest
from click.testing import CliRunner

from ebmlens.cli import main

TINY = ["--arch", "convnet-small", "--eps", "0.25", "--attack-steps", "1", "--epochs", "2", "--batch-size", "16",
        "--max-train-images", "64", "--eval-n", "16"]


def _run(args):
    return CliRunner().invoke(main, ["train", *args])


def test_robust_jem_run_and_resume(tiny_spec, tmp_path):
    out = tmp_path / "run"
    args = ["--data", tiny_spec, "--out", str(out), *TINY, "--objective", "robust-jem", "--buffer-size", "32",
            "--sgld-steps", "2", "--sgld-inner-steps", "2", "--jem-init", "uniform", "--gamma", "0.5"]
    r = _run(args)
    assert r.exit_code == 0, r.output
    assert "done:" in r.stdout and "robust_acc=" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["objective"], cfg["buffer_size"], cfg["sgld_steps"], cfg["gamma"], cfg["jem_init"]) == \
        ("robust-jem", 32, 2, 0.5, "uniform")
    assert len(json.loads((out / "metrics.json").read_text())) == 2
    r = _run([*args, "--resume"])  # a finished run resumes to the end at once
    assert r.exit_code == 0, r.output


def test_weat_eps_as_fraction(tiny_spec, tmp_path):
    r = _run(["--data", tiny_spec, "--out", str(tmp_path), *TINY[:2], "--eps", "8/255", "--threat-model", "Linf",
              "--objective", "weat-nat", "--epochs", "2", "--batch-size", "16", "--max-train-images", "64",
              "--eval-n", "16", "--attack-steps", "1"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["eps"] == pytest.approx(8 / 255) and cfg["objective"] == "weat-nat" and cfg["beta"] == 6.0


@pytest.mark.parametrize("extra,message", [
    (["--objective", "weat_adv"], "unknown objective 'weat_adv'; did you mean weat-adv?"),
    (["--objective", "robustjem"], "did you mean robust-jem?"),
    (["--arch", "resnet_small"], "unknown arch 'resnet_small'; did you mean resnet-small"),
    (["--eps", "0"], "eps must be > 0, got 0.0"),
    (["--eps", "-0.5"], "eps must be > 0, got -0.5"),
    (["--eps", "abc"], "cannot read number 'abc'"),
])
def test_bad_options_one_line(tiny_spec, tmp_path, extra, message):
    r = _run(["--data", tiny_spec, "--out", str(tmp_path / "run"), *TINY, *extra])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_missing_data_one_line(tmp_path):
    r = _run(["--data", f"cifar10:{tmp_path / 'missing.tar.xz'}", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: data path") and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_unwritable_out_one_line(tiny_spec, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run(["--data", tiny_spec, "--out", str(blocker / "run"), *TINY])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: output folder") and "not writable" in r.stderr and r.stderr.count("\n") == 1


def test_quick_try_falls_back_with_recorded_notes(tiny_spec, tmp_path):
    """--max-train-images 32 --epochs 1 with the default batch 128 and one-cycle: the batch becomes the
    image count and the schedule cosine (one-cycle cannot warm up in one step); both are noted."""
    out = tmp_path / "quick"
    r = _run(["--data", tiny_spec, "--out", str(out), "--arch", "convnet-small", "--attack-steps", "1",
              "--epochs", "1", "--max-train-images", "32", "--eval-n", "16"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_size"] == 32 and cfg["schedule"] == "cosine"
    assert any("batch_size 128" in n for n in cfg["notes"]) and any("cosine" in n for n in cfg["notes"])
    assert len(json.loads((out / "metrics.json").read_text())) == 1
