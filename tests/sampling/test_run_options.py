"""RunOptions (one validated options object, stored whole in run.json) and "nothing overwritten" (issue 19
item 2, issue 22 item 4): each refusal is one line, before anything is computed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens import rng
from ebmlens.cli import main
from ebmlens.runs import RunOptions, merge, sample
from ebmlens.sampling import Clamp, NoiseInit, Pipeline

from .conftest import make_small_model


def _noise(model, y, *, generator=None):
    return rng.rand(generator, len(y), model.input_shape)


PIPE = Pipeline(NoiseInit(), (Clamp(),))


def _run(out, **kw):
    return sample(make_small_model(), kw.pop("pipeline", PIPE), kw.pop("n", 4), out, **{"batch_size": 2, **kw})


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in r.output, r.output


# ----------------------------------------------------------------------------- RunOptions
def test_run_options_are_one_frozen_validated_object_mapped_flag_for_flag():
    o = RunOptions(batch_size=np.int64(8), seed=3)
    assert o.batch_size == 8 and type(o.batch_size) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.seed = 4
    for bad, match in [(dict(seed=-1), "seed must be"), (dict(dtype="int8"), "dtype must be"),
                       (dict(records="some"), "records must be"), (dict(threads=0), "threads must be"),
                       (dict(png="no"), "png must be True or False"), (dict(shard="3/2"), "--shard 3/2"),
                       (dict(resume=True, overwrite=True), "give one of them")]:
        with pytest.raises((ValueError, TypeError), match=match):
            RunOptions(**bad)
    with pytest.raises(ValueError, match="^--seed must be"):
        RunOptions.from_cli(seed=-1)
    # every field is one flag of `ebmlens sample` (the CLI maps them one to one)
    cmd = main.get_command(None, "sample")
    flags = {o for p in cmd.params for o in p.opts}
    assert set(RunOptions.flags().values()) <= flags
    with pytest.raises(TypeError, match="unknown run option"):
        _run("never", save_png=False)


def test_run_json_stores_the_options_and_every_attempt(tmp_path):
    before = torch.get_num_threads()
    t = before + 1
    try:
        r = _run(tmp_path / "a", n=6, threads=t, seed=5)
        assert torch.get_num_threads() == t and r.run["attempts"][-1]["threads"] == t  # set process-wide, recorded
        assert r.run["format"] == "ebmlens.sample/2"
        assert r.run["options"] == json.loads(json.dumps(RunOptions(batch_size=2, seed=5, threads=t,
                                                                     records="stages").stored()))
        # batch size and thread count may change on resume; each attempt is recorded as it ran
        shard = sorted((tmp_path / "a" / "shards").glob("shard_*.npz"))[1]
        shard.unlink()
        again = _run(tmp_path / "a", n=6, batch_size=3, threads=before, seed=5, resume=True)
    finally:
        torch.set_num_threads(before)
    assert [(a["batch_size"], a["threads"], a["images_sampled"]) for a in again.run["attempts"]] == [
        (2, t, 6), (3, before, 2)]
    np.testing.assert_array_equal(again.load()[0], r.load()[0])


@pytest.mark.parametrize("change, name", [(dict(seed=1), "seed"), (dict(dtype="bfloat16"), "dtype"),
                                          (dict(png=False), "png"), (dict(grid=False), "grid"),
                                          (dict(records="none"), "pipeline"), (dict(n=5), "n"),
                                          (dict(classes=[0, 1]), "labels"), (dict(pipeline=_noise), "pipeline")])
def test_resume_refuses_a_change_of_what_the_run_is(tmp_path, change, name):
    _run(tmp_path / "r")
    with pytest.raises(ValueError, match=f"different {name}"):
        _run(tmp_path / "r", resume=True, **change)


def _make_v1(out):
    """A run folder as ebmlens.sample/1 left it: meta.json and run.json without the format of /2."""
    r = _run(out, pipeline=_noise)
    meta = json.loads((out / "shards" / "meta.json").read_text())
    del meta["format"]
    (out / "shards" / "meta.json").write_text(json.dumps(meta))
    (out / "run.json").write_text(json.dumps({**r.run, "format": "ebmlens.sample/1"}))


def test_a_format_1_run_is_refused_on_resume_and_merge(tmp_path):
    _make_v1(tmp_path / "v1")
    with pytest.raises(ValueError, match=r"format ebmlens.sample/1 \(an older ebmlens\); this version cannot resume"):
        _run(tmp_path / "v1", pipeline=_noise, resume=True)
    _one_line_error(_cli("merge", str(tmp_path / "v1")), "ebmlens.sample/1", "cannot merge")


# ----------------------------------------------------------------------------- nothing overwritten
def test_sample_refuses_a_folder_of_other_files_and_keeps_them(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "grid.png").write_bytes(b"the user's own grid")
    r = _cli("sample", "--n", "2", "--out", str(out), "--model", "ebmlens:no-such-model")  # refused before loading
    _one_line_error(r, "not empty", "grid.png", "--overwrite")
    with pytest.raises(ValueError, match="not empty"):
        _run(out)
    assert (out / "grid.png").read_bytes() == b"the user's own grid" and sorted(p.name for p in out.iterdir()) == [
        "grid.png"]
    done = _run(out, overwrite=True)  # asked for: written into the folder
    assert (out / "grid.png").read_bytes() != b"the user's own grid" and done.load()[0].shape[0] == 4


def test_sample_refuses_an_earlier_run_unless_resume_or_overwrite(tmp_path):
    first = _run(tmp_path / "r", n=6)
    with pytest.raises(ValueError, match=r"already holds a sampling run; pass --resume .* --overwrite"):
        _run(tmp_path / "r", n=4, seed=1)
    (tmp_path / "r" / "0" / "notes.txt").write_text("mine")  # a file of the user's inside a class folder
    new = _run(tmp_path / "r", n=4, seed=1, overwrite=True)  # another run replaces it, nothing of the old kept
    assert new.load()[0].shape[0] == 4 and len(new.run["attempts"]) == 1
    assert len(list((tmp_path / "r" / "shards").glob("shard_*.npz"))) == 2
    assert sorted(p.name for p in (tmp_path / "r").glob("*/*.png")) == [f"00000{i}.png" for i in range(4)]
    assert (tmp_path / "r" / "0" / "notes.txt").read_text() == "mine"
    assert new.run["timings"] != first.run["timings"] or new.run["created"] >= first.run["created"]


def test_merge_of_a_finished_plain_run_keeps_its_timings(tmp_path):
    first = _run(tmp_path / "r")
    merged = merge(tmp_path / "r")
    assert merged.run["timings"] == first.run["timings"] and merged.run["created"] == first.run["created"]
    assert merged.run["attempts"][-1]["kind"] == "merge" and len(merged.run["attempts"]) == 2


def test_an_evaluation_recorded_in_a_run_survives_a_resume(tmp_path):
    from ebmlens.runs.record import record_evaluation

    _run(tmp_path / "r")
    record_evaluation(tmp_path / "r", {"values": {"diversity": 0.5}})
    again = _run(tmp_path / "r", resume=True)
    assert again.run["evaluation"] == {"values": {"diversity": 0.5}}


def test_sample_out_that_cannot_be_written_is_refused_before_loading(tmp_path):
    (tmp_path / "f").write_text("a file")
    r = _cli("sample", "--n", "2", "--out", str(tmp_path / "f" / "sub"), "--model", "ebmlens:no-such-model")
    _one_line_error(r, "is a file")


def test_file_outs_of_evaluate_and_accuracy(tmp_path):
    existing = tmp_path / "result.json"
    existing.write_text("{}")
    # an existing file is refused unless --overwrite; checked before SAMPLES or the model are even looked at
    _one_line_error(_cli("evaluate", str(tmp_path / "nothing-here"), "--out", str(existing)), "exists", "--overwrite")
    _one_line_error(_cli("accuracy", "--model", "ebmlens:no-such-model", "--data", "npz:nothing.npz", "--out",
                         str(existing)), "exists", "--overwrite")
    (tmp_path / "f").write_text("a file")
    _one_line_error(_cli("evaluate", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "f" / "m.json")),
                    "is a file")
    _one_line_error(_cli("accuracy", "--model", "ebmlens:no-such-model", "--data", "npz:nothing.npz", "--out",
                         str(tmp_path / "f" / "m.json")), "is a file")
    assert existing.read_text() == "{}"
    # --overwrite passes the check (and then fails on the missing samples, not on --out)
    r = _cli("evaluate", str(tmp_path / "nothing-here"), "--out", str(existing), "--overwrite")
    assert r.exit_code == 2 and "exists; pass --overwrite" not in r.output


def test_stats_resumes_its_own_folder_and_refuses_others(tmp_path):
    out = tmp_path / "st"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(_cli("stats", "--data", "npz:nothing.npz", "--out", str(out)), "not empty", "notes.txt")
    (out / "meta.json").write_text("{}")  # its own record: continues there without a flag
    r = _cli("stats", "--data", "npz:nothing.npz", "--out", str(out))
    assert "not empty" not in r.output


def test_evaluate_may_write_a_runs_metrics_json_the_one_cross_write(tmp_path):
    _run(tmp_path / "r")
    (tmp_path / "r" / "metrics.json").write_text("{}")
    (tmp_path / "r" / "other.json").write_text("{}")
    run = str(tmp_path / "r")
    _one_line_error(_cli("evaluate", run, "--out", str(tmp_path / "r" / "other.json"), "--metrics", "nonsense"),
                    "exists")
    r = _cli("evaluate", run, "--out", str(tmp_path / "r" / "metrics.json"), "--metrics", "nonsense")
    assert r.exit_code == 2 and "exists" not in r.output and "nonsense" in r.output, r.output


def test_busy_cpu_hint(monkeypatch, caplog):
    """Threads not given on a loaded machine: the run says that --threads 1 is often faster."""
    import logging
    import os

    from ebmlens.runs import runner

    monkeypatch.setattr(runner.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    with caplog.at_level(logging.WARNING, logger=runner.log.name):
        runner._hint_threads()
    assert "--threads 1" in caplog.text and "load average 7.5 on 2 cores" in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    with caplog.at_level(logging.WARNING, logger=runner.log.name):
        runner._hint_threads()
    assert caplog.text == ""
