"""``benchmarks/quality.py --quick`` end to end in a subprocess: its JSON's keys and value ranges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("santurkar2019", "jempp", "robust-jem-energy", "robust-jem", "mirza2024", "dat2025", "mixture-ascent")
IN_UNIT = ("judged_accuracy", "precision", "recall", "coverage")


def test_quick_benchmark_writes_its_json(tmp_path, cifar_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "EBMLENS_CIFAR10": str(cifar_path)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert seconds < 120, f"--quick took {seconds:.0f} s"         # the target is 60 s on 2 idle cores
    r = json.loads((tmp_path / "quality.json").read_text())
    assert set(r["rows"]) == {"real test images", *PRESETS}
    assert r["judge"] == "ebmlens:cifar10-standard-small" and r["model"] == "ebmlens:cifar10-l2-small"
    assert r["n_samples"] == 20 and r["seeds"] == [0] and r["sweep_factors"] == [0.0, 0.1]
    assert "test images" in r["reference"]["real_row"] and "training images" in r["reference"]["manifold"]
    for name, row in r["rows"].items():
        for k in IN_UNIT + ("diversity",):
            iv = row[k]
            assert iv["lo"] <= iv["mean"] <= iv["hi"], (name, k, iv)
            assert 0.0 <= iv["mean"] <= (2.0 if k == "diversity" else 1.0), (name, k, iv)
        assert row["fd"]["mean"] >= 0 and row["density"]["mean"] >= 0
        assert "energy" in row
    real = r["rows"]["real test images"]
    assert real["judged_accuracy"]["mean"] >= 0.7 and real["precision"]["mean"] >= 0.7   # real images look real
    for name in PRESETS:
        row = r["rows"][name]
        assert row["grad_evals"]["mean"] > 0 and row["seconds"]["mean"] > 0
        assert set(r["sweep"][name]) == {"0.0", "0.1"}
        assert r["sweep"][name]["0.0"]["grad_evals"]["mean"] == 0     # the init alone takes no gradient
        assert set(r["memorisation"][name]) >= {"pixels_median", "features_median"}
    assert r["rows"]["santurkar2019"]["grad_evals"]["mean"] == 6      # 0.1 x 60 steps, one pass each
    assert r["rows"]["robust-jem"]["grad_evals"]["mean"] == 2 + 5     # 0.1 x (15 PGD + 50 SGLD outer steps)
    ours = r["rows"]["mixture-ascent"]                              # 0.1 x 22 steps = 2, stopping per sample
    assert 0 < ours["grad_evals"]["mean"] <= ours["grad_evals_unshrunk"]["mean"] == 2
    d = r["dominance"]
    assert set(d["versus"]) == set(PRESETS) - {"mixture-ascent"}
    assert all(v in ("better", "worse", "tie") for row in d["versus"].values() for v in row.values())
    assert (d["conditions"]["grad_evals <= 22"] is True
            and "mixture-ascent against" in (tmp_path / "quality.md").read_text())
    assert len(r["closest_pairs"]["pixels"]) == 10 and len(r["closest_pairs"]["features"]) == 10
    for f in ("quality.md", "frontier.png", "memorisation_pixels.png", "memorisation_features.png",
              "grid_dat2025.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert "| real test images |" in (tmp_path / "quality.md").read_text()
