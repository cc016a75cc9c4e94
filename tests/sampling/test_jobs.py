"""Job arrays and flat-memory outputs: ``--shard i/K`` tasks + ``ebmlens merge`` equal one process;
the merge names missing tasks and refuses while a task runs; a task refuses while OUT/.lock is held;
images.npy (memory-mapped) equals samples.npz; a resume never rewrites a finished PNG; the writer
thread overlaps the next batch and its errors reach the caller."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ebmlens
from ebmlens import rng
from ebmlens.cli import main
from ebmlens.data import CIFAR10_CLASSES, as_image_data, load_data
from ebmlens.models.archs import ConvNetSmall
from ebmlens.runs import jobs, loop
from ebmlens.runs.runner import SampleRun, sample
from ebmlens.sampling import class_stats
from ebmlens.sampling.records import Samples

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint (file: model) and class statistics on 3x16x16 images."""
    tmp = tmp_path_factory.mktemp("jobs")
    g = torch.Generator().manual_seed(0)
    net = ConvNetSmall(num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    meta = {"arch": "convnet-small", "num_classes": 10,
            "class_names": CIFAR10_CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "input_shape": list(SHAPE)}
    ckpt = tmp / "tiny.pt"
    torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, ckpt)
    x = torch.rand(100, *SHAPE, generator=g)
    stats = class_stats(x, torch.arange(10).repeat(10)).compact(4).save(tmp / "stats.safetensors")
    return ckpt, stats


def _args(files, out, *extra):
    ckpt, stats = files
    return ["sample", "--model", f"file:{ckpt}", "--stats", str(stats), "--preset", "robust-jem",
            "--set", "attack_steps=1", "--set", "steps=1", "--set", "inner_steps=1", "-n", "10", "--classes", "all",
            "--seed", "3", "--device", "cpu", "--batch-size", "5",
            "--out", str(out), *extra]


def _invoke(args):
    return CliRunner().invoke(main, args)


def test_two_tasks_and_merge_equal_one_process(files, tmp_path):
    one = _invoke(_args(files, tmp_path / "one"))
    assert one.exit_code == 0, one.output
    for i in (1, 0):  # any order
        r = _invoke(_args(files, tmp_path / "arr", "--shard", f"{i}/2"))
        assert r.exit_code == 0, r.output
        assert f"shard {i}/2: 5 new samples (indices {5 * i}..{5 * i + 4})" in r.output
    assert not (tmp_path / "arr" / "run.json").exists()  # a task does not merge
    tasks = jobs.task_records(tmp_path / "arr" / "shards")
    assert ([(t["shard"], t["status"], t["indices"]) for t in tasks]
            == [([0, 2], "done", [0, 5]), ([1, 2], "done", [5, 10])])
    assert len(list((tmp_path / "arr").glob("*/*.png"))) == 10  # the tasks wrote their PNGs

    m = _invoke(["merge", str(tmp_path / "arr")])
    assert m.exit_code == 0, m.output
    a, b = SampleRun.open(tmp_path / "arr"), SampleRun.open(tmp_path / "one")
    (ia, la), (ib, lb) = a.load(), b.load()
    assert np.array_equal(la, lb) and la.tolist() == list(range(10))
    assert np.array_equal(ia, ib)  # per-index seeding, same batches, same device: identical
    for key in ("pipeline", "model", "labels", "n", "options"):
        assert a.run[key] == b.run[key], key
    assert a.run["world_size"] == 2 and b.run["world_size"] == 1
    assert a.run["files"]["images"] == "images.npy" and a.run["files"]["samples"] == "samples.npz"
    assert [e["stage"] for e in a.run["energy"]] == [e["stage"] for e in b.run["energy"]]
    for ea, eb in zip(a.run["energy"], b.run["energy"]):
        assert ea["joint_energy"]["mean"] == pytest.approx(eb["joint_energy"]["mean"], rel=1e-6)
        assert (ea["index"], ea["source"]) == (eb["index"], eb["source"])  # the merge knows each record's source
    with np.load(tmp_path / "arr" / "samples.npz") as z:
        assert np.array_equal(z["images"], ia) and np.array_equal(z["labels"], la)
    # a task re-run after the merge has nothing left to do
    again = _invoke(_args(files, tmp_path / "arr", "--shard", "1/2"))
    assert again.exit_code == 0 and "shard 1/2: 0 new samples" in again.output


def test_merge_names_missing_tasks_and_indices(files, tmp_path):
    out = tmp_path / "arr"
    assert _invoke(_args(files, out, "--shard", "0/2")).exit_code == 0
    m = _invoke(["merge", str(out)])
    assert m.exit_code == 2
    assert "5 of 10 samples are missing" in m.output and "indices 5-9" in m.output
    assert "1/2 (never started)" in m.output and not (out / "run.json").exists()
    assert not (out / ".lock").exists()
    # another split of the same folder joins as long as nothing else runs; a different seed is refused
    bad = _invoke(_args(files, out, "--shard", "1/2", "--seed", "4"))
    assert bad.exit_code == 2 and "different seed" in bad.output


def _hold(lock_path):
    code = textwrap.dedent(f"""
        import sys
        from ebmlens._lock import RunLock
        with RunLock({str(lock_path)!r}, what="holder"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_task_refuses_while_the_run_lock_is_held_and_merge_while_a_task_runs(files, tmp_path):
    out = tmp_path / "arr"
    holder = _hold(out / ".lock")
    try:
        r = _invoke(_args(files, out, "--shard", "0/2"))
        assert r.exit_code == 2 and f"in use by pid {holder.pid}" in r.output, r.output
        assert not list((out / "shards").glob("shard_*.npz")) if (out / "shards").exists() else True
    finally:
        holder.communicate("\n", timeout=30)
    assert _invoke(_args(files, out, "--shard", "0/2")).exit_code == 0
    task = _hold(out / "shards" / ".lock-1-of-2")
    try:
        m = _invoke(["merge", str(out)])
        assert m.exit_code == 2 and f"task 1/2 (pid {task.pid}" in m.output, m.output
        plain = _invoke(_args(files, out, "--resume"))  # a whole run would sample task 1's block too
        assert plain.exit_code == 2 and "job-array tasks: task 1/2" in plain.output, plain.output
        other = _invoke(_args(files, out, "--shard", "0/3"))  # overlapping blocks of another split
        assert other.exit_code == 2 and "another split" in other.output, other.output
    finally:
        task.communicate("\n", timeout=30)


def test_shard_specs():
    assert jobs.parse_shard("0/1") == (0, 1) and jobs.parse_shard(None) is None
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert jobs.parse_shard("auto", env) == (2, 4)
    for bad, needle in (("2/2", "0..K-1"), ("1-2", "i/K"), ("0/0", "K >= 1")):
        with pytest.raises(ValueError, match=needle):
            jobs.parse_shard(bad)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID"):
        jobs.parse_shard("auto", {})
    blocks = [jobs.block(10, i, 3) for i in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]


# ----------------------------------------------------------------------------- library level
def _noise(model, y, *, generator):
    return Samples(images=rng.rand(generator, len(y), (3, 8, 8)), labels=y, trace=())


def _model():
    from ..conftest import make_tiny_model

    return make_tiny_model()


def test_images_npy_is_memory_mapped_and_equals_samples_npz(tmp_path):
    run = sample(_model(), _noise, 7, tmp_path / "r", batch_size=3, png=False)
    images = np.load(tmp_path / "r" / "images.npy", mmap_mode="r")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (7, 8, 8, 3)
    with np.load(tmp_path / "r" / "samples.npz") as z:
        assert set(z.files) == {"images", "labels"}
        assert (np.array_equal(z["images"], images)
                and np.array_equal(z["labels"], np.load(tmp_path / "r" / "labels.npy")))
    loaded, labels = run.load()
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, images)
    assert run.run["files"]["images"] == "images.npy" and run.run["files"]["labels"] == "labels.npy"
    # folder: readers prefer the .npy pair, memory-mapped, with the fingerprint of the arrays
    data = as_image_data(tmp_path / "r")
    assert isinstance(data.images, np.memmap)
    assert data.fingerprint == load_data(f"npz:{tmp_path / 'r' / 'samples.npz'}").fingerprint


def test_resume_never_rewrites_finished_pngs(tmp_path):
    out = tmp_path / "r"

    def killer(done, total):
        if done >= 6:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        sample(_model(), _noise, 9, out, batch_size=3, classes=[0, 1], progress=killer)
    first = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/*.png")}
    assert len(first) == 6  # the PNGs of the two finished batches, written as they went
    sample(_model(), _noise, 9, out, batch_size=3, classes=[0, 1], resume=True)
    assert len(list(out.glob("*/*.png"))) == 9
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first} == first
    # PNGs lost (e.g. a run with --no-png before) are filled in by the merge, the others left alone
    lost = sorted(first)[0]
    lost.unlink()
    sample(_model(), _noise, 9, out, batch_size=3, classes=[0, 1], resume=True)
    assert lost.exists() and {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first if p != lost} == \
        {p: v for p, v in first.items() if p != lost}


def test_next_batch_samples_while_the_previous_one_is_written(tmp_path, monkeypatch):
    started = [threading.Event() for _ in range(3)]
    overlapped = []
    real = loop.write_batch

    def slow_write(plan, idx, *rest):
        b = int(idx[0]) // 2
        if b + 1 < len(started):  # the loop must reach batch b + 1 while batch b is being written
            overlapped.append(started[b + 1].wait(timeout=20))
        real(plan, idx, *rest)

    def pipe(model, y, *, generator):
        started[sum(e.is_set() for e in started)].set()
        return _noise(model, y, generator=generator)

    monkeypatch.setattr(loop, "write_batch", slow_write)
    sample(_model(), pipe, 6, tmp_path / "r", batch_size=2, png=False)
    assert overlapped == [True, True]


def test_writer_errors_reach_the_caller(tmp_path, monkeypatch):
    calls = []

    def failing(plan, idx, *rest):
        calls.append(int(idx[0]))
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(plan, idx, *rest)

    real = loop.write_batch
    monkeypatch.setattr(loop, "write_batch", failing)
    with pytest.raises(OSError, match="disk full"):
        sample(_model(), _noise, 10, tmp_path / "r", batch_size=2, png=False)
    assert calls[:2] == [0, 2] and len(calls) <= 3  # stopped within a batch of the failure
    assert sorted(p.name for p in (tmp_path / "r" / "shards").glob("shard_*.npz"))[0] == "shard_000000000.npz"
    assert not (tmp_path / "r" / "run.json").exists()
    monkeypatch.setattr(loop, "write_batch", real)
    done = sample(_model(), _noise, 10, tmp_path / "r", batch_size=2, png=False, resume=True)
    assert (done.run["timings"]["images_resumed"] >= 2
            and json.loads((tmp_path / "r" / "run.json").read_text())["n"] == 10)


def test_library_shard_argument(tmp_path):
    a = sample(_model(), _noise, 5, tmp_path / "r", batch_size=2, png=False, shard=(1, 2))
    assert a.run["indices"] == [2, 5] and a.run["images_sampled"] == 3
    b = ebmlens.sample(_model(), _noise, 5, tmp_path / "r", batch_size=2, png=False, shard="0/2")
    assert b.run["indices"] == [0, 2]
    from ebmlens.runs.runner import merge

    merged = merge(tmp_path / "r")
    whole = sample(_model(), _noise, 5, tmp_path / "w", batch_size=2, png=False)
    assert np.abs(merged.load()[0].astype(int) - whole.load()[0].astype(int)).max() <= 1
