"""``docker cp`` between a container and the host, with Docker's path rules.

==========================  ========================  ==========================================
source                      destination               result
==========================  ========================  ==========================================
file                        missing path              file created there
file                        missing path ending ``/`` error (no such directory)
file                        existing file             overwritten
file                        existing directory        copied into it
directory                   missing path              created, with the contents
directory                   existing file             error
directory                   existing directory        the directory is copied into it
``directory/.``             existing directory        only the contents are copied into it
any                         path whose parent is gone error
symlink                     anywhere                  copied as a link (``follow_symlinks``: target)
==========================  ========================  ==========================================

Beyond Docker, a glob in the source's last component (``ctr:/shared/*.png``, ``/host/*.png``) copies every
match into an existing destination directory. The container side is only reached through the container's
merged view (see :mod:`ovlcore.fs`), so nothing outside its root and mounts is ever read or written.

``progress`` is called with the bytes of file content copied so far (at most every 20 ms, and once
with the total at the end). Out of a container, a directory's regular files are copied several at a
time: should one fail, others of its batch may already be there (as after any failed copy, what was
copied before stays).
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .containers import Containers
from .errors import InvalidReference
from .fs import ContainerFS

__all__ = ["copy", "split_spec"]

_MAGIC = ("*", "?", "[")


@dataclass
class _Side:
    #: The container's file system, or None for the host.
    fs: ContainerFS | None
    path: str


def split_spec(spec: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` → (container, path); a host path → (None, path). As in Docker, a host path
    containing ``:`` must start with ``/`` or ``.``."""
    if spec.startswith(("/", ".")) or ":" not in spec:
        return None, spec
    ref, _, path = spec.partition(":")
    if "/" in ref:
        return None, spec
    if not ref:
        raise InvalidReference(f"invalid copy spec {spec!r}: missing container name before ':'")
    return ref, path or "/"


def _side(containers: Containers, spec: str) -> _Side:
    ref, path = split_spec(spec)
    return _Side(containers.get(ref).fs if ref is not None else None, path)


def _has_magic(path: str) -> bool:
    return any(c in posixpath.basename(path.rstrip("/")) for c in _MAGIC)


def copy(
    containers: Containers,
    src: str,
    dst: str,
    *,
    follow_symlinks: bool = False,
    archive: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    s, d = _side(containers, src), _side(containers, dst)
    if s.fs is not None and d.fs is not None:
        raise ValueError("copying between containers is not supported")
    if s.fs is None and d.fs is None:
        raise ValueError("one side of a copy must be CONTAINER:PATH")
    if s.fs is not None:
        s.path = _abs(s.path)  # reading a mounted container is fine: only writes must go through the mount
    else:
        assert d.fs is not None
        d.path = _abs(d.path)
        d.fs.check_writable()

    if _has_magic(s.path):
        matches = _glob(s)
        if not matches:
            raise FileNotFoundError(errno.ENOENT, f"no match for {src}", src)
        if not _is_dir(d, d.path):
            raise NotADirectoryError(errno.ENOTDIR, "the destination of a glob copy must be an existing directory", dst)
        for m in matches:
            _copy_one(_Side(s.fs, m), d, follow_symlinks, archive, progress)
        return
    _copy_one(s, d, follow_symlinks, archive, progress)


def _abs(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _glob(s: _Side) -> list[str]:
    if s.fs is None:
        return sorted(glob.glob(s.path))
    parent = posixpath.dirname(s.path.rstrip("/")) or "/"
    pattern = posixpath.basename(s.path.rstrip("/"))
    fs = s.fs
    return [posixpath.join(parent, n) for n in fs.listdir(parent) if fnmatch.fnmatchcase(n, pattern)]


def _kind(side: _Side, path: str, follow: bool) -> str | None:
    """``"dir"``, ``"file"`` (any non-directory), or ``None`` when missing."""
    if side.fs is not None:
        try:
            mode = side.fs.view.stat(path, follow).st_mode
        except FileNotFoundError:
            return None
        return "dir" if stat.S_ISDIR(mode) else "file"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _is_dir(side: _Side, path: str) -> bool:
    return _kind(side, path, True) == "dir"


def _copy_one(
    s: _Side, d: _Side, follow: bool, archive: bool, progress: Callable[[int], None] | None
) -> None:
    contents = s.path.endswith("/.")
    src_path = (s.path[:-2] or "/") if contents else s.path
    src_kind = _kind(s, src_path, follow)
    if src_kind is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", src_path)
    if src_path.endswith("/") and src_path != "/" and src_kind != "dir":
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", src_path)
    if src_path.rstrip("/") in ("", "/"):
        contents = True
    if contents and src_kind != "dir":
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", src_path)

    dst_kind = _kind(d, d.path, True)
    name = posixpath.basename(src_path.rstrip("/"))
    if dst_kind == "dir":
        if contents:
            target, contents_into = d.path, True
        else:
            target, contents_into = posixpath.join(d.path, name), False
    elif dst_kind == "file":
        if src_kind == "dir":
            raise NotADirectoryError(errno.ENOTDIR, "cannot copy a directory to a file", d.path)
        target, contents_into = d.path, False
    else:
        if d.path.endswith("/") and src_kind != "dir":
            raise FileNotFoundError(errno.ENOENT, "destination directory does not exist", d.path)
        parent = posixpath.dirname(d.path.rstrip("/")) or "/"
        if _kind(d, parent, True) != "dir":
            raise FileNotFoundError(errno.ENOENT, "the destination's parent directory does not exist", parent)
        target, contents_into = d.path.rstrip("/") or "/", False
        if contents:
            # `dir/.` to a missing path: the directory is created with the contents.
            contents_into = False

    if s.fs is not None:
        view = s.fs.view
        host = os.path.abspath(target)
        if contents_into:
            view.copy_out(src_path, os.path.dirname(host), os.path.basename(host), follow_symlinks=follow, archive=archive, contents=True, progress=progress)
        else:
            parent, base = os.path.split(host.rstrip("/") or "/")
            view.copy_out(src_path, parent, base, follow_symlinks=follow, archive=archive, progress=progress)
    else:
        assert d.fs is not None
        view = d.fs.view
        host = os.path.abspath(src_path)
        parent, base = os.path.split(host.rstrip("/") or "/")
        if contents_into:
            view.copy_in(parent, base, target, follow_symlinks=follow, archive=archive, contents=True, progress=progress)
        else:
            view.copy_in(parent, base, target, follow_symlinks=follow, archive=archive, progress=progress)
