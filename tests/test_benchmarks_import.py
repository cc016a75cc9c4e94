"""Every script in benchmarks/ still imports against the package (a moved module broke
``select_steps.py`` once, unnoticed until a measurement needed it). Only the top level runs: no
benchmark is executed."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_benchmark_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their siblings (quality, _common)
    for name in [m for m in sys.modules if m in {p.stem for p in BENCH.glob("*.py")}]:
        monkeypatch.delitem(sys.modules, name)  # fresh siblings, restored afterwards
    ns = runpy.run_path(str(BENCH / script), run_name="benchmark_import_check")
    assert callable(ns.get("main")) or script.startswith("_"), f"{script} has no main()"
