"""The store's on-disk discipline: layout, locks, atomic metadata, staging and trash.

Locking model (one lock file, ``ROOT/lock``, taken with ``flock``):

* readers of metadata (image, tag, container, volume records) hold it shared, writers exclusively;
* bulk work (extracting a layer, copying data, committing) happens *outside* the lock in a private
  staging directory under ``ROOT/tmp``; only the final ``rename`` into place is done under the lock;
* deletions rename the object into ``ROOT/trash`` under the lock and remove it after releasing it.

Each staging directory has a sibling ``.lock`` file its owner holds for as long as it works, so on the
next open any staging directory whose owner is gone (a crash) is removed, as is everything in the trash.
A layer, image, container or volume therefore becomes visible complete or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import _ovlcore

STORE_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def replacing(dest: Path) -> Iterator[IO[bytes]]:
    """Write a user's output file (save, export) under a temporary name and rename it over ``dest`` once
    complete: never a half-written archive at ``dest``. No fsync: an export, not store data."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Layout:
    """Where everything lives under a store root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = root / "lock"
        self.info = root / "store.json"
        self.layers = root / "layers"
        self.images = root / "images"
        self.repositories = root / "repositories.json"
        self.containers = root / "containers"
        self.volumes = root / "volumes"
        self.tmp = root / "tmp"
        self.trash = root / "trash"

    def dirs(self) -> list[Path]:
        return [self.layers, self.images, self.containers, self.volumes, self.tmp, self.trash]

    def layer(self, chain_id: str) -> Path:
        return self.layers / chain_id.removeprefix("sha256:")

    def image(self, image_id: str) -> Path:
        return self.images / image_id.removeprefix("sha256:")

    def container(self, container_id: str) -> Path:
        return self.containers / container_id

    def volume(self, name: str) -> Path:
        return self.volumes / name


class StoreLock:
    """The store-wide reader/writer lock. Every acquisition opens its own descriptor, so threads of one
    process exclude each other exactly as processes do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _hold(self, op: int) -> Iterator[None]:
        # Readers open the lock file read-only, so a read-only store can still be read.
        if op == fcntl.LOCK_SH and self.path.exists():
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, op)
            yield
        finally:
            os.close(fd)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._hold(fcntl.LOCK_EX)


PENDING_GRACE_S = 60


def _locked_file(directory: Path, path: Path) -> int:
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


class Staging:
    """A private directory under ``tmp/`` for building an object before publishing it with one rename.

    Use as a context manager: unless :meth:`publish` moved it into place, it is removed on exit, and if
    the process dies first, the next store open removes it (its lock is no longer held).
    """

    def __init__(self, layout: Layout) -> None:
        name = secrets.token_hex(16)
        self._layout = layout
        self.path = layout.tmp / name
        self._lock_path = layout.tmp / f"{name}.lock"
        self._lock_fd = _locked_file(layout.tmp, self._lock_path)
        os.mkdir(self.path, 0o700)
        self.published = False

    def publish(self, dest: Path) -> None:
        """Move the staged directory to ``dest`` (the caller holds the store lock)."""
        os.rename(self.path, dest)
        fsync_dir(dest.parent)
        self.published = True

    def close(self) -> None:
        if not self.published:
            _ovlcore.remove_tree(str(self.path))
        with contextlib.suppress(OSError):
            os.unlink(self._lock_path)
        os.close(self._lock_fd)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def move_to_trash(layout: Layout, path: Path) -> Path | None:
    """Rename ``path`` into the trash (under the store lock); ``None`` if it was already gone."""
    dest = layout.trash / secrets.token_hex(16)
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    return dest


def empty_trash(paths: list[Path]) -> None:
    for p in paths:
        _ovlcore.remove_tree(str(p))


def _try_lock(path: Path, op: int) -> int | None:
    """A descriptor holding ``op`` (``LOCK_EX``/``LOCK_SH``) on ``path``; ``None`` when the file is gone or
    another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def recover(layout: Layout) -> list[str]:
    """Remove what crashed operations left behind: staging directories nobody holds, and the trash."""
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(layout.tmp):
            if not entry.endswith((".lock", ".pending")):
                continue
            if entry.endswith(".pending") and _age(layout.tmp / entry) < PENDING_GRACE_S:
                continue  # perhaps not locked yet by its (living) owner
            # Taking the lock means its owner is gone; keep it while cleaning up after that owner.
            fd = _try_lock(layout.tmp / entry, fcntl.LOCK_EX)
            if fd is None:
                continue
            try:
                if entry.endswith(".lock"):
                    name = entry.removesuffix(".lock")
                    _ovlcore.remove_tree(str(layout.tmp / name))
                    removed.append(f"tmp/{name}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(layout.tmp / entry)
            finally:
                os.close(fd)
        # Staging directories whose lock file is gone (owner died between the two steps of close()).
        for entry in os.listdir(layout.tmp):
            path = layout.tmp / entry
            if "." not in entry and not (layout.tmp / f"{entry}.lock").exists():
                _ovlcore.remove_tree(str(path))
                removed.append(f"tmp/{entry}")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(layout.trash):
            _ovlcore.remove_tree(str(layout.trash / entry))
            removed.append(f"trash/{entry}")
    # Copy-ups in progress are built in each container's scratch directory, named after their process.
    with contextlib.suppress(FileNotFoundError):
        for cid in os.listdir(layout.containers):
            scratch = layout.container(cid) / "scratch"
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.listdir(scratch):
                    if not _owner_alive(entry):
                        _ovlcore.remove_tree(str(scratch / entry))
                        removed.append(f"containers/{cid}/scratch/{entry}")
    return removed


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def held(lock_path: Path) -> bool:
    """Whether some process holds the staging lock file ``lock_path``."""
    fd = _try_lock(lock_path, fcntl.LOCK_SH)
    if fd is None:
        return lock_path.exists()
    os.close(fd)
    return False


def _owner_alive(scratch_name: str) -> bool:
    """Scratch entries are named ``tmp-<pid>-<suffix>``: is that process still running?"""
    parts = scratch_name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
