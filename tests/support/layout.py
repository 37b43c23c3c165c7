"""The overlay on-disk format of layer and writable-layer directories: whiteouts (character devices
0/0), opaque directories (an xattr whose name depends on the metadata convention)."""

from __future__ import annotations

import errno
import os
import stat

import ovlcore

from .trees import kind_of


def is_whiteout(path: str | os.PathLike[str]) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque_xattr(privilege: str) -> str:
    return "trusted.overlay.opaque" if privilege == "root" else "user.overlay.opaque"


def is_opaque(path: str | os.PathLike[str], privilege: str) -> bool:
    try:
        return os.getxattr(path, opaque_xattr(privilege), follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return False
        raise


def upper_markers(upper: str | os.PathLike[str], privilege: str = "root") -> dict[str, str]:
    """Every entry of a writable (or layer) directory: ``"whiteout"``, ``"opaque"`` (an opaque
    directory), ``"dir"`` or the entry's kind."""
    upper = os.fspath(upper)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for n in dirnames + filenames:
            hp = os.path.join(dirpath, n)
            rel = "/" + os.path.relpath(hp, upper)
            if is_whiteout(hp):
                out[rel] = "whiteout"
            elif os.path.isdir(hp) and not os.path.islink(hp):
                out[rel] = "opaque" if is_opaque(hp, privilege) else "dir"
            else:
                out[rel] = kind_of(os.lstat(hp).st_mode)
    return out


def upper_tree(c: ovlcore.Container) -> list[str]:
    """Relative paths present in a container's writable layer."""
    out = []
    for dirpath, dirnames, filenames in os.walk(c.upper):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), c.upper))
    return sorted(out)
