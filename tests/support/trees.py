"""Describing file trees, to compare two of them or to prove one unchanged.

* :func:`fs_tree` / :func:`host_tree`: a merged view or a host directory as ``{"/path": Node}``, and
  :func:`compare_trees` for the differences between two such descriptions;
* :func:`snapshot`: everything about a host tree that must never change (raw lstat, inode, content, link
  target, xattrs), for "nothing was touched" checks;
* :func:`host_files`: a host tree as ``{path: content}``, for compact expectations.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ovlcore


def kind_of(mode: int) -> str:
    """The kind of file an ``st_mode`` says, by name."""
    return {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "char",
        stat.S_IFBLK: "block",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
    }[stat.S_IFMT(mode)]


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int | None  # files and symlinks
    mtime_ns: int
    rdev: int
    content: bytes | None = None  # files: sha256; symlinks: target
    children: tuple[str, ...] | None = None  # dirs: sorted names
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def core(self, *, times: bool = False, xattrs: bool = True) -> tuple[Any, ...]:
        t = (self.kind, self.mode, self.uid, self.gid, self.size, self.rdev, self.content, self.children)
        if xattrs:
            t += (self.xattrs,)
        if times:
            t += (self.mtime_ns,)
        return t


def _node(st: os.stat_result, content: bytes | None, children: list[str] | None, xattrs: dict[str, bytes]) -> Node:
    kind = kind_of(st.st_mode)
    return Node(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind in ("file", "symlink") else None,
        mtime_ns=st.st_mtime_ns,
        rdev=st.st_rdev if kind in ("char", "block") else 0,
        content=content,
        children=tuple(sorted(children)) if children is not None else None,
        xattrs=tuple(sorted(xattrs.items())),
    )


def fs_tree(fs: ovlcore.ContainerFS, top: str = "/", *, xattrs: bool = True) -> dict[str, Node]:
    """Every path below ``top`` of a ContainerFS (or image fs), without following symlinks."""
    out: dict[str, Node] = {}
    todo = [top]
    while todo:
        p = todo.pop()
        st = fs.lstat(p)
        kind = kind_of(st.st_mode)
        content: bytes | None = None
        children = None
        if kind == "file":
            content = hashlib.sha256(fs.read_bytes(p)).digest()
        elif kind == "symlink":
            content = fs.readlink(p).encode()
        elif kind == "dir":
            children = fs.listdir(p)
            todo.extend((p.rstrip("/") + "/" + n) for n in children)
        xa: dict[str, bytes] = {}
        if xattrs and kind in ("file", "dir"):
            for name in fs.listxattr(p, follow_symlinks=False):
                xa[name] = fs.getxattr(p, name, follow_symlinks=False)
        out[p] = _node(st, content, children, xa)
    return out


_INTERNAL_XATTR = ("trusted.overlay.", "user.overlay.", "user.containers.override_stat", "security.")


def host_tree(root: str | os.PathLike[str], *, xattrs: bool = True) -> dict[str, Node]:
    """The same description of a host directory (paths relative to ``root``, written as ``/...``)."""
    root = os.fspath(root)
    out: dict[str, Node] = {}
    todo = ["/"]
    while todo:
        p = todo.pop()
        hp = root + (p if p != "/" else "")
        st = os.lstat(hp or "/")
        kind = kind_of(st.st_mode)
        content: bytes | None = None
        children = None
        if kind == "file":
            with open(hp, "rb") as f:
                content = hashlib.sha256(f.read()).digest()
        elif kind == "symlink":
            content = os.readlink(hp).encode()
        elif kind == "dir":
            children = os.listdir(hp)
            todo.extend((p.rstrip("/") + "/" + n) for n in children)
        xa: dict[str, bytes] = {}
        if xattrs and kind in ("file", "dir"):
            for name in os.listxattr(hp, follow_symlinks=False):
                if not name.startswith(_INTERNAL_XATTR):
                    xa[name] = os.getxattr(hp, name, follow_symlinks=False)
        out[p] = _node(st, content, children, xa)
    return out


def compare_trees(a: dict[str, Node], b: dict[str, Node], *, times: bool = False, xattrs: bool = True,
                  names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Human-readable differences between two tree descriptions (empty: equal)."""
    problems = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            problems.append(f"{p}: only in {names[1]} ({b[p].kind})")
        elif p not in b:
            problems.append(f"{p}: only in {names[0]} ({a[p].kind})")
        # the root's times are those of the writable layer's directory (as with the kernel): not compared
        elif a[p].core(times=times and p != "/", xattrs=xattrs) != b[p].core(times=times and p != "/", xattrs=xattrs):
            problems.append(f"{p}: {names[0]}={a[p]} {names[1]}={b[p]}")
    return problems



def snapshot(root: str | os.PathLike[str], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``, ``root`` itself as ``"."`` (symlinks not followed; ``exclude``d subtrees
    skipped): the raw lstat (type and mode, owner, size, mtime, inode, device), the content digest or
    link target, and all xattrs."""
    root = os.fspath(root)
    skip = {os.path.abspath(p) for p in exclude}
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if os.path.abspath(os.path.join(dirpath, n)) not in skip]
        names = [n for n in dirnames + filenames if os.path.abspath(os.path.join(dirpath, n)) not in skip]
        for hp in [dirpath] * (dirpath == root) + [os.path.join(dirpath, n) for n in names]:
            st = os.lstat(hp)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(hp, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(hp)
            xa: tuple[tuple[str, bytes], ...] = ()
            if not stat.S_ISLNK(st.st_mode):
                xa = tuple(sorted((k, os.getxattr(hp, k, follow_symlinks=False)) for k in os.listxattr(hp, follow_symlinks=False)))
            out[os.path.relpath(hp, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, st.st_rdev, extra, xa,
            )
    return out


def host_files(root: Path) -> dict[str, str]:
    """``{relative path: "dir" | "link:TARGET" | file content}`` of a host tree (for compact asserts)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                out[rel] = Path(p).read_text(errors="replace")
    return out
