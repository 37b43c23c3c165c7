"""The rootless metadata convention (``OVLCORE_PRIVILEGE=rootless``): owner, mode and device type kept in
the ``user.containers.override_stat`` xattr (``UID:GID:MODE:TYPE``) as rootless containers/storage and
fuse-overlayfs do; opaque directories marked ``user.overlay.opaque``. The view and the re-exported tar
must still report the archive's root ownership, setuid bits and devices exactly."""

from __future__ import annotations

import os
import stat

import pytest

import ovlcore

from support.digests import sha256_digest
from support.layout import is_whiteout
from support.tars import D, F, O, TarBuilder, W, tar

OVERRIDE = "user.containers.override_stat"


def override(path) -> str | None:
    try:
        return os.getxattr(path, OVERRIDE, follow_symlinks=False).decode()
    except OSError:
        return None


def rootfs() -> bytes:
    t = TarBuilder()
    t.dir("./", mode=0o755)
    t.dir("bin", mode=0o755)
    t.file("bin/su", b"\x7fELF su", mode=0o4755)  # root-owned setuid
    t.file("bin/wall", b"\x7fELF wall", mode=0o2755, gid=5)  # setgid, group tty
    t.file("bin/plain", b"plain", mode=0o755)
    t.dir("home", mode=0o755)
    t.dir("home/user", mode=0o750, uid=1000, gid=1000)
    t.file("home/user/notes", b"mine", mode=0o640, uid=1000, gid=1000)
    t.file("home/user/locked", b"none", mode=0o000, uid=1000, gid=1000)
    t.dir("tmp", mode=0o1777)
    t.dir("dev", mode=0o755)
    t.chardev("dev/null", 1, 3, mode=0o666)
    t.chardev("dev/tty", 5, 0, mode=0o620, gid=5)
    t.blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
    t.symlink("bin/sh", "plain")
    return t.bytes()


def test_privilege_is_recorded(rootless_store):
    assert rootless_store.privilege == "rootless"


def test_store_keeps_its_convention_when_reopened(sandbox, monkeypatch):
    monkeypatch.setenv("OVLCORE_PRIVILEGE", "rootless")
    ovlcore.Store(sandbox.root).layers.apply(rootfs())
    monkeypatch.delenv("OVLCORE_PRIVILEGE")
    again = ovlcore.Store(sandbox.root)
    assert again.privilege == "rootless"
    img = again.images.create(layer=again.layers.list()[0])
    assert img.fs.stat("/bin/su").st_mode & stat.S_ISUID


def test_invalid_privilege_value(sandbox, monkeypatch):
    monkeypatch.setenv("OVLCORE_PRIVILEGE", "superuser")
    with pytest.raises(ValueError):
        ovlcore.Store(sandbox.root)


def test_override_xattrs_on_stored_files(rootless_store):
    layer = rootless_store.layers.apply(rootfs())
    d = layer.path
    assert override(d / "bin" / "su") == "0:0:4755:file"
    assert override(d / "bin" / "wall") == "0:5:2755:file"
    assert override(d / "home" / "user" / "notes") == "1000:1000:0640:file"
    assert override(d / "home" / "user") == "1000:1000:0750:dir"
    assert override(d / "tmp") == "0:0:1777:dir"
    assert override(d / "dev" / "null") == "0:0:0666:char-1-3"
    assert override(d / "dev" / "tty") == "0:5:0620:char-5-0"
    assert override(d / "dev" / "sda") == "0:6:0660:block-8-0"
    # plain root-owned entries need no override
    assert override(d / "bin" / "plain") is None


def test_stored_files_are_plain_and_owner_accessible(rootless_store):
    layer = rootless_store.layers.apply(rootfs())
    d = layer.path
    me = os.geteuid()
    su = os.lstat(d / "bin" / "su")
    assert not su.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert su.st_uid == me  # never chowned, even when the process could
    null = os.lstat(d / "dev" / "null")
    assert stat.S_ISREG(null.st_mode) and null.st_size == 0  # a device is an empty regular file
    locked = os.lstat(d / "home" / "user" / "locked")
    assert stat.S_IMODE(locked.st_mode) & 0o600 == 0o600  # readable by the store's owner
    assert os.lstat(d / "home" / "user").st_uid == me


def test_view_reports_the_archives_metadata(rootless_store):
    fs = rootless_store.images.import_archive(rootfs()).fs
    su = fs.stat("/bin/su")
    assert (su.st_uid, su.st_gid, stat.S_IMODE(su.st_mode)) == (0, 0, 0o4755) and stat.S_ISREG(su.st_mode)
    wall = fs.stat("/bin/wall")
    assert (wall.st_gid, stat.S_IMODE(wall.st_mode)) == (5, 0o2755)
    notes = fs.stat("/home/user/notes")
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1000, 0o640)
    home = fs.stat("/home/user")
    assert stat.S_ISDIR(home.st_mode) and (home.st_uid, stat.S_IMODE(home.st_mode)) == (1000, 0o750)
    assert stat.S_IMODE(fs.stat("/home/user/locked").st_mode) == 0o000
    assert stat.S_IMODE(fs.stat("/tmp").st_mode) == 0o1777
    null = fs.lstat("/dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and null.st_size == 0
    assert stat.S_IMODE(null.st_mode) == 0o666
    tty = fs.lstat("/dev/tty")
    assert stat.S_ISCHR(tty.st_mode) and tty.st_rdev == os.makedev(5, 0) and tty.st_gid == 5
    sda = fs.lstat("/dev/sda")
    assert stat.S_ISBLK(sda.st_mode) and sda.st_rdev == os.makedev(8, 0) and sda.st_gid == 6
    plain = fs.stat("/bin/plain")
    assert (plain.st_uid, plain.st_gid, stat.S_IMODE(plain.st_mode)) == (0, 0, 0o755)
    root = fs.stat("/")
    assert (root.st_uid, root.st_gid) == (0, 0)


def test_devices_are_not_regular_files_in_the_view(rootless_store):
    # stat says character device; every other view call must agree (is_file, scandir, walk).
    fs = rootless_store.images.import_archive(rootfs()).fs
    assert stat.S_ISCHR(fs.lstat("/dev/null").st_mode)
    assert not fs.is_file("/dev/null")
    assert not fs.is_file("/dev/sda")
    assert fs.exists("/dev/null") and not fs.is_dir("/dev/null")
    entries = {e.name: e for e in fs.scandir("/dev")}
    assert not entries["null"].is_file() and not entries["sda"].is_file()
    assert stat.S_ISCHR(entries["null"].stat().st_mode)


def test_override_xattr_is_not_content(rootless_store):
    fs = rootless_store.images.import_archive(rootfs()).fs
    assert OVERRIDE not in fs.listxattr("/bin/su")
    with pytest.raises(OSError):
        fs.getxattr("/bin/su", OVERRIDE)


def test_reexport_is_byte_identical(rootless_store):
    data = rootfs()
    layer = rootless_store.layers.apply(data)
    out = layer.tar()
    assert out.read() == data
    assert layer.diff_id == sha256_digest(data)


def test_opaque_and_whiteouts(rootless_store):
    base = tar(D("etc"), F("etc/a", b"a"), F("etc/b", b"b"), D("usr"), F("usr/x", b"x"))
    top = tar(D("etc"), W("etc/a"), D("usr"), O("usr"), F("usr/y", b"y"))
    l0 = rootless_store.layers.apply(base)
    l1 = rootless_store.layers.apply(top, parent=l0)
    assert os.getxattr(l1.path / "usr", "user.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(l1.path / "usr")
    assert is_whiteout(l1.path / "etc" / "a")
    fs = rootless_store.images.create(layer=l1, parent=rootless_store.images.create(layer=l0)).fs
    assert fs.listdir("/etc") == ["b"]
    assert fs.listdir("/usr") == ["y"]
    assert fs.listxattr("/usr") == []
    assert l1.tar().read() == top


def test_forged_override_in_archive_is_ignored(rootless_store):
    # An archive may not grant itself ownership or setuid through the storage xattr.
    t = TarBuilder().file("evil", b"x", mode=0o755, uid=1000, gid=1000,
                          xattrs={OVERRIDE: "0:0:4755:file"}).file("evil2", b"y", mode=0o644, xattrs={OVERRIDE: "0:0:0644:char-1-3"}).bytes()
    layer = rootless_store.layers.apply(t)
    assert override(layer.path / "evil") == "1000:1000:0755:file"
    assert override(layer.path / "evil2") is None
    fs = rootless_store.images.create(layer=layer).fs
    st = fs.stat("/evil")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o755)
    assert stat.S_ISREG(fs.lstat("/evil2").st_mode)


def test_root_owned_plain_dir_keeps_override_free_after_setuid_child(rootless_store):
    # Metadata of one entry never leaks to another (implied parents are root 0755).
    layer = rootless_store.layers.apply(TarBuilder().file("a/b/c", b"x", mode=0o4711, uid=7).bytes())
    fs = rootless_store.images.create(layer=layer).fs
    assert (fs.stat("/a").st_uid, stat.S_IMODE(fs.stat("/a").st_mode)) == (0, 0o755)
    assert (fs.stat("/a/b/c").st_uid, stat.S_IMODE(fs.stat("/a/b/c").st_mode)) == (7, 0o4711)
    assert override(layer.path / "a") is None


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_fifo_and_symlink_metadata(rootless_store, kind):
    # A FIFO is kept like a device: an empty regular file whose override (TYPE `pipe`) records its
    # owner and mode (user.* xattrs cannot be set on a real FIFO). A symlink stays a real symlink, so the
    # layer remains usable by the kernel and every other tool; it cannot carry the override, so its owner
    # reads as the store owner's (the container's root), as with containers/storage. Re-export stays
    # byte-identical either way.
    t = TarBuilder()
    if kind == "fifo":
        t.fifo("entry", mode=0o440, uid=1000, gid=1001)
    else:
        t.symlink("entry", "target", uid=1000, gid=1001)
    data = t.bytes()
    layer = rootless_store.layers.apply(data)
    fs = rootless_store.images.create(layer=layer).fs
    st = fs.lstat("/entry")
    if kind == "fifo":
        assert (st.st_uid, st.st_gid) == (1000, 1001)
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o440
    else:
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_ISLNK(st.st_mode) and fs.readlink("/entry") == "target"
        assert os.path.islink(layer.path / "entry")
    assert layer.tar().read() == data