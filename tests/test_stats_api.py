"""stats/ API: ``ebmlens.stats`` reachable from the top package, the low-rank diagonal by method (no spec
strings), the split kept on the image set and recorded by the fits (nobody parses ``source``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ebmlens
from ebmlens.data import ImageData, load_data
from ebmlens.stats import ClassStats, class_stats, fit_stats_dir

PKG = Path(ebmlens.__file__).parent


def test_every_subpackage_is_an_attribute_of_ebmlens():
    """``import ebmlens; ebmlens.stats`` works for every public subpackage: asked through the package's lazy
    ``__getattr__`` itself (an import elsewhere in the test process would otherwise set the attribute)."""
    names = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                   and not p.name.startswith("_"))
    assert "stats" in names
    for name in names:
        assert ebmlens.__getattr__(name) is sys.modules[f"ebmlens.{name}"], name
        assert name in dir(ebmlens) and name in ebmlens.__all__, name


@pytest.fixture(scope="module")
def stats() -> ClassStats:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 3, 3, generator=g)
    return class_stats(x, torch.arange(24) % 2, full=False)


def test_lowrank_diag_on_a_device_is_the_same_diagonal_cached(stats):
    r = stats.rank - 1
    d = stats.lowrank_diag(r, device="cpu")
    assert d.dtype == torch.float32 and torch.equal(d, stats.lowrank_diag(r).float())
    assert stats.lowrank_diag(r, device="cpu") is d                      # moved once per device and rank
    assert not torch.equal(stats.lowrank_diag(0, device="cpu"), d)       # the rank is not ignored
    assert torch.allclose(stats.lowrank_diag(0), stats.diag + stats.reg)
    with pytest.raises(ValueError, match="lowrank_diag rank"):
        stats.lowrank_diag(stats.rank + 1)
    with pytest.raises(ValueError, match="not a tensor field"):
        stats.on("cpu", f"lowrank_diag:{r}")                             # no spec strings
    assert torch.equal(stats.on("cpu", "mean"), stats.mean)


def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    f = tmp_path / "toy.npz"
    np.savez(f, images=rng.integers(0, 256, (16, 4, 4, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    return f


def test_the_split_is_kept_on_the_image_set_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    data = load_data(f"npz:{_npz(tmp_path)}", default_split="train")
    assert data.split == "train"
    st = class_stats(data, full=False)
    assert (st.split, st.source) == ("train", data.source)
    # the split comes from the field, never from parsing the source text
    odd = ImageData(data.images, data.labels, data.class_names, "corrupt:fog@3:npz:x", split="test")
    assert class_stats(odd, cache=False, full=False).split == "test"
    assert class_stats(ImageData(data.images, data.labels, data.class_names, "npz:x@train"), cache=False,
                       full=False).split is None
    out = fit_stats_dir(odd, tmp_path / "dir", downsample=1, rank=2)
    back = ClassStats.load(out)
    assert (back.split, back.source, back.num_classes) == ("test", odd.source, 2)
