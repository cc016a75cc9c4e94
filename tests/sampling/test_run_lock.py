"""Two runs on one folder: the second fails at once naming the first (the run lock); after the
first ends, the folder is free again; shards/meta.json is created by the first writer only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import ebmlens
from ebmlens._io import create_json
from ebmlens.sampling import presets

from ..conftest import make_tiny_model


def test_second_run_on_a_locked_folder_fails_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys
        from ebmlens._lock import RunLock
        with RunLock({str(out / '.lock')!r}, what="ebmlens sample of 8 images"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        pipe = presets.get("dat2025", data=make_seed_images(), steps=1)
        with pytest.raises(ValueError, match=rf"in use by pid {holder.pid} on .*ebmlens sample of 8 images"):
            ebmlens.sample(make_tiny_model(), pipe, n=4, out_dir=out, batch_size=2, resume=True, png=False)
        assert not (out / "shards").exists()  # nothing was written by the refused run
    finally:
        holder.communicate("\n", timeout=30)
    run = ebmlens.sample(make_tiny_model(), pipe, n=4, out_dir=out, batch_size=2, resume=True, png=False)
    assert run.n == 4 and not (out / ".lock").exists()


def make_seed_images():
    import torch

    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_meta_is_created_by_the_first_writer_only(tmp_path):
    p = tmp_path / "shards" / "meta.json"
    assert create_json(p, {"n": 1}) is True
    assert create_json(p, {"n": 2}) is False
    assert json.loads(p.read_text()) == {"n": 1}
    assert [f for f in os.listdir(p.parent)] == ["meta.json"]
