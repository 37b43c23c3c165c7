"""Images: an OCI image config naming a stack of layers, plus tags.

``images/<id hex>/config.json`` holds the exact config bytes (the id is their sha256) and ``image.json``
what only this store knows (the parent image a commit started from). Tags live in ``repositories.json``.
"""

from __future__ import annotations

import builtins

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import _ovlcore
from ._changes import apply_changes
from ._storage import Staging, read_json, write_json
from .errors import AmbiguousReference, ImageInUse, ImageNotFound, InvalidReference, LayerNotFound
from .layers import Layer, ProgressCallback, Source
from .references import full_tag, is_id_prefix, normalize_id

if TYPE_CHECKING:
    from .fs import ContainerFS
    from .store import PruneReport, Store

__all__ = ["Image", "Images", "HistoryEntry", "format_time", "parse_time"]


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as image configs write it."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    """Parse RFC 3339 times, including Go's nanosecond precision."""
    s = s.strip().replace("Z", "+00:00")
    if "." in s:
        head, _, rest = s.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        s = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    t = datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def encode_config(config: dict[str, Any]) -> bytes:
    """The canonical bytes of a config this store writes (sorted keys, no spaces)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


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

    def __init__(self, store: Store, image_id: str, config_bytes: bytes, meta: dict[str, Any]) -> None:
        self._store = store
        self.id = image_id
        self._config_bytes = config_bytes
        self._meta = meta
        self._config: dict[str, Any] | None = None
        self._fs: ContainerFS | None = None

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id, as Docker shows it."""
        return self.id.removeprefix("sha256:")[:12]

    @property
    def config(self) -> dict[str, Any]:
        """The OCI image config (a copy: edit with commit ``changes``)."""
        copy: dict[str, Any] = json.loads(json.dumps(self._cfg()))
        return copy

    @property
    def config_bytes(self) -> bytes:
        """The exact bytes of the config (its sha256 is the id)."""
        return self._config_bytes

    @property
    def diff_ids(self) -> builtins.list[str]:
        """The diff ids of the layers, bottom first."""
        return list((self._cfg().get("rootfs") or {}).get("diff_ids") or [])

    def _cfg(self) -> dict[str, Any]:
        if self._config is None:
            loaded: dict[str, Any] = json.loads(self._config_bytes)
            self._config = loaded
        return self._config

    @property
    def chain_ids(self) -> builtins.list[str]:
        """Chain ids of the layers, bottom first."""
        out: builtins.list[str] = []
        for d in self.diff_ids:
            out.append(_ovlcore.chain_id(out[-1] if out else None, d))
        return out

    @property
    def created(self) -> datetime:
        """When the image was made (UTC), from its config."""
        c = self._cfg().get("created")
        return parse_time(c) if c else datetime.fromtimestamp(0, timezone.utc)

    @property
    def parent_id(self) -> str | None:
        """The local image a commit or build step started from, if known."""
        p = self._meta.get("parent")
        return str(p) if p else None

    @property
    def tags(self) -> builtins.list[str]:
        """The ``name:tag`` references pointing at this image, sorted."""
        return self._store.images._tags_of(self.id)

    @property
    def layers(self) -> builtins.list[Layer]:
        """The layers, bottom first."""
        out = []
        for chain in self.chain_ids:
            try:
                out.append(self._store.layers.get(chain))
            except LayerNotFound:
                raise LayerNotFound(f"image {self.short_id} is missing layer {chain}") from None
        return out

    def stack_paths(self) -> builtins.list[str]:
        """The content directories of the layers, top first (no record needs reading: chain ids name them)."""
        return [str(self._store._layout.layer(c) / "diff") for c in reversed(self.chain_ids)]

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
        from .fs import ContainerFS

        if self._fs is None:
            self._fs = ContainerFS.for_image(self)
        return self._fs

    def history(self) -> builtins.list[HistoryEntry]:
        """``docker history``: one entry per build step, newest first, with the id of the local image each
        step produced where this store knows it (``<missing>`` elsewhere)."""
        cfg = self._cfg()
        layers = self.layers
        rows: builtins.list[dict[str, Any]] = []
        n = 0
        for h in cfg.get("history") or []:
            size = 0
            if not h.get("empty_layer"):
                if n < len(layers):
                    size = layers[n].size
                n += 1
            rows.append({"h": h, "size": size})
        rows.reverse()
        ids: builtins.list[str] = []
        img: Image | None = self
        while img is not None and len(ids) < len(rows):
            ids.append(img.id)
            pid = img.parent_id
            img = self._store.images._maybe(pid) if pid else None
        out = []
        for i, row in enumerate(rows):
            h = row["h"]
            iid = ids[i] if i < len(ids) else "<missing>"
            out.append(
                HistoryEntry(
                    id=iid,
                    created=parse_time(h["created"]) if h.get("created") else None,
                    created_by=str(h.get("created_by", "")),
                    size=row["size"],
                    comment=str(h.get("comment", "")),
                    empty_layer=bool(h.get("empty_layer", False)),
                    tags=self._store.images._tags_of(iid) if iid != "<missing>" else [],
                )
            )
        return out

    def tag(self, ref: str) -> None:
        """Give this image the tag ``ref`` (moved from any image that had it)."""
        self._store.images.tag(self.id, ref)

    def remove(self, force: bool = False) -> builtins.list[str]:
        """``docker rmi`` of this image by id (see :meth:`Images.remove`)."""
        return self._store.images.remove(self.id, force=force)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<Image {self.id[:19]} tags={self.tags!r}>"


class Images:
    """``store.images``: import, look up, tag, remove, save and load images."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # ----- reading -----

    def _repositories(self) -> dict[str, str]:
        try:
            data = read_json(self._store._layout.repositories)
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _tags_of(self, image_id: str) -> builtins.list[str]:
        return sorted(t for t, i in self._repositories().items() if i == image_id)

    def _maybe(self, image_id: str) -> Image | None:
        d = self._store._layout.image(image_id)
        try:
            with open(d / "config.json", "rb") as f:
                config = f.read()
            meta = read_json(d / "image.json")
        except FileNotFoundError:
            return None
        return Image(self._store, "sha256:" + d.name, config, meta)

    def _ids(self) -> builtins.list[str]:
        try:
            return ["sha256:" + n for n in sorted(os.listdir(self._store._layout.images)) if len(n) == 64]
        except FileNotFoundError:
            return []

    def _resolve(self, ref: str) -> tuple[str, str | None]:
        """(image id, the tag ``ref`` named or None)."""
        if isinstance(ref, Image):
            return ref.id, None
        if not isinstance(ref, str) or not ref:
            raise InvalidReference(f"invalid image reference {ref!r}")
        repos = self._repositories()
        if ref.startswith("sha256:") or (is_id_prefix(ref) and len(ref) == 64):
            hexpart = normalize_id(ref)
            if not is_id_prefix(ref):
                raise InvalidReference(f"invalid image id {ref!r}")
            if len(hexpart) == 64:
                if self._maybe(hexpart) is None:
                    raise ImageNotFound(f"No such image: {ref}")
                return "sha256:" + hexpart, None
            return self._by_prefix(ref, hexpart), None
        # A name first (as Docker does), then an id prefix.
        try:
            tag = full_tag(ref)
        except InvalidReference:
            if is_id_prefix(ref):
                return self._by_prefix(ref, normalize_id(ref)), None
            raise
        if tag in repos:
            return repos[tag], tag
        if is_id_prefix(ref):
            return self._by_prefix(ref, normalize_id(ref)), None
        raise ImageNotFound(f"No such image: {tag}")

    def _by_prefix(self, ref: str, hexpart: str) -> str:
        matches = [i for i in self._ids() if i.removeprefix("sha256:").startswith(hexpart)]
        if not matches:
            raise ImageNotFound(f"No such image: {ref}")
        if len(matches) > 1:
            raise AmbiguousReference(f"image id prefix {ref!r} is ambiguous: it matches {len(matches)} images")
        return matches[0]

    def get(self, ref: str | Image) -> Image:
        """An image by ``name:tag``, ``name`` (``:latest``), full id, or unique id prefix (4+ hex)."""
        with self._store._lock.shared():
            image_id, _ = self._resolve(ref)  # type: ignore[arg-type]
            img = self._maybe(image_id)
        if img is None:
            raise ImageNotFound(f"No such image: {ref}")
        return img

    def list(self) -> builtins.list[Image]:
        """Every image (newest first)."""
        with self._store._lock.shared():
            imgs = [img for i in self._ids() if (img := self._maybe(i)) is not None]
        imgs.sort(key=lambda i: i.created, reverse=True)
        return imgs

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
        """``docker import``: a one-layer base image from a root file system archive (tar, gzip or zstd)."""
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
        layers = self._store.layers
        with layers._stage(source, parent=base.top_layer if base else None, progress=progress, max_size=max_size) as staged:
            config = self._child_config(base, staged.diff_id, created_by=created_by, comment=comment, author=author, changes=changes)
            with self._stage_image(config, base.id if base else None) as st:
                with self._store._lock.exclusive():
                    layers._publish_locked(staged, retain=False)
                    return self._publish_locked(st, config, tag)

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
        cfg = self._child_config(
            base, layer.diff_id if layer else None, created_by=created_by, comment=comment, author=author, changes=changes, config=config
        )
        return self._add(cfg, parent=base.id if base else None, tag=tag)

    def _child_config(
        self,
        base: Image | None,
        diff_id: str | None,
        *,
        created_by: str,
        comment: str,
        author: str | None,
        changes: builtins.list[str] | None,
        config: dict[str, Any] | None = None,
    ) -> bytes:
        """The config of ``base`` + one step: a layer ``diff_id`` (or none: ``empty_layer``) and history."""
        now = datetime.now(timezone.utc)
        if base is not None:
            cfg = base.config
        else:
            cfg = {"architecture": _arch(), "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        if config is not None:
            cfg["config"] = dict(config)
        apply_changes(cfg.setdefault("config", {}), changes)
        cfg["created"] = format_time(now)
        entry: dict[str, Any] = {"created": cfg["created"], "created_by": created_by}
        if comment:
            entry["comment"] = comment
        if author:
            entry["author"] = author
            cfg["author"] = author
        if diff_id is None:
            entry["empty_layer"] = True
        else:
            cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []}).setdefault("diff_ids", []).append(diff_id)
        cfg.setdefault("history", []).append(entry)
        return encode_config(cfg)

    def _stage_image(self, config: bytes, parent: str | None) -> Staging:
        st = Staging(self._store._layout)
        try:
            (st.path / "config.json").write_bytes(config)
            write_json(st.path / "image.json", {"parent": parent, "added": format_time(datetime.now(timezone.utc))})
        except BaseException:
            st.close()
            raise
        return st

    def _publish_locked(self, st: Staging, config: bytes, tag: str | None) -> Image:
        """Publish a staged image (unless the store has it) and tag it; the caller holds the store lock.
        Every layer the config names must be in the store."""
        store = self._store
        image_id = _ovlcore.sha256(config)
        meta = read_json(st.path / "image.json")
        img = Image(store, image_id, config, meta)
        for chain in img.chain_ids:
            if not store._layout.layer(chain).exists():
                raise LayerNotFound(f"layer {chain} of the new image is not in the store")
        dest = store._layout.image(image_id)
        if not dest.exists():
            st.publish(dest)
        if tag is not None:
            self._set_tag(tag, image_id)
        return img

    def _add(self, config: bytes, *, parent: str | None, tag: str | None) -> Image:
        """Publish an image record for ``config`` (whose layers are all in the store)."""
        with self._stage_image(config, parent) as st:
            with self._store._lock.exclusive():
                return self._publish_locked(st, config, tag)

    # ----- archives -----

    def save(
        self,
        refs: str | Image | builtins.list[str | Image],
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        format: str = "docker",
        compression: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """``docker save``: the images ``refs`` names into one archive (``format="docker"`` or ``"oci"``;
        layers plain unless ``compression`` is ``"gzip"`` or ``"zstd"``) at ``dest``, a path (written
        atomically) or a binary file object. See :mod:`ovlcore.archive`."""
        from .archive import save

        save(self._store, refs, dest, format=format, compression=compression, progress=progress)

    def load(self, source: str | os.PathLike[str] | IO[bytes], *, progress: ProgressCallback | None = None) -> builtins.list[Image]:
        """``docker load``: every image of a docker-archive or OCI layout (a tar, gzip/zstd tar, directory
        or binary file object), verified before anything becomes visible. See :mod:`ovlcore.archive`."""
        from .archive import load

        return load(self._store, source, progress=progress)

    # ----- tags -----

    def _set_tag(self, tag: str, image_id: str) -> None:
        """Point ``tag`` at ``image_id`` (store lock held exclusively)."""
        repos = self._repositories()
        repos[tag] = image_id
        write_json(self._store._layout.repositories, repos)

    def tag(self, ref: str | Image, new_ref: str) -> None:
        """Give the image ``ref`` names the tag ``new_ref`` (moved from any image that had it)."""
        tag = full_tag(new_ref)
        with self._store._lock.exclusive():
            image_id, _ = self._resolve(ref)  # type: ignore[arg-type]
            self._set_tag(tag, image_id)

    # ----- removing -----

    def remove(self, ref: str | Image, *, force: bool = False) -> builtins.list[str]:
        """``docker rmi``: untag ``name:tag``; delete the image when its last tag goes or when removed by id
        (``ImageInUse`` while a container uses it, unless ``force``, which then only untags). Returns the
        lines Docker prints (``Untagged: ...``, ``Deleted: ...``)."""
        store = self._store
        out: builtins.list[str] = []
        trash: builtins.list[tuple[Path, int]] = []
        with store._lock.exclusive():
            image_id, tag = self._resolve(ref)  # type: ignore[arg-type]
            repos = self._repositories()
            tags = sorted(t for t, i in repos.items() if i == image_id)
            users = store._containers_using(image_id)
            if tag is not None and len(tags) > 1:
                del repos[tag]
                write_json(store._layout.repositories, repos)
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
                del repos[t]
                out.append(f"Untagged: {t}")
            if tags:
                write_json(store._layout.repositories, repos)
            if not users:
                img = self._maybe(image_id)
                trash.extend(store._delete_image(image_id))
                out.append(f"Deleted: {image_id}")
                if img is not None:
                    trash.extend(store._unused_layers(img.chain_ids))
        store._empty(trash)
        return out

    def prune(self, *, all: bool = False) -> PruneReport:
        """Remove dangling images (no tag) that no container uses; with ``all``, every unused image."""
        from .store import PruneReport

        store = self._store
        deleted: builtins.list[str] = []
        reclaimed = 0
        trash: builtins.list[tuple[Path, int]] = []
        with store._lock.exclusive():
            repos = self._repositories()
            tagged = set(repos.values())
            # An untagged image that other images were built from is not dangling (as in Docker).
            parents = {img.parent_id for i in self._ids() if (img := self._maybe(i)) is not None and img.parent_id}
            for image_id in self._ids():
                if store._containers_using(image_id):
                    continue
                if image_id in tagged and not all:
                    continue
                if image_id in parents and not all:
                    continue
                img = self._maybe(image_id)
                if img is None:
                    continue
                for t in [t for t, i in repos.items() if i == image_id]:
                    del repos[t]
                    deleted.append(f"untagged: {t}")
                trash.extend(store._delete_image(image_id))
                deleted.append(image_id)
                removed_layers = store._unused_layers(img.chain_ids)
                reclaimed += sum(s for _, s in removed_layers)
                trash.extend(removed_layers)
            write_json(store._layout.repositories, repos)
        store._empty(trash)
        return PruneReport(deleted=deleted, space_reclaimed=reclaimed)

