"""The one tar builder of the suite: layer tars and other archives, built in memory.

:class:`TarBuilder` appends entries in call order: every entry kind a layer can hold (files, directories,
symbolic and hard links, devices, fifos, whiteouts, opaque markers), PAX records and xattrs, and raw
512-byte headers (:func:`raw_header`) for the hostile or malformed ones :mod:`tarfile` will not write.
:func:`tar` builds the same from declarative :class:`Entry` values (:func:`D`, :func:`F`, :func:`L`, ...),
for tables of image content. Numeric ids, empty user and group names and whole-second times by default,
like Docker's layer tars.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

FIXED_MTIME = 1_600_000_000  # 2020-09-13, whole seconds

#: The two zero blocks that end an archive.
EOF_BLOCKS = b"\0" * 1024


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a multiple of 512 bytes."""
    return data + b"\0" * (-len(data) % 512)


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


@dataclass
class Entry:
    """One archive entry, declared. ``kind``: ``f`` file, ``d`` directory, ``l`` symbolic link, ``h`` hard
    link, ``c``/``b`` character/block device, ``p`` fifo, ``w`` whiteout of ``path``, ``o`` opaque marker
    of the directory ``path``. ``mode`` ``None``: the kind's usual mode."""

    path: str
    kind: str = "f"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    link: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def D(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, **kw: Any) -> Entry:
    return Entry(path, "d", mode=mode, uid=uid, gid=gid, **kw)


def F(path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0, **kw: Any) -> Entry:
    return Entry(path, "f", data.encode() if isinstance(data, str) else data, mode, uid, gid, **kw)


def L(path: str, target: str, uid: int = 0, gid: int = 0, **kw: Any) -> Entry:
    return Entry(path, "l", link=target, uid=uid, gid=gid, **kw)


def H(path: str, target: str, **kw: Any) -> Entry:
    return Entry(path, "h", link=target, **kw)


def W(path: str) -> Entry:
    return Entry(path, "w")


def O(dirpath: str) -> Entry:  # noqa: E743 (the letter of the opaque marker, like D, F, L)
    return Entry(dirpath, "o")


class TarBuilder:
    """An in-memory tar. Entries are appended in call order; :meth:`bytes` gives the archive.

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
        self.chunks.append(info.tobuf(self.format, "utf-8", "surrogateescape"))
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
        xattrs: Mapping[str, str | bytes] | None = None,
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
            headers[f"SCHILY.xattr.{k}"] = v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
        if headers:
            ti.pax_headers = headers
        return ti

    # -- entry kinds --

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> TarBuilder:
        return self.add(self.info(name.rstrip("/") + "/" if name not in ("./", ".") else name, tarfile.DIRTYPE, mode=mode, **kw))

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> TarBuilder:
        if isinstance(data, str):
            data = data.encode()
        return self.add(self.info(name, tarfile.REGTYPE, mode=mode, **kw), data)

    def symlink(self, name: str, target: str, mode: int = 0o777, **kw: Any) -> TarBuilder:
        ti = self.info(name, tarfile.SYMTYPE, mode=mode, **kw)
        ti.linkname = target
        return self.add(ti)

    def hardlink(self, name: str, target: str, mode: int = 0o644, **kw: Any) -> TarBuilder:
        ti = self.info(name, tarfile.LNKTYPE, mode=mode, **kw)
        ti.linkname = target
        return self.add(ti)

    def fifo(self, name: str, mode: int = 0o644, **kw: Any) -> TarBuilder:
        return self.add(self.info(name, tarfile.FIFOTYPE, mode=mode, **kw))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666, **kw: Any) -> TarBuilder:
        ti = self.info(name, tarfile.CHRTYPE, mode=mode, **kw)
        ti.devmajor, ti.devminor = major, minor
        return self.add(ti)

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660, **kw: Any) -> TarBuilder:
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

    def entry(self, e: Entry) -> TarBuilder:
        """Append a declared :class:`Entry`."""
        if e.kind == "w":
            return self.whiteout(e.path)
        if e.kind == "o":
            return self.opaque(e.path)
        kw: dict[str, Any] = {"uid": e.uid, "gid": e.gid, "mtime": e.mtime, "xattrs": e.xattrs}
        if e.mode is not None:
            kw["mode"] = e.mode
        if e.kind == "f":
            return self.file(e.path, e.data, **kw)
        if e.kind == "d":
            return self.dir(e.path, **kw)
        if e.kind == "l":
            return self.symlink(e.path, e.link, **kw)
        if e.kind == "h":
            return self.hardlink(e.path, e.link, **kw)
        if e.kind == "c":
            return self.chardev(e.path, *e.dev, **kw)
        if e.kind == "b":
            return self.blockdev(e.path, *e.dev, **kw)
        if e.kind == "p":
            return self.fifo(e.path, **kw)
        raise ValueError(f"unknown entry kind {e.kind!r}")

    # -- output --

    def bytes(self, *, eof: bool = True) -> bytes:
        return b"".join(self.chunks) + (EOF_BLOCKS if eof else b"")

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def tar(*entries: Entry) -> bytes:
    """A PAX tar of ``entries``, in the order given."""
    t = TarBuilder()
    for e in entries:
        t.entry(e)
    return t.bytes()


def read_all(stream: BinaryIO, chunk: int | None = None) -> bytes:
    """Everything ``stream`` gives: one ``read()``, or ``read(chunk)`` until it is exhausted."""
    if chunk is None:
        return stream.read()
    out = bytearray()
    while b := stream.read(chunk):
        out += b
    return bytes(out)
