"""Data builders and helpers shared by ovlcore's benchmarks (the fixtures wrapping them are in conftest.py; tars
and kernel mounts come from the test suite's ``support`` package).

Built archives are cached in ``$OVLCORE_BENCH_DATA`` (default ``/tmp/ovlcore-bench-data``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from support.kernel import MountRefused, mount_overlay, mount_refused, unmount
from support.tars import D, F, tar

DATA_DIR = Path(os.environ.get("OVLCORE_BENCH_DATA", "/tmp/ovlcore-bench-data"))

#: Bump when the way the root-file-system tar is built changes, so stale caches are not reused.
ROOTFS_FORMAT = 2

#: Where the root-file-system tar takes its content from: (directory, share of the size budget, largest file
#: taken). Libraries, executables, Python modules and many small data files (docs, locales, man pages), for
#: the shape of a distribution image: ~17,000 entries, files averaging ~14 KB, for 200 MB.
ROOTFS_SOURCES = (
    ("/usr/lib/x86_64-linux-gnu", 0.35, 4 << 20),
    ("/usr/share", 0.45, 256 << 10),
    ("/usr/bin", 0.10, 4 << 20),
    ("/usr/lib/python3.11", 0.10, 1 << 20),
)

FULL_ROOTFS_BYTES = 200_000_000
SMALL_ROOTFS_BYTES = 4_000_000

#: Timed rounds of each layer-apply contender.
APPLY_ROUNDS = int(os.environ.get("OVLCORE_BENCH_ROUNDS", "5"))


# ----- timing helpers -----

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str | os.PathLike[str]) -> None:
    """``syncfs(2)`` on the file system holding ``path`` (what ovlcore does before publishing a layer)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")


@contextlib.contextmanager
def guest_memory_held(small: bool) -> Iterator[str]:
    """Keep this virtual machine's free memory backed by its host for the session; yields what was done.

    The guest hands freed pages back to its host (free page reporting), and the first write to each page
    afterwards costs a host fault (~3 ms per MB here): writing into the page cache then runs at 340 MB/s
    instead of 1.2 GB/s, for whichever contender happens to get such pages. As root at full size, the
    reporting is stopped for the session (its minimum order set above the largest one; restored at the
    end) and the free memory is written once. Opt out: ``OVLCORE_BENCH_VM_MEMORY=keep``.
    """
    if small or os.geteuid() != 0 or os.environ.get("OVLCORE_BENCH_VM_MEMORY") == "keep":
        yield "as found"
        return
    try:
        old = PAGE_REPORTING_ORDER.read_text().strip()
        orders = len(Path("/proc/buddyinfo").read_text().splitlines()[0].split()) - 4  # "Node 0, zone X" + counts
        PAGE_REPORTING_ORDER.write_text(str(orders))  # no free block is that large: nothing is reported
    except OSError:
        yield "as found (no free page reporting to stop)"
        return
    try:
        free = next(int(line.split()[1]) << 10 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemFree:"))
        size = max(0, free - (1 << 30)) & ~((64 << 20) - 1)
        block = b"\1" * (64 << 20)
        if size:
            with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
                for off in range(0, size, len(block)):
                    m[off : off + len(block)] = block
        yield f"free page reporting stopped, {size >> 30} GiB of free memory written once before the run"
    finally:
        PAGE_REPORTING_ORDER.write_text(old)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes (OpenSSL's, through hashlib): the floor of anything that checks
    those bytes against their digest."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FreshDirs:
    """A fresh empty directory for every benchmark round, under ``base``.

    :meth:`new` flushes dirty data system-wide first (outside the timed region), so no round pays for the
    previous one's write-back. Round directories are never deleted between rounds: deleting tens of
    thousands of files makes ext4 skip the freed inodes for a while (``recently_deleted()`` in its inode
    allocator, 60-300 s), and the next extraction then spends most of its time scanning inode tables
    (measured on this machine: ``tar -x`` of the 200 MB tar takes 0.7-1.0 s on a file system that deleted
    nothing lately, and 3.5, 4.5, 5.5, 6.5 s over four rounds that each first deleted the previous round's
    tree). Whoever owns ``base`` removes it all at the end.
    """

    def __init__(self, base: Path, kind: str) -> None:
        self.base = base
        #: What ``base`` is on, for the report (e.g. ``"fresh ext4 (loop, direct I/O)"``).
        self.kind = kind
        self.count = 0

    def new(self) -> Path:
        os.sync()
        self.count += 1
        p = self.base / f"round-{self.count:03d}"
        p.mkdir(parents=True)
        return p


class ScratchFS:
    """A new, empty ext4 file system on a loop device (direct I/O to a sparse image file), mounted at
    ``mountpoint``, for one benchmark: every contender starts from the same virgin file system, untouched by
    earlier deletions (see :class:`FreshDirs`) or by other programs using the machine's disk.

    :meth:`create` returns ``None`` with a reason when it cannot be made (not root, no loop devices)."""

    def __init__(self, image: Path, mountpoint: Path, device: str) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.device = device

    @classmethod
    def create(cls, image: Path, mountpoint: Path, size: int) -> tuple[ScratchFS | None, str]:
        if os.environ.get("OVLCORE_BENCH_SCRATCH", "loop") != "loop":
            return None, "OVLCORE_BENCH_SCRATCH is not 'loop'"
        if os.geteuid() != 0:
            return None, "not root (a loop-mounted scratch file system needs root)"
        if not (shutil.which("mkfs.ext4") and shutil.which("losetup")):
            return None, "mkfs.ext4 or losetup not found"
        image.parent.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        device = ""
        try:
            with open(image, "wb") as f:
                f.truncate(size)
            # Inode tables and journal written now, not by a background thread during the measurements.
            run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True)  # noqa: E731
            run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image))
            device = run("losetup", "--find", "--show", "--direct-io=on", str(image)).stdout.strip()
            run("mount", "-t", "ext4", device, str(mountpoint))
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            if device:
                subprocess.run(["losetup", "-d", device], check=False)
            image.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
            return None, f"could not make a loop-mounted ext4: {detail.strip()}"
        return cls(image, mountpoint, device), ""

    def close(self) -> None:
        r = subprocess.run(["umount", str(self.mountpoint)], check=False, capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)
        self.image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()


# ----- the root-file-system tar -----


@dataclass(frozen=True)
class RootfsTar:
    path: Path
    #: ``sha256:<hex>`` of the tar: what ``Layer.diff_id`` must be.
    diff_id: str
    #: Bytes of the tar.
    tar_size: int
    #: Regular-file bytes plus symlink-target bytes: what ``Layer.size`` must be.
    content_size: int
    entries: int
    files: int
    dirs: int
    symlinks: int
    #: A regular file of the archive (relative path) and its size, checked after every extraction.
    sample: str
    sample_size: int

    def describe(self) -> str:
        return (
            f"{self.path.name}: {self.tar_size / 1e6:.1f} MB tar, {self.entries} entries "
            f"({self.files} files, {self.dirs} dirs, {self.symlinks} symlinks), content {self.content_size / 1e6:.1f} MB"
        )


def _select(root: str, budget: int, max_file: int) -> list[str]:
    """Paths under ``root`` in the order Docker's tar writer walks (each directory's entries sorted, a
    directory before its children), until ``budget`` bytes of file content are taken; files larger than
    ``max_file`` are left out."""
    out: list[str] = []
    used = 0

    def walk(d: str) -> bool:
        nonlocal used
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return True
        for name in names:
            p = os.path.join(d, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append(p)
                if not walk(p):
                    return False
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > max_file:
                    continue
                out.append(p)
                used += st.st_size
                if used >= budget:
                    return False
            elif stat.S_ISLNK(st.st_mode):
                out.append(p)
        return True

    out.append(root)
    walk(root)
    return out


def build_rootfs_tar(dest: Path, budget: int) -> None:
    """Write a PAX tar of a root file system of about ``budget`` bytes taken from this machine's ``/usr``,
    shaped like Docker's layer tars: numeric owners, whole-second times, PAX records only where needed."""
    paths: list[str] = []
    ancestors: set[str] = set()
    for root, share, max_file in ROOTFS_SOURCES:
        if not os.path.isdir(root):
            continue
        for parent in Path(root).parents:
            if str(parent) != "/" and str(parent) not in ancestors:
                ancestors.add(str(parent))
        paths.extend(_select(root, int(budget * share), max_file))
    if not paths:
        raise RuntimeError("no source directory for the root-file-system tar exists on this machine")
    names = sorted(p.lstrip("/") for p in ancestors) + [p.lstrip("/") for p in paths]
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    listing = dest.with_name(f".{dest.name}.{os.getpid()}.list")
    listing.write_bytes(b"\0".join(os.fsencode(n) for n in names) + b"\0")
    try:
        subprocess.run(
            [
                "tar", "--format=pax", "--numeric-owner",
                "--pax-option=delete=atime,delete=ctime,delete=mtime",
                "--no-recursion", "--null", "-C", "/", "-cf", str(tmp), "-T", str(listing),
            ],
            check=True,
        )  # fmt: skip
        os.replace(tmp, dest)
    finally:
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def describe_tar(path: Path) -> dict[str, object]:
    """Digest and inventory of a tar (what an extraction of it must produce)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    content = entries = files = dirs = symlinks = 0
    sample, sample_size = "", -1
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            entries += 1
            if m.isreg():
                files += 1
                content += m.size
                # A mid-sized file in a deep directory, stable for a given archive.
                if 10_000 <= m.size <= 1_000_000 and m.name.count("/") > sample.count("/"):
                    sample, sample_size = m.name, m.size
            elif m.isdir():
                dirs += 1
            elif m.issym():
                symlinks += 1
                content += len(os.fsencode(m.linkname))
    if not sample:
        with tarfile.open(path, "r:") as tf:
            m = next(m for m in tf if m.isreg())
            sample, sample_size = m.name, m.size
    return {
        "diff_id": "sha256:" + h.hexdigest(),
        "tar_size": path.stat().st_size,
        "content_size": content,
        "entries": entries,
        "files": files,
        "dirs": dirs,
        "symlinks": symlinks,
        "sample": sample,
        "sample_size": sample_size,
    }


def cached_rootfs(budget: int) -> RootfsTar:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tar = DATA_DIR / f"rootfs-v{ROOTFS_FORMAT}-{budget // 1_000_000}MB.tar"
    meta_path = tar.with_suffix(".json")
    meta = None
    if tar.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("tar_size") != tar.stat().st_size:
            meta = None
    if meta is None:
        build_rootfs_tar(tar, budget)
        meta = describe_tar(tar)
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, meta_path)
    return RootfsTar(path=tar, **meta)  # type: ignore[arg-type]


# ----- synthetic layer stacks for the union-view benchmarks -----


@dataclass(frozen=True)
class StatStack:
    """Layer tars (bottom first) whose bottom layer holds ``target``, under directories every layer has."""

    tars: list[Path]
    target: str
    target_size: int


@dataclass(frozen=True)
class ListdirStack:
    """Three layer tars (bottom first) that merge into ``directory`` with exactly ``expected`` entries."""

    tars: list[Path]
    directory: str
    expected: list[str]


STAT_TARGET = "/usr/lib/bench/pkg/target.bin"
STAT_TARGET_SIZE = 12_345
LISTDIR_DIR = "/srv/data"


def make_stat_stack(d: Path, small: bool, layers: int | None = None) -> StatStack:
    """20 layers (3 when small; ``layers`` when given). Every layer has ``/usr``, ``/usr/lib``,
    ``/usr/lib/bench``, ``/usr/lib/bench/pkg`` (so each lookup really merges all of them) with files of its
    own; the bottom layer also has the target file; one upper layer shadows a file of a lower one."""
    n_layers, n_files = (3, 10) if small else (20, 50)
    n_layers = layers or n_layers
    tars = []
    for i in range(n_layers):
        entries = [
            D("usr"),
            D("usr/lib"),
            D("usr/lib/bench"),
            D("usr/lib/bench/pkg"),
            D("etc"),
            F(f"etc/layer-{i:02d}.conf", f"layer {i}\n"),
            F("usr/lib/bench/shared.conf", f"from layer {i}\n"),
        ]
        entries += [F(f"usr/lib/bench/pkg/l{i:02d}-{j:03d}.so", b"x" * 64) for j in range(n_files)]
        if i == 0:
            entries.append(F(STAT_TARGET.lstrip("/"), b"t" * STAT_TARGET_SIZE))
        p = d / f"layer-{i:02d}.tar"
        p.write_bytes(tar(*entries))
        tars.append(p)
    return StatStack(tars=tars, target=STAT_TARGET, target_size=STAT_TARGET_SIZE)


def make_listdir_stack(d: Path, small: bool) -> ListdirStack:
    """N = 10,000 (200 when small) merged entries: the bottom layer has 0.6 N, the middle one adds 0.3 N
    and replaces 0.05 N of the bottom's, the top one adds 0.11 N and deletes 0.01 N (whiteouts)."""
    n = 200 if small else 10_000
    n0, n1, over, n2, gone = int(0.6 * n), int(0.3 * n), int(0.05 * n), int(0.11 * n), int(0.01 * n)
    assert n0 - gone + n1 + n2 == n
    dname = LISTDIR_DIR.lstrip("/")
    base = [D("srv"), D(dname)]
    name = "e{:05d}".format
    layers = [
        base + [F(f"{dname}/{name(k)}", b"") for k in range(n0)],
        base
        + [F(f"{dname}/{name(k)}", b"v2") for k in range(over)]
        + [F(f"{dname}/{name(k)}", b"") for k in range(n0, n0 + n1)],
        base
        + [F(f"{dname}/.wh.{name(k)}", b"") for k in range(n0 - gone, n0)]
        + [F(f"{dname}/{name(k)}", b"") for k in range(n0 + n1, n0 + n1 + n2)],
    ]
    tars = []
    for i, entries in enumerate(layers):
        p = d / f"layer-{i}.tar"
        p.write_bytes(tar(*entries))
        tars.append(p)
    expected = sorted({name(k) for k in range(n0 + n1 + n2)} - {name(k) for k in range(n0 - gone, n0)})
    assert len(expected) == n
    return ListdirStack(tars=tars, directory=LISTDIR_DIR, expected=expected)


# ----- the container workload (issues 3, 4, 5) -----------------------------------------------------------


MIB = 1 << 20


@dataclass
class ContainerWorkload:
    """A container from the ~200 MB base image with the changes of the container issue's workload."""

    store: Any
    base: Any
    container: Any
    files: int
    big: int
    deleted: str


def apply_container_workload(store: Any, base: Any, small: bool, name: str = "bench") -> ContainerWorkload:
    """10,000 new 4 KiB files in one new directory, 200 appended-to image files, one deleted image
    directory (the biggest under /usr/share), one new 1 GiB file of random bytes (tiny sizes when small)."""
    c = store.containers.create(base, name=name)
    fs = c.fs
    nfiles, big = (100, 1 * MIB) if small else (10_000, 1024 * MIB)
    fs.mkdir("/data")
    block = os.urandom(4096)
    for i in range(nfiles):
        fs.write_bytes(f"/data/f{i:05d}", block)
    appended = 0
    for top, _dirs, names in fs.walk("/usr"):
        for n in names:
            p = f"{top}/{n}"
            if appended < 200 and fs.is_file(p) and not fs.is_symlink(p):
                with fs.open(p, "ab") as f:
                    f.write(b"appended\n")
                appended += 1
    share = [(n, sum(1 for _ in fs.walk(f"/usr/share/{n}"))) for n in fs.listdir("/usr/share") if fs.is_dir(f"/usr/share/{n}")]
    deleted = "/usr/share/" + max(share, key=lambda x: x[1])[0]
    fs.rmtree(deleted)
    with fs.open("/big", "wb") as f:
        for _ in range(big // MIB):
            f.write(os.urandom(MIB))
    return ContainerWorkload(store, base, c, nfiles, big, deleted)


# ----- baselines -------------------------------------------------------------------------------------


def docker_running() -> str | None:
    """None when Docker can be used, else why not."""
    if shutil.which("docker") is None:
        return "Docker is not installed"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"Docker engine not running: {(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}"
    return None


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a baseline's command; its stderr in the failure if it fails."""
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def docker_load(store: ovlcore.Store, image: ovlcore.Image, tag: str, scratch: Path) -> None:
    """Give Docker the very same image, as ``tag``: ovlcore's docker-archive save, ``docker load``-ed."""
    archive = scratch / "docker-load.tar"
    store.images.tag(image, tag)
    store.images.save(tag, archive)
    try:
        subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
    finally:
        archive.unlink()


def rotated_runs(contenders: tuple[str, ...], rounds: int) -> list[tuple[int, str]]:
    """(round, contender) pairs, round-major, each round starting one contender further on: as test items,
    every contender runs once per round, so noise from other jobs on the machine (and drift over the run)
    falls on all sides alike."""
    return [(r, contenders[(r + i) % len(contenders)]) for r in range(rounds) for i in range(len(contenders))]


def curve_point(benchmark: Any, curve: str, line: str, x: int, x_label: str, **info: Any) -> None:
    """Mark a benchmark as the point ``x`` of the line ``line`` of the cost curve ``curve`` (its
    ``extra_info``), which ``report.py`` draws; ``role="curve"`` keeps it out of the ours/baseline ratios."""
    benchmark.extra_info.update(role="curve", curve=curve, line=line, x=x, x_label=x_label, **info)


def small_mode(config: pytest.Config) -> bool:
    """Tiny inputs when benchmarks are not measured (the CI smoke run) or when asked for."""
    env = os.environ.get("OVLCORE_BENCH_SMALL", "")
    if env not in ("", "0"):
        return True
    try:
        return bool(config.getoption("benchmark_disable"))
    except ValueError:  # pytest-benchmark not installed: nothing is measured anyway
        return True


def build_image(store: ovlcore.Store, tars: list[Path], tag: str) -> ovlcore.Image:
    """An image whose layers are ``tars`` (bottom first), built the way image builders do."""
    image = store.images.import_archive(tars[0], tag=tag)
    for t in tars[1:]:
        layer = store.layers.apply(t, parent=image.top_layer)
        image = store.images.create(layer=layer, parent=image, tag=tag)
    assert len(image.layers) == len(tars)
    return image


class UnionSetup:
    """A store holding an image of the given layer tars, and the kernel's read-only overlay mount of its
    layer directories (the union benchmarks' baseline) or why there is none."""

    def __init__(self, base: Path, tars: list[Path], tag: str) -> None:
        self.base = base
        self.store = ovlcore.Store(base / "store")
        self.image = build_image(self.store, tars, tag)
        top = self.image.top_layer
        assert top is not None
        self.lowers = top.stack_paths()  # top first, as lowerdir wants them
        # The kernel's read-only overlay of the same layer directories: the baseline, or why there is none.
        self.mnt = base / "mnt"
        self.links: Path | None = None
        self.refused = mount_refused()
        if self.refused is None:
            self.mnt.mkdir()
            lowers: list[Path] | list[str] = self.lowers
            if len(":".join(map(str, lowers))) > 3000:
                # mount(2) takes one page of options: name deep stacks' layers by short symlinks (the
                # kernel resolves them once, at mount time).
                self.links = Path(tempfile.mkdtemp(prefix="ovl-", dir="/tmp"))
                for i, p in enumerate(self.lowers):
                    (self.links / str(i)).symlink_to(p)
                lowers = [self.links / str(i) for i in range(len(self.lowers))]
            try:
                mount_overlay(lowers, self.mnt)
            except MountRefused as e:
                self.refused = str(e)

    def kernel_path(self, path: str) -> str:
        if self.refused:
            print(f"\n[ovlcore benches] skipping kernel baseline: {self.refused}")
            pytest.skip(self.refused)
        return str(self.mnt) + path

    def close(self) -> None:
        if self.refused is None:
            unmount(self.mnt)
        if self.links is not None:
            shutil.rmtree(self.links, ignore_errors=True)
        self.store.close()
        shutil.rmtree(self.base, ignore_errors=True)
