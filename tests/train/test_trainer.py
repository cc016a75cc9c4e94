"""The trainer: every objective trains; resume after a kill equals an uninterrupted run; bad input."""

import math
from dataclasses import replace

import pytest
import torch

from ebmlens.train import TrainConfig, train


def _cfg(spec, out, **kw):
    base = dict(data=spec, out=str(out), arch="convnet-small", objective="pgd-at", eps=0.25, attack_steps=1,
                epochs=2, batch_size=16, lr=0.05, max_train_images=64, eval_n=16, eval_steps=1,
                checkpoint_every=100, buffer_size=32, sgld_steps=2, sgld_inner_steps=2, jem_init="uniform")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective", ["standard", "pgd-at", "trades", "weat-adv", "weat-nat", "robust-jem"])
def test_each_objective_reduces_the_loss(tiny_spec, tmp_path, objective):
    losses = []
    cfg = _cfg(tiny_spec, tmp_path / objective, objective=objective, epochs=3)
    res = train(cfg, progress=lambda r: losses.append(r["loss"]))
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    assert [m["epoch"] for m in res.epochs] == [1, 2, 3]
    assert 0 <= res.final["robust_acc"] <= res.final["clean_acc"] <= 1
    out = tmp_path / objective
    for name in ("last.pt", "epoch_001.pt", "epoch_003.pt", "metrics.json", "config.json", "model.safetensors", "model.json"):
        assert (out / name).exists(), name
    ck = torch.load(out / "epoch_002.pt", weights_only=True)
    assert ck["ebmlens_meta"]["objective"] == objective and ck["ebmlens_meta"]["epoch"] == 2
    last = torch.load(out / "last.pt", weights_only=True)
    if objective == "robust-jem":
        assert last["objective_state"].shape == (32, 3, 16, 16)
        assert 0 <= float(last["objective_state"].min()) and float(last["objective_state"].max()) <= 1
    else:
        assert last["objective_state"] is None


class _Kill(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("objective,kill_at", [("pgd-at", (1, 2)), ("pgd-at", (0, 4)), ("robust-jem", (1, 1))])
def test_resume_after_kill_equals_uninterrupted(tiny_spec, tmp_path, objective, kill_at):
    cfg = _cfg(tiny_spec, tmp_path / "full", objective=objective, checkpoint_every=1)
    full = train(cfg)

    def killer(r):
        if (r["epoch"], r["step"]) == kill_at:
            raise _Kill

    cut = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(_Kill):
        train(cut, progress=killer)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (kill_at[0], kill_at[1] - 1)  # checkpoint_every=1: the step before
    steps = []
    resumed = train(cut, resume=True, progress=lambda r: steps.append((r["epoch"], r["step"])))
    assert steps[0] == (kill_at[0], kill_at[1])  # continues at the step the kill interrupted
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
               for i in a["optimizer"]["state"])
    assert a["scheduler"] == b["scheduler"]
    if objective == "robust-jem":
        assert torch.equal(a["objective_state"], b["objective_state"])
    assert full.epochs == resumed.epochs  # accuracies, train loss (carried over the kill) and lr


def test_resume_refuses_other_settings(tiny_spec, tmp_path):
    cfg = _cfg(tiny_spec, tmp_path, epochs=2, objective="standard")
    train(cfg)
    with pytest.raises(ValueError, match="objective was 'standard'"):
        train(replace(cfg, objective="trades"), resume=True)


def test_bad_config():
    with pytest.raises(ValueError, match="did you mean pgd-at"):
        TrainConfig(data="x", out="y", objective="pgd_at")
    with pytest.raises(ValueError, match="did you mean weat-adv"):
        TrainConfig(data="x", out="y", objective="weat_adv")
    with pytest.raises(ValueError, match="did you mean resnet-small"):
        TrainConfig(data="x", out="y", arch="resnet-smal")
    for eps in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="eps must be > 0"):
            TrainConfig(data="x", out="y", eps=eps)
    with pytest.raises(ValueError, match="buffer_size 8 is smaller than batch_size 16"):
        TrainConfig(data="x", out="y", objective="robust-jem", buffer_size=8, batch_size=16)


def test_too_short_for_one_cycle(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match="--schedule cosine"):
        train(_cfg(tiny_spec, tmp_path, epochs=1))
    assert train(_cfg(tiny_spec, tmp_path / "cos", epochs=1, schedule="cosine", objective="standard")).final["epoch"] == 1


def test_init_follows_the_seed_and_leaves_global_rng_alone(tiny_spec, tmp_path):
    state = torch.get_rng_state()
    a = train(_cfg(tiny_spec, tmp_path / "a", objective="standard"))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state must not matter
    b = train(_cfg(tiny_spec, tmp_path / "b", objective="standard"))
    c = train(_cfg(tiny_spec, tmp_path / "c", objective="standard", seed=1))
    sd = {k: torch.load(tmp_path / k / "last.pt", weights_only=True)["state_dict"] for k in "abc"}
    assert all(torch.equal(sd["a"][k], sd["b"][k]) for k in sd["a"])
    assert not all(torch.equal(sd["a"][k], sd["c"][k]) for k in sd["a"])
    assert a.epochs == b.epochs


def test_missing_data_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(_cfg("npz:" + str(tmp_path / "nope.npz"), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unwritable_out(tiny_spec, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="not writable"):
        train(_cfg(tiny_spec, blocker / "run"))


def test_robust_jem_gaussian_init_from_training_images(tiny_spec, tmp_path, monkeypatch):
    from ebmlens.data import load_data
    from ebmlens.sampling import GaussianInit
    from ebmlens.train import objectives as O
    from ebmlens.train.trainer import _objective_kwargs, build_model

    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path))
    data = load_data(tiny_spec, "train")
    cfg = _cfg(tiny_spec, tmp_path / "run", objective="robust-jem", jem_init="gaussian")
    kw = _objective_kwargs(cfg, data, 64)
    assert isinstance(kw["init"], GaussianInit)
    assert (kw["gamma"], kw["reinit_freq"], kw["sgld"].steps, kw["sgld"].inner_steps) == (1.0, 0.05, 2, 2)
    model = build_model("convnet-small", 4, input_shape=(3, 16, 16))
    buf = O.init_replay_buffer(model, 256, init=kw["init"], generator=torch.Generator().manual_seed(0))
    # class Gaussians of the images, not uniform noise: each draw lies near one class mean
    x, y = data.tensor(), torch.as_tensor(data.labels)
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)

    def dist(b):
        return float(torch.cdist(b.flatten(1), means).min(1).values.mean())

    assert dist(buf) < 6.0 < 8.0 < dist(torch.rand(256, 3, 16, 16))
