"""The exceptions of ovlcore.

File-system errors are the standard :class:`OSError` subclasses (``FileNotFoundError``, ...) carrying the
container path in ``.filename``; everything else derives from :class:`OvlError`. An exception raised by
code the caller hands to ovlcore (a source's ``read()``, a destination's ``write()``, a ``progress``
callback) is not wrapped: it reaches the caller as it was raised.
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
    "TruncatedArchive",
    "CorruptStore",
    "InvalidReference",
    "AmbiguousReference",
    "RegistryError",
    "Unauthorized",
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


class TruncatedArchive(InvalidArchive):
    """An archive or layer stream that ends too soon (a cut download, a partial copy). ``expected`` and
    ``got`` are the byte counts of what was cut short, where the format says them (else ``None``)."""

    def __init__(self, message: str, expected: int | None = None, got: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class CorruptStore(OvlError):
    """The store itself is damaged: records that cannot be read, a layer's files that no longer match
    its tar-split records or its recorded size, content that no longer hashes to its diff_id. Not the
    input's fault: raised while reading the store (``Layer.tar``, ``images.save``, the records)."""


class InvalidReference(OvlError, ValueError):
    """A malformed image reference, tag, name or id."""


class AmbiguousReference(InvalidReference):
    """An id prefix matches more than one object."""


class RegistryError(OvlError):
    """A registry answered with an error, or could not be reached. ``status`` is the HTTP status
    (``None`` when there was no answer), ``code`` the registry's error code (``MANIFEST_UNKNOWN``,
    ``BLOB_UNKNOWN``, ...) when it gave one."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class Unauthorized(RegistryError, PermissionError):
    """A registry refused the credentials (a wrong password, no credentials where some are needed)."""

    def __new__(cls, message: str, status: int | None = 401, code: str | None = "UNAUTHORIZED") -> Unauthorized:
        # OSError.__new__ would read (message, status, code) as (errno, strerror, filename).
        return PermissionError.__new__(cls, message)

    def __init__(self, message: str, status: int | None = 401, code: str | None = "UNAUTHORIZED") -> None:
        RegistryError.__init__(self, message, status, code)


class BuildError(OvlError):
    """A Dockerfile build failed: a syntax error, an unknown instruction, a missing or escaping ``COPY``
    source, a missing stage, a ``RUN`` step exiting non-zero. ``dockerfile`` and ``line`` name where (``line``
    is 1-based, ``None`` when the error is not about one line); a failed ``RUN`` also has ``exit_code`` and
    ``output`` (the tail of what the step printed)."""

    def __init__(
        self, message: str, *, dockerfile: str | None = None, line: int | None = None,
        exit_code: int | None = None, output: str = "",
    ) -> None:
        where = f"{dockerfile}:{line}: " if dockerfile and line else (f"{dockerfile}: " if dockerfile else "")
        super().__init__(where + message)
        self.message = message
        self.dockerfile = dockerfile
        self.line = line
        self.exit_code = exit_code
        self.output = output
