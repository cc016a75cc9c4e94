"""benchmarks/gpu.py --quick runs end to end on the CPU (small models) and reports what the GPU run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_quick_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert "fast path skipped" in r.stdout
    # ratios print last: same dtype against the reference loops, the best path against the fp32 reference
    tail = lines[lines.index(next(s for s in lines if s.startswith("ratios"))) + 1:]
    assert tail and all(s.startswith("ratio ") for s in tail)
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and set(res["models"]) == {"resnet-tiny", "convnet-small"}
    for spec, cases in res["models"].items():
        assert set(cases) == {"santurkar2019", "mirza2024", "jempp", "robust-jem"}
        assert cases["robust-jem"]["against"] == "bare loop" and cases["mirza2024"]["against"] == "reference"
        for name, e in cases.items():
            assert set(e["runs"]) == {"float32", "bfloat16"}            # no fast path on the CPU
            assert e["gradient_passes"] > 0
            for label, run in e["runs"].items():
                assert run["images_per_s"] > 0 and run["tflops"] > 0 and run["ratio"] > 0
                assert run["fraction_of_peak"] is None and run["peak_source"].startswith("peak unknown")
                assert 0 <= run["noise_share"] < 1
                assert f"ratio {spec} {name} {label} vs {e['against']} {label}: " in r.stdout
            assert e["runs"]["float32"]["peak_memory_per_image_mb"] >= 0
            assert e["best"]["path"] in e["runs"] and e["best"]["ratio_vs_fp32_reference"] > 0
            assert f"ratio {spec} {name} best ebmlens path ({e['best']['path']}) vs fp32 {e['against']}: " in r.stdout
    assert res["models"]["resnet-tiny"]["robust-jem"]["no_grad_forwards"] == 2
