"""``Image.fs``: the read-only merged view. stat/lstat/exists/is_*, listdir/scandir/walk, open/read_*,
readlink, xattrs; symlinks resolved inside the image root as under chroot; errors carry the container path."""

from __future__ import annotations

import errno
import io
import os
import stat

import pytest

import ovlcore

from support.images import image_chain
from support.tars import FIXED_MTIME, TarBuilder

HOST_PASSWD = open("/etc/passwd", "rb").read() if os.path.exists("/etc/passwd") else b""


def base_layer(outside: str) -> bytes:
    t = TarBuilder()
    t.dir("./", mode=0o755)
    t.dir("etc", mode=0o755)
    t.file("etc/passwd", b"image:x:0:0:image passwd:/:/bin/sh\n", mode=0o644)
    t.file("etc/hosts", b"127.0.0.1 image\n", mode=0o644, uid=0, gid=10, mtime=FIXED_MTIME + 1)
    t.file("etc/motd", b"welcome\n")
    t.file("etc/shadow", b"secret", mode=0o640, gid=42, xattrs={"user.note": "n1", "user.more": "n2"})
    t.dir("bin")
    t.file("bin/sh", b"\x7fELF-sh", mode=0o755)
    t.dir("usr")
    t.dir("usr/lib")
    t.file("usr/lib/libc.so", b"libc" * 100, mode=0o755)
    t.dir("usr/share")
    t.file("usr/share/old", b"old")
    t.symlink("lib", "usr/lib")  # relative link to a directory
    t.symlink("etcabs", "/etc")  # absolute link to a directory
    t.symlink("passwdlink", "/etc/passwd")  # absolute link to a file
    t.symlink("usr/lib/up", "../../../../../etc/passwd")  # `..` climbing above /
    t.symlink("usr/lib/root", "../../../..")  # a directory above / is /
    t.symlink("chain1", "chain2")
    t.symlink("chain2", "/etcabs/hosts")  # through another absolute link
    t.symlink("loop1", "loop2")
    t.symlink("loop2", "loop1")
    t.symlink("self", "self")
    t.symlink("dangling", "/nonexistent/file")
    t.symlink("hostsecret", f"{outside}/secret")  # a host path, meaningless inside the image
    t.symlink("dotdot", "..")
    t.fifo("pipe")
    t.dir("deep")
    t.dir("deep/a")
    t.dir("deep/a/b")
    t.file("deep/a/b/leaf", b"leaf")
    return t.bytes()


def top_layer() -> bytes:
    t = TarBuilder()
    t.dir("etc")
    t.whiteout("etc/motd")
    t.file("etc/issue", b"top issue\n")
    t.dir("usr")
    t.dir("usr/share", mode=0o700)
    t.opaque("usr/share")
    t.file("usr/share/new", b"new")
    return t.bytes()


@pytest.fixture
def fs(store, sandbox) -> ovlcore.ContainerFS:
    return image_chain(store, [base_layer(str(sandbox.outside)), top_layer()], tag="view:test").fs


def assert_oserror(exc_type, err: int, path: str, call):
    with pytest.raises(exc_type) as ei:
        call()
    assert ei.value.errno == err
    assert ei.value.filename == path, f"filename {ei.value.filename!r} is not the container path {path!r}"


# ----- stat family -----------------------------------------------------------------------------------


class TestStat:
    def test_file(self, fs):
        st = fs.stat("/etc/hosts")
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
        assert st.st_size == len(b"127.0.0.1 image\n")
        assert (st.st_uid, st.st_gid) == (0, 10)
        assert st.st_mtime == FIXED_MTIME + 1
        assert isinstance(st, os.stat_result)

    def test_directory_and_root(self, fs):
        assert stat.S_ISDIR(fs.stat("/etc").st_mode)
        assert stat.S_ISDIR(fs.stat("/").st_mode)
        assert stat.S_IMODE(fs.stat("/usr/share").st_mode) == 0o700  # the top layer's metadata

    def test_path_forms(self, fs):
        """A str (relative ones from /), an os.PathLike; bytes are refused; errors name the path from /."""
        import pathlib

        want = fs.stat("/etc/hosts")
        for p in ("etc/hosts", pathlib.PurePosixPath("/etc/hosts"), pathlib.PurePosixPath("etc/hosts"), "//etc/./hosts"):
            assert fs.stat(p) == want, p
            assert fs.is_file(p) and fs.exists(p), p
        assert fs.listdir("etc") == fs.listdir("/etc")
        with pytest.raises(TypeError, match="container paths are str, not bytes"):
            fs.stat(b"/etc/hosts")  # type: ignore[arg-type]
        for bad in (7, None):
            with pytest.raises(TypeError, match="os.PathLike"):
                fs.stat(bad)  # type: ignore[arg-type]
        assert_oserror(FileNotFoundError, errno.ENOENT, "/etc/nope", lambda: fs.stat("etc/nope"))
        assert ovlcore._ovlcore.container_path("a/b") == "/a/b"
        assert ovlcore._ovlcore.container_path(pathlib.PurePosixPath("/a")) == "/a"
        undecodable = os.fsdecode(b"/caf\xe9")
        assert ovlcore._ovlcore.container_path(undecodable) == undecodable
        assert_oserror(FileNotFoundError, errno.ENOENT, undecodable, lambda: fs.stat(undecodable))

    def test_stat_follows_lstat_does_not(self, fs):
        assert stat.S_ISDIR(fs.stat("/lib").st_mode)
        lst = fs.lstat("/lib")
        assert stat.S_ISLNK(lst.st_mode)
        assert lst.st_size == len("usr/lib")
        assert stat.S_ISLNK(fs.stat("/lib", follow_symlinks=False).st_mode)
        assert fs.stat("/passwdlink").st_size == fs.stat("/etc/passwd").st_size

    def test_fifo(self, fs):
        assert stat.S_ISFIFO(fs.lstat("/pipe").st_mode)

    def test_exists_and_kinds(self, fs):
        assert fs.exists("/etc/passwd") and fs.is_file("/etc/passwd") and not fs.is_dir("/etc/passwd")
        assert fs.is_dir("/etc") and not fs.is_file("/etc")
        assert fs.is_symlink("/lib") and fs.is_dir("/lib") and not fs.is_symlink("/usr/lib")
        assert fs.is_file("/passwdlink") and fs.is_symlink("/passwdlink")
        assert not fs.exists("/nope") and not fs.is_file("/nope") and not fs.is_dir("/nope")
        assert not fs.exists("/etc/passwd/sub")
        assert fs.is_symlink("/dangling") and not fs.exists("/dangling")
        assert fs.is_symlink("/loop1") and not fs.exists("/loop1") and not fs.is_dir("/loop1")

    def test_path_spelling(self, fs):
        want = fs.stat("/etc/passwd").st_ino
        for p in ("etc/passwd", "//etc//passwd", "/etc/./passwd", "/usr/../etc/passwd", "/../../etc/passwd", "/etc/../../etc/passwd"):
            assert fs.stat(p).st_ino == want, p
        assert fs.is_dir("/etc/")
        assert_oserror(NotADirectoryError, errno.ENOTDIR, "/etc/passwd/", lambda: fs.stat("/etc/passwd/"))


# ----- listing ---------------------------------------------------------------------------------------


class TestListing:
    def test_listdir_sorted_and_merged(self, fs):
        assert fs.listdir("/") == sorted(
            ["bin", "chain1", "chain2", "dangling", "deep", "dotdot", "etc", "etcabs", "hostsecret", "lib",
             "loop1", "loop2", "passwdlink", "pipe", "self", "usr"]
        )
        assert fs.listdir("/etc") == ["hosts", "issue", "passwd", "shadow"]  # motd whited out
        assert fs.listdir("/usr/share") == ["new"]  # opaque
        assert fs.listdir() == fs.listdir("/")

    def test_listdir_follows_symlinks(self, fs):
        assert fs.listdir("/lib") == fs.listdir("/usr/lib")
        assert fs.listdir("/etcabs") == fs.listdir("/etc")
        assert fs.listdir("/usr/lib/root") == fs.listdir("/")

    def test_scandir_stat_agrees_with_lstat(self, fs):
        # One pass per directory; must match listdir and a per-entry lstat everywhere (whiteouts,
        # opaque directories, symlinks, a fifo).
        for top, _, _ in fs.walk("/"):
            entries = fs.scandir_stat(top)
            assert [name for name, _ in entries] == fs.listdir(top)
            for name, st in entries:
                path = top.rstrip("/") + "/" + name
                assert st == fs.lstat(path), path
        with pytest.raises(NotADirectoryError):
            fs.scandir_stat("/etc/passwd")
        with pytest.raises(FileNotFoundError):
            fs.scandir_stat("/nosuch")

    def test_scandir(self, fs):
        entries = {e.name: e for e in fs.scandir("/")}
        assert list(entries) == fs.listdir("/")
        e = entries["etcabs"]
        assert e.path == "/etcabs"
        assert e.is_symlink() and e.is_dir() and not e.is_dir(follow_symlinks=False) and not e.is_file()
        assert stat.S_ISLNK(e.stat(follow_symlinks=False).st_mode)
        assert stat.S_ISDIR(e.stat().st_mode)
        f = {x.name: x for x in fs.scandir("/etc")}["hosts"]
        assert f.is_file() and not f.is_dir() and not f.is_symlink()
        assert f.path == "/etc/hosts"
        assert f.stat().st_size == fs.stat("/etc/hosts").st_size
        assert os.fspath(f) == "/etc/hosts"
        p = entries["pipe"]
        assert not p.is_file() and not p.is_dir()
        d = entries["dangling"]
        assert d.is_symlink() and not d.is_file() and not d.is_dir()

    def test_walk_top_down_like_os_walk(self, fs):
        walked = list(fs.walk("/deep"))
        assert walked == [("/deep", ["a"], []), ("/deep/a", ["b"], []), ("/deep/a/b", [], ["leaf"])]

    def test_walk_bottom_up(self, fs):
        walked = [w[0] for w in fs.walk("/deep", topdown=False)]
        assert walked == ["/deep/a/b", "/deep/a", "/deep"]

    def test_walk_pruning(self, fs):
        seen = []
        for dirpath, dirnames, _ in fs.walk("/"):
            seen.append(dirpath)
            dirnames[:] = [d for d in dirnames if d != "usr"]
        assert "/usr" not in seen and "/usr/lib" not in seen
        assert "/deep/a/b" in seen

    def test_walk_symlinks_to_directories_like_os_walk(self, fs):
        # os.walk lists a symlink to a directory among the *directories* but does not descend into it
        # (unless followlinks=True).
        top = next(iter(fs.walk("/")))
        _, dirnames, filenames = top
        assert "lib" in dirnames and "etcabs" in dirnames
        assert "lib" not in filenames
        assert "passwdlink" in filenames and "dangling" in filenames and "loop1" in filenames
        seen = [w[0] for w in fs.walk("/")]
        assert "/lib" not in seen and "/etcabs" not in seen
        assert "/usr/lib" in seen

    def test_walk_onerror(self, fs):
        errors = []
        assert list(fs.walk("/nope", onerror=errors.append)) == []
        assert len(errors) == 1 and isinstance(errors[0], FileNotFoundError)


# ----- reading ---------------------------------------------------------------------------------------


class TestRead:
    def test_open_text_and_binary(self, fs):
        with fs.open("/etc/hosts") as f:
            assert isinstance(f, io.TextIOBase)
            assert f.read() == "127.0.0.1 image\n"
        with fs.open("/etc/hosts", "rb") as f:
            assert f.read(4) == b"127."
            f.seek(0)
            assert f.read() == b"127.0.0.1 image\n"
        with fs.open("/etc/hosts", "rb", buffering=0) as f:
            assert f.readall() == b"127.0.0.1 image\n"

    def test_read_bytes_and_text(self, fs):
        assert fs.read_bytes("/usr/lib/libc.so") == b"libc" * 100
        assert fs.read_text("/etc/issue") == "top issue\n"
        assert fs.read_text("/deep/a/b/leaf", encoding="ascii") == "leaf"

    def test_read_through_relative_and_absolute_links(self, fs):
        assert fs.read_bytes("/lib/libc.so") == b"libc" * 100
        assert fs.read_bytes("/etcabs/hosts") == b"127.0.0.1 image\n"
        assert fs.read_bytes("/chain1") == b"127.0.0.1 image\n"
        assert fs.read_bytes("/dotdot/etc/hosts") == b"127.0.0.1 image\n"

    def test_absolute_link_reads_the_images_file_not_the_hosts(self, fs):
        data = fs.read_bytes("/passwdlink")
        assert data == b"image:x:0:0:image passwd:/:/bin/sh\n"
        assert data != HOST_PASSWD

    def test_dotdot_never_climbs_above_root(self, fs):
        assert fs.read_bytes("/usr/lib/up") == b"image:x:0:0:image passwd:/:/bin/sh\n"
        assert fs.listdir("/usr/lib/root") == fs.listdir("/")
        assert fs.read_bytes("/usr/lib/root/etc/hosts") == b"127.0.0.1 image\n"

    def test_link_to_a_host_path_is_a_container_path(self, fs, sandbox):
        assert not fs.exists("/hostsecret")
        path = "/hostsecret"
        with pytest.raises(FileNotFoundError) as ei:
            fs.read_bytes(path)
        assert ei.value.filename == path

    def test_loops_give_eloop(self, fs):
        for p in ("/loop1", "/self", "/loop1/x"):
            assert_oserror(OSError, errno.ELOOP, p, lambda p=p: fs.stat(p))
        assert_oserror(OSError, errno.ELOOP, "/self", lambda: fs.read_bytes("/self"))
        # not followed: fine
        assert stat.S_ISLNK(fs.lstat("/self").st_mode)

    def test_trailing_slash_in_a_link_target_requires_a_directory(self, store):
        # As in the kernel: `l -> f/` with f a regular file does not resolve (ENOTDIR).
        t = TarBuilder().file("f", b"x").dir("d").symlink("lf", "f/").symlink("labs", "/f/").symlink("ld", "d/").bytes()
        fs = image_chain(store, [t]).fs
        assert fs.is_dir("/ld")
        for p in ("/lf", "/labs"):
            assert not fs.exists(p), p
            assert_oserror(NotADirectoryError, errno.ENOTDIR, p, lambda p=p: fs.stat(p))
            assert_oserror(NotADirectoryError, errno.ENOTDIR, p, lambda p=p: fs.read_bytes(p))

    def test_readlink(self, fs):
        assert fs.readlink("/lib") == "usr/lib"
        assert fs.readlink("/passwdlink") == "/etc/passwd"
        assert fs.readlink("/usr/lib/up") == "../../../../../etc/passwd"
        assert fs.readlink("/self") == "self"
        # the last component is not followed, earlier ones are
        assert fs.readlink("/lib/up") == "../../../../../etc/passwd"

    def test_xattrs(self, fs):
        assert fs.getxattr("/etc/shadow", "user.note") == b"n1"
        assert sorted(fs.listxattr("/etc/shadow")) == ["user.more", "user.note"]
        assert fs.listxattr("/etc/hosts") == []

    def test_storage_xattrs_are_not_shown(self, fs, store):
        # /usr/share is opaque in the top layer: a storage detail, not content.
        assert fs.listxattr("/usr/share") == []
        for name in ("trusted.overlay.opaque", "user.overlay.opaque", "user.containers.override_stat"):
            with pytest.raises(OSError) as ei:
                fs.getxattr("/usr/share", name)
            assert ei.value.errno == errno.ENODATA


# ----- errors ----------------------------------------------------------------------------------------


class TestErrors:
    def test_missing(self, fs):
        assert_oserror(FileNotFoundError, errno.ENOENT, "/nope", lambda: fs.stat("/nope"))
        assert_oserror(FileNotFoundError, errno.ENOENT, "/nope", lambda: fs.lstat("/nope"))
        assert_oserror(FileNotFoundError, errno.ENOENT, "/etc/nope", lambda: fs.open("/etc/nope"))
        assert_oserror(FileNotFoundError, errno.ENOENT, "/etc/motd", lambda: fs.read_bytes("/etc/motd"))  # whited out
        assert_oserror(FileNotFoundError, errno.ENOENT, "/usr/share/old", lambda: fs.stat("/usr/share/old"))  # opaque
        assert_oserror(FileNotFoundError, errno.ENOENT, "/nope/deeper", lambda: fs.listdir("/nope/deeper"))
        assert_oserror(FileNotFoundError, errno.ENOENT, "/dangling", lambda: fs.stat("/dangling"))

    def test_not_a_directory(self, fs):
        assert_oserror(NotADirectoryError, errno.ENOTDIR, "/etc/passwd/x", lambda: fs.stat("/etc/passwd/x"))
        assert_oserror(NotADirectoryError, errno.ENOTDIR, "/etc/passwd", lambda: fs.listdir("/etc/passwd"))
        assert_oserror(NotADirectoryError, errno.ENOTDIR, "/passwdlink", lambda: fs.listdir("/passwdlink"))

    def test_is_a_directory(self, fs):
        assert_oserror(IsADirectoryError, errno.EISDIR, "/etc", lambda: fs.open("/etc"))
        assert_oserror(IsADirectoryError, errno.EISDIR, "/etc", lambda: fs.read_bytes("/etc"))

    def test_readlink_of_a_non_link(self, fs):
        assert_oserror(OSError, errno.EINVAL, "/etc", lambda: fs.readlink("/etc"))
        assert_oserror(FileNotFoundError, errno.ENOENT, "/nope", lambda: fs.readlink("/nope"))

    def test_missing_xattr(self, fs):
        assert_oserror(OSError, errno.ENODATA, "/etc/hosts", lambda: fs.getxattr("/etc/hosts", "user.none"))

    def test_invalid_open_mode(self, fs):
        with pytest.raises(ValueError):
            fs.open("/etc/hosts", "rw")

    def test_open_for_writing_is_refused(self, fs):
        assert_oserror(PermissionError, errno.EROFS, "/etc/hosts", lambda: fs.open("/etc/hosts", "w"))
        assert_oserror(PermissionError, errno.EROFS, "/brand-new", lambda: fs.open("/brand-new", "x"))
        assert not fs.exists("/brand-new")
        assert fs.read_bytes("/etc/hosts") == b"127.0.0.1 image\n"


class TestIsolation:
    def test_view_never_reads_outside_the_layers(self, store, sandbox):
        # Links pointing at the host's store path itself resolve inside the image root.
        base = store.layers.apply(TarBuilder().file("x", b"x").bytes())
        t = TarBuilder().symlink("storelink", str(base.path)).symlink("outlink", str(sandbox.outside)).bytes()
        fs = image_chain(store, [t]).fs
        assert not fs.exists("/storelink/x")
        assert not fs.exists("/outlink/secret")
        with pytest.raises(FileNotFoundError):
            fs.listdir("/outlink")

    def test_views_of_two_images_are_independent(self, store):
        a = image_chain(store, [TarBuilder().file("f", b"a").bytes()])
        b = image_chain(store, [TarBuilder().file("f", b"b").bytes()])
        assert a.fs.read_bytes("/f") == b"a" and b.fs.read_bytes("/f") == b"b"

    def test_empty_image_has_an_empty_root(self, store):
        img = store.images.create(layer=None)
        assert img.layers == []
        assert img.fs.listdir("/") == []
        assert not img.fs.exists("/etc")


class TestLayerRecreation:
    """A layer removed and imported again lives at the same path (its chain id) but is a new directory.
    Views and imports must use the new one even while an older view of the old one is still alive."""

    TAR = TarBuilder().dir("d").file("d/x", b"hello").file("d/y", b"y").bytes()

    def test_new_view_after_reimport_while_an_old_view_lives(self, store):
        old_fs = store.images.import_archive(self.TAR, tag="a").fs
        assert old_fs.read_bytes("/d/x") == b"hello"
        store.images.remove("a")
        fs = store.images.import_archive(self.TAR, tag="a").fs
        assert fs.listdir("/d") == ["x", "y"]
        assert fs.read_bytes("/d/x") == b"hello"

    def test_new_view_after_reimport_while_an_unused_old_view_lives(self, store):
        old_fs = store.images.import_archive(self.TAR, tag="a").fs  # never read
        store.images.remove("a")
        fs = store.images.import_archive(self.TAR, tag="a").fs
        assert fs.listdir("/d") == ["x", "y"]
        assert fs.read_bytes("/d/y") == b"y"
        del old_fs

    def test_import_on_a_recreated_parent_keeps_its_whiteouts(self, store):
        old_fs = store.images.import_archive(self.TAR, tag="a").fs  # a view of the base stack stays alive
        store.images.remove("a")
        base = store.layers.apply(self.TAR)
        top = store.layers.apply(TarBuilder().dir("d").whiteout("d/x").bytes(), parent=base)
        fs = store.images.create(layer=top, parent=store.images.create(layer=base)).fs
        assert fs.listdir("/d") == ["y"]
        del old_fs
