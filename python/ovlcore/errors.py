"""The exceptions of ovlcore.

File-system errors are the standard :class:`OSError` subclasses (``FileNotFoundError``, ...) carrying the
container path in ``.filename``; everything else derives from :class:`OvlError`.
"""

from __future__ import annotations

__all__ = [
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
    "InvalidReference",
    "AmbiguousReference",
    "CorruptStore",
]


class OvlError(Exception):
    """Base class of every ovlcore error that is not an ``OSError``."""


class NotFound(OvlError, LookupError):
    """A named object does not exist."""


class ImageNotFound(NotFound):
    """No image matches the reference."""


class ContainerNotFound(NotFound):
    """No container has that name or id."""


class VolumeNotFound(NotFound):
    """No volume has that name."""


class LayerNotFound(NotFound):
    """No layer has that chain id or diff id."""


class Conflict(OvlError):
    """The operation conflicts with the state of the store."""


class NameConflict(Conflict):
    """A name (container, volume) is already taken."""


class ImageInUse(Conflict):
    """The image is used by a container."""


class VolumeInUse(Conflict):
    """The volume is mounted by a container."""


class InvalidArchive(OvlError, ValueError):
    """A malformed or hostile archive: bad tar, entry escaping the root, digest mismatch, bad whiteout."""


class InvalidReference(OvlError, ValueError):
    """A malformed image reference, tag, name or id."""


class AmbiguousReference(InvalidReference):
    """An id prefix matches more than one object."""


class CorruptStore(OvlError):
    """The store's own data is damaged: records that cannot be read, or layer content that no longer
    matches what was recorded. Nothing the caller passed is at fault."""
