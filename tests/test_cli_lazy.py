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


LOADED_PROBE = """
import sys
from ebmlens.cli import main
cmds = lambda: sorted(m for m in sys.modules if m.startswith("ebmlens._cli.") and m != "ebmlens._cli._common")
before = cmds()
try:
    main(["merge", "--help"], standalone_mode=False)
except SystemExit:
    pass
print("LOADED", before, cmds())
"""


def test_commands_come_from_one_explicit_list_and_load_one_at_a_time():
    """`ebmlens.cli.COMMANDS` names every module of ebmlens/_cli; importing the CLI registers nothing by side
    effect, and running one command imports that command's module alone."""
    from pathlib import Path

    import click

    from ebmlens.cli import COMMANDS, main

    modules = {p.stem for p in (Path(__file__).parents[1] / "ebmlens" / "_cli").glob("*.py")
               if not p.stem.startswith("_")}
    assert {m for m, _ in COMMANDS.values()} == modules
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
    assert main.get_command(ctx, "nope") is None
    code = LOADED_PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "LOADED [] ['ebmlens._cli.merge']"
