"""Volumes: named or anonymous directories managed by the store, outliving containers.

``volumes/<name>/_data`` holds the data (as Docker's ``/var/lib/docker/volumes``), ``volume.json`` the
record (labels, creation time, whether it is anonymous).
"""

from __future__ import annotations

import builtins

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _ovlcore
from ._storage import Staging, move_to_trash, read_json, write_json
from .errors import NameConflict, VolumeInUse, VolumeNotFound
from .images import format_time, parse_time
from .references import check_name

if TYPE_CHECKING:
    from .store import PruneReport, Store

__all__ = ["Volume", "Volumes"]


class Volume:
    """A volume of the store."""

    def __init__(self, store: Store, record: dict[str, Any]) -> None:
        self._store = store
        self._record = record

    @property
    def name(self) -> str:
        """The volume's name (64 hex digits for an anonymous volume)."""
        return str(self._record["name"])

    @property
    def labels(self) -> dict[str, str]:
        """The labels given at creation."""
        return dict(self._record.get("labels") or {})

    @property
    def created(self) -> datetime:
        """When the volume was created (UTC)."""
        return parse_time(str(self._record["created"]))

    @property
    def anonymous(self) -> bool:
        """Whether the volume was made without a name (removed with its container's ``rm -v``)."""
        return bool(self._record.get("anonymous"))

    @property
    def mountpoint(self) -> Path:
        """The host directory holding the volume's data."""
        return self._store._layout.volume(self.name) / "_data"

    def size(self) -> int:
        """Bytes of data in the volume."""
        return _ovlcore.dir_usage(str(self.mountpoint))

    def remove(self, force: bool = False) -> None:
        """Delete the volume and its data (see :meth:`Volumes.remove`)."""
        self._store.volumes.remove(self.name, force=force)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<Volume {self.name[:12] if self.anonymous else self.name!r}{' anonymous' if self.anonymous else ''}>"


class Volumes:
    """``store.volumes``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _read(self, name: str) -> Volume | None:
        try:
            return Volume(self._store, read_json(self._store._layout.volume(name) / "volume.json"))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _users(self, name: str) -> builtins.list[str]:
        """Names of containers mounting volume ``name`` (store lock held)."""
        return sorted(
            str(rec["name"])
            for rec in self._store.containers._records()
            for m in rec.get("mounts") or []
            if m.get("type") == "volume" and m.get("source") == name
        )

    def _create_locked(self, name: str | None, labels: dict[str, str] | None, anonymous: bool) -> Volume:
        store = self._store
        if name is None:
            name = secrets.token_hex(32)
        else:
            check_name(name, "volume")
        if self._read(name) is not None:
            raise NameConflict(f"volume {name!r} already exists")
        with Staging(store._layout) as st:
            (st.path / "_data").mkdir(mode=0o755)
            os.chmod(st.path / "_data", 0o755)
            return self._publish_locked(st, name, labels, anonymous)

    def _publish_locked(self, st: Staging, name: str, labels: dict[str, str] | None, anonymous: bool) -> Volume:
        """Publish a staged volume directory (holding ``_data``) as volume ``name`` (store lock held)."""
        record = {"name": name, "labels": dict(labels or {}), "created": format_time(datetime.now(timezone.utc)), "anonymous": anonymous}
        write_json(st.path / "volume.json", record)
        st.publish(self._store._layout.volume(name))
        return Volume(self._store, record)

    def create(self, name: str | None = None, *, labels: dict[str, str] | None = None) -> Volume:
        """A new volume; without a name, an anonymous one (64 hex digits). Creating an existing named
        volume returns it, as ``docker volume create`` does."""
        with self._store._lock.exclusive():
            if name is not None:
                check_name(name, "volume")
                found = self._read(name)
                if found is not None:
                    return found
            return self._create_locked(name, labels, anonymous=name is None)

    def get(self, name: str) -> Volume:
        """A volume by name (``VolumeNotFound`` otherwise)."""
        with self._store._lock.shared():
            found = self._read(name) if isinstance(name, str) and "/" not in name and name not in ("", ".", "..") else None
        if found is None:
            raise VolumeNotFound(f"No such volume: {name}")
        return found

    def list(self) -> builtins.list[Volume]:
        """Every volume, by name."""
        with self._store._lock.shared():
            try:
                names = sorted(os.listdir(self._store._layout.volumes))
            except FileNotFoundError:
                return []
            return [v for n in names if (v := self._read(n)) is not None]

    def remove(self, name: str, *, force: bool = False) -> None:
        """Delete a volume and its data; ``VolumeInUse`` while a container mounts it (unless ``force``)."""
        store = self._store
        with store._lock.exclusive():
            if self._read(name) is None:
                raise VolumeNotFound(f"No such volume: {name}")
            users = self._users(name)
            if users and not force:
                raise VolumeInUse(f"remove {name}: volume is in use by container(s) {', '.join(users)}")
            p = move_to_trash(store._layout, store._layout.volume(name))
        if p:
            _ovlcore.remove_tree(str(p))

    def prune(self, *, all: bool = False) -> PruneReport:
        """Remove unused anonymous volumes (``all``: unused named ones too)."""
        from .store import PruneReport

        store = self._store
        report = PruneReport()
        trash = []
        with store._lock.exclusive():
            for v in [v for n in sorted(os.listdir(store._layout.volumes)) if (v := self._read(n)) is not None]:
                if (v.anonymous or all) and not self._users(v.name):
                    report.space_reclaimed += v.size()
                    p = move_to_trash(store._layout, store._layout.volume(v.name))
                    if p:
                        trash.append(p)
                        report.deleted.append(v.name)
        for p in trash:
            _ovlcore.remove_tree(str(p))
        return report
