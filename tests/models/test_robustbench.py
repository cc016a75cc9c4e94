"""RobustBench through ``load_model``: four architecture families built from the zoo, saved to a
temporary model_dir and loaded back (logits equal the zoo model's own forward; energies equal
-logsumexp / -logit), local-first errors, and entries that would download stay offline."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from torch import nn

import ebmlens
from ebmlens.data import CIFAR10_CLASSES
from ebmlens.models import robustbench as rb

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

# (name, threat model, how the weights file is laid out) - four families, the cheapest of each
CASES = [
    ("Ding2020MMA", "Linf", "state_dict+module"),                # WideResNet-28-4 (input-normalizing)
    ("Andriushchenko2020Understanding", "Linf", "last/best"),    # PreActResNet-18
    ("Engstrom2019Robustness", "L2", "plain"),                   # ResNet-50 with mu/sigma buffers
    ("Rebuffi2021Fixing_R18_ddpm", "Linf", "state_dict"),        # DeepMind PreActResNet-18 (Swish)
]


@pytest.fixture(scope="module")
def zoo():
    return rb.import_zoo()


def _zoo_net(zoo, name, tm):
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    with torch.random.fork_rng(devices=[]):  # the zoo's constructors draw from the global generator
        torch.manual_seed(1)
        net = zoo[BenchmarkDataset("cifar10")][ThreatModel(tm)][name]["model"]().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-default BN statistics, so that a missed buffer would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


@pytest.mark.parametrize("name,tm,layout", CASES, ids=[c[0] for c in CASES])
def test_zoo_architecture_roundtrip(zoo, tmp_path, name, tm, layout):
    net = _zoo_net(zoo, name, tm)
    sd = net.state_dict()
    path = rb.weights_path(name, "cifar10", tm, tmp_path)
    path.parent.mkdir(parents=True)
    if layout == "state_dict+module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif layout == "last/best":
        torch.save({"last": sd, "best": {k: torch.zeros_like(v) for k, v in sd.items()}}, path)
    elif layout == "state_dict":
        torch.save({"state_dict": sd}, path)
    else:
        torch.save(sd, path)
    m = ebmlens.load_model(f"robustbench:{name}", dataset="cifar10", threat_model=tm, model_dir=tmp_path)
    assert (m.source, m.name, m.dataset, m.threat_model) == ("robustbench", name, "cifar10", tm)
    assert m.class_names == CIFAR10_CLASSES and m.input_shape == (3, 32, 32)
    assert m.mean.flatten().tolist() == [0.0] * 3 and m.std.flatten().tolist() == [1.0] * 3
    with torch.no_grad():
        ref = net(X)
        logits = m.logits(X)
        y = torch.tensor([3, 7])
        assert torch.allclose(logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(m.energy(X), -torch.logsumexp(ref.double(), 1).float(), atol=1e-4)
        assert torch.allclose(m.joint_energy(X, y), -ref[torch.arange(2), y], atol=1e-5)


def test_lists_offline_and_import_fix(zoo):
    import robustbench.model_zoo
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    assert zoo is robustbench.model_zoo.model_dicts  # the installed robustbench's own table
    l2 = ebmlens.list_models("robustbench", dataset="cifar10", threat_model="l2")
    assert l2 == list(zoo[BenchmarkDataset.cifar_10][ThreatModel.L2])  # every entry, in zoo order
    assert "Engstrom2019Robustness" in l2 and "Carmon2019Unlabeled" not in l2
    everything = ebmlens.list_models("robustbench")
    assert len(everything) == len({n for ds in zoo.values() for models in ds.values() for n in models})
    assert "Carmon2019Unlabeled" in ebmlens.list_models("robustbench", dataset="cifar10", threat_model="Linf")
    assert "Salman2020Do_R50" in ebmlens.list_models("robustbench", dataset="imagenet")
    if "pyautoattack" in sys.modules:  # the PyPI AutoAttack stands in for the module robustbench imports
        assert sys.modules["autoattack"] is sys.modules["pyautoattack"]
        assert sys.modules["autoattack.state"].EvaluationState is not None
    with pytest.raises(ValueError, match="unknown RobustBench dataset 'cifar-11'"):
        ebmlens.list_models("robustbench", dataset="cifar-11")
    with pytest.raises(TypeError, match="unknown filters"):
        ebmlens.list_models("robustbench", datset="cifar10")


def test_missing_setuptools_names_the_extra(zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    with pytest.raises(ImportError, match=r"setuptools<81.*ebmlens\[robustbench\]"):
        rb.import_zoo()


def test_names_and_threat_models_are_checked(zoo, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'Carmon2019Unlabeled'"):
        ebmlens.load_model("robustbench:Carmon2019Unlabelled", model_dir=tmp_path)
    with pytest.raises(ValueError,
                       match="exists under cifar10/Linf, cifar10/L2; say which with dataset= and threat_model="):
        ebmlens.load_model("robustbench:Engstrom2019Robustness", dataset="cifar10", model_dir=tmp_path)
    with pytest.raises(ValueError, match="imagenet/Linf"):
        ebmlens.load_model("robustbench:Engstrom2019Robustness", model_dir=tmp_path)
    with pytest.raises(ValueError,
                       match="does not exist for dataset=any, threat_model=L2; it exists under cifar10/Linf"):
        ebmlens.load_model("robustbench:Carmon2019Unlabeled", threat_model="L2", model_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown threat model 'L3'"):
        ebmlens.load_model("robustbench:Carmon2019Unlabeled", threat_model="L3", model_dir=tmp_path)


def test_missing_and_html_weights_name_the_path(zoo, tmp_path):
    path = tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt"
    with pytest.raises(FileNotFoundError) as e:
        ebmlens.load_model("robustbench:Ding2020MMA", threat_model="Linf", model_dir=tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "drive.google.com" in msg and "download=True" in msg
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    with pytest.raises(ValueError, match="HTML page.*Put the weights file at"):
        ebmlens.load_model("robustbench:Ding2020MMA", threat_model="Linf", model_dir=tmp_path)
    wrong = _zoo_net(zoo, "Andriushchenko2020Understanding", "Linf").state_dict()
    torch.save(wrong, path)
    with pytest.raises(ValueError, match="do not fit RobustBench's Ding2020MMA architecture"):
        ebmlens.load_model("robustbench:Ding2020MMA", threat_model="Linf", model_dir=tmp_path)


@pytest.fixture
def network_spy(monkeypatch, tmp_path):
    """Replace the real socket entry points with recorders; empty caches so nothing is cached."""
    calls: list[str] = []

    def spy(name):
        def fn(*a, **k):
            calls.append(name)
            raise OSError("network disabled in tests")
        return fn

    monkeypatch.setattr(socket, "getaddrinfo", spy("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", spy("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", spy("connect"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return calls


def test_download_in_constructor_is_blocked(zoo, tmp_path, network_spy):
    # ImageNet Standard_R50 = torchvision resnet50(pretrained=True): its constructor downloads
    with pytest.raises(ValueError, match=r"downloading pretrained weights \((getaddrinfo|create_connection|connect) "
                                         r".*download.pytorch.org.*download=True"):
        ebmlens.load_model("robustbench:Standard_R50", dataset="imagenet", threat_model="Linf", model_dir=tmp_path)
    assert network_spy == []  # the real socket functions were never reached
    assert socket.getaddrinfo.__name__ == "fn"  # and the guard restored what was there


def test_timm_served_entry_needs_local_file(zoo, tmp_path, network_spy):
    with pytest.raises(FileNotFoundError,
                       match=r"served through timm.*github.com/RobustBench.*Debenedetti2022Light_XCiT-S12\.pt"):
        ebmlens.load_model("robustbench:Debenedetti2022Light_XCiT-S12", dataset="cifar10", threat_model="Linf",
                           model_dir=tmp_path)
    assert network_spy == []
