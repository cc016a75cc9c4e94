"""docs/cli.md against the click commands, so that the reference cannot drift from the program:
every command has a section, every option of a command appears in its section (or in the shared
options table), every option a section names exists, every choice of a closed option is written
down, and the preset and model-source lists are the registries' own."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from ebmlens.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
#: options of other programs that the reference quotes (torchrun's, in its multi-process examples).
FOREIGN = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint"}
_OPT = r"(?<![\w-])(--?[A-Za-z][\w-]*)"


def _sections(text: str) -> dict[str, str]:
    """``{heading: body}`` of the ``## `` sections."""
    parts = re.split(r"(?m)^## ", text)[1:]
    return {p.splitlines()[0]: p for p in parts}


def _commands() -> dict[str, click.Command]:
    return {name: main.get_command(None, name) for name in main.list_commands(None)}


def _options(cmd: click.Command, *, hidden: bool = True) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and (hidden or not p.hidden)]


def _names(cmd: click.Command) -> set[str]:
    return {o for p in _options(cmd) for o in p.opts + p.secondary_opts} | {"--help", "-h"}


def _mentions(text: str, opt: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) is not None


def _doc() -> tuple[dict[str, str], str, dict[str, str]]:
    """(command -> its section text, the shared section, heading -> section)."""
    secs = _sections(DOC.read_text())
    shared = next(body for head, body in secs.items() if head.startswith("One vocabulary"))
    per = {}
    for name in _commands():
        bodies = [body for head, body in secs.items() if f"`ebmlens {name}`" in head]
        assert bodies, f"docs/cli.md has no section '## `ebmlens {name}`'"
        per[name] = "\n".join(bodies)
    return per, shared, secs


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_is_documented(name):
    per, shared, _ = _doc()
    cmd = _commands()[name]
    text = per[name] + shared
    missing = [p.opts[0] for p in _options(cmd, hidden=False)
               if not any(_mentions(text, o) for o in p.opts + p.secondary_opts)]
    assert not missing, f"ebmlens {name}: options missing from its docs/cli.md section: {missing}"
    for p in _options(cmd, hidden=False):
        if isinstance(p.type, click.Choice):
            absent = [c for c in p.type.choices if c not in text]
            assert not absent, f"ebmlens {name} {p.opts[0]}: choices {absent} are not in docs/cli.md"


def test_every_documented_option_exists():
    per, shared, secs = _doc()
    cmds = _commands()
    every = set().union(*(_names(c) for c in cmds.values())) | {"--version", "-v", "-vv"}
    wrong = []
    for head, body in secs.items():
        own = [n for n in cmds if f"`ebmlens {n}`" in head]
        for line in body.splitlines():
            # options of commands named on the line (`ebmlens energy --checkpoints`) count there too
            named = own + [n for n in re.findall(r"ebmlens (\w[\w-]*)", line) if n in cmds]
            allowed = set().union(*(_names(cmds[n]) for n in named)) if named else every
            for opt in re.findall(_OPT, line):
                if opt.startswith("--") and opt not in allowed | FOREIGN:
                    wrong.append(f"{head[:40]}: {opt}")
    assert not wrong, f"docs/cli.md names options that the commands do not have: {wrong}"


def test_presets_and_sources_are_the_registries():
    from ebmlens import models
    from ebmlens.sampling.presets import names

    # the built-in sources (other tests may have registered their own in this process)
    builtin = {s for s in models.sources() if models._SOURCES[s].loader.__module__ == "ebmlens.models"}

    text = DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--preset NAME`"))
    listed = re.findall(r"`([\w-]+)`", row.split("|")[3])
    assert sorted(listed) == sorted(names()), f"--preset row lists {listed}, the registry has {names()}"
    row = next(line for line in text.splitlines() if line.startswith("| `--model SPEC`"))
    prefixes = set(re.findall(r"`([\w-]+):", row.split("|")[3]))
    assert prefixes == builtin, f"--model row names sources {sorted(prefixes)}, built in: {sorted(builtin)}"
    for cmd in _commands():
        assert f"`ebmlens {cmd}`" in text
