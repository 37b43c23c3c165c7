"""Layers: immutable, content-addressed directories in the kernel overlayfs format.

Each layer lives in ``layers/<chain-id hex>/``: ``diff/`` holds its content (whiteouts as 0/0 character
devices, opaque directories marked by xattr), ``layer.json`` its record and, for layers imported from an
archive, ``tar-split.zst`` the header bytes that let :meth:`Layer.tar` reproduce the archive exactly.
"""

from __future__ import annotations

import builtins

import io
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

from . import _ovlcore
from ._storage import Staging, read_json, write_json
from .errors import AmbiguousReference, InvalidReference, LayerNotFound

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Layer", "Layers", "Source"]

#: What an archive can be read from: a host path, a binary file object, or an iterable of bytes chunks.
Source = Union[str, "os.PathLike[str]", bytes, IO[bytes], Iterable[bytes]]

ProgressCallback = Callable[[int], None]


def make_layer_root(path: Path) -> Path:
    """A layer's (or writable layer's) root directory: 0755 whatever the umask, as Docker makes it. An
    archive's ``./`` entry, if any, sets it afterwards."""
    path.mkdir()
    os.chmod(path, 0o755)
    return path


class _ChunkReader:
    """A ``read(n)`` file interface over an iterable of bytes chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                chunk = next(self._it)
            except StopIteration:
                break
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"archive chunks must be bytes, not {type(chunk).__name__}")
            self._buf += bytes(chunk)
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def as_source(source: Source) -> str | Any:
    """A host path (read by the core without the GIL) or an object with ``read(n)``."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if hasattr(source, "read"):
        return source
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    return _ChunkReader(source)


class TarReader(io.RawIOBase):
    """A readable binary stream of a layer tar, produced while it is read. After the end,
    :attr:`diff_id` is the sha256 of the uncompressed tar and :attr:`digest` that of the bytes read."""

    def __init__(self, stream: _ovlcore.TarStream) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(-1 if size is None else size)

    def readall(self) -> bytes:
        return self._stream.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)

    def copy_to(self, dest: IO[bytes], *, progress: ProgressCallback | None = None) -> int:
        """Write the rest of the stream to the binary file object ``dest`` (by the core, without Python in
        the byte path when ``dest`` is a real file or pipe); returns the byte count."""
        return self._stream.copy_to(dest, progress=progress)

    @property
    def stream(self) -> _ovlcore.TarStream:
        """The core stream underneath, for handing it to the core (``ArchiveWriter.add_stream``)."""
        return self._stream

    @property
    def diff_id(self) -> str | None:
        return self._stream.diff_id

    @property
    def digest(self) -> str | None:
        return self._stream.digest

    @property
    def size(self) -> int:
        """Bytes read so far."""
        return self._stream.size


class StagedLayer:
    """A layer extracted into a staging directory, not yet visible. A context manager: leaving it removes
    whatever was not published."""

    def __init__(self, staging: Staging, diff_id: str, size: int, tar_size: int, parent: Layer | None) -> None:
        self.staging = staging
        self.parent = parent
        self.chain_id = _ovlcore.chain_id(parent.chain_id if parent else None, diff_id)
        self.record: dict[str, Any] = {
            "chain_id": self.chain_id,
            "diff_id": diff_id,
            "parent": parent.chain_id if parent else None,
            "size": size,
            "tar_size": tar_size,
            "created": datetime.now(timezone.utc).isoformat(),
        }

    @property
    def diff_id(self) -> str:
        return str(self.record["diff_id"])

    def __enter__(self) -> StagedLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.staging.close()


class Layer:
    """One layer of the store. Immutable: its content directory :attr:`path` must never be changed."""

    def __init__(self, store: Store, record: dict[str, Any]) -> None:
        self._store = store
        self._record = record

    @property
    def chain_id(self) -> str:
        """The OCI chain id: this layer together with every layer below it."""
        return str(self._record["chain_id"])

    @property
    def diff_id(self) -> str:
        """sha256 of the uncompressed layer tar."""
        return str(self._record["diff_id"])

    @property
    def parent(self) -> Layer | None:
        """The layer below, or ``None`` at the bottom."""
        p = self._record.get("parent")
        return self._store.layers.get(p) if p else None

    @property
    def parent_chain_id(self) -> str | None:
        """The chain id of the layer below, or ``None`` at the bottom."""
        p = self._record.get("parent")
        return str(p) if p else None

    @property
    def size(self) -> int:
        """Bytes of content (regular files and symlink targets, hard links counted once)."""
        return int(self._record["size"])

    @property
    def created(self) -> datetime:
        """When this store published the layer."""
        return datetime.fromisoformat(str(self._record["created"]))

    @property
    def dir(self) -> Path:
        """The layer's directory in the store (content, record, tar-split)."""
        return self._store._layout.layer(self.chain_id)

    @property
    def path(self) -> Path:
        """The content directory, in the kernel overlayfs format (read-only by contract)."""
        return self.dir / "diff"

    def stack(self) -> builtins.list[Layer]:
        """This layer and every layer below it, top first."""
        out: builtins.list[Layer] = [self]
        while (p := out[-1].parent) is not None:
            out.append(p)
        return out

    def stack_paths(self) -> builtins.list[str]:
        """The content directories of this layer and those below it, top first."""
        return [str(layer.path) for layer in self.stack()]

    def tar(self, compression: str | None = None, *, verify: bool = True) -> TarReader:
        """The layer as an OCI layer tar (``None``, ``"gzip"`` or ``"zstd"``), streamed. An imported
        layer re-exports byte for byte, so the uncompressed stream hashes to :attr:`diff_id`.
        ``verify=False`` skips hashing the stream (sha256 is the slowest part of plain streaming); the
        reader's ``diff_id`` and, uncompressed, ``digest`` then stay ``None``."""
        split = self.dir / "tar-split.zst"
        parent = self.parent
        return TarReader(
            _ovlcore.layer_tar(
                str(self.path),
                tarsplit=str(split) if split.exists() else None,
                lower=parent.stack_paths() if parent else [],
                privilege=self._store.privilege,
                compression=compression,
                digest=verify,
            )
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and other.chain_id == self.chain_id

    def __hash__(self) -> int:
        return hash(self.chain_id)

    def __repr__(self) -> str:
        return f"<Layer {self.chain_id[:19]} diff_id={self.diff_id[:19]} size={self.size}>"


class Layers:
    """``store.layers``: the layer store, for tools that back their own storage on ovlcore."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _read(self, chain_id: str) -> Layer | None:
        try:
            return Layer(self._store, read_json(self._store._layout.layer(chain_id) / "layer.json"))
        except FileNotFoundError:
            return None

    def get(self, digest: str) -> Layer:
        """A layer by chain id or diff id (``sha256:<hex>``, or a unique hex prefix of 4+ digits)."""
        if not isinstance(digest, str):
            raise InvalidReference(f"layer digest must be a string, not {type(digest).__name__}")
        hexpart = digest.removeprefix("sha256:")
        if len(hexpart) < 4:
            raise InvalidReference(f"layer reference {digest!r} is too short (4+ hex digits)")
        if len(hexpart) == 64:
            found = self._read(hexpart)
            if found:
                return found
        matches = [
            layer
            for layer in self.list()
            if layer.chain_id.removeprefix("sha256:").startswith(hexpart)
            or layer.diff_id.removeprefix("sha256:").startswith(hexpart)
        ]
        if not matches:
            raise LayerNotFound(f"No such layer: {digest}")
        # A diff id may sit on several parents; the one at the bottom of a stack comes first.
        exact = [layer for layer in matches if layer.diff_id == digest or layer.chain_id == digest]
        if exact:
            exact.sort(key=lambda layer: (layer.parent_chain_id is not None, layer.chain_id))
            return exact[0]
        if len({m.chain_id for m in matches}) > 1:
            raise AmbiguousReference(f"layer prefix {digest!r} matches {len(matches)} layers")
        return matches[0]

    def list(self) -> builtins.list[Layer]:
        """Every layer of the store, by chain id."""
        out = []
        try:
            names = sorted(os.listdir(self._store._layout.layers))
        except FileNotFoundError:
            return []
        for name in names:
            layer = self._read(name)
            if layer is not None:
                out.append(layer)
        return out

    def apply(
        self,
        source: Source,
        *,
        parent: Layer | str | None = None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> Layer:
        """Import an OCI layer tar (plain, gzip or zstd) on top of ``parent``. The layer is kept until
        removed with :meth:`remove` or :meth:`ovlcore.Store.prune`, whether or not an image uses it."""
        return self._apply(source, parent=parent, retain=True, progress=progress, max_size=max_size)

    def _apply(
        self,
        source: Source,
        *,
        parent: Layer | str | None,
        retain: bool,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> Layer:
        with self._stage(source, parent=parent, progress=progress, max_size=max_size) as staged:
            with self._store._lock.exclusive():
                return self._publish_locked(staged, retain)

    def _stage(
        self,
        source: Source,
        *,
        parent: Layer | str | None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> StagedLayer:
        """Extract a layer tar into a staging directory (no lock held: this is the long part)."""
        store = self._store
        parent_layer = self.get(parent) if isinstance(parent, str) else parent
        st = Staging(store._layout)
        try:
            content = make_layer_root(st.path / "diff")
            diff_id, size, tar_size = _ovlcore.import_layer(
                as_source(source),
                str(content),
                tarsplit=str(st.path / "tar-split.zst"),
                lower=parent_layer.stack_paths() if parent_layer else [],
                privilege=store.privilege,
                max_size=max_size,
                progress=progress,
            )
            return StagedLayer(st, diff_id, size, tar_size, parent_layer)
        except BaseException:
            st.close()
            raise

    def _publish_locked(self, staged: StagedLayer, retain: bool) -> Layer:
        """Publish a staged layer, or return the store's copy when it has one (the store lock is held
        exclusively by the caller, who may publish what references the layer in the same hold)."""
        store = self._store
        parent = staged.parent
        if parent is not None and not store._layout.layer(parent.chain_id).exists():
            raise LayerNotFound(f"parent layer {parent.chain_id} was removed meanwhile")
        existing = self._read(staged.chain_id)
        if existing is not None:
            if retain and not existing._record.get("retained"):
                existing._record["retained"] = True
                write_json(existing.dir / "layer.json", existing._record)
            return existing
        record = dict(staged.record, retained=retain)
        write_json(staged.staging.path / "layer.json", record)
        staged.staging.publish(store._layout.layer(staged.chain_id))
        return Layer(store, record)

    def remove(self, digest: str) -> None:
        """Remove a layer that no image uses (and that no other layer is built on)."""
        self._store._remove_layers([self.get(digest).chain_id])
