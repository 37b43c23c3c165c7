"""FUSE mounts of the union view: the ``ovlcore-fuse`` helper on plain layer directories,
``Container.mount(driver="fuse")``, ``Image.mount()``, the CLI, a killed daemon, and real programs on
the mount. Every mount is taken down in teardown; everything skips where /dev/fuse is not usable."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ovlcore
from ovlcore.fusemount import is_mounted, parse_command_line
from support.cli import run_cli
from support.fuse import HELPER, bytes_read_by, daemon_pid, force_unmount, require_fuse
from support.images import import_image
from support.privilege import IS_ROOT
from support.trees import compare_trees, fs_tree, host_tree

pytestmark = [pytest.mark.timeout(180)]


def run(cmd: list[str], cwd: str | os.PathLike[str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=True, **kw)  # type: ignore[call-overload, no-any-return]


# --------------------------------------------------------------------------------------------------
# the helper on plain kernel-format layer directories
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[dict[str, Path]]:
    require_fuse()
    d = {n: tmp_path / n for n in ("l1", "l2", "u", "w", "m")}
    for p in d.values():
        p.mkdir()
    (d["l2"] / "a").write_text("hello\n")
    (d["l2"] / "gone").write_text("hidden by a whiteout\n")
    (d["l2"] / "dir" / "sub").mkdir(parents=True)
    (d["l2"] / "dir" / "sub" / "f").write_text("deep\n")
    (d["l2"] / "big").write_bytes(os.urandom(3 << 20))
    (d["l1"] / "b").write_text("top\n")
    (d["l1"] / "a").write_text("hello from the top\n")
    # Lower directories may be given as symlinks (podman does: overlay/l/<id>).
    (tmp_path / "link1").symlink_to(d["l1"])
    d["link1"] = tmp_path / "link1"
    yield d
    force_unmount(str(d["m"]))


def helper_mount(d: dict[str, Path], *extra: str, upper: bool = True) -> None:
    opts = f"lowerdir={d['link1']}:{d['l2']}"
    if upper:
        opts += f",upperdir={d['u']},workdir={d['w']}"
    run([*HELPER, "-o", opts + ",,volatile" + "".join("," + e for e in extra), str(d["m"])])
    assert is_mounted(d["m"])


def wait_gone(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while is_mounted(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not is_mounted(path)


def test_command_line_forms() -> None:
    spec, fg = parse_command_line(["-o", "lowerdir=/a:/b,upperdir=/u,workdir=/w,,volatile,rw,dev,suid", "/m"])
    assert (spec.lower, spec.upper, spec.scratch, spec.mountpoint, fg) == (["/a", "/b"], "/u", "/w/ovlcore-scratch", "/m", False)
    spec, _ = parse_command_line(["src", "/m", "-o", "rw,noatime,exec", "-o", "lowerdir=/a"])
    assert (spec.lower, spec.upper, spec.fsname) == (["/a"], None, "src")
    spec, _ = parse_command_line(["-o", r"lowerdir=/a\:x:/b", "/m"])
    assert spec.lower == [os.path.realpath("/a:x"), "/b"]
    with pytest.raises(ValueError):
        parse_command_line(["-o", "upperdir=/u", "/m"])
    with pytest.raises(ValueError):
        parse_command_line(["-o", "lowerdir=/a"])


def test_helper_union_and_writes(layers: dict[str, Path]) -> None:
    d = layers
    helper_mount(d)
    m = d["m"]
    assert sorted(os.listdir(m)) == ["a", "b", "big", "dir", "gone"]
    assert (m / "a").read_text() == "hello from the top\n"
    st_a = os.stat(m / "a")
    # Copy-up on append; the inode number the mount shows does not change.
    with open(m / "a", "a") as f:
        f.write("more\n")
    assert (m / "a").read_text() == "hello from the top\nmore\n"
    assert os.stat(m / "a").st_ino == st_a.st_ino
    assert (d["u"] / "a").read_text() == "hello from the top\nmore\n"
    assert (d["l1"] / "a").read_text() == "hello from the top\n"
    # One st_dev for the whole mount.
    assert {os.lstat(m / n).st_dev for n in ("a", "b", "dir", "dir/sub")} == {os.stat(m).st_dev}
    # Deleting a lower entry leaves a whiteout (a kernel-format layer).
    os.remove(m / "gone")
    assert not (m / "gone").exists()
    w = os.lstat(d["u"] / "gone")
    assert stat.S_ISCHR(w.st_mode) and w.st_rdev == 0
    # A directory from the image layers can be renamed (the kernel says EXDEV).
    os.rename(m / "dir", m / "moved")
    assert (m / "moved" / "sub" / "f").read_text() == "deep\n"
    assert not (m / "dir").exists()
    # Names longer than NAME_MAX.
    with pytest.raises(OSError) as e:
        (m / ("x" * 256)).write_text("")
    assert e.value.errno == errno.ENAMETOOLONG
    # An open, unlinked file reports nlink 0 and keeps working.
    (m / "tmpf").write_text("data")
    with open(m / "tmpf", "r+") as f:
        os.remove(m / "tmpf")
        assert os.fstat(f.fileno()).st_nlink == 0
        f.write("D")
        f.seek(0)
        assert f.read() == "Data"
    # statfs is the writable layer's file system.
    assert os.statvfs(m).f_blocks == os.statvfs(d["u"]).f_blocks
    # xattrs through the mount.
    os.setxattr(m / "b", "user.k", b"v")
    assert os.getxattr(m / "b", "user.k") == b"v"
    assert "user.k" in os.listxattr(m / "b")
    run(["umount" if IS_ROOT else "fusermount3", *([] if IS_ROOT else ["-u"]), str(m)])
    wait_gone(m)
    assert (d["u"] / "b").exists() and (d["l1"] / "b").read_text() == "top\n"


def test_helper_listings_stay_true_while_cached(layers: dict[str, Path]) -> None:
    """Directories are opened without asking the daemon and the kernel keeps their listings: a listing
    that takes many requests comes whole, and every change through the mount shows in the next one."""
    d = layers
    names = {f"n{i:05}-{'x' * (i % 50)}" for i in range(3000)}
    for n in names:
        (d["l2"] / "dir" / n).touch()
    helper_mount(d)
    m = d["m"] / "dir"
    assert set(os.listdir(m)) == names | {"sub"}
    assert set(os.listdir(m)) == names | {"sub"}
    gone, moved = f"n00007-{'x' * 7}", f"n00008-{'x' * 8}"
    (m / "new").touch()
    os.remove(m / gone)
    os.rename(m / moved, m / "renamed")
    expect = (names - {gone, moved}) | {"sub", "new", "renamed"}
    assert set(os.listdir(m)) == expect
    # A listing read in part and abandoned, then a change: the next listing is whole and current.
    with os.scandir(m) as it:
        next(it)
    (m / "later").touch()
    assert set(os.listdir(m)) == expect | {"later"}
    # A directory of the image replaced by a new one lists only what the new one holds (opaque).
    shutil.rmtree(m / "sub")
    os.mkdir(m / "sub")
    assert os.listdir(m / "sub") == []
    (m / "sub" / "g").touch()
    assert os.listdir(m / "sub") == ["g"]
    # A directory removed while open lists as empty.
    os.mkdir(d["m"] / "doomed")
    fd = os.open(d["m"] / "doomed", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(d["m"] / "doomed")
        assert os.listdir(fd) == []
    finally:
        os.close(fd)
    assert set(os.listdir(d["m"])) == {"a", "b", "big", "dir", "gone"}


def test_helper_entry_changes_keep_entered_directories_true(layers: dict[str, Path]) -> None:
    """Entered directories stay cached across changes that copy no directory up (a new file in a
    directory of the writable layer); changes that do copy one up (the first file in an image
    directory, a hard link to a file in another image directory) show in every directory above."""
    d = layers
    (d["l2"] / "dir" / "other").mkdir()
    (d["l2"] / "dir" / "other" / "o").write_text("other\n")
    (d["l2"] / "dir" / "sub" / "g").write_text("image\n")
    helper_mount(d)
    m = d["m"]
    # Every directory entered (and cached) while only in the image.
    assert sorted(os.listdir(m / "dir")) == ["other", "sub"]
    assert sorted(os.listdir(m / "dir" / "sub")) == ["f", "g"]
    assert os.listdir(m / "dir" / "other") == ["o"]
    (m / "dir" / "sub" / "new1").write_text("1")  # copies dir and dir/sub up
    (m / "dir" / "sub" / "new2").write_text("2")  # dir/sub is in the writable layer now
    os.remove(m / "dir" / "sub" / "f")  # a whiteout
    os.symlink("new1", m / "dir" / "sub" / "s")
    os.mknod(m / "dir" / "sub" / "fifo", 0o644 | stat.S_IFIFO)
    os.link(m / "dir" / "other" / "o", m / "dir" / "sub" / "o2")  # copies dir/other up
    with open(m / "dir" / "sub" / "g", "a") as f:  # copy-up of a file in a settled directory
        f.write("more\n")
    assert sorted(os.listdir(m / "dir" / "sub")) == ["fifo", "g", "new1", "new2", "o2", "s"]
    assert sorted(os.listdir(m / "dir")) == ["other", "sub"]
    assert os.listdir(m / "dir" / "other") == ["o"]
    assert (m / "dir" / "sub" / "g").read_text() == "image\nmore\n"
    assert os.readlink(m / "dir" / "sub" / "s") == "new1" and (m / "dir" / "sub" / "s").read_text() == "1"
    assert os.stat(m / "dir" / "sub" / "o2").st_nlink == 2 == os.stat(m / "dir" / "other" / "o").st_nlink
    (m / "dir" / "other" / "o").write_text("changed\n")
    assert (m / "dir" / "sub" / "o2").read_text() == "changed\n"
    # What the writable layer holds: every parent copied up, the whiteout, the link.
    assert (d["u"] / "dir" / "other" / "o").stat().st_ino == (d["u"] / "dir" / "sub" / "o2").stat().st_ino
    assert stat.S_ISCHR((d["u"] / "dir" / "sub" / "f").lstat().st_mode)
    # A walk after the changes (read ahead from the image layers) agrees with them.
    walked = {os.path.relpath(os.path.join(r, n), m) for r, ds, fs in os.walk(m) for n in ds + fs}
    assert {"dir/sub/new1", "dir/sub/o2", "dir/other/o"} <= walked and "dir/sub/f" not in walked


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


@pytest.mark.skipif(not IS_ROOT or not _kernel_at_least(6, 9), reason="FUSE passthrough needs root and Linux 6.9+")
@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "daemon-reads"])
def test_helper_passthrough_reads(layers: dict[str, Path], passthrough: bool) -> None:
    """As root the kernel reads an image file itself: the daemon reads none of its bytes."""
    d = layers
    helper_mount(d, *([] if passthrough else ["nopassthrough"]))
    pid = daemon_pid(str(d["m"]))
    before = bytes_read_by(pid)
    assert (d["m"] / "big").read_bytes() == (d["l2"] / "big").read_bytes()
    read = bytes_read_by(pid) - before
    size = (d["l2"] / "big").stat().st_size
    assert read < size // 4 if passthrough else read >= size
    # Writes too: an appended file is written by the kernel into the writable layer's copy.
    with open(d["m"] / "a", "ab") as f:
        f.write(b"x" * (1 << 20))
    assert (d["u"] / "a").stat().st_size == len("hello from the top\n") + (1 << 20)


@pytest.mark.skipif(not IS_ROOT or not _kernel_at_least(6, 9), reason="FUSE passthrough needs root and Linux 6.9+")
def test_helper_passthrough_write_while_image_file_is_read(layers: dict[str, Path]) -> None:
    """The kernel takes one backing file per inode: while an image file is open for reading through
    passthrough, opening it for writing (a copy-up) answers ETXTBSY, as for a running program; once
    closed it works (small files are read through the daemon). Without passthrough the write works while
    the file is read."""
    d = layers
    helper_mount(d)
    m = d["m"]
    content = (d["l2"] / "big").read_bytes()  # large enough for passthrough
    with open(m / "big", "rb") as reader:
        with pytest.raises(OSError) as e:
            open(m / "big", "ab").close()
        assert e.value.errno == errno.ETXTBSY
        with pytest.raises(OSError) as e:
            os.truncate(m / "big", 0)
        assert e.value.errno == errno.ETXTBSY
        # Metadata copy-ups go on; readers read the same bytes.
        os.chmod(m / "big", 0o600)
        with open(m / "big", "rb") as second:
            assert second.read() == reader.read() == content
        # Small files are read through the daemon: they may be written while read.
        with open(m / "a", "rb"), open(m / "a", "ab") as f:
            f.write(b"more\n")
    assert (d["u"] / "big").read_bytes() == content  # the chmod copied it up
    with open(m / "big", "ab") as f:
        f.write(b"more\n")
    assert (m / "big").read_bytes() == content + b"more\n"
    run(["umount", str(m)])
    wait_gone(m)
    helper_mount(d, "nopassthrough")
    with open(m / "big", "rb"):
        with open(m / "big", "ab") as f:
            f.write(b"more\n")
    assert (m / "big").read_bytes() == content + b"more\nmore\n"


def test_helper_read_only_without_upper(layers: dict[str, Path]) -> None:
    d = layers
    helper_mount(d, upper=False)
    assert (d["m"] / "dir" / "sub" / "f").read_text() == "deep\n"
    with pytest.raises(OSError) as e:
        (d["m"] / "new").write_text("x")
    assert e.value.errno == errno.EROFS
    h = (d["m"] / "big").read_bytes()
    assert h == (d["l2"] / "big").read_bytes()


def test_helper_failure_is_reported(tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "m").mkdir()
    r = subprocess.run([*HELPER, "-o", f"lowerdir={tmp_path / 'missing'}", str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "missing" in r.stderr
    assert not is_mounted(tmp_path / "m")


@pytest.mark.skipif(not IS_ROOT, reason="mount -t fuse.ovlcore-fuse needs root")
@pytest.mark.skipif(shutil.which("ovlcore-fuse") is None, reason="ovlcore-fuse is not on PATH")
def test_mount_t_form(layers: dict[str, Path]) -> None:
    d = layers
    r = subprocess.run(
        ["mount", "-t", "fuse.ovlcore-fuse", "ovlcore-fuse", str(d["m"]), "-o", "rw",
         "-o", f"lowerdir={d['l1']}:{d['l2']},upperdir={d['u']},workdir={d['w']}"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"},
    )
    if r.returncode != 0 and "not found" in r.stderr:
        pytest.skip(f"mount.fuse does not find ovlcore-fuse on its PATH: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert (d["m"] / "b").read_text() == "top\n"
    run(["umount", str(d["m"])])
    wait_gone(d["m"])


# --------------------------------------------------------------------------------------------------
# containers and images
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def ctr(any_store: ovlcore.Store) -> ovlcore.Container:
    require_fuse()
    return any_store.containers.create(import_image(any_store))


def test_container_fuse_mount(ctr: ovlcore.Container, tmp_path: Path) -> None:
    target = tmp_path / "m"
    with ctr.mount(target, driver="fuse") as p:
        assert ctr.mounted_at == str(p)
        assert (p / "etc" / "passwd").read_text().startswith("root:")
        # Root-owned image files show as uid 0, also in an unprivileged mount.
        assert os.stat(p / "etc" / "passwd").st_uid == 0
        assert os.stat(p / "data" / "seed.txt").st_uid == 1234
        (p / "etc" / "hostname").write_text("changed\n")
        (p / "newdir").mkdir()
        (p / "newdir" / "f").write_text("new\n")
        os.remove(p / "srv" / "notes.txt")
        os.rename(p / "srv" / "dir", p / "srv" / "dir2")
        # Writes behind the mount's back are refused while it is mounted.
        with pytest.raises(OSError) as e:
            ctr.fs.write_text("/etc/other", "x")
        assert e.value.errno == errno.EBUSY
        # The view of ContainerFS is the mount's.
        assert ctr.fs.read_text("/etc/hostname") == "changed\n"
    assert not is_mounted(target)
    assert ctr.mounted_at is None
    fs = ctr.fs
    assert fs.read_text("/etc/hostname") == "changed\n"
    assert fs.read_text("/srv/dir2/nested/two.txt") == "two\n"
    assert not fs.exists("/srv/dir") and not fs.exists("/srv/notes.txt")
    changes = {(c.kind, c.path) for c in ctr.diff()}
    assert ("A", "/newdir/f") in changes and ("D", "/srv/notes.txt") in changes and ("C", "/etc/hostname") in changes
    img = ctr.commit("after:fuse")
    assert img.fs.read_text("/newdir/f") == "new\n"
    ctr.fs.write_text("/etc/other", "x")  # writable again


def test_container_fuse_mount_root_as(ctr: ovlcore.Container, tmp_path: Path) -> None:
    """``root_as``: root's files show as that host user (whom a rootless runtime's user namespace maps
    to its root), and that user stored as root; other owners are shown and stored as they are."""
    me = (4321, 4321) if IS_ROOT else (os.geteuid(), os.getegid())
    with pytest.raises(ValueError, match="fuse driver"):
        with ctr.mount(tmp_path / "k", driver="kernel", root_as=me):
            pass
    with ctr.mount(tmp_path / "m", root_as=me) as p:
        st = os.stat(p / "etc" / "passwd")
        assert (st.st_uid, st.st_gid) == me
        assert os.stat(p / "data" / "seed.txt").st_uid == 1234
        (p / "new").write_text("x")
        os.chown(p / "data" / "seed.txt", *me)
        assert (os.stat(p / "new").st_uid, os.stat(p / "data" / "seed.txt").st_uid) == (me[0], me[0])
    fs = ctr.fs
    assert (fs.stat("/new").st_uid, fs.stat("/new").st_gid) == (0, 0)
    assert (fs.stat("/data/seed.txt").st_uid, fs.stat("/data/seed.txt").st_gid) == (0, 0)
    assert fs.stat("/etc/passwd").st_uid == 0


def test_container_mount_auto_and_errors(ctr: ovlcore.Container, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with ctr.mount(tmp_path / "x", driver="nfs"):
            pass
    with ctr.mount(tmp_path / "m") as p:
        assert (p / "bin" / "sh").exists()
    assert not is_mounted(tmp_path / "m")


def test_image_mount(any_store: ovlcore.Store) -> None:
    require_fuse()
    img = import_image(any_store)
    with img.mount() as p:
        assert compare_trees(fs_tree(img.fs), host_tree(p), times=True, names=("image.fs", "mount")) == []
        with pytest.raises(OSError) as e:
            (p / "etc" / "x").write_text("no")
        assert e.value.errno == errno.EROFS
    assert not p.exists()


def test_killed_daemon_then_mount_again(ctr: ovlcore.Container, tmp_path: Path) -> None:
    target = tmp_path / "m"
    p = ctr.mount_fuse(target)
    try:
        (p / "etc" / "hostname").write_text("before the kill\n")
        pids = [int(x) for x in subprocess.run(["pgrep", "-f", f"ovlcore.fusemount --daemon .*{target}"],
                                               capture_output=True, text=True).stdout.split()]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        for n in range(10**6):
            # A name never looked up, so no cached entry answers for the dead daemon.
            try:
                os.stat(target / f"probe{n}")
            except OSError as e:
                if e.errno == errno.ENOTCONN:
                    break
                # ENOENT while the daemon's death is noticed; a request in flight then is aborted.
                assert e.errno in (errno.ENOENT, errno.ECONNABORTED)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The writable layer is consistent, and mounting again works.
        with ctr.mount(target, driver="fuse") as again:
            assert (again / "etc" / "hostname").read_text() == "before the kill\n"
    finally:
        force_unmount(str(target))


def test_cli_mount_and_umount(any_store: ovlcore.Store, tmp_path: Path) -> None:
    require_fuse()
    ctr = any_store.containers.create(import_image(any_store), name="m")
    target = tmp_path / "mnt"
    try:
        r = run_cli("mount", "--driver", "fuse", "m", str(target), root=any_store.root)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().strip() == str(target)
        assert (target / "etc" / "passwd").exists()
        (target / "etc" / "cli").write_text("via cli\n")
        assert run_cli("umount", str(target)).returncode == 0
        wait_gone(target)
        r = run_cli("mount", "--driver", "fuse", "m", str(tmp_path / "two"), "--", "cat", "etc/cli", root=any_store.root)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"via cli\n"
        assert not is_mounted(tmp_path / "two")
    finally:
        force_unmount(str(target))
    assert ctr.fs.read_text("/etc/cli") == "via cli\n"


# --------------------------------------------------------------------------------------------------
# real programs on the mount
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def mnt(ctr: ovlcore.Container, tmp_path: Path) -> Iterator[Path]:
    with ctr.mount(tmp_path / "m", driver="fuse") as p:
        yield p


def test_tar_find_cp(mnt: Path, tmp_path: Path) -> None:
    found = run(["find", ".", "-xdev"], cwd=mnt).stdout.split()
    assert "./srv/dir/nested/two.txt" in found
    run(["tar", "-cf", str(tmp_path / "t.tar"), "."], cwd=mnt)
    names = run(["tar", "-tf", str(tmp_path / "t.tar")]).stdout.split()
    assert "./etc/passwd" in names
    run(["cp", "-a", str(mnt / "srv"), str(tmp_path / "out")])
    # Unprivileged, files show as root's (uid 0), so the kernel refuses the caller to set their ACLs:
    # cp -a into the mount is for root; the user copies modes and times.
    preserve = ["-a"] if IS_ROOT else ["-r", "--preserve=timestamps,links"]
    run(["cp", *preserve, str(tmp_path / "out"), str(mnt / "srv-copy")])
    assert (mnt / "srv-copy" / "dir" / "nested" / "two.txt").read_text() == "two\n"
    assert compare_trees(host_tree(mnt / "srv"), host_tree(mnt / "srv-copy"), times=True) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git(mnt: Path) -> None:
    repo = mnt / "srv" / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(mnt / "tmp")}
    # Unprivileged, the files show as root's: git must be told the repository is safe.
    env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"] = "1", "safe.directory", "*"
    run(["git", "init", "-q"], cwd=repo, env=env)
    (repo / "f.txt").write_text("content\n")
    run(["git", "add", "f.txt"], cwd=repo, env=env)
    run(["git", "commit", "-q", "-m", "first"], cwd=repo, env=env)
    (repo / "f.txt").write_text("changed\n")
    run(["git", "commit", "-q", "-am", "second"], cwd=repo, env=env)
    assert run(["git", "log", "--oneline"], cwd=repo, env=env).stdout.count("\n") == 2
    run(["git", "fsck", "--strict"], cwd=repo, env=env)


def test_compileall(mnt: Path) -> None:
    pkg = mnt / "srv" / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text("def f():\n    return 2\n")
    run([sys.executable, "-m", "compileall", "-q", str(pkg)])
    assert len(list((pkg / "__pycache__").iterdir())) == 2
    r = run([sys.executable, "-c", "import pkg.mod; print(pkg.mod.f())"], cwd=mnt / "srv")
    assert r.stdout == "2\n"


def test_sqlite_wal(mnt: Path) -> None:
    db = mnt / "srv" / "db.sqlite"
    con = sqlite3.connect(db)
    try:
        assert con.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
        con.execute("create table t (x integer)")
        with con:
            con.executemany("insert into t values (?)", [(i,) for i in range(1000)])
        other = sqlite3.connect(db)
        assert other.execute("select count(*) from t").fetchone()[0] == 1000
        other.close()
        con.execute("pragma wal_checkpoint(truncate)")
    finally:
        con.close()
    assert sqlite3.connect(db).execute("pragma integrity_check").fetchone()[0] == "ok"


def test_mmap_append_locks_rename_over_open(mnt: Path) -> None:
    p = mnt / "etc" / "passwd"  # an image file: the mmap write goes to its copy
    with open(p, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        with mmap.mmap(f.fileno(), size) as mm:
            mm[0:4] = b"ROOT"
            mm.flush()
    assert p.read_bytes()[:4] == b"ROOT"
    log = mnt / "srv" / "log"
    with open(log, "a") as a, open(log, "a") as b:
        a.write("1\n")
        a.flush()
        b.write("2\n")
        b.flush()
        a.write("3\n")
    assert log.read_text() == "1\n2\n3\n"
    with open(log) as f1, open(log) as f2:
        fcntl.flock(f1, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError):
            fcntl.flock(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f1, fcntl.LOCK_UN)
        fcntl.flock(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(log, "r+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(f, fcntl.LOCK_UN)
    # rename over an open file: the open one keeps its content
    (mnt / "srv" / "new").write_text("new\n")
    with open(mnt / "srv" / "notes.txt") as old:
        os.rename(mnt / "srv" / "new", mnt / "srv" / "notes.txt")
        assert old.read() == "not a png\n"
    assert (mnt / "srv" / "notes.txt").read_text() == "new\n"


def test_partial_writes_of_write_only_and_sparse_files(mnt: Path) -> None:
    """The kernel's writeback cache (unprivileged mounts) writes whole pages and so reads what it writes:
    a write-only file, writes into the middle of a page, a hole and a truncate all come out exact."""
    p = mnt / "srv" / "wo"
    p.write_bytes(b"a" * 10_000)
    os.chmod(p, 0o200)
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"MID", 5000)
        os.pwrite(fd, b"END", 20_000)  # a hole from 10,000 on
    finally:
        os.close(fd)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+")
    finally:
        os.close(fd)
    os.chmod(p, 0o600)
    want = bytearray(b"a" * 10_000 + b"\0" * 10_000 + b"END+")
    want[5000:5003] = b"MID"
    assert p.read_bytes() == bytes(want)
    os.truncate(p, 4000)
    with open(p, "r+b") as f:
        f.seek(4090)
        f.write(b"Z")
    assert p.read_bytes() == b"a" * 4000 + b"\0" * 90 + b"Z"
    assert os.stat(p).st_size == 4091


@pytest.mark.skipif(not IS_ROOT, reason="kernel overlay mounts need root")
def test_upper_stays_a_kernel_layer(store: ovlcore.Store, tmp_path: Path) -> None:
    """What the FUSE mount leaves is what the kernel shows when it mounts that writable layer."""
    from support.kernel import mount_refused, overlay

    require_fuse()
    if mount_refused():
        pytest.skip(mount_refused() or "")
    ctr = store.containers.create(import_image(store))
    with ctr.mount(tmp_path / "m", driver="fuse") as p:
        shutil.rmtree(p / "srv" / "dir")
        (p / "srv" / "dir").mkdir()  # opaque, over a whiteout
        (p / "srv" / "dir" / "fresh").write_text("f\n")
        os.rename(p / "data", p / "data2")
        os.remove(p / "etc" / "hostname")
        os.symlink("/etc/passwd", p / "etc" / "hostname")
        seen = host_tree(p)
    lowers = ctr.image.stack_paths()
    work = tmp_path / "w"
    work.mkdir()
    upper = tmp_path / "u"
    subprocess.run(["cp", "-a", str(ctr.upper), str(upper)], check=True)
    with overlay(lowers, tmp_path / "k", upper=upper, work=work) as k:
        assert compare_trees(seen, host_tree(k), times=True, names=("fuse", "kernel")) == []
    # No directory of the layer carries both an opaque xattr and a .wh..wh..opq entry.
    assert not [n for _, _, files in os.walk(ctr.upper) for n in files if n.startswith(".wh.")]


def test_unix_socket_on_the_mount(mnt: Path) -> None:
    import socket

    path = str(mnt / "srv" / "sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with socket.socket(socket.AF_UNIX) as cl:
            cl.connect(path)
            conn, _ = srv.accept()
            with conn:
                cl.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_volumes_are_routed_by_the_view(any_store: ovlcore.Store, tmp_path: Path) -> None:
    require_fuse()
    c = any_store.containers.create(import_image(any_store), mounts=[ovlcore.Mount("/data", "vol")])
    with c.mount(tmp_path / "m", driver="fuse") as p:
        assert (p / "data" / "seed.txt").read_text() == "seed from the image\n"  # filled from the image
        (p / "data" / "in-volume").write_text("v\n")
    assert (any_store.volumes.get("vol").mountpoint / "in-volume").read_text() == "v\n"
    assert c.fs.read_text("/data/in-volume") == "v\n"
    assert not (c.upper / "data" / "in-volume").exists()
