"""The house rules of the package layout, checked on the source.

* one top-level package, ``usnprune``: every folder of the four stages with an
  ``__init__.py`` is installed under it (setup.cfg lists it);
* imports only go down: ground floor <- pruner <- export <- verifier_specs <- driver, and no
  cycle between project modules, function-level imports included;
* no module of the four stages is longer than 500 lines;
* no run of six or more lines is repeated between two stages.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = {"pruner": 1, "export": 2, "verifier_specs": 3, "driver": 4}  # folder -> layer (ground floor: 0)
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted name -> file for every module of usnprune (ground floor and stages)."""
    out = {}
    roots = {"usnprune": REPO / "usnprune", **{f"usnprune.{s}": REPO / s for s in STAGES}}
    for prefix, root in roots.items():
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            if prefix == "usnprune" and rel.parts[0] in STAGES:
                continue
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    return STAGES.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (function level included)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]  # a submodule, else (below) mod itself
        for t in targets:
            while t and t not in MODULES:  # `from pkg import name`: the module pkg.name, else pkg
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_package_folder_is_installed_under_usnprune():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    packages = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed, f"setup.cfg packages differ: missing {packages - listed}, extra {listed - packages}"
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {"usnprune": "usnprune", **{f"usnprune.{s}": s for s in STAGES}}


def test_imports_only_go_down():
    up = [(a, b) for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)]
    assert not up, "imports that go up a layer: " + ", ".join(f"{a} -> {b}" for a, b in up)


def test_no_import_cycle():
    """Tarjan's strongly connected components over the module graph: any component of more
    than one module (or a module importing itself) is a cycle."""
    index, low, stack, on, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) > 0))
def test_module_length(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {n} lines (at most {MAX_LINES})"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines that carry code (no blanks, comments, imports, docstring-only or lone brackets)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        s = " ".join(line.split())
        if (not s or s.startswith(("#", "import ", "from ", '"""', "'''")) or len(s) <= 3
                or s in ("else:", "try:", "finally:", "return", "pass", "continue", "break")):
            continue
        out.append((i, s))
    return out


def test_no_six_line_run_repeated_between_stages():
    windows: dict[tuple[str, ...], tuple[str, int]] = {}
    repeats = []
    for name, path in MODULES.items():
        lines = _code_lines(path)
        for k in range(len(lines) - 5):
            key = tuple(s for _, s in lines[k:k + 6])
            where = windows.get(key)
            if where is None:
                windows[key] = (name, lines[k][0])
            elif _layer(where[0]) != _layer(name) or where[0].split(".")[:2] != name.split(".")[:2]:
                repeats.append(f"{where[0]}:{where[1]} ~ {name}:{lines[k][0]}")
    assert not repeats, "six lines repeated between stages: " + "; ".join(repeats[:10])
