"""Geometry properties (projection idempotent, ball held, steps of the right norm), the PGD core
on a toy with a known answer and on a real model, and bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmlens import rng
from ebmlens.attacks import L2Ball, LinfBall, Unconstrained, attack_loss, make_geometry, pgd
from ebmlens.energy import EnergyModel

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
              targeted=True, callback=lambda i, lv: losses.append(lv))
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
