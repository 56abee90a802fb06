"""The rollout core and the selectors stay pure: no I/O, no clock, no randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import controller.rollouts
import controller.selectors

ROOT = Path(controller.rollouts.__file__).parent
MODULES = [*sorted(ROOT.glob("*.py")), Path(controller.selectors.__file__)]
ALLOWED = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "decimal",
    "enum",
    "math",
    "re",
    "typing",
    "protocol",
}
ALLOWED_RELATIVE = {"errors", "gates", "planner", "waves"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_module_imports_nothing_that_does_io_or_reads_a_clock(path: Path) -> None:
    unexpected = {
        name
        for name in imports_of(path)
        if name not in ALLOWED and name.lstrip(".") not in ALLOWED_RELATIVE
    }

    assert unexpected == set()


def test_public_namespace_matches_all() -> None:
    exported = set(controller.rollouts.__all__)

    assert exported == {name for name in dir(controller.rollouts) if not name.startswith("_")} - {
        "gates",
        "planner",
        "waves",
    }
