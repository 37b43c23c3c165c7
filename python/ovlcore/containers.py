"""Containers: an image's read-only layers plus one writable layer.

``containers/<id>/`` holds ``container.json`` (name, image, mounts, labels), ``diff/`` (the writable
layer, in the kernel overlayfs format), ``work/`` (the kernel's work directory for :meth:`Container.mount`),
``scratch/`` (where copy-ups are built before being renamed into place) and, after a commit,
``shared-inodes`` (files hard-linked into the committed layer, copied before their next change).
"""

from __future__ import annotations

import builtins

import contextlib
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import _ovlcore
from ._storage import Staging, move_to_trash, read_json, replacing, write_json
from .errors import AmbiguousReference, ContainerNotFound, InvalidReference, NameConflict
from .fs import ContainerFS
from .images import Image, format_time, parse_time
from .layers import Source, make_layer_root
from .references import check_name, full_tag

if TYPE_CHECKING:
    from .mounts import Mount
    from .store import PruneReport, Store

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

    def __init__(self, store: Store, record: dict[str, Any]) -> None:
        self._store = store
        self._record = record
        self._view_cache: _ovlcore.View | None = None
        self._marker = str(store._layout.container(str(record["id"])) / "mounted")

    # ----- identity -----

    @property
    def id(self) -> str:
        """64 hex digits."""
        return str(self._record["id"])

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]

    @property
    def name(self) -> str:
        """The container's unique name."""
        return str(self._record["name"])

    @property
    def image_id(self) -> str:
        """The id of the image the container was created from."""
        return str(self._record["image"])

    @property
    def image(self) -> Image:
        """The image the container was created from."""
        return self._store.images.get(self.image_id)

    @property
    def created(self) -> datetime:
        """When the container was created (UTC)."""
        return parse_time(str(self._record["created"]))

    @property
    def labels(self) -> dict[str, str]:
        """The labels given at creation."""
        return dict(self._record.get("labels") or {})

    @property
    def command(self) -> builtins.list[str]:
        """The command given at creation (``created_by`` of its commits)."""
        return list(self._record.get("command") or [])

    @property
    def mounts(self) -> builtins.list[Mount]:
        """Volumes and bind mounts, with their canonical container targets."""
        from .mounts import Mount

        return [Mount.from_record(m) for m in self._record.get("mounts") or []]

    @property
    def dir(self) -> Path:
        """The container's directory in the store."""
        return self._store._layout.container(self.id)

    @property
    def upper(self) -> Path:
        """The writable layer's directory."""
        return self.dir / "diff"

    def __repr__(self) -> str:
        return f"<Container {self.short_id} name={self.name!r} image={self.image_id[7:19]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Container) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # ----- the merged view -----

    def _mount_points(self) -> builtins.list[tuple[str, str, bool]]:
        return [(m.target, m.host_path(self._store), m.read_only) for m in self.mounts]

    def _view(self) -> _ovlcore.View:
        if self._view_cache is None:
            image = self._store.images._maybe(self.image_id)
            if image is None:
                raise ContainerNotFound(f"container {self.name}: its image {self.image_id} is gone")
            self._view_cache = _ovlcore.View(
                image.stack_paths(),
                str(self.upper),
                scratch=str(self.dir / "scratch"),
                shared=str(self.dir / "shared-inodes"),
                privilege=self._store.privilege,
                mounts=self._mount_points(),
            )
        return self._view_cache

    @property
    def fs(self) -> ContainerFS:
        """The merged file system: reads see image + changes, writes land in the writable layer."""
        return ContainerFS(self._view(), writable=True, owner=f"container {self.name}", guard=self._guard)

    def _guard(self) -> None:
        """Refuse writes through the API while the kernel has the container mounted (another process may
        have mounted it: one stat per write tells)."""
        marker = self._marker
        if os.path.exists(marker):
            where = open(marker).read().strip()
            raise OSError(errno.EBUSY, f"container {self.name} is mounted at {where}: write through the mount")

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
    ) -> Image:
        """``docker commit``: a new image = this container's image + one layer with its changes + a
        history entry. The container goes on working. The new layer shares the writable layer's files
        (hard links) instead of copying them; a later change to one of them copies it first."""
        from ._changes import apply_changes
        from .layers import StagedLayer

        self._guard()
        store = self._store
        image = self.image
        apply_changes({}, changes)
        with Staging(store._layout) as st:
            content = make_layer_root(st.path / "diff")
            diff_id, tar_size, size = self._view().commit(str(content), progress=progress)
            staged = StagedLayer(st, diff_id, size, tar_size, image.top_layer)
            config = store.images._child_config(
                image,
                staged.diff_id,
                created_by=created_by if created_by is not None else " ".join(self.command),
                comment=message or "",
                author=author,
                changes=changes,
            )
            with store.images._stage_image(config, image.id) as ist:
                with store._lock.exclusive():
                    store.layers._publish_locked(staged, retain=False)
                    return store.images._publish_locked(ist, config, full_tag(tag) if tag is not None else None)

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
        """As docker-py: extract a tar (bytes, a binary file or an iterable of chunks; plain, gzip or zstd)
        into the existing directory ``path`` of the container, through copy-up. Returns True."""
        from .layers import as_source

        self._guard()
        self._view().put_archive(path, as_source(data))
        return True

    def size(self) -> ContainerSize:
        """``docker ps -s``: bytes in the writable layer, and with the image's."""
        rw = self._view().upper_size()
        return ContainerSize(rw=rw, virtual=rw + self.image.size)

    # ----- kernel mount -----

    @contextlib.contextmanager
    def mount(self, path: str | os.PathLike[str] | None = None) -> Iterator[Path]:
        """Mount the merged tree for real (kernel overlayfs over the stored layer directories) and yield
        the host path; volumes and bind mounts are bind-mounted at their targets. Changes made there are
        the container's changes. Needs the privilege to mount."""
        target = Path(path) if path is not None else self.dir / "merged"
        target.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "mounted"
        view = self._view()
        view.unshare_all()  # the kernel writes in place: committed layers must not share inodes
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.dir / "shared-inodes", 0)
        lower = self.image.stack_paths() or [str(self._empty_lower())]
        try:
            _ovlcore.mount_overlay(lower, str(self.upper), str(self.dir / "work"), str(target), userxattr=self._store.privilege == "rootless")
        except PermissionError as e:
            raise PermissionError(
                errno.EPERM,
                "mounting a container needs the privilege to mount (run as root); "
                "the userspace view (container.fs) needs none",
                str(target),
            ) from e
        scaffolding: builtins.list[str] = []
        try:
            marker.write_text(str(target))
            # Outer mounts first, so that a mount inside another one's target lands on top of it. Targets
            # are resolved again in the container as it is now (FollowSymlinkInScope).
            for m in sorted(self.mounts, key=lambda m: m.target.count("/")):
                where = view.canonical(m.target)
                scaffolding += _ovlcore.bind_mount_in(str(target), where, m.host_path(self._store), read_only=m.read_only)
            yield target
        finally:
            # Detaching the overlay detaches the bind mounts below it too.
            _ovlcore.unmount(str(target), lazy=True)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
            # Mount points the image did not have were made in the writable layer: take them out again,
            # so they never show in diff or commit (as Docker's mount points do not).
            view.remove_empty_mount_points(list(reversed(scaffolding)))

    def _empty_lower(self) -> Path:
        p = self.dir / "empty"
        p.mkdir(exist_ok=True)
        return p

    # ----- lifecycle -----

    def remove(self, volumes: bool = False) -> None:
        """Delete the container (see :meth:`Containers.remove`)."""
        self._store.containers.remove(self.id, volumes=volumes)


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

    def __init__(self, store: Store) -> None:
        self._store = store

    def _records(self) -> builtins.list[dict[str, Any]]:
        out = []
        try:
            names = os.listdir(self._store._layout.containers)
        except FileNotFoundError:
            return []
        for cid in names:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                rec = read_json(self._store._layout.container(cid) / "container.json")
                out.append(rec)
        return out

    def _resolve(self, ref: str) -> dict[str, Any]:
        if isinstance(ref, Container):
            ref = ref.id
        if not isinstance(ref, str) or not ref:
            raise InvalidReference(f"invalid container reference {ref!r}")
        recs = self._records()
        name = ref.lstrip("/")
        for r in recs:
            if r["id"] == ref or r["name"] == name:
                return r
        matches = [r for r in recs if len(ref) >= 1 and str(r["id"]).startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousReference(f"container id prefix {ref!r} matches {len(matches)} containers")
        raise ContainerNotFound(f"No such container: {ref}")

    def get(self, ref: str) -> Container:
        """A container by name, full id or unique id prefix."""
        with self._store._lock.shared():
            return Container(self._store, self._resolve(ref))

    def list(self) -> builtins.list[Container]:
        """Every container, newest first."""
        with self._store._lock.shared():
            recs = self._records()
        recs.sort(key=lambda r: str(r["created"]), reverse=True)
        return [Container(self._store, r) for r in recs]

    def _new_name(self, taken: set[str]) -> str:
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            if name not in taken:
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
        from .mounts import plan_mounts

        store = self._store
        img = store.images.get(image)
        if name is not None:
            name = check_name(name)
        plans = plan_mounts(store, img, mounts)
        cid = secrets.token_hex(32)
        with contextlib.ExitStack() as cleanup, Staging(store._layout) as st:
            for plan in plans:
                cleanup.callback(plan.close)
                plan.stage(store, img.fs._view)
            make_layer_root(st.path / "diff")
            for sub in ("work", "scratch"):
                (st.path / sub).mkdir()
            record: dict[str, Any] = {
                "id": cid,
                "name": name,
                "image": img.id,
                "created": format_time(datetime.now(timezone.utc)),
                "labels": dict(labels or {}),
                "command": list(command or []),
                "mounts": [],
            }
            with store._lock.exclusive():
                taken = {str(r["name"]) for r in self._records()}
                if name is None:
                    record["name"] = self._new_name(taken)
                elif name in taken:
                    raise NameConflict(f"Conflict. The container name {name!r} is already in use")
                if store.images._maybe(img.id) is None:
                    raise ContainerNotFound(f"image {img.id} was removed meanwhile")
                record["mounts"] = [plan.publish_locked(store) for plan in plans]
                write_json(st.path / "container.json", record)
                st.publish(store._layout.container(cid))
        return Container(store, record)

    def remove(self, ref: str | Container, *, volumes: bool = False, force: bool = False) -> None:
        """Delete the container and its writable layer (the image is unchanged); with ``volumes``, also
        its anonymous volumes."""
        store = self._store
        trash: builtins.list[tuple[Path, int]] = []
        with store._lock.exclusive():
            rec = self._resolve(ref)  # type: ignore[arg-type]
            cdir = store._layout.container(str(rec["id"]))
            if (cdir / "mounted").exists() and not force:
                raise OSError(errno.EBUSY, f"container {rec['name']} is mounted; unmount it first", str(cdir))
            p = move_to_trash(store._layout, cdir)
            if p:
                trash.append((p, 0))
            if volumes:
                trash.extend(store._remove_anonymous_volumes(rec))
        store._empty(trash)

    def prune(self) -> PruneReport:
        """Remove every container (none of them runs: a store's containers are always stopped)."""
        from .store import PruneReport

        report = PruneReport()
        for c in self.list():
            size = c.size().rw
            self.remove(c.id)
            report.deleted.append(c.id)
            report.space_reclaimed += size
        return report
