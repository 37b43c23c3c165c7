"""The store's records, indexed in SQLite (``ROOT/metadata.db``): layers, images and their tags,
containers, volumes. Every lookup is an index probe, whatever the number of objects.

The database uses a rollback journal with full syncs rather than WAL: readers then need nothing but a
read-only descriptor on the database file (a store on a file system remounted read-only, or owned by
another user, can still be read), and no process keeps a file of the store open for writing between
operations. Readers take no lock of the store's own; writers hold the store lock and one ``BEGIN
IMMEDIATE`` transaction (see :mod:`ovlcore._store.transaction`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptStore, OvlError

__all__ = [
    "Records",
    "Writer",
    "Query",
    "LayerRecord",
    "ImageRecord",
    "ContainerRecord",
    "VolumeRecord",
    "SCHEMA",
    "SCHEMA_2",
    "BlobRecord",
    "prefix_range",
]

SCHEMA = """
CREATE TABLE layers (
    chain_id TEXT PRIMARY KEY, diff_id TEXT NOT NULL, parent TEXT, size INTEGER NOT NULL,
    tar_size INTEGER, created TEXT NOT NULL, retained INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX layers_by_diff_id ON layers (diff_id);
CREATE INDEX layers_by_parent ON layers (parent);
CREATE TABLE images (
    id TEXT PRIMARY KEY, chain_ids TEXT NOT NULL, parent TEXT, created TEXT NOT NULL, added TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX images_by_parent ON images (parent);
CREATE TABLE image_layers (chain_id TEXT NOT NULL, image_id TEXT NOT NULL, PRIMARY KEY (chain_id, image_id)) WITHOUT ROWID;
CREATE TABLE tags (tag TEXT PRIMARY KEY, image_id TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX tags_by_image ON tags (image_id);
CREATE TABLE containers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image_id TEXT NOT NULL, created TEXT NOT NULL,
    labels TEXT NOT NULL, command TEXT NOT NULL, mounts TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX containers_by_image ON containers (image_id);
CREATE INDEX containers_by_created ON containers (created);
CREATE TABLE volume_users (volume TEXT NOT NULL, container_id TEXT NOT NULL, PRIMARY KEY (volume, container_id)) WITHOUT ROWID;
CREATE TABLE volumes (name TEXT PRIMARY KEY, created TEXT NOT NULL, labels TEXT NOT NULL, anonymous INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE scratch_users (container_id TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (container_id, pid)) WITHOUT ROWID;
"""
#: Schema 2: what registries told us (see :data:`SCHEMA_2`).
SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS repo_digests (repo_digest TEXT PRIMARY KEY, image_id TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repo_digests_by_image ON repo_digests (image_id);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT NOT NULL, registry TEXT NOT NULL, repository TEXT NOT NULL, diff_id TEXT NOT NULL, compression TEXT NOT NULL,
    PRIMARY KEY (digest, registry, repository)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_diff_id ON blobs (diff_id);
PRAGMA user_version = 2;
"""
SCHEMA = SCHEMA + SCHEMA_2
SCHEMA_VERSION = 2

#: How long a reader or writer waits for another process's commit before giving up.
BUSY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LayerRecord:
    chain_id: str
    diff_id: str
    parent: str | None
    size: int
    tar_size: int | None
    created: str
    #: Kept by ``layers.apply`` until removed or pruned, whether or not an image uses it.
    retained: bool = False


@dataclass(frozen=True)
class ImageRecord:
    id: str
    #: Chain ids of the layers, bottom first.
    chain_ids: tuple[str, ...]
    #: The local image a commit or build step started from.
    parent: str | None
    #: The config's creation time, normalised (the sort key of ``images.list``).
    created: str
    #: When this store added the image.
    added: str


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    image_id: str
    created: str
    #: Labels, command and mounts as stored (JSON), decoded when first asked for: listing 10,000
    #: containers need not decode what nobody reads.
    labels_json: str = "{}"
    command_json: str = "[]"
    mounts_json: str = "[]"

    @classmethod
    def new(
        cls, id: str, name: str, image_id: str, created: str, *,
        labels: dict[str, str], command: list[str], mounts: list[dict[str, Any]],
    ) -> ContainerRecord:
        return cls(id, name, image_id, created, json.dumps(labels), json.dumps(command), json.dumps(mounts))

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        return dict(json.loads(self.labels_json))

    @functools.cached_property
    def command(self) -> list[str]:
        return list(json.loads(self.command_json))

    @functools.cached_property
    def mounts(self) -> list[dict[str, Any]]:
        return list(json.loads(self.mounts_json))

    @property
    def volumes(self) -> list[str]:
        """Names of the volumes the container mounts."""
        return [str(m["source"]) for m in self.mounts if m.get("type") == "volume" and m.get("source")]


@dataclass(frozen=True)
class VolumeRecord:
    name: str
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False


@dataclass(frozen=True)
class BlobRecord:
    """A registry blob known to hold a layer (Docker's v2 metadata): seen in ``registry``/``repository``
    by a pull or a push, in ``compression`` (``gzip``, ``zstd``, ``none``)."""

    digest: str
    registry: str
    repository: str
    diff_id: str
    compression: str


def prefix_range(prefix: str) -> tuple[str, str]:
    """Bounds ``lo <= key < hi`` of the keys starting with ``prefix`` (an index range scan)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


_SQLITE_CODES = {5: "busy", 6: "busy", 8: "readonly", 10: "io", 11: "corrupt", 13: "full", 14: "cantopen", 26: "corrupt"}


def _kind(e: sqlite3.Error) -> str:
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _SQLITE_CODES:
        return _SQLITE_CODES[code & 0xFF]
    msg = str(e).lower()
    for needle, kind in (("full", "full"), ("readonly", "readonly"), ("read-only", "readonly"), ("i/o", "io"),
                         ("malformed", "corrupt"), ("not a database", "corrupt"), ("locked", "busy"), ("unable to open", "cantopen")):
        if needle in msg:
            return kind
    return "other"


#: SQLITE_READONLY_ROLLBACK: a hot journal that a read-only connection may not roll back.
_READONLY_ROLLBACK = 8 | (3 << 8)


def _hot_journal(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code == _READONLY_ROLLBACK or (code is None and "readonly" in str(e).lower())


def os_error(e: sqlite3.Error, path: Path) -> Exception:
    """The exception a failed database operation raises: the ``OSError`` the file system gave, or
    :class:`~ovlcore.errors.CorruptStore` for a damaged database."""
    kind = _kind(e)
    where = str(path)
    if kind == "full":
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
    if kind == "readonly":
        code = errno.EROFS if _read_only_fs(path) else errno.EACCES
        return PermissionError(code, os.strerror(code), where)
    if kind == "io":
        return OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({e})", where)
    if kind == "cantopen":
        code = errno.EACCES if path.exists() else errno.ENOENT
        return OSError(code, f"{os.strerror(code)} (cannot open the store's records: {e})", where)
    if kind == "busy":
        return OSError(errno.EBUSY, f"the store's records stayed locked by another process ({e})", where)
    if kind == "corrupt":
        return CorruptStore(f"{where}: the store's records are damaged ({e})")
    return OvlError(f"{where}: {e}")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _layer(row: Any) -> LayerRecord:
    return LayerRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def _image(row: Any) -> ImageRecord:
    return ImageRecord(row[0], tuple(row[1].split()), row[2], row[3], row[4])


def _container(row: Any) -> ContainerRecord:
    return ContainerRecord(*row)


def _volume(row: Any) -> VolumeRecord:
    return VolumeRecord(row[0], row[1], json.loads(row[2]), bool(row[3]))


_LAYER = "SELECT chain_id, diff_id, parent, size, tar_size, created, retained FROM layers"
_IMAGE = "SELECT id, chain_ids, parent, created, added FROM images"
_CONTAINER = "SELECT id, name, image_id, created, labels, command, mounts FROM containers"
_VOLUME = "SELECT name, created, labels, anonymous FROM volumes"


class Query:
    """Every question asked of the records, over one connection (``db``)."""

    path: Path

    @property
    def db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise os_error(e, self.path) from None

    def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    # ----- layers -----

    def layer(self, chain_id: str) -> LayerRecord | None:
        row = self._one(f"{_LAYER} WHERE chain_id = ?", (chain_id,))
        return _layer(row) if row else None

    def layers(self) -> list[LayerRecord]:
        return [_layer(r) for r in self._all(f"{_LAYER} ORDER BY chain_id")]

    def layers_matching(self, digest_prefix: str) -> list[LayerRecord]:
        """Layers whose chain id or diff id starts with ``digest_prefix`` (``sha256:...``)."""
        lo, hi = prefix_range(digest_prefix)
        rows = self._all(f"{_LAYER} WHERE (chain_id >= ? AND chain_id < ?) OR (diff_id >= ? AND diff_id < ?)", (lo, hi, lo, hi))
        return [_layer(r) for r in rows]

    def layer_has_children(self, chain_id: str) -> bool:
        return self._one("SELECT 1 FROM layers WHERE parent = ? LIMIT 1", (chain_id,)) is not None

    def layer_in_use(self, chain_id: str) -> bool:
        """Whether some image uses the layer."""
        return self._one("SELECT 1 FROM image_layers WHERE chain_id = ? LIMIT 1", (chain_id,)) is not None

    def layers_in_use(self) -> set[str]:
        return {r[0] for r in self._all("SELECT DISTINCT chain_id FROM image_layers")}

    # ----- images and tags -----

    def image(self, image_id: str) -> ImageRecord | None:
        row = self._one(f"{_IMAGE} WHERE id = ?", (image_id,))
        return _image(row) if row else None

    def images(self) -> list[ImageRecord]:
        """Every image, newest first."""
        return [_image(r) for r in self._all(f"{_IMAGE} ORDER BY created DESC, id")]

    def image_ids_with_prefix(self, id_prefix: str, limit: int = 2) -> list[str]:
        lo, hi = prefix_range(id_prefix)
        return [r[0] for r in self._all("SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id LIMIT ?", (lo, hi, limit))]

    def image_children(self, parent: str | None) -> list[ImageRecord]:
        """The images made from ``parent`` (``None``: base images), for a build's cache."""
        if parent is None:
            return [_image(r) for r in self._all(f"{_IMAGE} WHERE parent IS NULL ORDER BY added DESC, id")]
        return [_image(r) for r in self._all(f"{_IMAGE} WHERE parent = ? ORDER BY added DESC, id", (parent,))]

    def image_parents(self) -> set[str]:
        """Ids of the images some other image was built from."""
        return {r[0] for r in self._all("SELECT DISTINCT parent FROM images WHERE parent IS NOT NULL")}

    def tag_target(self, tag: str) -> str | None:
        row = self._one("SELECT image_id FROM tags WHERE tag = ?", (tag,))
        return str(row[0]) if row else None

    def tags_of(self, image_id: str) -> list[str]:
        return [r[0] for r in self._all("SELECT tag FROM tags WHERE image_id = ? ORDER BY tag", (image_id,))]

    def tags(self) -> dict[str, str]:
        """Every tag and the image it names."""
        return {r[0]: r[1] for r in self._all("SELECT tag, image_id FROM tags ORDER BY tag")}

    def repository_tags(self, repository: str) -> list[tuple[str, str]]:
        """The ``(tag, image id)`` pairs of one repository (``name`` of ``name:tag``), by tag."""
        lo, hi = prefix_range(repository + ":")
        return [(r[0], r[1]) for r in self._all("SELECT tag, image_id FROM tags WHERE tag >= ? AND tag < ? ORDER BY tag", (lo, hi))]

    # ----- what registries told us -----

    def repo_digests_of(self, image_id: str) -> list[str]:
        """``name@sha256:...`` references of the image (the manifests it was pulled or pushed as)."""
        if self.schema_version() < 2:
            return []
        return [r[0] for r in self._all("SELECT repo_digest FROM repo_digests WHERE image_id = ? ORDER BY repo_digest", (image_id,))]

    def repo_digest_target(self, repo_digest: str) -> str | None:
        if self.schema_version() < 2:
            return None
        row = self._one("SELECT image_id FROM repo_digests WHERE repo_digest = ?", (repo_digest,))
        return str(row[0]) if row else None

    def blobs_of(self, diff_id: str) -> list[BlobRecord]:
        """The registry blobs known to hold the layer ``diff_id``."""
        if self.schema_version() < 2:
            return []
        rows = self._all("SELECT digest, registry, repository, diff_id, compression FROM blobs WHERE diff_id = ? ORDER BY digest, registry, repository", (diff_id,))
        return [BlobRecord(*r) for r in rows]

    # ----- containers -----

    def container(self, container_id: str) -> ContainerRecord | None:
        row = self._one(f"{_CONTAINER} WHERE id = ?", (container_id,))
        return _container(row) if row else None

    def container_named(self, name: str) -> ContainerRecord | None:
        row = self._one(f"{_CONTAINER} WHERE name = ?", (name,))
        return _container(row) if row else None

    def containers_with_prefix(self, id_prefix: str, limit: int = 2) -> list[ContainerRecord]:
        lo, hi = prefix_range(id_prefix)
        return [_container(r) for r in self._all(f"{_CONTAINER} WHERE id >= ? AND id < ? ORDER BY id LIMIT ?", (lo, hi, limit))]

    def containers(self) -> list[ContainerRecord]:
        """Every container, newest first."""
        return [_container(r) for r in self._all(f"{_CONTAINER} ORDER BY created DESC, id")]

    def container_names_using_image(self, image_id: str) -> list[str]:
        return [r[0] for r in self._all("SELECT name FROM containers WHERE image_id = ? ORDER BY name", (image_id,))]

    def images_in_use(self) -> set[str]:
        """Ids of the images some container was created from."""
        return {r[0] for r in self._all("SELECT DISTINCT image_id FROM containers")}

    def container_names_using_volume(self, volume: str) -> list[str]:
        rows = self._all(
            "SELECT c.name FROM volume_users u JOIN containers c ON c.id = u.container_id WHERE u.volume = ? ORDER BY c.name",
            (volume,),
        )
        return [r[0] for r in rows]

    # ----- volumes -----

    def volume(self, name: str) -> VolumeRecord | None:
        row = self._one(f"{_VOLUME} WHERE name = ?", (name,))
        return _volume(row) if row else None

    def volumes(self) -> list[VolumeRecord]:
        return [_volume(r) for r in self._all(f"{_VOLUME} ORDER BY name")]

    def schema_version(self) -> int:
        return int(self._one("PRAGMA user_version")[0])

    def integrity(self) -> list[str]:
        """What SQLite finds wrong with the database file (nothing when it is sound)."""
        return [str(r[0]) for r in self._all("PRAGMA quick_check") if r[0] != "ok"]

    # ----- processes that may have copy-ups in progress in a container's scratch directory -----

    def scratch_users(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self._all("SELECT container_id, pid FROM scratch_users")]

    def scratch_user(self, container_id: str, pid: int) -> bool:
        return self._one("SELECT 1 FROM scratch_users WHERE container_id = ? AND pid = ?", (container_id, pid)) is not None


class Writer(Query):
    """The records inside one write transaction (``BEGIN IMMEDIATE`` on a connection of its own)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @property
    def db(self) -> sqlite3.Connection:
        return self._conn

    def _run(self, sql: str, args: Iterable[Any] = ()) -> None:
        try:
            self._conn.execute(sql, tuple(args))
        except sqlite3.Error as e:
            raise os_error(e, self.path) from None

    def put_layer(self, rec: LayerRecord) -> None:
        self._run(
            "INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rec.chain_id, rec.diff_id, rec.parent, rec.size, rec.tar_size, rec.created, int(rec.retained)),
        )

    def set_retained(self, chain_id: str, retained: bool) -> None:
        self._run("UPDATE layers SET retained = ? WHERE chain_id = ?", (int(retained), chain_id))

    def delete_layer(self, chain_id: str) -> None:
        self._run("DELETE FROM layers WHERE chain_id = ?", (chain_id,))

    def put_image(self, rec: ImageRecord) -> None:
        self._run("INSERT INTO images VALUES (?, ?, ?, ?, ?)", (rec.id, " ".join(rec.chain_ids), rec.parent, rec.created, rec.added))
        for chain in set(rec.chain_ids):
            self._run("INSERT INTO image_layers VALUES (?, ?)", (chain, rec.id))

    def delete_image(self, image_id: str) -> None:
        rec = self.image(image_id)
        if rec is None:
            return
        self._run("DELETE FROM repo_digests WHERE image_id = ?", (image_id,))
        for chain in set(rec.chain_ids):
            self._run("DELETE FROM image_layers WHERE chain_id = ? AND image_id = ?", (chain, image_id))
        self._run("DELETE FROM images WHERE id = ?", (image_id,))

    def set_tag(self, tag: str, image_id: str) -> None:
        self._run("INSERT INTO tags VALUES (?, ?) ON CONFLICT (tag) DO UPDATE SET image_id = excluded.image_id", (tag, image_id))

    def delete_tag(self, tag: str) -> None:
        self._run("DELETE FROM tags WHERE tag = ?", (tag,))

    def set_repo_digest(self, repo_digest: str, image_id: str) -> None:
        self._run(
            "INSERT INTO repo_digests VALUES (?, ?) ON CONFLICT (repo_digest) DO UPDATE SET image_id = excluded.image_id",
            (repo_digest, image_id),
        )

    def put_blob(self, rec: BlobRecord) -> None:
        self._run(
            "INSERT INTO blobs VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET diff_id = excluded.diff_id, compression = excluded.compression",
            (rec.digest, rec.registry, rec.repository, rec.diff_id, rec.compression),
        )

    def put_container(self, rec: ContainerRecord) -> None:
        self._run(
            "INSERT INTO containers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.name, rec.image_id, rec.created, rec.labels_json, rec.command_json, rec.mounts_json),
        )
        for volume in set(rec.volumes):
            self._run("INSERT INTO volume_users VALUES (?, ?)", (volume, rec.id))

    def delete_container(self, container_id: str) -> None:
        rec = self.container(container_id)
        if rec is None:
            return
        for volume in set(rec.volumes):
            self._run("DELETE FROM volume_users WHERE volume = ? AND container_id = ?", (volume, container_id))
        self._run("DELETE FROM scratch_users WHERE container_id = ?", (container_id,))
        self._run("DELETE FROM containers WHERE id = ?", (container_id,))

    def put_volume(self, rec: VolumeRecord) -> None:
        self._run("INSERT INTO volumes VALUES (?, ?, ?, ?)", (rec.name, rec.created, json.dumps(rec.labels), int(rec.anonymous)))

    def delete_volume(self, name: str) -> None:
        self._run("DELETE FROM volumes WHERE name = ?", (name,))

    def add_scratch_user(self, container_id: str, pid: int) -> None:
        self._run("INSERT OR IGNORE INTO scratch_users VALUES (?, ?)", (container_id, pid))

    def delete_scratch_user(self, container_id: str, pid: int) -> None:
        self._run("DELETE FROM scratch_users WHERE container_id = ? AND pid = ?", (container_id, pid))


def connect(uri: str, path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection to the records (``uri``: a ``file:`` URI); ``read_only`` opens the file read-only."""
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        if read_only:
            conn.execute("PRAGMA query_only = 1")
        else:
            conn.execute("PRAGMA journal_mode = TRUNCATE").fetchall()
            conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as e:
        raise os_error(e, path) from None
    return conn


def file_uri(path: Path, *, read_only: bool) -> str:
    return "file:" + urllib.parse.quote(str(path)) + ("?mode=ro" if read_only else "")


class Records(Query):
    """The records of one store, read through one read-only connection per thread; :meth:`writing`
    opens a write transaction."""

    def __init__(self, path: Path, *, writable: bool, uri: str | None = None, keep: sqlite3.Connection | None = None) -> None:
        self.path = path
        self.writable = writable
        self._read_uri = uri or file_uri(path, read_only=True)
        self._write_uri = uri or file_uri(path, read_only=False)
        # An in-memory database (a read-only view of a format-1 store) lives as long as one connection.
        self._keep = keep
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or getattr(local, "pid", None) != os.getpid():
            conn = connect(self._read_uri, self.path, read_only=True)
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            if not (self.writable and _hot_journal(e)):
                raise os_error(e, self.path) from None
        # A writer died mid-commit: a read-only connection cannot roll its journal back; one that may
        # write does so on its first read.
        self.roll_back_journal()
        return super()._all(sql, args)

    def roll_back_journal(self) -> None:
        """Undo the half-made commit of a writer that died (any connection that may write does it)."""
        conn = connect(self._write_uri, self.path, read_only=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as e:
            raise os_error(e, self.path) from None
        finally:
            conn.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[Writer]:
        """One write transaction: committed when the block ends, rolled back if it raises. The caller
        holds the store lock, so nothing else writes meanwhile."""
        if not self.writable:
            raise PermissionError(errno.EROFS, "the store is open read-only", str(self.path.parent))
        conn = connect(self._write_uri, self.path, read_only=False)
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise os_error(e, self.path) from None
            try:
                yield Writer(conn, self.path)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise os_error(e, self.path) from None
        finally:
            conn.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._keep is not None:
            self._keep.close()
            self._keep = None
