"""Bad input never gives a silent wrong number: every case measured on main before the checks
(wrong label count, meta labels, 0-255 pixels, broadcast channels, other sizes, NaN, float labels)
now raises an error that names the value and the fix, at every checked entry point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebmlens.energy import EnergyModel, validate_images, validate_labels

from .conftest import make_tiny_model

G = torch.Generator().manual_seed(0)
X = torch.rand(4, 3, 32, 32, generator=G)


@pytest.fixture(scope="module")
def m() -> EnergyModel:
    return make_tiny_model()


def _entry_points(m):
    y = torch.tensor([0, 1, 2, 3])
    return {"logits": lambda x: m.logits(x), "energy": lambda x: m.energy(x),
            "joint_energy": lambda x: m.joint_energy(x, y[: x.shape[0]] if x.dim() == 4 else y),
            "log_prob_y": lambda x: m.log_prob_y(x)}


@pytest.mark.parametrize("entry", ["logits", "energy", "joint_energy", "log_prob_y"])
@pytest.mark.parametrize("bad, err, match", [
    ((X * 255).to(torch.uint8), TypeError, r"x.float\(\) / 255"),
    (X * 255, ValueError, "0-255 pixels: divide by 255"),
    ((X - 0.5) / 0.25, ValueError, "normalized or \\[-1, 1\\] input"),
    (X * 2 - 1 - 0.2, ValueError, "normalized or \\[-1, 1\\] input"),
    (torch.rand(4, 1, 32, 32), ValueError, "1 channels but the model expects 3"),
    (torch.rand(32, 32), ValueError, r"shape \(N, C, H, W\)"),
    (torch.rand(3, 32, 32), ValueError, "unsqueeze"),
    (torch.rand(4, 3, 64, 64), ValueError, "spatial size \\(64, 64\\).*allow_other_size=True"),
    (X.permute(0, 2, 3, 1).contiguous(), ValueError, r"NHWC.*permute\(0, 3, 1, 2\)"),
])
def test_entry_points_refuse_bad_images(m, entry, bad, err, match):
    with pytest.raises(err, match=match):
        _entry_points(m)[entry](bad)


@pytest.mark.parametrize("entry", ["logits", "energy", "joint_energy", "log_prob_y"])
def test_nan_and_inf_are_named_with_their_images(m, entry):
    x = X.clone()
    x[1, 0, 0, 0] = float("nan")
    x[3, 2, 5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"2 NaN or infinite value\(s\) in 2 image\(s\) \(indices 1, 3\)"):
        _entry_points(m)[entry](x)


def test_other_dtypes_and_numpy_are_converted(m):
    ref = m.energy(X)
    assert torch.allclose(m.energy(X.double()), ref, atol=1e-5)
    assert torch.allclose(m.energy(X.numpy()), ref)
    assert torch.allclose(m.energy(X.half()), ref, atol=0.05)
    assert torch.allclose(m.energy(X.bfloat16()), ref, atol=0.2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.energy([[0.5]])


def test_model_options_turn_checks_off():
    m2 = make_tiny_model()
    m2.check_range = False
    m2.energy(X * 3)  # out of range, allowed
    with pytest.raises(ValueError, match="NaN"):  # NaN is never allowed
        m2.energy(X * float("nan"))
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 10))
    any_size = EnergyModel(net, num_classes=10, input_shape=(3, 32, 32), allow_other_size=True)
    assert any_size.energy(torch.rand(2, 3, 64, 64, generator=G)).shape == (2,)
    assert any_size.describe()["allow_other_size"] is True and make_tiny_model().describe()["check_range"] is True
    with pytest.raises(ValueError, match="channels"):  # other channel counts stay refused
        any_size.energy(torch.rand(2, 1, 64, 64))


def test_unchecked_paths_stay_unchecked(m):
    """forward / *_from_logits are the fast, unchecked path the library's loops use."""
    x = X * 3 - 1  # leaves [0, 1] as a sampler may between steps
    lg = m(x)
    assert lg.shape == (4, 10)
    assert torch.equal(m.energy_from_logits(lg), -torch.logsumexp(lg, 1))
    with pytest.raises(ValueError, match="normalized"):
        m.energy(x)


# ------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("y, err, match", [
    (torch.tensor([0, 1]), ValueError, "2 labels for 4 images"),
    (torch.tensor([0, 1, 2, 3], device="meta"), ValueError, "meta device"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, r"integer class indices.*y.long\(\)"),
    (torch.tensor([True, False, True, False]), TypeError, "integer class indices"),
    (torch.zeros(2, 2, dtype=torch.long), ValueError, r"\(N,\) or \(N, 1\)"),
    (torch.tensor([0, 1, 2, 10]), ValueError, "class index 10, outside \\[0, 9\\]"),
    (torch.tensor([0, -1, 2, 3]), ValueError, "class index -1"),
    ("cat", TypeError, "class indices"),
    (True, TypeError, "bool"),
])
def test_joint_energy_refuses_bad_labels(m, y, err, match):
    with pytest.raises(err, match=match):
        m.joint_energy(X, y)


def test_label_forms_that_mean_the_same_give_the_same_energy(m):
    ref = m.joint_energy(X, torch.tensor([3, 3, 3, 3]))
    for y in (3, [3, 3, 3, 3], (3, 3, 3, 3), np.array([3, 3, 3, 3]), torch.full((4, 1), 3),
              torch.tensor([3, 3, 3, 3], dtype=torch.int16), torch.tensor([3, 3, 3, 3], dtype=torch.uint8),
              torch.tensor([3, 3, 3, 3], dtype=torch.int32)):
        assert torch.equal(m.joint_energy(X, y), ref), y


def test_validate_labels_direct():
    assert validate_labels(2, 10, n=3).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="needs the number of images"):
        validate_labels(2, 10)
    assert validate_labels(np.array([[1], [2]]), 10).tolist() == [1, 2]


def test_validate_images_without_a_model_checks_layout_and_values():
    assert validate_images(X).shape == X.shape
    with pytest.raises(ValueError, match="0-255"):
        validate_images(X * 255)
    assert validate_images(X * 255, check_range=False) is not None


# ------------------------------------------------------------------------ attacks called by users
def test_attacks_check_shape_dtype_and_labels(m):
    from ebmlens.attacks import L2Ball, get_attack, pgd

    geom = L2Ball(0.5)
    with pytest.raises(ValueError, match="2 labels for 4 images"):
        pgd(m, X, torch.tensor([0, 1]), geom, 2, 0.1)
    with pytest.raises(TypeError, match="integer class indices"):
        pgd(m, X, torch.zeros(4), geom, 2, 0.1)
    with pytest.raises(TypeError, match="/ 255"):
        pgd(m, (X * 255).to(torch.uint8), torch.zeros(4, dtype=torch.long), geom, 2, 0.1)
    atk = get_attack("pgd-targeted", threat_model="L2", eps=0.5, steps=2)
    with pytest.raises(ValueError, match="target has 3 labels for 4 images"):
        atk(m, X, torch.zeros(4, dtype=torch.long), target=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="channels"):
        atk(m, torch.rand(4, 1, 32, 32), torch.zeros(4, dtype=torch.long), target=torch.ones(4, dtype=torch.long))
    # a python int means that class for every image
    out = atk(m, X, 0, target=1)
    assert out.shape == X.shape


def test_sample_checks_its_labels(tmp_path):
    import ebmlens
    from ebmlens.sampling import presets

    m = make_tiny_model()
    pipe = presets.get("dat2025", data=torch.rand(4, 3, 32, 32, generator=G), steps=1)
    with pytest.raises(ValueError, match="labels has 2 labels for 3 images"):
        ebmlens.sample(m, pipe, n=3, out_dir=tmp_path / "a", labels=[0, 1], png=False)
    with pytest.raises(TypeError, match="integer class indices"):
        ebmlens.sample(m, pipe, n=2, out_dir=tmp_path / "b", labels=np.array([0.5, 1.0]), png=False)
    run = ebmlens.sample(m, pipe, n=2, out_dir=tmp_path / "c", labels=7, png=False, grid=False)
    assert np.load(run.images)["labels"].tolist() == [7, 7]
