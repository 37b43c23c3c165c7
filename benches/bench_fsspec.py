"""``ovl://`` listings with details: ``ls(detail=True)`` of a directory of 10,000 entries merged from 3 layers
(what ``find``, ``glob``, ``walk`` and pyarrow's dataset discovery run per directory).

* ours: ``OvlFileSystem.ls(path, detail=True)``, one core call for the whole directory (``list_meta``);
* baseline: fsspec's own ``LocalFileSystem.ls(detail=True)`` on a kernel overlayfs mount of the same layer
  directories (root only; skipped with the reason otherwise);
Group ``union-list-meta``: the core's listing with metadata, ``ContainerFS.scandir_stat`` (one pass over the
directory), against ``listdir`` then one ``lstat`` per name through ``ContainerFS`` (what the adaptor would do
without it).

Targets: ``ls`` within 2x of the local file system on the kernel mount; ``scandir_stat`` faster than the
per-entry listing. All warm (a first call fills the caches).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import ListdirStack, UnionSetup

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from ovlcore.ovlfs import OvlFileSystem  # noqa: E402

TAG = "benchfsspec:1"


class Setup(UnionSetup):
    def __init__(self, base: Path, stack: ListdirStack) -> None:
        super().__init__(base, stack.tars, TAG)
        self.ovl = OvlFileSystem(root=self.store.root, skip_instance_cache=True)


@pytest.fixture(scope="module")
def setup(listdir_stack: ListdirStack, module_dir: Path) -> Iterator[Setup]:
    s = Setup(module_dir / "fsspec", listdir_stack)
    try:
        yield s
    finally:
        s.close()


def _check(entries: list[dict[str, Any]], stack: ListdirStack) -> None:
    assert sorted(e["name"].rsplit("/", 1)[-1] for e in entries) == stack.expected
    assert all(e["type"] == "file" for e in entries)
    # The middle layer replaced 5% of the bottom's empty files with two-byte ones.
    assert sum(e["size"] for e in entries) == 2 * (len(stack.expected) // 20)


@pytest.mark.benchmark(group="fsspec-ls")
def test_ls_detail_ovl(benchmark: Any, setup: Setup, listdir_stack: ListdirStack) -> None:
    benchmark.extra_info.update(role="ours", what="OvlFileSystem.ls(detail=True)", entries=len(listdir_stack.expected))
    path = TAG + listdir_stack.directory
    _check(setup.ovl.ls(path), listdir_stack)  # warm
    _check(benchmark(setup.ovl.ls, path), listdir_stack)


@pytest.mark.benchmark(group="union-list-meta")
def test_scandir_stat(benchmark: Any, setup: Setup, listdir_stack: ListdirStack) -> None:
    benchmark.extra_info.update(role="ours", what="ContainerFS.scandir_stat", entries=len(listdir_stack.expected))
    fs, d = setup.image.fs, listdir_stack.directory
    assert benchmark(fs.scandir_stat, d) == [(n, fs.lstat(f"{d}/{n}")) for n in listdir_stack.expected]


@pytest.mark.benchmark(group="union-list-meta")
def test_listdir_then_lstat_each(benchmark: Any, setup: Setup, listdir_stack: ListdirStack) -> None:
    benchmark.extra_info.update(role="baseline", what="ContainerFS listdir + lstat per entry", entries=len(listdir_stack.expected))
    fs, d = setup.image.fs, listdir_stack.directory

    def per_entry() -> list[tuple[str, Any]]:
        return [(n, fs.lstat(f"{d}/{n}")) for n in fs.listdir(d)]

    assert per_entry() == fs.scandir_stat(d)  # warm, and the same answer
    assert [n for n, _ in benchmark(per_entry)] == listdir_stack.expected


@pytest.mark.benchmark(group="fsspec-ls")
def test_ls_detail_local_on_kernel(benchmark: Any, setup: Setup, listdir_stack: ListdirStack) -> None:
    benchmark.extra_info.update(role="baseline", what="LocalFileSystem.ls(detail=True) on kernel overlayfs", entries=len(listdir_stack.expected))
    local = LocalFileSystem()
    path = setup.kernel_path(listdir_stack.directory)
    _check(local.ls(path, detail=True), listdir_stack)
    _check(benchmark(local.ls, path, detail=True), listdir_stack)
