"""A Docker engine as the oracle of the interoperability tests: found or skipped with the reason, its
objects named per test and removed afterwards, and a busybox root file system to run in it.

CI starts one (``containerd &``, ``dockerd --iptables=false --bridge=none &``); ``busybox-static`` provides
the binary.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"


def run(*args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(list(args), input=input, capture_output=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


class DockerObjects:
    """Names for Docker images and containers made by one test, all removed at its end."""

    def __init__(self) -> None:
        self.prefix = f"ovlcore-test-{secrets.token_hex(4)}"
        self.images: list[str] = []
        self.containers: list[str] = []

    def image(self, what: str) -> str:
        """A unique ``name:tag``."""
        ref = f"{self.prefix}-{what}:1"
        self.images.append(ref)
        return ref

    def container(self, what: str) -> str:
        name = f"{self.prefix}-{what}"
        self.containers.append(name)
        return name

    def cleanup(self) -> None:
        if self.containers:
            run("docker", "rm", "-f", *self.containers, check=False)
        if self.images:
            run("docker", "rmi", "-f", *self.images, check=False)


def busybox_rootfs(tmp_path: Path) -> Path:
    """A root file system tar: busybox-static with links for the tools the tests use, and some data."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for tool in ("sh", "ls", "cat", "find", "stat", "sha256sum", "test", "xargs", "rm", "mkdir", "echo", "ln"):
        os.symlink("busybox", root / "bin" / tool)
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.txt").write_text("beta\n")
    (data / "big").write_bytes(os.urandom(300_000))
    os.link(data / "a.txt", data / "a-hardlink")
    (root / "gone.txt").write_text("will be deleted\n")
    (root / "olddir" / "deep").mkdir(parents=True)
    (root / "olddir" / "deep" / "x").write_text("x\n")
    (root / "opq" / "sub").mkdir(parents=True)
    (root / "opq" / "keep1").write_text("1\n")
    (root / "opq" / "sub" / "k2").write_text("2\n")
    os.chmod(root / "data" / "sub" / "b.txt", 0o640)
    out = tmp_path / "rootfs.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(root)):
            tf.add(root / name, arcname=name)
    return out


def docker_engine() -> str:
    """The Docker engine's version; skips (with the reason) when there is none to talk to."""
    if shutil.which("docker") is None:
        pytest.skip("Docker is not installed (apt-get install docker.io)")
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("Docker engine not reachable: `docker info` timed out")
    if r.returncode != 0 or not r.stdout.strip():
        why = (r.stderr or r.stdout).strip().splitlines()
        pytest.skip(f"no usable Docker engine (`docker info` failed: {why[-1] if why else r.returncode}); start containerd and dockerd as root")
    if not os.path.exists(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    return r.stdout.strip()
