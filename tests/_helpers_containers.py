"""Shared helpers for the containers tests (test_containers_*.py).

Everything here generates its data in code: small OCI layer tars built with :mod:`tarfile`, a base image
and a child image with two more layers, and functions that describe a file tree (a ContainerFS, a host
directory, a layer directory's overlay markers) as plain dicts so that two trees can be compared.

Not a conftest: another branch owns ``tests/conftest.py``. Test modules import this one by path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pytest

import ovlcore

T0 = 1_600_000_000  # mtime of most image entries (whole seconds, as tars carry them)
IS_ROOT = os.geteuid() == 0
PRIVILEGES = ["root", "rootless"]

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, trusted.* xattrs)")


# --------------------------------------------------------------------------------------------------
# Layer tars
# --------------------------------------------------------------------------------------------------


@dataclass
class E:
    """One tar entry."""

    path: str
    kind: str = "f"  # f d l h (hard link) c (char dev) b (block dev) p (fifo)
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    link: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def layer_tar(entries: Iterable[E]) -> bytes:
    """A PAX tar of ``entries`` (in the order given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mtime = e.mtime
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            types = {
                "f": tarfile.REGTYPE,
                "d": tarfile.DIRTYPE,
                "l": tarfile.SYMTYPE,
                "h": tarfile.LNKTYPE,
                "c": tarfile.CHRTYPE,
                "b": tarfile.BLKTYPE,
                "p": tarfile.FIFOTYPE,
            }
            ti.type = types[e.kind]
            default_mode = {"d": 0o755, "l": 0o777}.get(e.kind, 0o644)
            ti.mode = default_mode if e.mode is None else e.mode
            if e.kind in ("l", "h"):
                ti.linkname = e.link
            if e.kind in ("c", "b"):
                ti.devmajor, ti.devminor = e.dev
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs.items()}
            if e.kind == "f":
                ti.size = len(e.data)
                t.addfile(ti, io.BytesIO(e.data))
            else:
                t.addfile(ti)
    return buf.getvalue()


BIG = bytes((i * 7 + i // 256) % 251 for i in range(20_000))

BASE = [
    E("bin/", "d"),
    E("bin/sh", data=b"#!/fake/shell\n" * 20, mode=0o755),
    E("etc/", "d"),
    E("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
    E("etc/group", data=b"root:x:0:\nuser:x:1000:\n"),
    E("etc/hostname", data=b"base\n"),
    E("etc/motd", data=b"welcome\n", mtime=T0 + 5),
    E("etc/secret", data=b"s3cr3t\n", mode=0o600, mtime=T0 + 7),
    E("etc/suid", data=b"\x7fELF-ish", mode=0o4755, mtime=T0 + 9),
    E("usr/", "d"),
    E("usr/bin/", "d"),
    E("usr/bin/a", data=b"hard linked\n", mode=0o755),
    E("usr/bin/b", "h", link="usr/bin/a", mode=0o755),
    E("usr/lib/", "d"),
    E("usr/lib/libx.so", data=b"\0libx" * 100, mode=0o755),
    E("usr/share/", "d"),
    E("usr/share/doc/", "d"),
    E("usr/share/doc/a.txt", data=b"doc a\n"),
    E("usr/share/doc/b.txt", data=b"doc b\n"),
    E("usr/share/doc/sub/", "d"),
    E("usr/share/doc/sub/deep.txt", data=b"deep\n"),
    E("lib", "l", link="usr/lib"),
    E("var/", "d"),
    E("var/log/", "d", mode=0o750, mtime=T0 + 11),
    E("home/", "d"),
    E("home/user/", "d", mode=0o750, uid=1000, gid=1000),
    E("home/user/.profile", data=b"export PS1='$ '\n", mode=0o640, uid=1000, gid=1000,
      xattrs={"user.note": b"hello", "user.other": b"x"}),
    E("dev/", "d"),
    E("dev/null", "c", mode=0o666, dev=(1, 3)),
    E("tmp/", "d", mode=0o1777),
    E("data/", "d"),
    E("data/big.bin", data=BIG, mtime=T0 + 13),
]

LAYER2 = [
    E("etc/", "d", mtime=T0 + 100),
    E("etc/motd", data=b"welcome to the child image\n", mtime=T0 + 100),
    E("etc/.wh.hostname"),
    E("usr/", "d"),
    E("usr/share/", "d"),
    E("usr/share/doc/", "d", mtime=T0 + 100),
    E("usr/share/doc/.wh..wh..opq"),
    E("usr/share/doc/c.txt", data=b"doc c (child)\n", mtime=T0 + 100),
    E("app/", "d", mtime=T0 + 100),
    E("app/main.py", data=b"print('hello')\n", mtime=T0 + 100),
]

LAYER3 = [
    E("app/", "d", mtime=T0 + 200),
    E("app/data/", "d", mtime=T0 + 200),
    E("app/data/x.bin", data=bytes(range(256)) * 4, mtime=T0 + 200),
    E("opt/", "d", mtime=T0 + 200),
    E("opt/tool", data=b"tool v1\n", mode=0o755, mtime=T0 + 200),
]


@dataclass
class Images:
    store: ovlcore.Store
    base: ovlcore.Image
    child: ovlcore.Image


def make_store(root: Path, privilege: str | None, monkeypatch: Any) -> ovlcore.Store:
    """A store with the given metadata convention (``None``: the process's default)."""
    if privilege is None:
        monkeypatch.delenv("OVLCORE_PRIVILEGE", raising=False)
    else:
        monkeypatch.setenv("OVLCORE_PRIVILEGE", privilege)
    store = ovlcore.Store(root)
    if privilege is not None:
        assert store.privilege == privilege
    return store


def make_images(store: ovlcore.Store) -> Images:
    """A base image (one layer) and a child image with two more layers."""
    base = store.images.import_archive(io.BytesIO(layer_tar(BASE)), tag="base:1", changes=["ENV PATH=/bin:/usr/bin", "CMD [\"/bin/sh\"]"])
    l2 = store.layers.apply(io.BytesIO(layer_tar(LAYER2)), parent=base.top_layer)
    mid = store.images.create(layer=l2, parent=base, tag="mid:1", created_by="RUN customize")
    l3 = store.layers.apply(io.BytesIO(layer_tar(LAYER3)), parent=l2)
    child = store.images.create(layer=l3, parent=mid, tag="child:1", created_by="RUN install tool")
    return Images(store, base, child)


# --------------------------------------------------------------------------------------------------
# Describing trees
# --------------------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
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
    kind = _kind(st.st_mode)
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
        kind = _kind(st.st_mode)
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
        kind = _kind(st.st_mode)
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


def snapshot_dir(root: str | os.PathLike[str]) -> dict[str, tuple[Any, ...]]:
    """Everything about a layer directory that must never change: per entry the raw lstat (type, mode,
    owner, size, mtime, inode, rdev), content digest, link target and *all* xattrs."""
    root = os.fspath(root)
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [*dirnames, *filenames, ""] if dirpath == root else [*dirnames, *filenames]:
            hp = os.path.join(dirpath, n) if n else dirpath
            st = os.lstat(hp)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(hp, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(hp)
            xa = ()
            if not stat.S_ISLNK(st.st_mode):
                xa = tuple(sorted((k, os.getxattr(hp, k, follow_symlinks=False)) for k in os.listxattr(hp, follow_symlinks=False)))
            out[os.path.relpath(hp, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, st.st_rdev, extra, xa,
            )
    return out


def opaque_xattr(privilege: str) -> str:
    return "trusted.overlay.opaque" if privilege == "root" else "user.overlay.opaque"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


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
            st = os.lstat(hp)
            rel = "/" + os.path.relpath(hp, upper)
            if is_whiteout(st):
                out[rel] = "whiteout"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "opaque" if is_opaque(hp, privilege) else "dir"
            else:
                out[rel] = _kind(st.st_mode)
    return out


# --------------------------------------------------------------------------------------------------
# docker diff, computed from the two merged trees (SEMANTICS.md / moby's naive ChangesDirs)
# --------------------------------------------------------------------------------------------------


def _stat_differs(old: Node, new: Node) -> bool:
    if (old.kind, old.mode, old.uid, old.gid, old.rdev) != (new.kind, new.mode, new.uid, new.gid, new.rdev):
        return True
    if new.kind != "dir" and (old.mtime_ns != new.mtime_ns or old.size != new.size):
        return True
    return False


def expected_diff(image: dict[str, Node], container: dict[str, Node]) -> list[tuple[str, str]]:
    """``docker diff`` of two tree descriptions (both rooted at ``/``), computed like moby's
    ``ChangesDirs`` (``FileInfo.addChanges``): sorted by path."""
    out: list[tuple[str, str]] = []

    def add_changes(path: str, new: Node, old: Node | None, added: bool) -> None:
        start = len(out)
        if old is None:
            out.append(("A", path))
            added = True
        # only recurse on the old directory if the new entry is a directory too
        old_children = set(old.children or ()) if (old is not None and new.kind == "dir") else set()
        for name in new.children or ():
            cp = path.rstrip("/") + "/" + name
            oc = image[cp] if name in old_children else None
            child_added = False
            if oc is not None:
                if _stat_differs(oc, container[cp]):
                    out.append(("C", cp))
                    child_added = True
                old_children.discard(name)
            add_changes(cp, container[cp], oc, child_added)
        for name in sorted(old_children):
            out.append(("D", path.rstrip("/") + "/" + name))
        if len(out) > start and new.kind == "dir" and not added and path != "/":
            out.insert(start, ("C", path))

    add_changes("/", container["/"], image["/"], False)
    return sorted(out, key=lambda kp: kp[1])


def diff_pairs(container: ovlcore.Container) -> list[tuple[str, str]]:
    return [(ch.kind, ch.path) for ch in container.diff()]


def assert_parents_first(changes: list[tuple[str, str]]) -> None:
    """Each directory before its children, and no path twice."""
    paths = [p for _, p in changes]
    assert len(paths) == len(set(paths)), f"a path is listed twice: {paths}"
    index = {p: i for i, p in enumerate(paths)}
    for p in paths:
        anc = os.path.dirname(p)
        while anc != "/":
            if anc in index:
                assert index[anc] < index[p], f"{anc} listed after its descendant {p}"
            anc = os.path.dirname(anc)


# --------------------------------------------------------------------------------------------------
# Tars produced by the store
# --------------------------------------------------------------------------------------------------


def read_all(stream: Any) -> bytes:
    chunks = []
    while True:
        b = stream.read(1 << 16)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def tar_model(layers: list[bytes]) -> dict[str, dict[str, Any]]:
    """Apply OCI layer tars one after the other (whiteouts and opaque markers as image-spec layer.md
    says) in memory: path -> {kind, mode, uid, gid, size, sha, link, mtime, xattrs, rdev}."""
    tree: dict[str, dict[str, Any]] = {"/": {"kind": "dir"}}

    def drop(prefix: str) -> None:
        for k in [k for k in tree if k == prefix or k.startswith(prefix.rstrip("/") + "/")]:
            if k != "/":
                del tree[k]

    for blob in layers:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as t:
            members = t.getmembers()
            # opaque markers first, wherever they stand in the tar
            for m in members:
                name = "/" + m.name.strip("/")
                base = os.path.basename(name)
                if base == ".wh..wh..opq":
                    d = os.path.dirname(name)
                    for k in [k for k in tree if k.startswith(d.rstrip("/") + "/") and k != d]:
                        del tree[k]
            for m in members:
                name = "/" + m.name.strip("/")
                base = os.path.basename(name)
                if base == ".wh..wh..opq":
                    continue
                if base.startswith(".wh."):
                    drop(os.path.join(os.path.dirname(name), base[4:]))
                    continue
                old = tree.get(name)
                if old is not None and not (old["kind"] == "dir" and m.isdir()):
                    drop(name)
                rec: dict[str, Any] = {
                    "mode": m.mode & 0o7777,
                    "uid": m.uid,
                    "gid": m.gid,
                    "mtime": int(m.mtime),
                    "xattrs": tuple(sorted((k[len("SCHILY.xattr."):], v.encode("utf-8", "surrogateescape"))
                                           for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))),
                }
                if m.isdir():
                    rec["kind"] = "dir"
                elif m.issym():
                    rec.update(kind="symlink", link=m.linkname)
                elif m.islnk():
                    target = tree["/" + m.linkname.strip("/")]
                    rec = dict(target)
                    rec["hardlink_of"] = "/" + m.linkname.strip("/")
                elif m.isreg():
                    data = t.extractfile(m).read()  # type: ignore[union-attr]
                    rec.update(kind="file", size=len(data), sha=hashlib.sha256(data).digest())
                elif m.ischr() or m.isblk():
                    rec.update(kind="char" if m.ischr() else "block", rdev=os.makedev(m.devmajor, m.devminor))
                elif m.isfifo():
                    rec["kind"] = "fifo"
                tree[name] = rec
    return tree


def model_of_fs(fs: ovlcore.ContainerFS) -> dict[str, dict[str, Any]]:
    """The same shape as :func:`tar_model`, read from a merged view (times in whole seconds)."""
    out: dict[str, dict[str, Any]] = {}
    for p, n in fs_tree(fs).items():
        if p == "/":
            out[p] = {"kind": "dir"}
            continue
        rec: dict[str, Any] = {"kind": n.kind, "mode": n.mode, "uid": n.uid, "gid": n.gid,
                               "mtime": n.mtime_ns // 1_000_000_000, "xattrs": n.xattrs}
        if n.kind == "file":
            rec.update(size=n.size, sha=n.content)
        elif n.kind == "symlink":
            rec["link"] = n.content.decode()  # type: ignore[union-attr]
        elif n.kind in ("char", "block"):
            rec["rdev"] = n.rdev
        out[p] = rec
    return out


def strip_links(model: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "hardlink_of"} for k, v in model.items()}


def gnu_tar_apply(root: Path, blob: bytes, tmp: Path) -> None:
    """Apply one OCI layer tar onto ``root`` with GNU tar: whiteouts and opaque markers handled first
    (rm), then everything else extracted with owners, modes, times and xattrs."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as t:
        members = t.getmembers()
    for m in members:
        name = m.name.strip("/")
        d, base = os.path.split(name)
        if base == ".wh..wh..opq":
            target = root / d
            if target.is_dir() and not target.is_symlink():
                for child in os.listdir(target):
                    _rm(target / child)
    for m in members:
        name = m.name.strip("/")
        d, base = os.path.split(name)
        if base.startswith(".wh.") and base != ".wh..wh..opq":
            _rm(root / d / base[4:])
        elif not base.startswith(".wh."):
            p = root / name
            if os.path.lexists(p):
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode) and not m.isdir():
                    shutil.rmtree(p)
                elif not stat.S_ISDIR(st.st_mode) and m.isdir():
                    os.unlink(p)
    f = tmp / f"layer-{hashlib.sha256(blob).hexdigest()[:12]}.tar"
    f.write_bytes(blob)
    subprocess.run(
        ["tar", "-x", "-f", str(f), "-C", str(root), "--numeric-owner", "--same-owner", "-p",
         "--xattrs", "--xattrs-include=*", "--exclude=.wh.*", "--no-overwrite-dir"],
        check=True, capture_output=True,
    )


def _rm(p: Path) -> None:
    if not os.path.lexists(p):
        return
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        os.unlink(p)


# --------------------------------------------------------------------------------------------------
# Kernel overlayfs
# --------------------------------------------------------------------------------------------------


def _probe_mount() -> str | None:
    """None when a kernel overlay mount works here, else the reason it does not."""
    if not IS_ROOT:
        return "kernel overlay mounts need root"
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ovl-probe-"))
    try:
        for s in ("l", "u", "w", "m"):
            (d / s).mkdir()
        r = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={d/'l'},upperdir={d/'u'},workdir={d/'w'}", str(d / "m")],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            return f"mount -t overlay refused: {r.stderr.strip()}"
        subprocess.run(["umount", str(d / "m")], check=True)
        return None
    finally:
        shutil.rmtree(d, ignore_errors=True)


_MOUNT_REASON: list[str | None] = []


def mount_refused() -> str | None:
    if not _MOUNT_REASON:
        _MOUNT_REASON.append(_probe_mount())
    return _MOUNT_REASON[0]


def kernel_mount(lowers_top_first: list[str], upper: str | None, work: str | None, target: str) -> None:
    opts = "lowerdir=" + ":".join(lowers_top_first)
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    opts += ",redirect_dir=off,index=off,metacopy=off"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, target], check=True, capture_output=True)


def kernel_umount(target: str) -> None:
    r = subprocess.run(["umount", target], capture_output=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", target], capture_output=True)


@contextlib.contextmanager
def kernel_overlay(lowers_top_first: list[str], tmp: Path, upper_src: str | None = None):  # type: ignore[no-untyped-def]
    """Mount the kernel's overlay of (copies of nothing: the given) lower dirs with a fresh upper (or a
    ``cp -a`` copy of ``upper_src``); yields (merged, upper)."""
    tmp.mkdir(parents=True, exist_ok=True)
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    for p in (work, merged):
        p.mkdir()
    if upper_src is not None:
        subprocess.run(["cp", "-a", upper_src, str(upper)], check=True)
    else:
        upper.mkdir()
    kernel_mount(lowers_top_first, str(upper), str(work), str(merged))
    try:
        yield merged, upper
    finally:
        kernel_umount(str(merged))


def copy_layers(image: ovlcore.Image, dest: Path) -> list[str]:
    """``cp -a`` every layer directory of ``image`` into ``dest``; the copies' paths, top first."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, layer in enumerate(image.layers):
        d = dest / f"L{i}"
        subprocess.run(["cp", "-a", str(layer.path), str(d)], check=True)
        out.append(str(d))
    return list(reversed(out))


def now_ns() -> int:
    return time.time_ns()


# --------------------------------------------------------------------------------------------------
# Fixtures (import them by name into a test module to use them)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(params=PRIVILEGES)
def env(request: Any, tmp_path: Path, monkeypatch: Any) -> Images:
    """A store with the base and child images, once per metadata convention (``root``: native owners
    and devices, ``trusted.overlay.opaque``; ``rootless``: ``user.containers.override_stat`` and
    ``user.overlay.opaque``, what unprivileged users get)."""
    if request.param == "root" and not IS_ROOT:
        pytest.skip("a store with the root convention needs root")
    return make_images(make_store(tmp_path / "store", request.param, monkeypatch))


# --------------------------------------------------------------------------------------------------
# Random operation sequences (hypothesis), applied to a ContainerFS or to a host directory
# --------------------------------------------------------------------------------------------------

# Paths of the child image (files, directories, the /lib symlink, deleted and hidden names) and new ones.
OP_PATHS = [
    "/bin", "/bin/sh", "/etc", "/etc/passwd", "/etc/motd", "/etc/hostname", "/etc/secret", "/etc/suid",
    "/etc/new", "/etc/sub", "/etc/sub/f", "/usr", "/usr/bin", "/usr/bin/a", "/usr/bin/b", "/usr/lib",
    "/usr/lib/libx.so", "/usr/share", "/usr/share/doc", "/usr/share/doc/c.txt", "/usr/share/doc/a.txt",
    "/usr/share/doc/new", "/lib", "/lib/libx.so", "/lib/new", "/var", "/var/log", "/var/log/x", "/home/user",
    "/home/user/.profile", "/app", "/app/main.py", "/app/data", "/app/data/x.bin", "/app/data/y", "/opt",
    "/opt/tool", "/opt/d", "/new", "/newdir", "/newdir/f", "/newdir/sub", "/data/big.bin",
]
# Symlink targets: one relative component only, so that nothing resolved on the host side (the
# kernel mount) can ever leave the mount (no "/" and no "..").
OP_TARGETS = ["motd", "passwd", "data", "x.bin", "sub", "doc", "f", "nowhere", "tool", "."]
OP_MODES = [0o600, 0o644, 0o755, 0o700, 0o4755, 0o2711, 0o1777]
OP_IDS = [(0, 0), (1000, 1000), (7, 0), (0, 9)]
OP_TIMES = [T0 * 10**9, (T0 + 3600) * 10**9 + 5]


def op_strategy():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    p = st.sampled_from(OP_PATHS)
    data = st.binary(max_size=24)
    return st.one_of(
        st.tuples(st.just("write"), p, data),
        st.tuples(st.just("append"), p, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("open_rw"), p),
        st.tuples(st.just("truncate"), p, st.integers(0, 40)),
        st.tuples(st.just("chmod"), p, st.sampled_from(OP_MODES)),
        st.tuples(st.just("chown"), p, st.sampled_from(OP_IDS)),
        st.tuples(st.just("utime"), p, st.sampled_from(OP_TIMES)),
        st.tuples(st.just("mkdir"), p),
        st.tuples(st.just("makedirs"), p),
        st.tuples(st.just("rmdir"), p),
        st.tuples(st.just("remove"), p),
        st.tuples(st.just("rmtree"), p),
        st.tuples(st.just("rename"), p, p),
        st.tuples(st.just("symlink"), st.sampled_from(OP_TARGETS), p),
        st.tuples(st.just("link"), p, p),
    )


DIR_OP_PATHS = ["/app", "/app/data", "/app/data/x.bin", "/app/main.py", "/usr/share", "/usr/share/doc", "/z"]


def dir_op_strategy():  # type: ignore[no-untyped-def]
    """Operations on a few nested directories: deletions, re-creations, renames."""
    from hypothesis import strategies as st

    p = st.sampled_from(DIR_OP_PATHS)
    return st.one_of(
        st.tuples(st.just("write"), p, st.binary(max_size=4)),
        st.tuples(st.just("mkdir"), p),
        st.tuples(st.just("makedirs"), p),
        st.tuples(st.just("rmtree"), p),
        st.tuples(st.just("rename"), p, p),
    )


def apply_fs(fs: ovlcore.ContainerFS, op: tuple[Any, ...]) -> int | None:
    """Run one operation through a ContainerFS; the errno it failed with, or None."""
    name, *args = op
    try:
        if name == "write":
            fs.write_bytes(args[0], args[1])
        elif name == "append":
            with fs.open(args[0], "ab") as f:
                f.write(args[1])
        elif name == "open_rw":
            with fs.open(args[0], "r+b"):
                pass
        elif name == "truncate":
            fs.truncate(args[0], args[1])
        elif name == "chmod":
            fs.chmod(args[0], args[1])
        elif name == "chown":
            fs.chown(args[0], *args[1])
        elif name == "utime":
            fs.utime(args[0], ns=(args[1], args[1]))
        elif name == "mkdir":
            fs.mkdir(args[0], 0o755)
        elif name == "makedirs":
            fs.mkdir(args[0], 0o755, parents=True)
        elif name == "rmdir":
            fs.rmdir(args[0])
        elif name == "remove":
            fs.remove(args[0])
        elif name == "rmtree":
            fs.rmtree(args[0])
        elif name == "rename":
            fs.rename(args[0], args[1])
        elif name == "symlink":
            fs.symlink(args[0], args[1])
        elif name == "link":
            fs.link(args[0], args[1])
        else:
            raise AssertionError(name)
    except OSError as e:
        assert e.errno is not None, f"{op}: OSError without errno: {e!r}"
        return e.errno
    return None


def apply_host(root: str, op: tuple[Any, ...]) -> int | None:
    """The same operation with the os module on a host directory (a kernel overlay mount)."""
    name, *args = op
    h = lambda p: root + p  # noqa: E731
    try:
        if name == "write":
            with open(h(args[0]), "wb") as f:
                f.write(args[1])
        elif name == "append":
            with open(h(args[0]), "ab") as f:
                f.write(args[1])
        elif name == "open_rw":
            with open(h(args[0]), "r+b"):
                pass
        elif name == "truncate":
            os.truncate(h(args[0]), args[1])
        elif name == "chmod":
            os.chmod(h(args[0]), args[1])
        elif name == "chown":
            os.chown(h(args[0]), *args[1])
        elif name == "utime":
            os.utime(h(args[0]), ns=(args[1], args[1]))
        elif name == "mkdir":
            os.mkdir(h(args[0]), 0o755)
        elif name == "makedirs":  # pathlib's rules, as ContainerFS.mkdir(parents=True) documents
            Path(h(args[0])).mkdir(0o755, parents=True)
        elif name == "rmdir":
            os.rmdir(h(args[0]))
        elif name == "remove":
            os.unlink(h(args[0]))
        elif name == "rmtree":
            st = os.lstat(h(args[0]))
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", h(args[0]))
            shutil.rmtree(h(args[0]))
        elif name == "rename":
            os.rename(h(args[0]), h(args[1]))
        elif name == "symlink":
            os.symlink(args[0], h(args[1]))
        elif name == "link":
            os.link(h(args[0]), h(args[1]), follow_symlinks=False)
        else:
            raise AssertionError(name)
    except OSError as e:
        return e.errno
    return None


def host_move_dir(root: str, src: str, dst: str) -> None:
    """What a tool does when the kernel refuses to rename a directory (EXDEV): make the destination,
    move every entry (directories recursively, everything else with rename(2)), remove the source and
    give the destination the source's owner, mode and times."""
    s, d = root + src, root + dst
    st = os.lstat(s)
    if os.path.lexists(d):
        os.rmdir(d)
    os.mkdir(d, 0o700)
    for name in sorted(os.listdir(s)):
        cst = os.lstat(os.path.join(s, name))
        if stat.S_ISDIR(cst.st_mode):
            host_move_dir(root, f"{src}/{name}", f"{dst}/{name}")
        else:
            os.rename(os.path.join(s, name), os.path.join(d, name))
    os.rmdir(s)
    os.chown(d, st.st_uid, st.st_gid)
    os.chmod(d, stat.S_IMODE(st.st_mode))
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
