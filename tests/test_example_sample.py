"""examples/sample_grid.py runs as a user would run it and does what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample_grid.py"


def test_sample_grid_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_grid", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--out", str(tmp_path / "s"), "--n", "20", "--preset", "robust-jem"])
    assert (tmp_path / "s" / "grid.png").is_file() and (tmp_path / "s" / "samples.npz").is_file()
    stages = res["stages"]
    assert stages[0]["stage"] == "GaussianInit" and stages[-1]["stage"] == "Clamp"
    assert stages[-1]["joint_energy"]["mean"] < stages[0]["joint_energy"]["mean"] - 5  # the sampler lowers E(x,y)
    assert res["hit"] >= 0.8  # far above the 10% of chance
    assert "classified as their target class" in capsys.readouterr().out
