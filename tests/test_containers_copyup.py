"""Writes through ``container.fs``: copy-up, whiteouts, opaque directories, rmdir, rename of image
directories, read-after-write, errors. Every test runs with both metadata conventions (``root`` and
``rootless``) and checks at the end that no image layer changed."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterator

import pytest

import ovlcore
from support.diffs import assert_parents_first, diff_pairs, expected_diff
from support.images import BIG, SampleImages
from support.layout import is_opaque, is_whiteout, opaque_xattr, upper_markers
from support.tars import FIXED_MTIME
from support.trees import fs_tree, snapshot


@pytest.fixture
def c(sample: SampleImages) -> Iterator[ovlcore.Container]:
    """A container of the child image; at teardown, the image layers must be exactly as before."""
    before = {layer.chain_id: snapshot(layer.path) for layer in sample.child.layers}
    container = sample.store.containers.create(sample.child)
    yield container
    after = {layer.chain_id: snapshot(layer.path) for layer in sample.child.layers}
    assert after == before, "an image layer changed"


def priv(c: ovlcore.Container) -> str:
    return ovlcore.Store(c.dir.parents[1]).privilege


def up(c: ovlcore.Container, path: str) -> str:
    return str(c.upper) + path


def check_diff(sample: SampleImages, c: ovlcore.Container) -> None:
    """c.diff() equals the diff computed from the image's and the container's merged trees."""
    got = diff_pairs(c)
    assert_parents_first(got)
    want = expected_diff(fs_tree(sample.child.fs, xattrs=False), fs_tree(c.fs, xattrs=False))
    assert sorted(got, key=lambda kp: kp[1]) == want


# --------------------------------------------------------------------------------------------------
# reading never copies up
# --------------------------------------------------------------------------------------------------


def test_reading_never_copies_up(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    assert fs.read_bytes("/data/big.bin") == BIG
    assert fs.read_text("/etc/motd") == "welcome to the child image\n"
    with fs.open("/etc/passwd") as f:
        assert f.readline().startswith("root:")
    with fs.open("/usr/lib/libx.so", "rb", buffering=0) as f:
        assert f.read(5) == b"\0libx"
    assert fs.read_bytes("/lib/libx.so") == b"\0libx" * 100  # through the image's symlink
    assert fs.stat("/home/user/.profile").st_uid == 1000
    assert fs.lstat("/lib").st_mode & stat.S_IFMT(0o170000) == stat.S_IFLNK
    assert fs.readlink("/lib") == "usr/lib"
    assert fs.exists("/etc") and fs.is_dir("/etc") and fs.is_file("/etc/motd") and fs.is_symlink("/lib")
    assert fs.listdir("/usr") == ["bin", "lib", "share"]
    assert sorted(e.name for e in fs.scandir("/etc")) == fs.listdir("/etc")
    assert [e.stat().st_size for e in fs.scandir("/data")] == [len(BIG)]
    assert sum(len(files) for _, _, files in fs.walk("/")) > 10
    assert fs.getxattr("/home/user/.profile", "user.note") == b"hello"
    assert fs.listxattr("/home/user/.profile") == ["user.note", "user.other"]
    assert not fs.exists("/etc/hostname")
    with pytest.raises(FileNotFoundError):
        fs.read_bytes("/etc/hostname")
    assert os.listdir(c.upper) == []
    assert c.diff() == []
    assert c.size().rw == 0


# --------------------------------------------------------------------------------------------------
# copy-up: what triggers it, what it keeps
# --------------------------------------------------------------------------------------------------

PROFILE = "/home/user/.profile"
PROFILE_DATA = b"export PS1='$ '\n"


def _open_rw_nothing(fs: ovlcore.ContainerFS) -> None:
    with fs.open(PROFILE, "r+b"):
        pass


def _open_append_nothing(fs: ovlcore.ContainerFS) -> None:
    with fs.open(PROFILE, "ab"):
        pass


def _open_w_text(fs: ovlcore.ContainerFS) -> None:
    with fs.open(PROFILE, "w", encoding="utf-8") as f:
        f.write("replaced\n")


def _write_middle(fs: ovlcore.ContainerFS) -> None:
    with fs.open(PROFILE, "r+b") as f:
        f.seek(2)
        f.write(b"XX")


def _append(fs: ovlcore.ContainerFS) -> None:
    with fs.open(PROFILE, "a") as f:
        f.write("more\n")


# name -> (operation, expected content, what changes in stat, xattrs afterwards)
COPY_UP_OPS = {
    "open_rw_nothing": (_open_rw_nothing, PROFILE_DATA, set()),
    "open_append_nothing": (_open_append_nothing, PROFILE_DATA, set()),
    "open_w": (_open_w_text, b"replaced\n", {"mtime", "size"}),
    "write_middle": (_write_middle, b"exXXrt PS1='$ '\n", {"mtime"}),
    "append": (_append, PROFILE_DATA + b"more\n", {"mtime", "size"}),
    "write_bytes": (lambda fs: fs.write_bytes(PROFILE, b"new"), b"new", {"mtime", "size"}),
    "chmod": (lambda fs: fs.chmod(PROFILE, 0o604), PROFILE_DATA, {"mode"}),
    "chown": (lambda fs: fs.chown(PROFILE, 1234, 5678), PROFILE_DATA, {"uid", "gid"}),
    "chown_keep": (lambda fs: fs.chown(PROFILE, -1, -1), PROFILE_DATA, set()),
    "utime": (lambda fs: fs.utime(PROFILE, ns=((FIXED_MTIME + 50) * 1_000_000_000, FIXED_MTIME * 1_000_000_000 + 77)), PROFILE_DATA, {"mtime"}),
    "setxattr": (lambda fs: fs.setxattr(PROFILE, "user.added", b"v"), PROFILE_DATA, {"xattr"}),
    "removexattr": (lambda fs: fs.removexattr(PROFILE, "user.other"), PROFILE_DATA, {"xattr"}),
    "truncate_grow": (lambda fs: fs.truncate(PROFILE, 40), PROFILE_DATA + b"\0" * (40 - len(PROFILE_DATA)), {"mtime", "size"}),
    "truncate_shrink": (lambda fs: fs.truncate(PROFILE, 6), PROFILE_DATA[:6], {"mtime", "size"}),
    "truncate_zero": (lambda fs: fs.truncate(PROFILE, 0), b"", {"mtime", "size"}),
    "truncate_same": (lambda fs: fs.truncate(PROFILE, len(PROFILE_DATA)), PROFILE_DATA, {"mtime"}),
    "link": (lambda fs: fs.link(PROFILE, "/home/user/.profile.lnk"), PROFILE_DATA, {"nlink"}),
}


@pytest.mark.parametrize("op", sorted(COPY_UP_OPS))
def test_copy_up(sample: SampleImages, c: ovlcore.Container, op: str) -> None:
    """The first write, open for writing (even writing nothing), chmod, chown, utime, setxattr,
    truncate or link copies the file up: data, mode, owner, times and xattrs come along, and only what
    the operation changes differs."""
    fs = c.fs
    before = fs.stat(PROFILE)
    xattrs_before = {n: fs.getxattr(PROFILE, n) for n in fs.listxattr(PROFILE)}
    assert not os.path.lexists(up(c, PROFILE))
    fn, content, changes = COPY_UP_OPS[op]
    fn(fs)
    if op == "utime":  # before any read: reading may move atime (relatime)
        assert fs.stat(PROFILE).st_atime_ns == (FIXED_MTIME + 50) * 1_000_000_000
    # the file now lives in the writable layer, as a regular file
    raw = os.lstat(up(c, PROFILE))
    assert stat.S_ISREG(raw.st_mode)
    assert fs.read_bytes(PROFILE) == content
    after = fs.stat(PROFILE)
    assert stat.S_ISREG(after.st_mode)
    if "mode" in changes:
        assert stat.S_IMODE(after.st_mode) == 0o604
    else:
        assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode) == 0o640
    if "uid" in changes:
        assert (after.st_uid, after.st_gid) == (1234, 5678)
    else:
        assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid) == (1000, 1000)
    if op == "utime":
        assert after.st_mtime_ns == FIXED_MTIME * 1_000_000_000 + 77
    elif "mtime" in changes:
        assert after.st_mtime_ns > before.st_mtime_ns
    else:
        assert after.st_mtime_ns == before.st_mtime_ns == FIXED_MTIME * 1_000_000_000
    assert after.st_size == len(content)
    xattrs_after = {n: fs.getxattr(PROFILE, n) for n in fs.listxattr(PROFILE)}
    if op == "setxattr":
        assert xattrs_after == {**xattrs_before, "user.added": b"v"}
    elif op == "removexattr":
        assert xattrs_after == {"user.note": b"hello"}
    else:
        assert xattrs_after == xattrs_before == {"user.note": b"hello", "user.other": b"x"}
    if op == "link":
        assert os.lstat(up(c, "/home/user/.profile.lnk")).st_ino == raw.st_ino
        assert fs.stat("/home/user/.profile.lnk").st_nlink == 2
        fs.write_bytes("/home/user/.profile.lnk", b"through the link")
        assert fs.read_bytes(PROFILE) == b"through the link"
    # the parents were copied up with the image's mode and owner
    for d in ("/home", "/home/user"):
        st = os.lstat(up(c, d))
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(fs.stat(d).st_mode) == stat.S_IMODE(sample.child.fs.stat(d).st_mode)
        assert (fs.stat(d).st_uid, fs.stat(d).st_gid) == (sample.child.fs.stat(d).st_uid, sample.child.fs.stat(d).st_gid)
        assert not is_opaque(up(c, d), priv(c))
    if priv(c) == "root":
        # the root convention stores the real owner and mode
        assert (raw.st_uid, raw.st_gid) == (after.st_uid, after.st_gid)
        assert stat.S_IMODE(raw.st_mode) == stat.S_IMODE(after.st_mode)
    # the merged directory still shows everything else
    assert fs.listdir("/home/user") == sorted([".profile"] + ([".profile.lnk"] if op == "link" else []))
    check_diff(sample, c)


def test_copy_up_without_change_is_not_in_diff(sample: SampleImages, c: ovlcore.Container) -> None:
    _open_rw_nothing(c.fs)
    c.fs.chown(PROFILE, -1, -1)
    c.fs.chmod("/etc/motd", 0o644)  # same mode
    assert os.path.exists(up(c, PROFILE)) and os.path.exists(up(c, "/etc/motd"))
    assert c.diff() == []


def test_copy_up_keeps_parent_directory_metadata(sample: SampleImages, c: ovlcore.Container) -> None:
    """Copy-up creates the missing parents with the lower metadata, times included; the kernel also
    puts the parent's times back after linking the copy in (ovl_set_timestamps), so copying a file up
    changes nothing visible about its directories."""
    image = fs_tree(sample.child.fs)
    c.fs.chmod("/usr/share/doc/c.txt", 0o600)
    c.fs.setxattr("/app/data/x.bin", "user.k", b"1")
    after = fs_tree(c.fs)
    for d in ("/usr", "/usr/share", "/usr/share/doc", "/app", "/app/data"):
        assert os.path.isdir(up(c, d))
        assert after[d].core(times=True) == image[d].core(times=True), d


def test_rename_keeps_directory_times(sample: SampleImages, c: ovlcore.Container) -> None:
    """rename(2) does not change the moved directory's own metadata: renaming an image directory
    (which ovlcore does by copying it up whole) must not either, nor the times of the directories
    inside it."""
    before = fs_tree(c.fs, "/usr")
    c.fs.rename("/usr", "/usr2")
    after = {p.replace("/usr2", "/usr", 1): n for p, n in fs_tree(c.fs, "/usr2").items()}
    assert after.keys() == before.keys()
    for p in before:
        assert after[p].core(times=True) == before[p].core(times=True), p


def test_copy_up_keeps_setuid_and_special_files(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.utime("/etc/suid", ns=(FIXED_MTIME * 10**9, FIXED_MTIME * 10**9))
    st = fs.stat("/etc/suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert fs.read_bytes("/etc/suid") == b"\x7fELF-ish"
    # a device node copied up stays a device with its numbers
    fs.utime("/dev/null", ns=(FIXED_MTIME * 10**9, (FIXED_MTIME + 1) * 10**9))
    st = fs.lstat("/dev/null")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert os.path.lexists(up(c, "/dev/null"))
    # a symlink copied up (metadata change on the link itself) keeps its target
    fs.utime("/lib", ns=(FIXED_MTIME * 10**9, (FIXED_MTIME + 3) * 10**9), follow_symlinks=False)
    assert fs.readlink("/lib") == "usr/lib"
    assert os.path.islink(up(c, "/lib"))
    assert fs.lstat("/lib").st_mtime_ns == (FIXED_MTIME + 3) * 10**9
    assert fs.read_bytes("/lib/libx.so") == b"\0libx" * 100
    check_diff(sample, c)


def test_copy_up_breaks_image_hard_links(sample: SampleImages, c: ovlcore.Container) -> None:
    """Without the index feature, copying up one name of a multiply-linked image file breaks the link
    (as the kernel does): the other name keeps the image's content."""
    assert c.fs.stat("/usr/bin/a").st_ino == c.fs.stat("/usr/bin/b").st_ino
    c.fs.write_bytes("/usr/bin/a", b"changed a")
    assert c.fs.read_bytes("/usr/bin/b") == b"hard linked\n"
    assert c.fs.read_bytes("/usr/bin/a") == b"changed a"


def test_copy_up_of_directory_keeps_it_merged(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.chmod("/etc", 0o700)
    fs.chown("/usr/share/doc", 7, 8)
    assert os.path.isdir(up(c, "/etc")) and os.listdir(up(c, "/etc")) == []
    assert not is_opaque(up(c, "/etc"), priv(c))
    assert not is_opaque(up(c, "/usr/share/doc"), priv(c))
    assert fs.listdir("/etc") == sample.child.fs.listdir("/etc")
    assert fs.listdir("/usr/share/doc") == ["c.txt"]
    assert stat.S_IMODE(fs.stat("/etc").st_mode) == 0o700
    assert (fs.stat("/usr/share/doc").st_uid, fs.stat("/usr/share/doc").st_gid) == (7, 8)
    check_diff(sample, c)


# --------------------------------------------------------------------------------------------------
# whiteouts and opaque directories
# --------------------------------------------------------------------------------------------------


def test_delete_image_file_leaves_whiteout(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.remove("/etc/motd")  # exists in two layers: one whiteout hides both
    assert is_whiteout(up(c, "/etc/motd"))
    assert not fs.exists("/etc/motd")
    assert "motd" not in fs.listdir("/etc")
    with pytest.raises(FileNotFoundError) as ei:
        fs.stat("/etc/motd")
    assert ei.value.filename == "/etc/motd"
    # unlink alias; a symlink of the image is removed, not its target
    fs.unlink("/lib")
    assert is_whiteout(up(c, "/lib"))
    assert fs.exists("/usr/lib/libx.so")
    # a copied-up file removed: a whiteout replaces the copy
    fs.chmod("/etc/group", 0o600)
    fs.remove("/etc/group")
    assert is_whiteout(up(c, "/etc/group"))
    # a file only in the writable layer: simply gone, no whiteout
    fs.write_bytes("/etc/fresh", b"x")
    fs.remove("/etc/fresh")
    assert not os.path.lexists(up(c, "/etc/fresh"))
    check_diff(sample, c)
    # The whiteouts share one inode, kept in the scratch directory: not a leftover for check().
    assert os.lstat(up(c, "/etc/motd")).st_ino == os.lstat(up(c, "/lib")).st_ino
    assert sample.store.check().problems == []


def test_rmtree_image_dir_is_one_whiteout(sample: SampleImages, c: ovlcore.Container) -> None:
    c.fs.write_bytes("/usr/share/doc/new.txt", b"n")
    c.fs.chmod("/usr/lib/libx.so", 0o700)
    c.fs.rmtree("/usr")
    assert is_whiteout(up(c, "/usr"))
    assert upper_markers(c.upper, priv(c)) == {"/usr": "whiteout"}
    assert not c.fs.exists("/usr")
    assert not c.fs.exists("/lib/libx.so")  # /lib -> usr/lib dangles now
    assert c.fs.is_symlink("/lib")
    check_diff(sample, c)


def test_mkdir_where_image_dir_was_deleted_is_opaque(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.rmtree("/usr/share/doc")
    fs.mkdir("/usr/share/doc", 0o755)
    p = up(c, "/usr/share/doc")
    assert stat.S_ISDIR(os.lstat(p).st_mode)
    assert os.getxattr(p, opaque_xattr(priv(c))) == b"y"
    other = "user.overlay.opaque" if priv(c) == "root" else "trusted.overlay.opaque"
    with pytest.raises(OSError):
        os.getxattr(p, other)
    assert fs.listdir("/usr/share/doc") == []
    fs.write_bytes("/usr/share/doc/c.txt", b"again")
    assert fs.listdir("/usr/share/doc") == ["c.txt"]
    assert fs.read_bytes("/usr/share/doc/c.txt") == b"again"
    # the opaque marker is internal: not visible through the view
    assert not any("overlay" in x for x in fs.listxattr("/usr/share/doc"))
    # a directory made where nothing was is a plain directory
    fs.mkdir("/brand-new")
    assert not is_opaque(up(c, "/brand-new"), priv(c))
    # mkdir parents=True over a deleted tree
    fs.rmtree("/app")
    fs.mkdir("/app/data/deeper", parents=True)
    assert fs.listdir("/app") == ["data"]
    assert fs.listdir("/app/data") == ["deeper"]
    assert is_opaque(up(c, "/app"), priv(c))
    check_diff(sample, c)


def test_new_entries_where_a_whiteout_was(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    for p in ("/etc/motd", "/etc/passwd", "/etc/group", "/opt/tool", "/bin/sh"):
        fs.remove(p)
    fs.write_text("/etc/motd", "new motd\n")
    fs.symlink("motd", "/etc/passwd")
    fs.mkfifo("/etc/group")
    fs.write_bytes("/app/x", b"x")
    fs.link("/app/x", "/opt/tool")
    fs.mkdir("/bin/sh")
    assert stat.S_ISREG(os.lstat(up(c, "/etc/motd")).st_mode)
    assert os.path.islink(up(c, "/etc/passwd"))
    assert stat.S_ISFIFO(os.lstat(up(c, "/etc/group")).st_mode) or priv(c) == "rootless"
    assert stat.S_ISFIFO(fs.lstat("/etc/group").st_mode)
    assert stat.S_ISREG(os.lstat(up(c, "/opt/tool")).st_mode)
    assert stat.S_ISDIR(os.lstat(up(c, "/bin/sh")).st_mode)
    assert fs.read_text("/etc/motd") == "new motd\n"
    assert fs.read_text("/etc/passwd") == "new motd\n"
    assert fs.read_bytes("/opt/tool") == b"x"
    assert fs.listdir("/bin/sh") == []
    # open(..., "x") creates over a whiteout too
    fs.remove("/etc/secret")
    with fs.open("/etc/secret", "x") as f:
        f.write("exclusive")
    assert fs.read_text("/etc/secret") == "exclusive"
    with pytest.raises(FileExistsError):
        fs.open("/etc/secret", "x")
    assert upper_markers(c.upper, priv(c)).get("/etc/secret") == "file"
    check_diff(sample, c)


def test_rmdir_of_merged_directory(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.rmdir("/var/log")  # an empty image directory
    assert is_whiteout(up(c, "/var/log"))
    # a merged directory emptied through the view
    with pytest.raises(OSError) as ei:
        fs.rmdir("/usr/bin")
    assert ei.value.errno == errno.ENOTEMPTY
    assert ei.value.filename == "/usr/bin"
    fs.remove("/usr/bin/a")
    fs.write_bytes("/usr/bin/tmp", b"t")
    fs.remove("/usr/bin/b")
    with pytest.raises(OSError) as ei:
        fs.rmdir("/usr/bin")
    assert ei.value.errno == errno.ENOTEMPTY
    fs.remove("/usr/bin/tmp")
    assert fs.listdir("/usr/bin") == []
    fs.rmdir("/usr/bin")
    assert not fs.exists("/usr/bin")
    assert is_whiteout(up(c, "/usr/bin"))
    # an image directory made opaque in layer 2: only c.txt is visible, so removing it empties it
    fs.remove("/usr/share/doc/c.txt")
    fs.rmdir("/usr/share/doc")
    assert is_whiteout(up(c, "/usr/share/doc"))
    with pytest.raises(NotADirectoryError):
        fs.rmdir("/etc/passwd")
    with pytest.raises(FileNotFoundError):
        fs.rmdir("/var/log")
    with pytest.raises(NotADirectoryError):
        fs.rmdir("/lib")  # a symlink to a directory
    # and a directory can be made again where one was removed
    fs.mkdir("/usr/bin")
    assert fs.listdir("/usr/bin") == []
    check_diff(sample, c)


# --------------------------------------------------------------------------------------------------
# rename
# --------------------------------------------------------------------------------------------------


def moved(tree: dict, old: str, new: str) -> dict:  # type: ignore[type-arg]
    """A subtree description renamed from ``new`` back to ``old``, without directory mtimes (checked on
    their own by test_rename_keeps_directory_times)."""
    out = {}
    for p, n in tree.items():
        if n.kind == "dir":
            n = dataclasses.replace(n, mtime_ns=0)
        out[p.replace(new, old, 1) if new else p] = n
    return out


def _no_whiteouts_below(c: ovlcore.Container, top: str) -> None:
    base = up(c, top)
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            assert not is_whiteout(os.path.join(dirpath, n)), os.path.join(dirpath, n)


def test_rename_image_directory(sample: SampleImages, c: ovlcore.Container) -> None:
    """Renaming a directory that exists in the image works (the kernel says EXDEV): the new name holds
    exactly what the old one showed, the old name is a whiteout, and the moved tree carries no
    whiteouts (they would be visible to the kernel in a directory that no longer merges)."""
    fs = c.fs
    fs.write_text("/etc/motd", "changed\n")
    fs.remove("/etc/passwd")
    fs.write_text("/etc/new", "new\n")
    fs.mkdir("/etc/sub")
    fs.write_text("/etc/sub/f", "f\n")
    before = moved(fs_tree(fs, "/etc"), "", "")
    fs.rename("/etc", "/etc2")
    assert moved(fs_tree(fs, "/etc2"), "/etc", "/etc2") == before
    assert not fs.exists("/etc")
    assert is_whiteout(up(c, "/etc"))
    _no_whiteouts_below(c, "/etc2")
    # a whole image tree with subdirectories
    tree = moved(fs_tree(fs, "/usr"), "", "")
    fs.rename("/usr", "/usr2")
    assert moved(fs_tree(fs, "/usr2"), "/usr", "/usr2") == tree
    assert fs.read_bytes("/usr2/share/doc/c.txt") == b"doc c (child)\n"
    assert not fs.exists("/usr2/share/doc/a.txt")  # still hidden (opaque in layer 2)
    assert not fs.exists("/lib/libx.so")
    _no_whiteouts_below(c, "/usr2")
    # and back
    fs.rename("/usr2", "/usr")
    assert moved(fs_tree(fs, "/usr"), "", "") == tree
    assert not fs.lexists("/usr2")
    assert not os.path.lexists(up(c, "/usr2"))
    assert fs.read_bytes("/lib/libx.so") == b"\0libx" * 100
    check_diff(sample, c)


def test_rename_directory_onto_deleted_and_empty_image_dirs(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    app = moved(fs_tree(fs, "/app"), "", "")
    fs.rmtree("/opt")
    fs.rename("/app", "/opt")  # where an image directory was deleted
    assert moved(fs_tree(fs, "/opt"), "/app", "/opt") == app
    assert not fs.exists("/opt/tool")
    assert is_opaque(up(c, "/opt"), priv(c))
    assert is_whiteout(up(c, "/app"))
    data = moved(fs_tree(fs, "/opt/data"), "", "")
    fs.rename("/opt/data", "/var/log")  # over an empty image directory
    assert moved(fs_tree(fs, "/var/log"), "/opt/data", "/var/log") == data
    assert is_opaque(up(c, "/var/log"), priv(c))
    assert not fs.exists("/opt/data")
    # a directory made in the container moves without leaving anything behind
    fs.mkdir("/nd")
    fs.write_bytes("/nd/f", b"f")
    fs.rename("/nd", "/nd2")
    assert not os.path.lexists(up(c, "/nd"))
    assert fs.read_bytes("/nd2/f") == b"f"
    # ...and over a deleted image directory it becomes opaque
    fs.rmtree("/bin")
    fs.rename("/nd2", "/bin")
    assert fs.listdir("/bin") == ["f"]
    assert is_opaque(up(c, "/bin"), priv(c))
    assert not os.path.lexists(up(c, "/nd2"))
    check_diff(sample, c)


def test_rename_image_file(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    before = fs.stat("/etc/secret")
    fs.rename("/etc/secret", "/etc/secret.bak")
    assert is_whiteout(up(c, "/etc/secret"))
    st = fs.stat("/etc/secret.bak")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size) == (
        stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid, before.st_mtime_ns, before.st_size)
    assert fs.read_bytes("/etc/secret.bak") == b"s3cr3t\n"
    # over an existing image file: replaced
    fs.rename("/etc/secret.bak", "/etc/motd")
    assert fs.read_bytes("/etc/motd") == b"s3cr3t\n"
    assert not fs.exists("/etc/secret.bak")
    # into another directory, and over a whiteout
    fs.remove("/opt/tool")
    fs.rename("/bin/sh", "/opt/tool")
    assert fs.read_bytes("/opt/tool") == b"#!/fake/shell\n" * 20
    assert is_whiteout(up(c, "/bin/sh"))
    check_diff(sample, c)


@pytest.mark.parametrize(
    "src,dst,err",
    [
        ("/etc", "/usr", errno.ENOTEMPTY),
        ("/etc", "/bin/sh", errno.ENOTDIR),
        ("/etc/motd", "/var/log", errno.EISDIR),
        ("/etc", "/etc/sub", errno.EINVAL),
        ("/nope", "/x", errno.ENOENT),
        ("/etc/hostname", "/x", errno.ENOENT),
        ("/etc/motd", "/nope/x", errno.ENOENT),
        # found by the kernel differential test: Linux's rules, whatever the file system
        ("/app/data/x.bin", "/app/data", errno.ENOTEMPTY),  # the target is an ancestor of the source
        ("/app/main.py", "/app", errno.ENOTEMPTY),
        ("/nope", "/etc/passwd/x", errno.ENOTDIR),  # both parents are resolved before the source
    ],
)
def test_rename_errors(sample: SampleImages, c: ovlcore.Container, src: str, dst: str, err: int) -> None:
    with pytest.raises(OSError) as ei:
        c.fs.rename(src, dst)
    assert ei.value.errno == err
    assert ei.value.filename in (src, dst)
    assert c.diff() == []


# --------------------------------------------------------------------------------------------------
# read-after-write
# --------------------------------------------------------------------------------------------------


def test_read_after_write(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    with fs.open("/etc/motd", "r+b") as f:
        f.write(b"WELCOME")
        f.flush()
        assert fs.read_bytes("/etc/motd") == b"WELCOME to the child image\n"
        assert fs.stat("/etc/motd").st_size == 27
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
        f.flush()
        assert fs.read_bytes("/etc/motd").endswith(b"image\ntail")
    with fs.open("/data/big.bin", "ab", buffering=0) as f:
        f.write(b"!")
        assert fs.stat("/data/big.bin").st_size == len(BIG) + 1
        assert fs.read_bytes("/data/big.bin") == BIG + b"!"
    with fs.open("/app/main.py", "w+") as f:
        f.write("x = 1\n")
        f.flush()
        f.seek(0)
        assert f.read() == "x = 1\n"
        assert fs.read_text("/app/main.py") == "x = 1\n"
    fs.truncate("/app/main.py", 2)
    assert fs.read_text("/app/main.py") == "x "
    fs.write_text("/home/user/ünïcode.txt", "grüße\n", encoding="utf-8")
    assert fs.read_text("/home/user/ünïcode.txt", encoding="utf-8") == "grüße\n"
    assert fs.read_bytes("/home/user/ünïcode.txt") == "grüße\n".encode()
    for i in range(20):
        fs.write_bytes("/tmp/counter", str(i).encode())
        assert fs.read_bytes("/tmp/counter") == str(i).encode()
    fs.chmod("/tmp/counter", 0o600)
    assert stat.S_IMODE(fs.stat("/tmp/counter").st_mode) == 0o600
    fs.chown("/tmp/counter", 33, 44)
    assert (fs.stat("/tmp/counter").st_uid, fs.stat("/tmp/counter").st_gid) == (33, 44)
    fs.utime("/tmp/counter", (1000.0, 2000.0))
    assert fs.stat("/tmp/counter").st_mtime == 2000.0
    check_diff(sample, c)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,exc,err,filename",
    [
        (lambda fs: fs.read_bytes("/nope/x"), FileNotFoundError, errno.ENOENT, "/nope/x"),
        (lambda fs: fs.write_bytes("/nope/x", b""), FileNotFoundError, errno.ENOENT, "/nope/x"),
        (lambda fs: fs.mkdir("/etc"), FileExistsError, errno.EEXIST, "/etc"),
        (lambda fs: fs.mkdir("/lib"), FileExistsError, errno.EEXIST, "/lib"),
        (lambda fs: fs.open("/etc", "w"), IsADirectoryError, errno.EISDIR, "/etc"),
        (lambda fs: fs.remove("/etc"), IsADirectoryError, errno.EISDIR, "/etc"),
        (lambda fs: fs.listdir("/etc/passwd"), NotADirectoryError, errno.ENOTDIR, "/etc/passwd"),
        (lambda fs: fs.read_bytes("/etc/passwd/x"), NotADirectoryError, errno.ENOTDIR, "/etc/passwd/x"),
        (lambda fs: fs.symlink("x", "/etc/motd"), FileExistsError, errno.EEXIST, "/etc/motd"),
        (lambda fs: fs.link("/etc/motd", "/etc/passwd"), FileExistsError, errno.EEXIST, "/etc/passwd"),
        (lambda fs: fs.link("/etc", "/etc3"), PermissionError, errno.EPERM, "/etc"),
        (lambda fs: fs.link("/etc", "/usr"), FileExistsError, errno.EEXIST, "/usr"),  # as link(2): EEXIST first
        (lambda fs: fs.chmod("/etc/hostname", 0o600), FileNotFoundError, errno.ENOENT, "/etc/hostname"),
        (lambda fs: fs.truncate("/etc", 0), IsADirectoryError, errno.EISDIR, "/etc"),
        (lambda fs: fs.rmtree("/etc/motd"), NotADirectoryError, errno.ENOTDIR, "/etc/motd"),
        (lambda fs: fs.readlink("/etc/motd"), OSError, errno.EINVAL, "/etc/motd"),
        (lambda fs: fs.getxattr("/etc/motd", "user.none"), OSError, errno.ENODATA, "/etc/motd"),
    ],
)
def test_errors_are_oserrors_with_container_path(sample: SampleImages, c: ovlcore.Container, call, exc, err, filename) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as ei:
        call(c.fs)
    assert ei.value.errno == err
    assert ei.value.filename == filename
    assert c.diff() == []
    assert os.listdir(c.upper) == []


# --------------------------------------------------------------------------------------------------
# ownership rules of new entries
# --------------------------------------------------------------------------------------------------


def test_new_entries_in_setgid_directory_take_its_group(sample: SampleImages, c: ovlcore.Container) -> None:
    """As on Linux (and through the kernel's overlay): in a directory with the setgid bit, a new file
    gets the directory's group, and a new subdirectory its group and the setgid bit. Also where the new
    entry replaces a whiteout (ovlcore builds it elsewhere first)."""
    fs = c.fs
    fs.mkdir("/shared")
    fs.chown("/shared", 0, 50)
    fs.chmod("/shared", 0o2775)
    fs.write_bytes("/shared/file", b"f")
    fs.mkdir("/shared/sub")
    # an image directory made setgid, with new entries where image entries were deleted
    fs.chown("/etc", 0, 60)
    fs.chmod("/etc", 0o2755)
    fs.remove("/etc/motd")
    fs.write_bytes("/etc/motd", b"new")
    fs.remove("/etc/passwd")
    fs.mkdir("/etc/passwd")
    fs.write_bytes("/etc/brand-new", b"n")
    got = {p: (fs.stat(p).st_gid, bool(fs.stat(p).st_mode & stat.S_ISGID))
           for p in ("/shared/file", "/shared/sub", "/etc/motd", "/etc/passwd", "/etc/brand-new")}
    assert got == {
        "/shared/file": (50, False),
        "/shared/sub": (50, True),
        "/etc/motd": (60, False),
        "/etc/passwd": (60, True),
        "/etc/brand-new": (60, False),
    }


def test_lchown_of_a_symlink(sample: SampleImages, c: ovlcore.Container) -> None:
    """chown(follow_symlinks=False) changes a symlink's owner in a root store. A rootless store keeps
    owners in an xattr, which a symlink cannot carry (as with containers/storage): the change is refused
    with EPERM, as os.lchown refuses it to an unprivileged user, rather than silently lost."""
    c.fs.symlink("target", "/mylink")
    if sample.store.privilege == "rootless":
        with pytest.raises(PermissionError):
            c.fs.chown("/mylink", 5, 6, follow_symlinks=False)
        with pytest.raises(PermissionError):
            c.fs.lchown("/lib", 7, 8)
        assert c.fs.readlink("/lib") == "usr/lib"
        return
    c.fs.chown("/mylink", 5, 6, follow_symlinks=False)
    st = c.fs.lstat("/mylink")
    assert (st.st_uid, st.st_gid) == (5, 6)
    c.fs.lchown("/lib", 7, 8)
    st = c.fs.lstat("/lib")
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert c.fs.readlink("/lib") == "usr/lib"


# --------------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------------


def test_concurrent_first_writes_to_one_image_file(sample: SampleImages, c: ovlcore.Container) -> None:
    """Eight threads (each with its own handle of the container) open the same image file for writing
    at once: one copy-up wins, and every thread's write lands in that one copy."""
    import threading

    for path in ("/data/big.bin", "/usr/share/doc/c.txt"):
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                fs = sample.store.containers.get(c.id).fs
                barrier.wait()
                with fs.open(path, "r+b") as f:
                    f.seek(i)
                    f.write(b"Z")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        data = c.fs.read_bytes(path)
        original = sample.child.fs.read_bytes(path)
        assert data == b"Z" * 8 + original[8:]
        assert not [n for n in os.listdir(c.dir / "scratch")], "leftovers in scratch"
