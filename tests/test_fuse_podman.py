"""podman runs containers on ``ovlcore-fuse`` as its overlay ``mount_program`` (storage.conf).

Root only, with podman's own ``--root``/``--runroot`` under a temporary directory, ``--runtime runc``
(Debian's crun refuses containers here), explicit ulimits within the hard limits and no network. The
image (busybox-static) is built and saved by ovlcore and loaded by podman from that archive.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import ovlcore
from support.fuse import require_fuse
from support.privilege import IS_ROOT
from support.tars import D, F, L, tar

pytestmark = [pytest.mark.timeout(600), pytest.mark.skipif(not IS_ROOT, reason="podman with its own --root needs root")]

BUSYBOX = "/bin/busybox"


def _limit(which: int, want: int) -> str:
    _, hard = resource.getrlimit(which)
    n = want if hard == resource.RLIM_INFINITY else min(want, hard)
    return f"{n}:{n}"


def test_podman_run_on_ovlcore_fuse(tmp_path: Path) -> None:
    require_fuse()
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")
    # The helper podman runs: a wrapper around this interpreter (nothing needs to be on PATH).
    helper = tmp_path / "ovlcore-fuse"
    helper.write_text(f"#!/bin/sh\nexec {sys.executable} -m ovlcore.fusemount \"$@\"\n")
    helper.chmod(0o755)
    # An image with busybox, made and saved by ovlcore.
    store = ovlcore.Store(tmp_path / "store")
    layer = tar(D("bin"), F("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755), L("bin/sh", "busybox"),
                L("bin/cat", "busybox"), L("bin/ls", "busybox"), D("etc"), F("etc/motd", "from the image\n"),
                D("tmp", 0o1777))
    (tmp_path / "rootfs.tar").write_bytes(layer)
    store.images.import_archive(tmp_path / "rootfs.tar", tag="bb:1", changes=['CMD ["/bin/sh"]'])
    store.images.save(["bb:1"], tmp_path / "bb.tar")
    conf = tmp_path / "storage.conf"
    # podman wants a short runroot (at most 50 characters).
    short = Path(tempfile.mkdtemp(prefix="ovp-", dir="/tmp"))
    proot, prun = short / "root", short / "run"
    conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{proot}"\n'
        f'runroot = "{prun}"\n'
        "[storage.options.overlay]\n"
        f'mount_program = "{helper}"\n'
        'mountopt = "nodev"\n'
    )
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(tmp_path)}
    base = ["podman", "--root", str(proot), "--runroot", str(prun), "--storage-driver", "overlay",
            "--storage-opt", f"overlay.mount_program={helper}", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--events-backend", "none"]

    def podman(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, f"podman {' '.join(args)} failed ({r.returncode}):\n{r.stderr}"
        return r

    try:
        podman("load", "-i", str(tmp_path / "bb.tar"))
        r = podman("run", "--rm", "--network", "none", "--ulimit", f"nofile={_limit(resource.RLIMIT_NOFILE, 1024)}",
                   "--ulimit", f"nproc={_limit(resource.RLIMIT_NPROC, 1024)}", "localhost/bb:1",
                   "/bin/sh", "-c", "cat /etc/motd; echo written > /etc/motd; cat /etc/motd; mv /bin /bin2 && /bin2/ls /tmp && echo moved; grep -c ' / fuse' /proc/mounts")
        out = r.stdout.splitlines()
        assert out[:4] == ["from the image", "written", "moved", "1"], r.stdout
    finally:
        subprocess.run([*base, "rm", "-af"], capture_output=True, env=env, timeout=120)
        subprocess.run([*base, "system", "reset", "-f"], capture_output=True, env=env, timeout=120)
        # Anything podman left mounted under the temporary directory goes.
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith((str(tmp_path), str(short)))]
        for p in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)
        shutil.rmtree(short, ignore_errors=True)
