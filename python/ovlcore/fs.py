"""``ContainerFS``: the merged (union) file system of a container or image, through the Rust core.

Paths are absolute container paths. Symlinks resolve inside the container's root as under ``chroot``; mount
targets route to their volume or bind source. Errors are the standard ``OSError`` subclasses with the
container path in ``.filename``.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from . import _ovlcore

if TYPE_CHECKING:
    from .images import Image

__all__ = ["ContainerFS", "DirEntry"]


def _p(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"container paths are str, not {type(p).__name__}")
    return p if p.startswith("/") else "/" + p


class DirEntry:
    """An entry of :meth:`ContainerFS.scandir`, like :class:`os.DirEntry`."""

    __slots__ = ("name", "path", "_kind", "_fs", "_stat")

    def __init__(self, fs: ContainerFS, parent: str, name: str, kind: str) -> None:
        self.name = name
        self.path = parent.rstrip("/") + "/" + name
        self._kind = kind
        self._fs = fs
        self._stat: os.stat_result | None = None

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if self._kind == "symlink" and follow_symlinks:
            return self._fs.is_dir(self.path)
        return self._kind == "dir"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if self._kind == "symlink" and follow_symlinks:
            return self._fs.is_file(self.path)
        return self._kind == "file"

    def is_symlink(self) -> bool:
        return self._kind == "symlink"

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if follow_symlinks and self._kind == "symlink":
            return self._fs.stat(self.path)
        if self._stat is None:
            self._stat = self._fs.lstat(self.path)
        return self._stat

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class ContainerFS:
    """The merged view. Read methods work on images and containers; write methods on containers only
    (an image's file system is read-only: writes raise ``PermissionError`` with ``EROFS``)."""

    def __init__(self, view: _ovlcore.View, *, writable: bool, owner: str) -> None:
        self._view = view
        self._writable = writable
        self._owner = owner

    @classmethod
    def for_image(cls, image: Image) -> ContainerFS:
        top = image.top_layer
        lower = top.stack_paths() if top else []
        view = _ovlcore.View(lower, None, privilege=image._store.privilege)
        return cls(view, writable=False, owner=f"image {image.short_id}")

    def __repr__(self) -> str:
        return f"<ContainerFS of {self._owner}{'' if self._writable else ' (read-only)'}>"

    def _refuse(self, path: str) -> OSError:
        return PermissionError(errno.EROFS, f"Read-only file system ({self._owner})", path)

    # ----- reading -----

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
        """Like :func:`os.stat` (owner, mode and type as the image records them)."""
        return self._view.stat(_p(path), follow_symlinks)

    def lstat(self, path: str | os.PathLike[str]) -> os.stat_result:
        return self._view.stat(_p(path), False)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return self._view.kind(_p(path), True) is not None

    def lexists(self, path: str | os.PathLike[str]) -> bool:
        return self._view.kind(_p(path), False) is not None

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        return self._view.kind(_p(path), True) == "file"

    def is_dir(self, path: str | os.PathLike[str]) -> bool:
        return self._view.kind(_p(path), True) == "dir"

    def is_symlink(self, path: str | os.PathLike[str]) -> bool:
        return self._view.kind(_p(path), False) == "symlink"

    def listdir(self, path: str | os.PathLike[str] = "/") -> list[str]:
        """The merged directory's names, sorted."""
        return self._view.listdir(_p(path))

    def scandir(self, path: str | os.PathLike[str] = "/") -> Iterator[DirEntry]:
        p = _p(path)
        return iter([DirEntry(self, p, name, kind) for name, kind in self._view.scandir(p)])

    def walk(
        self,
        top: str | os.PathLike[str] = "/",
        topdown: bool = True,
        onerror: Callable[[OSError], Any] | None = None,
        followlinks: bool = False,
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk`."""
        stack: list[str | tuple[str, list[str], list[str]]] = [_p(top)]
        while stack:
            item = stack.pop()
            if isinstance(item, tuple):
                yield item
                continue
            try:
                entries = list(self.scandir(item))
            except OSError as e:
                if onerror is not None:
                    onerror(e)
                continue
            dirs = [e.name for e in entries if e.is_dir(follow_symlinks=followlinks)]
            files = [e.name for e in entries if not e.is_dir(follow_symlinks=followlinks)]
            base = item.rstrip("/")
            if topdown:
                yield item, dirs, files
                for d in reversed(dirs):
                    stack.append(f"{base}/{d}")
            else:
                stack.append((item, dirs, files))
                for d in reversed(dirs):
                    stack.append(f"{base}/{d}")

    def readlink(self, path: str | os.PathLike[str]) -> str:
        return self._view.readlink(_p(path))

    def open(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Like :func:`open`; returns a real file object. Opening an image file for writing copies it
        up into the container's writable layer first."""
        p = _p(path)
        flags = _flags_for(mode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            fd = self._open_write(p, flags)
        else:
            fd = self._view.open_read(p, True)
        try:
            f = io.open(fd, mode, buffering, encoding, errors, newline, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        return f

    def _open_write(self, path: str, flags: int) -> int:
        raise self._refuse(path)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        with self.open(path, "rb") as f:
            data: bytes = f.read()
            return data

    def read_text(self, path: str | os.PathLike[str], encoding: str | None = None, errors: str | None = None) -> str:
        with self.open(path, "r", encoding=encoding, errors=errors) as f:
            text: str = f.read()
            return text

    def getxattr(self, path: str | os.PathLike[str], attribute: str, *, follow_symlinks: bool = True) -> bytes:
        return self._view.getxattr(_p(path), attribute, follow_symlinks)

    def listxattr(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> list[str]:
        return self._view.listxattr(_p(path), follow_symlinks)


def _flags_for(mode: str) -> int:
    """The ``os.open`` flags of a :func:`open` mode string."""
    m = mode.replace("b", "").replace("t", "")
    plus = "+" in m
    m = m.replace("+", "")
    if len(m) != 1 or m not in "rwax":
        raise ValueError(f"invalid mode: {mode!r}")
    if m == "r":
        return os.O_RDWR if plus else os.O_RDONLY
    base = os.O_RDWR if plus else os.O_WRONLY
    return base | {"w": os.O_CREAT | os.O_TRUNC, "a": os.O_CREAT | os.O_APPEND, "x": os.O_CREAT | os.O_EXCL}[m]

