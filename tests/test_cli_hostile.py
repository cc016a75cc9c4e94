"""Tracebacks are bugs (issue 22 item 6): every subcommand, handed the bad files a user really has,
ends in one line that starts with ``error:`` and exit code 2: never a traceback, never a number.

The files are made in ``tmp_path``; each case runs the command up to the point where it reads the bad
file (a few model passes at most), so the table stays fast."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebmlens.cli import main
from ebmlens.models.archs import get_arch

RNG = np.random.default_rng(0)


def _npz(path, images, labels="default"):
    kw = {"images": images}
    if labels is not None:
        kw["labels"] = np.arange(len(images)) % 10 if isinstance(labels, str) else labels
    np.savez(path, **kw)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    u8 = RNG.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    f = (u8 / 255).astype(np.float32)
    nan = f.copy()
    nan[3, 5, 5, 1] = np.nan
    files = {
        "nan": _npz(d / "nan.npz", nan),
        "0-255 floats": _npz(d / "f255.npz", f * 255),
        "[-1, 1] floats": _npz(d / "pm1.npz", f * 2 - 1),
        "int16": _npz(d / "i16.npz", u8.astype(np.int16)),
        "no labels": _npz(d / "nolab.npz", u8, None),
        "labels -1": _npz(d / "neg.npz", u8, -np.ones(12, np.int64)),
        "labels 10-19": _npz(d / "big.npz", u8, np.arange(12) % 10 + 10),
    }
    (d / "garbage.npz").write_bytes(bytes(RNG.integers(0, 256, 512, dtype=np.uint8)))
    files["garbage npz"] = f"npz:{d / 'garbage.npz'}"
    zebra = d / "zoo" / "zebra"
    zebra.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(u8[0]).save(zebra / "a.png")
    files["unknown class folder"] = f"folder:{d / 'zoo'}"
    noise = d / "noise.pt"
    noise.write_bytes(bytes(RNG.integers(0, 256, 2048, dtype=np.uint8)))
    files["random-bytes checkpoint"] = f"file:{noise}"
    good = _npz(d / "good.npz", u8)
    return d, files, good


def _args(cmd, data, d, out):
    return {
        "energy": ["energy", "--data", data, "-n", "4", "--attack", "pgd", "--steps", "1", "--out", str(out)],
        "accuracy": ["accuracy", "--data", data, "-n", "4", "--steps", "1"],
        "calibration": ["calibration", "--data", data, "-n", "4", "--out", str(out)],
        "counterfactual": ["counterfactual", "--data", data, "-n", "2", "--steps", "1", "--out", str(out)],
        "ood": ["ood", "--data", data, "--ood", "synthetic:uniform", "-n", "4", "--out", str(out)],
        "stats": ["stats", "--data", data, "--out", str(out)],
        "train": ["train", "--data", data, "--epochs", "1", "--out", str(out)],
        "sample": ["sample", "--preset", "dat2025", "--data", data, "--set", "steps=1", "-n", "2", "--no-png",
                   "--no-grid", "--out", str(out)],
        "evaluate": ["evaluate", data, "--ref", data, "--metrics", "fd", "--feature-model", "ebmlens:cifar10-l2-small",
                     "--batch-size", "6"],
    }[cmd]


#: (command, bad file): every command meets the files it reads; unlabeled sets only where labels are needed
CASES = [(c, k) for c in ("energy", "accuracy", "calibration", "counterfactual", "ood", "stats", "train", "sample",
                          "evaluate")
         for k in ("nan", "0-255 floats", "[-1, 1] floats", "int16", "garbage npz")] + [
    (c, k) for c in ("energy", "accuracy", "calibration", "counterfactual", "stats", "train")
    for k in ("no labels", "labels -1", "labels 10-19", "unknown class folder")
    if (c, k) != ("train", "labels 10-19")]  # train builds a model for the labels it is given: 20 classes


@pytest.mark.parametrize("cmd,case", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_bad_file_is_one_line_and_exit_2(bad, tmp_path, cmd, case):
    d, files, _ = bad
    r = CliRunner().invoke(main, _args(cmd, files[case], d, tmp_path / "out"))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len([ln for ln in lines if ln.startswith("error:")]) == 1, r.output


@pytest.mark.parametrize("cmd", ["energy", "accuracy", "calibration", "counterfactual", "ood", "sample"])
def test_corrupt_checkpoint_is_one_line(bad, tmp_path, cmd):
    d, files, good = bad
    r = CliRunner().invoke(main, _args(cmd, good, d, tmp_path / "out") + ["--model", files["random-bytes checkpoint"]])
    assert r.exit_code == 2, r.output
    assert "corrupt or not a checkpoint" in r.output and "trust" not in r.output and "Traceback" not in r.output


def test_train_resume_of_a_pickled_or_truncated_last_pt(bad, tmp_path):
    d, _, good = bad
    net = get_arch("convnet-small")(num_classes=10)
    for name, write in [("pickled", lambda p: torch.save({"state_dict": net.state_dict(), "x": object()}, p)),
                        ("truncated", lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64))]:
        out = tmp_path / name
        out.mkdir()
        write(out / "last.pt")
        r = CliRunner().invoke(main, ["train", "--data", good, "--epochs", "1", "--out", str(out), "--resume"])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and r.output.strip().startswith("error:"), r.output
