"""FUSE mounts in tests: whether they work here, and the ``ovlcore-fuse`` helper's command."""

from __future__ import annotations

import functools
import sys

import pytest

from ovlcore.fusemount import fuse_usable, is_mounted, unmount


@functools.cache
def fuse_refused() -> str | None:
    """``None`` when this process can FUSE-mount, else why not."""
    return fuse_usable()


def require_fuse() -> None:
    reason = fuse_refused()
    if reason:
        pytest.skip(f"FUSE is not usable here: {reason}")


#: The helper, run with this interpreter (so it needs nothing on PATH).
HELPER = [sys.executable, "-m", "ovlcore.fusemount"]


def force_unmount(path: str) -> None:
    """Teardown: whatever is still mounted at ``path`` goes (lazily if its daemon is gone)."""
    if is_mounted(path):
        try:
            unmount(path)
        except OSError:
            unmount(path, lazy=True)
