"""Layer import: ``store.layers.apply`` of a root-file-system tar against plain extraction of the same tar.

Target: ``apply`` no slower than ``tar -x`` even though it also computes the diff_id (sha256 of the
stream), records tar-split data for byte-exact re-export, and syncs the layer before publishing it. The
``tar -x`` + ``syncfs`` baseline pays for durability the way ovlcore does, so the comparison is fair both
ways; ``tarfile.extractall`` is what a pure-Python tool would do.

Each contender runs on a new ext4 file system made for it (loop device, direct I/O; a plain directory
when that is impossible), so all start from the same state whatever the machine's disk went through
before. Every round extracts into a fresh directory (or a fresh store) made in the untimed setup, after a
system-wide ``sync`` so no round pays for the previous one's write-back; the result is checked in the
untimed teardown. Nothing is deleted between rounds (see ``FreshDirs``: on ext4, creating files soon
after deleting many costs several times more). The tar itself is in the page cache for every round (it
is read once to build its description), so all contenders read it from memory.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ovlcore

from _support import APPLY_ROUNDS, FreshDirs, RootfsTar, syncfs

GROUP = "layer-apply"

pytestmark = pytest.mark.benchmark(group=GROUP, disable_gc=True)


def _check_tree(root: Path, rootfs: RootfsTar) -> None:
    """Cheap checks that an extraction produced the archive: a sample file with its size, and the
    top-level directories."""
    st = os.lstat(root / rootfs.sample)
    assert stat.S_ISREG(st.st_mode), f"{rootfs.sample} is not a regular file in {root}"
    assert st.st_size == rootfs.sample_size, f"{rootfs.sample}: size {st.st_size}, archive says {rootfs.sample_size}"
    assert (root / "usr" / "share").is_dir()


def _rounds(
    benchmark: Any,
    fresh: FreshDirs,
    run: Callable[[Path], Any],
    check: Callable[[Path, Any], None],
    *,
    prepare: Callable[[Path], Path] = lambda d: d,
) -> None:
    """Time ``run(prepare(fresh_dir))`` for APPLY_ROUNDS rounds; ``check(dir, result)`` untimed after each.

    With the benchmark plugin disabled pytest-benchmark calls ``run`` once and skips ``teardown``; that
    round is then checked here."""
    results: dict[Path, Any] = {}
    benchmark.extra_info["file_system"] = fresh.kind

    def setup() -> tuple[tuple[Path], dict[str, Any]]:
        return (prepare(fresh.new()),), {}

    def target(d: Path) -> None:
        results[d] = run(d)

    def teardown(d: Path) -> None:
        check(d, results.pop(d))

    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=APPLY_ROUNDS, warmup_rounds=0)
    for d in list(results):
        teardown(d)


def test_apply_ovlcore(benchmark: Any, rootfs_tar: RootfsTar, fresh_dirs: FreshDirs) -> None:
    """``store.layers.apply(path)``: extract + sha256 + tar-split + syncfs + publish."""
    benchmark.extra_info.update(role="ours", what="store.layers.apply", tar_bytes=rootfs_tar.tar_size)
    stores: dict[Path, ovlcore.Store] = {}

    def prepare(d: Path) -> Path:
        stores[d] = ovlcore.Store(d / "store")  # store creation is not part of what is timed
        return d

    def run(d: Path) -> ovlcore.Layer:
        return stores[d].layers.apply(rootfs_tar.path)

    def check(d: Path, layer: ovlcore.Layer) -> None:
        stores.pop(d).close()
        assert layer.diff_id == rootfs_tar.diff_id
        assert layer.size == rootfs_tar.content_size
        assert layer.parent is None
        _check_tree(layer.path, rootfs_tar)

    _rounds(benchmark, fresh_dirs, run, check, prepare=prepare)


def test_apply_tar_x(benchmark: Any, rootfs_tar: RootfsTar, fresh_dirs: FreshDirs) -> None:
    """GNU ``tar -x`` (as root: owners and modes restored), no digest, no sync."""
    benchmark.extra_info.update(role="baseline", what="tar -x")

    def run(d: Path) -> None:
        subprocess.run(["tar", "-x", "-f", str(rootfs_tar.path), "-C", str(d)], check=True)

    _rounds(benchmark, fresh_dirs, run, lambda d, _: _check_tree(d, rootfs_tar))


def test_apply_tar_x_sync(benchmark: Any, rootfs_tar: RootfsTar, fresh_dirs: FreshDirs) -> None:
    """GNU ``tar -x`` then ``syncfs`` of the destination: the durability ovlcore provides."""
    benchmark.extra_info.update(role="baseline", what="tar -x + syncfs")

    def run(d: Path) -> None:
        subprocess.run(["tar", "-x", "-f", str(rootfs_tar.path), "-C", str(d)], check=True)
        syncfs(d)

    _rounds(benchmark, fresh_dirs, run, lambda d, _: _check_tree(d, rootfs_tar))


def test_apply_tarfile(benchmark: Any, rootfs_tar: RootfsTar, fresh_dirs: FreshDirs) -> None:
    """Python's ``tarfile.extractall`` (``tar`` filter: refuses unsafe names, keeps owners), no sync."""
    benchmark.extra_info.update(role="baseline", what="tarfile.extractall")
    extra: dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}

    def run(d: Path) -> None:
        with tarfile.open(rootfs_tar.path, "r:") as tf:
            tf.extractall(d, numeric_owner=True, **extra)

    _rounds(benchmark, fresh_dirs, run, lambda d, _: _check_tree(d, rootfs_tar))
