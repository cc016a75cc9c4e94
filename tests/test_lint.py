"""Lint and types are part of the test command (README's ``pip install -e '.[test]' && python -m pytest -q``
is CI's command): ``ruff`` (rules E, F, W, I at 120 columns) and ``mypy`` with the configuration in
pyproject.toml. Both come with the ``test`` extra; nothing is skipped when they are missing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["ebmlens", "tests", "benchmarks", "tools", "examples"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean():
    out = _run("ruff", "check", "--no-cache", *LINTED)
    assert out.returncode == 0, f"ruff check {' '.join(LINTED)}:\n{out.stdout[-6000:]}{out.stderr[-2000:]}"


def test_mypy_clean():
    out = _run("mypy", "ebmlens")
    assert out.returncode == 0, f"mypy ebmlens:\n{out.stdout[-6000:]}{out.stderr[-2000:]}"
