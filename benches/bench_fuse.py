"""ovlcore's FUSE mount (``ovlcore-fuse``) against the kernel's overlayfs and fuse-overlayfs, over the very
same layer directories (the shared root-file-system tar as a layer, plus a layer with one large file).

Workloads: ``find`` of the whole tree (cold: a fresh mount, caches dropped as root; warm: a second run),
``lstat`` of every entry, ``tar -cf /dev/null .``, a sequential read of the large file, creating many 4 KiB
files, copy-up of a big file (one byte appended), ``rm -rf /usr/share``. Each workload runs its three
contenders one after the other (alternated per workload) on a fresh writable layer per round.

Goals (issue 12): each ≥ 1.5x faster than fuse-overlayfs (sequential read and copy-up ≥ 1x), and within 2x
of the kernel on metadata as root. The kernel baseline needs root; fuse-overlayfs needs the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from ovlcore import fusemount

from _support import RootfsTar
from support.kernel import mount_overlay, mount_refused
from support.tars import D, F, tar

CONTENDERS = ("ovlcore", "kernel", "fuse-overlayfs")
ROUNDS = int(os.environ.get("OVLCORE_BENCH_ROUNDS", "3"))


@dataclass
class Layers:
    lowers: list[str]  # top first
    big: str  # container path of the large file
    big_size: int
    copyup: str  # container path of the file copied up
    copyup_size: int
    entries: int
    small: bool


@pytest.fixture(scope="module")
def layers(rootfs_tar: RootfsTar, module_dir: Path, small: bool) -> Iterator[Layers]:
    store = ovlcore.Store(module_dir / "store")
    image = store.images.import_archive(rootfs_tar.path, tag="bench/fuse:1")
    big_size = (8 << 20) if small else (1 << 30)
    copyup_size = (4 << 20) if small else (256 << 20)
    # The big files as a layer of their own (sparse-free random-ish data, built once per session).
    data = module_dir / "big.tar"
    chunk = os.urandom(1 << 20)
    with open(data, "wb") as f:
        f.write(tar(D("big"), F("big/copyup.bin", (chunk * (copyup_size >> 20))[:copyup_size])))
    layer = store.layers.apply(data, parent=image.top_layer)
    image = store.images.create(layer=layer, parent=image, tag="bench/fuse:1")
    # The large sequential-read file is written straight into a further layer directory (not through a
    # tar, which would double the disk use).
    extra = module_dir / "extra-layer"
    (extra / "big").mkdir(parents=True)
    with open(extra / "big" / "read.bin", "wb") as f:
        for _ in range(big_size >> 20):
            f.write(chunk)
    lowers = [str(extra), *image.stack_paths()]
    entries = sum(len(d) + len(f) for _, d, f in os.walk(image.stack_paths()[-1]))
    try:
        yield Layers(lowers, "/big/read.bin", big_size, "/big/copyup.bin", copyup_size, entries, small)
    finally:
        store.close()


class Mounted:
    """One contender mounted over ``lowers`` with a fresh writable layer under ``base``."""

    def __init__(self, who: str, lowers: list[str], base: Path) -> None:
        self.who, self.base = who, base
        upper, work, self.mnt = base / "upper", base / "work", base / "mnt"
        for p in (upper, work, self.mnt):
            p.mkdir(parents=True)
        if who == "kernel":
            mount_overlay(lowers, self.mnt, upper=upper, work=work)
        elif who == "ovlcore":
            fusemount.start(fusemount.FuseSpec(mountpoint=str(self.mnt), lower=lowers, upper=str(upper), scratch=str(work / "scratch")))
        else:
            subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}", str(self.mnt)],
                           check=True, capture_output=True, timeout=60)

    def close(self) -> None:
        if fusemount.is_mounted(self.mnt):
            try:
                fusemount.unmount(self.mnt) if self.who != "kernel" else subprocess.run(["umount", str(self.mnt)], check=True)
            except (OSError, subprocess.CalledProcessError):
                fusemount.unmount(self.mnt, lazy=True)


def _available(who: str) -> None:
    if who == "kernel" and mount_refused():
        pytest.skip(f"kernel baseline: {mount_refused()}")
    if who == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
        pytest.skip("fuse-overlayfs is not installed")
    if who != "kernel":
        reason = fusemount.fuse_usable()
        if reason:
            pytest.skip(f"FUSE is not usable: {reason}")


def _drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def _run_rounds(benchmark: Any, who: str, layers: Layers, base: Path, work: Callable[[Path], Any],
                prepare: Callable[[Path], None] | None = None, cold: bool = False) -> None:
    """Time ``work(mount point)`` on a fresh mount per round; ``prepare`` runs untimed first."""
    _available(who)
    mounts: list[Mounted] = []

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        if mounts:
            mounts[-1].close()
        m = Mounted(who, layers.lowers, base / f"r{len(mounts)}")
        mounts.append(m)
        if prepare is not None:
            prepare(m.mnt)
        if cold:
            _drop_caches()
        return (m.mnt,), {}

    benchmark.extra_info.update(role="ours" if who == "ovlcore" else "baseline", contender=who)
    try:
        benchmark.pedantic(work, setup=setup, rounds=1 if layers.small else ROUNDS, iterations=1)
    finally:
        for m in mounts:
            m.close()


def _find(mnt: Path) -> None:
    out = subprocess.run(["find", ".", "-xdev"], cwd=mnt, capture_output=True, check=True).stdout
    assert out.count(b"\n") > 10


def _lstat_all(mnt: Path) -> None:
    n = 0
    for root, dirs, files in os.walk(mnt):
        for name in dirs + files:
            os.lstat(os.path.join(root, name))
            n += 1
    assert n > 10


def _tar(mnt: Path) -> None:
    subprocess.run(["tar", "-cf", "/dev/null", "."], cwd=mnt, check=True, capture_output=True)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-find-cold")
def test_find_cold(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    _run_rounds(benchmark, who, layers, module_dir / f"find-cold-{who}", _find, cold=True)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-find-warm")
def test_find_warm(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    _run_rounds(benchmark, who, layers, module_dir / f"find-warm-{who}", _find, prepare=_find)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-lstat")
def test_lstat_all(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    _run_rounds(benchmark, who, layers, module_dir / f"lstat-{who}", _lstat_all)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-tar")
def test_tar(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    _run_rounds(benchmark, who, layers, module_dir / f"tar-{who}", _tar)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-read")
def test_sequential_read(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    def read(mnt: Path) -> None:
        n = 0
        with open(str(mnt) + layers.big, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
        assert n == layers.big_size

    _run_rounds(benchmark, who, layers, module_dir / f"read-{who}", read, cold=True)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-create")
def test_create_files(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    count = 500 if layers.small else 10_000
    block = b"x" * 4096

    def create(mnt: Path) -> None:
        d = mnt / "many"
        d.mkdir()
        for i in range(count):
            with open(d / f"f{i}", "wb") as f:
                f.write(block)
        assert len(os.listdir(d)) == count

    _run_rounds(benchmark, who, layers, module_dir / f"create-{who}", create)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-copyup")
def test_copy_up(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    def copy_up(mnt: Path) -> None:
        with open(str(mnt) + layers.copyup, "ab") as f:
            f.write(b"!")
        assert os.stat(str(mnt) + layers.copyup).st_size == layers.copyup_size + 1

    _run_rounds(benchmark, who, layers, module_dir / f"copyup-{who}", copy_up)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.benchmark(group="fuse-rm")
def test_rm_rf(benchmark: Any, who: str, layers: Layers, module_dir: Path) -> None:
    def rm(mnt: Path) -> None:
        subprocess.run(["rm", "-rf", "usr/share"], cwd=mnt, check=True)
        assert not (mnt / "usr" / "share").exists()

    def check(mnt: Path) -> None:
        assert (mnt / "usr" / "share").is_dir()

    _run_rounds(benchmark, who, layers, module_dir / f"rm-{who}", rm, prepare=check)
