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
plain, gzip or zstd layers. It never holds a layer in memory: the core indexes the archive in place (a
stream that cannot seek, or a compressed archive, is first spooled to a plain file in the store's
``tmp/``), and each layer goes straight from its place in the archive into the layer importer, which
extracts it and hashes it (and its blob) in one pass, without Python in the byte path. Everything is
verified (config and manifest digests, blob digests and sizes, every diff_id against the config) and staged
before anything is published; then every new layer, image and tag becomes visible in one step under the
store lock. A bad archive raises :class:`~ovlcore.errors.InvalidArchive` naming what is wrong
(:class:`~ovlcore.errors.TruncatedArchive` when it is cut short), and leaves the store as it was. Layers
the store already has (same chain id) are not extracted, nor read (not even hashed: their content in the
store is already the one the diff_id names). Saving a layer whose content no longer matches its record
raises :class:`~ovlcore.errors.CorruptStore`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

from . import _ovlcore
from ._storage import Staging, move_to_trash, replacing, write_json
from .errors import CorruptStore, ImageNotFound, InvalidArchive, InvalidReference, LayerNotFound
from .references import full_tag, parse_tag

if TYPE_CHECKING:
    from .images import Image
    from .layers import Layer, StagedLayer
    from .store import Store

__all__ = ["save", "load", "FORMATS"]

FORMATS = ("docker", "oci")

ProgressCallback = Callable[[int], None]
Refs = Union[str, "Image", Iterable[Union[str, "Image"]]]
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

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BLOB_PATH = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
#: Metadata files (manifests, configs, index) larger than this are refused rather than read into memory.
_MAX_METADATA = 64 << 20


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _sha256(data: bytes) -> str:
    return _ovlcore.sha256(data)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ====================================================================================================
# save
# ====================================================================================================


@dataclass
class _SaveImage:
    image: Image
    tags: list[str] = field(default_factory=list)


def _save_list(store: Store, refs: Refs) -> list[_SaveImage]:
    """The images ``refs`` name, in order, with the tags each is saved under (Docker's rules: ``name:tag``
    saves that tag, a bare ``name`` every tag of that repository, an id none)."""
    from .images import Image

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
                    repos = images._repositories()
                    for tag in sorted(repos):
                        if tag.rpartition(":")[0] == name:
                            found.append((repos[tag], [tag]))
            if not found:
                with store._lock.shared():
                    image_id, named = images._resolve(ref)
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
    size = layer._record.get("tar_size")
    return size if isinstance(size, int) and size >= 0 else None


@dataclass
class _Blob:
    """A layer as written into the archive."""

    digest: str
    size: int
    media_type: str
    path: str = ""


class _Saver:
    def __init__(self, store: Store, tw: _ovlcore.ArchiveWriter, compression: str | None) -> None:
        self.store = store
        self.tw = tw
        self.compression = compression
        self.blobs: dict[str, _Blob] = {}  # diff_id -> what was written

    def _stream_plain(self, layer: Layer, name: str, mtime: int) -> int:
        """Stream the uncompressed layer tar as ``name``, checking its size and diff_id; returns the size."""
        size = _layer_tar_size(layer)
        stream = layer.tar()
        if size is None:
            # No size on record: spool once to learn it.
            with Staging(self.store._layout) as st:
                spool = st.path / "layer.tar"
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

    def _stream_compressed(self, layer: Layer, name_of: Callable[[str], str], mtime: int) -> _Blob:
        """Compress the layer into a spool file (its size and digest must precede it), then copy it."""
        assert self.compression is not None
        with Staging(self.store._layout) as st:
            spool = st.path / "blob"
            stream = layer.tar(self.compression)
            with open(spool, "wb") as f:
                stream.copy_to(f)
            self._check(layer, stream.diff_id)
            digest = stream.digest
            assert digest is not None
            size = spool.stat().st_size
            self.tw.add_file(name_of(digest), str(spool), mtime)
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
    store: Store,
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
    store: Store, items: list[_SaveImage], dest: IO[bytes], format: str, compression: str | None, progress: ProgressCallback | None
) -> None:
    tw = _ovlcore.ArchiveWriter(dest, progress=progress)
    try:
        saver = _Saver(store, tw, compression)
        if format == "docker":
            _write_docker(saver, items)
        else:
            _write_oci(saver, items)
    except BaseException:
        tw.abort()
        raise
    tw.close()
    with contextlib.suppress(AttributeError, io.UnsupportedOperation):
        dest.flush()


# ====================================================================================================
# load: reading archives
# ====================================================================================================


class _Archive:
    """The members of the archive being loaded (indexed and read by the core), and the progress of
    reading them: ``progress`` gets the bytes of members read or skipped so far."""

    def __init__(self, members: _ovlcore.Archive, progress: ProgressCallback | None) -> None:
        self._members = members
        self._progress = progress
        self.done = 0

    def _report(self, done: int) -> None:
        self.done = done
        if self._progress is not None:
            self._progress(done)

    def has(self, name: str) -> bool:
        return self._members.has(name)

    def size(self, name: str) -> int:
        size = self._members.size(name)
        assert size is not None, name
        return size

    def read_small(self, name: str, what: str) -> bytes:
        size = self._members.size(name)
        if size is None:
            raise InvalidArchive(f"{what} {name!r} is not in the archive")
        if size > _MAX_METADATA:
            raise InvalidArchive(f"{what} {name!r} is {size} bytes: too large for a metadata file")
        data = self._members.read(name, _MAX_METADATA)
        self._report(self.done + len(data))
        return data

    def skip(self, name: str) -> None:
        """Count member ``name`` as read (a layer the store already has)."""
        self._report(self.done + self.size(name))

    def import_layer(self, name: str, dest: Path, tarsplit: Path, lower: list[str], privilege: str) -> tuple[str, int, int, str]:
        """Extract the layer in member ``name`` into ``dest``: ``(diff_id, size, tar_size, blob digest)``."""
        base = self.done
        got = self._members.import_layer(
            name, str(dest), tarsplit=str(tarsplit), lower=lower, privilege=privilege, progress=lambda n: self._report(base + n)
        )
        self._report(base + self.size(name))
        return got


def _member_name(raw: str) -> str | None:
    """A name a manifest gives, normalised as the archive's members are (``./`` and trailing ``/``
    dropped); None for names that escape."""
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


@contextlib.contextmanager
def _open_archive(store: Store, source: LoadSource, progress: ProgressCallback | None) -> Iterator[_Archive]:
    """The archive behind ``source`` (a compressed one, or a stream, is spooled into ``tmp/`` first)."""
    if not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(f"load() takes a path or a binary file object, not {type(source).__name__}")
    with Staging(store._layout) as st:
        members = _ovlcore.Archive(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source, spool=str(st.path / "archive.tar"))
        yield _Archive(members, progress)


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
    from .images import _arch

    p = desc.get("platform")
    if not isinstance(p, dict):
        return True
    return bool(p.get("os", "linux") == "linux" and p.get("architecture", _arch()) == _arch())


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
    from .images import _arch

    return _arch()


# ====================================================================================================
# load: staging and publishing
# ====================================================================================================


class _Loader:
    def __init__(self, store: Store, arc: _Archive, stack: contextlib.ExitStack) -> None:
        self.store = store
        self.arc = arc
        self.stack = stack
        self.staged: dict[str, tuple[StagedLayer, list[str]]] = {}  # chain id -> (layer, content dirs top first)

    def _parent(self, chain: str | None) -> tuple[Layer | None, list[str]]:
        """The layer ``chain`` (staged by this load, or in the store) and its content directories, top first."""
        from .layers import Layer

        if chain is None:
            return None, []
        staged = self.staged.get(chain)
        if staged is not None:
            return Layer(self.store, staged[0].record), staged[1]
        layer = self.store.layers._read(_hex(chain))
        if layer is None:
            raise LayerNotFound(f"layer {chain} was removed from the store while loading")
        return layer, layer.stack_paths()

    def layer(self, lp: _LayerPlan, image_what: str) -> None:
        """Extract and verify one layer into a staging directory, unless the store or this load has it."""
        from .layers import StagedLayer, make_layer_root

        if lp.chain_id in self.staged or self.store.layers._read(_hex(lp.chain_id)) is not None:
            self.arc.skip(lp.member)  # progress counts it as done
            return
        store = self.store
        what = f"layer {lp.member!r}"
        parent, lower = self._parent(lp.parent)
        st = self.stack.enter_context(Staging(store._layout))
        content = make_layer_root(st.path / "diff")
        diff_id, size, tar_size, blob_digest = self.arc.import_layer(lp.member, content, st.path / "tar-split.zst", lower, store.privilege)
        if lp.blob_digest is not None and blob_digest != lp.blob_digest:
            raise InvalidArchive(f"{what}: digest mismatch: the blob hashes to {blob_digest}, the manifest says {lp.blob_digest}")
        if diff_id != lp.diff_id:
            raise InvalidArchive(
                f"{what}: diff_id mismatch: the layer's tar hashes to {diff_id}, the config of {image_what} says {lp.diff_id}"
            )
        staged = StagedLayer(st, diff_id, size, tar_size, parent)
        assert staged.chain_id == lp.chain_id
        self.staged[lp.chain_id] = (staged, [str(content), *lower])

    def publish(self, plans: list[_ImagePlan]) -> None:
        """Make every staged layer, every new image and every tag visible in one hold of the store lock."""
        store = self.store
        layout = store._layout
        images: dict[str, tuple[_ImagePlan, Staging]] = {}
        ids = {p.image_id for p in plans}
        for plan in plans:
            if plan.image_id in images or layout.image(plan.image_id).exists():
                continue
            parent = plan.parent if plan.parent and (plan.parent in ids or layout.image(plan.parent).exists()) else None
            images[plan.image_id] = (plan, self.stack.enter_context(store.images._stage_image(plan.config, parent)))
        published: list[Path] = []
        trash: list[Path] = []
        failure: BaseException | None = None
        with store._lock.exclusive():
            try:
                for chain, (staged, _) in self.staged.items():  # bottom first: parents were staged first
                    dest = layout.layer(chain)
                    existed = dest.exists()
                    store.layers._publish_locked(staged, retain=False)
                    if not existed:
                        published.append(dest)
                for plan, st in images.values():
                    dest = layout.image(plan.image_id)
                    existed = dest.exists()
                    store.images._publish_locked(st, plan.config, None)
                    if not existed:
                        published.append(dest)
                for plan in plans:
                    for lp in plan.layers:
                        if not layout.layer(lp.chain_id).exists():
                            raise LayerNotFound(f"layer {lp.chain_id} was removed from the store while loading")
                tags = [(t, p.image_id) for p in plans for t in p.tags]
                if tags:
                    repos = store.images._repositories()
                    for tag, image_id in tags:
                        repos[tag] = image_id
                    write_json(layout.repositories, repos)
            except BaseException as e:
                failure = e
                for p in reversed(published):
                    moved = move_to_trash(layout, p)
                    if moved is not None:
                        trash.append(moved)
        store._empty([(p, 0) for p in trash])
        if failure is not None:
            raise failure


def load(store: Store, source: LoadSource, *, progress: ProgressCallback | None = None) -> list[Image]:
    """Load every image of a docker-archive or OCI layout (tar, compressed tar, or directory)."""
    with contextlib.ExitStack() as stack:
        arc = stack.enter_context(_open_archive(store, source, progress))
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
        loader = _Loader(store, arc, stack)
        for plan in plans:
            for lp in plan.layers:
                loader.layer(lp, f"image {plan.image_id}")
        loader.publish(plans)
    out: list[Image] = []
    for plan in plans:
        img = store.images._maybe(plan.image_id)
        if img is None:
            raise ImageNotFound(f"image {plan.image_id} was removed right after loading")
        if img not in out:
            out.append(img)
    return out


def _label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    return str(getattr(source, "name", "archive"))
