"""The members of an archive being loaded, indexed and read by the core (a compressed archive, or a
stream, is first spooled into the store's ``tmp/``), and the progress of reading them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Union

from .. import _ovlcore
from .._store import Transaction
from ..errors import InvalidArchive

#: Metadata files (manifests, configs, index) larger than this are refused rather than read into memory.
MAX_METADATA = 64 << 20

LoadSource = Union[str, "os.PathLike[str]", IO[bytes]]
ProgressCallback = Callable[[int], None]


class Members:
    """Named members of an archive; ``progress`` gets the bytes of members read or skipped so far."""

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
        if size > MAX_METADATA:
            raise InvalidArchive(f"{what} {name!r} is {size} bytes: too large for a metadata file")
        data = self._members.read(name, MAX_METADATA)
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


def member_name(raw: str) -> str | None:
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
def open_members(tx: Transaction, source: LoadSource, progress: ProgressCallback | None) -> Iterator[Members]:
    """The archive behind ``source`` (a path to a tar, compressed tar or OCI layout directory, or a binary
    file object); what must be spooled goes into a staging directory of ``tx``."""
    if not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(f"load() takes a path or a binary file object, not {type(source).__name__}")
    spool = tx.stage() / "archive.tar"
    yield Members(_ovlcore.Archive(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source, spool=str(spool)), progress)
