"""DAT's energy fine-tuning: the loss against a direct computation, the curriculum's exact rule, exact resume,
every model source, and the run folder's edges (an earlier run, a pickled or truncated last.pt)."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.energy import EnergyModel
from ebmlens.models.archs import ConvNetSmall
from ebmlens.train import TrainConfig, train
from ebmlens.train import objectives as O
from ebmlens.train._dat import new_state

from .conftest import write_tiny_npz


def _toy(k=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8), torch.nn.Tanh(), torch.nn.Linear(8, k))
    return EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=(3, 4, 4), num_classes=k)


def _direct_negatives(model, x, y, steps, a):
    """DAT's ascent written out: x <- clamp(x + a g/||g||, 0, 1), g = d f(x)[y] / dx."""
    x = x.clone()
    for _ in range(steps):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg).gather(1, y.view(-1, 1)).sum(), xg)
        x = (x + a * g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10)).clamp(0, 1)
    return x


def test_loss_equals_a_direct_computation():
    model = _toy()
    g = torch.Generator().manual_seed(1)
    x, xn, xa = (torch.rand(6, 3, 4, 4, generator=g) for _ in range(3))
    y, ya = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 0, 0, 1])
    terms = O.dat_loss(model, x, xn, y, xa, ya, at_weight=0.5)
    s_real, s_neg = torch.logsumexp(model(x), 1), torch.logsumexp(model(xn), 1)
    bce = -(torch.log(torch.sigmoid(s_real)).sum() + torch.log(1 - torch.sigmoid(s_neg)).sum()) / 12
    ce = -torch.log_softmax(model(xa), 1)[torch.arange(6), ya].mean()
    assert float(terms.loss.detach()) == pytest.approx(float((bce + 0.5 * ce).detach()), rel=1e-5)
    assert terms.bce == pytest.approx(float(bce.detach()), rel=1e-5)
    assert terms.ce == pytest.approx(float(ce.detach()), rel=1e-5)
    fr, fn = model(x)[torch.arange(6), y], model(xn)[torch.arange(6), y]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in fr for b in fn]
    assert terms.auc == pytest.approx(sum(pairs) / 36)
    terms.loss.backward()  # a graph to the parameters
    assert all(p.grad is not None for p in model.parameters())


def test_objective_moves_seeds_by_T_steps_and_splits_the_batch():
    model = _toy()
    seeds = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    obj = O.DAT(negatives=lambda m, y, generator=None: seeds[:len(y)].clone(), step_size=0.1, at_weight=1.0)
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    attack = O.AttackConfig("L2", 0.5, 2, 0.1)
    state = {**obj.init_state(model), "T": 3}
    loss, new = obj(model, x, y, attack, state, generator=torch.Generator().manual_seed(0))
    xn = _direct_negatives(model, seeds[:4], y[:4], 3, 0.1)
    x2 = x[4:].clone()  # AT: L2 PGD, no random start, step 0.1
    for _ in range(2):
        xg = x2.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y[4:], reduction="sum"), xg)
        d = x2 + 0.1 * g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10) - x[4:]
        d = d * torch.clamp(0.5 / (d.flatten(1).norm(dim=1) + 1e-12), max=1.0).view(-1, 1, 1, 1)
        x2 = (x[4:] + d).clamp(0, 1)
    direct = O.dat_loss(model, x[:4], xn, y[:4], x2, y[4:]).loss
    assert float(loss) == pytest.approx(float(direct), rel=1e-4)
    assert new["T"] == 3 and len(new["window"]) == 1 and new["sums"]["n"] == 1


def _feed(aucs, window=3, threshold=0.8, t_max=50):
    state, ts = new_state(0), []
    for a in aucs:
        state = O.curriculum_update(state, a, window=window, threshold=threshold, t_max=t_max)
        ts.append(state["T"])
    return ts, state


def test_curriculum_raises_T_exactly_when_a_full_window_passes():
    ts, _ = _feed([0.9, 0.9])  # window not full: no rise, however high
    assert ts == [0, 0]
    ts, st = _feed([0.9, 0.9, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9])
    # full at step 3 (mean 0.9): T=1, window emptied; 0.9, 0.5, 0.9 (0.767) and 0.5, 0.9, 0.9 stay; then 0.9 x 3
    assert ts == [0, 0, 1, 1, 1, 1, 1, 2]
    assert st["levels"] == [3, 8] and st["window"] == []
    ts, _ = _feed([0.8] * 3)  # the threshold itself passes
    assert ts == [0, 0, 1]
    ts, _ = _feed([0.79] * 9)
    assert ts == [0] * 9
    ts, _ = _feed([1.0] * 12, window=2, t_max=3)  # capped at t_max
    assert ts == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3]


def test_dat_validates_its_settings():
    with pytest.raises(ValueError, match="negatives"):
        O.DAT()
    with pytest.raises(ValueError, match="window"):
        O.DAT(negatives="stats:cifar10-l2-small", window=0)
    with pytest.raises(ValueError, match="threshold"):
        O.DAT(negatives="stats:cifar10-l2-small", threshold=1.5)
    with pytest.raises(ValueError, match="t_start"):
        O.DAT(negatives="stats:cifar10-l2-small", t_start=5, t_max=3)
    model = _toy()
    obj = O.DAT(negatives=lambda m, y, generator=None: torch.rand(len(y), 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        obj.seeds(model, torch.zeros(2, dtype=torch.long), None)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny base checkpoint (convnet-small, 4 classes, 16x16) with its metadata, and other images as negatives."""
    d = tmp_path_factory.mktemp("datbase")
    torch.manual_seed(0)
    meta = {"arch": "convnet-small", "num_classes": 4, "class_names": ["a", "b", "c", "d"], "mean": [0.5],
            "std": [0.25], "input_shape": [3, 16, 16]}
    torch.save({"state_dict": ConvNetSmall(num_classes=4).state_dict(), "ebmlens_meta": meta}, d / "base.pt")
    neg = write_tiny_npz(d / "neg.npz", n_per_class=8, seed=7)
    return f"file:{d / 'base.pt'}", f"npz:{neg}"


def _dat_cfg(spec, out, base, neg, **kw):
    obj = O.DAT(negatives=neg, window=2, threshold=0.01, t_max=3, grid_steps=2)
    d = dict(data=spec, out=str(out), objective=obj, init_from=base, eps=0.25, attack_steps=1, epochs=2,
             batch_size=16, lr=0.01, schedule="constant", ema=0.9, max_train_images=48, eval_n=4, eval_steps=1,
             checkpoint_every=1, log_every=2, grid_per_class=1)
    d.update(kw)
    return TrainConfig(**d)


class _Kill(KeyboardInterrupt):
    pass


def test_resume_after_kill_is_exact(tiny_spec, tiny_base, tmp_path):
    cfg = _dat_cfg(tiny_spec, tmp_path / "full", *tiny_base)
    full = train(cfg)

    def killer(r):
        if (r["epoch"], r["step"]) == (1, 2):
            raise _Kill

    cut = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(_Kill):
        train(cut, progress=killer)
    steps = []
    resumed = train(cut, resume=True, progress=lambda r: steps.append((r["epoch"], r["step"])))
    assert steps == [(1, 2), (1, 3)]  # nothing repeated, nothing skipped
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("full", "cut"))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"])
    assert a["ema"]["n"] == b["ema"]["n"] == 6
    assert a["objective_state"] == b["objective_state"]
    assert a["objective_state"]["T"] == 3  # the curriculum moved during the run (threshold 0.01, window 2)
    assert full.epochs == resumed.epochs
    rows = json.loads((tmp_path / "full" / "intervals.json").read_text())
    assert rows == json.loads((tmp_path / "cut" / "intervals.json").read_text())
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[0]["T"] == 1 and rows[0]["batches"] == 2
    assert {"bce", "ce", "auc", "clean_acc", "robust_acc", "grid"} <= set(rows[0])
    assert (tmp_path / "cut" / rows[2]["grid"]).read_bytes() == (tmp_path / "full" / rows[2]["grid"]).read_bytes()


def test_bn_frozen_ema_exported_and_base_recorded(tiny_spec, tiny_base, tmp_path):
    import ebmlens

    cfg = _dat_cfg(tiny_spec, tmp_path / "r", *tiny_base, epochs=1, log_every=None)
    train(cfg)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    base = torch.load(tiny_base[0][5:], weights_only=True)["state_dict"]
    for k in base:  # BatchNorm's running statistics never move (the model stays in eval mode)
        if "running_" in k:
            assert torch.equal(last["state_dict"][k], base[k]), k
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert (meta["base"], meta["arch"], meta["ema"]) == (tiny_base[0], "convnet-small", 0.9)
    m = ebmlens.load_model(f"file:{tmp_path / 'r' / 'epoch_001.pt'}")  # no --arch, no trust needed
    shadow = last["ema"]["shadow"]
    assert all(torch.equal(m.classifier.state_dict()[k], shadow[k]) for k in shadow)  # the EMA is what ships
    assert not all(torch.equal(last["state_dict"][k], shadow[k]) for k in shadow)
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.equal(exported[k], shadow[k]) for k in shadow)


def _run(args):
    return CliRunner().invoke(main, ["train", *args])


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_cli_dat_from_the_bundled_model(tmp_path):
    spec = "npz:" + str(write_tiny_npz(tmp_path / "c10.npz", n_per_class=4, size=32, seed=3, classes=10))
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:  # --threads sets torch's process-wide count: restored for the next test
        r = _run(["--objective", "dat", "--init-from", "ebmlens:cifar10-l2-small", "--negatives",
                  "stats:cifar10-l2-small", "--data", spec, "--out", str(out), "--batch-size", "8", "--epochs", "1",
                  "--max-train-images", "16", "--attack-steps", "1", "--eval-n", "4", "--eval-steps", "1",
                  "--log-every", "2", "--grid-steps", "1", "--grid-per-class", "1", "--t-max", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["objective"], cfg["arch"], cfg["init_from"], cfg["lr"], cfg["schedule"], cfg["ema"],
            cfg["attack_step_size"]) == ("dat", "ebmlens:cifar10-l2-small", "ebmlens:cifar10-l2-small", 1e-3,
                                         "constant", 0.999, 0.1)
    assert cfg["objective_params"]["negatives"] == "stats:cifar10-l2-small"
    assert (out / "grids" / "step_0000002.png").exists()
    _one_line_exit_2(_run(["--objective", "dat", "--negatives", "stats:cifar10-l2-small", "--data", spec,
                           "--out", str(tmp_path / "x")]))  # no --init-from
    _one_line_exit_2(_run(["--objective", "dat", "--init-from", "ebmlens:cifar10-l2-small", "--data", spec,
                           "--out", str(tmp_path / "y")]))  # no --negatives


def test_init_from_a_model_of_another_size_is_refused(tiny_spec, tmp_path):
    cfg = TrainConfig(data=tiny_spec, out=str(tmp_path / "r"), objective=O.DAT(negatives="stats:cifar10-l2-small"),
                      init_from="ebmlens:cifar10-l2-small")
    with pytest.raises(ValueError, match=r"shape \(3, 32, 32\).*\(3, 16, 16\)"):
        train(cfg)


TINY = ["--arch", "convnet-small", "--eps", "0.25", "--attack-steps", "1", "--epochs", "1", "--batch-size", "16",
        "--max-train-images", "32", "--eval-n", "8", "--eval-steps", "1"]


def test_an_earlier_run_is_never_replaced_without_resume(tiny_spec, tmp_path):
    out = tmp_path / "run"
    assert _run(["--data", tiny_spec, "--out", str(out), *TINY]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = _run(["--data", tiny_spec, "--out", str(out), *TINY, "--seed", "1"])
    _one_line_exit_2(r)
    assert "--resume" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("damage", ["pickled", "truncated", "foreign"])
def test_resume_from_a_bad_last_pt_is_one_line(tiny_spec, tmp_path, damage):
    out = tmp_path / "run"
    assert _run(["--data", tiny_spec, "--out", str(out), *TINY]).exit_code == 0
    last = out / "last.pt"
    if damage == "pickled":
        torch.save({"state_dict": {}, "x": _Kill}, last)  # a class object: needs pickle
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    else:
        torch.save({"weights": torch.zeros(2)}, last)
    r = _run(["--data", tiny_spec, "--out", str(out), *TINY, "--resume"])
    _one_line_exit_2(r)
    assert str(last) in r.output


def test_init_from_a_file_that_names_no_safe_architecture(tiny_spec, tiny_base, tmp_path):
    sd = torch.load(tiny_base[0][5:], weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": sd}, bare)  # no metadata: the run could not name its architecture
    obj = O.DAT(negatives=tiny_base[1])
    with pytest.raises(ValueError, match="pass --arch"):
        train(TrainConfig(data=tiny_spec, out=str(tmp_path / "a"), objective=obj, init_from=f"file:{bare}"))
    cfg = _dat_cfg(tiny_spec, tmp_path / "b", f"file:{bare}", tiny_base[1], arch="convnet-small", epochs=1,
                   log_every=None)
    res = train(cfg)  # the user's --arch names it
    assert json.loads((tmp_path / "b" / "model.json").read_text())["arch"] == "convnet-small"
    assert res.final["lr"] == pytest.approx(0.01)  # constant schedule
