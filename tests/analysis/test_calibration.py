"""Calibration: ECE of constructed toys with known answers, equal-mass bins, the report's contracts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ebmlens.analysis import calibration_report, expected_calibration_error
from ebmlens.analysis.calibration import reliability_bins

from .conftest import make_image_data, make_linear_model


def _toy(accuracy_of):
    conf, ok = [], []
    for b in range(15):
        c = (b + 0.5) / 15  # the centre of equal-width bin b
        k = accuracy_of(c)
        conf.append(np.full(1000, c))
        ok.append(np.r_[np.ones(k), np.zeros(1000 - k)])
    return np.concatenate(conf), np.concatenate(ok)


def test_calibrated_toy_has_ece_near_zero():
    conf, ok = _toy(lambda c: int(round(1000 * c)))
    assert expected_calibration_error(conf, ok, 15) < 1e-3
    r = reliability_bins(conf, ok, 15)
    assert (r["count"] == 1000).all()


def test_overconfident_toy_has_ece_point_three():
    conf, ok = np.full(1000, 0.9), np.r_[np.ones(600), np.zeros(400)]
    assert abs(expected_calibration_error(conf, ok, 15) - 0.3) < 1e-6
    assert abs(expected_calibration_error(conf, ok, 15, equal_mass=True) - 0.3) < 1e-6


def test_bins_are_right_closed_and_equal_mass_splits_evenly():
    r = reliability_bins(np.array([0.0, 0.1, 0.2, 1.0]), np.ones(4), 5)
    assert r["count"].tolist() == [3, 0, 0, 0, 1]  # (0, 0.2] holds 0.1 and its right edge 0.2; 0 joins it
    m = reliability_bins(np.linspace(0, 1, 10), np.ones(10), 5, equal_mass=True)
    assert m["count"].tolist() == [2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(np.array([1.5]), np.array([1.0]))


def test_report_natural_and_adversarial(tmp_path):
    m, data = make_linear_model(), make_image_data(n=20)
    rep = calibration_report(m, data, bins=10, attack="pgd", threat_model="L2", eps=1.0, steps=3, n=None,
                             batch_size=6)
    assert [k.kind for k in rep.kinds] == ["natural", "pgd"]
    assert rep["natural"].n == rep["pgd"].n == 20
    assert rep["pgd"].accuracy <= rep["natural"].accuracy
    same = calibration_report(m, data, bins=10, attack="pgd", threat_model="L2", eps=1.0, steps=3, n=None,
                              batch_size=20)
    assert same["pgd"].ece == pytest.approx(rep["pgd"].ece, abs=1e-6)
    d = json.loads(rep.to_json(tmp_path / "cal.json"))
    assert d["config"]["attack"]["name"] == "pgd" and len(d["kinds"][0]["bins"]["count"]) == 10
    assert "| natural | 20 |" in rep.table()
    pytest.importorskip("matplotlib")
    assert rep.plot(tmp_path / "rel.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="bins"):
        calibration_report(m, data, bins=0)
