"""``ebmlens models``: offline listing per source, local RobustBench weights marked, clear errors."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ebmlens.cli import main
from ebmlens.models import bundled
from ebmlens.models.archs import ConvNetSmall


def _run(*args):
    r = CliRunner().invoke(main, ["models", *args])
    return r.exit_code, r.output


def test_bundled_listing(tmp_path, monkeypatch):
    net = ConvNetSmall(num_classes=10)
    save_file(dict(net.state_dict()), str(tmp_path / "toy.safetensors"))
    (tmp_path / "toy.json").write_text(json.dumps({"arch": "convnet-small", "num_classes": 10, "mean": [0.5],
                                                   "std": [0.25], "input_shape": [3, 32, 32]}))
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    code, out = _run("ebmlens")
    assert code == 0 and out.strip() == "ebmlens:toy"
    code, out = _run()
    assert code == 0 and "  ebmlens:toy" in out and "ebmlens models robustbench" in out


def test_robustbench_listing_marks_local_files(tmp_path):
    p = tmp_path / "cifar10" / "L2" / "Engstrom2019Robustness.pt"
    p.parent.mkdir(parents=True)
    torch.save({}, p)
    code, out = _run("robustbench", "--dataset", "cifar10", "--threat-model", "L2", "--model-dir", str(tmp_path))
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("robustbench:")]
    assert len(lines) == 21
    assert "robustbench:Engstrom2019Robustness\tcifar10\tL2  [local]" in lines
    assert all(ln.endswith("[missing]") for ln in lines if "Engstrom2019Robustness" not in ln)
    code, out = _run("robustbench", "--model-dir", str(tmp_path), "--local")
    assert code == 0 and [ln for ln in out.splitlines() if ln.startswith("robustbench:")] == \
        ["robustbench:Engstrom2019Robustness\tcifar10\tL2  [local]"]
    code, out = _run("--model-dir", str(tmp_path))
    assert "robustbench:Engstrom2019Robustness  --dataset cifar10 --threat-model L2" in out


def test_timm_listing_and_errors():
    code, out = _run("timm", "--pattern", "resnet10*")
    assert code == 0 and "timm:resnet10t" in out.splitlines()
    code, out = _run("robustbnch")
    assert code == 2 and "error: unknown model source 'robustbnch'; did you mean 'robustbench'" in out
    code, out = _run("robustbench", "--dataset", "cifar11")
    assert code == 2 and "did you mean 'cifar10'" in out and "Traceback" not in out
    code, out = _run("timm", "--dataset", "cifar10")
    assert code == 2 and "--dataset/--threat-model apply to robustbench" in out
    code, out = _run("robustbench", "--local")
    assert code == 2 and "--local needs --model-dir" in out
