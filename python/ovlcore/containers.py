"""Containers: an image's read-only layers plus one writable layer.

A container's directory holds its writable layer (in the kernel overlayfs format), the kernel's work
directory for :meth:`Container.mount`, a scratch directory where copy-ups are built before being renamed
into place and, after a commit, the list of files hard-linked into the committed layer (copied before
their next change). Its record holds the name, image, mounts, labels and command.
"""

from __future__ import annotations

import builtins

import contextlib
import errno
import functools
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from . import _ovlcore, fusemount
from ._config import apply_changes, child_config
from ._store import Storage
from ._store.files import replacing
from ._store.layout import ContainerDir
from ._store.records import ContainerRecord, Query
from ._time import format_time, now, parse_time
from .errors import AmbiguousReference, ContainerNotFound, InvalidReference, NameConflict
from .fs import ContainerFS
from .images import Image, Images
from .layers import Source, as_source, layer_record
from .mounts import Mount, plan_mounts
from .references import check_name, full_tag
from .reports import PruneReport
from .volumes import Volumes

__all__ = ["Container", "Containers", "Change", "ContainerSize"]

_ADJECTIVES = (
    "brave calm eager fancy gentle happy jolly keen lively merry nimble proud quiet rapid shiny swift "
    "tender vivid witty zealous bold clever crisp dapper elated fluent"
).split()
_NOUNS = (
    "lovelace turing hopper ritchie thompson torvalds knuth dijkstra liskov hamilton wozniak kay "
    "babbage curie noether shannon euler gauss lamport backus conway diffie"
).split()


@dataclass(frozen=True)
class Change:
    """One line of ``docker diff``: ``kind`` is ``"A"`` (added), ``"C"`` (changed) or ``"D"`` (deleted)."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class ContainerSize:
    """``docker ps -s``: bytes in the writable layer, and those plus the image's."""

    rw: int
    virtual: int


class Container:
    """A container of the store."""

    def __init__(self, containers: Containers, record: ContainerRecord) -> None:
        self._containers = containers
        self._storage = containers._storage
        self._record = record
        self._view_cache: _ovlcore.View | None = None

    @functools.cached_property
    def _dirs(self) -> ContainerDir:
        return self._storage.layout.container(self.id)

    # ----- identity -----

    @property
    def id(self) -> str:
        """64 hex digits."""
        return self._record.id

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]

    @property
    def name(self) -> str:
        """The container's unique name."""
        return self._record.name

    @property
    def image_id(self) -> str:
        """The id of the image the container was created from."""
        return self._record.image_id

    @property
    def image(self) -> Image:
        """The image the container was created from."""
        return self._containers._images.get(self.image_id)

    @property
    def created(self) -> datetime:
        """When the container was created (UTC)."""
        return parse_time(self._record.created)

    @property
    def labels(self) -> dict[str, str]:
        """The labels given at creation."""
        return dict(self._record.labels)

    @property
    def command(self) -> builtins.list[str]:
        """The command given at creation (``created_by`` of its commits)."""
        return list(self._record.command)

    @property
    def mounts(self) -> builtins.list[Mount]:
        """Volumes and bind mounts, with their canonical container targets."""
        return [Mount.from_record(m) for m in self._record.mounts]

    @property
    def dir(self) -> Path:
        """The container's directory in the store."""
        return self._dirs.path

    @property
    def upper(self) -> Path:
        """The writable layer's directory."""
        return self._dirs.upper

    @property
    def mounted_at(self) -> str | None:
        """Where the container is mounted (kernel or FUSE, by any process), or ``None``."""
        try:
            return self._dirs.marker.read_text().strip()
        except FileNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"<Container {self.short_id} name={self.name!r} image={self.image_id[7:19]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Container) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # ----- the merged view -----

    def _mount_points(self) -> builtins.list[tuple[str, str, bool]]:
        volumes = self._containers._volumes
        return [(m.target, m.host_path(volumes), m.read_only) for m in self.mounts]

    def _view(self) -> _ovlcore.View:
        if self._view_cache is None:
            image = self._containers._images.find(self.image_id)
            if image is None:
                raise ContainerNotFound(f"container {self.name}: its image {self.image_id} is gone")
            d = self._dirs
            self._view_cache = _ovlcore.View(
                image.stack_paths(),
                str(d.upper),
                scratch=str(d.scratch),
                shared=str(d.shared),
                privilege=self._storage.privilege,
                mounts=self._mount_points(),
            )
        return self._view_cache

    @property
    def fs(self) -> ContainerFS:
        """The merged file system: reads see image + changes, writes land in the writable layer."""
        return ContainerFS(self._view(), writable=self._storage.writable, owner=f"container {self.name}", guard=self._guard)

    def _guard(self) -> None:
        """Before a write: refuse it while the container is mounted, by the kernel or FUSE (another
        process may have mounted it: one stat per write tells), and let recovery know this process may
        leave copy-ups in progress in the scratch directory."""
        if not self._storage.writable:
            raise PermissionError(errno.EROFS, f"{os.strerror(errno.EROFS)} (the store is open read-only)", str(self.dir))
        where = self.mounted_at
        if where is not None:
            raise OSError(errno.EBUSY, f"container {self.name} is mounted at {where}: write through the mount")
        self._storage.use_scratch(self.id)

    # ----- changes -----

    def diff(self) -> builtins.list[Change]:
        """``docker diff``: changes relative to the image, parents before children."""
        return [Change(k, p) for k, p in self._view().diff()]

    def commit(
        self,
        tag: str | None = None,
        *,
        message: str | None = None,
        author: str | None = None,
        changes: builtins.list[str] | None = None,
        created_by: str | None = None,
        progress: Callable[[int], None] | None = None,
        config: dict[str, Any] | None = None,
        created: datetime | None = None,
    ) -> Image:
        """``docker commit``: a new image = this container's image + one layer with its changes + a
        history entry. The container goes on working. The new layer shares the writable layer's files
        (hard links) instead of copying them; a later change to one of them copies it first.
        ``config`` replaces the runtime config (``config.Env``, ``Cmd``...) before ``changes`` apply, as a
        build step does; ``created`` dates the image (default: now)."""
        self._guard()
        image = self.image
        apply_changes({}, changes)
        if tag is not None:
            tag = full_tag(tag)
        parent = image.chain_ids[-1] if image.chain_ids else None
        with self._storage.transaction() as tx:
            staged = tx.stage_layer()
            diff_id, tar_size, size = self._view().commit(str(staged.content), progress=progress)
            layer = layer_record(diff_id, parent, size=size, tar_size=tar_size)
            child = child_config(
                image.config,
                diff_id,
                created_by=created_by if created_by is not None else " ".join(self.command),
                comment=message or "",
                author=author,
                changes=changes,
                config=config,
                created=created,
            )
            with tx.publishing() as pub:
                pub.add_layer(staged, layer)
                return self._containers._images.publish(tx, pub, child, parent=image.id, tag=tag)

    def export(self, dest: str | os.PathLike[str] | IO[bytes], *, progress: Callable[[int], None] | None = None) -> None:
        """``docker export``: the flattened merged file system as one tar (mount contents excluded)."""
        stream = self._view().export()
        _copy_stream(stream, dest, progress)

    def get_archive(self, path: str, chunk_size: int = 2 * 1024 * 1024) -> tuple[Iterator[bytes], dict[str, Any]]:
        """As docker-py: a tar of ``path`` (and everything below it) streamed in chunks, and a stat dict
        (``name``, ``size``, ``mode`` in Go's FileMode bits, ``mtime``, ``linkTarget``)."""
        view = self._view()
        st = view.stat(path, False)
        link = view.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        info = {
            "name": posixpath.basename(path.rstrip("/")) or "/",
            "size": st.st_size,
            "mode": _go_file_mode(st.st_mode),
            "mtime": format_time(datetime.fromtimestamp(st.st_mtime, timezone.utc)),
            "linkTarget": link,
        }
        stream = view.get_archive(path)

        def chunks() -> Iterator[bytes]:
            while True:
                data = stream.read(chunk_size)
                if not data:
                    return
                yield data

        return chunks(), info

    def put_archive(self, path: str, data: Source) -> bool:
        """As docker-py: extract a tar (bytes, a binary file or an iterable of chunks; plain, gzip, zstd, bzip2 or xz)
        into the existing directory ``path`` of the container, through copy-up. Returns True."""
        self._guard()
        self._view().put_archive(path, as_source(data))
        return True

    def size(self) -> ContainerSize:
        """``docker ps -s``: bytes in the writable layer, and with the image's."""
        rw = self._view().upper_size()
        return ContainerSize(rw=rw, virtual=rw + self.image.size)

    # ----- kernel mount -----

    @contextlib.contextmanager
    def mount(
        self, path: str | os.PathLike[str] | None = None, *, driver: str = "auto", root_as: tuple[int, int] | None = None
    ) -> Iterator[Path]:
        """Mount the merged tree for real and yield the host path; unmounted on exit. Changes made there
        are the container's changes. ``driver``: ``"kernel"`` (overlayfs over the stored layer directories,
        volumes bind-mounted at their targets; needs the privilege to mount), ``"fuse"`` (ovlcore's own
        view served through FUSE, volumes routed by the view; no privilege needed) or ``"auto"`` (kernel
        when privileged, else FUSE). While mounted, writes through :attr:`fs` are refused.

        ``root_as`` (FUSE only): show the container's root-owned files as this host ``(uid, gid)`` and
        store that owner as root, for programs in a user namespace mapping its root to that user (a
        rootless OCI runtime)."""
        if driver not in ("auto", "kernel", "fuse"):
            raise ValueError(f"unknown mount driver {driver!r} (auto, kernel or fuse)")
        if driver == "auto":
            driver = "kernel" if os.geteuid() == 0 and root_as is None else "fuse"
        if root_as is not None and driver != "fuse":
            raise ValueError("root_as needs the fuse driver")
        d = self._dirs
        target = Path(path) if path is not None else d.merged
        if driver == "fuse":
            target = self.mount_fuse(target, root_as=root_as)
            try:
                yield target
            finally:
                try:
                    fusemount.unmount(target)
                except OSError:
                    # Still busy (a file left open) or its daemon is gone: detach it.
                    fusemount.unmount(target, lazy=True)
                self._wait_unmarked()
            return
        with self._mount_kernel(target) as where:
            yield where

    def mount_fuse(self, path: str | os.PathLike[str] | None = None, *, root_as: tuple[int, int] | None = None) -> Path:
        """Mount the container through FUSE and leave it mounted (served by a daemon that exits when
        the mount goes away: ``umount``/``fusermount3 -u``). Returns the mount point. ``root_as``: as
        for :meth:`mount`."""
        if not self._storage.writable:
            raise PermissionError(errno.EROFS, f"{os.strerror(errno.EROFS)} (the store is open read-only)", str(self.dir))
        d = self._dirs
        target = Path(path) if path is not None else d.merged
        fusemount.clear_stale(target)
        self._clear_stale_marker()
        if self.mounted_at is not None:
            raise OSError(errno.EBUSY, f"container {self.name} is already mounted at {self.mounted_at}", str(target))
        target.mkdir(parents=True, exist_ok=True)
        image = self.image
        self._storage.use_scratch(self.id)
        spec = fusemount.FuseSpec(
            mountpoint=str(target.resolve()),
            lower=image.stack_paths(),
            upper=str(d.upper),
            scratch=str(d.scratch),
            shared=str(d.shared),
            privilege=self._storage.privilege,
            mounts=self._mount_points(),
            marker=str(d.marker),
            fsname=f"ovlcore:{self.name}",
            root_as=root_as,
        )
        # The daemon copies up in the scratch directory too: recovery cleans up after it if it dies.
        self._storage.use_scratch(self.id, fusemount.start(spec))
        self._view_cache = None  # the daemon's view is the one that writes now
        return Path(spec.mountpoint)

    def _clear_stale_marker(self) -> None:
        """A marker left by a daemon that was killed (nothing mounted there any more) goes away."""
        where = self.mounted_at
        if where is not None and not fusemount.is_mounted(where):
            with contextlib.suppress(FileNotFoundError):
                self._dirs.marker.unlink()

    def _wait_unmarked(self, timeout: float = 10.0) -> None:
        """After unmounting, the daemon removes the marker as it exits."""
        deadline = time.monotonic() + timeout
        while self._dirs.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._clear_stale_marker()

    @contextlib.contextmanager
    def _mount_kernel(self, target: Path) -> Iterator[Path]:
        d = self._dirs
        target.mkdir(parents=True, exist_ok=True)
        view = self._view()
        self._storage.use_scratch(self.id)
        view.unshare_all()  # the kernel writes in place: committed layers must not share inodes
        lower = self.image.stack_paths() or [str(self._empty_lower())]
        try:
            _ovlcore.mount_overlay(lower, str(d.upper), str(d.work), str(target), userxattr=self._storage.privilege == "rootless")
        except PermissionError as e:
            raise PermissionError(
                errno.EPERM,
                "mounting a container with the kernel driver needs the privilege to mount (run as root); "
                "driver='fuse' and the userspace view (container.fs) need none",
                str(target),
            ) from e
        scaffolding: builtins.list[str] = []
        volumes = self._containers._volumes
        try:
            d.marker.write_text(str(target))
            # Outer mounts first, so that a mount inside another one's target lands on top of it. Targets
            # are resolved again in the container as it is now (FollowSymlinkInScope).
            for m in sorted(self.mounts, key=lambda m: m.target.count("/")):
                where = view.canonical(m.target)
                scaffolding += _ovlcore.bind_mount_in(str(target), where, m.host_path(volumes), read_only=m.read_only)
            yield target
        finally:
            # Detaching the overlay detaches the bind mounts below it too.
            _ovlcore.unmount(str(target), lazy=True)
            with contextlib.suppress(FileNotFoundError):
                d.marker.unlink()
            # Mount points the image did not have were made in the writable layer: take them out again,
            # so they never show in diff or commit (as Docker's mount points do not).
            view.remove_empty_mount_points(list(reversed(scaffolding)))

    def _empty_lower(self) -> Path:
        p = self._dirs.empty
        p.mkdir(exist_ok=True)
        return p

    # ----- lifecycle -----

    def remove(self, volumes: bool = False) -> None:
        """Delete the container (see :meth:`Containers.remove`)."""
        self._containers.remove(self.id, volumes=volumes)


def _go_file_mode(mode: int) -> int:
    """A POSIX ``st_mode`` in Go's ``os.FileMode`` encoding (what Docker's archive API reports)."""
    go = stat.S_IMODE(mode) & 0o777
    kinds = {stat.S_IFDIR: 1 << 31, stat.S_IFLNK: 1 << 27, stat.S_IFBLK: 1 << 26, stat.S_IFCHR: (1 << 26) | (1 << 21), stat.S_IFIFO: 1 << 25, stat.S_IFSOCK: 1 << 24}
    go |= kinds.get(stat.S_IFMT(mode), 0)
    if mode & stat.S_ISUID:
        go |= 1 << 23
    if mode & stat.S_ISGID:
        go |= 1 << 22
    if mode & stat.S_ISVTX:
        go |= 1 << 20
    return go


def _copy_stream(stream: Any, dest: str | os.PathLike[str] | IO[bytes], progress: Callable[[int], None] | None = None) -> None:
    """Copy a core tar stream into a path (atomically) or a binary file object."""
    if isinstance(dest, (str, os.PathLike)):
        with replacing(Path(dest)) as f:
            _copy_stream(stream, f, progress)
        return
    stream.copy_to(dest, progress=progress)


class Containers:
    """``store.containers``."""

    def __init__(self, storage: Storage, images: Images, volumes: Volumes) -> None:
        self._storage = storage
        self._images = images
        self._volumes = volumes

    def _resolve(self, q: Query, ref: str | Container) -> ContainerRecord:
        if isinstance(ref, Container):
            ref = ref.id
        if not isinstance(ref, str) or not ref:
            raise InvalidReference(f"invalid container reference {ref!r}")
        found = q.container(ref) or q.container_named(ref.lstrip("/"))
        if found is not None:
            return found
        matches = q.containers_with_prefix(ref)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousReference(f"container id prefix {ref!r} matches more than one container")
        raise ContainerNotFound(f"No such container: {ref}")

    def get(self, ref: str) -> Container:
        """A container by name, full id or unique id prefix."""
        return Container(self, self._resolve(self._storage.records, ref))

    def list(self) -> builtins.list[Container]:
        """Every container, newest first."""
        return [Container(self, r) for r in self._storage.records.containers()]

    def _new_name(self, q: Query) -> str:
        import secrets  # here: it loads hashlib (OpenSSL), which `import ovlcore` does not need

        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            if q.container_named(name) is None:
                return name

    def create(
        self,
        image: str | Image,
        *,
        name: str | None = None,
        mounts: Any = (),
        labels: dict[str, str] | None = None,
        command: builtins.list[str] | None = None,
    ) -> Container:
        """A new container: an empty writable layer on top of ``image``'s layers (nothing is copied).
        ``mounts``: :class:`~ovlcore.Mount` objects (or ``--mount``/``-v`` strings); missing named volumes are
        created, and an empty volume on an image directory is first filled with its content."""
        img = self._images.get(image)
        if name is not None:
            name = check_name(name)
        mounts = builtins.list(mounts or ())
        plans = plan_mounts(img.fs, mounts) if mounts else []
        with self._storage.transaction() as tx:
            for plan in plans:
                plan.stage(tx, self._volumes, img.fs, self._storage.privilege)
            staged = tx.stage_container()
            with tx.publishing() as pub:
                w = pub.records
                if name is None:
                    name = self._new_name(w)
                elif w.container_named(name) is not None:
                    raise NameConflict(f"Conflict. The container name {name!r} is already in use")
                if w.image(img.id) is None:
                    raise ContainerNotFound(f"image {img.id} was removed meanwhile")
                record = ContainerRecord.new(
                    os.urandom(32).hex(),
                    name,
                    img.id,
                    now(),
                    labels=dict(labels or {}),
                    command=builtins.list(command or []),
                    mounts=[plan.publish(tx, pub, self._volumes) for plan in plans],
                )
                pub.add_container(staged, record)
        return Container(self, record)

    def remove(self, ref: str | Container, *, volumes: bool = False, force: bool = False) -> None:
        """Delete the container and its writable layer (the image is unchanged); with ``volumes``, also
        its anonymous volumes."""
        with self._storage.transaction() as tx, tx.publishing() as pub:
            w = pub.records
            rec = self._resolve(w, ref)
            marker = self._storage.layout.container(rec.id).marker
            if marker.exists() and not force:
                raise OSError(errno.EBUSY, f"container {rec.name} is mounted; unmount it first", str(marker.parent))
            pub.remove_container(rec.id)
            if volumes:
                # Anonymous volumes go with it, unless another container uses them too.
                for m in rec.mounts:
                    source = m.get("source")
                    if m.get("type") == "volume" and m.get("anonymous") and source and w.volume(source) is not None:
                        if not w.container_names_using_volume(source):
                            pub.remove_volume(source)

    def prune(self) -> PruneReport:
        """Remove every container (none of them runs: a store's containers are always stopped)."""
        report = PruneReport()
        for c in self.list():
            size = c.size().rw
            self.remove(c.id)
            report.deleted.append(c.id)
            report.space_reclaimed += size
        return report
