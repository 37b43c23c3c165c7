"""Recovery: what dead processes left behind is removed the next time the store is opened.

A transaction that died leaves its lock file (unheld) and staging directory in ``tmp/``, and maybe
objects it had renamed into place but never committed, or removed from the records but never renamed
into the trash: its lock file names them (see :mod:`ovlcore._store.transaction`). A process that died
during a copy-up leaves a scratch entry named after its pid in the container's ``scratch/``; the records
know which processes used which container's scratch directory. Both are found without scanning the
store, so opening a store costs the same whatever it holds.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _ovlcore
from .layout import Layout
from .locks import PENDING_GRACE_S, age, is_held, pid_alive, try_lock
from .transaction import empty_trash, move_to_trash, records_have

if TYPE_CHECKING:
    from . import Storage

__all__ = ["recover", "leftovers", "scratch_owner"]


# The one whiteout every whiteout of the writable layer links to (the core's rw/whiteout.rs): it lives in
# the scratch directory, belongs to no operation and is not a leftover.
SHARED_WHITEOUT = "whiteout"


def scratch_owner(name: str) -> int | None:
    """Scratch entries are named ``tmp-<pid>-<suffix>`` by the core: the pid, if it is one."""
    parts = name.split("-")
    return int(parts[1]) if len(parts) >= 3 and parts[0] == "tmp" and parts[1].isdigit() else None


def _abandoned_scratch(entry: str) -> bool:
    """A scratch entry whose process is gone (or that no process names): not the shared whiteout."""
    owner = scratch_owner(entry)
    return entry != SHARED_WHITEOUT and (owner is None or not pid_alive(owner))


def _is_lock(entry: str) -> bool:
    return entry.endswith(".lock") and not entry.startswith(".")


def _dead_transactions(tmp: Path) -> list[tuple[str, int | None]]:
    """(transaction name, descriptor holding its lock) of every transaction whose owner is gone. A
    staging directory without any lock file has a ``None`` descriptor."""
    try:
        entries = os.listdir(tmp)
    except FileNotFoundError:
        return []
    names = set(entries)
    out: list[tuple[str, int | None]] = []
    for entry in entries:
        if _is_lock(entry):
            fd = try_lock(tmp / entry)
            if fd is not None:
                out.append((entry.removesuffix(".lock"), fd))
        elif entry.endswith(".pending"):
            # A lock file not yet renamed into place (no O_TMPFILE here): perhaps its owner is about to.
            if age(tmp / entry) >= PENDING_GRACE_S and (fd := try_lock(tmp / entry)) is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp / entry)
                os.close(fd)
        elif f"{entry}.lock" not in names and f".{entry}.lock.pending" not in names:
            out.append((entry, None))
    return out


def _intents(path: Path) -> list[tuple[str, str, str]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def recover(storage: Storage) -> list[str]:
    """Remove what dead transactions and copy-ups left, and empty the trash. Returns what it removed,
    relative to the store root."""
    layout = storage.layout
    removed: list[str] = []
    trash: list[Path] = []
    dead = _dead_transactions(layout.tmp)
    scratch = [(cid, pid) for cid, pid in storage.records.scratch_users() if not pid_alive(pid)]
    if dead or scratch:
        with storage.lock.exclusive():
            for name, fd in dead:
                try:
                    lock = layout.tmp / f"{name}.lock"
                    for _action, kind, key in _intents(lock) if fd is not None else []:
                        if not records_have(storage.records, kind, key):
                            moved = move_to_trash(layout, layout.object_path(kind, key))
                            if moved is not None:
                                trash.append(moved)
                                removed.append(str(layout.object_path(kind, key).relative_to(layout.root)))
                    staged = layout.tmp / name
                    if staged.exists():
                        _ovlcore.remove_tree(str(staged))
                        removed.append(f"tmp/{name}")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                finally:
                    if fd is not None:
                        os.close(fd)
            if scratch:
                for cid, pid in scratch:
                    removed += _clean_scratch(storage, cid, pid)
                with storage.records.writing() as w:
                    for cid, pid in scratch:
                        w.delete_scratch_user(cid, pid)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(layout.trash):
            trash.append(layout.trash / entry)
            removed.append(f"trash/{entry}")
    empty_trash(trash)
    return removed


def _clean_scratch(storage: Storage, cid: str, pid: int) -> list[str]:
    scratch = storage.layout.container(cid).scratch
    out = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.listdir(scratch):
            if scratch_owner(entry) == pid:
                _ovlcore.remove_tree(str(scratch / entry))
                out.append(str((scratch / entry).relative_to(storage.layout.root)))
    return out


def leftovers(storage: Storage) -> list[str]:
    """What recovery would remove, found by scanning the whole store (for :meth:`Store.check`)."""
    layout = storage.layout
    out = [f"trash/{e}" for e in sorted(os.listdir(layout.trash))]
    for entry in sorted(os.listdir(layout.tmp)):
        if _is_lock(entry) or entry.endswith(".pending"):
            continue
        if not is_held(layout.tmp / f"{entry}.lock"):
            out.append(f"tmp/{entry}")
    for cid in sorted(os.listdir(layout.containers)):
        scratch = layout.container(cid).scratch
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for e in sorted(os.listdir(scratch)):
                if _abandoned_scratch(e):
                    out.append(f"containers/{cid}/scratch/{e}")
    return out


def clean_all_scratch(storage: Storage) -> list[str]:
    """Remove dead processes' scratch entries in every container (a full scan: used once, when a store
    of the format that did not record scratch users is migrated, and by ``check(repair=True)``)."""
    layout = storage.layout
    out = []
    for cid in os.listdir(layout.containers):
        scratch = layout.container(cid).scratch
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for e in os.listdir(scratch):
                if _abandoned_scratch(e):
                    _ovlcore.remove_tree(str(scratch / e))
                    out.append(f"containers/{cid}/scratch/{e}")
    return out


def drop_downloads(layout: Layout, older_than_s: float = 600.0) -> int:
    """Remove partial registry downloads not written to for ``older_than_s`` seconds (recovery keeps
    them for a resume; prune drops them). Returns the bytes freed."""
    freed = 0
    try:
        entries = os.listdir(layout.downloads)
    except FileNotFoundError:
        return 0
    cutoff = time.time() - older_than_s
    for entry in entries:
        path = layout.downloads / entry
        try:
            st = path.stat()
            if st.st_mtime <= cutoff:
                path.unlink()
                freed += st.st_size
        except FileNotFoundError:
            pass
    return freed
