"""The one measurement loop (map_batches, check_labels), the one geometry resolver (Geometry.for_model),
models that are what they say (the output-width check), small-sample warnings: issue 19 item 4, issue 22 item 3."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ebmlens._measure import MIN_GROUP, check_labels, map_batches
from ebmlens.analysis import calibration_report, counterfactuals, energy_report, ood_report
from ebmlens.attacks import Geometry, L2Ball, LinfBall
from ebmlens.cli import main
from ebmlens.data import ImageData
from ebmlens.energy import EnergyModel

from .conftest import make_image_data, make_linear_model


def _one_line(excinfo) -> bool:
    return "\n" not in str(excinfo.value)


def _refuses_labels(msg: str, source: str, value: int) -> bool:
    """One line naming the file, the labels and the bad value (map_batches' check_labels, or the data
    layer's reader / require_labels when they run first)."""
    return "\n" not in msg and source in msg and str(value) in msg and "label" in msg


# ------------------------------------------------------------------ map_batches
def test_map_batches_keeps_index_order_and_counts_progress(linear_model, toy_data):
    idx = np.array([5, 3, 30, 0, 7, 11, 2])
    seen, ticks = [], []

    def fn(x, y, i):
        seen.append(x.shape[0])
        return {"e": linear_model.energy_from_logits(linear_model(x)), "y": y, "i": i}

    out = map_batches(linear_model, toy_data, fn, indices=idx, batch_size=3, progress=lambda d, t: ticks.append((d, t)))
    assert seen == [3, 3, 1] and ticks[-1] == (7, 7)
    assert out["i"].tolist() == idx.tolist() and out["y"].tolist() == toy_data.labels[idx].tolist()
    ref = linear_model.energy_from_logits(linear_model(toy_data.tensor(idx)))
    assert isinstance(out["e"], torch.Tensor) and torch.allclose(out["e"], ref, atol=1e-6)


def test_map_batches_checks_labels_and_the_first_batch_once(linear_model, toy_data):
    calls = []
    bad = ImageData(toy_data.images, toy_data.labels + 10, toy_data.class_names * 2, "npz:shifted.npz")
    with pytest.raises(ValueError, match=r"labels of npz:shifted.npz .* \[0, 9\].*found 10, 11, 12, 13, 14, \.\.\.") \
            as e:
        map_batches(linear_model, bad, lambda x, y, i: calls.append(1) or {}, batch_size=4)
    assert _one_line(e) and calls == []  # refused before any batch
    map_batches(linear_model, bad, lambda x, y, i: {}, batch_size=4, labels=False)  # consumers without labels
    wrong = make_image_data(shape=(4, 4, 3))
    with pytest.raises(ValueError, match="spatial size"):
        map_batches(linear_model, wrong, lambda x, y, i: {}, batch_size=4, labels=False)


def test_check_labels_names_source_values_and_fix():
    assert check_labels(torch.tensor([0, 9]), 10).tolist() == [0, 9]
    with pytest.raises(ValueError, match=r"labels of a.npz .* \[0, 9\] .* 1 of 3 are not \(found -1\); fix") as e:
        check_labels(np.array([3, -1, 2]), make_linear_model(), "a.npz")
    assert _one_line(e)
    with pytest.raises(TypeError, match="integer class indices"):
        check_labels(np.array([0.5, 1.0]), 10)


# ------------------------------------------------------------------ issue 22's rows
def test_calibration_on_labels_10_to_19_is_refused(tmp_path, linear_model, toy_data):
    np.savez(tmp_path / "shifted.npz", images=toy_data.images, labels=toy_data.labels + 10)
    with pytest.raises(ValueError) as e:
        calibration_report(linear_model, f"npz:{tmp_path / 'shifted.npz'}", n=8)
    assert _refuses_labels(str(e.value), "shifted.npz", 10), e.value


def test_counterfactual_on_label_minus_one_is_refused(linear_model, toy_data):
    labels = toy_data.labels.copy()
    labels[0] = -1
    data = ImageData(toy_data.images, labels, toy_data.class_names, "npz:unknown.npz")
    with pytest.raises(ValueError) as e:
        counterfactuals(linear_model, data, steps=1, n=4, batch_size=4)
    assert _refuses_labels(str(e.value), "npz:unknown.npz", -1), e.value


def test_energy_model_checks_its_width_on_the_first_forward_only():
    calls = []
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    net.register_forward_hook(lambda *a: calls.append(1))
    m = EnergyModel(net, input_shape=(3, 2, 2), num_classes=5)
    assert calls == []  # no forward at wrap time
    with pytest.raises(ValueError, match="returns 10 logits per image but the EnergyModel says num_classes=5") as e:
        m.energy(torch.rand(2, 3, 2, 2))
    assert _one_line(e)
    ok = EnergyModel(net, input_shape=(3, 2, 2), num_classes=10)
    ok(torch.rand(2, 3, 2, 2))
    assert ok._width_ok


def test_three_output_net_with_label_7_is_a_value_error_not_index_error():
    m = EnergyModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), input_shape=(3, 2, 2), num_classes=10)
    with pytest.raises(ValueError, match="returns 3 logits per image"):
        m.joint_energy(torch.rand(2, 3, 2, 2), torch.tensor([7, 7]))


def test_energy_report_eps_without_threat_model_uses_the_models_own_l2(toy_data):
    m = make_linear_model()
    m.threat_model, m.eps = "L2", 0.5
    with pytest.warns(DeprecationWarning, match="geometry="):
        rep = energy_report(m, toy_data, ["pgd"], eps=0.25, n=4, steps=1)
    assert (rep.config["threat_model"], rep.config["eps"]) == ("L2", 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        rep = energy_report(m, toy_data, ["pgd"], n=4, steps=1)  # no geometry: the model's own, as the CLI
        assert (rep.config["threat_model"], rep.config["eps"]) == ("L2", 0.5)
        rep = energy_report(m, toy_data, ["pgd"], geometry=LinfBall(0.01), n=4, steps=1)
        assert rep.config["threat_model"] == "Linf"
    with pytest.raises(ValueError, match="not both"):
        energy_report(m, toy_data, ["pgd"], geometry=L2Ball(0.5), eps=0.5)


def test_geometry_for_model_is_the_one_resolver():
    from ebmlens._cli._common import attack_geometry

    m = make_linear_model()  # input (3, 8, 8): diameter sqrt(192)
    m.threat_model, m.eps = "L2", 0.3
    assert Geometry.for_model(m) == L2Ball(0.3) == attack_geometry(m, None, None, None)
    assert Geometry.for_model(m, "Linf") == LinfBall(8 / 255) == attack_geometry(m, "Linf", None, None)
    assert Geometry.for_model(None) == LinfBall(8 / 255) and L2Ball.for_model(None, "L2") == L2Ball(0.5)
    with pytest.raises(ValueError, match="Linf eps of 255 is above 1.*8/255"):
        Geometry.for_model(m, "Linf", 255)
    with pytest.raises(ValueError, match=r"L2 eps of 14 is above the diameter .*13.86"):
        Geometry.for_model(m, "L2", 14.0)
    assert Geometry.for_model(m, "L2", math.sqrt(192)).eps == pytest.approx(math.sqrt(192))
    with pytest.raises(ValueError, match="eps must be > 0"):
        Geometry.for_model(m, None, float("nan"))


def test_cli_eps_255_with_linf_is_refused_in_one_line():
    r = CliRunner().invoke(main, ["energy", "--data", "npz:never-read.npz", "--out", "never", "--threat-model", "Linf",
                                  "--eps", "255", "--device", "cpu"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Linf eps of 255 is above 1" in lines[0], r.output


def test_ood_with_one_image_warns_in_the_report_and_the_log(linear_model, toy_data, caplog):
    with caplog.at_level(logging.WARNING, logger="ebmlens"):
        rep = ood_report(linear_model, toy_data, ["synthetic:uniform"], ["energy"], n=1, n_boot=20)
    assert any("in: only 1 samples" in w for w in rep.warnings)
    assert "only 1 samples" in caplog.text and "warning: in: only 1" in rep.table()
    assert '"warnings"' in rep.to_json(per_sample=False)
    rep = ood_report(linear_model, toy_data, ["synthetic:uniform"], ["energy"], n=MIN_GROUP, n_boot=20)
    assert rep.warnings == ()


@pytest.mark.parametrize("command, labels", [("energy", -1), ("accuracy", 10)])
def test_cli_bad_npz_labels_end_in_one_line_exit_2(tmp_path, toy_data, command, labels):
    rs = np.random.default_rng(0)
    images = rs.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array([0, 1, labels, 2]))
    args = [command, "--model", "ebmlens:cifar10-l2-small", "--data", f"npz:{tmp_path / 'bad.npz'}", "--steps", "1",
            "--device", "cpu"] + (["-n", "4", "--out", str(tmp_path / "out")] if command == "energy" else [])
    r = CliRunner().invoke(main, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert _refuses_labels(lines[0], "bad.npz", labels)
