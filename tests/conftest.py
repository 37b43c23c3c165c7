"""Shared fixtures and helpers for the ovlcore test suite.

* ``store`` / ``rootless_store``: a fresh store in ``tmp_path`` (``tmp_path/"store"``), with
  ``tmp_path/"outside"`` as a sentinel directory next to it that nothing may ever write into.
* :class:`TarBuilder`: builds layer tars in memory. Ordinary entries go through :mod:`tarfile`; hostile
  or unusual headers that ``tarfile`` will not write are produced by :func:`raw_header`.
* compression helpers (gzip, zstd through the ``zstd`` CLI, bzip2/xz for "wrong compression" cases).
* :func:`overlay_mount`: a kernel overlayfs mount of layer directories (the reference oracle).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import ovlcore

IS_ROOT = os.geteuid() == 0

#: For tests that need real root: native ownership in a root store, device nodes, mounts.
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (native owners, device nodes or mount)")

HAVE_ZSTD = shutil.which("zstd") is not None
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason="the zstd command line tool is not installed")

FIXED_MTIME = 1_600_000_000  # 2020-09-13, whole seconds


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent_chain: str | None, diff_id: str) -> str:
    """The OCI chain id formula, computed independently of the product."""
    if parent_chain is None:
        return diff_id
    return sha256_digest(f"{parent_chain} {diff_id}".encode())


# --------------------------------------------------------------------------------------------------
# Compression


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    if not HAVE_ZSTD:
        pytest.skip("the zstd command line tool is not installed")
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True).stdout


def unzstd_bytes(data: bytes) -> bytes:
    if not HAVE_ZSTD:
        pytest.skip("the zstd command line tool is not installed")
    return subprocess.run(["zstd", "-q", "-d", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


def bzip2_bytes(data: bytes) -> bytes:
    return bz2.compress(data)


def xz_bytes(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ)


# --------------------------------------------------------------------------------------------------
# Tar building


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal numeric field of ``width`` bytes."""
    return b"%0*o\0" % (width - 1, value)


def raw_header(
    name: bytes | str,
    *,
    type: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = FIXED_MTIME,
    linkname: bytes | str = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes | str = b"",
    fields: dict[str, bytes] | None = None,
    checksum: int | None = None,
) -> bytes:
    """One 512-byte ustar header with *any* content. ``fields`` overrides raw field bytes by name
    (``mode``, ``uid``, ``gid``, ``size``, ``mtime``) for malformed values; ``checksum`` forces a value."""
    if isinstance(name, str):
        name = name.encode()
    if isinstance(linkname, str):
        linkname = linkname.encode()
    if isinstance(prefix, str):
        prefix = prefix.encode()
    assert len(name) <= 100 and len(linkname) <= 100 and len(prefix) <= 155
    f = {
        "mode": _octal(mode, 8),
        "uid": _octal(uid, 8),
        "gid": _octal(gid, 8),
        "size": _octal(size, 12),
        "mtime": _octal(mtime, 12),
    }
    f.update(fields or {})
    h = bytearray(512)
    h[0:100] = name.ljust(100, b"\0")
    h[100:108] = f["mode"].ljust(8, b"\0")[:8]
    h[108:116] = f["uid"].ljust(8, b"\0")[:8]
    h[116:124] = f["gid"].ljust(8, b"\0")[:8]
    h[124:136] = f["size"].ljust(12, b"\0")[:12]
    h[136:148] = f["mtime"].ljust(12, b"\0")[:12]
    h[148:156] = b" " * 8
    h[156:157] = type
    h[157:257] = linkname.ljust(100, b"\0")
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(devmajor, 8)
    h[337:345] = _octal(devminor, 8)
    h[345:500] = prefix.ljust(155, b"\0")
    cks = sum(h) if checksum is None else checksum
    h[148:156] = b"%06o\0 " % cks
    return bytes(h)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a multiple of 512 bytes."""
    return data + b"\0" * (-len(data) % 512)


EOF_BLOCKS = b"\0" * 1024


class TarBuilder:
    """An in-memory layer tar. Entries are appended in call order; :meth:`bytes` gives the archive.

    Numeric ids, empty user/group names, fixed mtimes by default (like Docker's layer tars).
    ``format``: a :mod:`tarfile` format (PAX by default, GNU for GNU long names, USTAR).
    """

    def __init__(self, format: int = tarfile.PAX_FORMAT) -> None:
        self.format = format
        self.chunks: list[bytes] = []

    # -- generic --

    def add(self, info: tarfile.TarInfo, data: bytes | None = None) -> TarBuilder:
        if data is not None:
            info.size = len(data)
        info.uname = info.uname or ""
        info.gname = info.gname or ""
        buf = info.tobuf(self.format, "utf-8", "surrogateescape")
        self.chunks.append(buf)
        if data:
            self.chunks.append(pad(data))
        return self

    def raw(self, block: bytes) -> TarBuilder:
        """Append raw bytes (headers made by :func:`raw_header`, padded content)."""
        self.chunks.append(block)
        return self

    def info(
        self,
        name: str,
        type: bytes,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        mtime: float = FIXED_MTIME,
        xattrs: dict[str, str] | None = None,
        pax: dict[str, str] | None = None,
    ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = type
        ti.mode = mode
        ti.uid = uid
        ti.gid = gid
        ti.mtime = mtime
        headers = dict(pax or {})
        for k, v in (xattrs or {}).items():
            headers[f"SCHILY.xattr.{k}"] = v
        if headers:
            ti.pax_headers = headers
        return ti

    # -- entry kinds --

    def dir(self, name: str, mode: int = 0o755, **kw) -> TarBuilder:
        return self.add(self.info(name.rstrip("/") + "/" if name not in ("./", ".") else name, tarfile.DIRTYPE, mode=mode, **kw))

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644, **kw) -> TarBuilder:
        if isinstance(data, str):
            data = data.encode()
        return self.add(self.info(name, tarfile.REGTYPE, mode=mode, **kw), data)

    def symlink(self, name: str, target: str, mode: int = 0o777, **kw) -> TarBuilder:
        ti = self.info(name, tarfile.SYMTYPE, mode=mode, **kw)
        ti.linkname = target
        return self.add(ti)

    def hardlink(self, name: str, target: str, mode: int = 0o644, **kw) -> TarBuilder:
        ti = self.info(name, tarfile.LNKTYPE, mode=mode, **kw)
        ti.linkname = target
        return self.add(ti)

    def fifo(self, name: str, mode: int = 0o644, **kw) -> TarBuilder:
        return self.add(self.info(name, tarfile.FIFOTYPE, mode=mode, **kw))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666, **kw) -> TarBuilder:
        ti = self.info(name, tarfile.CHRTYPE, mode=mode, **kw)
        ti.devmajor, ti.devminor = major, minor
        return self.add(ti)

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660, **kw) -> TarBuilder:
        ti = self.info(name, tarfile.BLKTYPE, mode=mode, **kw)
        ti.devmajor, ti.devminor = major, minor
        return self.add(ti)

    def whiteout(self, path: str) -> TarBuilder:
        """``dir/.wh.NAME`` (an empty regular file) deleting ``path`` in the layers below."""
        d, _, n = path.strip("/").rpartition("/")
        return self.file(f"{d}/.wh.{n}" if d else f".wh.{n}", b"", mode=0o600, mtime=0)

    def opaque(self, dirpath: str) -> TarBuilder:
        d = dirpath.strip("/")
        return self.file(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq", b"", mode=0o600, mtime=0)

    # -- output --

    def bytes(self, *, eof: bool = True) -> bytes:
        return b"".join(self.chunks) + (EOF_BLOCKS if eof else b"")

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def tar_of(*entries: tuple) -> bytes:
    """Shorthand: ``("d", "etc")``, ``("f", "etc/x", b"data")``, ``("l", "link", "target")``,
    ``("h", "hard", "target")``, ``("w", "etc/gone")`` (whiteout), ``("o", "etc")`` (opaque)."""
    t = TarBuilder()
    for e in entries:
        kind, rest = e[0], e[1:]
        {"d": t.dir, "f": t.file, "l": t.symlink, "h": t.hardlink, "w": t.whiteout, "o": t.opaque}[kind](*rest)
    return t.bytes()


# --------------------------------------------------------------------------------------------------
# On-disk format helpers


def is_whiteout(path: str | os.PathLike[str]) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque_xattr_name(store: ovlcore.Store) -> str:
    return "trusted.overlay.opaque" if store.privilege == "root" else "user.overlay.opaque"


def is_opaque(store: ovlcore.Store, path: str | os.PathLike[str]) -> bool:
    try:
        return os.getxattr(path, opaque_xattr_name(store), follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its type, mode, size and mtime (for "nothing changed" checks)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def image_chain(store: ovlcore.Store, tars: list[bytes], tag: str | None = None) -> ovlcore.Image:
    """An image whose layers are ``tars`` (bottom first), built with layers.apply + images.create."""
    img = None
    parent = None
    for t in tars:
        layer = store.layers.apply(t, parent=parent)
        img = store.images.create(layer=layer, parent=img)
        parent = layer
    assert img is not None
    if tag:
        store.images.tag(img, tag)
    return img


# --------------------------------------------------------------------------------------------------
# Fixtures


class Sandbox:
    """``tmp_path`` laid out as ``store/`` (the store root) next to ``outside/`` (a sentinel directory with
    one file) so tests can check that nothing was written outside the store."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.root = tmp_path / "store"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "secret").write_text("host secret\n")

    def snapshot_outside(self) -> dict[str, tuple]:
        """Everything under ``tmp_path`` except the store."""
        snap = tree_snapshot(self.base)
        return {k: v for k, v in snap.items() if not (k == "store" or k.startswith("store/"))}


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture
def store(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[ovlcore.Store]:
    """A fresh store with the privilege convention of the running user."""
    monkeypatch.delenv("OVLCORE_PRIVILEGE", raising=False)
    with ovlcore.Store(sandbox.root) as s:
        yield s


@pytest.fixture
def rootless_store(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[ovlcore.Store]:
    """A fresh store using the rootless metadata convention (override xattrs), even when run as root."""
    monkeypatch.setenv("OVLCORE_PRIVILEGE", "rootless")
    with ovlcore.Store(sandbox.root) as s:
        assert s.privilege == "rootless"
        yield s


@pytest.fixture(params=["native", "rootless"])
def any_store(request: pytest.FixtureRequest, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[ovlcore.Store]:
    """A store of each convention: the running user's own, and the rootless one."""
    if request.param == "rootless":
        monkeypatch.setenv("OVLCORE_PRIVILEGE", "rootless")
    else:
        monkeypatch.delenv("OVLCORE_PRIVILEGE", raising=False)
    with ovlcore.Store(sandbox.root) as s:
        yield s


# --------------------------------------------------------------------------------------------------
# Kernel overlayfs


class MountRefused(Exception):
    pass


@contextlib.contextmanager
def overlay_mount(lower_top_first: list[str | os.PathLike[str]], target: Path, *, userxattr: bool = False) -> Iterator[Path]:
    """Mount ``lowerdir=TOP:...:BOTTOM`` read-only at ``target`` (a single layer gets an empty directory
    below it, as the kernel wants two). Raises :class:`MountRefused` when the kernel says no."""
    target.mkdir(parents=True, exist_ok=True)
    lowers = [os.fspath(p) for p in lower_top_first]
    if len(lowers) == 1:
        empty = target.parent / (target.name + ".empty")
        empty.mkdir(exist_ok=True)
        lowers.append(os.fspath(empty))
    opts = "lowerdir=" + ":".join(lowers)
    if userxattr:
        opts += ",userxattr"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, os.fspath(target)], capture_output=True, text=True)
    if r.returncode != 0:
        raise MountRefused(f"mount -t overlay refused: {r.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", os.fspath(target)], check=True)


def mount_works(tmp: Path) -> str | None:
    """``None`` when an overlay mount works here, else the reason it does not."""
    if not IS_ROOT:
        return "kernel overlayfs mount needs root"
    a, b, m = tmp / "probe-a", tmp / "probe-b", tmp / "probe-m"
    for d in (a, b, m):
        d.mkdir(parents=True, exist_ok=True)
    try:
        with overlay_mount([a, b], m):
            pass
    except MountRefused as e:
        return str(e)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"mount not available: {e}"
    return None


@pytest.fixture(scope="session")
def kernel_overlay(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip the test (with the reason) unless ``mount -t overlay`` works."""
    reason = mount_works(tmp_path_factory.mktemp("probe"))
    if reason:
        pytest.skip(reason)
