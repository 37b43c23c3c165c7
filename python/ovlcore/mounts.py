"""Mounts: volumes and bind mounts a container sees at a target path, outside its layers."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any, Iterable

from . import _ovlcore
from ._store import Publisher, Transaction
from ._store.layout import VolumeDir
from .fs import ContainerFS
from .references import check_name
from .volumes import Volumes, anonymous_name, volume_record

__all__ = ["Mount"]

MOUNT_TYPES = ("volume", "bind")


@dataclass(frozen=True)
class Mount:
    """A volume (``source`` = volume name; ``None``: a new anonymous volume) or a bind mount (``source`` =
    an existing absolute host path) at the absolute container path ``target``."""

    target: str
    source: str | None = None
    type: str = "volume"
    read_only: bool = False
    nocopy: bool = False

    def __init__(
        self,
        target: str,
        source: str | None = None,
        *,
        type: str = "volume",
        read_only: bool = False,
        nocopy: bool = False,
    ) -> None:
        if type not in MOUNT_TYPES:
            raise ValueError(f"mount type must be 'volume' or 'bind', not {type!r}")
        if not isinstance(target, str) or not target.startswith("/"):
            raise ValueError(f"mount target must be an absolute container path, not {target!r}")
        target = posixpath.normpath(target)
        if target.startswith("//"):
            target = "/" + target.lstrip("/")
        if target == "/":
            raise ValueError("cannot mount over the container's root")
        if type == "bind":
            if not source:
                raise ValueError("a bind mount needs a source path")
            if not os.path.isabs(source):
                raise ValueError(f"bind source must be an absolute host path, not {source!r}")
        elif source is not None:
            check_name(source, "volume")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "read_only", bool(read_only))
        object.__setattr__(self, "nocopy", bool(nocopy))

    @classmethod
    def parse(cls, spec: str) -> Mount:
        """Docker's ``--mount`` syntax: ``type=bind,src=/abs,dst=/shared,readonly`` (also ``source``,
        ``target``/``destination``, ``ro``/``readonly[=true|false]``, ``volume-nocopy``)."""
        fields: dict[str, str | bool] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            fields[key] = value.strip() if eq else True
        def flag(*names: str) -> bool:
            for n in names:
                if n in fields:
                    v = fields.pop(n)
                    if v is True:
                        return True
                    if str(v).lower() in ("1", "true", "yes"):
                        return True
                    if str(v).lower() in ("0", "false", "no"):
                        return False
                    raise ValueError(f"invalid value for {n}: {v!r}")
            return False
        mtype = str(fields.pop("type", "volume"))
        source = fields.pop("source", None) or fields.pop("src", None)
        target = fields.pop("target", None) or fields.pop("destination", None) or fields.pop("dst", None)
        read_only = flag("readonly", "ro")
        nocopy = flag("volume-nocopy", "volume_nocopy", "nocopy")
        fields.pop("bind-propagation", None)
        if fields:
            raise ValueError(f"unknown mount option(s): {', '.join(sorted(fields))}")
        if not isinstance(target, str):
            raise ValueError(f"mount {spec!r}: a target (dst=...) is required")
        return cls(target, source if isinstance(source, str) else None, type=mtype, read_only=read_only, nocopy=nocopy)

    @classmethod
    def parse_volume(cls, spec: str) -> Mount:
        """Docker's ``-v`` short form: ``NAME:/target[:ro]``, ``/host/path:/target[:ro]``, ``/target``."""
        parts = spec.split(":")
        opts = ""
        if len(parts) == 3 or (len(parts) == 2 and not parts[1].startswith("/")):
            opts = parts.pop()
        read_only = "ro" in opts.split(",")
        nocopy = "nocopy" in opts.split(",")
        if len(parts) == 1:
            return cls(parts[0], None, read_only=read_only, nocopy=nocopy)
        source, target = parts
        if source.startswith("/"):
            return cls(target, source, type="bind", read_only=read_only)
        return cls(target, source, read_only=read_only, nocopy=nocopy)

    def host_path(self, volumes: Volumes) -> str:
        """Where the mounted data lives on the host."""
        if self.type == "bind":
            assert self.source is not None
            return self.source
        assert self.source is not None, "anonymous volumes get their name when the container is created"
        return str(volumes.data_of(self.source))

    def to_record(self) -> dict[str, Any]:
        """The mount as stored in ``container.json``."""
        return {"type": self.type, "source": self.source, "target": self.target, "read_only": self.read_only, "nocopy": self.nocopy}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Mount:
        return cls(str(rec["target"]), rec.get("source"), type=str(rec["type"]), read_only=bool(rec.get("read_only")), nocopy=bool(rec.get("nocopy")))

    def __str__(self) -> str:
        parts = [f"type={self.type}"]
        if self.source:
            parts.append(f"src={self.source}")
        parts.append(f"dst={self.target}")
        if self.read_only:
            parts.append("readonly")
        return ",".join(parts)


def as_mount(m: Mount | str | dict[str, Any]) -> Mount:
    if isinstance(m, Mount):
        return m
    if isinstance(m, str):
        return Mount.parse(m) if "=" in m else Mount.parse_volume(m)
    if isinstance(m, dict):
        return Mount(**m)
    raise TypeError(f"a mount is a Mount, a --mount string or a dict, not {type(m).__name__}")


class MountPlan:
    """One mount of a container being created. Volume data is prepared in the container's transaction
    outside the store lock (:meth:`stage`), then published together with the container (:meth:`publish`)."""

    def __init__(self, mount: Mount, image_kind: str | None) -> None:
        self.mount = mount
        self.anonymous = mount.type == "volume" and mount.source is None
        self.name = anonymous_name() if self.anonymous else mount.source
        self.fill = mount.type == "volume" and image_kind == "dir" and not mount.nocopy
        self.staged: VolumeDir | None = None

    def stage(self, tx: Transaction, volumes: Volumes, image_fs: ContainerFS, privilege: str) -> None:
        """Build the volume's directory (filled from the image where it will be used) in ``tx``, unless an
        existing volume already holds data."""
        if self.mount.type != "volume":
            return
        existing = volumes.find(str(self.name))
        if existing is not None and (not self.fill or os.listdir(existing.mountpoint)):
            return
        staged = tx.stage_volume()
        if self.fill:
            view = image_fs.view
            view.copy_out(self.mount.target, str(staged.path), staged.data.name, follow_symlinks=True, contents=True, store_convention=True)
            _take_attrs(privilege, str(staged.data), view.stat(self.mount.target))
            _ovlcore.sync_fs(str(staged.data))
        self.staged = staged

    def publish(self, tx: Transaction, pub: Publisher, volumes: Volumes) -> dict[str, Any]:
        """Create the volume, or fill it if it is still empty; the mount's record."""
        m = self.mount
        if m.type == "volume":
            name = str(self.name)
            if pub.records.volume(name) is None:
                # Staged above, or (the volume vanished since staging) an empty one made now.
                volumes.publish(pub, self.staged or tx.stage_volume(), volume_record(name, anonymous=self.anonymous))
            elif self.staged is not None and self.fill and not os.listdir(volumes.data_of(name)):
                pub.fill_volume(name, self.staged)
            m = Mount(m.target, name, type="volume", read_only=m.read_only, nocopy=m.nocopy)
        rec = m.to_record()
        rec["anonymous"] = self.anonymous
        return rec


def plan_mounts(image_fs: ContainerFS, mounts: Iterable[Mount | str | dict[str, Any]]) -> list[MountPlan]:
    """Check a container's mounts against the image: bind sources must exist, a volume may not cover an
    image file, targets are unique. An empty volume mounted on an image directory is to be filled with that
    directory's content (mode and owner too) unless ``nocopy``."""
    plans = []
    targets: set[str] = set()
    view = image_fs.view
    for raw in mounts:
        m = as_mount(raw)
        # Targets are resolved inside the image, symlinks included, as Docker's FollowSymlinkInScope does.
        canonical = view.canonical(m.target)
        if canonical == "/":
            raise ValueError(f"cannot mount over the container's root ({m.target})")
        m = Mount(canonical, m.source, type=m.type, read_only=m.read_only, nocopy=m.nocopy)
        if m.target in targets:
            raise ValueError(f"duplicate mount point: {m.target}")
        targets.add(m.target)
        if m.type == "bind":
            assert m.source is not None
            if not os.path.lexists(m.source):
                raise FileNotFoundError(2, f"bind source path does not exist: {m.source}", m.source)
            plans.append(MountPlan(m, None))
            continue
        kind = view.kind(m.target, True)
        if kind is not None and kind != "dir":
            raise NotADirectoryError(20, f"cannot mount volume over image {kind} {m.target}", m.target)
        plans.append(MountPlan(m, kind))
    return plans


def _take_attrs(privilege: str, path: str, st: Any) -> None:
    """The volume directory takes the image directory's mode and owner."""
    if privilege == "root":
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
    else:
        # Rootless: the owner must keep access; the real values go in the override (see attrs.rs).
        perm = stat.S_IMODE(st.st_mode)
        real = (perm & 0o777) | 0o700
        os.chmod(path, real)
        if st.st_uid != 0 or st.st_gid != 0 or real != perm:
            os.setxattr(path, "user.containers.override_stat", f"{st.st_uid}:{st.st_gid}:{perm:04o}:dir".encode())

