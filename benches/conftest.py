"""pytest wiring of ovlcore's benchmarks (pytest-benchmark): collection, data size, shared fixtures.

Collection: the benchmark files are named ``bench_*.py``, which pytest's default ``python_files`` does not
match, and the project's pytest settings (pyproject.toml) point at ``tests/``. The ``pytest_collect_file``
hook below collects ``bench_*.py`` under this directory, so ``pytest benches`` works from the repository
root without touching the project configuration.

Two sizes of data:

* full size (the default when benchmarks are measured): a ~200 MB root-file-system tar built from this
  machine's ``/usr``, a 20-layer stack and a 10,000-entry directory merged from 3 layers;
* small (``--benchmark-disable``, or ``OVLCORE_BENCH_SMALL=1``): a few MB of tar, 3 layers, 200 entries, so
  ``pytest benches --benchmark-disable`` checks in seconds that every benchmark still runs and still
  measures something correct.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The benchmark modules import their helpers from here, whatever pytest's import mode, and the test
# suite's builders (tests/support/: tars, kernel mounts) too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _support import (  # noqa: E402
    APPLY_ROUNDS,
    DATA_DIR,
    FULL_ROOTFS_BYTES,
    SMALL_ROOTFS_BYTES,
    FreshDirs,
    ListdirStack,
    RootfsTar,
    ScratchFS,
    StatStack,
    cached_rootfs,
    guest_memory_held,
    make_listdir_stack,
    make_stat_stack,
    small_mode,
)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself: collecting it here too would run
    # every benchmark twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config: pytest.Config) -> str:
    mode = "small (smoke) data" if small_mode(config) else "full-size data"
    return f"ovlcore benches: {mode}; data cache {DATA_DIR}"


@pytest.fixture(scope="session")
def small(request: pytest.FixtureRequest) -> bool:
    return small_mode(request.config)


#: What was done about this virtual machine's memory for the run (see ``guest_memory_held``): in the
#: JSON's machine_info, so that a report says under which conditions its figures were measured.
_VM_MEMORY: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def vm_memory(small: bool) -> Iterator[None]:
    with guest_memory_held(small) as done:
        _VM_MEMORY.append(done)
        yield


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, object]) -> None:
    if _VM_MEMORY:
        machine_info["vm_memory"] = _VM_MEMORY[0]


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """This session's private working directory under the data directory (not pytest's shared
    ``/tmp/pytest-of-USER``, which other sessions on the machine prune); removed when the session ends.
    Benchmark round directories live here until then (see :class:`FreshDirs` for why not shorter)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=DATA_DIR))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def module_dir(work_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A working directory for one benchmark module, removed at its end."""
    d = work_dir / request.module.__name__
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fresh_dirs(
    request: pytest.FixtureRequest, rootfs_tar: RootfsTar, work_dir: Path
) -> Iterator[FreshDirs]:
    """A fresh directory per benchmark round (see :class:`FreshDirs`), on a new scratch ext4 made for this
    benchmark when possible (see :class:`ScratchFS`), else in a plain temporary directory."""
    name = request.node.name
    size = max(256 << 20, 3 * APPLY_ROUNDS * rootfs_tar.tar_size)
    scratch, why = ScratchFS.create(work_dir / f"{name}.img", work_dir / "rounds" / name, size)
    if scratch is None:
        print(f"\n[ovlcore benches] {name}: rounds in a plain directory: {why}")
        yield FreshDirs(work_dir / "rounds" / name, "plain directory")  # removed at the end of the session
        return
    try:
        yield FreshDirs(scratch.mountpoint, "fresh ext4 (loop, direct I/O)")
    finally:
        scratch.close()


@pytest.fixture(scope="session")
def rootfs_tar(small: bool) -> RootfsTar:
    """The root-file-system tar (built once, then cached in the data directory)."""
    r = cached_rootfs(SMALL_ROOTFS_BYTES if small else FULL_ROOTFS_BYTES)
    print(f"\n[ovlcore benches] {r.describe()}")
    return r


@pytest.fixture(scope="session")
def stat_stack(small: bool, work_dir: Path) -> StatStack:
    (work_dir / "stat-stack").mkdir()
    return make_stat_stack(work_dir / "stat-stack", small)


@pytest.fixture(scope="session")
def listdir_stack(small: bool, work_dir: Path) -> ListdirStack:
    (work_dir / "listdir-stack").mkdir()
    return make_listdir_stack(work_dir / "listdir-stack", small)
