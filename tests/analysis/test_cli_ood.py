"""``ebmlens ood``, ``calibration`` and ``counterfactual``: files written; one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ebmlens.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_line_error(r, text):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], r.output


def test_ood_writes_report(cifar_spec, tmp_path):
    out = tmp_path / "ood"
    r = _run("ood", "--data", cifar_spec, "--ood", "noise=synthetic:uniform",
             "--ood", f"corrupt:contrast@5:{cifar_spec}",
             "--score", "energy", "--score", "msp", "-n", "12", "--n-boot", "20", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert [(x["set"], x["score"]) for x in rep["results"]][:2] == [("noise", "energy"), ("noise", "msp")]
    assert rep["sets"]["noise"]["n"] == 12 and rep["config"]["n_boot"] == 20
    assert (out / "table.md").exists()


def test_calibration_and_counterfactual_write(cifar_spec, tmp_path):
    r = _run("calibration", "--data", cifar_spec, "--bins", "5", "--attack", "pgd", "--steps", "1", "-n", "8",
             "--device", "cpu", "--out", str(tmp_path / "cal"))
    assert r.exit_code == 0, r.output
    assert ([k["kind"] for k in json.loads((tmp_path / "cal" / "report.json").read_text())["kinds"]]
            == ["natural", "pgd"])
    r = _run("counterfactual", "--data", cifar_spec, "-n", "2", "--steps", "2", "--target", "3", "--eps", "1",
             "--device", "cpu", "--out", str(tmp_path / "cf"))
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "cf" / "counterfactuals.json").read_text())
    assert [im["target"] for im in d["images"]] == [3, 3] and (tmp_path / "cf" / "grid.png").exists()


@pytest.mark.parametrize("args,text", [
    (["ood", "--ood", "synthetic:uniform", "--out", "X"], "--data is required"),
    (["ood", "--data", "D", "--out", "X"], "at least one --ood"),
    (["ood", "--data", "D", "--ood", "synthetic:uniform", "--score", "bogus", "--out", "X"], "unknown --score 'bogus'"),
    (["ood", "--data", "D", "--ood", "a=synthetic:uniform", "--ood", "a=synthetic:gaussian", "--out", "X"],
     "given twice"),
    (["ood", "--data", "D", "--ood", "synthetic:uniform", "--n-boot", "0", "--out", "X"], "--n-boot must be >= 1"),
    (["ood", "--data", "D", "--ood", "synthetic:uniform", "--device", "tpu", "--out", "X"], "unknown device"),
    (["calibration", "--data", "D", "--bins", "0", "--out", "X"], "--bins must be >= 1"),
    (["calibration", "--data", "D", "--attack", "nope", "--out", "X"], "unknown attack 'nope'"),
    (["calibration", "--data", "D", "--attack", "pgd", "--eps", "x", "--out", "X"], "cannot read number"),
    (["calibration", "--out", "X"], "--data is required"),
    (["counterfactual", "--data", "D", "--target", "sideways", "--out", "X"], "unknown --target 'sideways'"),
    (["counterfactual", "--data", "D", "--eps", "-1", "--out", "X"], "--eps must be > 0"),
    (["counterfactual", "--data", "D", "--attack-threat-model", "L3", "--out", "X"], "unknown threat model"),
    (["counterfactual", "--data", "D"], "--out is required"),
])
def test_bad_input_is_one_line(args, text, tmp_path):
    args = [str(tmp_path / "o") if a == "X" else a for a in args]
    _one_line_error(_run(*args), text)


def test_bad_data_after_the_model_loads_is_one_line(cifar_spec, tmp_path):
    _one_line_error(_run("ood", "--data", cifar_spec, "--ood", "synthetic:pink", "-n", "4", "--device", "cpu",
                         "--out", str(tmp_path / "o")), "unknown synthetic kind 'pink'")
    _one_line_error(_run("counterfactual", "--data", cifar_spec, "--target", "12", "--device", "cpu",
                         "--out", str(tmp_path / "c")), "target class 12 is not in [0, 9]")
    _one_line_error(_run("calibration", "--data", str(tmp_path / "missing"), "--device", "cpu",
                         "--out", str(tmp_path / "d")), "missing")
