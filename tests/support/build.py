"""What the build tests are made of: a busybox base image (``/bin/busybox`` from busybox-static with
symbolic links for its applets, passwd/group files and the directories a runtime mounts on), contexts
written from a dict, and counts of what a store holds (to show a failed build leaves nothing)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

import ovlcore

BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh", "ls", "cat", "echo", "mkdir", "touch", "rm", "id", "env", "true", "false", "chmod", "chown", "ln", "stat",
    "sha256sum", "find", "test", "printf", "pwd", "sleep", "seq", "xargs", "head", "wc", "cp", "mv", "hostname", "ip",
)
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app user:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"


def busybox_tar() -> bytes:
    """The base image's root file system as a tar (busybox-static is needed: skips without it)."""
    if not os.path.exists(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("proc", 0o555), ("sys", 0o555),
                        ("dev", 0o755), ("home", 0o755), ("home/app", 0o755), ("var", 0o755)):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 1_600_000_000
            if d == "home/app":
                ti.uid = ti.gid = 1000
            tf.addfile(ti)
        ti = tarfile.TarInfo("bin/busybox")
        data = Path(BUSYBOX).read_bytes()
        ti.size, ti.mode, ti.mtime = len(data), 0o755, 1_600_000_000
        tf.addfile(ti, io.BytesIO(data))
        for tool in APPLETS:
            ti = tarfile.TarInfo("bin/" + tool)
            ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "busybox", 1_600_000_000
            tf.addfile(ti)
        for name, body in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(body), 0o644, 1_600_000_000
            tf.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def busybox_image(store: ovlcore.Store, tag: str = "busybox:test") -> ovlcore.Image:
    return store.images.import_archive(io.BytesIO(busybox_tar()), tag=tag)


def write_context(root: Path, files: dict[str, str | bytes | int]) -> Path:
    """A context directory: ``name: content`` (str/bytes: a file; an int: a directory with that mode)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            p.mkdir(exist_ok=True)
            p.chmod(content)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return root


def counts(store: ovlcore.Store) -> tuple[int, int, int]:
    """(images, layers, containers) in the store."""
    return len(store.images.list()), len(store.layers.list()), len(store.containers.list())


def runc_works() -> str | None:
    """Why RUN steps cannot run here (None when they can)."""
    if shutil.which("runc") is None and shutil.which("crun") is None:
        return "no OCI runtime (apt-get install runc)"
    from ovlcore.build.runtime import RuntimeUnavailable, find_runtime

    try:
        find_runtime()
    except RuntimeUnavailable as e:
        return str(e)
    return None


def needs_runtime() -> pytest.MarkDecorator:
    why = runc_works()
    return pytest.mark.skipif(why is not None, reason=why or "")
