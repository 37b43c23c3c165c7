"""diff, commit, export and copy-up on the container issue's workload, each against a baseline in the same run.

Workload: a container from the ~200 MB root-file-system image with 10,000 new 4 KiB files in one
directory, 200 appended-to image files, one deleted image directory and one new 1 GiB file (small sizes
with ``--benchmark-disable`` / ``OVLCORE_BENCH_SMALL=1``).

Baselines: the same step in pure Python (``os.walk`` + ``tarfile`` + ``hashlib``) over the same layer
directories; ``docker diff`` and ``docker commit`` of a Docker container of the same image whose writable
layer holds the same changes (both are kernel-format layers: ours is copied into Docker's ``UpperDir``),
one test item per (round, contender), rotated; for copy-up, the kernel overlayfs copying up the same 1 GiB
image file. Targets: diff under 0.1 s and ≥ 10x faster than Docker; commit under 1.5 s and ≥ 15x faster
than Docker; copy-up within 1.2x of the kernel's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import ContainerWorkload, apply_container_workload, docker_load, docker_running, rotated_runs, sh, sha256_of, small_mode
from support.kernel import MountRefused, mount_overlay, unmount

MB = 1 << 20


@pytest.fixture(scope="module")
def workload(small: bool, module_dir: Path, rootfs_tar: Any) -> Iterator[ContainerWorkload]:
    store = ovlcore.Store(module_dir / "store")
    base = store.images.import_archive(str(rootfs_tar.path), tag="containers-base:1")
    yield apply_container_workload(store, base, small)


def rounds(w: ContainerWorkload) -> int:
    return 3 if w.files < 1000 else 5


@dataclass
class DockerTwin:
    """A Docker container of the workload's base image whose writable layer holds our container's changes,
    or why there is none (``why_not``); ``committed``: the images its commit rounds made."""

    name: str
    why_not: str | None
    committed: list[str] = field(default_factory=list)

    def need(self) -> None:
        if self.why_not is not None:
            pytest.skip(f"Docker baseline skipped: {self.why_not}")


@pytest.fixture(scope="module")
def docker_twin(workload: ContainerWorkload, module_dir: Path) -> Iterator[DockerTwin]:
    twin = DockerTwin(f"ovlcore-bench-containers-{os.getpid()}", docker_running())
    if twin.why_not is None and os.geteuid() != 0:
        twin.why_not = "copying the changes into Docker's writable layer needs root"
    if twin.why_not is not None:
        yield twin
        return
    tag = f"{twin.name}:base"
    docker_load(workload.store, workload.base, tag, module_dir)
    try:
        sh("docker", "create", "--name", twin.name, "--network", "none", tag, "sh")
        upper = sh("docker", "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", twin.name).stdout.strip()
        # Both writable layers are in the kernel's format (whiteouts are 0/0 devices, opaque xattrs).
        sh("cp", "-a", f"{workload.container.upper}/.", upper)
        os.sync()
        yield twin
    finally:
        subprocess.run(["docker", "rm", "-f", twin.name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", *twin.committed, tag], capture_output=True)


#: the contenders of the alternated diff and commit items; commit's also shows its floor for information:
#: the sha256 of the new layer's tar alone, which any commit pays (the diff_id), Docker's too
AGAINST_DOCKER = ("ovlcore", "docker")
COMMITTERS = (*AGAINST_DOCKER, "sha256")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Against Docker: one test item per (round, contender), rotated (``compare.py`` merges each
    contender's items by ``extra_info["series"]``)."""
    n = 1 if small_mode(metafunc.config) else 5
    for arg, contenders in (("diff_run", AGAINST_DOCKER), ("commit_run", COMMITTERS)):
        if arg in metafunc.fixturenames:
            runs = rotated_runs(contenders, n)
            metafunc.parametrize(arg, runs, ids=[f"{who}-r{r}" for r, who in runs])


# ----- diff --------------------------------------------------------------------------------------


def python_diff(upper: Path, lowers: list[Path]) -> set[tuple[str, str]]:
    """docker diff in pure Python: walk the writable layer, look each path up in the image layers."""

    def lower_lstat(rel: str) -> os.stat_result | None:
        for layer in lowers:  # top first; a whiteout or non-directory above ends the search
            try:
                st = os.lstat(layer / rel)
            except FileNotFoundError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            return st
        return None

    def differs(a: os.stat_result, b: os.stat_result) -> bool:
        if (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) != (b.st_mode, b.st_uid, b.st_gid, b.st_rdev):
            return True
        return not stat.S_ISDIR(a.st_mode) and (a.st_size, a.st_mtime_ns) != (b.st_size, b.st_mtime_ns)

    out: set[tuple[str, str]] = set()
    for dirpath, dirs, files in os.walk(upper):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, upper)
            st = os.lstat(full)
            below = lower_lstat(rel)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if below is not None:
                    out.add(("D", "/" + rel))
                continue
            if below is None:
                out.add(("A", "/" + rel))
            elif differs(st, below) or stat.S_ISDIR(st.st_mode):
                out.add(("C", "/" + rel))
        dirs[:] = [d for d in dirs if not (stat.S_ISCHR(os.lstat(os.path.join(dirpath, d)).st_mode))]
    return out


@pytest.mark.benchmark(group="diff")
def test_diff_ovlcore(benchmark: Any, workload: ContainerWorkload) -> None:
    benchmark.extra_info.update(role="ours", what="container.diff()", target_s=0.1)
    changes = benchmark(workload.container.diff)
    kinds = {c.kind for c in changes}
    assert kinds == {"A", "C", "D"}
    assert sum(1 for c in changes if c.path.startswith("/data/")) == workload.files
    assert ("D", workload.deleted) in {(c.kind, c.path) for c in changes}


@pytest.mark.benchmark(group="diff")
def test_diff_python(benchmark: Any, workload: ContainerWorkload) -> None:
    benchmark.extra_info.update(role="baseline", what="os.walk + os.lstat of the layers")
    lowers = [Path(p) for p in workload.base.stack_paths()]
    found = benchmark(python_diff, workload.container.upper, lowers)
    ours = {(c.kind, c.path) for c in workload.container.diff()}
    # The naive walk reports every copied-up directory as changed; ours reports only changed ones.
    assert {x for x in found if x[0] != "C"} == {x for x in ours if x[0] != "C"}


def docker_diff(name: str) -> set[tuple[str, str]]:
    return {(line[0], line[2:]) for line in sh("docker", "diff", name).stdout.splitlines()}


@pytest.mark.benchmark(group="diff-docker")
def test_diff_against_docker(benchmark: Any, workload: ContainerWorkload, docker_twin: DockerTwin, diff_run: tuple[int, str]) -> None:
    rnd, who = diff_run
    docker_twin.need()
    role, what = ("ours", "container.diff()") if who == "ovlcore" else ("baseline", "docker diff")
    benchmark.extra_info.update(role=role, what=what, series=f"test_diff_{who}_vs_docker", round=rnd)
    if who == "ovlcore":
        found = {(c.kind, c.path) for c in benchmark.pedantic(workload.container.diff, rounds=3, iterations=1)}
    else:
        found = benchmark.pedantic(docker_diff, args=(docker_twin.name,), rounds=3, iterations=1)
        assert found == {(c.kind, c.path) for c in workload.container.diff()}  # Docker and we agree
    assert sum(1 for _, p in found if p.startswith("/data/")) == workload.files
    assert ("D", workload.deleted) in found


# ----- commit ------------------------------------------------------------------------------------


def python_commit(upper: Path, dest: Path) -> str:
    """Docker's commit in pure Python: tar the writable layer (whiteouts as .wh. files), hash the tar,
    untar it into a new layer directory."""
    buf = dest.with_suffix(".tar")
    h = hashlib.sha256()
    with open(buf, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for dirpath, dirs, files in os.walk(upper):
                dirs.sort()
                for name in sorted(dirs + files):
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, upper)
                    st = os.lstat(full)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        ti = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + name))
                        tf.addfile(ti)
                        continue
                    tf.add(full, arcname=rel, recursive=False)
    with open(buf, "rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    dest.mkdir()
    with tarfile.open(buf) as tf:
        tf.extractall(dest, filter="tar")
    buf.unlink()
    return "sha256:" + h.hexdigest()


@pytest.mark.benchmark(group="commit")
def test_commit_ovlcore(benchmark: Any, workload: ContainerWorkload) -> None:
    benchmark.extra_info.update(role="ours", what="container.commit()", target_s=1.5)
    made: list[ovlcore.Image] = []

    def setup() -> None:
        os.sync()  # no writeback of an earlier round's data in this one

    benchmark.pedantic(lambda: made.append(workload.container.commit()), setup=setup, rounds=rounds(workload), iterations=1)
    img = made[-1]
    top = img.layers[-1]
    with top.tar() as t:
        h = hashlib.sha256()
        while chunk := t.read(8 * MB):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == top.diff_id
    assert img.fs.read_bytes("/data/f00000") == workload.container.fs.read_bytes("/data/f00000")
    for i in {i.id for i in made}:
        workload.store.images.remove(i, force=True)


@pytest.mark.benchmark(group="commit")
def test_commit_python(benchmark: Any, workload: ContainerWorkload, module_dir: Path) -> None:
    benchmark.extra_info.update(role="baseline", what="os.walk + tarfile + hashlib + tarfile.extractall")
    out = module_dir / "py-commit"
    counter = iter(range(1000))

    def setup() -> tuple[tuple[Path, Path], dict[str, Any]]:
        os.sync()
        return (workload.container.upper, out / str(next(counter))), {}

    out.mkdir(exist_ok=True)
    benchmark.pedantic(python_commit, setup=setup, rounds=rounds(workload), iterations=1)
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def commit_tar(workload: ContainerWorkload, module_dir: Path) -> tuple[Path, str]:
    """The tar of the layer a commit of the container makes, written once (untimed), and its diff_id. The
    image stays, as the rounds' do (deleting its files would slow the next round's file creations)."""
    image = workload.container.commit()
    path = module_dir / "commit-layer.tar"
    with image.layers[-1].tar() as t, open(path, "wb") as f:
        shutil.copyfileobj(t, f, 8 * MB)
    return path, image.layers[-1].diff_id


@pytest.mark.benchmark(group="commit-docker")
def test_commit_against_docker(benchmark: Any, workload: ContainerWorkload, docker_twin: DockerTwin, commit_run: tuple[int, str],
                               request: pytest.FixtureRequest) -> None:
    """Committed images stay until the module ends: deleting thousands of files right before a round
    would make ext4's inode allocator scan them in that round (see the README's method notes)."""
    rnd, who = commit_run
    if who == "sha256":
        path, diff_id = request.getfixturevalue("commit_tar")
        benchmark.extra_info.update(role="info", what="sha256 of the new layer's tar alone", series="test_commit_sha256", round=rnd)
        got = benchmark.pedantic(sha256_of, args=(path,), setup=os.sync, rounds=1, iterations=1)
        assert "sha256:" + got == diff_id
        return
    docker_twin.need()
    benchmark.extra_info.update(role="ours" if who == "ovlcore" else "baseline", what="container.commit()" if who == "ovlcore" else "docker commit",
                                series=f"test_commit_{who}_vs_docker", round=rnd)
    if who == "ovlcore":
        made = benchmark.pedantic(workload.container.commit, setup=os.sync, rounds=1, iterations=1)
        assert made.diff_ids[:-1] == workload.base.diff_ids
        assert made.fs.read_bytes("/data/f00000") == workload.container.fs.read_bytes("/data/f00000")
    else:
        image = benchmark.pedantic(sh, args=("docker", "commit", docker_twin.name), setup=os.sync, rounds=1, iterations=1).stdout.strip()
        docker_twin.committed.append(image)
        layers = json.loads(sh("docker", "inspect", "-f", "{{json .RootFS.Layers}}", image).stdout)
        assert layers[:-1] == workload.base.diff_ids and len(layers) == len(workload.base.diff_ids) + 1


# ----- export ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="export")
def test_export_ovlcore(benchmark: Any, workload: ContainerWorkload, module_dir: Path) -> None:
    benchmark.extra_info.update(role="ours", what="container.export()")
    out = module_dir / "export.tar"
    benchmark.pedantic(lambda: workload.container.export(out), setup=lambda: out.unlink(missing_ok=True), rounds=rounds(workload), iterations=1)
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
    assert "big" in names and workload.deleted.lstrip("/") not in names
    out.unlink()


@pytest.mark.benchmark(group="export")
def test_export_python(benchmark: Any, workload: ContainerWorkload, module_dir: Path) -> None:
    """tarfile over the container's merged tree as the kernel mounts it (the tree itself is free)."""
    if os.geteuid() != 0:
        pytest.skip("the pure-Python baseline reads the kernel mount of the container, which needs root")
    benchmark.extra_info.update(role="baseline", what="tarfile over the kernel overlay mount")
    out = module_dir / "export-py.tar"

    def run(root: Path) -> None:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(os.listdir(root)):
                tf.add(root / name, arcname=name)

    with workload.container.mount() as root:
        benchmark.pedantic(run, args=(root,), setup=lambda: out.unlink(missing_ok=True), rounds=rounds(workload), iterations=1)
    out.unlink()


# ----- copy-up of a 1 GiB image file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def big_image(workload: ContainerWorkload) -> ovlcore.Image:
    """An image whose top layer holds the 1 GiB file: copy-up copies it from there."""
    return workload.container.commit("containers-big:1")


@pytest.mark.benchmark(group="copy-up")
def test_copy_up_ovlcore(benchmark: Any, workload: ContainerWorkload, big_image: ovlcore.Image) -> None:
    benchmark.extra_info.update(role="ours", what="open('/big', 'ab') through container.fs", target_ratio=1.2)
    store = workload.store
    made: list[ovlcore.Container] = []

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        for c in made:
            store.containers.remove(c.id)
        made.clear()
        os.sync()
        made.append(store.containers.create(big_image))
        return (made[-1].fs,), {}

    def copy_up(fs: ovlcore.ContainerFS) -> None:
        fs.open("/big", "ab").close()

    benchmark.pedantic(copy_up, setup=setup, rounds=rounds(workload), iterations=1)
    c = made[-1]
    assert os.path.getsize(c.upper / "big") == workload.big
    for c in made:
        store.containers.remove(c.id)


@pytest.mark.benchmark(group="copy-up")
def test_copy_up_kernel(benchmark: Any, workload: ContainerWorkload, big_image: ovlcore.Image, module_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the kernel baseline needs root to mount")
    benchmark.extra_info.update(role="baseline", what="open(MNT/big, 'ab') on a kernel overlay mount")
    lowers = big_image.stack_paths()
    base = module_dir / "kernel-copyup"
    counter = iter(range(1000))
    mounted: list[Path] = []

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        for m in mounted:
            unmount(m)
        mounted.clear()
        d = base / str(next(counter))
        for sub in ("upper", "work", "mnt"):
            (d / sub).mkdir(parents=True)
        try:
            mount_overlay(lowers, d / "mnt", upper=d / "upper", work=d / "work")
        except MountRefused as e:
            pytest.skip(str(e))
        mounted.append(d / "mnt")
        os.sync()
        return (d / "mnt",), {}

    def copy_up(mnt: Path) -> None:
        open(mnt / "big", "ab").close()

    benchmark.pedantic(copy_up, setup=setup, rounds=rounds(workload), iterations=1)
    assert os.path.getsize(mounted[-1].parent / "upper" / "big") == workload.big
    for m in mounted:
        unmount(m)
    shutil.rmtree(base, ignore_errors=True)

