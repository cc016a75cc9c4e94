"""`ebmlens accuracy`: the command behind the model card."""

from __future__ import annotations

import json

from click.testing import CliRunner

import ebmlens
from ebmlens.attacks import get_attack
from ebmlens.cli import main
from ebmlens.metrics import robust_accuracy
from ebmlens.train.trainer import evaluate_accuracy


def test_accuracy_matches_the_library_and_writes_json(tmp_path, cifar_spec, cifar_test):
    out = tmp_path / "acc.json"
    r = CliRunner().invoke(main, ["accuracy", "--data", cifar_spec, "-n", "40", "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "clean_acc=" in r.output and "robust_acc=" in r.output
    res = json.loads(out.read_text())
    direct = evaluate_accuracy(ebmlens.load_model("ebmlens:cifar10-l2-small"), cifar_test,
                               indices=cifar_test.strided(40), eps=0.5, steps=2)
    assert res["n"] == 40 and res["clean_acc"] == direct["clean_acc"] and res["robust_acc"] == direct["robust_acc"]
    metric = robust_accuracy("ebmlens:cifar10-l2-small", cifar_test,
                             get_attack("pgd", threat_model="L2", eps=0.5, steps=2),
                             indices=cifar_test.strided(40)).to_dict()
    assert {k: res[k] for k in metric} == metric == direct
    assert res["robust_acc"] <= res["clean_acc"]
    assert res["model"]["name"] == "cifar10-l2-small"


def test_apgd_runs_and_is_no_weaker_than_no_attack(tmp_path, cifar_spec):
    out = tmp_path / "apgd.json"
    r = CliRunner().invoke(main, ["accuracy", "--data", cifar_spec, "-n", "20", "--attack", "apgd-ce", "--steps", "3",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["attack"].startswith("apgd-ce") and res["robust_acc"] <= res["clean_acc"]


def test_bad_input_is_one_line_exit_2(cifar_spec):
    for args, msg in ((["--attack", "nope"], "unknown attack"), (["--eps", "0"], "eps"),
                      (["--model", "ebmlens:nope"], "unknown bundled model")):
        r = CliRunner().invoke(main, ["accuracy", "--data", cifar_spec, "-n", "10", *args])
        assert r.exit_code == 2, r.output
        assert msg in r.output and r.output.count("\n") == 1
