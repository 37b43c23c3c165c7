"""What the wheel promises a user: ``import ovlcore`` stays light (the CLI's and fsspec's dependencies load
only with what needs them), the code parses as the oldest Python the package claims, and the installed
distribution has the entry points pyproject.toml declares, each of which loads. (.ci/wheel-check checks
the built wheel itself: tags, auditwheel, an install without Rust.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import ovlcore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PACKAGE = Path(ovlcore.__file__).parent
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
needs_pyproject = pytest.mark.skipif(not PYPROJECT.exists(), reason="needs the project's pyproject.toml")

# Loaded by `import ovlcore` they would cost every user of the library their import time: the CLI
# (click, rich), fsspec, and the machinery only a mount, a temporary image mount or a new container name needs.
DEFERRED = ["click", "rich", "fsspec", "ovlcore.cli", "ovlcore.demo", "subprocess", "tempfile", "secrets", "platform"]


def test_import_ovlcore_leaves_the_cli_and_fsspec_dependencies_unloaded() -> None:
    code = "import sys, ovlcore; print('\\n'.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "ovlcore._ovlcore" in loaded  # the child did import the package
    assert [m for m in loaded if any(m == d or m.startswith(d + ".") for d in DEFERRED)] == []


@needs_pyproject
def test_the_package_parses_as_its_oldest_python() -> None:
    """``requires-python`` (and the abi3 wheel's tag) claim the oldest version: no newer syntax."""
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert m, f"unexpected requires-python {spec!r}"
    oldest = (3, int(m.group(1)))
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        try:
            ast.parse(path.read_text(), str(path), feature_version=oldest)
        except SyntaxError as e:
            bad.append(f"{path.relative_to(PACKAGE)}:{e.lineno}: {e.msg}")
    assert bad == []


def _declared() -> dict[tuple[str, str], str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    groups = {"console_scripts": project.get("scripts", {}), "gui_scripts": project.get("gui-scripts", {})}
    groups.update(project.get("entry-points", {}))
    return {(g, name): value for g, eps in groups.items() for name, value in eps.items()}


@needs_pyproject
def test_the_installed_entry_points_are_pyproject_s_and_load() -> None:
    declared = _declared()
    installed = {(ep.group, ep.name): ep for ep in metadata.distribution("ovlcore").entry_points}
    assert {k: ep.value for k, ep in installed.items()} == declared, "reinstall (pip install -e .) after changing them"
    for (group, name), ep in sorted(installed.items()):
        try:
            obj = ep.load()
        except ModuleNotFoundError as e:
            if e.name is not None and not e.name.startswith("ovlcore"):
                continue  # an optional extra's dependency (fsspec...) not installed here: the wheel check loads it
            raise
        assert callable(obj), f"{group} {name} = {ep.value}"
