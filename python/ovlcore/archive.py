"""Image archives: ``docker save`` and ``docker load`` in the docker-archive and OCI image-layout formats.

Saving streams every layer straight from the store into one outer tar (the layer tar's size is known from
the layer's record, and its digest is checked while it streams), writing each distinct layer once however
many images share it:

* ``format="docker"`` is what ``docker save`` writes: ``<diff-id hex>/layer.tar`` (with ``VERSION`` and a
  legacy ``json``), ``<image-id hex>.json`` (the exact config bytes), ``manifest.json``, ``repositories``;
* ``format="oci"`` is an OCI image layout: ``oci-layout``, ``index.json`` (one descriptor per tag, named by
  ``org.opencontainers.image.ref.name``), ``blobs/sha256/...`` for layers, configs and manifests. A
  ``manifest.json`` naming the same blobs is added, as Docker 25 does, so ``docker load`` takes it too.

Layers are written uncompressed unless ``compression`` is ``"gzip"`` or ``"zstd"`` (each compressed blob is
spooled once in ``tmp/``: its size and digest must precede it). Docker 20.10 loads gzip layers but not zstd
ones (zstd needs Docker 23 or later). Paths are written atomically (temp name, rename) without fsync, as
``docker save -o`` does.

Loading reads both (and a directory holding an OCI layout), plain or gzip/zstd compressed as a whole, with
plain, gzip or zstd layers. It never holds a layer in memory: the archive is indexed by seeking (a stream
that cannot seek, or a compressed archive, is first spooled to a plain file in the store's ``tmp/``), and
each layer goes straight from its place in the archive into the core, which extracts and hashes it in one
pass. Everything is verified (config and manifest digests, blob digests and sizes, every diff_id against
the config) and staged before anything is published; then every new layer, image and tag becomes visible
in one step under the store lock. A bad archive raises :class:`~ovlcore.errors.InvalidArchive` naming what
is wrong, and leaves the store as it was. Layers the store already has (same chain id) are not extracted,
nor read (not even hashed: their content in the store is already the one the diff_id names).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Union

from . import _ovlcore, _pump
from ._config import host_arch
from ._store import Storage, Transaction
from ._store.files import replacing
from .errors import InvalidArchive, InvalidReference, LayerNotFound, OvlError
from .images import Image, Images
from .layers import Layer, Layers, StagedLayer, layer_record
from .references import full_tag, parse_tag

__all__ = ["Archive", "save", "load", "FORMATS"]

FORMATS = ("docker", "oci")

ProgressCallback = Callable[[int], None]
Refs = Union[str, Image, Iterable[Union[str, Image]]]
Dest = Union[str, "os.PathLike[str]", IO[bytes]]
LoadSource = Union[str, "os.PathLike[str]", IO[bytes]]

OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BLOB_PATH = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Bytes enough to recognise a compressed stream.
_MAGIC_LEN = 6
#: Metadata files (manifests, configs, index) larger than this are refused rather than read into memory.
_MAX_METADATA = 64 << 20


def _is_compressed(head: bytes) -> bool:
    return head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Archive:
    """``images.save`` and ``images.load`` over one store (the :class:`~ovlcore.images.Archiver` its
    images use)."""

    def __init__(self, storage: Storage, layers: Layers, images: Images) -> None:
        self.storage = storage
        self.layers = layers
        self.images = images

    def save(
        self, refs: Refs, dest: Dest, *, format: str = "docker", compression: str | None = None, progress: ProgressCallback | None = None
    ) -> None:
        save(self, refs, dest, format=format, compression=compression, progress=progress)

    def load(self, source: LoadSource, *, progress: ProgressCallback | None = None) -> list[Image]:
        return load(self, source, progress=progress)


# ====================================================================================================
# save
# ====================================================================================================


class _TarWriter:
    """Writes an outer tar to a binary file object member by member (PAX headers where needed)."""

    def __init__(self, out: IO[bytes], progress: ProgressCallback | None) -> None:
        self._out = out
        self._progress = progress
        self.written = 0
        self._dirs: set[str] = set()

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)
        if self._progress is not None:
            self._progress(self.written)

    def _header(self, name: str, size: int, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, mtime: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.type = kind
        info.mode = mode
        info.mtime = mtime
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        rest = size % tarfile.BLOCKSIZE
        if rest:
            self._write(b"\0" * (tarfile.BLOCKSIZE - rest))

    def add_dir(self, name: str, mtime: int) -> None:
        if name in self._dirs:
            return
        self._dirs.add(name)
        self._header(name, 0, kind=tarfile.DIRTYPE, mode=0o755, mtime=mtime)

    def add_bytes(self, name: str, data: bytes, mtime: int) -> None:
        self._header(name, len(data), mtime=mtime)
        self._write(data)
        self._pad(len(data))

    def add_stream(self, name: str, size: int, stream: Any, mtime: int, what: str) -> None:
        """Copy exactly ``size`` bytes of ``stream`` (which must then be at its end) as member ``name``.
        Reading the next chunk (the core, without the GIL) overlaps with writing the previous one."""
        self._header(name, size, mtime=mtime)
        base = self.written

        def advanced(n: int) -> None:
            self.written = base + n
            if self._progress is not None:
                self._progress(self.written)

        try:
            _pump.copy(stream, self._out, size=size, progress=advanced)
        except EOFError:
            raise OvlError(f"{what} ended after {self.written - base} of its {size} bytes") from None
        if stream.read(1):
            raise OvlError(f"{what} is longer than its recorded {size} bytes")
        self._pad(size)

    def close(self) -> None:
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))


@dataclass
class _SaveImage:
    image: Image
    tags: list[str] = field(default_factory=list)


def _save_list(store: Archive, refs: Refs) -> list[_SaveImage]:
    """The images ``refs`` name, in order, with the tags each is saved under (Docker's rules: ``name:tag``
    saves that tag, a bare ``name`` every tag of that repository, an id none)."""
    if isinstance(refs, (str, Image)):
        refs = [refs]
    out: dict[str, _SaveImage] = {}
    images = store.images
    for ref in refs:
        if isinstance(ref, Image):
            found: list[tuple[str, list[str]]] = [(ref.id, ref.tags)]
        elif not isinstance(ref, str):
            raise InvalidReference(f"image reference must be a string or an Image, not {type(ref).__name__}")
        else:
            found = []
            name_only = not ref.startswith("sha256:") and ":" not in ref.rpartition("/")[2]
            if name_only:
                with contextlib.suppress(InvalidReference):
                    name, _ = parse_tag(ref)
                    for tag, image_id in images.tagged(name):
                        found.append((image_id, [tag]))
            if not found:
                image_id, named = images.resolve(ref)
                found = [(image_id, [named] if named else [])]
        for image_id, tags in found:
            entry = out.get(image_id)
            if entry is None:
                entry = out[image_id] = _SaveImage(images.get(image_id))
            entry.tags.extend(t for t in tags if t not in entry.tags)
    if not out:
        raise ValueError("no image to save: give at least one reference")
    return list(out.values())


def _mtime(image: Image) -> int:
    return max(0, int(image.created.timestamp()))


def _layer_tar_size(layer: Layer) -> int | None:
    size = layer.tar_size
    return size if isinstance(size, int) and size >= 0 else None


@dataclass
class _Blob:
    """A layer as written into the archive."""

    digest: str
    size: int
    media_type: str
    path: str = ""


class _Saver:
    def __init__(self, store: Archive, tw: _TarWriter, compression: str | None) -> None:
        self.store = store
        self.tw = tw
        self.compression = compression
        self.blobs: dict[str, _Blob] = {}  # diff_id -> what was written

    def _stream_plain(self, layer: Layer, name: str, mtime: int) -> int:
        """Stream the uncompressed layer tar as ``name``, checking its size and diff_id; returns the size."""
        size = _layer_tar_size(layer)
        what = f"layer {layer.diff_id}"
        stream = layer.tar()
        if size is None:
            # No size on record: spool once to learn it.
            with self.store.storage.transaction() as tx:
                spool = tx.stage() / "layer.tar"
                with open(spool, "wb") as f:
                    _pump.copy(stream, f)
                self._check(layer, stream.diff_id)
                size = spool.stat().st_size
                with open(spool, "rb") as f:
                    self.tw.add_stream(name, size, f, mtime, what)
            return size
        self.tw.add_stream(name, size, stream, mtime, what)
        self._check(layer, stream.diff_id)
        return size

    @staticmethod
    def _check(layer: Layer, got: str | None) -> None:
        if got != layer.diff_id:
            raise OvlError(f"layer {layer.chain_id}: its content hashes to {got}, not to its diff_id {layer.diff_id} (the store is damaged)")

    def _stream_compressed(self, layer: Layer, name_of: Callable[[str], str], mtime: int) -> _Blob:
        """Compress the layer into a spool file (its size and digest must precede it), then copy it."""
        assert self.compression is not None
        with self.store.storage.transaction() as tx:
            spool = tx.stage() / "blob"
            stream = layer.tar(self.compression)
            with open(spool, "wb") as f:
                _pump.copy(stream, f)
            self._check(layer, stream.diff_id)
            digest = stream.digest
            assert digest is not None
            size = spool.stat().st_size
            with open(spool, "rb") as f:
                self.tw.add_stream(name_of(digest), size, f, mtime, f"compressed layer {layer.diff_id}")
        return _Blob(digest, size, f"{MT_OCI_LAYER}+{self.compression}")

    def layer(self, layer: Layer, mtime: int, style: str) -> _Blob:
        """Write ``layer`` once (by diff_id) and return where it went."""
        known = self.blobs.get(layer.diff_id)
        if known is not None:
            return known
        if style == "docker":
            d = _hex(layer.diff_id)
            self.tw.add_dir(d, mtime)
            self.tw.add_bytes(f"{d}/VERSION", b"1.0", mtime)
            legacy = {"id": d, "created": datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "container_config": {}, "os": "linux"}
            self.tw.add_bytes(f"{d}/json", _json_bytes(legacy), mtime)
            if self.compression is None:
                size = self._stream_plain(layer, f"{d}/layer.tar", mtime)
                blob = _Blob(layer.diff_id, size, MT_OCI_LAYER)
            else:
                blob = self._stream_compressed(layer, lambda _digest: f"{d}/layer.tar", mtime)
            blob.path = f"{d}/layer.tar"
        else:
            self.tw.add_dir("blobs", mtime)
            self.tw.add_dir("blobs/sha256", mtime)
            if self.compression is None:
                size = self._stream_plain(layer, f"blobs/sha256/{_hex(layer.diff_id)}", mtime)
                blob = _Blob(layer.diff_id, size, MT_OCI_LAYER)
            else:
                blob = self._stream_compressed(layer, lambda digest: f"blobs/sha256/{_hex(digest)}", mtime)
            blob.path = f"blobs/sha256/{_hex(blob.digest)}"
        self.blobs[layer.diff_id] = blob
        return blob


def _write_docker(saver: _Saver, items: list[_SaveImage]) -> None:
    tw = saver.tw
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    ids = {it.image.id for it in items}
    mtime0 = _mtime(items[0].image)
    for it in items:
        img = it.image
        mtime = _mtime(img)
        paths = [saver.layer(layer, mtime, "docker").path for layer in img.layers]
        config_name = f"{_hex(img.id)}.json"
        tw.add_bytes(config_name, img.config_bytes, mtime)
        entry: dict[str, Any] = {"Config": config_name, "RepoTags": list(it.tags) or None, "Layers": paths}
        if img.parent_id and img.parent_id in ids:
            entry["Parent"] = img.parent_id
        manifest.append(entry)
        for tag in it.tags:
            name, _, t = tag.rpartition(":")
            if paths:
                repositories.setdefault(name, {})[t] = paths[-1].split("/")[0]
    tw.add_bytes("manifest.json", _json_bytes(manifest), mtime0)
    if repositories:
        tw.add_bytes("repositories", _json_bytes(repositories), mtime0)


def _qualified(tag: str) -> str:
    """The fully qualified form containerd names images by: ``x:1`` is ``docker.io/library/x:1``."""
    first, slash, _ = tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return tag
    return f"docker.io/{tag}" if slash else f"docker.io/library/{tag}"


def _write_oci(saver: _Saver, items: list[_SaveImage]) -> None:
    tw = saver.tw
    mtime0 = _mtime(items[0].image)
    tw.add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": OCI_LAYOUT_VERSION}), mtime0)
    index: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for it in items:
        img = it.image
        mtime = _mtime(img)
        blobs = [saver.layer(layer, mtime, "oci") for layer in img.layers]
        tw.add_dir("blobs", mtime)
        tw.add_dir("blobs/sha256", mtime)
        config_name = f"blobs/sha256/{_hex(img.id)}"
        tw.add_bytes(config_name, img.config_bytes, mtime)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": img.id, "size": len(img.config_bytes)},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs],
        }
        mbytes = _json_bytes(manifest)
        mdigest = _sha256(mbytes)
        tw.add_bytes(f"blobs/sha256/{_hex(mdigest)}", mbytes, mtime)
        desc: dict[str, Any] = {"mediaType": MT_OCI_MANIFEST, "digest": mdigest, "size": len(mbytes)}
        platform = {"architecture": img.config.get("architecture") or "amd64", "os": img.config.get("os") or "linux"}
        desc["platform"] = platform
        if it.tags:
            for tag in it.tags:
                index.append({**desc, "annotations": {ANN_REF_NAME: tag, ANN_CONTAINERD_NAME: _qualified(tag)}})
        else:
            index.append(desc)
        docker_manifest.append(
            {"Config": config_name, "RepoTags": list(it.tags) or None, "Layers": [b.path for b in blobs]}
        )
    tw.add_bytes("index.json", _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index}), mtime0)
    tw.add_bytes("manifest.json", _json_bytes(docker_manifest), mtime0)


def save(
    store: Archive,
    refs: Refs,
    dest: Dest,
    *,
    format: str = "docker",
    compression: str | None = None,
    progress: ProgressCallback | None = None,
) -> None:
    """Write the images ``refs`` names into one archive at ``dest`` (a path, written atomically, or a binary
    file object). See the module documentation for the formats."""
    if format not in FORMATS:
        raise ValueError(f"unknown archive format {format!r} (choose from {', '.join(FORMATS)})")
    if compression not in (None, "gzip", "zstd"):
        raise ValueError(f"unknown layer compression {compression!r} (use None, 'gzip' or 'zstd')")
    items = _save_list(store, refs)
    if isinstance(dest, (str, os.PathLike)):
        with replacing(Path(dest)) as f:
            _write(store, items, f, format, compression, progress)
        return
    if not hasattr(dest, "write"):
        raise TypeError(f"save() writes to a path or a binary file object, not {type(dest).__name__}")
    _write(store, items, dest, format, compression, progress)


def _write(
    store: Archive, items: list[_SaveImage], dest: IO[bytes], format: str, compression: str | None, progress: ProgressCallback | None
) -> None:
    tw = _TarWriter(dest, progress)
    saver = _Saver(store, tw, compression)
    if format == "docker":
        _write_docker(saver, items)
    else:
        _write_oci(saver, items)
    tw.close()
    with contextlib.suppress(AttributeError, io.UnsupportedOperation):
        dest.flush()


# ====================================================================================================
# load: reading archives
# ====================================================================================================


class _Reader:
    """Positional reads from the (plain) archive file."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._fd: int | None = None
        raw = getattr(f, "raw", f)
        if isinstance(raw, io.FileIO) and not raw.closed:
            self._fd = raw.fileno()

    def pread(self, n: int, offset: int) -> bytes:
        if self._fd is not None:
            out = os.pread(self._fd, n, offset)
            if len(out) == n or not out:
                return out
            parts = [out]
            got = len(out)
            while got < n:
                more = os.pread(self._fd, n - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        self._f.seek(offset)
        return self._f.read(n)


class _Counter:
    def __init__(self, progress: ProgressCallback | None) -> None:
        self.total = 0
        self._progress = progress

    def add(self, n: int) -> None:
        self.total += n
        if self._progress is not None and n:
            self._progress(self.total)


class _Section:
    """A readable window on one member of the archive; optionally hashes what it hands out."""

    def __init__(self, reader: _Reader, name: str, offset: int, size: int, counter: _Counter, hasher: Any = None) -> None:
        self._reader = reader
        self._name = name
        self._pos = offset
        self._left = size
        self._counter = counter
        self.hasher = hasher

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._reader.pread(want, self._pos)
        if not data:
            raise InvalidArchive(f"{self._name}: the archive ends inside this member (truncated archive)")
        self._pos += len(data)
        self._left -= len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self._counter.add(len(data))
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _Archive:
    """Named members of an archive: a tar file indexed by seeking, or a directory."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str, hasher: Any = None) -> _Section:
        raise NotImplementedError

    def read_small(self, name: str, what: str) -> bytes:
        if not self.has(name):
            raise InvalidArchive(f"{what} {name!r} is not in the archive")
        size = self.size(name)
        if size > _MAX_METADATA:
            raise InvalidArchive(f"{what} {name!r} is {size} bytes: too large for a metadata file")
        sec = self.open(name)
        data = sec.read(size)
        if len(data) != size:
            raise InvalidArchive(f"{what} {name!r}: truncated")
        return data

    def head(self, name: str) -> bytes:
        return self.open(name).read(_MAGIC_LEN) if self.size(name) else b""


def _member_name(raw: str) -> str | None:
    """A member name normalised (``./`` and trailing ``/`` dropped); None for names that escape."""
    if raw.startswith("/"):
        return None
    parts: list[str] = []
    for p in raw.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            return None
        parts.append(p)
    return "/".join(parts)


class _TarArchive(_Archive):
    def __init__(self, f: IO[bytes], counter: _Counter, label: str) -> None:
        super().__init__(counter)
        self._reader = _Reader(f)
        self._files: dict[str, tuple[int, int]] = {}
        links: dict[str, tuple[str, bool]] = {}
        try:
            end = f.seek(0, os.SEEK_END)
            f.seek(0)
            tf = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - members are read by position
            while True:
                info = tf.next()
                if info is None:
                    break
                name = _member_name(info.name)
                if name is None:
                    raise InvalidArchive(f"{label}: member {info.name!r} escapes the archive root")
                if info.isreg():
                    if info.offset_data + info.size > end:
                        raise InvalidArchive(f"{label}: member {info.name!r} is truncated")
                    self._files[name] = (info.offset_data, info.size)
                    links.pop(name, None)
                elif info.issym() or info.islnk():
                    links[name] = (info.linkname, info.issym())
                    self._files.pop(name, None)
        except tarfile.TarError as e:
            raise InvalidArchive(f"{label}: not a valid tar archive ({e})") from None
        # Docker writes a layer that appears twice as a symlink to its first copy; resolve links to files.
        for name, (target, symbolic) in links.items():
            seen = {name}
            cur: str | None = name
            tgt, sym = target, symbolic
            while True:
                # A symlink is relative to its directory, a hard link to the archive root; neither may leave it.
                base = posixpath.dirname(cur) if sym and cur else ""
                joined = posixpath.normpath(posixpath.join(base, tgt))
                resolved = None if tgt.startswith("/") or joined == ".." or joined.startswith("../") else _member_name(joined)
                if resolved is None:
                    break
                if resolved in self._files:
                    self._files[name] = self._files[resolved]
                    break
                if resolved in links and resolved not in seen:
                    seen.add(resolved)
                    cur = resolved
                    tgt, sym = links[resolved]
                    continue
                break

    def has(self, name: str) -> bool:
        return name in self._files

    def size(self, name: str) -> int:
        return self._files[name][1]

    def open(self, name: str, hasher: Any = None) -> _Section:
        offset, size = self._files[name]
        return _Section(self._reader, name, offset, size, self.counter, hasher)


class _DirArchive(_Archive):
    """An OCI layout directory on the host."""

    def __init__(self, root: Path, counter: _Counter) -> None:
        super().__init__(counter)
        self._root = root
        self._open: list[IO[bytes]] = []

    def _path(self, name: str) -> Path | None:
        clean = _member_name(name)
        if clean is None or clean != name:
            return None
        p = self._root / clean
        try:
            st = os.stat(p)
        except OSError:
            return None
        return p if stat.S_ISREG(st.st_mode) else None

    def has(self, name: str) -> bool:
        return self._path(name) is not None

    def size(self, name: str) -> int:
        p = self._path(name)
        assert p is not None
        return p.stat().st_size

    def open(self, name: str, hasher: Any = None) -> _Section:
        p = self._path(name)
        assert p is not None
        f = open(p, "rb", buffering=0)  # noqa: SIM115 - closed with the archive
        self._open.append(f)
        return _Section(_Reader(f), name, 0, os.fstat(f.fileno()).st_size, self.counter, hasher)

    def close(self) -> None:
        for f in self._open:
            f.close()
        self._open.clear()


class _Chained(io.RawIOBase):
    """``head`` followed by the rest of a stream (for a stream that cannot seek back after peeking)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._rest.read(n)


@contextlib.contextmanager
def _open_archive(store: Archive, source: LoadSource, counter: _Counter) -> Iterator[_Archive]:
    """The archive behind ``source``, seekable and uncompressed (spooled into ``tmp/`` when needed)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            arc = _DirArchive(path, counter)
            try:
                yield arc
            finally:
                arc.close()
            return
        with open(path, "rb", buffering=0) as f:
            head = f.read(_MAGIC_LEN)
            if not _is_compressed(head):
                yield _TarArchive(f, counter, str(path))
                return
        with store.storage.transaction() as tx:
            spool = tx.stage() / "archive.tar"
            _decompress(path, spool, str(path))
            with open(spool, "rb", buffering=0) as f:
                yield _TarArchive(f, counter, str(path))
        return
    if not hasattr(source, "read"):
        raise TypeError(f"load() takes a path or a binary file object, not {type(source).__name__}")
    label = str(getattr(source, "name", "archive"))
    seekable = False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        seekable = bool(source.seekable())
    if seekable:
        start = source.tell()
        head = source.read(_MAGIC_LEN)
        source.seek(start)
        if not isinstance(head, bytes):
            raise TypeError("load() needs a binary file object")
        if not _is_compressed(head) and start == 0:
            yield _TarArchive(source, counter, label)
            return
        reader: Any = source
    else:
        head = source.read(_MAGIC_LEN)
        if not isinstance(head, bytes):
            raise TypeError("load() needs a binary file object")
        reader = _Chained(head, source)
    with store.storage.transaction() as tx:
        spool = tx.stage() / "archive.tar"
        _decompress(reader, spool, label)
        with open(spool, "rb", buffering=0) as f:
            yield _TarArchive(f, counter, label)


def _decompress(source: Any, dest: Path, label: str) -> None:
    try:
        _ovlcore.decompress_to(os.fspath(source) if isinstance(source, Path) else source, str(dest))
    except InvalidArchive as e:
        raise InvalidArchive(f"{label}: {e}") from None


# ====================================================================================================
# load: planning (everything checked before any layer is extracted)
# ====================================================================================================


@dataclass
class _LayerPlan:
    member: str
    diff_id: str
    chain_id: str
    parent: str | None
    #: The digest and size the blob must have (OCI descriptors, ``blobs/sha256/`` paths); None: unknown.
    blob_digest: str | None = None
    blob_size: int | None = None


@dataclass
class _ImagePlan:
    config: bytes
    image_id: str
    layers: list[_LayerPlan]
    tags: list[str]
    parent: str | None = None


def _parse_config(data: bytes, what: str) -> list[str]:
    """The diff_ids of an image config, after checking it is one."""
    try:
        cfg = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArchive(f"{what} is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidArchive(f"{what} is not a JSON object")
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids", []), list):
        raise InvalidArchive(f"{what} has no rootfs.diff_ids list")
    diff_ids = rootfs.get("diff_ids") or []
    for d in diff_ids:
        if not isinstance(d, str) or not _DIGEST.match(d):
            raise InvalidArchive(f"{what}: {d!r} in rootfs.diff_ids is not a sha256 digest")
    return [str(d) for d in diff_ids]


def _chains(diff_ids: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    parent: str | None = None
    for d in diff_ids:
        chain = _ovlcore.chain_id(parent, d)
        out.append((chain, parent))
        parent = chain
    return out


def _familiar(tag: str) -> str:
    """A tag in Docker's familiar form: ``docker.io/library/x:1`` is ``x:1``, ``docker.io/u/x:1`` is ``u/x:1``."""
    t = full_tag(tag)
    for host in ("docker.io/", "index.docker.io/"):
        if t.startswith(host):
            t = t[len(host) :]
            if t.startswith("library/") and "/" not in t[len("library/") :]:
                t = t[len("library/") :]
            break
    return t


def _check_tags(tags: Any, what: str) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArchive(f"{what}: RepoTags is not a list of strings")
    out = []
    for t in tags:
        try:
            out.append(_familiar(t))
        except InvalidReference as e:
            raise InvalidArchive(f"{what}: invalid tag {t!r}: {e}") from None
    return out


def _plan_docker(arc: _Archive) -> list[_ImagePlan]:
    try:
        manifest = json.loads(arc.read_small("manifest.json", "manifest"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArchive(f"manifest.json is not JSON: {e}") from None
    if not isinstance(manifest, list):
        raise InvalidArchive("manifest.json is not a list of images")
    plans: list[_ImagePlan] = []
    for i, item in enumerate(manifest):
        what = f"manifest.json entry {i}"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise InvalidArchive(f"{what} has no Config")
        layers = item.get("Layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidArchive(f"{what}: Layers is not a list of paths")
        config_name = _member_name(item["Config"])
        if config_name is None:
            raise InvalidArchive(f"{what}: config path {item['Config']!r} escapes the archive")
        config = arc.read_small(config_name, "image config")
        image_id = _sha256(config)
        named = _BLOB_PATH.match(config_name) or re.match(r"^([0-9a-f]{64})\.json$", config_name)
        if named and named.group(1) != _hex(image_id):
            raise InvalidArchive(f"image config {config_name!r}: digest mismatch: its content hashes to {image_id}")
        diff_ids = _parse_config(config, f"image config {config_name!r}")
        if len(diff_ids) != len(layers):
            raise InvalidArchive(
                f"{what}: manifest names {len(layers)} layers but config {config_name!r} has {len(diff_ids)} diff_ids"
            )
        plan_layers = []
        for raw, diff_id, (chain, parent) in zip(layers, diff_ids, _chains(diff_ids)):
            name = _member_name(raw)
            if name is None:
                raise InvalidArchive(f"{what}: layer path {raw!r} escapes the archive")
            if not arc.has(name):
                raise InvalidArchive(f"layer {raw!r} named by {what} is not in the archive")
            blob = _BLOB_PATH.match(name)
            plan_layers.append(
                _LayerPlan(name, diff_id, chain, parent, blob_digest="sha256:" + blob.group(1) if blob else None)
            )
        plan = _ImagePlan(config, image_id, plan_layers, _check_tags(item.get("RepoTags"), what))
        parent_id = item.get("Parent")
        if isinstance(parent_id, str) and _DIGEST.match(parent_id):
            plan.parent = parent_id
        plans.append(plan)
    return plans


def _descriptor(d: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise InvalidArchive(f"{what}: descriptor is not an object")
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidArchive(f"{what}: descriptor digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArchive(f"{what}: descriptor size {size!r} is not a byte count")
    return digest, size, str(mt or "")


def _blob_member(arc: _Archive, digest: str, size: int, what: str) -> str:
    name = f"blobs/sha256/{_hex(digest)}"
    if not arc.has(name):
        raise InvalidArchive(f"{what}: blob {digest} is missing from the archive")
    if arc.size(name) != size:
        raise InvalidArchive(f"{what}: blob {digest} is {arc.size(name)} bytes, its descriptor says {size}")
    return name


def _read_blob(arc: _Archive, digest: str, size: int, what: str) -> bytes:
    name = _blob_member(arc, digest, size, what)
    data = arc.read_small(name, what)
    if _sha256(data) != digest:
        raise InvalidArchive(f"{what}: digest mismatch: blob {digest} hashes to {_sha256(data)}")
    return data


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArchive(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArchive(f"{what} is not a JSON object")
    return obj


def _ref_tag(annotations: Any) -> str | None:
    """The tag an index entry names: ``io.containerd.image.name``, else a ref.name that is a full
    reference (``name:tag``; a bare ref.name is only a tag, with no repository to put it in)."""
    if not isinstance(annotations, dict):
        return None
    for key in (ANN_CONTAINERD_NAME, ANN_REF_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and value and (key == ANN_CONTAINERD_NAME or ":" in value or "/" in value):
            try:
                return _familiar(value)
            except InvalidReference:
                continue
    return None


def _platform_ok(desc: dict[str, Any]) -> bool:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return True
    return bool(p.get("os", "linux") == "linux" and p.get("architecture", host_arch()) == host_arch())


def _plan_oci(arc: _Archive) -> list[_ImagePlan]:
    if arc.has("oci-layout"):
        layout = _load_json(arc.read_small("oci-layout", "oci-layout file"), "oci-layout file")
        if not isinstance(layout.get("imageLayoutVersion"), str):
            raise InvalidArchive("oci-layout file has no imageLayoutVersion")
    index = _load_json(arc.read_small("index.json", "OCI index"), "index.json")
    plans: dict[str, _ImagePlan] = {}

    def manifests(idx: dict[str, Any], what: str, depth: int) -> Iterator[tuple[dict[str, Any], str | None]]:
        entries = idx.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArchive(f"{what} has no manifests list")
        for n, desc in enumerate(entries):
            dwhat = f"{what} manifests[{n}]"
            digest, size, mt = _descriptor(desc, dwhat)
            tag = _ref_tag(desc.get("annotations"))
            if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
                if depth > 4:
                    raise InvalidArchive(f"{dwhat}: indexes nested too deeply")
                sub = _load_json(_read_blob(arc, digest, size, dwhat), f"index {digest}")
                chosen = [
                    d for d in sub.get("manifests") or []
                    if isinstance(d, dict) and _platform_ok(d)
                    and (d.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
                ]
                if not chosen:
                    raise InvalidArchive(f"{dwhat}: index {digest} has no image for linux/{_platform_arch()}")
                for m, _ in manifests({"manifests": chosen[:1]}, f"index {digest}", depth + 1):
                    yield m, tag
            elif mt in (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, ""):
                yield {"digest": digest, "size": size, "what": dwhat}, tag
            else:
                raise InvalidArchive(f"{dwhat}: unsupported media type {mt!r}")

    for m, tag in manifests(index, "index.json", 0):
        digest, size, what = m["digest"], m["size"], m["what"]
        man = _load_json(_read_blob(arc, digest, size, what), f"manifest {digest}")
        cdigest, csize, _ = _descriptor(man.get("config"), f"manifest {digest} config")
        config = _read_blob(arc, cdigest, csize, f"config of manifest {digest}")
        diff_ids = _parse_config(config, f"image config {cdigest}")
        layers = man.get("layers")
        if not isinstance(layers, list):
            raise InvalidArchive(f"manifest {digest} has no layers list")
        if len(layers) != len(diff_ids):
            raise InvalidArchive(f"manifest {digest} names {len(layers)} layers but its config has {len(diff_ids)} diff_ids")
        plan_layers = []
        for n, (desc, diff_id, (chain, parent)) in enumerate(zip(layers, diff_ids, _chains(diff_ids))):
            lwhat = f"manifest {digest} layers[{n}]"
            ldigest, lsize, lmt = _descriptor(desc, lwhat)
            if "layer" not in lmt and "rootfs.diff" not in lmt:
                raise InvalidArchive(f"{lwhat}: unsupported layer media type {lmt!r}")
            member = _blob_member(arc, ldigest, lsize, lwhat)
            plan_layers.append(_LayerPlan(member, diff_id, chain, parent, blob_digest=ldigest, blob_size=lsize))
        plan = plans.get(cdigest)
        if plan is None:
            plan = plans[cdigest] = _ImagePlan(config, cdigest, plan_layers, [])
        if tag and tag not in plan.tags:
            plan.tags.append(tag)
    return list(plans.values())


def _platform_arch() -> str:
    return host_arch()


# ====================================================================================================
# load: staging and publishing
# ====================================================================================================


class _Loader:
    def __init__(self, store: Archive, arc: _Archive, tx: Transaction) -> None:
        self.store = store
        self.arc = arc
        self.tx = tx
        self.staged: dict[str, StagedLayer] = {}  # chain id -> the layer staged by this load

    def _lower(self, chain: str | None) -> list[str]:
        """The content directories of the layer ``chain`` (staged by this load, or in the store) and
        those below it, top first."""
        if chain is None:
            return []
        staged = self.staged.get(chain)
        if staged is not None:
            return staged.stack_paths
        layer = self.store.layers.find(chain)
        if layer is None:
            raise LayerNotFound(f"layer {chain} was removed from the store while loading")
        return layer.stack_paths()

    def layer(self, lp: _LayerPlan, image_what: str) -> None:
        """Extract and verify one layer into a staging directory, unless the store or this load has it."""
        if lp.chain_id in self.staged or self.store.layers.find(lp.chain_id) is not None:
            self.arc.counter.add(self.arc.size(lp.member))  # progress counts it as done
            return
        what = f"layer {lp.member!r}"
        compressed = _is_compressed(self.arc.head(lp.member))
        hasher = hashlib.sha256() if (lp.blob_digest is not None and compressed) else None
        section = self.arc.open(lp.member, hasher)
        lower = self._lower(lp.parent)
        staged = self.tx.stage_layer()
        try:
            diff_id, size, tar_size = _ovlcore.import_layer(
                section, str(staged.content), tarsplit=str(staged.tarsplit), lower=lower, privilege=self.store.storage.privilege
            )
            section.drain()
        except InvalidArchive as e:
            raise InvalidArchive(f"{what}: {e}") from None
        if lp.blob_digest is not None:
            got = "sha256:" + hasher.hexdigest() if hasher is not None else diff_id
            if got != lp.blob_digest:
                raise InvalidArchive(f"{what}: digest mismatch: the blob hashes to {got}, the manifest says {lp.blob_digest}")
        if diff_id != lp.diff_id:
            raise InvalidArchive(
                f"{what}: diff_id mismatch: the layer's tar hashes to {diff_id}, the config of {image_what} says {lp.diff_id}"
            )
        rec = layer_record(diff_id, lp.parent, size=size, tar_size=tar_size)
        assert rec.chain_id == lp.chain_id
        self.staged[lp.chain_id] = StagedLayer(staged, rec, lower)

    def publish(self, plans: list[_ImagePlan]) -> list[Image]:
        """Make every staged layer, every new image and every tag visible in one transaction."""
        images = self.store.images
        ids = {p.image_id for p in plans}
        out: list[Image] = []
        with self.tx.publishing() as pub:
            for staged in self.staged.values():  # bottom first: parents were staged first
                pub.add_layer(staged.staged, staged.record)
            for plan in plans:
                parent = plan.parent if plan.parent and (plan.parent in ids or pub.records.image(plan.parent)) else None
                img = images.publish(self.tx, pub, plan.config, parent=parent, tag=None)
                for tag in plan.tags:
                    pub.set_tag(tag, img.id)
                if img not in out:
                    out.append(img)
        return out


def load(store: Archive, source: LoadSource, *, progress: ProgressCallback | None = None) -> list[Image]:
    """Load every image of a docker-archive or OCI layout (tar, compressed tar, or directory)."""
    counter = _Counter(progress)
    with contextlib.ExitStack() as stack:
        arc = stack.enter_context(_open_archive(store, source, counter))
        if arc.has("index.json") and (arc.has("oci-layout") or not arc.has("manifest.json")):
            plans = _plan_oci(arc)
        elif arc.has("manifest.json"):
            plans = _plan_docker(arc)
        else:
            raise InvalidArchive(
                f"{_label(source)}: neither manifest.json (docker-archive) nor index.json (OCI image layout) is in it"
            )
        if not plans:
            raise InvalidArchive(f"{_label(source)}: the archive holds no image")
        tx = stack.enter_context(store.storage.transaction())
        loader = _Loader(store, arc, tx)
        for plan in plans:
            for lp in plan.layers:
                loader.layer(lp, f"image {plan.image_id}")
        return loader.publish(plans)


def _label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    return str(getattr(source, "name", "archive"))
