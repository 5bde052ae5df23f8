"""docs/design.md cannot go stale silently: every module, package and Lua script it names
exists. Names are read from the note's text: ``coordinator/x/y.py`` and package-relative
``x/y.py`` paths (``tests/...`` from the repository's root), dotted ``coordinator.x.y`` modules, ``x/`` packages and ``name.lua``."""

from __future__ import annotations

import re

from docs_support import DOCS, ROOT

NOTE = DOCS / "design.md"
PACKAGE = ROOT / "src" / "coordinator"
LUA = PACKAGE / "storage" / "lua"

MODULE_PATH = re.compile(r"`(?:src/)?(?:coordinator/)?((?:[a-z_]+/)*[a-z_]+\.py)`")
DOTTED = re.compile(r"\bcoordinator((?:\.[a-z_]+)+)\b")
PACKAGE_DIR = re.compile(r"`([a-z_]+)/`")
SCRIPT = re.compile(r"\b([a-z_]+\.lua)\b")


def named(pattern: re.Pattern[str]) -> set[str]:
    return set(pattern.findall(NOTE.read_text()))


def test_the_note_names_something_of_each_kind() -> None:
    """The patterns below still find what the note names (a test that finds nothing proves
    nothing)."""
    assert len(named(MODULE_PATH)) >= 10
    assert named(PACKAGE_DIR) >= {"agents", "tasks", "dispatch", "delivery", "api", "node"}
    assert len(named(SCRIPT)) >= 15


def test_every_module_the_note_names_exists() -> None:
    missing = sorted(
        path
        for path in named(MODULE_PATH)
        if not (ROOT / path if path.startswith("tests/") else PACKAGE / path).is_file()
    )
    for dotted in named(DOTTED):
        parts = dotted.strip(".").split(".")
        module = PACKAGE.joinpath(*parts)
        if not (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()):
            missing.append("coordinator" + dotted)
    missing += [f"{name}/" for name in named(PACKAGE_DIR) if not (PACKAGE / name).is_dir()]
    assert not missing, f"docs/design.md names modules that do not exist: {missing}"


def test_every_script_the_note_names_exists() -> None:
    missing = sorted(name for name in named(SCRIPT) if not (LUA / name).is_file())
    assert not missing, f"docs/design.md names Lua scripts that do not exist: {missing}"


def test_every_script_is_in_the_note() -> None:
    """A new script is a new way state changes: the note says who runs it."""
    unnamed = sorted(p.name for p in LUA.glob("*.lua") if p.name not in named(SCRIPT))
    assert not unnamed, f"docs/design.md does not name: {unnamed}"
