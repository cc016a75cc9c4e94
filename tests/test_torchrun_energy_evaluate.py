"""``torchrun --nproc_per_node=2 -m ebmlens energy|evaluate`` on the CPU (gloo): each rank takes a share
of the images, rank 0 gathers them in index order and writes; the numbers equal a single process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from tests.conftest import json_numbers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

MODEL = "ebmlens:cifar10-l2-small"


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ebmlens",
           *map(str, args)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _single(*args) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers (OMP_NUM_THREADS=1): identical batch arithmetic
    try:
        res = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output




def test_torchrun_energy_matches_single_process(tmp_path, cifar_spec):
    common = ["energy", "--model", MODEL, "--data", cifar_spec, "--threat-model", "L2", "--eps", "0.5",
              "--attack", "pgd", "--attack", "pgd-targeted", "--steps", "2", "-n", "40", "--batch-size", "10",
              "--seed", "3", "--device", "cpu"]
    proc = _torchrun(tmp_path, *common, "--out", tmp_path / "dist")
    assert proc.stdout.count("wrote ") == 1  # only rank 0 writes and prints
    _single(*common, "--out", tmp_path / "one")

    rd = json.loads((tmp_path / "dist" / "report.json").read_text())
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    assert rd["config"]["world_size"] == 2 and "world_size" not in r1["config"]
    nd = json_numbers(rd["summaries"] if "summaries" in rd else rd)
    n1 = json_numbers(r1["summaries"] if "summaries" in r1 else r1)
    nd = {k: v for k, v in nd.items() if "world_size" not in k and "seconds" not in k}
    n1 = {k: v for k, v in n1.items() if "seconds" not in k}
    assert nd.keys() == n1.keys() and len(nd) > 20
    for k in nd:
        assert nd[k] == pytest.approx(n1[k], rel=1e-6, abs=1e-9), k
    assert (tmp_path / "dist" / "table.md").read_text() == (tmp_path / "one" / "table.md").read_text()


def test_torchrun_evaluate_and_ref_stats_match_single_process(tmp_path, cifar_test):
    idx = cifar_test.strided(80)
    np.savez(tmp_path / "samples.npz", images=cifar_test.images[idx[:40]], labels=cifar_test.labels[idx[:40]])
    np.savez(tmp_path / "ref.npz", images=cifar_test.images[idx[40:]])
    fm = ["--feature-model", MODEL, "--device", "cpu", "--batch-size", "10"]
    ev = ["evaluate", tmp_path / "samples.npz", "--ref", f"npz:{tmp_path / 'ref.npz'}", "--metrics", "is,fid,kid",
          "--splits", "4", "--kid-subsets", "5", "--kid-subset-size", "20", *fm]
    proc = _torchrun(tmp_path, *ev, "--out", tmp_path / "dist.json")
    assert proc.stdout.count("details in") == 1
    mk = ["evaluate", "--make-ref-stats", f"npz:{tmp_path / 'ref.npz'}", "--keep-features", *fm]
    proc = _torchrun(tmp_path, *mk, "--out", tmp_path / "dist_stats.npz")
    assert proc.stdout.count("wrote ") == 1
    _single(*ev, "--out", tmp_path / "one.json")
    _single(*mk, "--out", tmp_path / "one_stats.npz")

    vd = json.loads((tmp_path / "dist.json").read_text())["values"]
    v1 = json.loads((tmp_path / "one.json").read_text())["values"]
    assert vd.keys() == v1.keys() and len(vd) == 5  # is mean/std, fd, kd mean/std in the model's features
    for k in vd:
        assert vd[k] == pytest.approx(v1[k], rel=1e-6, abs=1e-9), k
    a, b = np.load(tmp_path / "dist_stats.npz"), np.load(tmp_path / "one_stats.npz")
    assert a["features"].shape == b["features"].shape == (40, a["mu"].shape[0])
    np.testing.assert_allclose(a["features"], b["features"], rtol=1e-6, atol=1e-7)  # gathered in index order
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-6, atol=1e-9)
