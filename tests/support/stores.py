"""Opening stores for tests, and the sandbox that proves nothing was written outside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ovlcore

from .privilege import privilege_env, require
from .trees import snapshot


def open_store(root: Path, privilege: str | None = None, **kw: Any) -> ovlcore.Store:
    """A store at ``root`` created with the given metadata convention (``None``: the user's own);
    skips the test when that convention needs root. ``OVLCORE_PRIVILEGE`` is left as it was. ``kw``
    goes to ``ovlcore.Store`` (``registry=``)."""
    require(privilege)
    with privilege_env(privilege):
        store = ovlcore.Store(root, **kw)
    if privilege is not None:
        assert store.privilege == privilege
    return store


class Sandbox:
    """``tmp_path`` laid out as ``store/`` (the store root) next to ``outside/`` (a sentinel directory with
    one file) so tests can check that nothing was written outside the store."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.root = tmp_path / "store"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "secret").write_text("host secret\n")

    def snapshot_outside(self) -> dict[str, tuple[Any, ...]]:
        """Everything under ``tmp_path`` except the store (and ``tmp_path`` itself, which the test may
        write files into)."""
        snap = snapshot(self.base, exclude=[self.root])
        del snap["."]
        return snap


def leftovers(root: Path) -> list[str]:
    """What a finished or recovered operation must not leave behind: staging (``tmp/``), trash and every
    container's scratch directory but for its shared whiteout. (Store internals: the one place that
    knows these names.)"""
    out = [f"tmp/{p.name}" for p in (root / "tmp").iterdir()]
    out += [f"trash/{p.name}" for p in (root / "trash").iterdir()]
    for c in (root / "containers").iterdir():
        out += [f"containers/{c.name}/scratch/{p.name}" for p in (c / "scratch").iterdir() if p.name != "whiteout"]
    return out
