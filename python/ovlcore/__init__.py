"""ovlcore: Docker's data-storage model as a library.

Images are stacks of immutable, content-addressed layers; a container is those layers plus one writable
layer, seen through a union (overlay) view. ``commit`` turns a container's changes into a new layer,
``diff`` lists them, volumes and bind mounts keep data outside the layers, and ``cp`` moves files in and
out. Everything runs unprivileged, without a daemon, on a store directory any number of processes share.

>>> import ovlcore
>>> store = ovlcore.Store("/tmp/store")                       # doctest: +SKIP
>>> base = store.images.import_archive("rootfs.tar", tag="base:1")  # doctest: +SKIP
"""

from __future__ import annotations

from . import errors
from ._ovlcore import __version__
from .errors import (
    AmbiguousReference,
    BuildError,
    Conflict,
    CorruptStore,
    ContainerNotFound,
    ImageInUse,
    ImageNotFound,
    InvalidArchive,
    InvalidReference,
    LayerNotFound,
    NameConflict,
    NotFound,
    OvlError,
    RegistryError,
    TruncatedArchive,
    Unauthorized,
    VolumeInUse,
    VolumeNotFound,
)
from .containers import Change, Container, Containers, ContainerSize
from .fs import ContainerFS, DirEntry
from .images import HistoryEntry, Image, Images
from .layers import Layer, Layers
from .mounts import Mount
from .registry import RegistryConfig, TransferEvent
from .store import CheckReport, DiskUsage, PruneReport, Store
from .volumes import Volume, Volumes

__all__ = [
    "__version__",
    "Store",
    "Image",
    "Images",
    "HistoryEntry",
    "Layer",
    "Layers",
    "Container",
    "Containers",
    "Change",
    "ContainerSize",
    "Mount",
    "Volume",
    "Volumes",
    "ContainerFS",
    "DirEntry",
    "PruneReport",
    "CheckReport",
    "DiskUsage",
    "errors",
    "OvlError",
    "NotFound",
    "ImageNotFound",
    "ContainerNotFound",
    "VolumeNotFound",
    "LayerNotFound",
    "Conflict",
    "NameConflict",
    "ImageInUse",
    "VolumeInUse",
    "InvalidArchive",
    "TruncatedArchive",
    "CorruptStore",
    "InvalidReference",
    "AmbiguousReference",
    "BuildError",
    "RegistryError",
    "Unauthorized",
    "RegistryConfig",
    "TransferEvent",
]
