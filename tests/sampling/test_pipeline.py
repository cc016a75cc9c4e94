"""Pipeline: the loop, traces, config, BatchNorm mode, unconditional labels, progress, errors."""

from __future__ import annotations

import json

import pytest
import torch

from ebmlens import sampling as S

from .conftest import SMALL_K, SMALL_SHAPE, make_small_model


def test_trace_records_energies_after_init_and_every_stage(small_model, small_stats):
    pipe = S.Pipeline(S.GaussianInit(small_stats),
                      [S.TargetedPGD(S.L2Ball(1.0), steps=4, step_size=0.3, loss="joint"), S.Contrast(0.9), S.Clamp()])
    y = torch.arange(8) % SMALL_K
    out = pipe(small_model, y, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, S.Samples) and out.images.shape == (8, *SMALL_SHAPE) and torch.equal(out.labels, y)
    assert [t["stage"] for t in out.trace] == ["GaussianInit", "TargetedPGD", "Contrast", "Clamp"]
    with torch.no_grad():
        logits = small_model.logits(out.images)
    last = out.trace[-1]
    assert torch.allclose(last["joint_energy"], -logits.gather(1, y[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(last["energy"], -torch.logsumexp(logits, 1), atol=1e-5)
    assert float(out.trace[1]["joint_energy"].mean()) < float(out.trace[0]["joint_energy"].mean())
    assert "steps" not in out.trace[1]
    summ = out.summary()
    json.dumps(summ)
    assert summ[1]["joint_energy_mean"] == pytest.approx(float(out.trace[1]["joint_energy"].mean()), rel=1e-6)


def test_trace_steps_counts_model_passes_once(small_model, small_stats):
    calls = {"n": 0}
    hook = small_model.classifier.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    pipe = S.Pipeline(S.NoiseInit(), [S.SGLD(step_size=0.01, noise=0.0, steps=5), S.Clamp()], trace_steps=True)
    out = pipe(small_model, torch.arange(3), generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert calls["n"] == 5 + 3           # 5 gradient passes + one no-grad forward per trace point
    assert out.trace[1]["steps"].shape == (5, 3)
    assert "steps" in out.trace[2] and out.trace[2]["steps"].numel() == 0   # Clamp reports no steps


def test_config_is_json_and_names_everything(small_stats):
    pipe = S.presets.get("robust-jem", stats=small_stats.compact(4))
    cfg = json.loads(json.dumps(pipe.config()))
    assert cfg["init"]["name"] == "GaussianInit" and cfg["init"]["stats"]["kind"] == "compact"
    assert [s["name"] for s in cfg["stages"]] == ["TargetedPGD", "Contrast", "SGLD", "Clamp"]
    assert cfg["stages"][0]["geometry"] == {"name": "LinfBall", "eps": 0.25}
    assert cfg["mode"] is None


def test_batchnorm_mode_is_used_and_restored(small_stats):
    model = make_small_model(batchnorm=True)
    bn = model.classifier[2]
    before = bn.running_mean.clone()
    seen = []
    hook = bn.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    out = S.Pipeline(S.NoiseInit(), [S.SGLD(step_size=0.01, noise=0.01, steps=2)], mode="train")(
        model, torch.arange(4), generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert out.mode == "train" and all(seen)
    assert torch.equal(bn.running_mean, before) and not model.classifier.training
    out = S.Pipeline(S.NoiseInit(), [])(model, torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert out.mode == "eval"
    with pytest.raises(ValueError, match="mode"):
        S.Pipeline(S.NoiseInit(), [], mode="sample")


def test_unconditional_labels_from_the_class_prior(small_model, small_stats):
    pipe = S.Pipeline(S.GaussianInit(small_stats), [S.SGLD(step_size=0.01, noise=0.01, steps=1, energy="marginal")])
    out = pipe(small_model, 400, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out.labels, minlength=SMALL_K).float()
    assert out.labels.shape == (400,) and torch.all((counts / 400 - small_stats.prior).abs() < 0.08)
    skew = S.draw_labels(2000, [0.0, 0.9, 0.1, 0.0], torch.Generator().manual_seed(0))
    assert set(skew.tolist()) <= {1, 2} and float((skew == 1).float().mean()) == pytest.approx(0.9, abs=0.03)
    with pytest.raises(ValueError, match="prior"):
        S.draw_labels(3, [0.0, 0.0])


def test_progress_callback_and_bad_input(small_model):
    seen = []
    pipe = S.Pipeline(S.NoiseInit(), [S.Clamp(), S.Contrast(1.0)])
    pipe(small_model, torch.arange(2), progress=lambda i, n, name: seen.append((i, n, name)))
    assert seen == [(1, 3, "NoiseInit"), (2, 3, "Clamp"), (3, 3, "Contrast")]
    with pytest.raises(ValueError, match="outside"):
        pipe(small_model, torch.tensor([0, SMALL_K]))
    with pytest.raises(TypeError, match="integer"):
        pipe(small_model, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="EnergyModel"):
        pipe(torch.nn.Linear(2, 2), torch.arange(2))
    with pytest.raises(ValueError, match="> 0"):
        pipe(small_model, 0)
    with pytest.raises(TypeError, match="not callable"):
        S.Pipeline(S.NoiseInit(), [3])
    bad_init = S.Pipeline(lambda model, y, generator=None: torch.zeros(len(y), 1, 8, 8), [])
    with pytest.raises(ValueError, match="input_shape"):
        bad_init(small_model, torch.arange(2))


def test_stage_argument_errors_teach(small_stats):
    with pytest.raises(ValueError, match="step_size"):
        S.SGLD(step_size=0, noise=0.1, steps=3)
    with pytest.raises(ValueError, match="inner_steps"):
        S.SGLD(step_size=0.1, noise=0.1, steps=3, inner_steps=0)
    with pytest.raises(ValueError, match="energy"):
        S.SGLD(step_size=0.1, noise=0.1, steps=3, energy="free")
    with pytest.raises(ValueError, match="momentum"):
        S.MomentumSGLD(momentum=1.5)
    with pytest.raises(TypeError, match="geometry"):
        S.TargetedPGD("L2", steps=3, step_size=0.1)
    with pytest.raises(ValueError, match="loss"):
        S.TargetedPGD(S.L2Ball(1.0), steps=3, step_size=0.1, loss="kl")
    with pytest.raises(ValueError, match="class_stats"):
        S.GaussianInit(None)
    with pytest.raises(ValueError, match="compact"):
        S.GaussianInit(small_stats.compact(3), covariance="full")
    with pytest.raises(ValueError, match="kind"):
        S.NoiseInit("perlin")
    with pytest.raises(ValueError, match="Contrast c"):
        S.Contrast(0)
    with pytest.raises(ValueError, match="lo < hi"):
        S.Clamp(1, 0)
    with pytest.raises(TypeError, match="DataInit"):
        S.DataInit([1, 2, 3])
    model10 = make_small_model()
    stats_wrong = S.class_stats(torch.rand(6, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="classes"):
        S.GaussianInit(stats_wrong)(model10, torch.arange(2))
