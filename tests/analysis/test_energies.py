"""energy_report: energies equal direct computation, y_adv semantics, determinism, outputs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ebmlens.analysis import EnergyReport, bootstrap_mean_ci, energy_report
from ebmlens.energy import EnergyModel


def _report(model, data, **kw):
    kw.setdefault("attacks", ["pgd", "pgd-targeted"])
    kw.setdefault("threat_model", "L2")
    kw.setdefault("eps", 0.5)
    kw.setdefault("steps", 3)
    return energy_report(model, data, **kw)


def test_report_energies_equal_direct_computation(linear_model, toy_data):
    rep = _report(linear_model, toy_data, attacks=["pgd", "pgd-targeted", "apgd-ce"], n=20, batch_size=7,
                  keep_adversarial=True)
    idx = rep.indices
    x = toy_data.tensor(idx)
    y = torch.as_tensor(toy_data.labels[idx])
    with torch.no_grad():
        lg = linear_model.logits(x)
        np.testing.assert_allclose(rep.values["natural"]["energy"], (-torch.logsumexp(lg, 1)).numpy(),
                                   rtol=1e-5, atol=1e-5)
        for kind in ("pgd", "pgd-targeted", "apgd-ce"):
            xa = rep.adversarial[kind]
            assert xa.shape == x.shape
            la = linear_model.logits(xa)
            v = rep.values[kind]
            np.testing.assert_allclose(v["energy"], (-torch.logsumexp(la, 1)).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v["joint_true"], (-la.gather(1, y[:, None]).squeeze(1)).numpy(),
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(v["pred"], la.argmax(1).numpy())
            # y_adv: the target for targeted attacks, the adversarial prediction otherwise
            y_adv = torch.as_tensor(v["target"]) if kind == "pgd-targeted" else la.argmax(1)
            np.testing.assert_allclose(v["joint_adv"], (-la.gather(1, y_adv[:, None]).squeeze(1)).numpy(),
                                       rtol=1e-5, atol=1e-5)
            assert rep[kind].accuracy == pytest.approx(float((la.argmax(1) == y).float().mean()))
            gap = rep.values["natural"]["energy"] - v["energy"]
            assert rep[kind].gap_energy.estimate == pytest.approx(float(gap.mean()), abs=1e-6)
    assert bool((torch.as_tensor(rep.values["pgd-targeted"]["target"]) != y).all())


def test_results_do_not_depend_on_batch_size(linear_model, toy_data):
    opts = {"pgd": {"random_start": True}}
    a = _report(linear_model, toy_data, n=12, batch_size=12, attack_options=opts, seed=3)
    b = _report(linear_model, toy_data, n=12, batch_size=5, attack_options=opts, seed=3)
    c = _report(linear_model, toy_data, n=12, batch_size=5, attack_options=opts, seed=4)
    for kind in a.kind_names:
        np.testing.assert_allclose(a.values[kind]["energy"], b.values[kind]["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.values["pgd-targeted"]["target"], b.values["pgd-targeted"]["target"])
    assert not np.array_equal(a.values["pgd-targeted"]["target"], c.values["pgd-targeted"]["target"])


def test_least_likely_and_given_targets(linear_model, toy_data):
    rep = _report(linear_model, toy_data, attacks=["pgd-targeted"], n=10, target="least-likely")
    x = toy_data.tensor(rep.indices)
    with torch.no_grad():
        lg = linear_model.logits(x)
    lg[torch.arange(10), torch.as_tensor(rep.labels)] = float("inf")
    np.testing.assert_array_equal(rep.values["pgd-targeted"]["target"], lg.argmin(1).numpy())
    given = np.full(10, 7)
    rep = _report(linear_model, toy_data, attacks=["pgd-targeted"], n=10, target="given", targets=given)
    np.testing.assert_array_equal(rep.values["pgd-targeted"]["target"], given)


def test_table_csv_json_plot(linear_model, toy_data, tmp_path):
    rep = _report(linear_model, toy_data, n=16)
    table = rep.table()
    assert table.count("\n|") >= 4 and "pgd-targeted (targeted)" in table and "ΔE(x)" in table
    csv_text = rep.to_csv(tmp_path / "t.csv")
    assert csv_text.splitlines()[0].startswith("kind,targeted,n,accuracy")
    assert len(csv_text.splitlines()) == 4
    rep.to_json(tmp_path / "r.json")
    back = EnergyReport.from_json(tmp_path / "r.json")
    assert back.kind_names == rep.kind_names
    assert back["pgd"].energy.mean == pytest.approx(rep["pgd"].energy.mean)
    np.testing.assert_allclose(back.values["pgd"]["energy"], rep.values["pgd"]["energy"], atol=1e-4)
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["config"]["eps"] == 0.5 and d["data"]["n"] == 16
    import matplotlib  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    p = back.plot(tmp_path / "e.png")
    assert p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_plot_without_matplotlib_says_which_extra(linear_model, toy_data, tmp_path, monkeypatch):
    import builtins

    rep = _report(linear_model, toy_data, n=8)
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"ebmlens\[plots\]"):
        rep.plot(tmp_path / "e.png")


def test_bootstrap_interval_covers_and_shrinks():
    rs = np.random.default_rng(0)
    small = bootstrap_mean_ci(rs.normal(1.0, 1.0, 100))
    big = bootstrap_mean_ci(rs.normal(1.0, 1.0, 10000))
    assert small.low < 1.0 < small.high and big.low < 1.0 < big.high
    assert (big.high - big.low) < 0.2 * (small.high - small.low)
    # about 1.96 * sigma / sqrt(n) on each side
    assert (small.high - small.low) == pytest.approx(2 * 1.96 / 10, rel=0.25)


# ------------------------------------------------------------------------------------------ bad input
def _one_line(e):
    return "\n" not in str(e.value)


def test_bad_inputs_fail_in_one_line(linear_model, toy_data):
    with pytest.raises(ValueError) as e:
        energy_report(linear_model, toy_data, ["nope"], eps=0.5)
    assert "unknown attack 'nope'" in str(e.value) and "pgd-targeted" in str(e.value) and _one_line(e)
    for eps in (0, -1.0):
        with pytest.raises(ValueError, match="eps must be > 0") as e:
            energy_report(linear_model, toy_data, ["pgd"], eps=eps)
        assert _one_line(e)
    with pytest.raises(ValueError, match=r"n=33 is larger than the dataset \(32 images") as e:
        energy_report(linear_model, toy_data, ["pgd"], eps=0.5, n=33)
    assert _one_line(e)
    with pytest.raises(ValueError, match="needs targets"):
        energy_report(linear_model, toy_data, ["pgd-targeted"], eps=0.5, n=4, target="given")
    with pytest.raises(TypeError, match="EnergyModel"):
        energy_report(nn.Linear(3, 2), toy_data, ["pgd"], eps=0.5)
    with pytest.raises(ValueError, match="listed twice"):
        energy_report(linear_model, toy_data, ["pgd", "untargeted"], eps=0.5)


class _BadShape(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = nn.Linear(192, 10)
        self.out = out

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return z[:, :, None] if self.out == "3d" else z[:, :7]


@pytest.mark.parametrize("out, needle", [("3d", r"expected \(N, num_classes\)"),
                                         ("wrong-k", "returns 7 logits per image "
                                                     "but the EnergyModel says num_classes=10")])
def test_model_output_must_be_n_by_num_classes(out, needle, toy_data):
    m = EnergyModel(_BadShape(out), input_shape=(3, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=needle) as e:
        energy_report(m, toy_data, ["pgd"], eps=0.5, n=4)
    assert _one_line(e)
