"""Random file-system operations for the differential tests: the same operation applied through a
``ContainerFS`` (:func:`apply_fs`) or with the ``os`` module on a host directory such as a kernel overlay
mount (:func:`apply_host`), each giving the errno it failed with."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import ovlcore

from .tars import FIXED_MTIME


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
OP_TIMES = [FIXED_MTIME * 10**9, (FIXED_MTIME + 3600) * 10**9 + 5]


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
