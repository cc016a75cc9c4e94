"""Objectives equal direct computations; gradients reach parameters only where they should."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ebmlens.attacks import L2Ball, pgd
from ebmlens.energy import EnergyModel
from ebmlens.train import objectives as O
from tests.conftest import make_tiny_model

ATTACK = O.AttackConfig("L2", eps=0.5, steps=3, step_size=0.2)


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _smooth_model(seed=0):
    """A smooth float64 net (no ReLU kinks, logits that vary with the input): KL-PGD is well
    conditioned on it, so two implementations agree to 1e-6 after several steps."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Tanh(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
    return EnergyModel(net.double(), mean=(0.5,), std=(0.25,), num_classes=10).double()


def _gen(seed=7):
    return torch.Generator().manual_seed(seed)


def _kl_pgd_direct(model, x, attack, seed):
    """TRADES' KL-PGD written out with plain torch (L2 steps), model in eval mode."""
    with torch.no_grad():
        p = F.softmax(model.logits(x), 1)
    xa = (x + 0.001 * torch.randn(x.shape, generator=_gen(seed)).to(x.dtype)).clamp(0, 1)
    for _ in range(attack.steps):
        xg = xa.clone().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model.logits(xg), 1), p, reduction="sum")
        (g,) = torch.autograd.grad(kl, xg)
        xa = xa + attack.alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = xa - x
        xa = x + d * torch.clamp(attack.eps / d.flatten(1).norm(dim=1), max=1).view(-1, 1, 1, 1)
        xa = xa.clamp(0, 1)
    return xa.detach()


def test_pgd_at_equals_direct():
    model, (x, y) = make_tiny_model(), _batch()
    loss = O.pgd_at(model, x, y, ATTACK, generator=_gen())
    xa = pgd(model, x, y, L2Ball(0.5), 3, 0.2, loss="ce", random_start=True, generator=_gen())
    assert loss.item() == pytest.approx(F.cross_entropy(model.logits(xa), y).item(), rel=1e-6)
    assert not torch.equal(xa, x)


def test_standard_equals_cross_entropy():
    model, (x, y) = make_tiny_model(), _batch()
    assert O.standard(model, x, y, None).item() == pytest.approx(F.cross_entropy(model.logits(x), y).item(), rel=1e-6)


def test_trades_examples_and_loss_equal_direct():
    # float64: KL-PGD's first step (KL ~ 1e-7 at x + 0.001 noise) is float32 noise in any implementation
    model, (x, y) = _smooth_model(2), _batch()
    x = x.double()
    xa = O.trades_examples(model, x, ATTACK, generator=_gen())
    ref = _kl_pgd_direct(model, x, ATTACK, 7)
    assert torch.allclose(xa, ref, atol=1e-6)
    assert (xa - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    loss = O.trades(model, x, y, ATTACK, beta=6.0, generator=_gen())
    lg, lga = model.logits(x), model.logits(xa)
    direct = F.cross_entropy(lg, y) + 6.0 * F.kl_div(F.log_softmax(lga, 1), F.softmax(lg, 1), reduction="batchmean")
    assert loss.item() == pytest.approx(direct.item(), rel=1e-9)


@pytest.mark.parametrize("kind", ["adv", "nat"])
def test_weat_equals_direct_with_train_mode_weights(kind):
    model, (x, y) = _smooth_model(3), _batch()
    x = x.double()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    fn = O.weat_adv if kind == "adv" else O.weat_nat
    loss = fn(model, x, y, ATTACK, beta=6.0, generator=_gen())
    # mode and BatchNorm buffers restored after the train-mode forward that gives the weights
    assert not model.classifier.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    xa = _kl_pgd_direct(model, x, ATTACK, 7)
    twin = copy.deepcopy(model).train()
    with torch.no_grad():
        e_train = -torch.logsumexp(twin.logits(x), 1)
    w = 1.0 / torch.log(1 + torch.exp(e_train.abs()))
    lg, lga = model.logits(x), model.logits(xa)
    ce = F.cross_entropy(lga if kind == "adv" else lg, y, reduction="none")
    kl = F.kl_div(F.log_softmax(lga, 1), F.softmax(lg, 1), reduction="none").sum(1)
    direct = (w * ce).mean() + 6.0 * (w * kl).mean()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)  # x* of two implementations agree to ~1e-6
    # in eval mode the train-mode weights differ from eval-mode ones: the test would catch a mix-up
    w_eval = 1.0 / torch.log(1 + torch.exp(torch.logsumexp(lg, 1).abs()))
    assert not torch.allclose(w, w_eval, rtol=1e-3)


def test_weat_in_train_mode_uses_the_loss_forward():
    model, (x, y) = make_tiny_model(4), _batch()
    twin = copy.deepcopy(model)
    model.train()
    loss = O.weat_adv(model, x, y, ATTACK, beta=2.0, generator=_gen())
    xa = O.trades_examples(twin, x, ATTACK, generator=_gen())
    twin.train()
    lg, lga = twin.logits(x), twin.logits(xa)
    w = 1.0 / F.softplus(torch.logsumexp(lg, 1).abs()).detach()
    kl = F.kl_div(F.log_softmax(lga, 1), F.softmax(lg, 1), reduction="none").sum(1)
    direct = (w * F.cross_entropy(lga, y, reduction="none")).mean() + 2.0 * (w * kl).mean()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5)
    # both ran two train-mode forwards (x, then x*): same BatchNorm running statistics
    assert all(torch.allclose(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_weat_weights_are_detached():
    model, (x, y) = make_tiny_model(5), _batch()
    model.train()
    xa = O.trades_examples(model, x, ATTACK, generator=_gen())
    g_obj = _grads(model, O.weat_adv(model, x, y, ATTACK, generator=_gen()))
    lg, lga = model.logits(x), model.logits(xa)
    kl = F.kl_div(F.log_softmax(lga, 1), F.softmax(lg, 1), reduction="none").sum(1)
    ce = F.cross_entropy(lga, y, reduction="none")

    def weighted(w):
        return (w * ce).mean() + 6.0 * (w * kl).mean()

    w = 1.0 / torch.log(1 + torch.exp(torch.logsumexp(lg, 1).abs()))
    g_detached = _grads(model, weighted(w.detach()))
    lg, lga = model.logits(x), model.logits(xa)
    kl = F.kl_div(F.log_softmax(lga, 1), F.softmax(lg, 1), reduction="none").sum(1)
    ce = F.cross_entropy(lga, y, reduction="none")
    w = 1.0 / torch.log(1 + torch.exp(torch.logsumexp(lg, 1).abs()))
    g_attached = _grads(model, weighted(w))
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_obj, g_detached))
    assert not all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_obj, g_attached))


@pytest.mark.parametrize("name", ["pgd-at", "trades", "weat-adv", "weat-nat"])
def test_attacks_leave_parameter_grads_alone_and_examples_detached(name):
    model, (x, y) = make_tiny_model(), _batch()
    if name == "pgd-at":
        xa = O.adversarial_examples(model, x, y, ATTACK, generator=_gen())
    else:
        xa = O.trades_examples(model, x, ATTACK, generator=_gen())
    assert not xa.requires_grad
    assert all(p.grad is None for p in model.parameters())
    loss = O.OBJECTIVES[name](model, x, y, ATTACK, generator=_gen())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["standard", "pgd-at", "trades", "weat-adv", "weat-nat"])
def test_a_few_steps_reduce_the_loss(name):
    model, (x, y) = make_tiny_model(6), _batch(16, seed=1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    attack = O.AttackConfig("L2", eps=0.25, steps=2)
    losses = []
    for step in range(15):
        loss = O.OBJECTIVES[name](model, x, y, attack, generator=_gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_beta_and_registry():
    model, (x, y) = make_tiny_model(), _batch()
    for fn in (O.trades, O.weat_adv, O.weat_nat):
        with pytest.raises(ValueError, match="beta"):
            fn(model, x, y, ATTACK, beta=-1.0)
    assert {"pgd-at", "trades", "weat-adv", "weat-nat", "robust-jem", "standard"} <= set(O.OBJECTIVES)
    for fn in O.OBJECTIVES.values():
        assert "Defaults" in (fn.__doc__ or "") or fn is O.standard
    with pytest.raises(ValueError, match="eps must be > 0"):
        O.AttackConfig("L2", eps=0.0)


def test_robust_jem_equals_direct_and_is_pure():
    model, (x, y) = make_tiny_model(7), _batch(6)
    buffer = torch.rand(10, 3, 32, 32, generator=_gen(1))
    kept = buffer.clone()
    sgld = O.jempp_sgld(steps=2, inner_steps=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, new = O.robust_jem(model, x, y, ATTACK, buffer, generator=_gen(), sgld=sgld, reinit_freq=0.5, gamma=0.7)
    assert torch.equal(buffer, kept)  # the input buffer is not modified
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN buffers restored
    assert not model.classifier.training
    # the same draws, written out: PGD start, buffer indices, labels, restarts, fresh noise
    g = _gen()
    xa = pgd(model, x, y, L2Ball(0.5), 3, 0.2, loss="ce", random_start=True, generator=g)
    idx = torch.randperm(10, generator=g)[:6]
    y_q = torch.randint(10, (6,), generator=g)
    restart = torch.rand(6, generator=g) < 0.5
    fresh = torch.rand(6, 3, 32, 32, generator=g)
    assert 0 < int(restart.sum()) < 6
    xq = torch.where(restart.view(-1, 1, 1, 1), fresh, buffer[idx])
    twin = copy.deepcopy(model).train()  # JEM++ samples with BatchNorm in train mode
    for _ in range(2):
        xg = xq.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((-torch.logsumexp(twin.logits(xg), 1)).sum(), xg)
        for _ in range(3):
            xq = (xq - 0.5 * 0.1 * grad.clamp(-2, 2)).clamp(0, 1)
    expected_buffer = buffer.clone()
    expected_buffer[idx] = xq
    assert torch.allclose(new, expected_buffer, atol=1e-6)
    others = torch.ones(10, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(new[others], buffer[others])
    direct = F.cross_entropy(model.logits(xa), y) + 0.7 * (
        (-torch.logsumexp(model.logits(x), 1)).mean() - (-torch.logsumexp(model.logits(xq), 1)).mean())
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5, abs=1e-6)
    assert not new.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_robust_jem_training_steps_reduce_the_loss():
    model, (x, y) = make_tiny_model(6), _batch(16, seed=1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    buffer = O.init_replay_buffer(model, 64, generator=_gen(0))
    attack = O.AttackConfig("L2", eps=0.25, steps=2)
    losses = []
    for step in range(15):
        loss, buffer = O.robust_jem(model, x, y, attack, buffer, generator=_gen(step), sgld=O.jempp_sgld(steps=2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses


def test_robust_jem_bad_input():
    from ebmlens.rng import SampleStreams

    model, (x, y) = make_tiny_model(), _batch(4)
    with pytest.raises(ValueError, match="replay buffer must be a tensor"):
        O.robust_jem(model, x, y, ATTACK, torch.rand(8, 3, 16, 16))
    with pytest.raises(ValueError, match="fewer than the batch of 4"):
        O.robust_jem(model, x, y, ATTACK, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="reinit_freq"):
        O.robust_jem(model, x, y, ATTACK, torch.rand(8, 3, 32, 32), reinit_freq=2.0)
    with pytest.raises(TypeError, match="torch.Generator"):
        O.robust_jem(model, x, y, ATTACK, torch.rand(8, 3, 32, 32), generator=SampleStreams(0, range(4)))
    with pytest.raises(ValueError, match="buffer size"):
        O.init_replay_buffer(model, 0)
