"""Cost curves: how ovlcore's operations grow with the size of their input (issue 14), for report.py to draw.

* ``curve-union-stat``: ``ContainerFS.stat`` of a file at the bottom of 1, 10, 20, 50 and 100 layers (the
  view warm, as in bench_union.py), against ``os.stat`` on a kernel overlay mount of the same layer
  directories (root only; skipped with the reason otherwise). Smoke runs: 1 and 3 layers.
* ``curve-import`` / ``curve-export`` / ``curve-commit``: ``images.import_archive`` of a tar of N small
  files (into a fresh store per round, as the layer would otherwise already exist), ``container.export``
  of a container of that image, and ``container.commit`` of a container whose changes are N new files,
  for N = 1,000, 10,000, 100,000, 1,000,000 up to ``OVLCORE_BENCH_CURVE_MAX`` (default 10,000, so a
  measured run stays short; 1000000 for the whole curve). Baselines where a tool does the same work:
  ``tar -x`` + ``syncfs`` of the same archive (import: ovlcore syncs before publishing), ``tar -c`` of
  the extracted tree (export). Smoke runs: N = 10 and 100.
* ``curve-diff``: ``container.diff`` of that container (N changed files).

The create/get/list curves against the number of containers are bench_scale.py's (same ``extra_info``).
Each point is one benchmark whose ``extra_info`` names its curve, line and x value (:func:`curve_point`);
every timed call's result is checked.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import DATA_DIR, StatStack, UnionSetup, curve_point, make_stat_stack, syncfs
from conftest import small_mode

LAYERS_FULL = (1, 10, 20, 50, 100)
LAYERS_SMALL = (1, 3)
FILES_FULL = (1_000, 10_000, 100_000, 1_000_000)
FILES_SMALL = (10, 100)
#: Bytes of each small file, and files per directory (a million in one directory is not the shape of a tree).
FILE_SIZE = 256
PER_DIR = 1000
#: Bump when the archive's shape changes, so cached tars are rebuilt.
FILES_FORMAT = 1


def file_counts(small: bool) -> tuple[int, ...]:
    if small:
        return FILES_SMALL
    limit = int(os.environ.get("OVLCORE_BENCH_CURVE_MAX", "10000"))
    return tuple(n for n in FILES_FULL if n <= limit) or FILES_FULL[:1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    small = small_mode(metafunc.config)
    if "layers" in metafunc.fixturenames:
        metafunc.parametrize("layers", LAYERS_SMALL if small else LAYERS_FULL)
    if "files" in metafunc.fixturenames:
        metafunc.parametrize("files", file_counts(small))


def _rounds(files: int) -> int:
    return 3 if files >= 100_000 else 5


def files_tar(n: int) -> Path:
    """A tar of ``n`` files of ``FILE_SIZE`` bytes under ``data/dKKKK/`` (cached in the data directory)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"files-v{FILES_FORMAT}-{n}.tar"
    if path.exists():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    block = b"x" * FILE_SIZE
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        for name in ("data", *(f"data/d{k:04d}" for k in range((n + PER_DIR - 1) // PER_DIR))):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            t.addfile(info)
        for i in range(n):
            info = tarfile.TarInfo(f"data/d{i // PER_DIR:04d}/f{i:07d}")
            info.size, info.mode, info.mtime = FILE_SIZE, 0o644, 1_700_000_000
            t.addfile(info, _Block(block))
    os.replace(tmp, path)
    return path


class _Block:
    """A file object that reads the same block (tarfile copies ``info.size`` bytes from it)."""

    def __init__(self, block: bytes) -> None:
        self.block = block

    def read(self, size: int = -1) -> bytes:
        return self.block if size < 0 else self.block[:size]


def changes_expected(n: int) -> int:
    """Entries ``diff`` reports for N new files: ``/data``, its directories and the files."""
    return 1 + (n + PER_DIR - 1) // PER_DIR + n


class Corpus:
    """For one file count: the archive, a store holding its image, a plain extracted copy (the export
    baseline's input and the commit/diff containers' source), and a container with the files as changes."""

    def __init__(self, root: Path, n: int) -> None:
        self.n = n
        self.root = root
        self.tar = files_tar(n)
        self.store = ovlcore.Store(root / "store")
        self.image = self.store.images.import_archive(self.tar, tag=f"curve/files:{n}")
        self.plain = root / "plain"
        self.plain.mkdir()
        subprocess.run(["tar", "-xf", str(self.tar), "-C", str(self.plain)], check=True)
        self.base = self._base()
        self.changed = self.store.containers.create(self.base, name=f"changed-{n}")
        self.store.cp(self.plain / "data", f"{self.changed.name}:/data")

    def _base(self) -> ovlcore.Image:
        base_tar = self.root / "base.tar"
        with tarfile.open(base_tar, "w") as t:
            info = tarfile.TarInfo("etc")
            info.type = tarfile.DIRTYPE
            t.addfile(info)
        return self.store.images.import_archive(base_tar, tag="curve/base:1")


@pytest.fixture(scope="module")
def corpora(module_dir: Path) -> Iterator[dict[int, Corpus]]:
    """The corpus of each file count, made when first asked for."""

    class ByCount(dict[int, Corpus]):
        def __missing__(self, n: int) -> Corpus:
            (module_dir / f"files-{n}").mkdir()
            made = self[n] = Corpus(module_dir / f"files-{n}", n)
            return made

    made = ByCount()
    yield made
    for c in made.values():
        c.store.close()


@pytest.fixture(scope="module")
def stacks(module_dir: Path) -> Iterator[dict[int, tuple[StatStack, UnionSetup]]]:
    """The layer stack, image and kernel mount of each depth, made when first asked for."""

    class ByDepth(dict[int, tuple[StatStack, UnionSetup]]):
        def __missing__(self, n: int) -> tuple[StatStack, UnionSetup]:
            d = module_dir / f"stack-{n}"
            (d / "tars").mkdir(parents=True)
            stack = make_stat_stack(d / "tars", False, layers=n)
            made = self[n] = (stack, UnionSetup(d / "union", stack.tars, f"curve/stat:{n}"))
            return made

    made = ByDepth()
    yield made
    for _stack, setup in made.values():
        setup.close()


# ----- union stat vs layers -----


def _check_stat(st: os.stat_result, stack: StatStack) -> None:
    assert st.st_size == stack.target_size, st.st_size


@pytest.mark.benchmark(group="curve-union-stat")
def test_stat_layers_ovlcore(benchmark: Any, stacks: dict[int, tuple[StatStack, UnionSetup]], layers: int) -> None:
    stack, setup = stacks[layers]
    curve_point(benchmark, "curve-union-stat", "ovlcore ContainerFS.stat", layers, "layers")
    fs = setup.image.fs
    _check_stat(fs.stat(stack.target), stack)  # warm
    _check_stat(benchmark(fs.stat, stack.target), stack)


@pytest.mark.benchmark(group="curve-union-stat")
def test_stat_layers_kernel(benchmark: Any, stacks: dict[int, tuple[StatStack, UnionSetup]], layers: int) -> None:
    stack, setup = stacks[layers]
    curve_point(benchmark, "curve-union-stat", "os.stat on kernel overlayfs", layers, "layers")
    path = setup.kernel_path(stack.target)
    _check_stat(os.stat(path), stack)  # warm
    _check_stat(benchmark(os.stat, path), stack)


# ----- import / export / commit / diff vs files -----


@pytest.mark.benchmark(group="curve-import")
def test_import_files_ovlcore(benchmark: Any, module_dir: Path, files: int) -> None:
    tar = files_tar(files)
    curve_point(benchmark, "curve-import", "ovlcore images.import_archive", files, "files")
    count = itertools.count()
    made: list[ovlcore.Image] = []

    def fresh_store() -> tuple[tuple[ovlcore.Store], dict[str, Any]]:
        os.sync()  # no round pays for the previous one's write-back
        return (ovlcore.Store(module_dir / f"import-{files}-{next(count)}"),), {}

    benchmark.pedantic(lambda s: made.append(s.images.import_archive(tar)), setup=fresh_store, rounds=_rounds(files))
    for image in made:
        top = image.top_layer
        assert top is not None and top.size == files * FILE_SIZE, top
        assert image.fs.stat(f"/data/d{(files - 1) // PER_DIR:04d}/f{files - 1:07d}").st_size == FILE_SIZE


@pytest.mark.benchmark(group="curve-import")
def test_import_files_tar_x(benchmark: Any, module_dir: Path, files: int) -> None:
    tar = files_tar(files)
    curve_point(benchmark, "curve-import", "tar -x + syncfs", files, "files")
    count = itertools.count()
    dirs: list[Path] = []

    def fresh_dir() -> tuple[tuple[Path], dict[str, Any]]:
        os.sync()
        d = module_dir / f"tar-x-{files}-{next(count)}"
        d.mkdir()
        dirs.append(d)
        return (d,), {}

    def extract(d: Path) -> None:
        subprocess.run(["tar", "-xf", str(tar), "-C", str(d)], check=True)
        syncfs(d)

    benchmark.pedantic(extract, setup=fresh_dir, rounds=_rounds(files))
    for d in dirs:
        assert (d / f"data/d{(files - 1) // PER_DIR:04d}/f{files - 1:07d}").stat().st_size == FILE_SIZE


def _check_export(path: Path, n: int) -> None:
    assert path.stat().st_size >= n * FILE_SIZE
    if n <= 10_000:  # counting a million members takes longer than the benchmark
        with tarfile.open(path) as t:
            assert sum(1 for m in t if m.isreg() and m.name.removeprefix("./").startswith("data/")) == n


@pytest.mark.benchmark(group="curve-export")
def test_export_files_ovlcore(benchmark: Any, corpora: dict[int, Corpus], files: int) -> None:
    c = corpora[files]
    curve_point(benchmark, "curve-export", "ovlcore container.export", files, "files")
    container = c.store.containers.create(c.image)
    out = c.root / "export-ovlcore.tar"
    benchmark.pedantic(container.export, args=(out,), rounds=_rounds(files), warmup_rounds=1)
    _check_export(out, files)
    container.remove()


@pytest.mark.benchmark(group="curve-export")
def test_export_files_tar_c(benchmark: Any, corpora: dict[int, Corpus], files: int) -> None:
    c = corpora[files]
    curve_point(benchmark, "curve-export", "tar -c of the extracted tree", files, "files")
    out = c.root / "export-tar.tar"
    cmd = ["tar", "-cf", str(out), "-C", str(c.plain), "."]
    benchmark.pedantic(subprocess.run, args=(cmd,), kwargs={"check": True}, rounds=_rounds(files), warmup_rounds=1)
    _check_export(out, files)


@pytest.mark.benchmark(group="curve-commit")
def test_commit_files_ovlcore(benchmark: Any, corpora: dict[int, Corpus], files: int) -> None:
    c = corpora[files]
    curve_point(benchmark, "curve-commit", "ovlcore container.commit", files, "new files in the container")
    made: list[ovlcore.Image] = []
    benchmark.pedantic(lambda: made.append(c.changed.commit()), rounds=_rounds(files))
    for image in made:
        top = image.top_layer
        assert top is not None and top.size == files * FILE_SIZE, top
    for image in made:
        image.remove()


@pytest.mark.benchmark(group="curve-diff")
def test_diff_files_ovlcore(benchmark: Any, corpora: dict[int, Corpus], files: int) -> None:
    c = corpora[files]
    curve_point(benchmark, "curve-diff", "ovlcore container.diff", files, "changed files")
    changes = benchmark.pedantic(c.changed.diff, rounds=_rounds(files), warmup_rounds=1)
    assert len(changes) == changes_expected(files), len(changes)
