"""Locks shared by processes: the store lock, and the lock files that mark work in progress.

The store lock (``ROOT/lock``, ``flock``) is taken exclusively by every change to the records, for as long
as it takes to publish (a few renames and one database commit). Readers take no lock: the database gives
them a consistent snapshot. Every transaction also holds a lock file of its own under ``tmp/`` while it
works, so that recovery can tell a dead transaction's leftovers from a live one's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["StoreLock", "create_locked", "try_lock", "is_held", "pid_alive", "age", "PENDING_GRACE_S"]

#: How long a ``.pending`` lock file (file systems without ``O_TMPFILE``) is left alone by recovery.
PENDING_GRACE_S = 60


class StoreLock:
    """The store-wide writer lock. Every acquisition opens its own descriptor, so threads of one process
    exclude each other exactly as processes do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def create_locked(directory: Path, path: Path) -> int:
    """Create ``path`` already locked (``LOCK_EX``): a recovering process must never find it unlocked
    while its owner lives. An unnamed file is locked, then linked in; where the file system has no
    unnamed files, a ``.pending`` name is used, which recovery leaves alone until it is old."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # linkat(..., AT_SYMLINK_FOLLOW) names the unnamed file; a dir_fd makes os.link use linkat.
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=dfd, follow_symlinks=True)
            finally:
                os.close(dfd)
        except BaseException:
            os.close(fd)
            raise
        return fd
    pending = path.with_name(f".{path.name}.pending")
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(pending, path)
    return fd


def try_lock(path: Path) -> int | None:
    """A descriptor holding ``LOCK_EX`` on ``path``; ``None`` when the file is gone or another process
    holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_held(path: Path) -> bool:
    """Whether some process holds the lock file ``path`` (readable by anyone: shared probe)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def age(path: Path) -> float:
    """Seconds since ``path`` was last modified (0 when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
