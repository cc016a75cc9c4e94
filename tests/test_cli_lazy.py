"""`import ebmlens.cli` and `--help` load no torch: the CLI answers in a fraction of a second."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from ebmlens.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "numpy", "PIL") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("args", [[], ["--help"], ["sample", "--help"], ["energy", "--help"], ["evaluate", "--help"],
                                  ["accuracy", "--help"], ["train", "--help"], ["models", "--help"],
                                  ["ood", "--help"], ["calibration", "--help"], ["counterfactual", "--help"]])
def test_cli_help_imports_no_torch(args):
    code = "import ebmlens.cli, sys; print('HEAVY', 'torch' in sys.modules)" if not args else PROBE.format(args=args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY")][-1]
    assert line in ("HEAVY False", "HEAVY "), f"{args}: {line}"
