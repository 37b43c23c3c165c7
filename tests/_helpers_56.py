"""Shared helpers for the volume / mount / cp / CLI / demo tests (issues 5 and 6).

Not a conftest: fixtures are defined here and imported by name into each test module.

* ``store``: a fresh store in ``tmp_path/"store"`` with the process's natural convention (``root`` when
  run as root, ``rootless`` otherwise).
* ``pstore``: the same, parametrized over both metadata conventions (``root`` skips for non-root users;
  ``rootless`` is made with ``OVLCORE_PRIVILEGE=rootless`` in the environment before the store is created).
* ``image`` / ``pimage``: a small base image imported into that store (see :data:`BASE_ENTRIES`).
* :func:`make_tar`: a root-file-system tar from simple entry tuples.
* :func:`snapshot`: a full lstat + content picture of a host tree, to prove nothing outside was touched.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ovlcore

IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (host ownership changes or mount(2))")

FIXED_MTIME = 1_600_000_000

VENV_BIN = Path(sys.executable).parent


def _find_console_script() -> list[str]:
    """The installed ``ovlcore`` console script next to this interpreter (a venv), else on PATH, else
    the same entry point through this interpreter."""
    import shutil

    here = VENV_BIN / "ovlcore"
    if here.exists():
        return [str(here)]
    found = shutil.which("ovlcore")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from ovlcore.cli import main; sys.argv[0] = 'ovlcore'; main()"]


#: argv prefix running the ``ovlcore`` command
OVLCORE_CMD = _find_console_script()
#: the same as one shell word sequence (for ``sh -c`` and tmux)
OVLCORE_SH = " ".join(__import__("shlex").quote(a) for a in OVLCORE_CMD)

# --------------------------------------------------------------------------------------------------
# Tars

# (name, kind, data-or-link-target, mode, uid, gid)
Entry = tuple[str, str, "bytes | str | None", int, int, int]


def D(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return (name, "dir", None, mode, uid, gid)


def F(name: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return (name, "file", data.encode() if isinstance(data, str) else data, mode, uid, gid)


def L(name: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
    return (name, "symlink", target, 0o777, uid, gid)


def make_tar(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, mode, uid, gid in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            ti.uid, ti.gid = uid, gid
            ti.uname = ti.gname = ""
            ti.mtime = FIXED_MTIME
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "symlink":
                ti.type = tarfile.SYMTYPE
                assert isinstance(data, str)
                ti.linkname = data
                t.addfile(ti)
            else:
                assert isinstance(data, bytes)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


PASSWD = "root:x:0:0:container-root:/root:/bin/sh\n"

#: The base image every test starts from.
BASE_ENTRIES: list[Entry] = [
    D("bin"),
    F("bin/sh", b"#!fake shell\n", 0o755),
    D("etc"),
    F("etc/passwd", PASSWD),
    F("etc/hostname", "image-hostname\n"),
    # A directory with a distinctive owner and mode, to pre-populate volumes from.
    D("data", 0o750, 1234, 5678),
    F("data/seed.txt", "seed from the image\n", 0o640, 1234, 5678),
    D("data/sub", 0o711, 1234, 5678),
    F("data/sub/deep.txt", "deep\n", 0o600, 42, 43),
    L("data/pw", "/etc/passwd"),
    # Something a bind mount at /shared must hide.
    D("shared"),
    F("shared/image_only.txt", "only in the image\n"),
    D("tmp", 0o1777),
    D("links"),
    L("links/to_root", "/"),
    L("links/to_passwd", "/etc/passwd"),
    L("links/dotdot", "../../../../../../.."),
    L("links/rel_etc", "../etc"),
    L("links/to_data", "/data"),
    D("srv"),
    F("srv/a.png", b"\x89PNG a"),
    F("srv/b.png", b"\x89PNG b"),
    F("srv/notes.txt", "not a png\n"),
    D("srv/dir"),
    F("srv/dir/one.txt", "one\n"),
    D("srv/dir/nested"),
    F("srv/dir/nested/two.txt", "two\n"),
]


def import_image(store: ovlcore.Store, entries: Iterable[Entry] = BASE_ENTRIES, tag: str = "base:1") -> ovlcore.Image:
    return store.images.import_archive(io.BytesIO(make_tar(entries)), tag=tag)


# --------------------------------------------------------------------------------------------------
# Stores


def open_store(root: Path, privilege: str | None, monkeypatch: pytest.MonkeyPatch) -> ovlcore.Store:
    """A new store at ``root`` with the given metadata convention (``None``: the process's own)."""
    if privilege == "root" and not IS_ROOT:
        pytest.skip("a root-convention store needs root")
    if privilege is None:
        monkeypatch.delenv("OVLCORE_PRIVILEGE", raising=False)
    else:
        monkeypatch.setenv("OVLCORE_PRIVILEGE", privilege)
    s = ovlcore.Store(root)
    monkeypatch.delenv("OVLCORE_PRIVILEGE", raising=False)
    if privilege is not None:
        assert s.privilege == privilege
    return s


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ovlcore.Store]:
    s = open_store(tmp_path / "store", None, monkeypatch)
    yield s
    s.close()


@pytest.fixture(params=["root", "rootless"])
def pstore(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ovlcore.Store]:
    s = open_store(tmp_path / "store", request.param, monkeypatch)
    yield s
    s.close()


@pytest.fixture
def image(store: ovlcore.Store) -> ovlcore.Image:
    return import_image(store)


@pytest.fixture
def pimage(pstore: ovlcore.Store) -> ovlcore.Image:
    return import_image(pstore)


# --------------------------------------------------------------------------------------------------
# Host snapshots


def snapshot(root: Path, *, exclude: Iterable[Path] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not following symlinks): type, mode, owner, size, mtime, content hash
    or link target. Excluded subtrees are skipped."""
    ex = {os.path.abspath(p) for p in exclude}
    out: dict[str, tuple[Any, ...]] = {}

    def visit(p: str) -> None:
        if os.path.abspath(p) in ex:
            return
        st = os.lstat(p)
        extra: Any = None
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(p)
        out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, extra)
        if stat.S_ISDIR(st.st_mode):
            for n in sorted(os.listdir(p)):
                visit(os.path.join(p, n))

    visit(str(root))
    return out


def host_tree(root: Path) -> dict[str, str]:
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


def upper_tree(c: ovlcore.Container) -> list[str]:
    """Relative paths present in a container's writable layer."""
    out = []
    for dirpath, dirnames, filenames in os.walk(c.upper):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), c.upper))
    return sorted(out)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [m.name.rstrip("/") for m in t.getmembers()]


# --------------------------------------------------------------------------------------------------
# The command line


def run_cli(*args: str, root: Path | None = None, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``ovlcore`` console script (stdout and stderr captured as pipes)."""
    cmd = list(OVLCORE_CMD)
    if root is not None:
        cmd += ["--root", str(root)]
    cmd += list(args)
    e = dict(os.environ)
    e.pop("OVLCORE_ROOT", None)
    e.pop("OVLCORE_PRIVILEGE", None)
    e.update(env or {})
    return subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=timeout)
