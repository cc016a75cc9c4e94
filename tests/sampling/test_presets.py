"""Presets: names and errors, and on the small robust model: each preset (steps reduced for speed)
lowers E(x, y) from its init and its conditional samples are classified as the target far above
chance (10%)."""

from __future__ import annotations

import pytest
import torch

from ebmlens import sampling as S

# reduced budgets: (overrides, minimum target accuracy); chance is 0.10
FAST = {
    "santurkar2019": ({"steps": 8, "step_size": 1.0}, 0.6),
    "jempp": ({"steps": 4, "mode": "eval"}, 0.3),
    "robust-jem-energy": ({"steps": 4}, 0.3),
    "robust-jem": ({"attack_steps": 5, "steps": 3}, 0.6),
    "mirza2024": ({"steps": 6}, 0.3),
    "dat2025": ({"steps": 12, "step_size": 0.4}, 0.3),   # natural seeds carry their own class
    "mixture-ascent": ({"steps": 12, "step_size": 0.4}, 0.5),
}


def test_names_and_unknown_preset():
    assert S.presets.names() == ["santurkar2019", "jempp", "robust-jem-energy", "robust-jem", "mirza2024", "dat2025",
                                 "mixture-ascent"]
    assert set(FAST) == set(S.presets.names())
    with pytest.raises(ValueError, match="did you mean robust-jem"):
        S.presets.get("robust-jm")
    with pytest.raises(ValueError, match="choices"):
        S.presets.get("nope")


def test_missing_stats_and_bad_overrides_teach(small_stats):
    for name in ("santurkar2019", "jempp", "robust-jem-energy", "robust-jem", "mirza2024"):
        with pytest.raises(ValueError, match=r"ebmlens.class_stats\('cifar10:PATH'\)"):
            S.presets.get(name)
    with pytest.raises(ValueError, match="seed images"):
        S.presets.get("dat2025")
    with pytest.raises(ValueError, match="has no option 'stepz'.*steps"):
        S.presets.get("jempp", stats=small_stats, stepz=3)


def test_preset_defaults_are_the_published_ones(small_stats):
    p = S.presets.get("santurkar2019", stats=small_stats)
    assert p.stages[0] == S.TargetedPGD(S.L2Ball(30.0), steps=60, step_size=0.5, loss="ce", keep_best=True)
    p = S.presets.get("jempp", stats=small_stats)
    assert p.mode == "train" and p.stages[0] == S.SGLD(step_size=0.1, noise=0.005, steps=10, inner_steps=5,
                                                         grad_clip=2.0)
    p = S.presets.get("robust-jem-energy", stats=small_stats, conditional=False)
    assert p.stages[0].steps == 300 and p.stages[0].energy == "marginal"
    p = S.presets.get("robust-jem", stats=small_stats)
    assert p.stages[0].geometry == S.LinfBall(0.25) and p.stages[0].steps == 15
    assert p.stages[2].clamp is None and p.stages[2].steps == 50 and isinstance(p.stages[3], S.Clamp)
    p = S.presets.get("mirza2024", stats=small_stats)
    assert isinstance(p.init, S.PCAInit) and (p.init.sigma, p.init.variance) == (0.005, 0.95)
    assert p.stages[0] == S.MomentumSGLD(eta=0.8, steps=50, momentum=0.0, noise=0.001, update_clip=1.0)
    p = S.presets.get("mirza2024", stats=small_stats, momentum=0.8, eta=0.025, steps=500)
    assert (p.stages[0].momentum, p.stages[0].eta, p.stages[0].steps) == (0.8, 0.025, 500)
    p = S.presets.get("dat2025", stats=small_stats)
    assert p.stages[0] == S.TargetedPGD(S.Unconstrained(), steps=22, step_size=0.2, loss="joint")


@pytest.fixture(scope="module")
def targets():
    return torch.arange(20) % 10


@pytest.fixture(scope="module")
def cifar_mixture(cifar_train):
    from ebmlens.stats import class_mixture

    return class_mixture(cifar_train, n=2000, components=2, rank=8)


@pytest.mark.parametrize("name", list(FAST))
def test_preset_lowers_joint_energy_and_hits_the_target(name, robust_model, cifar_stats, cifar_test, targets, request):
    overrides, min_acc = FAST[name]
    data = cifar_test if name == "dat2025" else None
    stats = request.getfixturevalue("cifar_mixture") if name == "mixture-ascent" else cifar_stats
    pipe = S.presets.get(name, stats=stats, data=data, **overrides)
    out = pipe(robust_model, targets, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (20, 3, 32, 32) and torch.isfinite(out.images).all()
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    e0, e1 = out.trace[0]["joint_energy"], out.trace[-1]["joint_energy"]
    assert float(e1.mean()) < float(e0.mean()), [t["stage"] for t in out.trace]
    with torch.no_grad(), robust_model.mode("eval"):
        acc = float((robust_model.logits(out.images).argmax(1) == targets).float().mean())
    assert acc >= min_acc, f"{name}: target accuracy {acc:.2f}"


def test_unconditional_marginal_sampling_lowers_marginal_energy(robust_model, cifar_stats):
    pipe = S.presets.get("robust-jem-energy", stats=cifar_stats, conditional=False, steps=4)
    out = pipe(robust_model, 10, generator=torch.Generator().manual_seed(1))
    assert float(out.trace[-1]["energy"].mean()) < float(out.trace[0]["energy"].mean())
