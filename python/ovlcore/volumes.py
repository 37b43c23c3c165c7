"""Volumes: named or anonymous directories managed by the store, outliving containers.

A volume's data lives in its directory's ``_data`` (as Docker's ``/var/lib/docker/volumes``); its record
holds the labels, the creation time, and whether it is anonymous.
"""

from __future__ import annotations

import builtins
import os
from datetime import datetime
from pathlib import Path

from . import _ovlcore
from ._store import Publisher, Storage
from ._store.layout import VolumeDir
from ._store.records import VolumeRecord
from ._time import now, parse_time
from .errors import NameConflict, VolumeInUse, VolumeNotFound
from .references import check_name
from .reports import PruneReport

__all__ = ["Volume", "Volumes", "volume_record", "anonymous_name"]


def volume_record(name: str, labels: dict[str, str] | None = None, *, anonymous: bool = False) -> VolumeRecord:
    """The record of a new volume."""
    return VolumeRecord(name=name, created=now(), labels=dict(labels or {}), anonymous=anonymous)


def anonymous_name() -> str:
    """A new anonymous volume's name (64 hex digits, as Docker's)."""
    return os.urandom(32).hex()


class Volume:
    """A volume of the store."""

    def __init__(self, volumes: Volumes, record: VolumeRecord) -> None:
        self._volumes = volumes
        self._record = record

    @property
    def name(self) -> str:
        """The volume's name (64 hex digits for an anonymous volume)."""
        return self._record.name

    @property
    def labels(self) -> dict[str, str]:
        """The labels given at creation."""
        return dict(self._record.labels)

    @property
    def created(self) -> datetime:
        """When the volume was created (UTC)."""
        return parse_time(self._record.created)

    @property
    def anonymous(self) -> bool:
        """Whether the volume was made without a name (removed with its container's ``rm -v``)."""
        return self._record.anonymous

    @property
    def mountpoint(self) -> Path:
        """The host directory holding the volume's data."""
        return self._volumes.data_of(self.name)

    def size(self) -> int:
        """Bytes of data in the volume."""
        return _ovlcore.dir_usage(str(self.mountpoint))

    def remove(self, force: bool = False) -> None:
        """Delete the volume and its data (see :meth:`Volumes.remove`)."""
        self._volumes.remove(self.name, force=force)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<Volume {self.name[:12] if self.anonymous else self.name!r}{' anonymous' if self.anonymous else ''}>"


class Volumes:
    """``store.volumes``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def data_of(self, name: str) -> Path:
        """Where the data of the volume ``name`` lives on the host."""
        return self._storage.layout.volume(name).data

    def find(self, name: str) -> Volume | None:
        """The volume named ``name``, if there is one."""
        rec = self._storage.records.volume(name)
        return Volume(self, rec) if rec is not None else None

    def publish(self, pub: Publisher, staged: VolumeDir, rec: VolumeRecord) -> Volume:
        """Publish a staged volume (for container creation, which may make volumes)."""
        pub.add_volume(staged, rec)
        return Volume(self, rec)

    def create(self, name: str | None = None, *, labels: dict[str, str] | None = None) -> Volume:
        """A new volume; without a name, an anonymous one (64 hex digits). Creating an existing named
        volume returns it, as ``docker volume create`` does."""
        if name is not None:
            check_name(name, "volume")
            found = self.find(name)
            if found is not None:
                return found
        rec = volume_record(name or anonymous_name(), labels, anonymous=name is None)
        with self._storage.transaction() as tx:
            staged = tx.stage_volume()
            with tx.publishing() as pub:
                existing = pub.records.volume(rec.name)
                if existing is not None:
                    if name is None:
                        raise NameConflict(f"volume {rec.name!r} already exists")
                    return Volume(self, existing)
                return self.publish(pub, staged, rec)

    def get(self, name: str) -> Volume:
        """A volume by name (``VolumeNotFound`` otherwise)."""
        found = self.find(name) if isinstance(name, str) and name else None
        if found is None:
            raise VolumeNotFound(f"No such volume: {name}")
        return found

    def list(self) -> builtins.list[Volume]:
        """Every volume, by name."""
        return [Volume(self, rec) for rec in self._storage.records.volumes()]

    def users(self, name: str) -> builtins.list[str]:
        """Names of the containers that mount the volume ``name``."""
        return self._storage.records.container_names_using_volume(name)

    def remove(self, name: str, *, force: bool = False) -> None:
        """Delete a volume and its data; ``VolumeInUse`` while a container mounts it (unless ``force``)."""
        with self._storage.transaction() as tx, tx.publishing() as pub:
            if not isinstance(name, str) or pub.records.volume(name) is None:
                raise VolumeNotFound(f"No such volume: {name}")
            users = pub.records.container_names_using_volume(name)
            if users and not force:
                raise VolumeInUse(f"remove {name}: volume is in use by container(s) {', '.join(users)}")
            pub.remove_volume(name)

    def prune(self, *, all: bool = False) -> PruneReport:
        """Remove unused anonymous volumes (``all``: unused named ones too)."""
        report = PruneReport()
        with self._storage.transaction() as tx, tx.publishing() as pub:
            for rec in pub.records.volumes():
                if (rec.anonymous or all) and not pub.records.container_names_using_volume(rec.name):
                    report.space_reclaimed += _ovlcore.dir_usage(str(self.data_of(rec.name)))
                    pub.remove_volume(rec.name)
                    report.deleted.append(rec.name)
        return report
