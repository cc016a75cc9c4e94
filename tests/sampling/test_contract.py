"""Contract test over every registered initializer and stage (ARCHITECTURE.md, STYLE.md #14):
shape/dtype/device kept, input not mutated, same generator seed -> same output, output finite;
and the dataclass contract (frozen, config JSON-able, statistics recorded by fingerprint)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ebmlens import rng
from ebmlens import sampling as S
from ebmlens.stats import class_mixture

from .conftest import SMALL_K, SMALL_SHAPE


def _factories(stats, data):
    x, _ = data
    return {
        "GaussianInit": lambda: S.GaussianInit(stats),
        "GaussianInit[mixture]": lambda: S.GaussianInit(class_mixture(x, data[1], components=2, rank=4)),
        "PCAInit": lambda: S.PCAInit(stats, sigma=0.05),
        "NoiseInit": lambda: S.NoiseInit("gaussian"),
        "DataInit": lambda: S.DataInit(x, noise=0.05),
        "TargetedPGD": lambda: S.TargetedPGD(S.L2Ball(0.5), steps=3, step_size=0.2, random_start=True),
        "TargetedPGD[stop_at]": lambda: S.TargetedPGD(S.Unconstrained(), steps=3, step_size=0.3, stop_at=0.4),
        "SGLD": lambda: S.SGLD(step_size=0.01, noise=0.01, steps=3, inner_steps=2, grad_clip=1.0),
        "MomentumSGLD": lambda: S.MomentumSGLD(eta=0.05, steps=3, momentum=0.5, noise=0.01),
        "Contrast": lambda: S.Contrast(0.7, center="data", stats=stats),
        "Clamp": lambda: S.Clamp(0.1, 0.9),
    }


@pytest.fixture
def factories(small_stats, small_data):
    return _factories(small_stats, small_data)


def test_every_registered_stage_has_a_contract_factory(factories):
    assert set(S.STAGES) == {n.split("[")[0] for n in factories}, \
        "a registered stage has no factory in this contract test"
    assert set(S.INITIALIZERS) <= set(S.STAGES)


@pytest.mark.parametrize("name", sorted(_factories(None, (None, None))))
def test_stage_contract(name, factories, small_model):
    stage = factories[name]()
    assert dataclasses.is_dataclass(stage)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(stage, dataclasses.fields(stage)[0].name, None)
    y = torch.arange(6) % SMALL_K
    is_init = name.split("[")[0] in S.INITIALIZERS

    def run(seed, x=None):
        g = torch.Generator().manual_seed(seed)
        if is_init:
            return stage(small_model, y, generator=g)
        return stage(small_model, x, y, generator=g)

    x0 = None if is_init else torch.rand(6, *SMALL_SHAPE, generator=torch.Generator().manual_seed(9))
    keep = None if x0 is None else x0.clone()
    out = run(1, x0)
    assert out.shape == (6, *SMALL_SHAPE)
    assert out.dtype == torch.float32 and out.device == y.device
    assert torch.isfinite(out).all()
    if keep is not None:
        assert torch.equal(x0, keep), "stage mutated its input"
    assert torch.equal(out, run(1, x0)), "same seed must give the same output"
    if is_init:
        assert float(out.min()) >= 0 and float(out.max()) <= 1
    if name in ("GaussianInit", "GaussianInit[mixture]", "PCAInit", "NoiseInit", "DataInit", "TargetedPGD", "SGLD",
                "MomentumSGLD"):
        assert not torch.equal(out, run(2, x0)), "a stochastic stage ignored its generator"
    cfg = S.stage_config(stage)
    json.dumps(cfg)
    assert cfg["name"] == name.split("[")[0]


def test_sample_streams_work_for_every_stage(factories, small_model):
    """Every stage accepts rng.SampleStreams as its generator."""
    y = torch.arange(5) % SMALL_K
    x = torch.rand(5, *SMALL_SHAPE, generator=torch.Generator().manual_seed(0))
    for name, make in factories.items():
        st = make()
        g = rng.SampleStreams(3, range(5))
        out = (st(small_model, y, generator=g) if name.split("[")[0] in S.INITIALIZERS
               else st(small_model, x, y, generator=g))
        assert out.shape == x.shape and torch.isfinite(out).all(), name


def test_stats_are_held_by_reference_and_recorded_by_fingerprint(small_stats, small_data):
    init = S.GaussianInit(small_stats)
    assert init.stats is small_stats
    assert "stats" not in repr(init)
    cfg = S.stage_config(init)
    assert cfg["stats"] == small_stats.fingerprint and len(cfg["stats"]["sha256"]) == 16
    d = S.DataInit(small_data[0])
    assert d.images is small_data[0]
    assert S.stage_config(d)["images"]["tensor"] == list(small_data[0].shape)


def test_register_stage():
    @dataclasses.dataclass(frozen=True)
    class Shift:
        by: float = 0.1

        def __call__(self, model, x, y, *, generator=None):
            return x + self.by

    try:
        assert S.register_stage(Shift) is Shift and S.STAGES["Shift"] is Shift
        with pytest.raises(ValueError, match="already registered"):
            S.register_stage(type("Shift", (), {"__call__": lambda self: None}))
    finally:
        S.STAGES.pop("Shift", None)
