"""Pipeline: the loop, traces, config, BatchNorm mode, unconditional labels, progress, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ebmlens import sampling as S

from .conftest import SMALL_K, SMALL_SHAPE, make_small_model


def test_trace_records_energies_after_init_and_every_stage(small_model, small_stats):
    pipe = S.Pipeline(S.GaussianInit(small_stats),
                      [S.TargetedPGD(S.L2Ball(1.0), steps=4, step_size=0.3, loss="joint"), S.Contrast(0.9), S.Clamp()],
                      records="all")
    y = torch.arange(8) % SMALL_K
    out = pipe(small_model, y, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, S.Samples) and out.images.shape == (8, *SMALL_SHAPE) and torch.equal(out.labels, y)
    assert isinstance(out.trace, tuple) and all(isinstance(r, S.StageRecord) for r in out.trace)
    assert [r.stage for r in out.trace] == ["GaussianInit", "TargetedPGD", "Contrast", "Clamp"]
    assert [r.index for r in out.trace] == [0, 1, 2, 3]
    assert [r.source for r in out.trace] == ["pass", "record", "record", "record"]  # the init's from PGD's step 0
    # the default keeps the init and the final point (the rest is followed by pixel maps only)
    short = dataclasses.replace(pipe, records="stages")(small_model, y, generator=torch.Generator().manual_seed(0))
    assert [(r.index, r.source) for r in short.trace] == [(0, "pass"), (3, "record")]
    assert torch.equal(short.trace[-1].joint_energy, out.trace[-1].joint_energy)
    with torch.no_grad():
        logits = small_model.logits(out.images)
    last = out.trace[-1]
    assert torch.allclose(last.joint_energy, -logits.gather(1, y[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(last.energy, -torch.logsumexp(logits, 1), atol=1e-5)
    assert float(out.trace[1].joint_energy.mean()) < float(out.trace[0].joint_energy.mean())
    assert out.trace[1].steps is None and "steps" not in out.trace[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.trace[1].seconds = 0.0
    # records read as the dicts they used to be
    assert out.trace[1]["joint_energy"] is out.trace[1].joint_energy and "energy" in out.trace[1]
    with pytest.raises(KeyError):
        out.trace[1]["steps"]
    # the one summary: run.json's "energy" section (population std over finite values)
    summ = out.summary()
    json.dumps(summ)
    assert [(r["index"], r["stage"]) for r in summ] == [(r.index, r.stage) for r in out.trace]
    j = out.trace[1].joint_energy.double()
    assert summ[1]["joint_energy"]["mean"] == pytest.approx(float(j.mean()), rel=1e-9)
    assert summ[1]["joint_energy"]["std"] == pytest.approx(float(j.std(unbiased=False)), rel=1e-9)
    assert summ[1]["energy"]["mean"] == pytest.approx(float(out.trace[1].energy.double().mean()), rel=1e-9)
    assert summ[1]["n"] == 8 and summ[1]["seconds"] == round(out.trace[1].seconds, 4)


def test_summary_skips_non_finite_values():
    r = S.StageRecord("X", 0, energy=torch.tensor([1.0, float("nan"), 3.0]),
                      joint_energy=torch.tensor([float("inf"), float("nan"), 5.0]), seconds=1.23456)
    (s,) = S.Samples(torch.zeros(3, 1, 1, 1), torch.zeros(3), trace=[r]).summary()
    assert s == {"index": 0, "stage": "X", "energy": {"mean": 2.0, "std": 1.0}, "n": 1,
                 "joint_energy": {"mean": 5.0, "std": 0.0}, "seconds": 1.2346, "source": "record"}
    empty = S.StageRecord("Y", 1, energy=torch.full((2,), float("nan")), joint_energy=torch.zeros(0), seconds=0.0)
    assert S.Samples(torch.zeros(2, 1, 1, 1), torch.zeros(2), trace=[empty]).summary()[0]["joint_energy"] == \
        {"mean": None, "std": None}


def test_trace_steps_counts_model_passes_once(small_model, small_stats):
    calls = {"n": 0}
    hook = small_model.classifier.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    pipe = S.Pipeline(S.NoiseInit(), [S.SGLD(step_size=0.01, noise=0.0, steps=5), S.Clamp()], trace_steps=True,
                      records="all")
    out = pipe(small_model, torch.arange(3), generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert calls["n"] == 5 + 2           # 5 gradient passes + a no-grad forward per point after a stage
    assert [r.source for r in out.trace] == ["pass", "record", "record"]
    assert out.trace[1].steps.shape == (5, 3)
    assert "steps" in out.trace[2] and out.trace[2].steps.numel() == 0   # Clamp reports no steps
    assert out.trace[0].steps is None    # the initializer takes no callback


@pytest.mark.parametrize("stage", [S.SGLD(step_size=0.05, noise=0.01, steps=3),
                                   S.SGLD(step_size=0.05, noise=0.0, steps=2, energy="marginal"),
                                   S.MomentumSGLD(eta=0.05, steps=3)])
def test_step_callback_hands_back_the_first_pass(small_model, stage):
    """The Stage protocol's callback: per gradient pass (step, value, logits=); at step 0 the logits are
    the stage input's, so they give the energies of the previous point's record pass."""
    seen = []
    y = torch.arange(6) % SMALL_K
    x0 = torch.rand(6, *SMALL_SHAPE, generator=torch.Generator().manual_seed(1))
    plain = stage(small_model, x0, y, generator=torch.Generator().manual_seed(2))
    traced = stage(small_model, x0, y, generator=torch.Generator().manual_seed(2),
                   callback=lambda t, v, *, logits=None: seen.append((t, v, logits)))
    assert torch.equal(plain, traced)    # the callback changes nothing
    assert [t for t, _, _ in seen] == list(range(stage.steps))
    t, value, logits = seen[0]
    assert logits.shape == (6, SMALL_K) and not logits.requires_grad
    with torch.no_grad():
        ref = small_model.logits(x0)
    assert torch.allclose(logits, ref, atol=1e-6)
    m = small_model
    record = m.joint_energy_from_logits(ref, y) if stage.energy == "joint" else m.energy_from_logits(ref)
    assert torch.allclose(value, record, atol=1e-6)
    # later steps see later iterates
    assert not torch.allclose(seen[-1][2], ref)


def test_trace_steps_with_a_stage_without_callback_teaches(small_model):
    def shift(model, x, y, *, generator=None):
        return (x + 0.1).clamp(0, 1)

    out = S.Pipeline(S.NoiseInit(), [shift])(small_model, torch.arange(2))  # no callback asked: fine
    assert [r.stage for r in out.trace] == ["NoiseInit", "shift"]
    with pytest.raises(TypeError, match="does not accept callback="):
        S.Pipeline(S.NoiseInit(), [shift], trace_steps=True)(small_model, torch.arange(2))


def test_contrast_is_the_affine_map_around_its_centre(small_stats):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g)
    y = torch.zeros(3, dtype=torch.long)
    m_img = x.mean(dim=(2, 3), keepdim=True)
    out = S.Contrast(0.5)(None, x, y)
    assert torch.allclose(out, m_img + 0.5 * (x - m_img), atol=1e-6)
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-6)   # keeps each image's colour
    assert torch.allclose(out.std(dim=(2, 3)), 0.5 * x.std(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(S.Contrast(2.0, center=0.5)(None, x, y), 0.5 + 2.0 * (x - 0.5), atol=1e-6)
    # "data": the data set's mean pixel per channel, prior-weighted over classes
    s = small_stats
    pix = (s.mean * s.prior.unsqueeze(1)).sum(0).view(*s.shape).mean(dim=(1, 2)).view(1, -1, 1, 1)
    assert torch.allclose(S.Contrast(0.8, center="data", stats=s)(None, x, y), pix + 0.8 * (x - pix), atol=1e-6)
    assert torch.allclose(S.Contrast(1.0)(None, x, y), x, atol=1e-7)
    assert torch.equal(x, torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)))  # not mutated


def test_clamp_clamps_outside_and_keeps_inside():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7]).view(1, 1, 1, 5)
    y = torch.zeros(1, dtype=torch.long)
    assert S.Clamp()(None, x, y).flatten().tolist() == pytest.approx([0.0, 0.0, 0.3, 1.0, 1.0])
    assert S.Clamp(0.2, 0.8)(None, x, y).flatten().tolist() == pytest.approx([0.2, 0.2, 0.3, 0.8, 0.8])
    inside = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    assert torch.equal(S.Clamp()(None, inside, y), inside)


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
    with pytest.raises(TypeError, match="progress must be a callback"):   # bars are the runner's
        pipe(small_model, torch.arange(2), progress=True)
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
