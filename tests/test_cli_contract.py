"""The CLI contract of the bad-input issue: every command that loads a model refuses a pickled
checkpoint unless --trust-checkpoint is given (and no code from the file runs), loads it with the
flag; every command checks --device before loading anything; the attack geometry defaults to the
model's own."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.models.archs import get_arch


class _Marker:
    """Unpickling this writes a marker file: proof that code from the checkpoint ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = get_arch("convnet-small")(num_classes=10)
    meta = {"arch": "convnet-small", "num_classes": 10, "input_shape": [3, 32, 32], "threat_model": "L2", "eps": 0.5}
    marker = d / "marker.txt"
    (d / "run").mkdir()
    for path in (d / "pickled.pt", d / "run" / "epoch_1.pt"):
        torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta, "extra": _Marker(marker)}, path)
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", images=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(20) % 10)
    return d, marker


def _commands(d):
    data = f"npz:{d / 'data.npz'}"
    ckpt = f"file:{d / 'pickled.pt'}"
    return {
        "sample": ["sample", "--model", ckpt, "--preset", "dat2025", "--data", data, "--set", "steps=1", "-n", "2",
                   "--no-png", "--no-grid", "--out", str(d / "samples")],
        "energy": ["energy", "--model", ckpt, "--data", data, "-n", "4", "--attack", "pgd", "--steps", "1",
                   "--out", str(d / "energy")],
        "energy --checkpoints": ["energy", "--checkpoints", str(d / "run" / "epoch_*.pt"), "--data", data, "-n", "4",
                                 "--attack", "pgd", "--steps", "1", "--out", str(d / "dyn")],
        "accuracy": ["accuracy", "--model", ckpt, "--data", data, "-n", "4", "--steps", "1"],
        "evaluate": ["evaluate", data, "--ref", data, "--metrics", "fid", "--feature-model", ckpt,
                     "--batch-size", "10"],
    }


@pytest.mark.parametrize("cmd", ["sample", "energy", "energy --checkpoints", "accuracy", "evaluate"])
def test_pickled_checkpoint_needs_trust(files, cmd):
    d, marker = files
    marker.unlink(missing_ok=True)
    args = _commands(d)[cmd]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert "--trust-checkpoint" in r.output and "Traceback" not in r.output
    assert not marker.exists(), "code from the checkpoint ran without --trust-checkpoint"
    r = CliRunner().invoke(main, args + ["--trust-checkpoint"])
    assert r.exit_code == 0, r.output
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("cmd", ["sample", "energy", "accuracy", "evaluate", "train"])
def test_bad_device_is_a_one_line_error_before_any_model_loads(files, cmd):
    d, _ = files
    args = _commands(d).get(cmd) or ["train", "--data", f"npz:{d / 'data.npz'}", "--out", str(d / "train")]
    r = CliRunner().invoke(main, args + ["--device", "tpu"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ["error: unknown device 'tpu'; choose auto, cpu, cuda, cuda:N or mps"]


def test_energy_attacks_in_the_models_own_geometry_by_default(files, cifar_spec, tmp_path):
    out = tmp_path / "e"
    r = CliRunner().invoke(main, ["energy", "--data", cifar_spec, "-n", "4", "--attack", "pgd", "--steps", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "report.json").read_text())["config"]
    assert cfg["threat_model"] == "L2" and cfg["eps"] == 0.5  # the bundled model's own (it is L2, eps 0.5)
    r = CliRunner().invoke(main, ["energy", "--data", cifar_spec, "-n", "4", "--attack", "pgd", "--steps", "1",
                                  "--attack-threat-model", "Linf", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "report.json").read_text())["config"]
    assert cfg["threat_model"] == "Linf" and abs(cfg["eps"] - 8 / 255) < 1e-12


def test_accuracy_model_threat_model_is_a_deprecated_alias(files, tmp_path):
    d, _ = files
    base = ["accuracy", "--data", f"npz:{d / 'data.npz'}", "-n", "4", "--steps", "1"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    r1 = CliRunner().invoke(main, base + ["--model-threat-model", "Linf", "--out", str(a)])
    r2 = CliRunner().invoke(main, base + ["--threat-model", "Linf", "--out", str(b)])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert "deprecated" in r1.output
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["attack"] == jb["attack"] and ja["eps"] == jb["eps"] == pytest.approx(8 / 255)
    assert "--model-threat-model" not in CliRunner().invoke(main, ["accuracy", "--help"]).output


def test_resume_with_other_settings_names_the_differing_fields(files, tmp_path):
    d, _ = files
    base = ["sample", "--preset", "dat2025", "--data", f"npz:{d / 'data.npz'}", "-n", "2", "--no-png", "--no-grid",
            "--out", str(tmp_path / "s")]
    assert CliRunner().invoke(main, base + ["--set", "steps=1"]).exit_code == 0
    r = CliRunner().invoke(main, base + ["--set", "steps=2", "--resume"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "different pipeline: pipeline.stages[0].steps 1 vs 2" in lines[0], r.output
