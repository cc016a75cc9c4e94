"""EnergyModel contracts: energies against direct formulas, stability, gradients w.r.t. x only,
modes, and input validation at public entry points."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ebmlens.energy import EnergyModel, energy_grad, input_grad, validate_images, validate_labels


class FixedLogits(nn.Module):
    """Returns the logits it is told (scaled input mean per class), to test energies at any scale."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", logits)

    def forward(self, x):
        return self.out[: x.shape[0]] + 0 * x.flatten(1).sum(1, keepdim=True)


def test_energies_match_formulas(tiny_model):
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 9, 1, 1])
    f = tiny_model.classifier((x - tiny_model.mean) / tiny_model.std)
    assert torch.allclose(tiny_model.logits(x), f)
    assert torch.allclose(tiny_model.energy(x), -torch.logsumexp(f, 1), atol=1e-5)
    assert torch.allclose(tiny_model.joint_energy(x, y), -f[torch.arange(5), y], atol=1e-6)
    assert torch.allclose(tiny_model.log_prob_y(x), torch.log_softmax(f, 1), atol=1e-6)
    # E(x) - E(x, y) = -log p(y|x) >= 0 at T=1
    gap = tiny_model.joint_energy(x, y) - tiny_model.energy(x)
    assert torch.allclose(gap, -tiny_model.log_prob_y(x)[torch.arange(5), y], atol=1e-5)
    assert bool((gap >= -1e-6).all())


def test_temperature():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    m = EnergyModel(FixedLogits(logits), input_shape=(3, 2, 2), num_classes=3, temperature=2.0)
    x = torch.rand(1, 3, 2, 2)
    assert torch.allclose(m.energy(x), -2.0 * torch.logsumexp(logits / 2.0, 1))
    with pytest.raises(ValueError, match="temperature"):
        EnergyModel(FixedLogits(logits), input_shape=(3, 2, 2), num_classes=3, temperature=0.0)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_energies_finite_for_large_logits(scale):
    logits = torch.tensor([[scale, 0.0, -scale], [scale, scale, scale]])
    m = EnergyModel(FixedLogits(logits), input_shape=(3, 2, 2), num_classes=3)
    x = torch.rand(2, 3, 2, 2)
    e = m.energy(x)
    assert torch.isfinite(e).all()
    # logsumexp(s, 0, -s) = |s| + log(1 + e^-|s| + ...) ~ |s| at this scale
    assert abs(float(e[0]) + abs(scale)) < 1e-3
    assert abs(float(e[1]) - (-scale - torch.log(torch.tensor(3.0)))) < 1e-2
    assert torch.isfinite(m.log_prob_y(x)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_energies_under_autocast(tiny_model, dtype):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = tiny_model.energy(x)
    try:
        with torch.autocast("cpu", dtype=dtype):
            e = tiny_model.energy(x)
            lg = tiny_model.logits(x)
    except RuntimeError as err:  # float16 autocast on CPU needs a recent torch
        pytest.skip(f"CPU autocast {dtype} unsupported: {err}")
    assert e.dtype == torch.float32 and torch.isfinite(e).all()
    assert torch.allclose(e, ref, rtol=0.05, atol=0.1)
    # huge logits in low precision still give finite energies (computed in float32)
    big = (lg * 1e4).to(dtype)
    assert torch.isfinite(tiny_model.energy_from_logits(big)).all()


def _marginal(model):
    return lambda logits, _y: model.energy_from_logits(logits)


def test_input_grad_is_wrt_input_only(tiny_model):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    value, grad, logits = input_grad(tiny_model, x, _marginal(tiny_model))
    assert value.shape == (3,) and grad.shape == x.shape and logits.shape == (3, 10)
    assert torch.allclose(value, tiny_model.energy(x), atol=1e-5) and torch.allclose(logits, tiny_model.logits(x))
    assert all(p.grad is None for p in tiny_model.parameters())
    assert not (x.requires_grad or value.requires_grad or grad.requires_grad or logits.requires_grad)
    # finite difference along the gradient direction
    d = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    h = 1e-3
    fd = (tiny_model.energy(x + h * d) - tiny_model.energy(x - h * d)) / (2 * h)
    assert torch.allclose(fd, grad.flatten(1).norm(dim=1), rtol=0.05, atol=1e-3)


def test_input_grad_hands_y_to_value_and_matches_autograd(tiny_model):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([3, 1, 4, 1])
    e, g, _ = input_grad(tiny_model, x, tiny_model.joint_energy_from_logits, y)
    xg = x.clone().requires_grad_(True)
    ref = tiny_model.joint_energy(xg, y)
    (g_ref,) = torch.autograd.grad(ref.sum(), xg)
    assert torch.equal(e, ref.detach()) and torch.allclose(g, g_ref, atol=1e-7)


def test_per_sample_gradient_independent_of_batch(tiny_model):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _, g_all, _ = input_grad(tiny_model, x, _marginal(tiny_model))
    _, g_one, _ = input_grad(tiny_model, x[2:3], _marginal(tiny_model))
    assert torch.allclose(g_all[2:3], g_one, atol=1e-6)


def test_input_grad_refuses_bad_values(tiny_model):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"returned \(\) for 2 images.*shape \(N,\)"):
        input_grad(tiny_model, x, lambda lg, _: tiny_model.energy_from_logits(lg).sum())
    with pytest.raises(ValueError, match="does not depend on the logits"):
        input_grad(tiny_model, x, lambda lg, _: torch.zeros(2))
    with pytest.raises(TypeError, match="value as a callable"):
        input_grad(tiny_model, x, "marginal")
    with pytest.raises(TypeError, match="x as a torch.Tensor"):
        input_grad(tiny_model, x.numpy(), _marginal(tiny_model))


def test_joint_energy_without_labels_says_so(tiny_model):
    with pytest.raises(TypeError, match=r"needs y.*use energy\(x\)"):
        tiny_model.joint_energy(torch.rand(2, 3, 32, 32), None)


def test_energy_grad_is_a_deprecated_alias_of_input_grad(tiny_model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with pytest.warns(DeprecationWarning, match="input_grad"):
        value, grad = energy_grad(tiny_model.energy, x)
    ref_v, ref_g, _ = input_grad(tiny_model, x, _marginal(tiny_model))
    assert torch.equal(value, ref_v) and torch.equal(grad, ref_g)


def test_mode_restores_bn_buffers(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.rand(8, 3, 32, 32)
    with tiny_model.mode("train"):
        assert tiny_model.classifier.training
        tiny_model.logits(x)  # updates running stats inside
    assert not tiny_model.classifier.training
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="mode"):
        with tiny_model.mode("sampling"):  # type: ignore[arg-type]
            pass


def test_describe_and_device_follows_input(tiny_model):
    d = tiny_model.describe()
    assert d["num_classes"] == 10 and d["input_shape"] == [3, 32, 32] and d["source"] == "test"
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert tiny_model.double().logits(x).dtype == torch.float64  # the model follows x


def test_constructor_errors():
    net = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="nn.Module"):
        EnergyModel(lambda x: x, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_shape"):
        EnergyModel(net, input_shape=(32, 32), num_classes=2)
    with pytest.raises(ValueError, match="mean must have 1 or 3"):
        EnergyModel(net, mean=(0.1, 0.2), num_classes=2)
    with pytest.raises(ValueError, match="std must be > 0"):
        EnergyModel(net, std=(0.0,), num_classes=2)
    with pytest.raises(ValueError, match="class_names"):
        EnergyModel(net, num_classes=2, class_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        EnergyModel(net, num_classes=1)


# ---------------------------------------------------------------- bad input at entry points
def test_validate_images_errors(tiny_model):
    ok = torch.rand(2, 3, 32, 32)
    assert validate_images(ok, tiny_model) is ok
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\).*unsqueeze"):
        validate_images(torch.rand(3, 32, 32), tiny_model)
    with pytest.raises(ValueError, match="1 channels but the model expects 3"):
        validate_images(torch.rand(2, 1, 32, 32), tiny_model)
    with pytest.raises(TypeError, match=r"float tensor.*/ 255"):
        validate_images(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), tiny_model)
    with pytest.raises(TypeError, match="torch.Tensor"):
        validate_images([[0.0]], tiny_model)
    bad = ok.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        validate_images(bad, tiny_model)
    with pytest.raises(ValueError, match="normalized or \\[-1, 1\\] input"):
        validate_images((ok - 0.5) / 0.25 * 0.3, tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_images(ok * 1.2 - 0.1, tiny_model)  # mild excursions are fine


def test_validate_labels_errors():
    assert validate_labels([0, 1, 2], 10).dtype == torch.long
    with pytest.raises(ValueError, match="class index 10, outside"):
        validate_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="class index -1"):
        validate_labels(torch.tensor([-1, 0]), 10)
    with pytest.raises(TypeError, match="integer"):
        validate_labels(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(ValueError, match="1-D"):
        validate_labels(torch.zeros(2, 2, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        validate_labels(torch.tensor([0, 1, 2]), 10, n=2)
