"""The trainer: every objective trains; resume after a kill equals an uninterrupted run; bad input."""

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch

from ebmlens.train import TrainConfig, train
from ebmlens.train import objectives as O

TINY_JEM = O.RobustJEM(buffer_size=32, sgld_steps=2, sgld_inner_steps=2, init="uniform")


def _cfg(spec, out, **kw):
    base = dict(data=spec, out=str(out), arch="convnet-small", objective="pgd-at", eps=0.25, attack_steps=1,
                epochs=2, batch_size=16, lr=0.05, max_train_images=64, eval_n=16, eval_steps=1, checkpoint_every=100)
    base.update(kw)
    if base["objective"] == "robust-jem":
        base["objective"] = TINY_JEM
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
    for name in ("last.pt", "epoch_001.pt", "epoch_003.pt", "metrics.json", "config.json", "model.safetensors",
                 "model.json"):
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
        TrainConfig(data="x", out="y", objective=O.RobustJEM(buffer_size=8), batch_size=16)
    with pytest.raises(ValueError, match="pass it to the objective object"):
        TrainConfig(data="x", out="y", objective=O.Trades(3.0), beta=6.0)
    with pytest.raises(TypeError, match="objective must be a name"):
        TrainConfig(data="x", out="y", objective=42)


def test_too_short_for_one_cycle_falls_back_to_cosine(tiny_spec, tmp_path):
    """One-cycle cannot warm up in so few steps: the run uses cosine, says so, and equals a cosine run."""
    a = train(_cfg(tiny_spec, tmp_path / "a", epochs=1, objective="standard"))
    b = train(_cfg(tiny_spec, tmp_path / "b", epochs=1, schedule="cosine", objective="standard"))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["schedule"] == "cosine" and any("cosine" in n for n in cfg["notes"])
    assert a.final["clean_acc"] == b.final["clean_acc"] and a.final["train_loss"] == b.final["train_loss"]


def test_init_follows_the_seed_and_leaves_global_rng_alone(tiny_spec, tmp_path):
    state = torch.get_rng_state()
    a = train(_cfg(tiny_spec, tmp_path / "a", objective="standard"))
    assert torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # another global state must not matter
        b = train(_cfg(tiny_spec, tmp_path / "b", objective="standard"))
    train(_cfg(tiny_spec, tmp_path / "c", objective="standard", seed=1))
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
    from ebmlens.train.trainer import build_model

    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path))
    data = load_data(tiny_spec, "train")
    with pytest.raises(ValueError, match="for_data"):
        O.RobustJEM().initializer()
    objective = O.RobustJEM(sgld_steps=2, sgld_inner_steps=2).for_data(data, 64)
    assert isinstance(objective.initializer(), GaussianInit)
    kw = objective.kwargs()
    assert (kw["gamma"], kw["reinit_freq"], kw["sgld"].steps, kw["sgld"].inner_steps) == (1.0, 0.05, 2, 2)
    model = build_model("convnet-small", 4, input_shape=(3, 16, 16))
    buf = replace(objective, buffer_size=256).init_state(model, generator=torch.Generator().manual_seed(0))
    # class Gaussians of the images, not uniform noise: each draw lies near one class mean
    x, y = data.tensor(), torch.as_tensor(data.labels)
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)

    def dist(b):
        return float(torch.cdist(b.flatten(1), means).min(1).values.mean())

    assert dist(buf) < 6.0 < 8.0 < dist(torch.rand(256, 3, 16, 16))


# the flat config.json of the trainer before objectives were objects (robust-jem fields included)
OLD_KEYS = ["data", "out", "arch", "objective", "threat_model", "eps", "attack_steps", "attack_step_size", "epochs",
            "batch_size", "lr", "momentum", "weight_decay", "schedule", "pct_start", "beta", "seed", "device", "amp",
            "channels_last", "eval_n", "eval_steps", "checkpoint_every", "max_train_images", "mean", "std",
            "buffer_size", "reinit_freq", "gamma", "sgld_steps", "sgld_inner_steps", "sgld_step_size", "sgld_noise",
            "jem_init"]


@pytest.mark.parametrize("name,cls", [("standard", O.Standard), ("pgd-at", O.PGDAT), ("trades", O.Trades),
                                      ("weat-adv", O.WeatAdv), ("weat-nat", O.WeatNat), ("robust-jem", O.RobustJEM)])
def test_names_map_onto_objects_and_the_json_keeps_its_keys(name, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name (and beta) is not deprecated; only the robust-jem fields are
        cfg = TrainConfig(data="x", out="y", objective=name, beta=3.0)
    assert type(cfg.objective) is cls and cfg.beta is None
    assert getattr(cfg.objective, "beta", 3.0) == 3.0
    d = cfg.to_dict()
    assert set(OLD_KEYS) <= set(d) and d["objective"] == name  # every key of a config.json of before
    assert d["beta"] == (3.0 if name in ("trades", "weat-adv", "weat-nat") else 6.0)
    assert (d["buffer_size"], d["gamma"], d["jem_init"]) == (10000, 1.0, "gaussian")
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert TrainConfig(data="x", out="y", objective=cls()) == TrainConfig(data="x", out="y", objective=name)


def test_robust_jem_settings_live_on_the_objective_and_old_json_keys_still_load():
    with pytest.raises(TypeError, match="buffer_size"):  # the deprecated TrainConfig fields are gone
        TrainConfig(data="x", out="y", objective="robust-jem", buffer_size=64)
    jem = O.RobustJEM(buffer_size=64, gamma=0.5, init="uniform", sgld_steps=3)
    cfg = TrainConfig(data="x", out="y", objective=jem, batch_size=16)
    d = cfg.to_dict()
    assert (d["buffer_size"], d["gamma"], d["jem_init"], d["sgld_steps"]) == (64, 0.5, "uniform", 3)
    assert d["objective_params"]["buffer_size"] == 64
    flat = {k: v for k, v in d.items() if k not in ("objective_params", "beta")}  # a config.json of before
    assert TrainConfig.from_dict(flat).objective == jem


def test_old_config_json_and_the_bundled_training_config_load():
    from ebmlens.models.bundled import bundled_dir

    configs = [(p, json.loads(p.read_text()).get("training_config")) for p in sorted(bundled_dir().glob("*.json"))]
    assert any(old for _, old in configs)
    for path, old in configs:
        if not old:
            continue
        cfg = TrainConfig.from_dict(old)
        if old["objective"] == "pgd-at":
            assert type(cfg.objective) is O.PGDAT
        else:
            assert cfg.objective_name == old["objective"]
        new = cfg.to_dict()
        assert all(new[k] == v for k, v in old.items()), path.name  # same keys, same values (and more keys)
    old = {k: v for k, v in _cfg("npz:x", "y").to_dict().items() if k != "objective_params"}
    old.update(objective="robust-jem", buffer_size=48, jem_init="uniform", gamma=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = TrainConfig.from_dict(old)
    assert cfg.objective == O.RobustJEM(buffer_size=48, init="uniform", gamma=0.25)


def test_resume_from_a_checkpoint_of_the_previous_trainer(tiny_spec, tmp_path):
    cfg = _cfg(tiny_spec, tmp_path / "run", objective="robust-jem", epochs=1, schedule="cosine", checkpoint_every=1)

    def killer(r):
        if r["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=killer)
    last = tmp_path / "run" / "last.pt"
    ck = torch.load(last, weights_only=True)
    # what the previous trainer wrote: asdict(TrainConfig) with the flat robust-jem fields, no objective_params
    ck["config"] = {k: v for k, v in ck["config"].items() if k != "objective_params"}
    torch.save(ck, last)
    steps = []
    res = train(cfg, resume=True, progress=lambda r: steps.append(r["step"]))
    assert steps == [3, 4] and res.final["epoch"] == 1
    with pytest.raises(ValueError, match="buffer_size was 32"):
        train(replace(cfg, objective=replace(TINY_JEM, buffer_size=48)), resume=True)


def test_a_custom_objective_object_needs_no_trainer_edit(tiny_spec, tmp_path):
    calls = []

    class CountingCE:
        def init_state(self, model, *, generator=None, device=None):
            return torch.zeros(())

        def __call__(self, model, x, y, attack, state, *, generator=None):
            calls.append(int(state))
            return torch.nn.functional.cross_entropy(model.logits(x), y), state + 1

    res = train(_cfg(tiny_spec, tmp_path, objective=CountingCE(), epochs=1, schedule="cosine"))
    assert calls == [0, 1, 2, 3] and res.final["epoch"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["objective"] == "CountingCE"
