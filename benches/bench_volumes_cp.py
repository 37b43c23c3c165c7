"""Volumes and cp: writing into a volume costs what writing to the host costs; cp beats docker cp.

Same data, same run: 1 GiB written sequentially and 10,000 files of 4 KiB, into a volume (through
``container.fs``), into the writable layer, and straight to the host file system; ``cp`` of a directory of
10,000 files of 4 KiB out of and into a container against ``cp -a`` on the host and ``docker cp`` (when a
Docker engine runs; cp out alternates the three round by round). Targets: the volume within 1.1x of the host;
cp out at least 5x faster than docker cp (Docker's figure on this machine: about 1.4 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import docker_load, rotated_runs

MB = 1 << 20


@dataclass
class Setup:
    store: ovlcore.Store
    container: ovlcore.Container
    host: Path
    small: bool

    @property
    def big(self) -> int:
        return (8 if self.small else 1024) * MB

    @property
    def files(self) -> int:
        return 200 if self.small else 10_000


@pytest.fixture(scope="module")
def setup(small: bool, module_dir: Path, rootfs_tar: Any) -> Iterator[Setup]:
    store = ovlcore.Store(module_dir / "store")
    base = store.images.import_archive(str(rootfs_tar.path), tag="volumes-base:1")
    c = store.containers.create(base, name="vol", mounts=[ovlcore.Mount("/vol", "benchvol")])
    host = module_dir / "host"
    host.mkdir()
    yield Setup(store, c, host, small)


def rounds(s: Setup) -> int:
    return 3


def write_big(open_: Any, path: str, size: int) -> None:
    block = b"\xa5" * MB
    with open_(path, "wb") as f:
        for _ in range(size // MB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def write_small(open_: Any, mkdir: Any, root: str, n: int) -> None:
    mkdir(root)
    block = b"\x5a" * 4096
    for i in range(n):
        with open_(f"{root}/f{i:05d}", "wb") as f:
            f.write(block)


def fresh(remove: Any) -> Any:
    def go() -> None:
        remove()
        os.sync()

    return go


class Rounds:
    """A round's setup for the many-file benchmarks: a destination no earlier round used, after a sync.
    Nothing is deleted between rounds (see ``_support.FreshDirs``: ext4 scans recently deleted inodes
    when files are created soon after, which made every contender's round cost seconds)."""

    def __init__(self, name: Any) -> None:
        self.name = name
        self.count = 0
        self.last: Any = None

    def __call__(self) -> tuple[tuple[Any], dict[str, Any]]:
        os.sync()
        self.count += 1
        self.last = self.name(self.count)
        return (self.last,), {}


# ----- 1 GiB sequential --------------------------------------------------------------------------


@pytest.mark.benchmark(group="write 1 GiB")
def test_big_into_volume(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="ours", what="container.fs.open('/vol/big', 'wb') (a volume)", target_ratio=1.1)
    fs = setup.container.fs
    benchmark.pedantic(lambda: write_big(fs.open, "/vol/big", setup.big), setup=fresh(lambda: fs.exists("/vol/big") and fs.remove("/vol/big")), rounds=rounds(setup), iterations=1)
    assert (setup.store.volumes.get("benchvol").mountpoint / "big").stat().st_size == setup.big
    assert setup.container.diff() == []


@pytest.mark.benchmark(group="write 1 GiB")
def test_big_into_writable_layer(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="info", what="container.fs.open('/big', 'wb') (the writable layer)")
    fs = setup.container.fs
    benchmark.pedantic(lambda: write_big(fs.open, "/big", setup.big), setup=fresh(lambda: fs.exists("/big") and fs.remove("/big")), rounds=rounds(setup), iterations=1)
    assert (setup.container.upper / "big").stat().st_size == setup.big
    fs.remove("/big")


@pytest.mark.benchmark(group="write 1 GiB")
def test_big_to_host(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="baseline", what="open(HOST/big, 'wb')")
    p = setup.host / "big"
    benchmark.pedantic(lambda: write_big(open, str(p), setup.big), setup=fresh(lambda: p.unlink(missing_ok=True)), rounds=rounds(setup), iterations=1)
    p.unlink()


# ----- 10,000 small files ------------------------------------------------------------------------


@pytest.mark.benchmark(group="write 10,000 files")
def test_small_into_volume(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="ours", what="10,000 x 4 KiB into a volume", target_ratio=1.1)
    fs = setup.container.fs
    dest = Rounds(lambda n: f"/vol/small-{n}")
    benchmark.pedantic(lambda d: write_small(fs.open, fs.mkdir, d, setup.files), setup=dest, rounds=rounds(setup), iterations=1)
    assert len(fs.listdir(dest.last)) == setup.files


@pytest.mark.benchmark(group="write 10,000 files")
def test_small_into_writable_layer(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="info", what="10,000 x 4 KiB into the writable layer")
    fs = setup.container.fs
    dest = Rounds(lambda n: f"/small-{n}")
    benchmark.pedantic(lambda d: write_small(fs.open, fs.mkdir, d, setup.files), setup=dest, rounds=rounds(setup), iterations=1)
    assert len(os.listdir(setup.container.upper / dest.last.lstrip("/"))) == setup.files


@pytest.mark.benchmark(group="write 10,000 files")
def test_small_to_host(benchmark: Any, setup: Setup) -> None:
    benchmark.extra_info.update(role="baseline", what="10,000 x 4 KiB with open() on the host")
    dest = Rounds(lambda n: str(setup.host / f"small-{n}"))
    benchmark.pedantic(lambda d: write_small(open, os.mkdir, d, setup.files), setup=dest, rounds=rounds(setup), iterations=1)
    assert len(os.listdir(dest.last)) == setup.files


# ----- cp of a 10,000-file directory --------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(setup: Setup) -> Path:
    """The same 10,000 files of 4 KiB on the host and in the container (at /tree)."""
    src = setup.host / "tree"
    src.mkdir()
    for i in range(setup.files):
        (src / f"t{i:05d}").write_bytes(os.urandom(4096))
    setup.store.cp(str(src), f"{setup.container.name}:/tree")
    return src


def docker_container_name() -> str:
    return f"ovlcore-bench-cp-{os.getpid()}"


@pytest.fixture(scope="module")
def docker_container(setup: Setup, tree: Path) -> Iterator[str | None]:
    """A Docker container holding the same directory (its name), or None when no Docker engine runs."""
    r = subprocess.run(["docker", "info"], capture_output=True, text=True) if shutil.which("docker") else None
    if r is None or r.returncode != 0:
        yield None
        return
    tag = f"{docker_container_name()}:1"
    docker_load(setup.store, setup.container.commit("volumes-cp:1"), tag, setup.host)
    subprocess.run(["docker", "rm", "-f", docker_container_name()], capture_output=True)
    subprocess.run(["docker", "create", "--name", docker_container_name(), tag, "true"], check=True, capture_output=True)
    yield docker_container_name()
    subprocess.run(["docker", "rm", "-f", docker_container_name()], capture_output=True)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


#: cp-out contenders, in the order of the first round (each later round starts one further on)
CP_OUT = ("ovlcore", "docker", "host_cp")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """cp out: one test item per (round, contender), rotated; ``compare.py`` merges each contender's items
    by ``extra_info["series"]``."""
    if "cp_out_run" in metafunc.fixturenames:
        runs = rotated_runs(CP_OUT, 3)
        metafunc.parametrize("cp_out_run", runs, ids=[f"{who}-r{r}" for r, who in runs])


CP_OUT_CALLS: dict[str, tuple[str, str, Any]] = {
    "ovlcore": ("ours", "store.cp('CTR:/tree', HOST)", lambda s, out: s.store.cp(f"{s.container.name}:/tree", str(out))),
    "docker": ("baseline", "docker cp CTR:/tree HOST",
               lambda s, out: subprocess.run(["docker", "cp", f"{docker_container_name()}:/tree", str(out)], check=True, capture_output=True)),
    "host_cp": ("baseline", "cp -a on the host", lambda s, out: subprocess.run(["cp", "-a", str(s.host / "tree"), str(out)], check=True)),
}


@pytest.mark.benchmark(group="cp out")
def test_cp_out(benchmark: Any, setup: Setup, tree: Path, docker_container: str | None, cp_out_run: tuple[int, str]) -> None:
    rnd, who = cp_out_run
    if who == "docker" and docker_container is None:
        pytest.skip("Docker baseline: no Docker engine running")
    role, what, call = CP_OUT_CALLS[who]
    benchmark.extra_info.update(role=role, what=what, series=f"test_cp_out_{who}", round=rnd)
    if who == "ovlcore":
        benchmark.extra_info.update(target_vs_docker=5)
    dest = Rounds(lambda n: setup.host / f"cp-out-{who}-{rnd}")
    benchmark.pedantic(lambda out: call(setup, out), setup=dest, rounds=1, iterations=1)
    out = dest.last
    assert len(os.listdir(out)) == setup.files and (out / "t00000").read_bytes() == (tree / "t00000").read_bytes()


@pytest.mark.benchmark(group="cp in")
def test_cp_in_ovlcore(benchmark: Any, setup: Setup, tree: Path) -> None:
    benchmark.extra_info.update(role="ours", what="store.cp(HOST, 'CTR:/tree-in')")
    fs = setup.container.fs
    dest = Rounds(lambda n: f"/tree-in-{n}")
    benchmark.pedantic(lambda d: setup.store.cp(str(tree), f"{setup.container.name}:{d}"), setup=dest, rounds=rounds(setup), iterations=1)
    assert len(fs.listdir(dest.last)) == setup.files


@pytest.mark.benchmark(group="cp in")
def test_cp_in_host_cp(benchmark: Any, setup: Setup, tree: Path) -> None:
    benchmark.extra_info.update(role="baseline", what="cp -a on the host")
    dest = Rounds(lambda n: setup.host / f"cp-in-host-{n}")
    benchmark.pedantic(lambda out: subprocess.run(["cp", "-a", str(tree), str(out)], check=True), setup=dest, rounds=rounds(setup), iterations=1)
