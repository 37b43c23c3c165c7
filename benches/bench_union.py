"""The userspace union view (``image.fs``) against the kernel's overlayfs over the very same layer directories.

(a) ``stat`` of a file in the bottom layer of a 20-layer stack: every directory on its path exists in all 20
    layers, so each lookup merges them all.
(b) ``listdir`` of a directory of 10,000 entries merged from 3 layers (with replaced and whited-out names).

Target: within 2x of the kernel's time per call. Both sides are measured warm (the view's merged-directory
cache and the kernel's dentry/inode caches are filled by a first call), which is the steady state of a
program that looks at an image's files. ``image.fs`` builds a new view on each access, so the main
benchmarks keep one ``fs`` object; the ``*_image_fs_each_call`` benchmarks measure the literal
``image.fs.stat(path)`` idiom, for information.

The kernel baseline mounts ``-t overlay -o lowerdir=<the image's layer directories>`` (root only); if the
mount is refused the kernel benchmarks are skipped with the reason. Stores, images and mounts are built once
per module and removed (unmounted) at its end.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import ListdirStack, StatStack, UnionSetup


@pytest.fixture(scope="module")
def stat_setup(stat_stack: StatStack, module_dir: Path) -> Iterator[UnionSetup]:
    s = UnionSetup(module_dir / "stat", stat_stack.tars, "bench/stat:latest")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def listdir_setup(listdir_stack: ListdirStack, module_dir: Path) -> Iterator[UnionSetup]:
    s = UnionSetup(module_dir / "listdir", listdir_stack.tars, "bench/listdir:latest")
    try:
        yield s
    finally:
        s.close()


# ----- (a) stat of a bottom-layer file through a deep stack -----


def _check_stat(st: os.stat_result, stack: StatStack) -> None:
    assert stat.S_ISREG(st.st_mode), oct(st.st_mode)
    assert st.st_size == stack.target_size, st.st_size


@pytest.mark.benchmark(group="union-stat")
def test_stat_ovlcore(benchmark: Any, stat_setup: UnionSetup, stat_stack: StatStack) -> None:
    benchmark.extra_info.update(role="ours", what="fs.stat (one view)", layers=len(stat_stack.tars))
    fs = stat_setup.image.fs
    _check_stat(fs.stat(stat_stack.target), stat_stack)  # warm the view's caches
    st = benchmark(fs.stat, stat_stack.target)
    _check_stat(st, stat_stack)


@pytest.mark.benchmark(group="union-stat")
def test_stat_ovlcore_image_fs_each_call(benchmark: Any, stat_setup: UnionSetup, stat_stack: StatStack) -> None:
    """``image.fs.stat(path)`` literally: a new view (image record, layer records, layer stack) per call."""
    benchmark.extra_info.update(role="info", what="image.fs.stat (new view per call)", layers=len(stat_stack.tars))
    image = stat_setup.image
    st = benchmark(lambda: image.fs.stat(stat_stack.target))
    _check_stat(st, stat_stack)


@pytest.mark.benchmark(group="union-stat")
def test_stat_kernel(benchmark: Any, stat_setup: UnionSetup, stat_stack: StatStack) -> None:
    benchmark.extra_info.update(role="baseline", what="os.stat on kernel overlayfs", layers=len(stat_stack.tars))
    path = stat_setup.kernel_path(stat_stack.target)
    kst = os.stat(path)  # warm the dentry cache
    _check_stat(kst, stat_stack)
    ours = stat_setup.image.fs.stat(stat_stack.target)
    for field in ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_nlink"):
        assert getattr(ours, field) == getattr(kst, field), f"{field}: ovlcore {getattr(ours, field)} kernel {getattr(kst, field)}"
    st = benchmark(os.stat, path)
    _check_stat(st, stat_stack)


# ----- (b) listdir of a large directory merged from 3 layers -----


@pytest.mark.benchmark(group="union-listdir")
def test_listdir_ovlcore(benchmark: Any, listdir_setup: UnionSetup, listdir_stack: ListdirStack) -> None:
    benchmark.extra_info.update(role="ours", what="fs.listdir (one view)", entries=len(listdir_stack.expected))
    fs = listdir_setup.image.fs
    assert fs.listdir(listdir_stack.directory) == listdir_stack.expected  # also warms the view's caches
    names = benchmark(fs.listdir, listdir_stack.directory)
    assert names == listdir_stack.expected


@pytest.mark.benchmark(group="union-listdir")
def test_listdir_ovlcore_image_fs_each_call(benchmark: Any, listdir_setup: UnionSetup, listdir_stack: ListdirStack) -> None:
    """``image.fs.listdir(path)`` literally: a new view per call."""
    benchmark.extra_info.update(role="info", what="image.fs.listdir (new view per call)", entries=len(listdir_stack.expected))
    image = listdir_setup.image
    names = benchmark(lambda: image.fs.listdir(listdir_stack.directory))
    assert names == listdir_stack.expected


@pytest.mark.benchmark(group="union-listdir")
def test_listdir_kernel(benchmark: Any, listdir_setup: UnionSetup, listdir_stack: ListdirStack) -> None:
    """``os.listdir`` on the kernel mount (unsorted; ovlcore's listdir returns sorted names)."""
    benchmark.extra_info.update(role="baseline", what="os.listdir on kernel overlayfs", entries=len(listdir_stack.expected))
    path = listdir_setup.kernel_path(listdir_stack.directory)
    assert sorted(os.listdir(path)) == listdir_stack.expected  # the kernel agrees, and its caches are warm
    names = benchmark(os.listdir, path)
    assert len(names) == len(listdir_stack.expected)
