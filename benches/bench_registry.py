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
from _support import MIB, docker_running, rotated_runs, sh, small_mode
from support.registry import Registry, start_registry

#: files of 4 KiB in the extra layer, size of its big file
FULL = (2000, 256 * MIB)
SMALL = (100, 1 * MIB)
#: the largest acceptable peak RSS of a push or pull of the image (full size)
PEAK_RSS_LIMIT = 150 * MIB


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
    podman_stores: list[list[str]] = field(default_factory=list)  # podman argv of each pull round

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
            for podman in w.podman_stores if w is not None else []:  # podman removes what it made, then the rest goes
                subprocess.run([*podman, "rmi", "-a", "-f"], capture_output=True)
                shutil.rmtree(podman[2], ignore_errors=True)
                shutil.rmtree(podman[4], ignore_errors=True)
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


#: push contenders, in the order of the first round (each later round starts one further on)
PUSHERS = ("ovlcore", "docker", "skopeo", "skopeo-oci")
PULLERS = ("ovlcore", "docker", "podman")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test item per (round, contender) (:func:`rotated_runs`). Each item is one timed call;
    ``compare.py`` takes each contender's median over its items (``extra_info["series"]``)."""
    n = 1 if small_mode(metafunc.config) else int(os.environ.get("OVLCORE_BENCH_REGISTRY_ROUNDS", "5"))
    for arg, names in (("push_run", PUSHERS), ("pull_run", PULLERS)):
        if arg in metafunc.fixturenames:
            runs = rotated_runs(names, n)
            metafunc.parametrize(arg, runs, ids=[f"{who}-r{r}" for r, who in runs])


def oci_layout(w: RegistryWorkload) -> Path:
    layout = w.work / "oci-layout"
    if not layout.exists():
        layout.mkdir()
        tar = w.work / "oci.tar"
        w.store.images.save(w.tag, tar, format="oci")
        sh("tar", "-xf", str(tar), "-C", str(layout))
        tar.unlink()
    return layout


#: push contender -> (role, what, the tool it needs or None, the call pushing to a reference)
PUSH: dict[str, tuple[str, str, str | None, Any]] = {
    "ovlcore": ("ours", "images.push (docker format, gzip)", None, lambda w, ref: w.store.images.push(w.tag, ref)),
    "docker": ("baseline", "docker push", "docker", lambda w, ref: sh("docker", "push", "-q", ref)),
    "skopeo": ("baseline", "skopeo copy docker-archive: docker://", "skopeo",
               lambda w, ref: sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"docker-archive:{w.archive}", f"docker://{ref}")),
    "skopeo-oci": ("info", "skopeo copy oci: docker:// (layers compressed by skopeo)", "skopeo",
                   lambda w, ref: sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{oci_layout(w)}", f"docker://{ref}")),
}


@pytest.mark.benchmark(group="registry-push")
def test_push(benchmark: Any, workload: RegistryWorkload, push_run: tuple[int, str]) -> None:
    rnd, who = push_run
    role, what, tool, call = PUSH[who]
    if tool:
        need(workload, tool)
    if who == "skopeo-oci":
        oci_layout(workload)  # made once, outside the timed call
    ref = workload.ref(who)
    benchmark.extra_info.update(role=role, what=what, series=f"test_push_{who.replace('-', '_')}", round=rnd)
    out: list[Any] = []
    marks: list[int] = []

    def setup() -> None:
        wiped(workload)()
        marks.append(len(workload.registry.access_log()))

    benchmark.pedantic(lambda: out.append(call(workload, ref)), setup=setup, rounds=1, iterations=1)
    digest = workload.manifest_digest(ref)
    if who == "ovlcore":
        assert digest == out[-1]
    # every layer and the config were uploaded whole (completed with a digest), none skipped or mounted
    done = [u for u in workload.blob_uploads_since(marks[-1]) if u.startswith("PUT ") and "digest=" in u]
    assert len(done) == len(workload.image.diff_ids) + 1, done


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


def podman_argv(w: RegistryWorkload) -> list[str]:
    """A podman command line on a store of its own (a new --root each round: nothing to reuse)."""
    # podman refuses a runroot longer than 50 characters: that one lives directly under /tmp
    run = tempfile.mkdtemp(prefix="ovlpod-", dir="/tmp")
    return ["podman", "--root", str(w.fresh_dir("podman")), "--runroot", run, "--storage-driver", "overlay"]


def docker_forget(w: RegistryWorkload) -> None:
    """Remove the image and so its layers from Docker (no container uses them), and check it is gone."""
    subprocess.run(["docker", "rmi", "-f", w.image.id], capture_output=True)
    left = subprocess.run(["docker", "image", "inspect", w.image.id], capture_output=True)
    assert left.returncode != 0, "docker rmi left the image"
    for diff_id in w.image.diff_ids:  # no layer of the image left in Docker's layer store either
        layerdb = Path("/var/lib/docker/image/overlay2/layerdb/sha256")
        if layerdb.is_dir():
            assert not any((d / "diff").read_text() == diff_id for d in layerdb.iterdir() if (d / "diff").exists()), \
                f"Docker still has layer {diff_id}"


@pytest.mark.benchmark(group="registry-pull")
def test_pull(benchmark: Any, workload: RegistryWorkload, pushed: str, pull_run: tuple[int, str]) -> None:
    rnd, who = pull_run
    if who != "ovlcore":
        need(workload, who)
    role = "ours" if who == "ovlcore" else "baseline"
    what = {"ovlcore": "images.pull into an empty store", "docker": "docker pull after docker rmi (image and layers)",
            "podman": "podman pull (a new --root/--runroot each round)"}[who]
    benchmark.extra_info.update(role=role, what=what, series=f"test_pull_{who}", round=rnd)
    made: list[Any] = []
    podman: list[str] = []

    def setup() -> None:
        if who == "ovlcore":
            made.append(ovlcore.Store(workload.fresh_dir("pull-ovlcore")))
        elif who == "docker":
            docker_forget(workload)
        else:
            podman.extend(podman_argv(workload))
        os.sync()

    def run() -> None:
        if who == "ovlcore":
            made.append(made[-1].images.pull(pushed))
        elif who == "docker":
            sh("docker", "pull", "-q", pushed)
        else:
            sh(*podman, "pull", "-q", "--tls-verify=false", pushed)

    try:
        benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
        if who == "ovlcore":
            assert (made[-1].id, made[-1].diff_ids) == (workload.image.id, workload.image.diff_ids)
        elif who == "docker":
            if pushed not in workload.docker_refs:
                workload.docker_refs.append(pushed)
            assert json.loads(sh("docker", "image", "inspect", pushed).stdout)[0]["Id"] == workload.image.id
        else:
            ids = sh(*podman, "images", "--no-trunc", "--format", "{{.ID}}").stdout.split()
            assert workload.image.id.removeprefix("sha256:") in [i.removeprefix("sha256:") for i in ids]
    finally:
        # Removed at the end of the module, not now: ext4 makes files created within minutes of a mass
        # deletion slow (see README, method notes), which would fall on the next contender.
        if podman:
            workload.podman_stores.append(podman)


# ----------------------------------------------------------------------------------------------------
# peak memory (RSS of a process doing one push or pull)
# ----------------------------------------------------------------------------------------------------

PEAK = """
import sys
import ovlcore
root, what, ref = sys.argv[1:4]
store = ovlcore.Store(root)
if what.startswith("push"):
    store.images.push("registry-bench:1", ref, compression="zstd" if what == "push-zstd" else "gzip")
else:
    store.images.pull(ref)
# VmHWM: the peak RSS of this process's own address space. Not getrusage's ru_maxrss: Linux carries the
# parent's high-water mark across a vfork + exec (Python's subprocess), so it reported the pytest process.
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


@pytest.mark.benchmark(group="registry-memory")
@pytest.mark.parametrize("what", ["push", "push-zstd", "pull"])
def test_peak_rss(benchmark: Any, workload: RegistryWorkload, pushed: str, what: str) -> None:
    benchmark.extra_info.update(role="info", what=f"peak RSS of a process doing images.{what}")
    if what.startswith("push"):
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
