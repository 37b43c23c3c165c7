"""The internal store model: where things live (:mod:`.layout`), the locks (:mod:`.locks`), the indexed
records (:mod:`.records`), the one transaction every change goes through (:mod:`.transaction`),
recovery after crashes (:mod:`.recovery`) and the migration of older stores (:mod:`.migrate`).

Nothing above this package knows a file name of the store or touches the lock; the object modules
(layers, images, containers, volumes, fs, mounts) sit on :class:`Storage`.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import OvlError
from . import migrate
from .files import fsync_dir, read_json, write_json
from .layout import FORMAT, Layout
from .locks import StoreLock
from .records import SCHEMA_VERSION, Records, connect, file_uri, os_error
from .recovery import clean_all_scratch, leftovers, recover
from .transaction import Publisher, Transaction

__all__ = ["Storage", "Transaction", "Publisher", "PRIVILEGES"]

PRIVILEGES = ("root", "rootless")


class Storage:
    """One store root, opened: its layout, lock, records and metadata convention (``privilege``).

    Opening creates a new store, migrates a format-1 store (when it may write), and removes what crashed
    operations left behind. ``read_only`` (or a root this process may not write) opens it for reading only.
    """

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = root
        self.layout = Layout(root)
        self.lock = StoreLock(self.layout.lock)
        if not read_only:
            root.mkdir(parents=True, exist_ok=True)
        self.writable = not read_only and os.access(root, os.W_OK)
        if self.writable:
            for d in self.layout.dirs():
                if not d.is_dir():
                    d.mkdir(exist_ok=True)
        info = self._info()
        self.privilege = str(info["privilege"])
        if self.privilege == "root" and os.geteuid() != 0:
            raise PermissionError(f"store {root} was made by root and needs root to use")
        self.records = self._open_records(int(info["version"]))
        self._scratch_users: set[tuple[str, int]] = set()
        if self.writable:
            try:
                recover(self)
            except OSError as e:
                if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # A store that may only be read: nothing to recover from here.

    # ----- opening -----

    def _info(self) -> dict[str, Any]:
        """The store's record (``store.json``), written with an empty database on first use. A store keeps
        the metadata convention it was made with: ``root`` (native owners, devices) or ``rootless``
        (override xattrs)."""
        try:
            return self._checked(read_json(self.layout.info))
        except FileNotFoundError:
            if not self.writable:
                raise
        with self.lock.exclusive():
            try:
                return self._checked(read_json(self.layout.info))
            except FileNotFoundError:
                pass
            privilege = os.environ.get("OVLCORE_PRIVILEGE") or ("root" if os.geteuid() == 0 else "rootless")
            if privilege not in PRIVILEGES:
                raise ValueError(f"OVLCORE_PRIVILEGE must be 'root' or 'rootless', not {privilege!r}") from None
            self._build_records(migrate.Format1())
            info = {"version": FORMAT, "privilege": privilege}
            write_json(self.layout.info, info)
        return info

    def _checked(self, info: Any) -> dict[str, Any]:
        version = info.get("version") if isinstance(info, dict) else None
        if version not in (1, FORMAT) or info.get("privilege") not in PRIVILEGES:
            raise OvlError(f"store {self.root} has format version {version}, this ovlcore reads 1 and {FORMAT}")
        return dict(info)

    def _open_records(self, version: int) -> Records:
        if version == 1:
            if not self.writable:
                return self._legacy_view()
            self._migrate()
        records = Records(self.layout.db, writable=self.writable)
        schema = records.schema_version()
        if schema == 1 and self.writable:
            self._upgrade_schema()
            schema = records.schema_version()
        # A store that may not be written is read as it is (schema 1 simply knows no registry records).
        if schema != SCHEMA_VERSION and not (schema == 1 and not self.writable):
            raise OvlError(f"store {self.root}: its records have schema {schema}, this ovlcore reads {SCHEMA_VERSION}")
        return records

    def _build_records(self, old: migrate.Format1) -> None:
        """Write ``metadata.db`` holding ``old``'s records: built aside, then renamed into place (the
        caller holds the store lock)."""
        with Transaction(self) as tx:
            path = tx.stage() / "metadata.db"
            conn = connect(file_uri(path, read_only=False), path, read_only=False)
            try:
                migrate.fill(conn, path, old)
            finally:
                conn.close()
            os.rename(path, self.layout.db)
            fsync_dir(self.root)

    def _upgrade_schema(self) -> None:
        with self.lock.exclusive():
            conn = connect(file_uri(self.layout.db, read_only=False), self.layout.db, read_only=False)
            try:
                if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 1:
                    migrate.upgrade_schema(conn)
            except sqlite3.Error as e:
                raise os_error(e, self.layout.db) from None
            finally:
                conn.close()

    def _migrate(self) -> None:
        with self.lock.exclusive():
            info = read_json(self.layout.info)
            if info.get("version") == FORMAT:
                return  # another process migrated it meanwhile
            old = migrate.read_format1(self.layout)
            self._build_records(old)
            write_json(self.layout.info, {**info, "version": FORMAT})
            migrate.remove_files(old)
            clean_all_scratch(self)

    def _legacy_view(self) -> Records:
        """Format-1 records, read into an in-memory database (nothing on disk changes)."""
        uri = f"file:ovlcore-{os.urandom(8).hex()}?mode=memory&cache=shared"
        keep = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        migrate.fill(keep, self.layout.db, migrate.read_format1(self.layout))
        return Records(self.layout.db, writable=False, uri=uri, keep=keep)

    # ----- working -----

    def transaction(self) -> Transaction:
        """A new transaction (a context manager): stage, then publish (see :mod:`.transaction`)."""
        if not self.writable:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS) + " (the store is open read-only)", str(self.root))
        return Transaction(self)

    def use_scratch(self, container_id: str, pid: int | None = None) -> None:
        """Record that this process (or the process ``pid``, e.g. a FUSE daemon it started) may leave
        copy-ups in progress in the container's scratch directory, so that recovery finds them if it
        dies (once per process and container)."""
        key = (container_id, os.getpid() if pid is None else pid)
        if key in self._scratch_users or not self.writable:
            return
        if not self.records.scratch_user(*key):
            with self.lock.exclusive(), self.records.writing() as w:
                w.add_scratch_user(*key)
        self._scratch_users.add(key)

    def recover(self) -> list[str]:
        """Remove what dead processes left behind (done on every writable open)."""
        return recover(self)

    def leftovers(self) -> list[str]:
        """What recovery would remove, by a scan of the whole store."""
        return leftovers(self)

    def close(self) -> None:
        self.records.close()
