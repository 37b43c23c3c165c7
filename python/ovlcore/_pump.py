"""Moving a stream's bytes to a writer with reading and writing overlapped.

The core produces a tar stream without the GIL, and writing to a file releases it too: with one helper
thread doing the writes, the next chunk is produced while the previous one is written, so the two run on
two cores instead of one after the other.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

__all__ = ["copy"]

CHUNK = 4 << 20


def copy(
    read: Callable[[int], bytes],
    write: Callable[[bytes], Any],
    *,
    size: int | None = None,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy from ``read`` to ``write`` until the end, or exactly ``size`` bytes (``EOFError`` if fewer
    come). Returns the byte count; ``progress`` (called in this thread) gets the running count."""
    done = 0
    pending: concurrent.futures.Future[Any] | None = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ovlcore-write") as pool:
        try:
            while size is None or done < size:
                data = read(chunk if size is None else min(chunk, size - done))
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
