"""Independent appliers of OCI layer tars, to check what the store makes of (or exports as) layers:
an in-memory model of image-spec's layer rules (:func:`tar_model`), and GNU tar onto a host directory
(:func:`gnu_tar_apply`)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import ovlcore

from .trees import fs_tree


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
