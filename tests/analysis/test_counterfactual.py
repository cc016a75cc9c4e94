"""Counterfactuals on a linear toy whose flip distance is known: reached inside a large enough ball,
"not flipped" in a too-small one; the moves are the project's PGD core's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ebmlens.analysis import counterfactuals
from ebmlens.attacks import L2Ball, default_step_size, pgd
from ebmlens.data import ImageData
from ebmlens.energy import EnergyModel


def _toy():
    """f0 = 0.1 sum(z) + 1, f1 = -0.1 sum(z), z = 4 (x - 0.5): at x ~ 0.5 class 0 wins by ~1, and the
    margin falls fastest along -1 (|grad| = 0.8 sqrt(48)): the flip needs an L2 move of about 0.18."""
    lin = nn.Linear(48, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.full((48,), 0.1), torch.full((48,), -0.1)]))
        lin.bias.copy_(torch.tensor([1.0, 0.0]))
    model = EnergyModel(nn.Sequential(nn.Flatten(), lin), mean=(0.5,), std=(0.25,), input_shape=(3, 4, 4),
                        num_classes=2, threat_model="L2", eps=0.5)
    rs = np.random.default_rng(0)
    images = rs.integers(121, 135, size=(6, 4, 4, 3), dtype=np.uint8)  # about 0.5 +- 0.03
    return model, ImageData(images, np.zeros(6, np.int64), ["a", "b"], "toy")


def test_flips_inside_a_large_enough_ball(tmp_path):
    model, data = _toy()
    cf = counterfactuals(model, data, target="next", eps=0.5, steps=20, n=6, batch_size=4)
    assert cf.flipped.all() and (cf.pred == 1).all() and (cf.targets == 1).all()
    assert (cf.l2 <= 0.5 + 1e-5).all() and (cf.l2 > 0.1).all()
    assert ((cf.flip_step > 0) & (cf.flip_step <= 20)).all()
    assert cf.energy.shape == (6, 21) and cf.joint_target.shape == (6, 21)
    x = data.tensor()
    np.testing.assert_allclose(cf.energy[:, 0], model.energy(x).detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(cf.joint_target[:, -1], model.joint_energy(cf.counterfactuals, 1).detach().numpy(),
                               rtol=1e-5)
    # the move lowers the target's joint energy E(x, b)
    assert (cf.joint_target[:, -1] < cf.joint_target[:, 0]).all()
    # the moves are the PGD core's: the same call without the recording gives the same images
    ref = pgd(model, x, torch.ones(6, dtype=torch.long), L2Ball(0.5), 20, default_step_size(0.5, 20), targeted=True)
    assert torch.allclose(cf.counterfactuals, ref, atol=1e-6)
    d = json.loads(cf.to_json(tmp_path / "cf.json"))
    assert d["images"][0]["status"] == "flipped" and d["images"][0]["label_name"] == "0"
    assert len(d["images"][0]["energy_path"]) == 21
    assert cf.grid(tmp_path / "grid.png").stat().st_size > 100


def test_not_flipped_in_a_too_small_ball(tmp_path):
    model, data = _toy()
    cf = counterfactuals(model, data, target=1, eps=0.02, steps=10, n=6)
    assert not cf.flipped.any() and (cf.flip_step == -1).all()
    assert (cf.l2 <= 0.02 + 1e-6).all()
    rows = json.loads(cf.to_json())["images"]
    assert {r["status"] for r in rows} == {"not flipped"} and rows[0]["flip_step"] is None
    assert "0 of 6 flipped" in cf.table()


def test_targets_and_errors():
    model, data = _toy()
    assert (counterfactuals(model, data, target="least-likely", steps=1, n=2).targets == 1).all()
    assert (counterfactuals(model, data, target="random", steps=1, n=2).targets == 1).all()  # the only other class
    with pytest.raises(ValueError, match="unknown target 'sideways'"):
        counterfactuals(model, data, target="sideways")
    with pytest.raises(ValueError, match="every image is of the target class 0"):
        counterfactuals(model, data, target=0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        counterfactuals(model, data, eps=-1.0)
    cf = counterfactuals(model, data, eps=None, steps=1, n=1)  # the model's own geometry
    assert (cf.config["threat_model"], cf.config["eps"]) == ("L2", 0.5)


def test_geometry_defaults_to_l2_and_refuses_a_whole_cube_linf_ball():
    model, data = _toy()
    model.threat_model, model.eps = None, None
    assert counterfactuals(model, data, steps=1, n=1).config["threat_model"] == "L2"
    with pytest.raises(ValueError, match="Linf eps of 2 is above 1"):
        counterfactuals(model, data, threat_model="Linf", steps=1, n=1)
