"""No import circles among dslim's modules and no import that climbs back up a floor: function-level imports and
imports under `TYPE_CHECKING` count too (they only hide a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dslim"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FLOORS = [
    ["dslim", "dslim.errors", "dslim.registry", "dslim.subnet", "dslim.bounds", "dslim.config", "dslim.ui"],
    ["dslim.nn"],
    ["dslim.models"],
    ["dslim.io"],
    ["dslim.data"],
    ["dslim.training"],
    ["dslim.methods"],
    ["dslim.evaluation"],
    ["dslim.deploy"],
    ["dslim.stages"],
    ["dslim.recipes"],
    ["dslim.importers"],
    ["dslim.cli", *(f"dslim.{c}" for c in ("train", "evaluate", "export", "profile", "latency", "import_checkpoint"))],
]
"""The floors of the house, lowest first: a module imports from its own floor or below, never from above (the
package root's lazy names, `dslim.__getattr__`, are how a package is assembled, like any `__init__`'s)."""


def floor(module: str) -> int:
    for i, prefixes in enumerate(FLOORS):
        if any(module == p or (p != "dslim" and module.startswith(p + ".")) for p in prefixes):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def imports(path: Path, modules: set[str]) -> set[str]:
    """The dslim modules `path` imports anywhere: at the top, in functions, under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from dslim import complexity`
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    edges = {name: imports(path, modules) - {name} for name, path in files.items()}
    for name in edges:  # a package's __init__ importing its own submodules is how packages are assembled
        edges[name] = {m for m in edges[name] if not (files[name].name == "__init__.py" and m.startswith(name + "."))}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    edges = graph()
    assert "dslim.stages.registry" in edges["dslim.stages.pipeline"]  # the graph sees real imports
    assert "dslim.models.base" in edges["dslim.models.registry"]  # and those under TYPE_CHECKING
    assert cycles(edges) == []


def test_no_import_climbs_a_floor():
    edges = graph()
    up = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if floor(b) > floor(a))
    assert up == [], "imports from a higher floor"
    assert floor("dslim.deploy.runtime") > floor("dslim.methods.dmcp")  # the floors are what they say


def test_the_runner_needs_no_torch():
    """`dslim.deploy.runtime` imports nothing of dslim but the ground floor, the routing program (`routes`, plain
    Python) and the validating JSON reader, itself
    standing on the ground floor alone, as the `dslim.io` package it loads with (its import is checked without torch
    in tests/test_onnx.py)."""
    edges = graph()
    assert edges["dslim.deploy.runtime"] <= {"dslim.errors", "dslim.io.readers", "dslim.deploy.routes"}
    assert edges["dslim.deploy.routes"] == set()  # the routing program: plain Python
    assert edges["dslim.io.readers"] <= {"dslim.errors"} and edges["dslim.io"] <= {"dslim.io.atomic"}
    assert edges["dslim.io.atomic"] <= {"dslim.errors"} and edges["dslim.errors"] == set()


def test_every_package_is_installed():
    """A subpackage missing from pyproject's list works in a checkout and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, f"add to [tool.setuptools] packages: {sorted(packages - listed)}"
