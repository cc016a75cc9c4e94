"""SLURM without a cluster: srun's variables become rank / world / local rank / master only inside a
job step (SLURM_STEP_ID) of more than one task; two local processes with faked srun variables give
the torchrun (= single-process) result; a plain command in an sbatch allocation runs alone; the
compressed node list parser. Untested here: a real cluster (srun's own launch, several nodes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens import _dist
from ebmlens.cli import main

from .test_torchrun import _files

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

SLURM = ("SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODELIST", "SLURM_JOB_ID",
         "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for k in SLURM + TORCHRUN:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_nodelist_parser():
    assert _dist.expand_nodelist("n[01-03,07],m5") == ["n01", "n02", "n03", "n07", "m5"]
    assert _dist.expand_nodelist("n[01-03,07],m5")[0] == "n01"
    assert _dist.expand_nodelist("gpu-a[9-11]") == ["gpu-a9", "gpu-a10", "gpu-a11"]
    assert _dist.expand_nodelist("r[1-2]n[08-09],x") == ["r1n08", "r1n09", "r2n08", "r2n09", "x"]
    assert _dist.expand_nodelist("single") == ["single"]
    for bad in ("n[01-03", "n[3-1]", "n[a-b]", "a,,b"):
        with pytest.raises(ValueError, match="SLURM node list"):
            _dist.expand_nodelist(bad)


def test_slurm_variables_map_only_inside_an_srun_step(clean_env):
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_PROCID", "2")
    clean_env.setenv("SLURM_LOCALID", "0")
    clean_env.setenv("SLURM_NODELIST", "n[01-03,07],m5")
    clean_env.setenv("SLURM_JOB_ID", "123456")
    assert _dist.dist_env() == _dist.DistInfo()  # sbatch script, no srun: alone
    assert _dist.slurm_env() is None and _dist.local_world_size() == 1
    clean_env.setenv("SLURM_STEP_ID", "0")
    d, host, port = _dist.slurm_env()
    assert (d.rank, d.world, d.local_rank, host, port) == (2, 4, 0, "n01", 29500 + 456)
    assert _dist.dist_env() == d
    clean_env.setenv("MASTER_PORT", "4321")
    assert _dist.slurm_env()[2] == 4321
    clean_env.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)")
    assert _dist.local_world_size() == 2
    clean_env.setenv("SLURM_NTASKS", "1")  # a one-task step: alone
    assert _dist.dist_env() == _dist.DistInfo()
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("WORLD_SIZE", "1")  # torchrun's variables win
    assert _dist.dist_env() == _dist.DistInfo()


def test_plain_run_in_an_allocation_runs_alone(tmp_path, clean_env):
    ckpt, stats = _files(tmp_path)
    for k, v in dict(SLURM_NTASKS="4", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODELIST="n[1-4]",
                     SLURM_JOB_ID="7").items():
        clean_env.setenv(k, v)
    r = CliRunner().invoke(main, ["sample", "--model", f"file:{ckpt}", "--stats", str(stats), "--set", "steps=1",
                                  "--set", "attack_steps=1", "--set", "inner_steps=1", "-n", "4", "--device", "cpu",
                                  "--no-png", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "run.json").read_text())["world_size"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_srun_tasks_match_single_process(tmp_path):
    ckpt, stats = _files(tmp_path)
    common = ["--model", f"file:{ckpt}", "--stats", str(stats), "--preset", "robust-jem",
              "--set", "attack_steps=2", "--set", "steps=2", "--set", "inner_steps=2",
              "-n", "10", "--classes", "all", "--seed", "5", "--device", "cpu", "--no-png"]
    env = {k: v for k, v in os.environ.items() if k not in SLURM + TORCHRUN}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SLURM_STEP_ID="0", SLURM_NTASKS="2",
               SLURM_NODELIST="localhost", SLURM_JOB_ID="99", MASTER_PORT=str(_free_port()))
    cmd = [sys.executable, "-m", "ebmlens", "sample", *common, "--batch-size", "3", "--out", str(tmp_path / "dist")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert sum(o.count("wrote 10 samples") for o, _ in outs) == 1  # only rank 0 reports

    single = CliRunner().invoke(main, ["sample", *common, "--batch-size", "10", "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    a, b = np.load(tmp_path / "dist" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert np.array_equal(a["labels"], b["labels"])
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
    run_d = json.loads((tmp_path / "dist" / "run.json").read_text())
    assert run_d["world_size"] == 2
    ranks = {int(np.load(p)["rank"]) for p in (tmp_path / "dist" / "shards").glob("shard_*.npz")}
    assert ranks == {0, 1}
