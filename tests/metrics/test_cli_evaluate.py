"""``ebmlens evaluate``: reference statistics once, then samples against them; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.metrics import evaluate
from ebmlens.models.archs import ConvNetSmall


@pytest.fixture
def setup(tmp_path, cifar_test):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ConvNetSmall()
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)
    idx = cifar_test.strided(70)
    (tmp_path / "samples").mkdir()
    np.savez(tmp_path / "samples" / "samples.npz", images=cifar_test.images[idx[:30]],
             labels=cifar_test.labels[idx[:30]])
    np.savez(tmp_path / "ref.npz", images=cifar_test.images[idx[30:]])
    return tmp_path, ckpt


def _run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


def test_ref_stats_then_evaluate(setup):
    tmp, ckpt = setup
    fm = ["--feature-model", f"file:{ckpt}", "--arch", "convnet-small", "--device", "cpu"]
    res = _run(["evaluate", "--make-ref-stats", f"npz:{tmp / 'ref.npz'}", "--keep-features", "--out", tmp / "st.npz",
                *fm])
    assert res.exit_code == 0, res.output
    assert "40 images" in res.output and "with features" in res.output
    res = _run(["evaluate", tmp / "samples", "--ref-stats", tmp / "st.npz", "--splits", "5", "--kid-subsets", "3",
                "--out", tmp / "r.json", *fm])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp / "r.json").read_text())
    assert d["network"] == f"file:{ckpt}" and d["layer"] == "fc:input"
    assert any(k == "fd_file-net" for k in d["values"])
    assert d["num_images"] == 30 and d["num_ref_images"] == 40 and d["splits"] == 5 and not d["standard"]
    assert {k.split("_")[0] for k in d["values"]} == {"is", "fd", "kd"}
    # the same numbers as the Python API with the reference images themselves
    from ebmlens.models import load_model

    m = load_model(f"file:{ckpt}", arch="convnet-small")
    r = evaluate(tmp / "samples", tmp / "ref.npz", "is,fid,kid", m, splits=5, kid_subsets=3)
    assert r.values == pytest.approx(d["values"], rel=1e-9, abs=1e-12)


def test_one_line_errors(setup, tmp_path, monkeypatch):
    tmp, ckpt = setup
    monkeypatch.delenv("EBMLENS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    res = _run(["evaluate", tmp / "samples", "--ref", f"npz:{tmp / 'ref.npz'}"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pt_inception-2015-12-05-6726825d.pth" in lines[0]
    for args in (["evaluate"], ["evaluate", tmp / "samples", "--ref", "x", "--ref-stats", "y.npz"],
                 ["evaluate", "--make-ref-stats", f"npz:{tmp / 'ref.npz'}"],
                 ["evaluate", tmp / "samples", "--metrics", "is,fd", "--feature-model", f"file:{ckpt}", "--arch",
                  "convnet-small"]):
        res = _run(args)
        assert (res.exit_code == 2 and res.output.startswith("error:")
                and len(res.output.strip().splitlines()) == 1), args
    assert "unknown metrics" in res.output
