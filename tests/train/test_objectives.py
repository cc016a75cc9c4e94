"""Objectives equal direct computations; gradients reach parameters only where they should."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

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


def _linear_model(seed=0, d=3 * 4 * 4, k=5):
    """``logits = W x + b`` (no normalization, float64): CE's input gradient has a closed form."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    model = EnergyModel(torch.nn.Sequential(torch.nn.Flatten(), lin), mean=(0.0,), std=(1.0,), num_classes=k,
                        input_shape=(3, 4, 4)).double()
    return model, lin.weight.detach(), lin.bias.detach()


def _linear_batch(n=6, seed=0, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


def _ce(w, b, x, y):
    """Per-sample CE of the linear model, written out: ``logsumexp(z) - z_y``, ``z = W x + b``."""
    z = x.flatten(1) @ w.T + b
    return torch.logsumexp(z, 1) - z.gather(1, y.view(-1, 1)).squeeze(1)


def _hand_pgd_l2(w, b, x, y, eps, steps, alpha):
    """L2 PGD on the linear model with the closed-form gradient ``d CE / d x = W^T (softmax(z) - onehot(y))``."""
    xa = x.flatten(1).clone()
    x0 = xa.clone()
    onehot = F.one_hot(y, w.shape[0]).to(x.dtype)
    for _ in range(steps):
        grad = (torch.softmax(xa @ w.T + b, 1) - onehot) @ w
        xa = xa + alpha * grad / grad.norm(dim=1, keepdim=True)
        d = xa - x0
        xa = (x0 + d * torch.clamp(eps / d.norm(dim=1, keepdim=True), max=1.0)).clamp(0, 1)
    return xa.view_as(x)


def test_pgd_at_equals_hand_written_pgd_on_a_linear_model():
    model, w, b = _linear_model()
    x, y = _linear_batch()
    attack = O.AttackConfig("L2", eps=0.5, steps=4, step_size=0.2, random_start=False)
    loss, state = O.PGDAT()(model, x, y, attack, None, generator=_gen())
    ref = _ce(w, b, _hand_pgd_l2(w, b, x, y, 0.5, 4, 0.2), y).mean()
    assert state is None
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)  # the loss is computed in float32
    assert loss.item() > _ce(w, b, x, y).mean().item() + 0.05  # the attack moved: not the clean CE


def test_pgd_at_with_random_start_is_a_loss_inside_the_ball():
    # CE(x + d) - CE(x) <= max_k (W_k - W_y) . d <= eps * max_k ||W_k - W_y|| for ||d|| <= eps (log-sum-exp
    # is 1-Lipschitz in the max norm): an example outside the ball or a clean CE falls outside these bounds
    model, w, b = _linear_model(1)
    x, y = _linear_batch(8, seed=1)
    eps = 0.3
    loss = O.pgd_at(model, x, y, O.AttackConfig("L2", eps=eps, steps=5), generator=_gen())
    clean = _ce(w, b, x, y)
    spread = (w.unsqueeze(0) - w[y].unsqueeze(1)).norm(dim=2).max(1).values  # (n,) max_k ||W_k - W_y||
    assert clean.mean().item() + 0.05 < loss.item() <= (clean + eps * spread).mean().item() + 1e-5


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


def _energy(w, b, x):
    """``E(x) = -logsumexp(W x + b)`` of the linear model, written out."""
    return -torch.logsumexp(x.flatten(1) @ w.T + b, 1)


def test_robust_jem_decomposes_as_documented_and_updates_the_drawn_entries_only():
    model, w, b = _linear_model(2)
    x, y = _linear_batch(6, seed=2)
    buffer = torch.rand(10, 3, 4, 4, generator=_gen(1), dtype=torch.float64)
    kept = buffer.clone()
    attack = O.AttackConfig("L2", eps=0.4, steps=4)
    sgld = O.jempp_sgld(steps=3, inner_steps=2)
    runs = {gamma: O.robust_jem(model, x, y, attack, buffer, generator=_gen(), sgld=sgld, reinit_freq=0.0,
                                gamma=gamma) for gamma in (0.0, 0.7)}
    (loss0, new), (loss, new_b) = runs[0.0], runs[0.7]
    assert torch.equal(buffer, kept) and torch.equal(new, new_b)  # input untouched; the draws do not depend on gamma
    changed = (new != buffer).flatten(1).any(1)
    assert int(changed.sum()) == 6  # exactly the batch's n distinct entries are replaced, the rest kept
    assert torch.equal(new[~changed], buffer[~changed])
    assert 0 <= float(new.min()) and float(new.max()) <= 1 and not new.requires_grad
    x_q = new[changed]
    assert (_energy(w, b, x_q) < _energy(w, b, buffer[changed])).all()  # SGLD (no noise) descended E(x)
    # loss = CE(f(x*), y) + gamma * (mean E(x) - mean E(x~)): the generative term, from the formula
    gen_term = _energy(w, b, x).mean() - _energy(w, b, x_q).mean()
    assert (loss - loss0).item() == pytest.approx(0.7 * gen_term.item(), rel=1e-6)
    # ... and the CE term is an adversarial CE inside the ball (see the PGD-AT bound above)
    clean = _ce(w, b, x, y)
    spread = (w.unsqueeze(0) - w[y].unsqueeze(1)).norm(dim=2).max(1).values
    assert clean.mean().item() + 0.05 < loss0.item() <= (clean + 0.4 * spread).mean().item() + 1e-5
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_robust_jem_restarts_come_from_init_not_the_buffer():
    model, _, _ = _linear_model(3)
    x, y = _linear_batch(4, seed=3)

    def grey(model, y, *, generator=None):
        return torch.full((len(y), 3, 4, 4), 0.5, dtype=torch.float64)

    attack = O.AttackConfig("L2", eps=0.25, steps=1)
    out = {}
    for fill in (0.0, 1.0):
        for freq in (0.0, 1.0):
            buffer = torch.full((8, 3, 4, 4), fill, dtype=torch.float64)
            _, new = O.robust_jem(model, x, y, attack, buffer, generator=_gen(),
                                  sgld=O.jempp_sgld(steps=1, inner_steps=1), reinit_freq=freq, init=grey)
            out[fill, freq] = new[(new != buffer).flatten(1).any(1)]
    assert torch.equal(out[0.0, 1.0], out[1.0, 1.0])  # every chain restarted: the buffer's content is irrelevant
    assert not torch.allclose(out[0.0, 0.0], out[1.0, 0.0])  # no restart: chains continue from the buffer


def test_robust_jem_samples_in_train_mode_and_restores_batchnorm():
    model, (x, y) = make_tiny_model(7), _batch(6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buffer = torch.rand(10, 3, 32, 32, generator=_gen(1))
    seen = []
    hook = model.classifier.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    O.robust_jem(model, x, y, ATTACK, buffer, generator=_gen(), sgld=O.jempp_sgld(steps=1, inner_steps=1))
    hook.remove()
    assert True in seen and False in seen  # eval-mode attack, train-mode chains (JEM++)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN buffers restored
    assert not model.classifier.training


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
