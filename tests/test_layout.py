"""The layout is the architecture (../shared/ARCHITECTURE.md): these tests keep it so.

* Import direction: every module's imports (module level and inside functions) are resolved with
  ``ast`` and checked against the table below, written from ARCHITECTURE.md. A module that is not
  in the table fails: adding a module means deciding where it sits.
* One IO room: ``os.replace`` and the atomic writers / JSON converters / version helpers exist only
  in ``ebmlens/_io.py``.
* Short files: a module over 400 lines fails unless it is on the allow-list with a reason.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ebmlens"

# unit -> the units it may import. A unit is the first name under ebmlens/ (a package or a module).
# Written from ARCHITECTURE.md: the leaves (_io, rng, energy, attacks, data, _dist) know nothing of the
# layers above; models know no sampling; sampling knows no analysis, metrics or CLI; metrics know no
# sampling; train may use sampling, analysis, attacks and metrics; only the CLI and __main__ import the CLI.
LEAF = {"_io", "_validate", "_lock"}  # leaf helpers every layer may use; they import nothing of ebmlens
LAYERS: dict[str, set[str]] = {
    "__init__": set(),                                   # lazy: names in strings, no imports of ebmlens
    "_io": set(),                                        # imports nothing of ebmlens
    "_lock": set(),                                      # run locks; imports nothing of ebmlens
    "rng": LEAF,
    "_dist": LEAF,
    "_validate": set(),                                  # input checks; imports nothing of ebmlens
    "energy": LEAF,
    "_perf": LEAF | {"energy"},
    "_measure": LEAF | {"_dist", "energy", "data"},     # map_batches: the one measurement loop
    "data": LEAF | {"energy"},
    "attacks": LEAF | {"rng", "energy", "data"},
    "stats": LEAF | {"data", "energy"},
    "models": LEAF | {"energy", "data", "stats", "attacks"},  # attacks: the one threat-model parser
    "sampling": LEAF | {"rng", "energy", "attacks", "data", "stats", "_dist", "_perf"},
    "runs": LEAF | {"rng", "energy", "attacks", "data", "stats", "sampling", "_dist", "_perf"},  # many samples
    "metrics": LEAF | {"rng", "energy", "attacks", "data", "models", "_dist", "_measure"},
    "analysis": LEAF | {"rng", "energy", "attacks", "data", "stats", "models", "_dist", "_measure"},
    "train": LEAF | {"rng", "energy", "attacks", "data", "stats", "models", "sampling", "analysis", "metrics", "_perf"},
    "cli": {"*"},
    "_cli": {"*"},
    "__main__": {"cli"},
}
CLI_UNITS = {"cli", "_cli"}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path, root: Path = PKG) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _exists(mod: str, root: Path = PKG) -> bool:
    base = root.parent.joinpath(*mod.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def ebmlens_imports(path: Path, root: Path = PKG) -> set[str]:
    """Absolute ebmlens module names imported anywhere in ``path`` (functions included)."""
    name = _module_name(path, root)
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ebmlens")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ebmlens":
                continue
            for a in node.names:  # `from . import rng` imports a module; `from .x import f` imports x
                sub = f"{mod}.{a.name}"
                found.add(sub if _exists(sub, root) else mod)
    return found


def _unit(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layering_violations(paths: list[Path], root: Path = PKG) -> list[str]:
    bad = []
    for p in paths:
        rel = p.relative_to(root.parent)
        src = _unit(_module_name(p, root))
        if src not in LAYERS:
            bad.append(f"{rel}: unit {src!r} is not in the layer table of tests/test_layout.py")
            continue
        allowed = LAYERS[src]
        for mod in sorted(ebmlens_imports(p, root)):
            dst = _unit(mod)
            if dst in (src, "__init__") or "*" in allowed:  # the top-level package is light and public
                continue
            if dst not in allowed:
                bad.append(f"{rel} ({src}) imports {mod} ({dst})")
    return bad


def test_import_direction_follows_the_architecture():
    assert layering_violations(_modules()) == []


def test_only_the_cli_and_main_import_the_cli():
    for p in _modules():
        src = _unit(_module_name(p))
        if src in CLI_UNITS or src == "__main__":
            continue
        assert not {_unit(m) for m in ebmlens_imports(p)} & CLI_UNITS, p


def test_sampling_imports_nothing_from_runs():
    """The algorithms (sampling/) know nothing of batches, files and processes (runs/)."""
    assert "runs" not in LAYERS["sampling"]
    for p in _modules():
        if _unit(_module_name(p)) == "sampling":
            assert not {m for m in ebmlens_imports(p) if _unit(m) == "runs"}, p


def test_layering_check_catches_a_source_that_imports_sampling(tmp_path):
    """The check itself: a models module that imports sampling (as models/bundled.py once did) fails."""
    fake_pkg = tmp_path / "ebmlens"
    (fake_pkg / "models").mkdir(parents=True)
    (fake_pkg / "sampling").mkdir()
    (fake_pkg / "__init__.py").write_text("")
    (fake_pkg / "sampling" / "__init__.py").write_text("")
    (fake_pkg / "sampling" / "stats.py").write_text("X = 1\n")
    (fake_pkg / "models" / "__init__.py").write_text("")
    bundled = fake_pkg / "models" / "bundled.py"
    bundled.write_text("def bundled_stats():\n    from ..sampling.stats import X\n    return X\n")
    (fake_pkg / "mystery.py").write_text("import os\n")
    bad = layering_violations([bundled, fake_pkg / "mystery.py"], root=fake_pkg)
    assert any("imports ebmlens.sampling.stats (sampling)" in b for b in bad), bad
    assert any("'mystery' is not in the layer table" in b for b in bad), bad


# --------------------------------------------------------------------------- one IO room
IO_ONLY = re.compile(r"^\s*def (_?jsonable|_?atomic_\w+|_?versions)\s*\(", re.M)


def test_atomic_writes_and_json_helpers_live_only_in_io():
    offenders = []
    for p in _modules():
        if p.name == "_io.py" and p.parent == PKG:
            continue
        text = p.read_text()
        if "os.replace(" in text:
            offenders.append(f"{p.relative_to(PKG.parent)}: os.replace")
        offenders += [f"{p.relative_to(PKG.parent)}: def {m.group(1)}" for m in IO_ONLY.finditer(text)]
    assert offenders == [], "use ebmlens._io instead: " + "; ".join(offenders)


# --------------------------------------------------------------------------- one PGD loop
GEOMETRY_STEP = re.compile(r"\b\w*geom\w*\.step\(", re.I)  # geometry.step(, self.geometry.step(, geom.step(


def geometry_step_calls(paths: list[Path], root: Path = PKG) -> list[str]:
    """``path:line`` of every call of a geometry's ``step(`` outside ``attacks/geometry.py`` (which defines them)."""
    found = []
    for p in paths:
        if p.relative_to(root).as_posix() == "attacks/geometry.py":
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            found += [f"{p.relative_to(root).as_posix()}:{n}"] * len(GEOMETRY_STEP.findall(line))
    return found


def test_exactly_one_geometry_step_outside_the_geometries():
    """One PGD loop (issue 19): ``attacks.pgd`` takes every geometry step; the sampling stage, analysis and
    training call it instead of writing a loop out."""
    calls = geometry_step_calls(_modules())
    assert len(calls) == 1 and calls[0].startswith("attacks/core.py:"), calls


def test_geometry_step_check_catches_a_second_loop(tmp_path):
    (tmp_path / "sampling").mkdir()
    stage = tmp_path / "sampling" / "pgd.py"
    stage.write_text("def f(geom, x, g, opt):\n    opt.step()\n    return geom.step(x, -g, 0.1)\n")
    assert geometry_step_calls([stage], root=tmp_path) == ["sampling/pgd.py:3"]


# --------------------------------------------------------------------------- short files
MAX_LINES = 400
# path (relative to ebmlens/) -> why it may be longer. Target: empty.
LONG_FILES_ALLOWED: dict[str, str] = {}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_module_is_short(path):
    rel = str(path.relative_to(PKG))
    n = len(path.read_text().splitlines())
    if rel in LONG_FILES_ALLOWED:
        return
    assert n <= MAX_LINES, f"ebmlens/{rel} has {n} lines (> {MAX_LINES}): split it along its seams"


def test_allow_list_names_existing_long_files():
    for rel in LONG_FILES_ALLOWED:
        p = PKG / rel
        assert p.exists() and len(p.read_text().splitlines()) > MAX_LINES, f"{rel} needs no allow-list entry"


# --------------------------------------------------------------------------- no circles
def import_circles(paths: list[Path], root: Path = PKG) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (imports inside functions
    count). A module importing its own package (``from . import x`` in ``pkg/y.py``) is not a circle."""
    graph = {}
    for p in paths:
        m = _module_name(p, root)
        graph[m] = {d for d in ebmlens_imports(p, root) if d != m and not m.startswith(d + ".") and d != "ebmlens"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circle():
    assert import_circles(_modules()) == []


def test_circle_check_catches_a_lazy_import_back(tmp_path):
    """The check itself: stats/ as it was (classstats -> sharded inside a function, sharded -> fit -> classstats)."""
    pkg = tmp_path / "ebmlens"
    (pkg / "stats").mkdir(parents=True)
    for name, text in {"__init__.py": "", "stats/__init__.py": "from .classstats import C\n",
                       "stats/classstats.py": "def load():\n    from .sharded import f\n",
                       "stats/sharded.py": "from .fit import g\n",
                       "stats/fit.py": "from .classstats import C\n"}.items():
        (pkg / name).write_text(text)
    assert import_circles(sorted(pkg.rglob("*.py")), root=pkg) == [
        ["ebmlens.stats.classstats", "ebmlens.stats.fit", "ebmlens.stats.sharded"]]


def test_commands_do_not_import_the_entry_point():
    """``cli.py`` imports the command modules from one explicit list; ``_cli/`` never imports ``cli``."""
    for p in sorted((PKG / "_cli").rglob("*.py")):
        assert "ebmlens.cli" not in ebmlens_imports(p), f"{p.relative_to(PKG.parent)} imports ebmlens.cli"


# --------------------------------------------------------------------------- numbers live in docs
MEASURED = re.compile(r"\d+(\.\d+)?x (faster|slower)|\d+%%? (faster|slower)|~?\d+ s to compile|\(measured\)|"
                      r"measured on (the|a|an) ")


def test_no_benchmark_numbers_in_help_or_log_text():
    """Measured numbers go stale in ``--help`` and logs: they live in docs/ and benchmarks/ (with the command,
    the date and the machine); help and log text point there."""
    offenders = [f"{p.relative_to(PKG.parent)}:{i}: {line.strip()[:80]}" for p in _modules()
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if MEASURED.search(line) and ("help=" in line or "log." in line or line.strip().startswith('"'))]
    assert offenders == [], "move these numbers to docs/ or benchmarks/:\n" + "\n".join(offenders)
