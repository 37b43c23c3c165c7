"""Images: an OCI image config naming a stack of layers, plus tags.

An image's config is kept as its exact bytes (the id is their sha256); its record holds the chain ids of
its layers and what only this store knows (the parent image a commit started from). Tags are records too.
"""

from __future__ import annotations

import builtins
import contextlib

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol, Union

from . import _ovlcore, fusemount
from ._config import apply_changes, child_config, encode_config
from ._store import Publisher, Storage, Transaction
from ._store.records import ImageRecord, Query
from ._time import normalize_time, now, parse_time
from .errors import AmbiguousReference, ImageInUse, ImageNotFound, InvalidReference, LayerNotFound
from .fs import ContainerFS
from .layers import Layer, Layers, ProgressCallback, Source
from .references import familiar_tag, full_tag, is_id_prefix, normalize_id, split_digest
from .reports import PruneReport

__all__ = ["Image", "Images", "HistoryEntry", "Archiver", "Transfers", "Builder", "image_record", "Refs"]

#: What ``save`` takes: one reference or image, or several.
Refs = Union[str, "Image", Iterable[Union[str, "Image"]]]


class Archiver(Protocol):
    """``docker save`` and ``docker load`` (see :mod:`ovlcore.archive`), given to :class:`Images` by the store."""

    def save(
        self, refs: Refs, dest: str | os.PathLike[str] | IO[bytes], *, format: str, compression: str | None,
        progress: ProgressCallback | None,
    ) -> None: ...

    def load(self, source: str | os.PathLike[str] | IO[bytes], *, progress: ProgressCallback | None) -> builtins.list[Image]: ...


class Transfers(Protocol):
    """``docker pull`` and ``docker push`` (see :mod:`ovlcore.registry`), given to :class:`Images` by the store."""

    def pull(self, ref: str, *, platform: str | None, auth: Any, progress: Any) -> Image: ...

    def push(self, src: str | Image, dest: str | None, *, auth: Any, format: str, compression: str, progress: Any) -> str: ...

    def fetch(self, url: str, dest: str | os.PathLike[str]) -> tuple[str, int, str | None]: ...


def image_record(config: bytes, parent: str | None) -> ImageRecord:
    """The record of the image whose config is ``config`` (already checked to be an image config)."""
    cfg = json.loads(config)
    chains: builtins.list[str] = []
    for diff_id in (cfg.get("rootfs") or {}).get("diff_ids") or []:
        chains.append(_ovlcore.chain_id(chains[-1] if chains else None, diff_id))
    return ImageRecord(
        id=_ovlcore.sha256(config), chain_ids=tuple(chains), parent=parent, created=normalize_time(cfg.get("created")), added=now()
    )


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``docker history``."""

    id: str
    created: datetime | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    tags: builtins.list[str]


class Image:
    """An image of the store. Its config (and so its id) never changes; its tags may."""

    def __init__(self, images: Images, record: ImageRecord) -> None:
        self._images = images
        self._storage = images._storage
        self._record = record
        self.id = record.id
        self._config_bytes: bytes | None = None
        self._config: dict[str, Any] | None = None
        self._fs: ContainerFS | None = None

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id, as Docker shows it."""
        return self.id.removeprefix("sha256:")[:12]

    @property
    def config_bytes(self) -> bytes:
        """The exact bytes of the config (its sha256 is the id)."""
        if self._config_bytes is None:
            self._config_bytes = self._storage.layout.image(self.id).config.read_bytes()
        return self._config_bytes

    @property
    def config(self) -> dict[str, Any]:
        """The OCI image config (a copy: edit with commit ``changes``)."""
        copy: dict[str, Any] = json.loads(json.dumps(self._cfg()))
        return copy

    def _cfg(self) -> dict[str, Any]:
        if self._config is None:
            loaded: dict[str, Any] = json.loads(self.config_bytes)
            self._config = loaded
        return self._config

    @property
    def diff_ids(self) -> builtins.list[str]:
        """The diff ids of the layers, bottom first."""
        return list((self._cfg().get("rootfs") or {}).get("diff_ids") or [])

    @property
    def chain_ids(self) -> builtins.list[str]:
        """Chain ids of the layers, bottom first."""
        return list(self._record.chain_ids)

    @property
    def created(self) -> datetime:
        """When the image was made (UTC), from its config."""
        c = self._cfg().get("created")
        return parse_time(c) if c else datetime.fromtimestamp(0, timezone.utc)

    @property
    def parent_id(self) -> str | None:
        """The local image a commit or build step started from, if known."""
        return self._record.parent

    @property
    def tags(self) -> builtins.list[str]:
        """The ``name:tag`` references pointing at this image, sorted."""
        return self._storage.records.tags_of(self.id)

    @property
    def repo_digests(self) -> builtins.list[str]:
        """The ``name@sha256:...`` manifests this image was pulled or pushed as, sorted."""
        return self._storage.records.repo_digests_of(self.id)

    @property
    def layers(self) -> builtins.list[Layer]:
        """The layers, bottom first."""
        out = []
        for chain in self._record.chain_ids:
            rec = self._storage.records.layer(chain)
            if rec is None:
                raise LayerNotFound(f"image {self.short_id} is missing layer {chain}")
            out.append(Layer(self._storage, rec))
        return out

    def stack_paths(self) -> builtins.list[str]:
        """The content directories of the layers, top first (no record needs reading: chain ids name them)."""
        layout = self._storage.layout
        return [str(layout.layer(c).content) for c in reversed(self._record.chain_ids)]

    @property
    def top_layer(self) -> Layer | None:
        """The topmost layer (``None`` for an image without layers)."""
        layers = self.layers
        return layers[-1] if layers else None

    @property
    def size(self) -> int:
        """Bytes of content in all layers."""
        return sum(layer.size for layer in self.layers)

    @property
    def fs(self) -> ContainerFS:
        """The merged file system of the image, read-only (made once: images never change)."""
        if self._fs is None:
            self._fs = ContainerFS.of_layers(self.stack_paths(), self._storage.privilege, owner=f"image {self.short_id}")
        return self._fs

    @contextlib.contextmanager
    def mount(self, path: str | os.PathLike[str] | None = None) -> Iterator[Path]:
        """Mount the image's merged tree read-only through FUSE (no privilege needed) and yield the host
        path (a new temporary directory when ``path`` is ``None``); unmounted on exit."""
        import tempfile  # here: it pulls in shutil and random, which `import ovlcore` does not need

        made = path is None
        target = Path(tempfile.mkdtemp(prefix=f"ovlcore-{self.short_id}-")) if path is None else Path(path)
        fusemount.clear_stale(target)
        target.mkdir(parents=True, exist_ok=True)
        spec = fusemount.FuseSpec(
            mountpoint=str(target.resolve()),
            lower=self.stack_paths(),
            privilege=self._storage.privilege,
            fsname=f"ovlcore:{self.short_id}",
        )
        fusemount.start(spec)
        try:
            yield Path(spec.mountpoint)
        finally:
            try:
                fusemount.unmount(spec.mountpoint)
            except OSError:
                fusemount.unmount(spec.mountpoint, lazy=True)
            if made:
                with contextlib.suppress(OSError):
                    target.rmdir()

    def history(self) -> builtins.list[HistoryEntry]:
        """``docker history``: one entry per build step, newest first, with the id of the local image each
        step produced where this store knows it (``<missing>`` elsewhere)."""
        cfg = self._cfg()
        layers = self.layers
        rows: builtins.list[tuple[dict[str, Any], int]] = []
        n = 0
        for h in cfg.get("history") or []:
            size = 0
            if not h.get("empty_layer"):
                if n < len(layers):
                    size = layers[n].size
                n += 1
            rows.append((h, size))
        rows.reverse()
        ids: builtins.list[str] = []
        rec: ImageRecord | None = self._record
        while rec is not None and len(ids) < len(rows):
            ids.append(rec.id)
            rec = self._storage.records.image(rec.parent) if rec.parent else None
        out = []
        for i, (h, size) in enumerate(rows):
            iid = ids[i] if i < len(ids) else "<missing>"
            out.append(
                HistoryEntry(
                    id=iid,
                    created=parse_time(h["created"]) if h.get("created") else None,
                    created_by=str(h.get("created_by", "")),
                    size=size,
                    comment=str(h.get("comment", "")),
                    empty_layer=bool(h.get("empty_layer", False)),
                    tags=self._storage.records.tags_of(iid) if iid != "<missing>" else [],
                )
            )
        return out

    def tag(self, ref: str) -> None:
        """Give this image the tag ``ref`` (moved from any image that had it)."""
        self._images.tag(self.id, ref)

    def remove(self, force: bool = False) -> builtins.list[str]:
        """``docker rmi`` of this image by id (see :meth:`Images.remove`)."""
        return self._images.remove(self.id, force=force)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<Image {self.id[:19]} tags={self.tags!r}>"


class Builder(Protocol):
    """Dockerfile builds (see :mod:`ovlcore.build`), given to :class:`Images` by the store."""

    def build(self, context: str | os.PathLike[str], **options: Any) -> Image: ...


class Images:
    """``store.images``: import, look up, tag, remove, save and load images."""

    def __init__(
        self, storage: Storage, layers: Layers, archiver: Callable[[Images], Archiver],
        transfers: Callable[[Images], Transfers] | None = None,
        builder: Callable[[Images], Builder] | None = None,
    ) -> None:
        self._storage = storage
        self._layers = layers
        self._archiver = archiver
        self._transfers = transfers
        self._builder = builder

    def children(self, parent: str | None) -> builtins.list[Image]:
        """The images made from the image ``parent`` (``None``: images with no parent), newest first."""
        return [Image(self, rec) for rec in self._storage.records.image_children(parent)]

    # ----- reading -----

    def find(self, image_id: str) -> Image | None:
        """The image with exactly this id, if the store has it."""
        rec = self._storage.records.image(image_id)
        return Image(self, rec) if rec is not None else None

    def resolve(self, ref: str | Image, records: Query | None = None) -> tuple[str, str | None]:
        """(image id, the tag ``ref`` named or ``None``), looked up in ``records`` (the store's, by default)."""
        q = records if records is not None else self._storage.records
        if isinstance(ref, Image):
            return ref.id, None
        if not isinstance(ref, str) or not ref:
            raise InvalidReference(f"invalid image reference {ref!r}")
        if "@" in ref:
            name, digest = split_digest(ref)
            found = q.repo_digest_target(f"{name}@{digest}")
            if found is None:
                raise ImageNotFound(f"No such image: {ref}")
            return found, None
        if ref.startswith("sha256:") or (is_id_prefix(ref) and len(ref) == 64):
            hexpart = normalize_id(ref)
            if not is_id_prefix(ref):
                raise InvalidReference(f"invalid image id {ref!r}")
            if len(hexpart) == 64:
                if q.image("sha256:" + hexpart) is None:
                    raise ImageNotFound(f"No such image: {ref}")
                return "sha256:" + hexpart, None
            return self._by_prefix(q, ref, hexpart), None
        # A name first (as Docker does), then an id prefix.
        try:
            tag = full_tag(ref)
        except InvalidReference:
            if is_id_prefix(ref):
                return self._by_prefix(q, ref, normalize_id(ref)), None
            raise
        target = q.tag_target(tag)
        if target is None and familiar_tag(tag) != tag:
            tag = familiar_tag(tag)  # docker.io/library/x:t is the x:t a pull stored
            target = q.tag_target(tag)
        if target is not None:
            return target, tag
        if is_id_prefix(ref):
            return self._by_prefix(q, ref, normalize_id(ref)), None
        raise ImageNotFound(f"No such image: {tag}")

    @staticmethod
    def _by_prefix(q: Query, ref: str, hexpart: str) -> str:
        matches = q.image_ids_with_prefix("sha256:" + hexpart)
        if not matches:
            raise ImageNotFound(f"No such image: {ref}")
        if len(matches) > 1:
            raise AmbiguousReference(f"image id prefix {ref!r} is ambiguous: it matches more than one image")
        return matches[0]

    def get(self, ref: str | Image) -> Image:
        """An image by ``name:tag``, ``name`` (``:latest``), full id, or unique id prefix (4+ hex)."""
        image_id, _ = self.resolve(ref)
        img = self.find(image_id)
        if img is None:
            raise ImageNotFound(f"No such image: {ref}")
        return img

    def list(self) -> builtins.list[Image]:
        """Every image (newest first)."""
        return [Image(self, rec) for rec in self._storage.records.images()]

    def tagged(self, repository: str) -> builtins.list[tuple[str, str]]:
        """``(tag, image id)`` for every tag of the repository ``repository`` (``name`` of ``name:tag``)."""
        return self._storage.records.repository_tags(repository)

    # ----- making images -----

    def import_archive(
        self,
        source: Source,
        *,
        tag: str | None = None,
        message: str | None = None,
        changes: builtins.list[str] | None = None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> Image:
        """``docker import``: a one-layer base image from a root file system archive (tar; gzip, zstd, bzip2 or xz)."""
        origin = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "-"
        return self._build(
            None, source, tag=tag, created_by="", comment=message if message is not None else f"Imported from {origin}",
            author=None, changes=changes, progress=progress, max_size=max_size,
        )

    def apply(
        self,
        parent: str | Image,
        source: Source,
        *,
        tag: str | None = None,
        created_by: str = "",
        comment: str = "",
        author: str | None = None,
        changes: builtins.list[str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Image:
        """A build step: a new image = ``parent`` + the layer tar ``source`` applied on its top layer + a
        history entry (``created_by`` as in ``docker history``). Layer and image appear together."""
        return self._build(
            self.get(parent), source, tag=tag, created_by=created_by, comment=comment, author=author,
            changes=changes, progress=progress, max_size=None,
        )

    def _build(
        self,
        base: Image | None,
        source: Source,
        *,
        tag: str | None,
        created_by: str,
        comment: str,
        author: str | None,
        changes: builtins.list[str] | None,
        progress: ProgressCallback | None,
        max_size: int | None,
    ) -> Image:
        if tag is not None:
            tag = full_tag(tag)
        apply_changes({}, changes)  # fail on bad changes before reading anything
        with self._storage.transaction() as tx:
            staged = self._layers.stage(tx, source, parent=base.top_layer if base else None, progress=progress, max_size=max_size)
            config = child_config(
                base._cfg() if base else None, staged.diff_id, created_by=created_by, comment=comment, author=author, changes=changes
            )
            with tx.publishing() as pub:
                pub.add_layer(staged.staged, staged.record)
                return self.publish(tx, pub, config, parent=base.id if base else None, tag=tag)

    def publish(self, tx: Transaction, pub: Publisher, config: bytes, *, parent: str | None, tag: str | None) -> Image:
        """Publish the image ``config`` in ``pub`` (unless the store has it) and point ``tag`` at it, for
        operations that make images (import, commit, load, build). Its layers must be in the store or
        published in the same block."""
        rec = image_record(config, parent)
        if pub.records.image(rec.id) is None:
            rec = pub.add_image(tx.stage_image(config), rec)
        else:
            rec = pub.add_image(None, rec)
        if tag is not None:
            pub.set_tag(tag, rec.id)
        return Image(self, rec)

    def create(
        self,
        *,
        layer: Layer | None,
        parent: str | Image | None = None,
        tag: str | None = None,
        created_by: str = "",
        comment: str = "",
        author: str | None = None,
        changes: builtins.list[str] | None = None,
        config: dict[str, Any] | None = None,
        created: datetime | None = None,
    ) -> Image:
        """A new image: ``parent``'s layers plus ``layer`` (already in the store, sitting on the parent's
        top layer: see :meth:`Layers.apply`), and a history entry. ``layer=None`` records a config-only step
        (``empty_layer``), as ``CMD`` or ``ENV`` lines of a Dockerfile do."""
        base = self.get(parent) if parent is not None else None
        if tag is not None:
            tag = full_tag(tag)
        if layer is not None:
            want_parent = base.chain_ids[-1] if base is not None and base.chain_ids else None
            if layer.parent_chain_id != want_parent:
                raise ValueError(
                    f"layer {layer.chain_id[:19]} sits on {layer.parent_chain_id}, not on the parent image's top layer {want_parent}"
                )
        cfg = child_config(
            base._cfg() if base else None, layer.diff_id if layer else None, created_by=created_by, comment=comment,
            author=author, changes=changes, config=config, created=created,
        )
        with self._storage.transaction() as tx, tx.publishing() as pub:
            return self.publish(tx, pub, cfg, parent=base.id if base else None, tag=tag)

    def create_config(self, config: dict[str, Any], *, parent: str | Image | None = None) -> Image:
        """The image whose config is exactly ``config`` (written canonically; its layers must be in the
        store): e.g. the empty image a build ``FROM scratch`` starts from."""
        base = self.get(parent).id if parent is not None else None
        with self._storage.transaction() as tx, tx.publishing() as pub:
            return self.publish(tx, pub, encode_config(config), parent=base, tag=None)

    # ----- archives -----

    def save(
        self,
        refs: Refs,
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        format: str = "docker",
        compression: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """``docker save``: the images ``refs`` names into one archive (``format="docker"`` or ``"oci"``;
        layers plain unless ``compression`` is ``"gzip"`` or ``"zstd"``) at ``dest``, a path (written
        atomically) or a binary file object. See :mod:`ovlcore.archive`."""
        self._archiver(self).save(refs, dest, format=format, compression=compression, progress=progress)

    def load(self, source: str | os.PathLike[str] | IO[bytes], *, progress: ProgressCallback | None = None) -> builtins.list[Image]:
        """``docker load``: every image of a docker-archive or OCI layout (a tar, gzip/zstd tar, directory
        or binary file object), verified before anything becomes visible. See :mod:`ovlcore.archive`."""
        return self._archiver(self).load(source, progress=progress)

    # ----- registries -----

    def pull(self, ref: str, *, platform: str | None = None, auth: Any = None, progress: Any = None) -> Image:
        """``docker pull``: the image ``ref`` names (``[host[:port]/]path[:tag][@sha256:...]``, Docker's
        defaults) for ``platform`` (``"linux/arm64/v8"``; default this host's). Layers the store has are
        not downloaded; the rest are streamed in, verified, and published with the image, its tag and
        repo digest in one transaction. See :mod:`ovlcore.registry`."""
        return self._remote().pull(ref, platform=platform, auth=auth, progress=progress)

    def push(
        self, src: str | Image, dest: str | None = None, *, auth: Any = None, format: str = "docker",
        compression: str = "gzip", progress: Any = None,
    ) -> str:
        """``docker push``: the image ``src`` to ``dest`` (default: ``src``'s name), as a Docker schema 2
        (``format="docker"``) or OCI manifest, layers compressed with ``gzip`` or ``zstd``. Blobs the
        registry has are not sent. Returns the manifest digest."""
        return self._remote().push(src, dest, auth=auth, format=format, compression=compression, progress=progress)

    # ----- builds -----

    def build(
        self,
        context: str | os.PathLike[str],
        *,
        dockerfile: str | os.PathLike[str] = "Dockerfile",
        tag: str | builtins.list[str] | None = None,
        build_args: dict[str, str] | None = None,
        target: str | None = None,
        labels: dict[str, str] | None = None,
        no_cache: bool = False,
        pull: bool = False,
        network: str = "none",
        runtime: str | None = None,
        progress: Callable[[str], None] | None = None,
        platform: str | None = None,
        source_date_epoch: int | None = None,
    ) -> Image:
        """``docker build``: the image the Dockerfile ``dockerfile`` (relative to ``context``, as docker-py;
        an absolute path is taken as is) describes, tagged ``tag``. ``RUN`` steps run through the OCI
        runtime ``runtime`` (``runc``/``crun`` found on PATH when ``None``); ``progress`` receives the
        output lines ``docker build`` prints. See :mod:`ovlcore.build`."""
        if self._builder is None:
            raise RuntimeError("these images were made without a builder")
        return self._builder(self).build(
            context, dockerfile=dockerfile, tag=tag, build_args=build_args, target=target, labels=labels,
            no_cache=no_cache, pull=pull, network=network, runtime=runtime, progress=progress, platform=platform,
            source_date_epoch=source_date_epoch,
        )

    def fetch_url(self, url: str, dest: str | os.PathLike[str]) -> tuple[str, int, str | None]:
        """``GET url`` with the registries' HTTP client into the new file ``dest``: (sha256 digest, size,
        ``Last-Modified`` header), as a build's ``ADD <url>`` needs it."""
        return self._remote().fetch(url, dest)

    def _remote(self) -> Transfers:
        if self._transfers is None:
            raise RuntimeError("these images were made without registry access")
        return self._transfers(self)

    # ----- tags -----

    def tag(self, ref: str | Image, new_ref: str) -> None:
        """Give the image ``ref`` names the tag ``new_ref`` (moved from any image that had it)."""
        tag = full_tag(new_ref)
        with self._storage.transaction() as tx, tx.publishing() as pub:
            image_id, _ = self.resolve(ref, pub.records)
            pub.set_tag(tag, image_id)

    # ----- removing -----

    def remove(self, ref: str | Image, *, force: bool = False) -> builtins.list[str]:
        """``docker rmi``: untag ``name:tag``; delete the image when its last tag goes or when removed by id
        (``ImageInUse`` while a container uses it, unless ``force``, which then only untags). Returns the
        lines Docker prints (``Untagged: ...``, ``Deleted: ...``)."""
        out: builtins.list[str] = []
        with self._storage.transaction() as tx, tx.publishing() as pub:
            w = pub.records
            image_id, tag = self.resolve(ref, w)
            tags = w.tags_of(image_id)
            users = w.container_names_using_image(image_id)
            if tag is not None and len(tags) > 1:
                pub.remove_tag(tag)
                return [f"Untagged: {tag}"]
            if tag is None and len(tags) > 1 and not force:
                raise ImageInUse(
                    f"unable to delete {image_id[7:19]} (must be forced): image is referenced in multiple repositories ({', '.join(tags)})"
                )
            if users and not force:
                raise ImageInUse(
                    f"unable to remove image {tag or image_id[7:19]}: it is used by container(s) {', '.join(users)}"
                )
            for t in tags:
                pub.remove_tag(t)
                out.append(f"Untagged: {t}")
            if not users:
                rec = w.image(image_id)
                pub.remove_image(image_id)
                out.append(f"Deleted: {image_id}")
                if rec is not None:
                    pub.collect_layers(builtins.list(rec.chain_ids))
        return out

    def prune(self, *, all: bool = False) -> PruneReport:
        """Remove dangling images (no tag) that no container uses; with ``all``, every unused image."""
        report = PruneReport()
        with self._storage.transaction() as tx, tx.publishing() as pub:
            w = pub.records
            tags = w.tags()
            tagged = set(tags.values())
            # An untagged image that other images were built from is not dangling (as in Docker).
            in_use = w.images_in_use()
            # Removing a dangling image can leave its untagged parent dangling (a build's intermediate
            # steps): go on until nothing more is dangling, as Docker removes the whole chain.
            while True:
                parents = w.image_parents()
                removed = False
                for rec in w.images():
                    if rec.id in in_use or (not all and (rec.id in tagged or rec.id in parents)):
                        continue
                    for t in [t for t, i in tags.items() if i == rec.id]:
                        pub.remove_tag(t)
                        report.deleted.append(f"untagged: {t}")
                    pub.remove_image(rec.id)
                    removed = True
                    report.deleted.append(rec.id)
                    report.space_reclaimed += sum(layer.size for layer in pub.collect_layers(builtins.list(rec.chain_ids)))
                if not removed:
                    return report
