"""The model front door: registry, spec parsing, ``file:`` checkpoints in every layout, bad
checkpoints, the bundled-model source, and normalization_check."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ebmlens
from ebmlens.energy import EnergyModel
from ebmlens.models import bundled, normalization_check, parse_model_spec, register_source
from ebmlens.models.archs import ConvNetSmall

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _net(seed: int = 0, k: int = 10) -> ConvNetSmall:
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's global generator is untouched
        torch.manual_seed(seed)
        net = ConvNetSmall(num_classes=k, widths=(16, 32, 64, 64)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial BN buffers, so that missing buffers would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return net


def _ref(net, x, mean=0.5, std=0.25):
    with torch.no_grad():
        return net((x - mean) / std)


# ---------------------------------------------------------------- registry and specs
def test_register_custom_source_roundtrip():
    def load_mine(name, scale=1.0):
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        return EnergyModel(net, num_classes=10, name=f"{name}x{scale}")

    register_source("mine-test", load_mine, lambda: ["linear"], overwrite=True)
    m = ebmlens.load_model("mine-test:linear", scale=2.0)
    assert m.source == "mine-test" and m.name == "linearx2.0" and m.logits(X).shape == (3, 10)
    assert ebmlens.list_models("mine-test") == ["linear"]
    with pytest.raises(ValueError, match="already registered"):
        register_source("mine-test", load_mine)
    with pytest.raises(ValueError, match="source name"):
        register_source("has space", load_mine)
    with pytest.raises(TypeError, match="callable"):
        register_source("bad-loader", "not callable")  # type: ignore[arg-type]
    register_source("no-lister-test", load_mine, overwrite=True)
    with pytest.raises(ValueError, match="cannot list"):
        ebmlens.list_models("no-lister-test")
    register_source("wrong-type-test", lambda name: nn.Linear(2, 2), overwrite=True)
    with pytest.raises(TypeError, match="not an EnergyModel"):
        ebmlens.load_model("wrong-type-test:x")


def test_spec_errors_name_close_matches(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model source 'robustbnch'; did you mean 'robustbench'"):
        ebmlens.load_model("robustbnch:Carmon2019Unlabeled")
    with pytest.raises(ValueError, match="has no source"):
        ebmlens.load_model("cifar10-l2-small")
    with pytest.raises(ValueError, match="names no model"):
        ebmlens.load_model("ebmlens:")
    with pytest.raises(TypeError, match="model spec must be a string"):
        ebmlens.load_model(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model source 'nope'.*Choices: ebmlens, file"):
        ebmlens.list_models("nope")
    p = tmp_path / "w.pt"
    p.write_bytes(b"x")
    assert parse_model_spec(str(p)) == ("file", str(p))
    assert parse_model_spec("timm:resnet18.a1_in1k") == ("timm", "resnet18.a1_in1k")


def test_energy_model_passthrough(tiny_model):
    assert ebmlens.load_model(tiny_model) is tiny_model
    with pytest.raises(TypeError, match="options only apply"):
        ebmlens.load_model(tiny_model, arch="x")


# ---------------------------------------------------------------- file:
def test_trainer_checkpoint_loads_without_arch(tmp_path):
    net = _net(1)
    meta = {"arch": "convnet-small", "num_classes": 10, "class_names": [f"k{i}" for i in range(10)],
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_shape": [3, 32, 32], "threat_model": "L2", "eps": 0.5}
    p = tmp_path / "epoch_003.pt"
    # ConvNetSmall's default widths differ from _net's; the trainer records its own arch, so build it the same
    net = ConvNetSmall(num_classes=10).eval()
    torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, p)
    m = ebmlens.load_model(f"file:{p}")
    assert (m.source, m.threat_model, m.class_names[1]) == ("file", "L2", "k1")
    assert torch.allclose(m.logits(X), _ref(net, X), atol=1e-6)
    assert torch.allclose(m.energy(X), -torch.logsumexp(_ref(net, X), 1), atol=1e-5)
    assert ebmlens.load_model(str(p)).name == str(p)  # a bare path means file:


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "dataparallel", "safetensors"])
def test_file_layouts_with_factory(tmp_path, layout):
    net = _net(2)
    sd = net.state_dict()
    p = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "plain":
        torch.save(sd, p)
    elif layout == "state_dict":
        torch.save({"state_dict": sd, "epoch": 3}, p)
    elif layout == "model":
        torch.save({"model": sd}, p)
    elif layout == "dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, p)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    factory = lambda num_classes: ConvNetSmall(num_classes=num_classes, widths=(16, 32, 64, 64))  # noqa: E731
    m = ebmlens.load_model(f"file:{p}", arch=factory, mean=(0.5,), std=(0.25,))
    assert m.num_classes == 10  # inferred from one forward pass
    assert torch.allclose(m.logits(X), _ref(net, X), atol=1e-6)


def test_file_arch_by_module_path(tmp_path):
    net = ConvNetSmall(num_classes=4).eval()
    p = tmp_path / "w.pt"
    torch.save(net.state_dict(), p)
    m = ebmlens.load_model(f"file:{p}", arch="ebmlens.models.archs:ConvNetSmall", num_classes=4,
                           class_names=list("abcd"), input_shape=(3, 32, 32))
    assert m.class_names == ["a", "b", "c", "d"] and torch.allclose(m.logits(X), _ref(net, X, 0.0, 1.0), atol=1e-6)


def test_file_errors_teach(tmp_path):
    net = _net(3)
    p = tmp_path / "bare.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(ValueError, match="pass arch="):
        ebmlens.load_model(f"file:{p}")
    with pytest.raises(ValueError, match="do not fit the architecture ResNetSmall"):
        ebmlens.load_model(f"file:{p}", arch="resnet-small")
    with pytest.raises(ValueError, match="unknown arch 'convnet-smal'; did you mean convnet-small"):
        ebmlens.load_model(f"file:{p}", arch="convnet-smal")
    with pytest.raises(ValueError, match="no callable 'Nope'"):
        ebmlens.load_model(f"file:{p}", arch="ebmlens.models.archs:Nope")


def test_missing_empty_truncated_html_checkpoints(tmp_path):
    missing = tmp_path / "nothere.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist"):
        ebmlens.load_model(f"file:{missing}", arch="convnet-small")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt' is empty"):
        ebmlens.load_model(f"file:{empty}", arch="convnet-small")
    html = tmp_path / "gdrive.pt"
    html.write_bytes(b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(ValueError, match="gdrive.pt' is an HTML page"):
        ebmlens.load_model(f"file:{html}", arch="convnet-small")
    html2 = tmp_path / "page.pt"
    html2.write_bytes(b"\n  <html><body>quota exceeded</body></html>")
    with pytest.raises(ValueError, match="HTML page"):
        ebmlens.load_model(f"file:{html2}", arch="convnet-small")
    full = tmp_path / "full.pt"
    torch.save(ConvNetSmall().state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pt' is corrupt or not a checkpoint"):
        ebmlens.load_model(f"file:{cut}", arch="convnet-small")
    bad_st = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(1000)}, str(bad_st))
    bad_st.write_bytes(bad_st.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or not a checkpoint: not a readable safetensors file"):
        ebmlens.load_model(f"file:{bad_st}", arch="convnet-small")
    noise = tmp_path / "noise.pt"  # random bytes: corrupt, not "pickled objects, pass --trust-checkpoint"
    noise.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(ValueError, match="noise.pt' is corrupt or not a checkpoint") as e:
        ebmlens.load_model(f"file:{noise}", arch="convnet-small")
    assert "trust" not in str(e.value)


def test_pickled_objects_need_trust(tmp_path):
    net = ConvNetSmall().eval()
    p = tmp_path / "pickled.pt"
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        ebmlens.load_model(f"file:{p}", arch="convnet-small")
    m = ebmlens.load_model(f"file:{p}", arch="convnet-small", trust_checkpoint=True)
    assert torch.allclose(m.logits(X), _ref(net, X, 0.0, 1.0), atol=1e-6)


# ---------------------------------------------------------------- ebmlens: (bundled)
def _bundle(folder, name, net, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()},
              str(folder / f"{name}.safetensors"))
    meta = {"arch": "convnet-small", "num_classes": 10, "class_names": [f"c{i}" for i in range(10)],
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_shape": [3, 32, 32],
            "threat_model": "L2", "eps": 0.5, "dataset": "cifar10", "card": {"clean_acc": 0.5}, **extra}
    (folder / f"{name}.json").write_text(json.dumps(meta))


def test_bundled_source(tmp_path, monkeypatch):
    net = ConvNetSmall(num_classes=10).eval()
    _bundle(tmp_path, "toy-l2", net)
    (tmp_path / "orphan.json").write_text("{}")  # no weights: not listed
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    assert ebmlens.list_models("ebmlens") == ["toy-l2"]
    m = ebmlens.load_model("ebmlens:toy-l2")
    assert (m.source, m.name, m.dataset, m.threat_model) == ("ebmlens", "toy-l2", "cifar10", "L2")
    assert all(p.dtype == torch.float32 for p in m.parameters())
    half = ConvNetSmall(num_classes=10).eval()
    half.load_state_dict({k: (v.half().float() if v.is_floating_point() else v) for k, v in net.state_dict().items()})
    assert torch.allclose(m.logits(X), _ref(half, X), atol=1e-5)
    assert bundled.model_card("toy-l2") == {"clean_acc": 0.5}
    with pytest.raises(ValueError, match="unknown bundled model 'toy-l3'; did you mean 'toy-l2'"):
        ebmlens.load_model("ebmlens:toy-l3")
    assert "ebmlens:toy-l2" in ebmlens.list_models()
    assert bundled.DEFAULT_MODEL == "ebmlens:cifar10-l2-small"


def test_bundled_dir_from_env_and_bad_meta(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED_DIR", None)
    monkeypatch.setenv("EBMLENS_BUNDLED_DIR", str(tmp_path))
    assert ebmlens.list_models("ebmlens") == []
    with pytest.raises(ValueError, match="No bundled models were found"):
        ebmlens.load_model("ebmlens:cifar10-l2-small")
    _bundle(tmp_path, "broken", ConvNetSmall(num_classes=10))
    (tmp_path / "broken.json").write_text(json.dumps({"arch": "convnet-small"}))
    with pytest.raises(ValueError, match="lacks num_classes"):
        ebmlens.load_model("ebmlens:broken")


# ---------------------------------------------------------------- normalization_check
class Brightness(nn.Module):
    """Class 1 iff the normalized image is brighter than 0 on average (expects (x - 0.5) / 0.25)."""

    def forward(self, z):
        s = z.mean(dim=(1, 2, 3))
        return torch.stack([-s, s], 1) * 10


def _brightness_batch(n=200):
    v = torch.linspace(0.01, 0.99, n)
    return v.view(-1, 1, 1, 1).expand(n, 3, 8, 8).contiguous(), (v > 0.5).long()


def test_normalization_check_passes_when_configured_right():
    x, y = _brightness_batch()
    m = EnergyModel(Brightness(), mean=(0.5,), std=(0.25,), input_shape=(3, 8, 8), num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = normalization_check(m, x, y, expected_accuracy=0.99)
    assert r.ok and r.configured == 1.0 and r.none == pytest.approx(0.5, abs=0.01)
    assert r.doubled < 0.95 and r.n == 200


def test_normalization_check_warns_on_missing_normalization():
    x, y = _brightness_batch()
    m = EnergyModel(Brightness(), input_shape=(3, 8, 8), num_classes=2)  # forgot mean/std
    with pytest.warns(UserWarning, match="normalization"):
        r = normalization_check(m, x, y)
    assert not r.ok and r.configured == pytest.approx(0.5, abs=0.01) and r.doubled > 0.9
    m2 = EnergyModel(Brightness(), mean=(0.5,), std=(0.25,), input_shape=(3, 8, 8), num_classes=2)
    with pytest.warns(UserWarning, match="far below the expected"):
        normalization_check(m2, x, 1 - y, expected_accuracy=0.9, margin=-1.0)


def test_normalization_check_bad_input(tiny_model):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="class index 12"):
        normalization_check(tiny_model, x, torch.tensor([0, 1, 2, 12]))
    with pytest.raises(TypeError, match="float tensor"):
        normalization_check(tiny_model, (x * 255).byte(), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="expected_accuracy"):
        normalization_check(tiny_model, x, torch.tensor([0, 1, 2, 3]), expected_accuracy=85)
    with pytest.raises(TypeError, match="EnergyModel"):
        normalization_check(nn.Linear(2, 2), x, torch.tensor([0, 1, 2, 3]))  # type: ignore[arg-type]


def test_normalization_check_on_the_robust_model(robust_model, cifar_test):
    idx = cifar_test.strided(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = normalization_check(robust_model, cifar_test.tensor(idx), cifar_test.label_tensor(idx))
    assert r.ok and r.configured > max(r.none, r.doubled) + 0.1


def test_resolve_model_routes_each_option_to_the_sources_that_take_it(tmp_path, tiny_model):
    from ebmlens.models import resolve_model

    assert resolve_model(tiny_model) is tiny_model
    # the CLI hands over every option it has: the bundled loader takes none of these, and gets none
    m = resolve_model("ebmlens:cifar10-l2-small", arch="convnet-small", model_dir="models", dataset="cifar10",
                      threat_model="L2", trust_checkpoint=True)
    assert m.name == "cifar10-l2-small"
    # a file: checkpoint gets arch (without it, the bare state_dict cannot be loaded)
    net = ConvNetSmall(num_classes=4)
    p = tmp_path / "w.pt"
    torch.save(net.state_dict(), p)
    m = resolve_model(f"file:{p}", arch="ebmlens.models.archs:ConvNetSmall", model_dir=None, num_classes=4)
    assert m.num_classes == 4 and m.source == "file"
    with pytest.raises(TypeError, match="wrap a plain classifier"):
        resolve_model(net)
