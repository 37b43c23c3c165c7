"""Where everything lives under a store root. This module alone knows the store's file names.

```
ROOT/store.json        format version and metadata convention
ROOT/metadata.db       the records (SQLite): layers, images, tags, containers, volumes
ROOT/lock              flock taken exclusively by every change to the records
ROOT/layers/<chain>/   diff/ (content, kernel overlayfs format), tar-split.zst
ROOT/images/<id>/      config.json (the exact config bytes)
ROOT/containers/<id>/  diff/ (writable layer), work/, scratch/, shared-inodes, mounted, merged/, empty/
ROOT/volumes/<name>/   _data/
ROOT/tmp/              staging: <tx>.lock + <tx>/ per transaction in progress
ROOT/trash/            deletions, removed after the store lock is released
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["FORMAT", "Layout", "LayerDir", "ImageDir", "ContainerDir", "VolumeDir", "Legacy"]

#: The store format this code writes. Format 1 kept every record in a JSON file; format 2 in metadata.db.
FORMAT = 2


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


@dataclass(frozen=True)
class LayerDir:
    """A layer's directory (published, or staged under ``tmp/``)."""

    path: Path

    @property
    def content(self) -> Path:
        """The layer's files in the kernel overlayfs format (a lowerdir)."""
        return self.path / "diff"

    @property
    def tarsplit(self) -> Path:
        """Header bytes of the imported tar, for a byte-identical re-export."""
        return self.path / "tar-split.zst"


@dataclass(frozen=True)
class ImageDir:
    path: Path

    @property
    def config(self) -> Path:
        """The exact bytes of the image config (their sha256 is the image id)."""
        return self.path / "config.json"


@dataclass(frozen=True)
class ContainerDir:
    path: Path

    @property
    def upper(self) -> Path:
        """The writable layer."""
        return self.path / "diff"

    @property
    def work(self) -> Path:
        """The kernel overlayfs work directory."""
        return self.path / "work"

    @property
    def scratch(self) -> Path:
        """Where copy-ups are built before being renamed into place."""
        return self.path / "scratch"

    @property
    def shared(self) -> Path:
        """Inodes shared with committed layers (copied before their next change)."""
        return self.path / "shared-inodes"

    @property
    def marker(self) -> Path:
        """Present while the kernel has the container mounted (holds the mount point)."""
        return self.path / "mounted"

    @property
    def merged(self) -> Path:
        """The default mount point."""
        return self.path / "merged"

    @property
    def empty(self) -> Path:
        """An empty lowerdir for an image without layers."""
        return self.path / "empty"


@dataclass(frozen=True)
class VolumeDir:
    path: Path

    @property
    def data(self) -> Path:
        """The volume's data (``docker volume inspect``'s Mountpoint)."""
        return self.path / "_data"


@dataclass(frozen=True)
class Legacy:
    """Format 1's record files, read only to migrate a store to format 2."""

    root: Path

    @property
    def repositories(self) -> Path:
        return self.root / "repositories.json"

    def layer_record(self, layer: LayerDir) -> Path:
        return layer.path / "layer.json"

    def image_record(self, image: ImageDir) -> Path:
        return image.path / "image.json"

    def container_record(self, container: ContainerDir) -> Path:
        return container.path / "container.json"

    def volume_record(self, volume: VolumeDir) -> Path:
        return volume.path / "volume.json"


class Layout:
    """Every path of a store rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.info = root / "store.json"
        self.db = root / "metadata.db"
        self.lock = root / "lock"
        self.layers = root / "layers"
        self.images = root / "images"
        self.containers = root / "containers"
        self.volumes = root / "volumes"
        self.tmp = root / "tmp"
        self.trash = root / "trash"
        #: Partial registry downloads, kept for a resume after the pulling process died.
        self.downloads = root / "downloads"
        self.legacy = Legacy(root)

    def dirs(self) -> list[Path]:
        return [self.layers, self.images, self.containers, self.volumes, self.tmp, self.trash, self.downloads]

    def layer(self, chain_id: str) -> LayerDir:
        return LayerDir(self.layers / _hex(chain_id))

    def image(self, image_id: str) -> ImageDir:
        return ImageDir(self.images / _hex(image_id))

    def container(self, container_id: str) -> ContainerDir:
        return ContainerDir(self.containers / container_id)

    def volume(self, name: str) -> VolumeDir:
        return VolumeDir(self.volumes / name)

    def download(self, digest: str) -> Path:
        """The partial download of the registry blob ``digest`` (its compressed bytes so far)."""
        return self.downloads / f"{_hex(digest)}.part"

    def object_path(self, kind: str, key: str) -> Path:
        """The published directory of the object ``key`` (chain id, image id, container id, volume name)."""
        if kind == "layer":
            return self.layer(key).path
        if kind == "image":
            return self.image(key).path
        if kind == "container":
            return self.container(key).path
        if kind == "volume":
            return self.volume(key).path
        raise ValueError(f"unknown object kind {kind!r}")

    def kind_dir(self, kind: str) -> Path:
        return {"layer": self.layers, "image": self.images, "container": self.containers, "volume": self.volumes}[kind]

    def key_of(self, kind: str, name: str) -> str:
        """The record key of the published directory ``name`` of ``kind``."""
        return "sha256:" + name if kind in ("layer", "image") else name
