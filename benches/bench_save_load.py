"""save / load / export / layer.tar against Docker and GNU tar, in the same run on the same data.

Workload (the container issue's): a ~200 MB base image made from this machine's /usr; a container adds
10,000 files of 4 KiB in one directory, appends to 200 image files, deletes one directory, adds one 1 GiB
file (random bytes, so that no compressor gets it for free); committed. Docker gets the very same image
(loaded from ovlcore's save) for its baselines.

The base is the shared root-file-system tar of ``conftest.py`` (``rootfs_tar``). Full size needs
pytest-benchmark enabled; with ``--benchmark-disable`` or ``OVLCORE_BENCH_SMALL=1`` the data is tiny (a few
MB, 100 files, a 1 MB file) so CI runs every bench in seconds. Each group puts ovlcore and its baselines side
by side (``benches/compare.py`` prints the ratios and checks the targets); against Docker, save, export and
load run one timed call per (round, contender), the contenders' order rotating every round::

    pytest benches/bench_save_load.py --benchmark-only --benchmark-group-by=group --benchmark-json=/tmp/b.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import apply_container_workload, docker_load, docker_running, rotated_runs, sh, sha256_of, small_mode

MB = 1 << 20


@dataclass
class Workload:
    root: Path
    store: ovlcore.Store
    image: ovlcore.Image
    tag: str
    small: bool
    work: Path
    archive: Path  # ovlcore's docker-format save of the image, input of the load benches
    container: str  # the container the image was committed from (its changes are still there)
    docker: str | None = None  # why Docker baselines skip; None when they run
    docker_objects: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def workload(small: bool, module_dir: Path, rootfs_tar: Any) -> Iterator[Workload]:
    tiny = small
    work = module_dir
    store = ovlcore.Store(work / "store")
    base = store.images.import_archive(str(rootfs_tar.path), tag="saveload-base:1")
    c = apply_container_workload(store, base, tiny).container
    image = c.commit("saveload:1", message="bench")
    archive = work / "input.tar"
    store.images.save("saveload:1", archive)
    w = Workload(work, store, image, "saveload:1", tiny, work, archive, c.id)
    w.docker = docker_running()
    tag = f"ovlcore-bench-saveload-{os.getpid()}:1"
    if w.docker is None:
        docker_load(store, image, tag, work)
        w.docker_objects.append(tag)
        w.tag = tag
    yield w
    if w.docker is None:
        subprocess.run(["docker", "rm", "-f", f"ovlcore-bench-export-{os.getpid()}"], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", *w.docker_objects], capture_output=True)


def need_docker(w: Workload) -> None:
    if w.docker is not None:
        pytest.skip(f"Docker baseline skipped: {w.docker}")


def rounds(w: Workload) -> int:
    return 3 if w.small else 2


def fresh(out: Path) -> Any:
    """A round's setup: the output path does not exist (freeing a previous 1.3 GB output costs this ext4 up
    to seconds, in whichever contender's round it falls) and no dirty pages are being written back."""

    def setup() -> None:
        out.unlink(missing_ok=True)
        os.sync()

    return setup


def settle() -> None:
    os.sync()


def check_docker_archive(path: Path, w: Workload) -> None:
    """The archive names the image and every layer with its exact size; the top layer hashes to its diff_id."""
    with tarfile.open(path) as tf:
        members = {m.name: m for m in tf.getmembers()}
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["Config"].removesuffix(".json").removeprefix("blobs/sha256/") == w.image.id.removeprefix("sha256:")
        layers = w.image.layers
        assert len(manifest[0]["Layers"]) == len(layers)
        for name, layer in zip(manifest[0]["Layers"], layers):
            m = members[name]
            if m.issym():
                continue
            assert m.size == layer.tar_size
        top = tf.extractfile(members[manifest[0]["Layers"][-1]])
        assert top is not None
        h = hashlib.sha256()
        while chunk := top.read(8 * MB):
            h.update(chunk)
        assert "sha256:" + h.hexdigest() == layers[-1].diff_id


# ----------------------------------------------------------------------------------------------------
# against Docker: save, export, load, one test item per (round, contender), rotated
# ----------------------------------------------------------------------------------------------------

#: contenders, in the order of the first round (each later round starts one further on)
SAVERS = ("ovlcore", "ovlcore_oci", "docker", "sha256")
EXPORTERS = ("path_ovlcore", "file_ovlcore", "docker")
LOADERS = ("ovlcore", "docker")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each item is one timed call; ``compare.py`` merges each contender's items by ``extra_info["series"]``,
    so noise and drift over the run fall on every contender alike."""
    n = 1 if small_mode(metafunc.config) else 3
    for arg, names in (("save_run", SAVERS), ("export_run", EXPORTERS), ("load_run", LOADERS)):
        if arg in metafunc.fixturenames:
            runs = rotated_runs(names, n)
            metafunc.parametrize(arg, runs, ids=[f"{who}-r{r}" for r, who in runs])


def timed_once(benchmark: Any, call: Any, setup: Any) -> Any:
    out: list[Any] = []
    benchmark.pedantic(lambda *a: out.append(call(*a)), setup=setup, rounds=1, iterations=1)
    return out[-1]


SAVE: dict[str, tuple[str, str, Any]] = {
    "ovlcore": ("ours", "images.save (docker-archive)", lambda w, out: w.store.images.save(w.tag, out)),
    "ovlcore_oci": ("info", "images.save (OCI layout)", lambda w, out: w.store.images.save(w.tag, out, format="oci")),
    "docker": ("baseline", "docker save -o", lambda w, out: sh("docker", "save", "-o", str(out), w.tag)),
    # The floor of any save that checks its layers against their diff_ids, as ovlcore's and Docker's do:
    # the archive's bytes hashed once (OpenSSL's sha256, from the page cache), nothing written.
    "sha256": ("info", "sha256 of the archive's bytes alone", lambda w, out: sha256_of(w.archive)),
}


@pytest.mark.benchmark(group="save")
def test_save(benchmark: Any, workload: Workload, save_run: tuple[int, str]) -> None:
    rnd, who = save_run
    role, what, call = SAVE[who]
    if who == "docker":
        need_docker(workload)
    out = workload.work / f"save-{who}.tar"
    benchmark.extra_info.update(role=role, what=what, series=f"test_save_{who}", round=rnd)
    got = timed_once(benchmark, lambda: call(workload, out), fresh(out))
    if who == "sha256":
        if workload.small:  # checked the slow way where that is cheap
            assert got == hashlib.sha256(workload.archive.read_bytes()).hexdigest()
        return
    check_docker_archive(out, workload)  # the OCI output carries a docker manifest.json too
    out.unlink()


def check_export(path: Path, w: Workload) -> int:
    with tarfile.open(path) as tf:
        names = tf.getnames()
        big = tf.getmember("big")
    assert sum(1 for n in names if n.startswith("data/f")) == (100 if w.small else 10_000)
    assert big.size == (1 if w.small else 1024) * MB
    return len(names)


@pytest.fixture(scope="module")
def export_container(workload: Workload) -> ovlcore.Container:
    return workload.store.containers.create(workload.image, name="export-bench")


def docker_export_name() -> str:
    return f"ovlcore-bench-export-{os.getpid()}"


def make_docker_export_container(w: Workload) -> None:
    """Docker's container of the image, made by the first Docker export round (before its timed call) and
    removed by the first Docker load round."""
    if subprocess.run(["docker", "inspect", docker_export_name()], capture_output=True).returncode != 0:
        sh("docker", "create", "--name", docker_export_name(), "--network", "none", w.tag, "sh")


def export_to_file(c: ovlcore.Container, out: Path) -> None:
    """To an open file (no temp name and rename), as `docker export > file` writes."""
    with open(out, "wb") as f:
        c.export(f)


EXPORT: dict[str, tuple[str, str, Any]] = {
    "path_ovlcore": ("ours", "container.export(path)", lambda w, c, out: c.export(out)),
    "file_ovlcore": ("info", "container.export(open file)", lambda w, c, out: export_to_file(c, out)),
    "docker": ("baseline", "docker export -o", lambda w, c, out: sh("docker", "export", "-o", str(out), docker_export_name())),
}


@pytest.mark.benchmark(group="export-docker")
def test_export(benchmark: Any, workload: Workload, export_container: ovlcore.Container, export_run: tuple[int, str]) -> None:
    rnd, who = export_run
    role, what, call = EXPORT[who]
    if who == "docker":
        need_docker(workload)
        make_docker_export_container(workload)
    out = workload.work / f"export-{who}.tar"
    benchmark.extra_info.update(role=role, what=what, series=f"test_export_{who}", round=rnd)
    timed_once(benchmark, lambda: call(workload, export_container, out), fresh(out))
    # Docker adds its init entries (.dockerenv, /dev, /proc, /sys, /etc/hosts ...): about a dozen.
    check_export(out, workload)
    out.unlink()


def retag_docker(w: Workload) -> None:
    """docker load restores the archive's tag (saveload:1); give the image the bench's tag back."""
    inspect = json.loads(sh("docker", "image", "inspect", "saveload:1").stdout)
    assert inspect[0]["Id"] == w.image.id
    sh("docker", "tag", "saveload:1", w.tag)
    if "saveload:1" not in w.docker_objects:
        w.docker_objects.append("saveload:1")


def unloaded(w: Workload, who: str) -> Any:
    """A load round's setup: the image is in neither store (ovlcore's is a new, empty one; Docker has
    removed the image, its layers and the export container using them, so that the load really extracts)."""

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if who == "docker":
            subprocess.run(["docker", "rm", "-f", docker_export_name()], capture_output=True)
            subprocess.run(["docker", "rmi", "-f", w.image.id], capture_output=True)
            settle()
            return (w,), {}
        shutil.rmtree(w.work / "load-store", ignore_errors=True)
        settle()
        return (ovlcore.Store(w.work / "load-store"),), {}

    return setup


@pytest.mark.benchmark(group="load")
def test_load(benchmark: Any, workload: Workload, load_run: tuple[int, str]) -> None:
    rnd, who = load_run
    if who == "docker":
        need_docker(workload)
    role, what = ("ours", "images.load (into an empty store)") if who == "ovlcore" else ("baseline", "docker load -i (image and layers removed first)")
    benchmark.extra_info.update(role=role, what=what, series=f"test_load_{who}", round=rnd)
    if who == "docker":
        timed_once(benchmark, lambda w: sh("docker", "load", "-i", str(w.archive)), unloaded(workload, who))
        retag_docker(workload)
        return
    (img,) = timed_once(benchmark, lambda store: store.images.load(workload.archive), unloaded(workload, who))
    assert img.id == workload.image.id
    assert [x.diff_id for x in img.layers] == [x.diff_id for x in workload.image.layers]


# ----------------------------------------------------------------------------------------------------
# layer.tar throughput
# ----------------------------------------------------------------------------------------------------


def drain(stream: Any) -> int:
    n = 0
    while chunk := stream.read(4 * MB):
        n += len(chunk)
    return n


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
@pytest.mark.benchmark(group="layer-tar")
def test_layer_tar_ovlcore(benchmark: Any, workload: Workload, compression: str | None) -> None:
    """The committed top layer (10,000 files, a 1 GiB file, ~1.1 GB of tar) streamed by ``Layer.tar``."""
    layer = workload.image.layers[-1]
    results: list[Any] = []

    def run() -> None:
        stream = layer.tar(compression)
        results.append((drain(stream), stream.diff_id))

    benchmark.group = f"layer-tar-{compression or 'plain'}"
    benchmark.extra_info.update(role="ours", what=f"Layer.tar({compression!r}) read to the end", tar_bytes=layer.tar_size)
    benchmark.pedantic(run, rounds=rounds(workload), iterations=1)
    size, diff_id = results[-1]
    assert diff_id == layer.diff_id
    if compression is None:
        assert size == layer.tar_size


@pytest.mark.benchmark(group="layer-tar-plain")
def test_layer_tar_ovlcore_unverified(benchmark: Any, workload: Workload) -> None:
    """The same without hashing the stream (``verify=False``): sha256, at ~1.3 GB/s on this CPU, is what
    bounds the verified stream; GNU tar computes no digest."""
    layer = workload.image.layers[-1]
    sizes: list[int] = []
    benchmark.extra_info.update(role="info", what="Layer.tar(verify=False) read to the end", tar_bytes=layer.tar_size)
    benchmark.pedantic(lambda: sizes.append(drain(layer.tar(verify=False))), rounds=rounds(workload), iterations=1)
    assert sizes[-1] == layer.tar_size


@pytest.mark.parametrize(
    "compressor, group", [("cat", "plain"), ("gzip -1", "gzip"), ("pigz -1", "gzip"), ("zstd -T0 -3", "zstd")]
)
@pytest.mark.benchmark(group="layer-tar")
def test_layer_tar_gnu_tar(benchmark: Any, workload: Workload, compressor: str, group: str) -> None:
    """GNU tar over the same layer directory, piped to the compressor at the level ovlcore uses (gzip 1,
    zstd 3), into /dev/null through a pipe (so that tar reads every byte)."""
    tool = compressor.split()[0]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    layer = workload.image.layers[-1]
    cmd = f"tar -C {layer.path} -cf - . | {compressor} > /dev/null"
    benchmark.group = f"layer-tar-{group}"
    benchmark.extra_info.update(role="baseline", what=f"tar -c | {compressor}", tar_bytes=layer.tar_size)
    benchmark.pedantic(lambda: sh("bash", "-o", "pipefail", "-c", cmd), rounds=rounds(workload), iterations=1)


# ----------------------------------------------------------------------------------------------------
# peak memory (RSS of a process doing one save, load, export or commit of the workload)
# ----------------------------------------------------------------------------------------------------

PEAK_RSS_LIMIT = 150 << 20

PEAK = """
import sys
import ovlcore
root, what, tag, container, out = sys.argv[1:6]
store = ovlcore.Store(root)
if what == "load":
    store = ovlcore.Store(out)
# The high-water mark counts from here (opening the store and importing are not the operation's).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
if what == "save":
    store.images.save(tag, out)
elif what == "load":
    store.images.load(sys.argv[6])
elif what == "export":
    store.containers.get(container).export(out)
else:
    store.containers.get(container).commit()
# VmHWM: the peak RSS of this process's own address space (not ru_maxrss, which Linux carries across a
# vfork + exec from the parent).
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


@pytest.mark.benchmark(group="saveload-memory")
@pytest.mark.parametrize("what", ["save", "load", "export", "commit"])
def test_peak_rss(benchmark: Any, workload: Workload, what: str) -> None:
    """Issue 14's goal: under 150 MB for each, with the 1 GiB file of the workload in the image."""
    benchmark.extra_info.update(role="info", what=f"peak RSS of a process doing {what}")
    out = workload.work / f"rss-{what}"
    peaks: list[int] = []

    def run() -> None:
        args = [str(workload.root / "store"), what, workload.tag, workload.container, str(out), str(workload.archive)]
        done = subprocess.run([sys.executable, "-c", PEAK, *args], check=True, capture_output=True, text=True)
        peaks.append(int(done.stdout.split()[-1]))

    try:
        benchmark.pedantic(run, setup=settle, rounds=1, iterations=1)
    finally:
        if out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        else:
            out.unlink(missing_ok=True)
    peak = max(peaks)
    benchmark.extra_info.update(peak_rss_bytes=peak, limit_bytes=PEAK_RSS_LIMIT)
    print(f"\n[ovlcore benches] peak RSS of {what}: {peak / MB:.1f} MiB")
    if not workload.small:
        assert peak < PEAK_RSS_LIMIT, f"{what} peaked at {peak / MB:.1f} MiB"
