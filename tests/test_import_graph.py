"""The shape of the code, kept by a test: which package may import which, no import cycles,
and no module or function past the size a newcomer can read in one sitting.

Packages are layered the way a task travels (docs/design.md): the API edge on top, then the
roles (tasks, dispatch, delivery, agents), then what they all stand on (storage, the node's
own services, configuration and errors). An import may only go to the same package or to one
listed under it in ``MAY_IMPORT``; in particular nothing below ``api`` imports ``api``, and
the SDK, which runs in the agents' processes, imports no server package at all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "coordinator"

BASE = "base"
"""The top-level modules of ``coordinator`` (config, errors, logs, ...), one layer."""

MAY_IMPORT: dict[str, set[str]] = {
    BASE: set(),
    "storage": {BASE},
    "auth": {BASE, "storage"},
    "agents": {BASE, "storage"},
    "tasks": {BASE, "storage", "auth", "agents"},
    "node": {BASE, "storage", "auth", "tasks"},
    "dispatch": {BASE, "storage", "auth", "agents", "tasks", "node"},
    "delivery": {BASE, "storage", "agents", "tasks", "node"},
    "wire": {BASE, "agents", "tasks"},
    "sdk": {BASE, "tasks", "wire"},
    "api": {BASE, "storage", "auth", "agents", "tasks", "dispatch", "delivery", "node", "wire"},
    "tools": {BASE, "sdk", "auth"},
    "server": {BASE, "storage", "auth", "agents", "tasks", "dispatch", "delivery", "node", "api"},
    "__main__": {BASE, "storage", "sdk", "tools", "server", "node"},
}
"""Package -> the packages its modules may import (besides their own)."""

TOP_LEVEL_ROLES = {
    "server": "server",
    "__main__": "__main__",
    "wire_values": "wire",
    "__init__": "sdk",
}
"""Top-level modules that are not base: the composition root, the CLI, and the conversions
between proto values and domain values that the API edge and the SDK share, and the
package's ``__init__``, which re-exports the SDK."""

MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        yield ".".join(parts), path


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return TOP_LEVEL_ROLES.get(parts[1], BASE)
    return parts[1] if len(parts) > 1 else "sdk"  # coordinator/__init__ re-exports the SDK


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, *, top_level_only: bool) -> set[str]:
    """The ``coordinator`` modules (or packages) a module imports, at run time."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(parent: ast.AST) -> None:
        for node in ast.iter_child_nodes(parent):
            if isinstance(node, ast.If) and is_type_checking(node):
                continue
            if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("coordinator"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coordinator"):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            visit(node)

    visit(tree)
    return found


def resolve(name: str, known: set[str]) -> str | None:
    """The module an imported name belongs to (``a.b.c`` may be module ``a.b`` and name ``c``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def graph(*, top_level_only: bool) -> dict[str, set[str]]:
    paths = dict(modules())
    known = set(paths)
    return {
        module: {
            target
            for name in imports_of(path, top_level_only=top_level_only)
            if (target := resolve(name, known)) and target != module
        }
        for module, path in paths.items()
    }


def test_every_package_is_placed_in_the_layers():
    packages = {package_of(m) for m, _ in modules()}
    assert packages <= set(MAY_IMPORT), sorted(packages - set(MAY_IMPORT))


def test_each_package_imports_only_the_packages_below_it():
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph(top_level_only=False).items()
        for target in targets
        if (src := package_of(module)) != (dst := package_of(target))
        and dst not in MAY_IMPORT[src]
        and target != "coordinator"
    )
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_nothing_below_the_api_imports_it():
    above = {"api", "server", "__main__"}
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph(top_level_only=False).items()
        if package_of(module) not in above
        for target in targets
        if package_of(target) == "api"
    )
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle():
    edges = graph(top_level_only=True)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module,path", list(modules()), ids=lambda v: str(v))
def test_modules_and_functions_stay_readable(module, path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, f"{module}: {', '.join(long)}"
