"""``ContainerFS``: the merged (union) file system of a container or image, through the Rust core.

Paths are absolute container paths. Symlinks resolve inside the container's root as under ``chroot``; mount
targets route to their volume or bind source. Errors are the standard ``OSError`` subclasses with the
container path in ``.filename``.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any

from . import _ovlcore

__all__ = ["ContainerFS", "DirEntry"]


#: The container path a ``str`` or ``os.PathLike`` names (relative paths from ``/``; ``TypeError`` for
#: anything else), as the ``View`` methods take container paths: methods that only hand a path on to
#: the view pass it as given.
_p = _ovlcore.container_path


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
        """Like :meth:`os.DirEntry.is_dir`."""
        if self._kind == "symlink" and follow_symlinks:
            return self._fs.is_dir(self.path)
        return self._kind == "dir"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        """Like :meth:`os.DirEntry.is_file`."""
        if self._kind == "symlink" and follow_symlinks:
            return self._fs.is_file(self.path)
        return self._kind == "file"

    def is_symlink(self) -> bool:
        """Like :meth:`os.DirEntry.is_symlink`."""
        return self._kind == "symlink"

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """Like :meth:`os.DirEntry.stat`."""
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

    def __init__(
        self,
        view: _ovlcore.View,
        *,
        writable: bool,
        owner: str,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self._view = view
        self._writable = writable
        self._owner = owner
        self._guard = guard

    @classmethod
    def of_layers(cls, stack: list[str], privilege: str, *, owner: str) -> ContainerFS:
        """The read-only merged view of layer content directories ``stack`` (top first)."""
        return cls(_ovlcore.View(stack, None, privilege=privilege), writable=False, owner=owner)

    @property
    def view(self) -> _ovlcore.View:
        """The core's view behind this file system (for operations such as ``cp`` that run in the core)."""
        return self._view

    def __repr__(self) -> str:
        return f"<ContainerFS of {self._owner}{'' if self._writable else ' (read-only)'}>"

    def check_writable(self, path: str = "/") -> None:
        """Raise unless writing is allowed now: ``PermissionError`` (EROFS) for an image, ``OSError``
        (EBUSY) while the container is mounted (kernel or FUSE: write through the mount)."""
        if not self._writable:
            raise PermissionError(errno.EROFS, f"Read-only file system ({self._owner})", path)
        if self._guard is not None:
            self._guard()

    def _w(self, path: str | os.PathLike[str]) -> str:
        """Check that writing is allowed and normalize the path."""
        p = _p(path)
        self.check_writable(p)
        return p

    # ----- reading -----

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
        """Like :func:`os.stat` (owner, mode and type as the image records them)."""
        return self._view.stat(path, follow_symlinks)

    def lstat(self, path: str | os.PathLike[str]) -> os.stat_result:
        """Like :func:`os.lstat`: a final symlink is not followed."""
        return self._view.stat(path, False)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` names something (symlinks followed)."""
        return self._view.kind(path, True) is not None

    def lexists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` names something (a final symlink counts, dangling or not)."""
        return self._view.kind(path, False) is not None

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a regular file (symlinks followed)."""
        return self._view.kind(path, True) == "file"

    def is_dir(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a directory (symlinks followed)."""
        return self._view.kind(path, True) == "dir"

    def is_symlink(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` itself is a symlink."""
        return self._view.kind(path, False) == "symlink"

    def listdir(self, path: str | os.PathLike[str] = "/") -> list[str]:
        """The merged directory's names, sorted."""
        return self._view.listdir(path)

    def scandir(self, path: str | os.PathLike[str] = "/") -> Iterator[DirEntry]:
        """Like :func:`os.scandir`: :class:`DirEntry` objects, sorted by name."""
        p = _p(path)
        return iter([DirEntry(self, p, name, kind) for name, kind in self._view.scandir(p)])

    def scandir_stat(self, path: str | os.PathLike[str] = "/") -> list[tuple[str, os.stat_result]]:
        """``(name, lstat)`` of every entry of a directory, sorted by name, read in one pass (the core
        resolves the directory once, not once per entry): for listings with details."""
        return self._view.scandir_stat(path)

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
            # As os.walk: a symlink to a directory is listed with the directories, entered only when
            # following links.
            dirs = [e.name for e in entries if e.is_dir()]
            files = [e.name for e in entries if not e.is_dir()]
            links = {e.name for e in entries if e.is_symlink()}
            base = item.rstrip("/")
            if not topdown:
                stack.append((item, dirs, files))
            else:
                yield item, dirs, files
            for d in reversed(dirs):
                if followlinks or d not in links:
                    stack.append(f"{base}/{d}")

    def readlink(self, path: str | os.PathLike[str]) -> str:
        """Like :func:`os.readlink`: a symlink's target as stored."""
        return self._view.readlink(path)

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
            fd = self._open_write(p, flags)  # the core refuses directories itself
        else:
            fd = self._view.open_read(p, True)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, "Is a directory", p)
        try:
            f = io.open(fd, mode, buffering, encoding, errors, newline, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        return f

    def _open_write(self, path: str, flags: int) -> int:
        return self._view.open_write(self._w(path), flags, 0o666)

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> int:
        """Write ``data`` to ``path`` (created or truncated); returns the bytes written."""
        with self.open(path, "wb") as f:
            return int(f.write(data))

    def write_text(
        self, path: str | os.PathLike[str], data: str, encoding: str | None = None, errors: str | None = None
    ) -> int:
        """Write ``data`` to ``path`` as text (created or truncated); returns the characters written."""
        with self.open(path, "w", encoding=encoding, errors=errors) as f:
            return int(f.write(data))

    # ----- writing (containers) -----

    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Like :meth:`pathlib.Path.mkdir`. A directory made where an image directory was deleted is opaque."""
        p = self._w(path)
        try:
            self._view.mkdir(p, mode)
        except FileNotFoundError:
            if not parents or p == "/":
                raise
            self.mkdir(os.path.dirname(p.rstrip("/")), mode, parents=True, exist_ok=True)
            self.mkdir(p, mode, parents=False, exist_ok=exist_ok)
        except FileExistsError:
            if not exist_ok or not self.is_dir(p):
                raise

    def makedirs(self, path: str | os.PathLike[str], mode: int = 0o777, exist_ok: bool = False) -> None:
        """Like :func:`os.makedirs`."""
        self.mkdir(path, mode, parents=True, exist_ok=exist_ok)

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Delete a non-directory; one that exists in the image leaves a whiteout."""
        self._view.remove(self._w(path))

    unlink = remove

    def rmdir(self, path: str | os.PathLike[str]) -> None:
        """Remove an empty directory (empty in the merged view); one from the image leaves a whiteout."""
        self._view.rmdir(self._w(path))

    def rmtree(self, path: str | os.PathLike[str]) -> None:
        """Delete a directory tree (one whiteout where it exists in the image, whatever its size)."""
        self._view.rmtree(self._w(path))

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        """Like :func:`os.rename`; directories from the image can be renamed too."""
        self._view.rename(self._w(src), self._w(dst))

    replace = rename

    def symlink(self, target: str, path: str | os.PathLike[str]) -> None:
        """Create ``path`` as a symlink to ``target`` (note the argument order, as :func:`os.symlink`)."""
        self._view.symlink(os.fspath(target), self._w(path))

    def link(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        """A hard link ``dst`` to ``src`` (copied up first if it comes from the image)."""
        self._view.link(self._w(src), self._w(dst))

    def chmod(self, path: str | os.PathLike[str], mode: int, *, follow_symlinks: bool = True) -> None:
        """Like :func:`os.chmod` (copies an image file up first)."""
        self._view.chmod(self._w(path), mode, follow_symlinks)

    def chown(self, path: str | os.PathLike[str], uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """Change owner (``-1`` keeps one). Works unprivileged: a rootless store records the owner in
        an xattr; a symlink cannot carry one there, so changing a symlink's own owner raises EPERM."""
        self._view.chown(self._w(path), uid, gid, follow_symlinks)

    def lchown(self, path: str | os.PathLike[str], uid: int, gid: int) -> None:
        """Change a symlink's own owner (see :meth:`chown`)."""
        self.chown(path, uid, gid, follow_symlinks=False)

    def utime(
        self,
        path: str | os.PathLike[str],
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """Like :func:`os.utime`: ``times`` (atime, mtime) in seconds or ``ns`` in nanoseconds; neither: now."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None:
            ns = (int(times[0] * 1e9), int(times[1] * 1e9))
        self._view.utime(self._w(path), ns, follow_symlinks)

    def truncate(self, path: str | os.PathLike[str], size: int) -> None:
        """Like :func:`os.truncate` (copies an image file up first)."""
        self._view.truncate(self._w(path), size)

    def setxattr(
        self, path: str | os.PathLike[str], attribute: str, value: bytes, flags: int = 0, *, follow_symlinks: bool = True
    ) -> None:
        """Like :func:`os.setxattr` (the store's own ``trusted.overlay.*``/override attributes are refused)."""
        self._view.setxattr(self._w(path), attribute, bytes(value), flags, follow_symlinks)

    def removexattr(self, path: str | os.PathLike[str], attribute: str, *, follow_symlinks: bool = True) -> None:
        """Like :func:`os.removexattr`."""
        self._view.removexattr(self._w(path), attribute, follow_symlinks)

    def mkfifo(self, path: str | os.PathLike[str], mode: int = 0o666) -> None:
        """Like :func:`os.mkfifo`."""
        self._view.mknod(self._w(path), "fifo", mode, 0)

    def mknod(self, path: str | os.PathLike[str], mode: int = 0o600, device: int = 0) -> None:
        """Like :func:`os.mknod` (``mode`` includes ``S_IFCHR``/``S_IFBLK``/``S_IFIFO``)."""
        kinds = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "char", stat.S_IFBLK: "block"}
        kind = kinds.get(stat.S_IFMT(mode))
        if kind is None:
            raise ValueError("mknod: mode must include S_IFIFO, S_IFCHR or S_IFBLK")
        self._view.mknod(self._w(path), kind, stat.S_IMODE(mode), device)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """The whole content of a file."""
        with self.open(path, "rb") as f:
            data: bytes = f.read()
            return data

    def read_text(self, path: str | os.PathLike[str], encoding: str | None = None, errors: str | None = None) -> str:
        """The whole content of a file, decoded."""
        with self.open(path, "r", encoding=encoding, errors=errors) as f:
            text: str = f.read()
            return text

    def getxattr(self, path: str | os.PathLike[str], attribute: str, *, follow_symlinks: bool = True) -> bytes:
        """Like :func:`os.getxattr` (``OSError`` ENODATA when absent)."""
        return self._view.getxattr(path, attribute, follow_symlinks)

    def listxattr(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> list[str]:
        """Like :func:`os.listxattr`, without the store's own attributes."""
        return self._view.listxattr(path, follow_symlinks)


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

