"""save / load / export / layer.tar against Docker and GNU tar, in the same run on the same data.

Workload (the container issue's): a ~200 MB base image made from this machine's /usr; a container adds
10,000 files of 4 KiB in one directory, appends to 200 image files, deletes one directory, adds one 1 GiB
file (random bytes, so that no compressor gets it for free); committed. Docker gets the very same image
(loaded from ovlcore's save) for its baselines.

The base is the shared root-file-system tar of ``conftest.py`` (``rootfs_tar``). Full size needs
pytest-benchmark enabled; with ``--benchmark-disable`` or ``OVLCORE_BENCH_SMALL=1`` the data is tiny (a few
MB, 100 files, a 1 MB file) so CI runs every bench in seconds. Each group puts ovlcore and its baselines side
by side (``benches/compare.py`` prints the ratios and checks the targets)::

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
from _support import apply_container_workload, docker_load, docker_running

MB = 1 << 20


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)


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
# save
# ----------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="save")
def test_save_ovlcore(benchmark: Any, workload: Workload) -> None:
    out = workload.work / "save-ovlcore.tar"
    benchmark.extra_info.update(role="ours", what="images.save (docker-archive)")
    benchmark.pedantic(lambda: workload.store.images.save(workload.tag, out), setup=fresh(out), rounds=rounds(workload), iterations=1)
    check_docker_archive(out, workload)
    out.unlink()


@pytest.mark.benchmark(group="save")
def test_save_ovlcore_oci(benchmark: Any, workload: Workload) -> None:
    out = workload.work / "save-ovlcore-oci.tar"
    benchmark.extra_info.update(role="info", what="images.save (OCI layout)")
    benchmark.pedantic(
        lambda: workload.store.images.save(workload.tag, out, format="oci"), setup=fresh(out), rounds=rounds(workload), iterations=1
    )
    check_docker_archive(out, workload)  # the OCI output carries a docker manifest.json too
    out.unlink()


@pytest.mark.benchmark(group="save")
def test_save_docker(benchmark: Any, workload: Workload) -> None:
    need_docker(workload)
    out = workload.work / "save-docker.tar"
    benchmark.extra_info.update(role="baseline", what="docker save -o")
    benchmark.pedantic(lambda: sh(f"docker save -o {out} {workload.tag}"), setup=fresh(out), rounds=rounds(workload), iterations=1)
    check_docker_archive(out, workload)
    out.unlink()


# ----------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------


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


@pytest.mark.benchmark(group="export-docker")
def test_export_path_ovlcore(benchmark: Any, workload: Workload, export_container: ovlcore.Container) -> None:
    out = workload.work / "export-ovlcore.tar"
    benchmark.extra_info.update(role="ours", what="container.export(path)")
    benchmark.pedantic(lambda: export_container.export(out), setup=fresh(out), rounds=rounds(workload), iterations=1)
    check_export(out, workload)
    out.unlink()


@pytest.mark.benchmark(group="export-docker")
def test_export_file_ovlcore(benchmark: Any, workload: Workload, export_container: ovlcore.Container) -> None:
    """To an open file (no temp name and rename), as `docker export > file` writes."""
    out = workload.work / "export-ovlcore-f.tar"
    benchmark.extra_info.update(role="info", what="container.export(open file)")

    def run() -> None:
        with open(out, "wb") as f:
            export_container.export(f)

    benchmark.pedantic(run, setup=fresh(out), rounds=rounds(workload), iterations=1)
    check_export(out, workload)
    out.unlink()


@pytest.mark.benchmark(group="export-docker")
def test_export_docker(benchmark: Any, workload: Workload) -> None:
    need_docker(workload)
    name = f"ovlcore-bench-export-{os.getpid()}"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    sh(f"docker create --name {name} --network none {workload.tag} sh")
    out = workload.work / "export-docker.tar"
    benchmark.extra_info.update(role="baseline", what="docker export -o")
    try:
        benchmark.pedantic(lambda: sh(f"docker export -o {out} {name}"), setup=fresh(out), rounds=rounds(workload), iterations=1)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    n = check_export(out, workload)
    # Docker adds its init entries (.dockerenv, /dev, /proc, /sys, /etc/hosts ...): about a dozen.
    assert n > 0
    out.unlink()


# ----------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="load")
def test_load_ovlcore(benchmark: Any, workload: Workload) -> None:
    stores: list[Path] = []
    loaded: list[Any] = []

    def setup() -> tuple[tuple[ovlcore.Store], dict[str, Any]]:
        for p in stores:
            shutil.rmtree(p, ignore_errors=True)
        stores.clear()
        p = workload.work / f"load-store-{len(loaded)}"
        stores.append(p)
        settle()
        return (ovlcore.Store(p),), {}

    def run(store: ovlcore.Store) -> None:
        loaded.append(store.images.load(workload.archive))

    benchmark.extra_info.update(role="ours", what="images.load (into an empty store)")

    benchmark.pedantic(run, setup=setup, rounds=rounds(workload), iterations=1)
    (img,) = loaded[-1]
    assert img.id == workload.image.id
    assert [x.diff_id for x in img.layers] == [x.diff_id for x in workload.image.layers]
    for p in stores:
        shutil.rmtree(p, ignore_errors=True)


@pytest.mark.benchmark(group="load")
def test_load_docker(benchmark: Any, workload: Workload) -> None:
    need_docker(workload)

    def setup() -> None:
        # By id: every tag and every layer goes, so that the load really extracts.
        subprocess.run(["docker", "rmi", "-f", workload.image.id], capture_output=True)
        settle()

    benchmark.extra_info.update(role="baseline", what="docker load -i (image and layers removed first)")
    benchmark.pedantic(lambda: sh(f"docker load -i {workload.archive}"), setup=setup, rounds=rounds(workload), iterations=1)
    # docker load restores the archive's tag (saveload:1); give it the bench's tag back for what follows.
    inspect = json.loads(subprocess.run(["docker", "image", "inspect", "saveload:1"], check=True, capture_output=True).stdout)
    assert inspect[0]["Id"] == workload.image.id
    sh(f"docker tag saveload:1 {workload.tag}")
    workload.docker_objects.append("saveload:1")


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
    benchmark.pedantic(lambda: sh(cmd), rounds=rounds(workload), iterations=1)


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
