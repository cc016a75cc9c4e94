"""``ebmlens energy``: files written, --list-attacks, dynamics mode, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.models.archs import ConvNetSmall


@pytest.fixture
def ckpt(tmp_path):
    with torch.random.fork_rng(devices=[]):  # seeded weights; the global generator is untouched
        torch.manual_seed(0)
        net = ConvNetSmall(num_classes=10)
    meta = {"arch": "convnet-small", "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
            "input_shape": [3, 32, 32], "epoch": 3}
    p = tmp_path / "epoch_003.pt"
    torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, p)
    return p


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_attacks():
    r = _run("energy", "--list-attacks")
    assert r.exit_code == 0
    for name in ("pgd ", "pgd-targeted", "apgd-ce", "apgd-t", "apgd-dlr", "tpgd", "fab", "square", "cw", "ta:<Class>"):
        assert name in r.output


def test_energy_writes_report(ckpt, cifar_spec, tmp_path):
    out = tmp_path / "report"
    r = _run("energy", "--model", f"file:{ckpt}", "--data", cifar_spec, "--n", "12", "--steps", "1",
             "--attack", "pgd", "--attack", "pgd-targeted", "--threat-model", "Linf", "--eps", "8/255",
             "--batch-size", "6", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"report.json", "table.md", "table.csv", "energies.png"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["eps"] == pytest.approx(8 / 255)
    assert [k["kind"] for k in rep["kinds"]] == ["natural", "pgd", "pgd-targeted"]
    assert "| natural |" in (out / "table.md").read_text()


def test_energy_dynamics_mode(ckpt, cifar_spec, tmp_path):
    out = tmp_path / "dyn"
    r = _run("energy", "--checkpoints", str(ckpt.parent / "epoch_*.pt"), "--data", cifar_spec, "--n", "6",
             "--steps", "1", "--attack", "pgd", "--eps", "0.5", "--threat-model", "L2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["epochs"] == [3]
    assert (out / "dynamics.png").exists() and (out / "table.csv").exists()


@pytest.mark.parametrize("args, needle", [
    (["--attack", "pgdd"], "unknown attack 'pgdd'"),
    (["--eps", "0"], "--eps must be > 0"),
    (["--eps", "-1/255"], "--eps must be > 0"),
    (["--eps", "abc"], "cannot read number"),
    (["--n", "20000"], "larger than the dataset"),
    (["--checkpoints", "/nonexistent/epoch_*.pt"], "no checkpoint matches"),
])
def test_bad_input_one_line_exit_2(ckpt, cifar_spec, tmp_path, args, needle):
    r = CliRunner().invoke(main, ["energy", "--model", f"file:{ckpt}", "--data", cifar_spec, "--steps", "1",
                                  "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
