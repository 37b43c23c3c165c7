"""FUSE mounts of the union view: the ``ovlcore-fuse`` helper (fuse-overlayfs's command line) and the
daemon that :meth:`Container.mount` and :meth:`Image.mount` start.

The file system runs in its own process (the daemon), started with this interpreter and detached from
the caller: the caller returns once the mount is live (the daemon says so on a pipe) and the daemon exits
by itself when the mount goes away (``umount``, ``fusermount3 -u``).

The kernel does the I/O of plain files itself where it can: as root (Linux 6.9+) by FUSE passthrough to
the layer files (``-o nopassthrough`` turns it off: with it, an image file open for reading cannot be
opened for writing until it is closed, ``ETXTBSY``), otherwise through its writeback cache
(``-o nowriteback``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _ovlcore

__all__ = ["FuseSpec", "fuse_usable", "is_mounted", "main", "parse_command_line", "start", "unmount"]

# Options of mount(8) and fuse-overlayfs that mean nothing here (or are the default).
_IGNORED = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "diratime", "volatile", "async", "sync", "auto", "noauto", "user", "nouser", "_netdev",
    "fsync=0", "redirect_dir=on", "redirect_dir=off", "index=off", "metacopy=off", "xino=off", "userxattr",
}


@dataclass
class FuseSpec:
    """What to serve: layer directories (top first), an optional writable layer with its scratch
    directory, and the ovlcore extras (store privilege, shared-inode list, volume and bind mounts, the
    marker file that says the container is mounted)."""

    mountpoint: str
    lower: list[str]
    upper: str | None = None
    scratch: str | None = None
    shared: str | None = None
    privilege: str = field(default_factory=lambda: "root" if os.geteuid() == 0 else "rootless")
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    marker: str | None = None
    fsname: str = "ovlcore"
    allow_other: bool = False
    # The kernel's own I/O on plain files (as root, Linux 6.9+; an image file open for reading then
    # cannot be opened for writing until closed: ETXTBSY), else its writeback cache.
    passthrough: bool = True
    writeback: bool = True
    # Show the stored root as this host (uid, gid), and store it as root: for a rootless OCI runtime,
    # whose user namespace maps its root to the caller.
    root_as: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> FuseSpec:
        d = json.loads(text)
        d["mounts"] = [tuple(m) for m in d.get("mounts", [])]
        if d.get("root_as") is not None:
            d["root_as"] = tuple(d["root_as"])
        return cls(**d)


def _split_escaped(text: str, sep: str, *, unescape: bool = True) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (as fuse-overlayfs reads its options);
    without ``unescape`` the escapes stay for a later split."""
    out, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1] if unescape else text[i : i + 2])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def parse_command_line(argv: Sequence[str]) -> tuple[FuseSpec, bool]:
    """fuse-overlayfs's command line: ``-o lowerdir=A:B,upperdir=U,workdir=W[,opts] MNT``, or the form
    ``mount -t fuse.ovlcore-fuse`` uses: ``SRC MNT -o OPTS``. Returns the spec and whether to stay in the
    foreground (``-f``)."""
    opts: list[str] = []
    positional: list[str] = []
    foreground = False
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o":
            if i + 1 >= len(args):
                raise ValueError("-o needs options")
            opts += _split_escaped(args[i + 1], ",", unescape=False)
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            opts += _split_escaped(a[2:], ",", unescape=False)
        elif a in ("-f", "-d", "--debug"):
            foreground = True
        elif a in ("-s",):
            pass
        elif a.startswith("-"):
            raise ValueError(f"unknown argument {a}")
        else:
            positional.append(a)
        i += 1
    if not positional:
        raise ValueError("missing mount point")
    if len(positional) > 2:
        raise ValueError(f"too many arguments: {' '.join(positional)}")
    mountpoint = positional[-1]
    lower: list[str] = []
    upper = work = None
    read_only = False
    allow_other = False
    passthrough = writeback = True
    fsname = positional[0] if len(positional) == 2 else "ovlcore"
    for o in opts:
        if not o or o in _IGNORED:
            continue
        key, _, value = o.partition("=")
        if key == "lowerdir":
            lower = [os.path.realpath(p) for p in _split_escaped(value, ":") if p]
        elif key == "upperdir":
            upper = os.path.realpath(_split_escaped(value, ",")[0])
        elif key == "workdir":
            work = os.path.realpath(_split_escaped(value, ",")[0])
        elif key == "ro":
            read_only = True
        elif key in ("allow_other", "allow_root"):
            allow_other = True
        elif key == "fsname":
            fsname = value
        elif key == "nopassthrough":
            passthrough = False
        elif key == "nowriteback":
            writeback = False
        else:
            print(f"ovlcore-fuse: ignoring option {o}", file=sys.stderr)
    if upper is not None and work is None:
        raise ValueError("upperdir needs workdir")
    if read_only:
        upper = work = None
    if not lower and upper is None:
        raise ValueError("no lowerdir")
    scratch = None
    if work is not None:
        scratch = os.path.join(work, "ovlcore-scratch")
    spec = FuseSpec(
        mountpoint=os.path.abspath(mountpoint), lower=lower, upper=upper, scratch=scratch, fsname=fsname, allow_other=allow_other,
        passthrough=passthrough, writeback=writeback,
    )
    return spec, foreground


def _serve(spec: FuseSpec, ready_fd: int | None) -> None:
    """Build the view and serve it (returns when unmounted). Writes the marker while mounted."""
    if spec.scratch is not None:
        os.makedirs(spec.scratch, exist_ok=True)
    # The kernel already applied the caller's umask to the modes it sends.
    os.umask(0)
    os.chdir("/")
    root = os.geteuid() == 0
    marker = Path(spec.marker) if spec.marker else None
    try:
        if marker is not None:
            marker.write_text(spec.mountpoint)
        _ovlcore.fuse_serve(
            spec.lower,
            spec.upper,
            spec.mountpoint,
            scratch=spec.scratch,
            shared=spec.shared,
            privilege=spec.privilege,
            mounts=spec.mounts,
            ready_fd=ready_fd,
            fsname=spec.fsname,
            subtype="ovlcore-fuse",
            allow_other=spec.allow_other or root,
            threads=4,
            passthrough=spec.passthrough,
            writeback=spec.writeback,
            root_as=spec.root_as,
        )
    finally:
        if marker is not None:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()


def _daemon_main(ready_fd: int, spec_json: str) -> int:
    spec = FuseSpec.from_json(spec_json)
    try:
        _serve(spec, ready_fd)
    except BaseException as e:  # reported to the waiting parent, whatever it is
        with contextlib.suppress(OSError):
            os.write(ready_fd, f"error {e}\n".encode(errors="replace"))
        return 1
    return 0


def start(spec: FuseSpec, timeout: float = 60.0) -> int:
    """Start a daemon serving ``spec`` and return its pid once the mount is live (raise ``OSError`` if
    it fails)."""
    # Imported here, not at the top: `import ovlcore` stays quick (process machinery loads on first mount).
    import select
    import subprocess

    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovlcore.fusemount", "--daemon", str(w), spec.to_json()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(w,),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(w)
    try:
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise OSError(errno.ETIMEDOUT, f"the FUSE daemon did not mount {spec.mountpoint} in {timeout:.0f} s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(r)
    text = line.decode(errors="replace").strip()
    if text == "ok":
        return proc.pid
    proc.wait(timeout=10)
    msg = text[len("error ") :] if text.startswith("error ") else f"the FUSE daemon exited ({proc.returncode})"
    raise OSError(errno.EIO, f"cannot FUSE-mount {spec.mountpoint}: {msg}")


def fuse_usable() -> str | None:
    """``None`` when this process can make FUSE mounts, else why not."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"/dev/fuse: {e.strerror}"
    os.close(fd)
    import shutil

    if os.geteuid() != 0 and shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "no fusermount3 on PATH (needed to mount without privilege)"
    return None


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether something is mounted at ``path`` (per this process's mount table)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def unmount(path: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmount a FUSE mount: directly as root, else through ``fusermount3 -u``."""
    if os.geteuid() == 0:
        _ovlcore.unmount(str(path), lazy=lazy)
        return
    import shutil
    import subprocess

    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(errno.EPERM, "unmounting a FUSE mount without privilege needs fusermount3", str(path))
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [str(path)]
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise OSError(errno.EBUSY, f"{' '.join(cmd)}: {res.stderr.strip()}", str(path))


def clear_stale(path: str | os.PathLike[str]) -> None:
    """A mount whose daemon died answers ENOTCONN: detach it so the path can be mounted again."""
    try:
        os.statvfs(path)  # always asks the daemon (a stat may be answered from the kernel's cache)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            unmount(path, lazy=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``ovlcore-fuse``: mount layer directories like fuse-overlayfs; returns once the mount is live."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "--daemon":
        # Exit at once when unmounted: whoever unmounted may unmount the layers' file systems next.
        os._exit(_daemon_main(int(args[1]), args[2]))
    if args in (["-h"], ["--help"]):
        print("usage: ovlcore-fuse -o lowerdir=L1:L2[,upperdir=U,workdir=W][,opts] MOUNTPOINT")
        print("  opts: ro, allow_other, fsname=NAME, nopassthrough, nowriteback (and mount(8)'s, ignored)")
        return 0
    if args == ["--version"]:
        print("ovlcore-fuse 0.1")
        return 0
    try:
        spec, foreground = parse_command_line(args)
        if foreground:
            _serve(spec, None)
        else:
            start(spec)
    except (OSError, ValueError) as e:
        print(f"ovlcore-fuse: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
