"""The package's architecture, kept true: the layers contract covers every module (import-linter checks
it in CI), and no module reaches into another module's private names."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import ovlcore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PACKAGE = Path(ovlcore.__file__).parent
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layered() -> set[str]:
    config = tomllib.loads(PYPROJECT.read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return {m.strip() for layer in contract["layers"] for m in layer.replace(":", "|").split("|")}


@pytest.mark.skipif(not PYPROJECT.exists(), reason="needs the project's pyproject.toml")
def test_every_module_is_in_a_layer() -> None:
    names = layered()
    missing = [m for m in modules() if m != "ovlcore" and not any(m == n or m.startswith(n + ".") for n in names)]
    assert missing == [], "modules the layers contract does not place"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_privates(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, methods, classes, attributes it assigns."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
            out.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _private(node.target.id):
            out.add(node.target.id)
    return out


def test_no_module_reaches_into_another_modules_private_names() -> None:
    trees = {name: ast.parse(path.read_text()) for name, path in modules().items()}
    defined = {name: _defined_privates(tree) for name, tree in trees.items()}
    violations = []
    for name, tree in trees.items():
        mine = defined[name]
        others = set().union(*(d for n, d in defined.items() if n != name))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                # Private *modules* of the package (_store, _time, _ovlcore...) are fine; private names in them are not.
                violations += [f"{name}: imports {node.module}.{a.name}" for a in node.names if _private(a.name) and node.level == 1 and node.module]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in mine and node.attr in others:
                violations.append(f"{name}:{node.lineno}: uses .{node.attr}, private to another module")
    assert violations == []
