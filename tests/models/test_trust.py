"""No code runs from a checkpoint unless the user asks: architecture names read from a file may only
be registered names or ``source:name`` specs; ``module:factory`` is refused before it is imported.

The canary module drops a marker file when it is imported and another when its factory is called,
so a test sees whether code named by a file ran.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

import ebmlens
from ebmlens.models.archs import ConvNetSmall, arch_from_file, is_safe_arch_name

CANARY = '''
import pathlib
HERE = pathlib.Path(__file__).parent
(HERE / "imported.marker").write_text("imported")

def factory(num_classes=10):
    (HERE / "called.marker").write_text("called")
    from ebmlens.models.archs import ConvNetSmall
    return ConvNetSmall(num_classes=num_classes)
'''


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module ``ebmlens_canary_<id>`` on sys.path; returns (its name, its folder)."""
    folder = tmp_path / "canary"
    folder.mkdir()
    name = f"ebmlens_canary_{tmp_path.name.replace('-', '_')}"
    (folder / f"{name}.py").write_text(CANARY)
    monkeypatch.syspath_prepend(str(folder))
    return name, folder


def _ran(folder):
    return sorted(p.name for p in folder.glob("*.marker"))


def _pt(path, arch):
    torch.save({"state_dict": ConvNetSmall().state_dict(), "ebmlens_meta": {"arch": arch, "num_classes": 10}}, path)


def _st(path, arch):
    save_file(ConvNetSmall().state_dict(), str(path), metadata={"ebmlens_meta": json.dumps({"arch": arch})})


@pytest.mark.parametrize("write", [_pt, _st], ids=["weights_only-pt", "safetensors"])
def test_file_naming_code_is_refused_before_import(tmp_path, canary, write):
    name, folder = canary
    p = tmp_path / ("ckpt.pt" if write is _pt else "ckpt.safetensors")
    write(p, f"{name}:factory")
    with pytest.raises(ValueError, match=rf"names its architecture '{name}:factory'.*trust_checkpoint=True"):
        ebmlens.load_model(f"file:{p}")
    assert _ran(folder) == []                      # not even imported
    # the user's own arch= wins and the file's name is never looked at
    m = ebmlens.load_model(f"file:{p}", arch="convnet-small")
    assert m.num_classes == 10 and _ran(folder) == []
    # trusted: the named factory is imported and called
    ebmlens.load_model(f"file:{p}", trust_checkpoint=True)
    assert _ran(folder) == ["called.marker", "imported.marker"]


def test_cli_refuses_code_in_checkpoint(tmp_path, canary):
    from click.testing import CliRunner

    from ebmlens.cli import main

    name, folder = canary
    p = tmp_path / "ckpt.pt"
    _pt(p, f"{name}:factory")
    data = tmp_path / "d.npz"
    import numpy as np

    np.savez(data, images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4))
    r = CliRunner().invoke(main, ["accuracy", "--model", f"file:{p}", "--data", f"npz:{data}"])
    assert r.exit_code == 2, r.output
    assert "--trust-checkpoint" in r.output and "Traceback" not in r.output
    assert _ran(folder) == []


def test_registered_and_source_names_are_allowed():
    assert is_safe_arch_name("convnet-small") and is_safe_arch_name("ebmlens:cifar10-l2-small")
    assert is_safe_arch_name("timm:resnet10t") and is_safe_arch_name("robustbench:Carmon2019Unlabeled")
    for bad in ("os:abort", "builtins:exec", "ebmlens.models.archs:ConvNetSmall", "timm:", "", None, 3):
        assert not is_safe_arch_name(bad)
    net = arch_from_file("ebmlens:cifar10-l2-small", path="x.pt")(num_classes=10)
    assert type(net).__name__ == "ResNetSmall"
    with pytest.raises(ValueError, match="'os:abort'.*Pass arch= yourself"):
        arch_from_file("os:abort", path="x.pt")


def test_timm_base_named_by_a_file_builds_without_code(tmp_path):
    pytest.importorskip("timm", reason="needs the timm extra")
    from ebmlens.models.archs import get_arch

    net = get_arch("timm:resnet10t")(num_classes=7)
    p = tmp_path / "ft.safetensors"
    save_file(net.state_dict(), str(p), metadata={"ebmlens_meta": json.dumps(
        {"arch": "timm:resnet10t", "num_classes": 7, "input_shape": [3, 32, 32]})})
    m = ebmlens.load_model(f"file:{p}")
    assert m.num_classes == 7
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m.classifier(x), net.eval()(x))
