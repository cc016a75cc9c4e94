"""``ebmlens train --objective dat --init-from`` from the sources that hold other people's models:
``hf:`` (a Hugging Face cache built here, network blocked) and ``robustbench:`` (a zoo architecture
in a constructed model_dir). The run must start from the base's weights, record an architecture a
file may carry, and its weights must load back as ``file:`` into the same network."""

from __future__ import annotations

import json

import timm
import torch
from click.testing import CliRunner

import ebmlens
from ebmlens.cli import main
from tests.conftest import hf_put

from .conftest import write_tiny_npz

FAST = ["--objective", "dat", "--epochs", "1", "--batch-size", "8", "--max-train-images", "8", "--attack-steps", "1",
        "--eval-n", "2", "--eval-steps", "1", "--t-max", "1", "--auc-window", "1", "--grid-per-class", "1",
        "--grid-steps", "1", "--threads", "1", "--lr", "0.05"]


def _train(args):
    threads = torch.get_num_threads()
    try:  # --threads sets torch's process-wide count: restored for the next test
        return CliRunner().invoke(main, ["train", *args])
    finally:
        torch.set_num_threads(threads)


def _moved(base, out, x):
    """The fine-tuned run loads back as file:, started from the base's weights (a step away from them, not a
    fresh initialization) and moved (its logits differ)."""
    tuned = ebmlens.load_model(f"file:{out / 'model.safetensors'}")
    a_sd, b_sd = base.classifier.state_dict(), tuned.classifier.state_dict()
    diff = sum(float((a_sd[k].float() - b_sd[k].float()).norm() ** 2) for k in a_sd if a_sd[k].is_floating_point())
    norm = sum(float(a_sd[k].float().norm() ** 2) for k in a_sd if a_sd[k].is_floating_point())
    assert 0 < diff ** 0.5 < 0.1 * norm ** 0.5, (diff ** 0.5, norm ** 0.5)
    with torch.no_grad():
        a, b = base.logits(x), tuned.logits(x)
    assert a.shape == b.shape and not torch.allclose(a, b)
    return tuned


def test_dat_from_a_hugging_face_cache(offline_hub, tiny_spec, tmp_path):
    from safetensors.torch import save

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=4)
    cfg = {"architecture": "test_efficientnet", "num_classes": 4, "label_names": ["a", "b", "c", "d"],
           "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}}
    sd = save({k: v.contiguous() for k, v in net.state_dict().items()})
    hf_put(offline_hub, "lab/tiny", {"config.json": json.dumps(cfg).encode(), "model.safetensors": sd})
    neg = write_tiny_npz(tmp_path / "neg.npz", n_per_class=2, seed=9)
    out = tmp_path / "run"
    r = _train([*FAST, "--init-from", "hf:lab/tiny", "--negatives", f"npz:{neg}", "--data", tiny_spec,
                "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == "timm:test_efficientnet" and meta["base"] == "hf:lab/tiny"
    base = ebmlens.load_model("hf:lab/tiny")
    tuned = _moved(base, out, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    assert tuned.class_names == ["a", "b", "c", "d"] and tuned.mean.flatten().tolist() == [0.5] * 3
    # model_args a name cannot carry: one line naming the fix, before any training
    cfg["model_args"] = {"drop_rate": 0.5}
    hf_put(offline_hub, "lab/args", {"config.json": json.dumps(cfg).encode(), "model.safetensors": sd})
    r = _train([*FAST, "--init-from", "hf:lab/args", "--negatives", f"npz:{neg}", "--data", tiny_spec,
                "--out", str(tmp_path / "args")])
    assert r.exit_code == 2 and "drop_rate" in r.output and "--arch" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "args" / "model.json").exists()


def test_dat_from_a_robustbench_model_dir(tmp_path, monkeypatch):
    from ebmlens.models import robustbench as rb

    zoo = rb.import_zoo()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Andriushchenko2020Understanding"  # PreActResNet-18, CIFAR-10 Linf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = zoo[BenchmarkDataset("cifar10")][ThreatModel("Linf")][name]["model"]().eval()
    path = rb.weights_path(name, "cifar10", "Linf", tmp_path / "models")
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    monkeypatch.chdir(tmp_path)  # RobustBench's default model_dir is ./models
    spec = "npz:" + str(write_tiny_npz(tmp_path / "c10.npz", n_per_class=1, size=32, seed=3, classes=10))
    out = tmp_path / "run"
    r = _train([*FAST, "--init-from", f"robustbench:{name}", "--threat-model", "Linf", "--eps", "8/255",
                "--negatives", "stats:cifar10-l2-small", "--data", spec, "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == f"robustbench:{name}" and meta["base"] == f"robustbench:{name}"
    base = ebmlens.load_model(f"robustbench:{name}", threat_model="Linf")
    _moved(base, out, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))


def test_dat_from_timm_weights_in_the_hugging_face_cache(offline_hub, tmp_path):
    """``timm:NAME`` whose weights live on the Hub (read from the cache, never through timm's hub loader):
    timm's smallest ImageNet net at its 160 px, on 1,000 one-image classes."""
    import numpy as np
    from safetensors.torch import save

    name = "test_efficientnet.r160_in1k"
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False)
    cfg = {"architecture": "test_efficientnet", "num_classes": 1000, "pretrained_cfg": {}}
    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    hf_put(offline_hub, f"timm/{name}", {"config.json": json.dumps(cfg).encode(), "model.safetensors": weights})
    rng = np.random.default_rng(0)
    data = tmp_path / "in1k.npz"
    np.savez(data, images=rng.integers(0, 256, (1000, 160, 160, 3), dtype=np.uint8), labels=np.arange(1000),
             class_names=np.array([f"c{i}" for i in range(1000)]))
    out = tmp_path / "run"
    r = _train([*FAST, "--init-from", f"timm:{name}", "--negatives", f"npz:{data}", "--data", f"npz:{data}",
                "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == f"timm:{name}" and meta["base"] == f"timm:{name}"
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    _moved(ebmlens.load_model(f"timm:{name}"), out, x)
