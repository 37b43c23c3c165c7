"""Writing a save's layers into the outer tar, each distinct layer once however many images share it:
streamed straight from the store when plain (its size is on record, its diff_id checked as it streams),
or compressed into a spool file first (a blob's size and digest must precede it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import _ovlcore
from .._store import Storage
from ..errors import CorruptStore
from ..images import Image
from ..layers import Layer
from .spec import MT_OCI_LAYER, hex_of, json_bytes


@dataclass
class SaveItem:
    """An image to save, and the tags it is saved under."""

    image: Image
    tags: list[str] = field(default_factory=list)

    @property
    def mtime(self) -> int:
        """The time every member written for this image gets: the image's creation."""
        return max(0, int(self.image.created.timestamp()))


@dataclass
class Blob:
    """A layer as written into the archive."""

    digest: str
    size: int
    media_type: str
    path: str = ""


class BlobWriter:
    def __init__(self, storage: Storage, tw: _ovlcore.ArchiveWriter, compression: str | None) -> None:
        self.storage = storage
        self.tw = tw
        self.compression = compression
        self.blobs: dict[str, Blob] = {}  # diff_id -> what was written

    def _stream_plain(self, layer: Layer, name: str, mtime: int) -> int:
        """Stream the uncompressed layer tar as ``name``, checking its size and diff_id; returns the size."""
        size = layer.tar_size
        stream = layer.tar()
        if size is None:
            # No size on record: spool once to learn it.
            with self.storage.transaction() as tx:
                spool = tx.stage() / "layer.tar"
                with open(spool, "wb") as f:
                    stream.copy_to(f)
                self._check(layer, stream.diff_id)
                size = spool.stat().st_size
                self.tw.add_file(name, str(spool), mtime)
            return size
        self.tw.add_stream(name, size, stream.stream, mtime)
        self._check(layer, stream.diff_id)
        return size

    @staticmethod
    def _check(layer: Layer, got: str | None) -> None:
        if got != layer.diff_id:
            raise CorruptStore(f"layer {layer.chain_id}: its content hashes to {got}, not to its diff_id {layer.diff_id}")

    def _stream_compressed(self, layer: Layer, name_of: Callable[[str], str], mtime: int) -> Blob:
        assert self.compression is not None
        with self.storage.transaction() as tx:
            spool = tx.stage() / "blob"
            stream = layer.tar(self.compression)
            with open(spool, "wb") as f:
                stream.copy_to(f)
            self._check(layer, stream.diff_id)
            digest = stream.digest
            assert digest is not None
            size = spool.stat().st_size
            self.tw.add_file(name_of(digest), str(spool), mtime)
        return Blob(digest, size, f"{MT_OCI_LAYER}+{self.compression}")

    def layer(self, layer: Layer, mtime: int, style: str) -> Blob:
        """Write ``layer`` once (by diff_id) in the ``"docker"`` or ``"oci"`` style; where it went."""
        known = self.blobs.get(layer.diff_id)
        if known is not None:
            return known
        name_of: Callable[[str], str]
        if style == "docker":
            d = hex_of(layer.diff_id)
            self.tw.add_dir(d, mtime)
            self.tw.add_bytes(f"{d}/VERSION", b"1.0", mtime)
            legacy = {"id": d, "created": datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "container_config": {}, "os": "linux"}
            self.tw.add_bytes(f"{d}/json", json_bytes(legacy), mtime)
            name_of = lambda _digest: f"{d}/layer.tar"  # noqa: E731
        else:
            self.tw.add_dir("blobs", mtime)
            self.tw.add_dir("blobs/sha256", mtime)
            name_of = lambda digest: f"blobs/sha256/{hex_of(digest)}"  # noqa: E731
        if self.compression is None:
            blob = Blob(layer.diff_id, self._stream_plain(layer, name_of(layer.diff_id), mtime), MT_OCI_LAYER)
        else:
            blob = self._stream_compressed(layer, name_of, mtime)
        blob.path = name_of(blob.digest)
        self.blobs[layer.diff_id] = blob
        return blob
