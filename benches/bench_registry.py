"""push / pull against one local registry (Debian's ``docker-registry``, plain HTTP on 127.0.0.1), ovlcore
against ``docker push/pull``, ``skopeo copy`` and ``podman pull`` on the same image, in the same run.

Image (the registry issue's): the shared benchmark root file system (``rootfs_tar``), plus a layer of 2,000
files of 4 KiB and one 256 MiB file of random bytes (no compressor gets it for free); small sizes under
``--benchmark-disable`` / ``OVLCORE_BENCH_SMALL=1`` (100 files, 1 MiB). Before every push round the registry is
restarted with empty storage on the same port (nothing to skip, nothing to mount from); every pull round
starts from an empty store (ovlcore, podman's own ``--root``) or after ``docker rmi``.

Also: a second push of the same image sends no blob (asserted), and the peak RSS of a process that pushes or
pulls the image (target < 150 MB; ``benches/compare.py`` checks it)::

    pytest benches/bench_registry.py --benchmark-only --benchmark-group-by=group --benchmark-json=/tmp/r.json
    python benches/compare.py /tmp/r.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import MIB, docker_running
from support.registry import Registry, start_registry

#: files of 4 KiB in the extra layer, size of its big file
FULL = (2000, 256 * MIB)
SMALL = (100, 1 * MIB)
#: the largest acceptable peak RSS of a push or pull of the image (full size)
PEAK_RSS_LIMIT = 150 * MIB


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


@dataclass
class RegistryWorkload:
    registry: Registry
    store: ovlcore.Store
    image: ovlcore.Image
    tag: str
    work: Path
    small: bool
    archive: Path  # docker-archive of the image (skopeo's source; Docker's copy is loaded from it)
    config_home: Path  # DOCKER_CONFIG / REGISTRY_AUTH_FILE / ... of this module: never the user's
    docker: str | None = None  # why the Docker baselines skip (None: they run)
    docker_refs: list[str] = field(default_factory=list)
    rounds_made: Iterator[int] = field(default_factory=count)

    def ref(self, what: str) -> str:
        return self.registry.ref(f"bench/{what}:1")

    def fresh_dir(self, what: str) -> Path:
        d = self.work / "rounds" / f"{what}-{next(self.rounds_made)}"
        d.mkdir(parents=True)
        return d

    def manifest_digest(self, ref: str) -> str:
        status, headers, _ = self.registry.manifest(ref.split("/", 1)[1].split(":")[0], "1")
        assert status == 200, status
        return headers["docker-content-digest"]

    def blob_uploads_since(self, n: int) -> list[str]:
        return [f"{a.method} {a.path}" for a in self.registry.access_log()[n:] if "/blobs/uploads/" in a.path]


def rounds(w: RegistryWorkload) -> int:
    return 1 if w.small else 3


@pytest.fixture(scope="module")
def workload(small: bool, module_dir: Path, rootfs_tar: Any) -> Iterator[RegistryWorkload]:
    home = module_dir / "home"
    env = {
        "DOCKER_CONFIG": str(home / "docker"), "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "XDG_RUNTIME_DIR": str(home / "run"), "XDG_CONFIG_HOME": str(home / "config"),
    }
    for k in ("docker", "run", "config"):
        (home / k).mkdir(parents=True)
    (home / "auth.json").write_text("{}")  # podman insists that $REGISTRY_AUTH_FILE exists
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        reg = start_registry(module_dir / "registry", "plain")
        w: RegistryWorkload | None = None
        try:
            w = _workload(reg, small, module_dir, rootfs_tar, home)
            yield w
        finally:
            reg.stop()
            if w is not None and w.docker is None:
                subprocess.run(["docker", "rmi", "-f", *w.docker_refs], capture_output=True)


def _workload(reg: Registry, small: bool, work: Path, rootfs_tar: Any, home: Path) -> RegistryWorkload:
    store = ovlcore.Store(work / "store")  # loopback over plain HTTP needs no registry settings
    base = store.images.import_archive(str(rootfs_tar.path), tag="registry-base:1")
    nfiles, big = SMALL if small else FULL
    c = store.containers.create(base, name="registry-bench")
    c.fs.mkdir("/data")
    block = os.urandom(4096)
    for i in range(nfiles):
        c.fs.write_bytes(f"/data/f{i:05d}", block)
    with c.fs.open("/big", "wb") as f:
        for _ in range(big // MIB):
            f.write(os.urandom(MIB))
    image = c.commit("registry-bench:1", message="bench")
    archive = work / "image.tar"
    store.images.save("registry-bench:1", archive)
    w = RegistryWorkload(reg, store, image, "registry-bench:1", work, small, archive, home)
    w.docker = docker_running()
    if w.docker is None:
        ref = w.ref("docker")
        loaded = sh("docker", "load", "-i", str(archive)).stdout
        assert image.id.removeprefix("sha256:")[:12] in loaded or "registry-bench:1" in loaded, loaded
        sh("docker", "tag", "registry-bench:1", ref)
        w.docker_refs += ["registry-bench:1", ref]
    return w


def need(w: RegistryWorkload, tool: str) -> None:
    if tool == "docker" and w.docker is not None:
        pytest.skip(f"Docker baseline skipped: {w.docker}")
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} baseline skipped: {tool} is not installed")


def wiped(w: RegistryWorkload) -> Any:
    """A push round's setup: the registry empty again, and no dirty pages being written back."""

    def setup() -> None:
        w.registry.restart(wipe=True)
        os.sync()

    return setup


# ----------------------------------------------------------------------------------------------------
# push
# ----------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="registry-push")
def test_push_ovlcore(benchmark: Any, workload: RegistryWorkload) -> None:
    ref = workload.ref("ovlcore")
    benchmark.extra_info.update(role="ours", what="images.push (docker format, gzip)")
    digests: list[str] = []
    benchmark.pedantic(lambda: digests.append(workload.store.images.push(workload.tag, ref)),
                       setup=wiped(workload), rounds=rounds(workload), iterations=1)
    assert workload.manifest_digest(ref) == digests[-1]


@pytest.mark.benchmark(group="registry-push")
def test_push_docker(benchmark: Any, workload: RegistryWorkload) -> None:
    need(workload, "docker")
    ref = workload.ref("docker")
    benchmark.extra_info.update(role="baseline", what="docker push")
    benchmark.pedantic(lambda: sh("docker", "push", "-q", ref), setup=wiped(workload), rounds=rounds(workload), iterations=1)
    workload.manifest_digest(ref)


@pytest.mark.benchmark(group="registry-push")
def test_push_skopeo(benchmark: Any, workload: RegistryWorkload) -> None:
    need(workload, "skopeo")
    ref = workload.ref("skopeo")
    benchmark.extra_info.update(role="baseline", what="skopeo copy docker-archive: docker://")
    benchmark.pedantic(
        lambda: sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"docker-archive:{workload.archive}", f"docker://{ref}"),
        setup=wiped(workload), rounds=rounds(workload), iterations=1)
    workload.manifest_digest(ref)


@pytest.mark.benchmark(group="registry-push")
def test_push_skopeo_oci(benchmark: Any, workload: RegistryWorkload) -> None:
    need(workload, "skopeo")
    layout = workload.work / "oci-layout"
    if not layout.exists():
        layout.mkdir()
        tar = workload.work / "oci.tar"
        workload.store.images.save(workload.tag, tar, format="oci")
        sh("tar", "-xf", str(tar), "-C", str(layout))
        tar.unlink()
    ref = workload.ref("skopeo-oci")
    benchmark.extra_info.update(role="info", what="skopeo copy oci: docker:// (layers compressed by skopeo)")
    benchmark.pedantic(lambda: sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}", f"docker://{ref}"),
                       setup=wiped(workload), rounds=rounds(workload), iterations=1)
    workload.manifest_digest(ref)


@pytest.mark.benchmark(group="registry-push-again")
def test_push_again_sends_no_blob(benchmark: Any, workload: RegistryWorkload) -> None:
    workload.registry.restart(wipe=True)
    ref = workload.ref("again")
    first = workload.store.images.push(workload.tag, ref)
    benchmark.extra_info.update(role="info", what="images.push of an image the registry has")
    marks: list[int] = []

    def again() -> None:
        marks.append(len(workload.registry.access_log()))
        assert workload.store.images.push(workload.tag, ref) == first

    benchmark.pedantic(again, rounds=rounds(workload), iterations=1)
    assert workload.blob_uploads_since(marks[0]) == []


# ----------------------------------------------------------------------------------------------------
# pull
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(workload: RegistryWorkload) -> str:
    """The image in the registry (pushed by skopeo from the docker-archive: a reference push, not ours), for
    the pull rounds."""
    workload.registry.restart(wipe=True)
    ref = workload.ref("pull")
    if shutil.which("skopeo"):
        sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"docker-archive:{workload.archive}", f"docker://{ref}")
    else:
        workload.store.images.push(workload.tag, ref)
    return ref


@pytest.mark.benchmark(group="registry-pull")
def test_pull_ovlcore(benchmark: Any, workload: RegistryWorkload, pushed: str) -> None:
    benchmark.extra_info.update(role="ours", what="images.pull into an empty store")
    made: list[ovlcore.Image] = []

    def setup() -> tuple[tuple[ovlcore.Store], dict[str, Any]]:
        os.sync()
        return (ovlcore.Store(workload.fresh_dir("pull-ovlcore")),), {}

    benchmark.pedantic(lambda s: made.append(s.images.pull(pushed)), setup=setup, rounds=rounds(workload), iterations=1)
    assert (made[-1].id, made[-1].diff_ids) == (workload.image.id, workload.image.diff_ids)


@pytest.mark.benchmark(group="registry-pull")
def test_pull_docker(benchmark: Any, workload: RegistryWorkload, pushed: str) -> None:
    need(workload, "docker")
    benchmark.extra_info.update(role="baseline", what="docker pull after docker rmi")

    def setup() -> None:
        subprocess.run(["docker", "rmi", "-f", workload.image.id], capture_output=True)
        os.sync()

    benchmark.pedantic(lambda: sh("docker", "pull", "-q", pushed), setup=setup, rounds=rounds(workload), iterations=1)
    workload.docker_refs.append(pushed)
    inspect = json.loads(sh("docker", "image", "inspect", pushed).stdout)[0]
    assert inspect["Id"] == workload.image.id


@pytest.mark.benchmark(group="registry-pull")
def test_pull_podman(benchmark: Any, workload: RegistryWorkload, pushed: str) -> None:
    need(workload, "podman")
    benchmark.extra_info.update(role="baseline", what="podman pull (own --root/--runroot)")
    stores: list[list[str]] = []

    def setup() -> None:
        # podman refuses a runroot longer than 50 characters: that one lives directly under /tmp
        run = tempfile.mkdtemp(prefix="ovlpod-", dir="/tmp")
        stores.append(["podman", "--root", str(workload.fresh_dir("podman")), "--runroot", run, "--storage-driver", "overlay"])
        os.sync()

    try:
        benchmark.pedantic(lambda: sh(*stores[-1], "pull", "-q", "--tls-verify=false", pushed), setup=setup,
                           rounds=rounds(workload), iterations=1)
        ids = sh(*stores[-1], "images", "--no-trunc", "--format", "{{.ID}}").stdout.split()
        assert workload.image.id.removeprefix("sha256:") in [i.removeprefix("sha256:") for i in ids]
    finally:
        for podman in stores:  # podman removes what it made (nothing is mounted after a pull), then the rest goes
            subprocess.run([*podman, "rmi", "-a", "-f"], capture_output=True)
            shutil.rmtree(podman[2], ignore_errors=True)
            shutil.rmtree(podman[4], ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# peak memory (RSS of a process doing one push or pull)
# ----------------------------------------------------------------------------------------------------

PEAK = """
import resource, sys
import ovlcore
root, what, ref = sys.argv[1:4]
store = ovlcore.Store(root)
if what == "push":
    store.images.push("registry-bench:1", ref)
else:
    store.images.pull(ref)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.benchmark(group="registry-memory")
@pytest.mark.parametrize("what", ["push", "pull"])
def test_peak_rss(benchmark: Any, workload: RegistryWorkload, pushed: str, what: str) -> None:
    benchmark.extra_info.update(role="info", what=f"peak RSS of a process doing images.{what}")
    if what == "push":
        workload.registry.restart(wipe=True)
        root, ref = workload.work / "store", workload.ref("rss")
    else:
        root, ref = workload.fresh_dir("rss-pull"), pushed
        if workload.registry.manifest(pushed.split("/", 1)[1].split(":")[0], "1")[0] != 200:
            workload.store.images.push(workload.tag, pushed)
    peaks: list[int] = []

    def run() -> None:
        out = sh(sys.executable, "-c", PEAK, str(root), what, ref).stdout
        peaks.append(int(out.split()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    peak = max(peaks)
    benchmark.extra_info.update(peak_rss_bytes=peak, limit_bytes=PEAK_RSS_LIMIT)
    print(f"\n[ovlcore benches] peak RSS of images.{what}: {peak / MIB:.1f} MiB")
    if not workload.small:
        assert peak < PEAK_RSS_LIMIT, f"images.{what} peaked at {peak / MIB:.1f} MiB"
