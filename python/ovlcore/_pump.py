"""Moving a tar stream's bytes to a file with producing and writing overlapped.

The core produces a tar stream without the GIL. To a real file (or pipe) the core writes it itself
(``TarStream.copy_to``: no Python objects per chunk, a writer thread so that the next chunk is produced
while the previous one is written); to any other binary file object, one helper thread does the writes
while this one reads, for the same overlap.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
from collections.abc import Callable
from typing import IO, Any

__all__ = ["copy"]

CHUNK = 4 << 20


def _fileno(dest: Any) -> int | None:
    """The descriptor behind ``dest`` when writing to it directly is the same as ``dest.write``."""
    raw = getattr(dest, "raw", dest)
    if isinstance(raw, io.FileIO) and not raw.closed and (raw is dest or isinstance(dest, (io.BufferedWriter, io.BufferedRandom))):
        return raw.fileno()
    return None


def copy(
    stream: Any,
    dest: IO[bytes],
    *,
    size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy ``stream`` (a core ``TarStream``, a :class:`~ovlcore.layers.TarReader`, or anything with
    ``read(n)``) to ``dest`` until its end, or exactly ``size`` bytes (``EOFError`` if fewer come).
    Returns the byte count; ``progress`` gets the running count."""
    core = getattr(stream, "_stream", stream)
    fd = _fileno(dest)
    if fd is not None and hasattr(core, "copy_to"):
        dest.flush()
        try:
            n: int = core.copy_to(fd, size, progress=progress)
        except Exception as e:
            if size is not None and "stream ended after" in str(e):
                raise EOFError(str(e)) from None
            raise
        # Let a buffered writer learn the new position (not possible, nor needed, on a pipe).
        with contextlib.suppress(OSError, ValueError):
            dest.seek(0, os.SEEK_CUR)
        return n
    return _threaded(stream.read, dest.write, size, progress)


def _threaded(
    read: Callable[[int], bytes], write: Callable[[bytes], Any], size: int | None, progress: Callable[[int], None] | None
) -> int:
    done = 0
    pending: concurrent.futures.Future[Any] | None = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ovlcore-write") as pool:
        try:
            while size is None or done < size:
                data = read(CHUNK if size is None else min(CHUNK, size - done))
                if not data:
                    if size is not None:
                        raise EOFError(f"stream ended after {done} of {size} bytes")
                    break
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, data)
                done += len(data)
                if progress is not None:
                    progress(done)
        finally:
            if pending is not None:
                pending.result()
    return done
