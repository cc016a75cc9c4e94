"""Calibration and counterfactuals under ``torchrun --nproc_per_node=2`` (gloo, CPU) equal one process:
both walk their images through :func:`ebmlens._measure.map_batches`, which shards the batches and
gathers them to rank 0 in index order (issue 19 item 4)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import json_numbers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

SCRIPT = '''
import json, os, sys
import torch
from torch import nn
import ebmlens
from ebmlens.analysis import calibration_report, counterfactuals
from ebmlens.attacks import L2Ball


def model():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(net[1].weight.shape, generator=g) * 0.05)
        net[1].bias.zero_()
    return ebmlens.EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=(3, 8, 8), num_classes=10)


def run(path):
    m = model()
    cal = calibration_report(m, "npz:" + path, bins=5, attack="pgd-targeted", geometry=L2Ball(0.5), steps=2,
                             n=None, batch_size=5, seed=3)
    cf = counterfactuals(m, "npz:" + path, target="random", geometry=L2Ball(1.0), steps=3, n=10, batch_size=3,
                         seed=1)
    return {"cal": json.loads(cal.to_json()), "cf": json.loads(cf.to_json()),
            "cf_images": cf.counterfactuals.flatten().tolist()}


if __name__ == "__main__":
    out = run(sys.argv[1])
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(out, fh)
'''




def test_calibration_and_counterfactual_under_torchrun_equal_one_process(tmp_path):
    rs = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", images=rs.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(20) % 10)
    script = tmp_path / "measure.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "set.npz"), str(tmp_path / "dist.json")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist = json.loads((tmp_path / "dist.json").read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1)
    try:
        one = runpy.run_path(str(script))["run"](str(tmp_path / "set.npz"))
    finally:
        torch.set_num_threads(threads)
    assert dist["cal"]["config"].pop("world_size") == 2 and dist["cf"]["config"].pop("world_size") == 2
    nd, n1 = json_numbers(dist), json_numbers(json.loads(json.dumps(one)))
    assert nd.keys() == n1.keys() and len(nd) > 100
    for k in nd:
        assert nd[k] == pytest.approx(n1[k], rel=1e-6, abs=1e-7, nan_ok=True), k
    assert [r["flipped"] for r in dist["cf"]["images"]] == [r["flipped"] for r in one["cf"]["images"]]
