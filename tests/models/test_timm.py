"""timm through ``load_model``: a model loaded from a local weights file gives the logits of timm's
own model with its normalization applied by hand; without a file nothing is downloaded."""

from __future__ import annotations

import socket

import pytest
import timm  # the 'test' extra installs it; a missing extra fails rather than skips
import torch
from safetensors.torch import save_file

import ebmlens

NAME = "resnet10t"  # the smallest timm ResNet (5M parameters)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):  # seeded weights; the global generator is left as it was
        torch.manual_seed(0)
        net = timm.create_model(NAME, pretrained=False).eval()
    d = tmp_path_factory.mktemp("timm")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "w.safetensors"))
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, d / "w.pth")
    return net, d


def _by_hand(net, x):
    cfg = timm.data.resolve_model_data_config(net)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


@pytest.mark.parametrize("fname", ["w.safetensors", "w.pth"])
def test_local_weights_match_timm(reference, fname):
    net, d = reference
    m = ebmlens.load_model(f"timm:{NAME}", checkpoint=d / fname, allow_other_size=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # the convnet takes any size
    ref = _by_hand(net, x)
    assert torch.allclose(m.logits(x), ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(m.energy(x), -torch.logsumexp(ref, 1), atol=1e-4)
    assert m.input_shape == (3, 224, 224) and m.num_classes == 1000
    assert (m.source, m.name, m.dataset) == ("timm", NAME, "imagenet")
    assert m.class_names[0] == "tench" and len(m.class_names) == 1000


def test_fine_tuned_head_and_names(reference, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        net = timm.create_model(NAME, pretrained=False, num_classes=10).eval()
    p = tmp_path / "ft.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    names = [f"c{i}" for i in range(10)]
    m = ebmlens.load_model(f"timm:{NAME}", checkpoint=p, num_classes=10, class_names=names, dataset="mine",
                           allow_other_size=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(m.logits(x), _by_hand(net, x), atol=1e-5) and m.class_names == names
    with pytest.raises(ValueError, match="do not fit the architecture"):
        ebmlens.load_model(f"timm:{NAME}", checkpoint=p)  # 1000-class model, 10-class file


def test_no_download_and_clear_errors(reference, tmp_path, monkeypatch):
    calls = []

    def spy(*a, **k):
        calls.append(a)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    monkeypatch.setattr(socket, "create_connection", spy)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"not in the local cache.*checkpoint=PATH"):
        ebmlens.load_model(f"timm:{NAME}.c3_in1k")
    assert calls == []
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'; did you mean 'resnet10t'"):
        ebmlens.load_model("timm:resnet10x")
    with pytest.raises(ValueError, match="unknown timm pretrained tag 'resnet10t.bogus'"):
        ebmlens.load_model("timm:resnet10t.bogus", checkpoint=reference[1] / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ebmlens.load_model(f"timm:{NAME}", checkpoint=tmp_path / "missing.safetensors")
    assert "resnet10t" in ebmlens.list_models("timm", pattern="resnet1*")
