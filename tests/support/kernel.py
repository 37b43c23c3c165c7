"""Kernel overlayfs mounts of layer directories: the reference oracle for the merged view and for
writes. Every mount uses the plain on-disk format the store writes (no redirects, no index, no metacopy).
Mounting needs root: :func:`mount_refused` says why it cannot be done here."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ovlcore

from .privilege import IS_ROOT

Dir = str | os.PathLike[str]


class MountRefused(Exception):
    pass


def mount_overlay(lowers_top_first: list[Dir], target: Dir, *, upper: Dir | None = None, work: Dir | None = None,
                  userxattr: bool = False) -> None:
    """Mount ``lowerdir=TOP:...:BOTTOM`` (and ``upperdir``/``workdir`` when given; read-only without) at
    ``target``. Without an upper layer a single lower gets an empty directory below it, as the kernel
    wants two. Raises :class:`MountRefused` with the kernel's reason."""
    lowers = [os.fspath(p) for p in lowers_top_first]
    if upper is None and len(lowers) == 1:
        empty = Path(f"{os.fspath(target)}.empty")
        empty.mkdir(exist_ok=True)
        lowers.append(os.fspath(empty))
    opts = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        opts += f",upperdir={os.fspath(upper)},workdir={os.fspath(work)}"
    # With userxattr the kernel accepts no redirect mode that follows redirects.
    opts += ",userxattr,redirect_dir=nofollow" if userxattr else ",redirect_dir=off"
    opts += ",index=off,metacopy=off"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, os.fspath(target)], capture_output=True, text=True)
    if r.returncode != 0:
        raise MountRefused(f"mount -t overlay refused: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")


def unmount(target: Dir) -> None:
    """Unmount ``target``, detaching it lazily when it is still busy."""
    if subprocess.run(["umount", os.fspath(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", os.fspath(target)], capture_output=True)


@contextlib.contextmanager
def overlay(lowers_top_first: list[Dir], target: Path, *, upper: Dir | None = None, work: Dir | None = None,
            userxattr: bool = False) -> Iterator[Path]:
    """:func:`mount_overlay` at ``target`` (made if missing) for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    mount_overlay(lowers_top_first, target, upper=upper, work=work, userxattr=userxattr)
    try:
        yield target
    finally:
        unmount(target)


@functools.cache
def mount_refused() -> str | None:
    """``None`` when an overlay mount with an upper layer works here, else the reason it does not."""
    if not IS_ROOT:
        return "kernel overlay mounts need root"
    d = Path(tempfile.mkdtemp(prefix="ovl-probe-"))
    try:
        for s in ("l", "u", "w"):
            (d / s).mkdir()
        with overlay([d / "l"], d / "m", upper=d / "u", work=d / "w"):
            pass
        return None
    except (MountRefused, OSError) as e:
        return str(e)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def overlay_with_upper(lowers_top_first: list[str], tmp: Path, upper_src: str | None = None) -> Iterator[tuple[Path, Path]]:
    """The kernel's overlay of the given lower directories with a fresh upper directory (or a ``cp -a``
    copy of ``upper_src``), all under ``tmp``; yields (merged, upper)."""
    tmp.mkdir(parents=True, exist_ok=True)
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    work.mkdir()
    if upper_src is not None:
        subprocess.run(["cp", "-a", upper_src, str(upper)], check=True)
    else:
        upper.mkdir()
    with overlay(lowers_top_first, merged, upper=upper, work=work):
        yield merged, upper


def copy_layers(image: ovlcore.Image, dest: Path) -> list[str]:
    """``cp -a`` every layer directory of ``image`` into ``dest``; the copies' paths, top first."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, layer in enumerate(image.layers):
        d = dest / f"L{i}"
        subprocess.run(["cp", "-a", str(layer.path), str(d)], check=True)
        out.append(str(d))
    return list(reversed(out))
