"""Layers: immutable, content-addressed directories in the kernel overlayfs format.

A layer's content directory holds its files in the kernel overlayfs format (whiteouts as 0/0 character
devices, opaque directories marked by xattr); a layer imported from an archive also keeps the header bytes
that let :meth:`Layer.tar` reproduce the archive exactly. Its record (diff id, parent, sizes) is in the
store's records.
"""

from __future__ import annotations

import builtins

import io
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Union

from . import _ovlcore
from ._store import Storage, Transaction
from ._store.layout import LayerDir
from ._store.records import LayerRecord
from ._time import now, parse_time
from .errors import AmbiguousReference, Conflict, InvalidReference, LayerNotFound

__all__ = ["Layer", "Layers", "StagedLayer", "Source", "ProgressCallback", "as_source", "TarReader"]

#: What an archive can be read from: a host path, a binary file object, or an iterable of bytes chunks.
Source = Union[str, "os.PathLike[str]", bytes, IO[bytes], Iterable[bytes]]

ProgressCallback = Callable[[int], None]


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
    """A layer built in a transaction's staging directory, not yet visible."""

    def __init__(self, staged: LayerDir, record: LayerRecord, lower: builtins.list[str]) -> None:
        self.staged = staged
        self.record = record
        #: Content directories of the staged layer and every layer below it, top first.
        self.stack_paths = [str(staged.content), *lower]

    @property
    def chain_id(self) -> str:
        return self.record.chain_id

    @property
    def diff_id(self) -> str:
        return self.record.diff_id


def layer_record(diff_id: str, parent: str | None, *, size: int, tar_size: int | None, retained: bool = False) -> LayerRecord:
    """The record of a new layer ``diff_id`` on top of the layer ``parent`` (a chain id)."""
    return LayerRecord(
        chain_id=_ovlcore.chain_id(parent, diff_id), diff_id=diff_id, parent=parent, size=size, tar_size=tar_size,
        created=now(), retained=retained,
    )


class Layer:
    """One layer of the store. Immutable: its content directory :attr:`path` must never be changed."""

    def __init__(self, storage: Storage, record: LayerRecord) -> None:
        self._storage = storage
        self._record = record

    @property
    def chain_id(self) -> str:
        """The OCI chain id: this layer together with every layer below it."""
        return self._record.chain_id

    @property
    def diff_id(self) -> str:
        """sha256 of the uncompressed layer tar."""
        return self._record.diff_id

    @property
    def parent(self) -> Layer | None:
        """The layer below, or ``None`` at the bottom."""
        p = self._record.parent
        if p is None:
            return None
        rec = self._storage.records.layer(p)
        if rec is None:
            raise LayerNotFound(f"layer {self.chain_id} is missing its parent {p}")
        return Layer(self._storage, rec)

    @property
    def parent_chain_id(self) -> str | None:
        """The chain id of the layer below, or ``None`` at the bottom."""
        return self._record.parent

    @property
    def size(self) -> int:
        """Bytes of content (regular files and symlink targets, hard links counted once)."""
        return self._record.size

    @property
    def tar_size(self) -> int | None:
        """Bytes of the uncompressed layer tar, when known."""
        return self._record.tar_size

    @property
    def created(self) -> datetime:
        """When this store published the layer."""
        return parse_time(self._record.created)

    @property
    def dir(self) -> Path:
        """The layer's directory in the store (content, tar-split)."""
        return self._storage.layout.layer(self.chain_id).path

    @property
    def path(self) -> Path:
        """The content directory, in the kernel overlayfs format (read-only by contract)."""
        return self._storage.layout.layer(self.chain_id).content

    def stack(self) -> builtins.list[Layer]:
        """This layer and every layer below it, top first."""
        out: builtins.list[Layer] = [self]
        while (p := out[-1].parent) is not None:
            out.append(p)
        return out

    def stack_paths(self) -> builtins.list[str]:
        """The content directories of this layer and those below it, top first (chain ids name them:
        no record needs reading)."""
        out = [str(self.path)]
        chain = self._record.parent
        layout = self._storage.layout
        while chain is not None:
            out.append(str(layout.layer(chain).content))
            rec = self._storage.records.layer(chain)
            chain = rec.parent if rec is not None else None
        return out

    def tar(self, compression: str | None = None, *, verify: bool = True) -> TarReader:
        """The layer as an OCI layer tar (``None``, ``"gzip"`` or ``"zstd"``), streamed. An imported
        layer re-exports byte for byte, so the uncompressed stream hashes to :attr:`diff_id`.
        ``verify=False`` skips hashing the stream (sha256 is the slowest part of plain streaming); the
        reader's ``diff_id`` and, uncompressed, ``digest`` then stay ``None``."""
        split = self._storage.layout.layer(self.chain_id).tarsplit
        parent = self.parent
        return TarReader(
            _ovlcore.layer_tar(
                str(self.path),
                tarsplit=str(split) if split.exists() else None,
                lower=parent.stack_paths() if parent else [],
                privilege=self._storage.privilege,
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

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def find(self, chain_id: str) -> Layer | None:
        """The layer with exactly this chain id, if the store has it."""
        rec = self._storage.records.layer(chain_id)
        return Layer(self._storage, rec) if rec is not None else None

    def get(self, digest: str) -> Layer:
        """A layer by chain id or diff id (``sha256:<hex>``, or a unique hex prefix of 4+ digits)."""
        if not isinstance(digest, str):
            raise InvalidReference(f"layer digest must be a string, not {type(digest).__name__}")
        hexpart = digest.removeprefix("sha256:")
        if len(hexpart) < 4:
            raise InvalidReference(f"layer reference {digest!r} is too short (4+ hex digits)")
        if len(hexpart) == 64:
            found = self.find("sha256:" + hexpart)
            if found:
                return found
        matches = [Layer(self._storage, r) for r in self._storage.records.layers_matching("sha256:" + hexpart)]
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
        return [Layer(self._storage, r) for r in self._storage.records.layers()]

    def apply(
        self,
        source: Source,
        *,
        parent: Layer | str | None = None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> Layer:
        """Import an OCI layer tar (plain, gzip, zstd, bzip2 or xz) on top of ``parent``. The layer is kept until
        removed with :meth:`remove` or :meth:`ovlcore.Store.prune`, whether or not an image uses it."""
        parent_layer = self.get(parent) if isinstance(parent, str) else parent
        with self._storage.transaction() as tx:
            staged = self.stage(tx, source, parent=parent_layer, progress=progress, max_size=max_size, retain=True)
            with tx.publishing() as pub:
                return Layer(self._storage, pub.add_layer(staged.staged, staged.record))

    def stage(
        self,
        tx: Transaction,
        source: Source,
        *,
        parent: Layer | None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
        retain: bool = False,
    ) -> StagedLayer:
        """Extract a layer tar into a staging directory of ``tx`` (no lock held: this is the long part),
        for the transaction to publish."""
        staged = tx.stage_layer()
        lower = parent.stack_paths() if parent else []
        diff_id, size, tar_size = _ovlcore.import_layer(
            as_source(source),
            str(staged.content),
            tarsplit=str(staged.tarsplit),
            lower=lower,
            privilege=self._storage.privilege,
            max_size=max_size,
            progress=progress,
        )
        rec = layer_record(diff_id, parent.chain_id if parent else None, size=size, tar_size=tar_size, retained=retain)
        return StagedLayer(staged, rec, lower)

    def remove(self, digest: str) -> None:
        """Remove a layer that no image uses (and that no other layer is built on)."""
        chain = self.get(digest).chain_id
        with self._storage.transaction() as tx, tx.publishing() as pub:
            if pub.records.layer_in_use(chain):
                raise Conflict(f"layer {chain} is used by an image")
            if pub.records.layer_has_children(chain):
                raise Conflict(f"layer {chain} has layers built on it")
            if pub.records.layer(chain) is not None:
                pub.remove_layer(chain)
