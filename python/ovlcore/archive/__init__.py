"""Image archives: ``docker save`` and ``docker load`` in the docker-archive (:mod:`.docker`) and OCI
image-layout (:mod:`.oci`) formats.

Saving streams every layer straight from the store into one outer tar, written by the core
(:mod:`.blobs`): the layer tar's size is known from the layer's record and its digest is checked while it
streams, and each distinct layer is written once however many images share it. Layers are written
uncompressed unless ``compression`` is ``"gzip"`` or ``"zstd"`` (each compressed blob is spooled once in
``tmp/``: its size and digest must precede it). Docker 20.10 loads gzip layers but not zstd ones (zstd
needs Docker 23 or later). Paths are written atomically (temp name, rename) without fsync, as ``docker
save -o`` does. Saving a layer whose content no longer matches its record raises
:class:`~ovlcore.errors.CorruptStore`.

Loading reads both (and a directory holding an OCI layout), plain or gzip/zstd compressed as a whole, with
plain, gzip or zstd layers. It never holds a layer in memory: the core indexes the archive in place (a
stream that cannot seek, or a compressed archive, is first spooled to a plain file in the store's
``tmp/``), and each layer goes straight from its place in the archive into the layer importer, which
extracts it and hashes it (and its blob) in one pass, without Python in the byte path. Everything is
verified (config and manifest digests, blob digests and sizes, every diff_id against the config) and
staged before anything is published (:mod:`.plans`, :mod:`.loader`); then every new layer, image and tag
becomes visible in one transaction. A bad archive raises :class:`~ovlcore.errors.InvalidArchive` naming
what is wrong (:class:`~ovlcore.errors.TruncatedArchive` when it is cut short), and leaves the store as it
was. Layers the store already has (same chain id) are not extracted, nor read (not even hashed: their
content in the store is already the one the diff_id names).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

from .. import _ovlcore
from .._store import Storage
from .._store.files import replacing
from ..errors import InvalidArchive, InvalidReference
from ..images import Image, Images, Refs
from ..layers import Layers
from ..references import parse_tag
from . import docker, oci
from .blobs import BlobWriter, SaveItem
from .loader import Loader
from .members import LoadSource, open_members

__all__ = ["Archive", "FORMATS"]

FORMATS = ("docker", "oci")

ProgressCallback = Callable[[int], None]
Dest = Union[str, "os.PathLike[str]", IO[bytes]]


class Archive:
    """``images.save`` and ``images.load`` over one store (the :class:`~ovlcore.images.Archiver` its
    images use)."""

    def __init__(self, storage: Storage, layers: Layers, images: Images) -> None:
        self._storage = storage
        self._layers = layers
        self._images = images

    # ----- save -----

    def save(
        self, refs: Refs, dest: Dest, *, format: str = "docker", compression: str | None = None, progress: ProgressCallback | None = None
    ) -> None:
        """Write the images ``refs`` names into one archive at ``dest`` (a path, written atomically, or a
        binary file object)."""
        if format not in FORMATS:
            raise ValueError(f"unknown archive format {format!r} (choose from {', '.join(FORMATS)})")
        if compression not in (None, "gzip", "zstd"):
            raise ValueError(f"unknown layer compression {compression!r} (use None, 'gzip' or 'zstd')")
        items = self._save_list(refs)
        if isinstance(dest, (str, os.PathLike)):
            with replacing(Path(dest)) as f:
                self._write(items, f, format, compression, progress)
            return
        if not hasattr(dest, "write"):
            raise TypeError(f"save() writes to a path or a binary file object, not {type(dest).__name__}")
        self._write(items, dest, format, compression, progress)

    def _save_list(self, refs: Refs) -> list[SaveItem]:
        """The images ``refs`` name, in order, with the tags each is saved under (Docker's rules:
        ``name:tag`` saves that tag, a bare ``name`` every tag of that repository, an id none)."""
        if isinstance(refs, (str, Image)):
            refs = [refs]
        out: dict[str, SaveItem] = {}
        images = self._images
        for ref in refs:
            if isinstance(ref, Image):
                found: list[tuple[str, list[str]]] = [(ref.id, ref.tags)]
            elif not isinstance(ref, str):
                raise InvalidReference(f"image reference must be a string or an Image, not {type(ref).__name__}")
            else:
                found = []
                if not ref.startswith("sha256:") and ":" not in ref.rpartition("/")[2]:
                    with contextlib.suppress(InvalidReference):
                        name, _ = parse_tag(ref)
                        found = [(image_id, [tag]) for tag, image_id in images.tagged(name)]
                if not found:
                    image_id, named = images.resolve(ref)
                    found = [(image_id, [named] if named else [])]
            for image_id, tags in found:
                entry = out.get(image_id)
                if entry is None:
                    entry = out[image_id] = SaveItem(images.get(image_id))
                entry.tags.extend(t for t in tags if t not in entry.tags)
        if not out:
            raise ValueError("no image to save: give at least one reference")
        return list(out.values())

    def _write(self, items: list[SaveItem], dest: IO[bytes], format: str, compression: str | None, progress: ProgressCallback | None) -> None:
        tw = _ovlcore.ArchiveWriter(dest, progress=progress)
        try:
            blobs = BlobWriter(self._storage, tw, compression)
            (docker if format == "docker" else oci).write(blobs, items)
        except BaseException:
            tw.abort()
            raise
        tw.close()
        with contextlib.suppress(AttributeError, io.UnsupportedOperation):
            dest.flush()

    # ----- load -----

    def load(self, source: LoadSource, *, progress: ProgressCallback | None = None) -> list[Image]:
        """Load every image of a docker-archive or OCI layout (tar, compressed tar, or directory)."""
        with self._storage.transaction() as tx, open_members(tx, source, progress) as arc:
            if arc.has("index.json") and (arc.has("oci-layout") or not arc.has("manifest.json")):
                plans = oci.plan(arc)
            elif arc.has("manifest.json"):
                plans = docker.plan(arc)
            else:
                raise InvalidArchive(f"{_label(source)}: neither manifest.json (docker-archive) nor index.json (OCI image layout) is in it")
            if not plans:
                raise InvalidArchive(f"{_label(source)}: the archive holds no image")
            loader = Loader(self._images, self._layers, self._storage.privilege, arc, tx)
            for plan in plans:
                for lp in plan.layers:
                    loader.layer(lp, f"image {plan.image_id}")
            return loader.publish(plans)


def _label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    return str(getattr(source, "name", "archive"))
