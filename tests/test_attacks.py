"""Geometry properties (projection idempotent, ball held, steps of the right norm), the PGD core
on a toy with a known answer and on a real model, and bad inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from ebmlens import rng
from ebmlens.attacks import L2Ball, LinfBall, Unconstrained, attack_loss, make_geometry, pgd
from ebmlens.energy import EnergyModel
from ebmlens.sampling import TargetedPGD

GEOMS = [L2Ball(0.5), LinfBall(8 / 255), Unconstrained()]


def _norm(g, d):
    return d.flatten(1).norm(dim=1) if isinstance(g, L2Ball) else d.flatten(1).abs().max(dim=1).values


@pytest.mark.parametrize("geom", GEOMS[:2], ids=["L2", "Linf"])
def test_projection_idempotent_and_ball_held(geom):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g)
    x = x0 + torch.randn(6, 3, 8, 8, generator=g) * torch.tensor([0.001, 0.01, 0.1, 1, 3, 10]).view(-1, 1, 1, 1)
    p = geom.project(x, x0)
    assert torch.allclose(geom.project(p, x0), p, atol=1e-6)
    assert bool((_norm(geom, p - x0) <= geom.eps + 1e-5).all())
    # points already inside are not moved
    inside = x0 + 0.5 * (p - x0)
    assert torch.allclose(geom.project(inside, x0), inside, atol=1e-6)


@pytest.mark.parametrize("geom", GEOMS[:2], ids=["L2", "Linf"])
def test_random_start_in_ball_and_reproducible(geom):
    x0 = torch.rand(5, 3, 8, 8)
    a = geom.random_start(x0, torch.Generator().manual_seed(1))
    b = geom.random_start(x0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert bool((_norm(geom, a - x0) <= geom.eps + 1e-5).all())
    assert not torch.equal(a, x0)
    s = geom.random_start(x0, rng.SampleStreams(0, range(5)))
    s2 = geom.random_start(x0[2:3], rng.SampleStreams(0, [2]))
    assert torch.allclose(s[2:3], s2)  # per-sample streams: independent of the batch


def test_step_sizes():
    x = torch.zeros(2, 3, 4, 4)
    grad = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    d2 = L2Ball(1.0).step(x, grad, 0.3) - x
    assert torch.allclose(d2.flatten(1).norm(dim=1), torch.full((2,), 0.3), atol=1e-6)
    assert (d2 * grad).sum() > 0  # moves up the gradient
    dinf = LinfBall(1.0).step(x, grad, 0.1) - x
    assert torch.allclose(dinf.abs(), torch.full_like(dinf, 0.1))
    du = Unconstrained().step(x, grad, 2.0) - x
    assert torch.allclose(du.flatten(1).norm(dim=1), torch.full((2,), 2.0), atol=1e-5)
    assert torch.equal(Unconstrained().project(x + 100, x), x + 100)


def test_make_geometry_and_bad_eps():
    assert make_geometry("l2", 0.5) == L2Ball(0.5)
    assert make_geometry("Linf", 0.03) == LinfBall(0.03)
    assert isinstance(make_geometry("none", None), Unconstrained)
    with pytest.raises(ValueError, match="unknown threat model"):
        make_geometry("L1", 0.5)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps > 0"):
            L2Ball(bad)
        with pytest.raises(ValueError, match="eps > 0"):
            LinfBall(bad)


class Quadratic(nn.Module):
    """logits_k(x) = -||x - c_k||^2: the joint energy E(x, k) = ||x - c_k||^2 has its minimum at c_k."""

    def __init__(self, centers):
        super().__init__()
        self.register_buffer("c", centers)

    def forward(self, x):
        return -((x.flatten(1)[:, None, :] - self.c[None]) ** 2).sum(-1)


def test_targeted_pgd_on_quadratic_reaches_known_minimum():
    c = torch.stack([torch.full((12,), 0.2), torch.full((12,), 0.8)])
    model = EnergyModel(Quadratic(c), input_shape=(3, 2, 2), num_classes=2)
    x = torch.full((2, 3, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    out = pgd(model, x, y, Unconstrained(), steps=60, step_size=0.05, loss="joint", targeted=True)
    assert torch.allclose(out.flatten(1), c[y], atol=0.05)
    # inside a small L2 ball the minimum is on the boundary, in the target's direction
    ball = L2Ball(0.3)
    out_b = pgd(model, x, y, ball, steps=40, step_size=0.05, loss="joint", targeted=True)
    d = (out_b - x).flatten(1)
    assert torch.allclose(d.norm(dim=1), torch.full((2,), 0.3), atol=1e-4)
    direction = (c[y] - x.flatten(1)) / (c[y] - x.flatten(1)).norm(dim=1, keepdim=True)
    assert torch.allclose(d / d.norm(dim=1, keepdim=True), direction, atol=1e-3)


@pytest.mark.parametrize("geom", GEOMS, ids=["L2", "Linf", "none"])
def test_targeted_pgd_lowers_loss_and_keeps_constraints(tiny_model, geom):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 32, 32, generator=g)
    t = torch.tensor([1, 2, 3, 4])
    before = attack_loss(tiny_model.logits(x), t, "ce")
    losses = []
    out = pgd(tiny_model, x, t, geom, steps=5, step_size=0.1 if not isinstance(geom, LinfBall) else 2 / 255,
              targeted=True, callback=lambda i, lv, logits: losses.append(lv))
    after = attack_loss(tiny_model.logits(out), t, "ce")
    assert bool((after < before).all())
    assert len(losses) == 5 and torch.allclose(losses[0], before, atol=1e-5)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    if not isinstance(geom, Unconstrained):
        assert bool((_norm(geom, out - x) <= geom.eps + 1e-5).all())
    assert all(p.grad is None for p in tiny_model.parameters())


def test_untargeted_pgd_raises_loss_and_keep_best(tiny_model):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = tiny_model.logits(x).argmax(1)
    before = attack_loss(tiny_model.logits(x), y, "ce")
    out = pgd(tiny_model, x, y, L2Ball(0.5), steps=4, step_size=0.2, keep_best=True, random_start=True,
              generator=torch.Generator().manual_seed(0))
    after = attack_loss(tiny_model.logits(out), y, "ce")
    assert bool((after > before).all())
    x_in = x.clone()
    pgd(tiny_model, x, y, L2Ball(0.5), steps=2, step_size=0.2)
    assert torch.equal(x, x_in)  # input not mutated


def test_attack_losses_match_energies(tiny_model):
    x = torch.rand(3, 3, 32, 32)
    y = torch.tensor([0, 5, 9])
    lg = tiny_model.logits(x)
    assert torch.allclose(attack_loss(lg, y, "joint"), tiny_model.joint_energy(x, y), atol=1e-6)
    assert torch.allclose(attack_loss(lg, y, "marginal", tiny_model), tiny_model.energy(x), atol=1e-6)
    ce = attack_loss(lg, y, "ce")
    assert torch.allclose(ce, tiny_model.joint_energy(x, y) - tiny_model.energy(x), atol=1e-5)
    with pytest.raises(ValueError, match="unknown PGD loss"):
        attack_loss(lg, y, "hinge")  # type: ignore[arg-type]


def test_pgd_bad_arguments(tiny_model):
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        pgd(tiny_model, x, y, L2Ball(0.5), steps=-1, step_size=0.1)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        pgd(tiny_model, x, y, L2Ball(0.5), steps=1, step_size=0.0)
    assert torch.equal(pgd(tiny_model, x, y, L2Ball(0.5), steps=0, step_size=0.1), x)
    with pytest.raises(ValueError, match="SampleStreams has 3 streams for a batch of 2"):
        pgd(tiny_model, x, y, L2Ball(0.5), steps=1, step_size=0.1, random_start=True,
            generator=rng.SampleStreams(0, [0, 1, 2]))


def _overshooting_quadratic():
    """Two samples on a quadratic energy ``E(x, k) = ||x - c_k||^2`` with normalized steps of 0.5:
    sample 0 starts 0.7 from its centre (distances 0.7 -> 0.2 -> 0.3: the middle iterate is best,
    the last overshoots), sample 1 starts 1.0 away (1.0 -> 0.5 -> 0.0: the last is best)."""
    c = torch.stack([torch.full((12,), 0.2), torch.full((12,), 0.8)])
    y = torch.tensor([0, 1])
    u = torch.ones(2, 12) / 12 ** 0.5 * torch.tensor([[1.0], [-1.0]])  # unit directions from the centres
    x = (c[y] + torch.tensor([[0.7], [1.0]]) * u).view(2, 3, 2, 2)
    step = -0.5 * u  # each normalized step of 0.5 toward the centre
    return c, y, x, [(x.flatten(1) + k * step).view(2, 3, 2, 2) for k in range(3)]


def test_keep_best_returns_each_samples_best_iterate_not_the_last():
    c, y, x, iterates = _overshooting_quadratic()
    model = EnergyModel(Quadratic(c), input_shape=(3, 2, 2), num_classes=2)
    best = torch.stack([iterates[1][0], iterates[2][1]])  # sample 0: the middle iterate; sample 1: the last
    kw = dict(steps=2, step_size=0.5, loss="joint", clamp=None)
    out = pgd(model, x, y, Unconstrained(), targeted=True, keep_best=True, **kw)
    assert torch.allclose(out, best, atol=1e-6)
    assert torch.allclose(pgd(model, x, y, Unconstrained(), targeted=True, **kw), iterates[2], atol=1e-6)
    stage = TargetedPGD(Unconstrained(), steps=2, step_size=0.5, loss="joint", keep_best=True, clamp=None)
    assert torch.allclose(stage(model, x, y), best, atol=1e-6)
    assert torch.allclose(replace(stage, keep_best=False)(model, x, y), iterates[2], atol=1e-6)
    # untargeted: the attacker's best is the highest loss; logits +||x - c||^2 make ascent approach c
    neg = EnergyModel(_Negated(Quadratic(c)), input_shape=(3, 2, 2), num_classes=2)
    assert torch.allclose(pgd(neg, x, y, Unconstrained(), keep_best=True, **kw), best, atol=1e-6)
    assert torch.allclose(pgd(neg, x, y, Unconstrained(), **kw), iterates[2], atol=1e-6)


class _Negated(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return -self.net(x)


def _small_conv_model() -> EnergyModel:
    g = torch.Generator().manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return EnergyModel(net, input_shape=(3, 8, 8), num_classes=5)


@pytest.mark.parametrize("geom", GEOMS, ids=["L2", "Linf", "none"])
def test_targeted_pgd_stage_is_the_core_loop(geom):
    """The stage is the core loop with targeted=True: every field reaches it (random start, keep_best, loss)."""
    model = _small_conv_model()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([1, 2, 3, 4, 0, 1])
    for loss in ("ce", "joint", "marginal"):
        stage = TargetedPGD(geom, steps=4, step_size=0.3 if not isinstance(geom, LinfBall) else 2 / 255, loss=loss,
                            random_start=True, keep_best=True)
        seen = []
        out = stage(model, x, t, generator=torch.Generator().manual_seed(7),
                    callback=lambda i, lv, logits: seen.append(lv))
        ref = pgd(model, x, t, geom, 4, stage.step_size, loss=loss, targeted=True, random_start=True, keep_best=True,
                  generator=torch.Generator().manual_seed(7))
        assert torch.equal(out, ref) and len(seen) == 4


def test_stop_at_equals_each_sample_run_alone_until_it_is_sure():
    """``stop_at`` against a loop written here from its definition: each sample alone takes normalized
    steps on its targeted CE until the pass that computes its step finds ``p(t | x) >= tau``."""
    model = _small_conv_model()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([1, 2, 3, 4, 0, 1, 2, 3])
    tau, steps, size = 0.6, 6, 0.1
    seen, snap = [], []

    def record(i, loss, logits):
        seen.append((loss, logits))
        snap.append((loss.clone(), logits.clone()))

    out = pgd(model, x, t, Unconstrained(), steps, size, targeted=True, stop_at=tau, callback=record)
    stopped_at = []
    for j in range(8):
        xj, last = x[j:j + 1], None
        for i in range(steps):
            xg = xj.detach().requires_grad_(True)
            lg = model(xg)
            loss = nn.functional.cross_entropy(lg, t[j:j + 1])
            last = (loss.detach(), lg.detach())
            assert torch.allclose(seen[i][0][j], last[0], atol=1e-5) and torch.allclose(seen[i][1][j], last[1][0])
            if lg.softmax(1)[0, t[j]] >= tau:
                break
            (g,) = torch.autograd.grad(loss, xg)
            xj = (xj + size * -g / g.flatten().norm()).clamp(0, 1)
        else:
            i = steps
        for k in range(i + 1, steps):  # a stopped row reports its last pass
            assert torch.allclose(seen[k][0][j], last[0], atol=1e-5)
        stopped_at.append(i)
        assert torch.allclose(out[j:j + 1], xj, atol=1e-5), j
    assert len(set(stopped_at)) >= 3, stopped_at  # samples stop at different steps (some never)
    assert len(seen) == steps and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(seen, snap))
    with pytest.raises(ValueError, match="targeted runs only"):
        pgd(model, x, t, Unconstrained(), 2, 0.1, stop_at=0.5)
    with pytest.raises(ValueError, match="do not combine"):
        pgd(model, x, t, Unconstrained(), 2, 0.1, targeted=True, stop_at=0.5, keep_best=True)
    with pytest.raises(ValueError, match="probability in"):
        pgd(model, x, t, Unconstrained(), 2, 0.1, targeted=True, stop_at=1.0)


def test_callback_gets_each_steps_loss_and_logits():
    model = _small_conv_model()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    y = torch.tensor([0, 1, 2])
    seen = []
    out = pgd(model, x, y, L2Ball(0.5), 3, 0.2, loss="joint",
              callback=lambda i, loss, logits: seen.append((i, loss, logits)))
    assert [s[0] for s in seen] == [0, 1, 2]
    assert torch.allclose(seen[0][2], model(x)) and torch.allclose(seen[0][1], -model(x)[torch.arange(3), y])
    assert not torch.allclose(seen[2][2], seen[0][2]) and not torch.allclose(model(out), seen[2][2])
    with pytest.raises(TypeError, match="takes no logits: add a `logits` parameter"):
        pgd(model, x, y, L2Ball(0.5), 1, 0.2, callback=lambda i, loss: None)
    with pytest.raises(TypeError, match="pgd needs y"):
        pgd(model, x, None, L2Ball(0.5), 1, 0.2)
