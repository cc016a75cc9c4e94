"""examples/energy_analysis.py runs end to end (tiny n, one step)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "energy_analysis.py"


def test_example_runs(cifar_spec, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("energy_analysis_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the bundled robust model; EBMLENS_DEV_ROBUST stands in for it before it ships (see conftest)
    robust = (f"file:{os.environ['EBMLENS_DEV_ROBUST']}" if os.environ.get("EBMLENS_DEV_ROBUST")
              else "ebmlens:cifar10-l2-small")
    results = mod.main(["--data", cifar_spec, "--n", "8", "--steps", "1", "--out", str(tmp_path),
                        "--models", robust, "ebmlens:cifar10-standard-small"])
    out = capsys.readouterr().out
    assert len(results) == 2 and out.count("| natural |") == 2 and "the attack" in out
    for r in results.values():
        assert r["natural"].n == 8 and r.kind_names == ["natural", "pgd", "pgd-targeted"]
    assert (tmp_path / "ebmlens_cifar10-standard-small" / "report.json").exists()
    import matplotlib  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    assert (tmp_path / "ebmlens_cifar10-standard-small" / "energies.png").exists()
