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


def daemon_pid(mountpoint: str) -> int:
    """The pid of the ovlcore FUSE daemon serving ``mountpoint`` (its command line names it)."""
    import json
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--daemon" not in args or len(args) < 2:
            continue
        try:
            if json.loads(args[-2]).get("mountpoint") == mountpoint:
                return int(pid)
        except ValueError:
            continue
    raise LookupError(f"no FUSE daemon serves {mountpoint}")


def bytes_read_by(pid: int) -> int:
    """What process ``pid`` has read through read(2)-like calls so far (``rchar``)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
