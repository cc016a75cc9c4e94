"""TRADES in energies: the identities hold numerically and match a direct computation."""

import pytest
import torch
import torch.nn.functional as F

from ebmlens.analysis import trades_energy_terms, trades_terms_from_logits
from tests.conftest import make_tiny_model


def _direct_kl(lg, lg_adv):
    p = F.softmax(lg.double(), 1)
    return (p * (F.log_softmax(lg.double(), 1) - F.log_softmax(lg_adv.double(), 1))).sum(1)


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
def test_identities_on_random_logits(scale):
    g = torch.Generator().manual_seed(int(scale))
    lg, lg_adv = scale * torch.randn(64, 10, generator=g), scale * torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    t = trades_terms_from_logits(lg, lg_adv, y)
    assert torch.allclose(t.ce.double(), F.cross_entropy(lg.double(), y, reduction="none"), atol=1e-5 * scale)
    assert torch.allclose(t.kl.double(), _direct_kl(lg, lg_adv), atol=1e-5 * scale)
    # the decomposition: KL = sum_k p(k|x) [E(x*,k) - E(x,k)] + E(x) - E(x*)
    p = F.softmax(lg.double(), 1)
    kl_joint = (p * ((-lg_adv.double()) - (-lg.double()))).sum(1)
    gap = -torch.logsumexp(lg.double(), 1) + torch.logsumexp(lg_adv.double(), 1)
    assert torch.allclose(t.kl_joint.double(), kl_joint, atol=1e-5 * scale)
    assert torch.allclose(t.marginal_gap.double(), gap, atol=1e-5 * scale)
    assert torch.allclose(t.energy.double(), -torch.logsumexp(lg.double(), 1), atol=1e-5 * scale)
    assert torch.allclose(t.joint_energy, -lg.gather(1, y.view(-1, 1)).squeeze(1))
    assert bool((t.kl > -1e-5 * scale).all())
    assert torch.allclose(t.loss(6.0).double(), t.ce.double().mean() + 6.0 * _direct_kl(lg, lg_adv).mean(),
                          atol=1e-5 * scale)


def test_same_input_zero_kl_and_zero_gap():
    lg = torch.randn(8, 5)
    t = trades_terms_from_logits(lg, lg.clone())
    assert torch.allclose(t.kl, torch.zeros(8), atol=1e-6)
    assert torch.allclose(t.marginal_gap, torch.zeros(8))
    assert t.ce is None and t.joint_energy is None
    with pytest.raises(ValueError, match="needs labels"):
        t.loss()


def test_model_form_matches_logits_form_and_differentiates():
    model = make_tiny_model(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    x_adv = (x + 0.05 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 3])
    t = trades_energy_terms(model, x, x_adv, y)
    with torch.no_grad():
        lg, lg_adv = model.logits(x), model.logits(x_adv)
    assert torch.allclose(t.kl.detach().double(), _direct_kl(lg, lg_adv), atol=1e-5)
    assert torch.allclose(t.ce.detach(), F.cross_entropy(lg, y, reduction="none"), atol=1e-5)
    t.loss(6.0).backward()  # TRADES back-propagates through both p(.|x) and p(.|x*)
    assert all(p.grad is not None for p in model.parameters())


def test_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        trades_terms_from_logits(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="differ in shape"):
        trades_terms_from_logits(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="class index 7"):
        trades_terms_from_logits(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        trades_terms_from_logits([[1.0, 2.0]], torch.randn(1, 2))
    model = make_tiny_model()
    with pytest.raises(ValueError, match="same shape"):
        trades_energy_terms(model, torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))
