"""Hard links through the FUSE mount: names of one file share one inode number and show one link
count, as through ``mount -t overlay`` of the same directories (root), and ``tar`` stores the second
name of a file as a hard link."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.fuse import HELPER, force_unmount, require_fuse
from support.privilege import IS_ROOT

pytestmark = [pytest.mark.timeout(180)]

NAMES = ["a", "a2", "sub/b", "c", "c2", "c3", "f", "g", "sub/h", "solo", "n"]


def make_lower(lower: Path) -> None:
    (lower / "sub").mkdir(parents=True)
    (lower / "a").write_text("a\n")
    os.link(lower / "a", lower / "sub" / "b")
    (lower / "c").write_text("c\n")
    os.link(lower / "c", lower / "c2")
    os.link(lower / "c", lower / "c3")
    (lower / "solo").write_text("solo\n")


def fuse_mount(tmp: Path, lower: Path) -> Path:
    for n in ("fu", "fw", "fm"):
        (tmp / n).mkdir()
    opts = f"lowerdir={lower},upperdir={tmp / 'fu'},workdir={tmp / 'fw'}"
    subprocess.run([*HELPER, "-o", opts, str(tmp / "fm")], check=True, timeout=60)
    return tmp / "fm"


@pytest.fixture
def lower(tmp_path: Path) -> Iterator[Path]:
    require_fuse()
    lo = tmp_path / "lower"
    make_lower(lo)
    yield lo
    for m in ("fm", "km"):
        force_unmount(str(tmp_path / m))


def groups(root: Path) -> tuple[list[list[str]], dict[str, int]]:
    """Names partitioned by inode number, and each name's link count (numbers differ between mounts)."""
    by_ino: dict[int, list[str]] = {}
    nlink: dict[str, int] = {}
    for n in NAMES:
        try:
            st = os.lstat(root / n)
        except FileNotFoundError:
            continue
        by_ino.setdefault(st.st_ino, []).append(n)
        nlink[n] = st.st_nlink
    return sorted(sorted(g) for g in by_ino.values()), nlink


OPS: list[tuple[str, Callable[[Path], None]]] = [
    ("nothing", lambda m: None),
    ("link a a2 (lower file)", lambda m: os.link(m / "a", m / "a2")),
    ("write f", lambda m: (m / "f").write_text("f\n") and None),
    ("link f g", lambda m: os.link(m / "f", m / "g")),
    ("link f sub/h", lambda m: os.link(m / "f", m / "sub" / "h")),
    ("unlink g", lambda m: os.unlink(m / "g")),
    ("rename sub/h over solo", lambda m: os.rename(m / "sub" / "h", m / "solo")),
    ("unlink c2 (lower)", lambda m: os.unlink(m / "c2")),
    ("link c3 n (lower, copy-up)", lambda m: os.link(m / "c3", m / "n")),
    ("write sub/b (copy-up breaks the link)", lambda m: (m / "sub" / "b").write_text("b\n") and None),
    ("unlink f", lambda m: os.unlink(m / "f")),
]


def test_lower_links_share_a_number(lower: Path, tmp_path: Path) -> None:
    m = fuse_mount(tmp_path, lower)
    g, nlink = groups(m)
    assert ["a", "sub/b"] in g and ["c", "c2", "c3"] in g and ["solo"] in g
    assert nlink == {"a": 2, "sub/b": 2, "c": 3, "c2": 3, "c3": 3, "solo": 1}
    # A name keeps its number across a copy-up.
    before = os.lstat(m / "solo").st_ino
    with open(m / "solo", "a") as f:
        f.write("more\n")
    assert os.lstat(m / "solo").st_ino == before


def test_links_and_counts_as_the_kernel_overlay(lower: Path, tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("mount -t overlay needs root")
    for n in ("ku", "kw", "km"):
        (tmp_path / n).mkdir()
    k = tmp_path / "km"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={tmp_path / 'ku'},workdir={tmp_path / 'kw'}", str(k)],
                   check=True, timeout=60)
    m = fuse_mount(tmp_path, lower)
    for what, op in OPS:
        op(k)
        op(m)
        assert groups(m) == groups(k), f"after {what}: fuse {groups(m)}, kernel {groups(k)}"


def test_tar_stores_hard_links(lower: Path, tmp_path: Path) -> None:
    m = fuse_mount(tmp_path, lower)
    (m / "f").write_text("upper\n")
    # (In the root: a link into ``sub`` copies ``sub`` up, which changes the root's times behind the
    # kernel's cached attributes for up to a second, and tar then reports "file changed as we read it".)
    os.link(m / "f", m / "g")
    subprocess.run(["tar", "-cf", str(tmp_path / "t.tar"), "."], cwd=m, check=True, timeout=60)
    with tarfile.open(tmp_path / "t.tar") as t:
        links = {i.name: i.linkname for i in t.getmembers() if i.islnk()}
    # One of each pair is stored as a file, the other as a link to it.
    pairs = {frozenset({"./a", "./sub/b"}), frozenset({"./f", "./g"})}
    assert {frozenset({n, t}) for n, t in links.items() if frozenset({n, t}) in pairs} == pairs
    assert len([n for n in links if n in {"./c", "./c2", "./c3"}]) == 2


@pytest.mark.parametrize(
    "op",
    [
        lambda m: os.link(m / "d" / "e" / "f", m / "d" / "e" / "g"),
        lambda m: (m / "d" / "e" / "new").write_text("n\n") and None,
    ],
    ids=["link", "create"],
)
def test_copy_up_of_directories_shows_fresh_attributes(tmp_path: Path, op: Callable[[Path], None]) -> None:
    """A copy-up of lower directories changes their attributes: the kernel must not keep the old
    ones (``tar`` would fail with "file changed as we read it")."""
    require_fuse()
    lo = tmp_path / "lower"
    (lo / "d" / "e").mkdir(parents=True)
    (lo / "d" / "e" / "f").write_text("f\n")
    os.utime(lo / "d" / "e", (1_000_000, 1_000_000))
    os.utime(lo / "d", (1_000_000, 1_000_000))
    try:
        mnt = fuse_mount(tmp_path, lo)
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(mnt), "."], check=True, timeout=60)
        before = {d: os.lstat(mnt / d) for d in ("d", "d/e")}
        op(mnt)
        r = subprocess.run(["tar", "-cf", "/dev/null", "-C", str(mnt), "."], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for d in ("d", "d/e"):
            seen, up = os.lstat(mnt / d), os.lstat(tmp_path / "fu" / d)
            assert (seen.st_mtime_ns, seen.st_ctime_ns, seen.st_nlink) == (up.st_mtime_ns, up.st_ctime_ns, up.st_nlink), d
        assert os.lstat(mnt / "d").st_ctime_ns != before["d"].st_ctime_ns
    finally:
        force_unmount(str(tmp_path / "fm"))
