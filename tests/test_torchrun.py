"""``torchrun --nproc_per_node=2 -m ebmlens sample`` on the CPU (gloo): the merged run equals a
single-process run (images within one uint8 level, labels identical, energies agree)."""

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
from ebmlens.data import CIFAR10_CLASSES
from ebmlens.models.archs import ConvNetSmall
from ebmlens.sampling import class_stats

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

SHAPE = (3, 16, 16)


def _files(tmp_path):
    g = torch.Generator().manual_seed(0)
    net = ConvNetSmall(num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    meta = {"arch": "convnet-small", "num_classes": 10, "class_names": CIFAR10_CLASSES, "mean": [0.5] * 3,
            "std": [0.25] * 3, "input_shape": list(SHAPE)}
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, ckpt)
    x = torch.rand(100, *SHAPE, generator=g)
    stats = class_stats(x, torch.arange(10).repeat(10)).compact(4).save(tmp_path / "stats.safetensors")
    return ckpt, stats


def test_torchrun_two_cpu_processes_match_single_process(tmp_path):
    ckpt, stats = _files(tmp_path)
    common = ["--model", f"file:{ckpt}", "--stats", str(stats), "--preset", "robust-jem",
              "--set", "attack_steps=2", "--set", "steps=2", "--set", "inner_steps=2",
              "-n", "10", "--classes", "all", "--seed", "5", "--device", "cpu", "--no-png"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # `-n`, not `--n`: torchrun's argparse takes --n for an ambiguous abbreviation of its own options
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ebmlens", "sample", *common, "--batch-size", "3", "--out", str(tmp_path / "dist")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 10 samples") == 1  # only rank 0 reports

    single = CliRunner().invoke(main, ["sample", *common, "--batch-size", "10", "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output

    a, b = np.load(tmp_path / "dist" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert np.array_equal(a["labels"], b["labels"]) and a["labels"].tolist() == list(range(10))
    assert a["images"].shape == b["images"].shape == (10, 16, 16, 3)
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1

    run_d = json.loads((tmp_path / "dist" / "run.json").read_text())
    run_1 = json.loads((tmp_path / "one" / "run.json").read_text())
    assert run_d["world_size"] == 2 and run_1["world_size"] == 1
    assert run_d["pipeline"] == run_1["pipeline"] and run_d["labels"] == run_1["labels"]
    # both ranks did work: batches 0 and 2 on rank 0, batches 1 and 3 on rank 1
    ranks = {int(np.load(p)["rank"]) for p in (tmp_path / "dist" / "shards").glob("shard_*.npz")}
    assert ranks == {0, 1}
    assert [r["stage"] for r in run_d["energy"]] == [r["stage"] for r in run_1["energy"]]
    for rd, r1 in zip(run_d["energy"], run_1["energy"]):
        for q in ("energy", "joint_energy"):
            assert rd[q]["mean"] == pytest.approx(r1[q]["mean"], rel=1e-5, abs=1e-6), (rd["stage"], q)
