"""``hf:ORG/NAME[@REV]`` and ``timm:`` models read from a Hugging Face cache built here, in the real
layout (huggingface_hub's ``try_to_load_from_cache`` finds the same files), with the network blocked;
every way a cache breaks is a one-line error."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch
from click.testing import CliRunner
from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache
from safetensors.torch import save
from timm.models._hub import save_config_for_hf

import ebmlens
from ebmlens.cli import main
from ebmlens.models import hf
from tests.conftest import hf_put as put

ARCH = "test_efficientnet"  # timm's smallest registered net (0.36M parameters)
REPO = "lab/tiny-robust"
NAMES = [f"c{i}" for i in range(10)]
A, B = "a" * 40, "b" * 40  # two commits


def _net(seed: int, num_classes: int = 10):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(ARCH, pretrained=False, num_classes=num_classes).eval()


def _weights(net) -> bytes:
    return save({k: v.contiguous() for k, v in net.state_dict().items()})


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """timm's own config.json for the net (what push_to_hf_hub uploads), with CIFAR-size input and our
    statistics."""
    d = tmp_path_factory.mktemp("saved")
    save_config_for_hf(_net(0), d / "config.json", model_config={"label_names": NAMES})
    cfg = json.loads((d / "config.json").read_text())
    cfg["pretrained_cfg"].update(input_size=[3, 32, 32], mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], crop_pct=1.0)
    return cfg


@pytest.fixture(autouse=True)
def offline(offline_hub):
    """Every test here runs with the network blocked and an empty cache of its own."""
    return offline_hub


def _by_hand(net, x, mean, std):
    with torch.no_grad():
        return net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


def test_layout_is_huggingface_hubs(offline, config):
    put(offline, REPO, {"config.json": json.dumps(config).encode(), "model.safetensors": _weights(_net(0))})
    (offline / f"models--{REPO.replace('/', '--')}" / ".no_exist" / A).mkdir(parents=True)
    (offline / f"models--{REPO.replace('/', '--')}" / ".no_exist" / A / "pytorch_model.bin").touch()
    for rev in (None, "main", A):
        ours = hf.cached_file(REPO, "model.safetensors", rev)
        assert str(ours) == try_to_load_from_cache(REPO, "model.safetensors", cache_dir=str(offline), revision=rev)
    assert try_to_load_from_cache(REPO, "pytorch_model.bin", cache_dir=str(offline)) is _CACHED_NO_EXIST
    with pytest.raises(hf.NotInCache, match=r"has no pytorch_model.bin at commit aaaaaaaaaaaa.*\.no_exist"):
        hf.cached_file(REPO, "pytorch_model.bin")
    assert hf.list_names() == [REPO] and ebmlens.list_models("hf") == [REPO]


def test_load_reads_config_and_weights(offline, config):
    net = _net(0)
    put(offline, REPO, {"config.json": json.dumps(config).encode(), "model.safetensors": _weights(net)})
    m = ebmlens.load_model(f"hf:{REPO}")
    assert (m.source, m.name) == ("hf", f"{REPO}@{A}")
    assert m.input_shape == (3, 32, 32) and m.num_classes == 10 and m.class_names == NAMES
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = _by_hand(net, x, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert torch.allclose(m.logits(x), ref, atol=1e-5, rtol=1e-4)
    # the caller's options reach the source through resolve_model (others are dropped)
    m2 = ebmlens.models.resolve_model(f"hf:{REPO}", arch=f"timm:{ARCH}", trust_checkpoint=True, model_dir="models",
                                      threat_model="L2", dataset="cifar10")
    assert torch.allclose(m2.logits(x), ref, atol=1e-5, rtol=1e-4) and (m2.threat_model, m2.dataset) == ("L2", None)


def test_revisions_tags_and_commits(offline, config):
    cfg = json.dumps(config).encode()
    put(offline, REPO, {"config.json": cfg, "model.safetensors": _weights(_net(0))}, commit=A)
    put(offline, REPO, {"config.json": cfg, "model.safetensors": _weights(_net(1))}, commit=B, ref="v1.0")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = {s: _by_hand(_net(s), x, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]) for s in (0, 1)}
    for spec, seed in ((REPO, 0), (f"{REPO}@main", 0), (f"{REPO}@v1.0", 1), (f"{REPO}@{B}", 1), (f"{REPO}@{A}", 0)):
        assert torch.allclose(ebmlens.load_model(f"hf:{spec}").logits(x), want[seed], atol=1e-5), spec
    assert sorted(hf.list_names()) == [REPO, f"{REPO}@v1.0"]
    with pytest.raises(FileNotFoundError, match=r"no ref or snapshot 'v2' \(refs: main, v1.0; snapshots: aaaa"):
        ebmlens.load_model(f"hf:{REPO}@v2")
    (offline / f"models--{REPO.replace('/', '--')}" / "refs" / "odd").write_text("../../../elsewhere")
    with pytest.raises(ValueError, match="refs/odd holds '../../../elsewhere', not a commit"):
        ebmlens.load_model(f"hf:{REPO}@odd")


def test_old_form_config_and_bin_weights(offline, config):
    """Top-level mean/std/input_size and 'labels' (timm's old form); pytorch_model.bin when the Hub has
    no safetensors (a .no_exist marker), read with weights_only."""
    net = _net(3)
    old = {"architecture": ARCH, "num_classes": 10, "labels": NAMES, "input_size": [3, 32, 32],
           "mean": [0.5] * 3, "std": [0.25] * 3}
    folder = put(offline, REPO, {"config.json": json.dumps(old).encode()})
    (folder / ".no_exist" / A).mkdir(parents=True)
    (folder / ".no_exist" / A / "model.safetensors").touch()
    bin_path = offline / "w.bin"
    torch.save(net.state_dict(), bin_path)
    put(offline, REPO, {"pytorch_model.bin": bin_path.read_bytes()})
    m = ebmlens.load_model(f"hf:{REPO}")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(m.logits(x), _by_hand(net, x, [0.5] * 3, [0.25] * 3), atol=1e-5) and m.class_names == NAMES


def _broken(offline, config, how: str) -> None:
    cfg = json.dumps(config).encode()
    folder = put(offline, REPO, {"config.json": cfg, "model.safetensors": _weights(_net(0))})
    blob = (folder / "snapshots" / A / "model.safetensors").resolve()
    if how == "dangling":
        blob.unlink()
    elif how == "incomplete":  # the link exists, the blob is still being written
        blob.rename(blob.with_name(blob.name + ".incomplete"))
    elif how == "incomplete-unlinked":  # huggingface_hub links only finished blobs
        (folder / "snapshots" / A / "model.safetensors").unlink()
        blob.rename(blob.with_name(blob.name + ".incomplete"))
    elif how == "missing-snapshot":
        (folder / "refs" / "main").write_text(B + "\n")
    elif how == "no-exist":
        (folder / "snapshots" / A / "model.safetensors").unlink()
        for name in hf.WEIGHT_FILES:
            (folder / ".no_exist" / A).mkdir(parents=True, exist_ok=True)
            (folder / ".no_exist" / A / name).touch()
    elif how == "html":
        blob.write_bytes(b"<!DOCTYPE html><html><body>Sign in to continue</body></html>")


BROKEN = {
    "dangling": r"model.safetensors in snapshot aaaaaaaaaaaa links to blobs/\w+, which is missing",
    "incomplete": r"the download of model.safetensors was interrupted \(blobs/\w+\.incomplete",
    "incomplete-unlinked": r"no usable weights.*an interrupted download left blobs/\w+\.incomplete",
    "missing-snapshot": r"refs/main names commit 'bbbbbbbbbbbb' but .*snapshots/b{40} is missing",
    "no-exist": r"model.safetensors: not on the Hub at this commit \(.no_exist marker\), pytorch_model.bin: not on",
    "html": r"the cached model.safetensors .* is an HTML page, not weights",
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_broken_cache_one_line_errors(offline, config, how):
    _broken(offline, config, how)
    with pytest.raises((FileNotFoundError, ValueError), match=BROKEN[how]) as e:
        ebmlens.load_model(f"hf:{REPO}")
    assert "\n" not in str(e.value)
    # the listing skips what cannot be opened (a ref to a missing snapshot leaves the old one, by commit)
    assert hf.list_names() == ([f"{REPO}@{A}"] if how == "missing-snapshot" else [])
    r = CliRunner().invoke(main, ["sample", "--model", f"hf:{REPO}", "--out", str(offline.parent / "o")])
    assert r.exit_code == 2 and r.output.startswith("error: hf:") and len(r.output.strip().splitlines()) == 1, r.output


def test_config_names_only_registered_architectures(offline, config):
    w = _weights(_net(0))
    for arch, match in (("os:system", "not a registered architecture"),
                        ("efficientnet_b99", "unknown timm architecture 'efficientnet_b99'")):
        repo = f"lab/{arch.replace(':', '-')}"
        cfg = json.dumps(dict(config, architecture=arch)).encode()
        put(offline, repo, {"config.json": cfg, "model.safetensors": w})
        with pytest.raises(ValueError, match=match):
            ebmlens.load_model(f"hf:{repo}")
    bad = dict(config, model_args={"checkpoint_path": "/etc/passwd"})
    put(offline, "lab/sneaky", {"config.json": json.dumps(bad).encode(), "model.safetensors": w})
    with pytest.raises(ValueError, match="model_args set checkpoint_path"):
        ebmlens.load_model("hf:lab/sneaky")
    with pytest.raises(ValueError, match="is not ORG/NAME"):
        ebmlens.load_model("hf:../etc")


def test_timm_reads_the_same_cache(offline):
    """``timm:NAME`` with an hf_hub_id reads timm/NAME from the cache, not through timm's hub loader."""
    name = "test_efficientnet.r160_in1k"
    net = _net(5, num_classes=1000)
    with pytest.raises(FileNotFoundError) as e:
        ebmlens.load_model(f"timm:{name}")
    msg = str(e.value)
    assert "hf:timm/test_efficientnet.r160_in1k is not in the Hugging Face cache" in msg
    assert "download=True" in msg and "--checkpoint" not in msg and "pip install huggingface_hub" not in msg
    cfg = json.dumps({"architecture": ARCH, "num_classes": 1000, "pretrained_cfg": {}}).encode()
    put(offline, f"timm/{name}", {"config.json": cfg, "model.safetensors": _weights(net)})
    m = ebmlens.load_model(f"timm:{name}", allow_other_size=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    dc = timm.data.resolve_model_data_config(net)
    assert torch.allclose(m.logits(x), _by_hand(net, x, dc["mean"], dc["std"]), atol=1e-5, rtol=1e-4)


def test_cli_lists_and_samples(offline, config, tmp_path):
    from ebmlens.sampling import class_stats

    small = dict(config, pretrained_cfg=dict(config["pretrained_cfg"], input_size=[3, 16, 16]))  # cheap stats
    put(offline, REPO, {"config.json": json.dumps(small).encode(), "model.safetensors": _weights(_net(0))})
    put(offline, "lab/empty", {"config.json": json.dumps(config).encode()})
    r = CliRunner().invoke(main, ["models", "hf"])
    assert r.exit_code == 0 and r.stdout.splitlines() == [f"hf:{REPO}\t{ARCH}, 10 classes, model.safetensors\t{A[:12]}"]
    assert "cannot open hf:lab/empty: hf:lab/empty@main has no usable weights" in r.stderr
    g = torch.Generator().manual_seed(1)
    stats = class_stats(torch.rand(40, 3, 16, 16, generator=g), torch.arange(10).repeat(4)).compact(2)
    stats.save(tmp_path / "s.safetensors")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["sample", "--model", f"hf:{REPO}", "--stats", str(tmp_path / "s.safetensors"),
                                  "--preset", "santurkar2019", "--set", "steps=2", "-n", "2", "--out", str(out),
                                  "--no-png", "--no-grid", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["model"]["name"] == f"{REPO}@{A}"
    assert os.path.getsize(out / "images.npy") > 0
