"""``store.cp``: Docker's ``container cp`` rules in both directions, mounts, symlinks, archive mode, globs,
and the security promise (nothing outside the container's root and mounts is read or written on the
container side, not even through a symlink swapped in during the copy)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import ovlcore
from ovlcore import Mount

from support.images import BASE_ENTRIES, PASSWD, import_image
from support.layout import upper_tree
from support.privilege import IS_ROOT, needs_root
from support.tars import D, L
from support.trees import host_files, snapshot


@dataclass
class Env:
    store: ovlcore.Store
    c: ovlcore.Container
    host: Path  # an empty host directory to copy to/from
    shared: Path  # bind source mounted at /shared
    vol: Path  # the volume "my_vol" mounted at /vol
    rovol: Path  # read-only volume at /ro


@pytest.fixture
def env(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> Env:
    host = tmp_path / "host"
    host.mkdir()
    shared = tmp_path / "shared_mount"
    shared.mkdir()
    c = any_store.containers.create(
        any_image,
        name="my_container",
        mounts=[Mount("/shared", str(shared), type="bind"), Mount("/vol", "my_vol"), Mount("/ro", "rovol", read_only=True)],
    )
    return Env(any_store, c, host, shared, any_store.volumes.get("my_vol").mountpoint, any_store.volumes.get("rovol").mountpoint)


def _err(fn, *errnos: int) -> OSError:
    with pytest.raises(OSError) as ei:
        fn()
    if errnos:
        assert ei.value.errno in errnos, ei.value
    return ei.value


# ==================================================================================================
# The docker cp table, container → host


def test_out_file_to_missing_path(env: Env) -> None:
    env.store.cp("my_container:/etc/passwd", str(env.host / "pw"))
    assert (env.host / "pw").read_text() == PASSWD


def test_out_file_to_missing_path_with_slash_is_error(env: Env) -> None:
    _err(lambda: env.store.cp("my_container:/etc/passwd", str(env.host / "nodir") + "/"), errno.ENOENT, errno.ENOTDIR)
    assert os.listdir(env.host) == []


def test_out_file_over_existing_file(env: Env) -> None:
    (env.host / "pw").write_text("old content that is longer than the new one " * 10)
    env.store.cp("my_container:/etc/passwd", str(env.host / "pw"))
    assert (env.host / "pw").read_text() == PASSWD


def test_out_file_into_existing_dir(env: Env) -> None:
    env.store.cp("my_container:/etc/passwd", str(env.host))
    assert (env.host / "passwd").read_text() == PASSWD
    env.store.cp("my_container:/etc/hostname", str(env.host) + "/")
    assert (env.host / "hostname").read_text() == "image-hostname\n"


def test_out_dir_to_missing_path(env: Env) -> None:
    env.store.cp("my_container:/srv/dir", str(env.host / "copy"))
    assert host_files(env.host / "copy") == {"one.txt": "one\n", "nested": "dir", "nested/two.txt": "two\n"}


def test_out_dir_into_existing_dir(env: Env) -> None:
    (env.host / "exists").mkdir()
    (env.host / "exists" / "keep").write_text("k")
    env.store.cp("my_container:/srv/dir", str(env.host / "exists"))
    assert host_files(env.host / "exists") == {
        "keep": "k",
        "dir": "dir",
        "dir/one.txt": "one\n",
        "dir/nested": "dir",
        "dir/nested/two.txt": "two\n",
    }


def test_out_dir_dot_copies_contents(env: Env) -> None:
    (env.host / "exists").mkdir()
    env.store.cp("my_container:/srv/dir/.", str(env.host / "exists"))
    assert host_files(env.host / "exists") == {"one.txt": "one\n", "nested": "dir", "nested/two.txt": "two\n"}


def test_out_dir_dot_to_missing_path_creates_it(env: Env) -> None:
    env.store.cp("my_container:/srv/dir/.", str(env.host / "new"))
    assert host_files(env.host / "new") == {"one.txt": "one\n", "nested": "dir", "nested/two.txt": "two\n"}


def test_out_dir_to_existing_file_is_error(env: Env) -> None:
    (env.host / "f").write_text("file")
    _err(lambda: env.store.cp("my_container:/srv/dir", str(env.host / "f")), errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
    assert (env.host / "f").read_text() == "file"


def test_out_parent_must_exist(env: Env) -> None:
    _err(lambda: env.store.cp("my_container:/etc/passwd", str(env.host / "a" / "b")), errno.ENOENT)
    _err(lambda: env.store.cp("my_container:/srv/dir", str(env.host / "a" / "b")), errno.ENOENT)
    assert os.listdir(env.host) == []


def test_out_missing_source_is_error(env: Env) -> None:
    _err(lambda: env.store.cp("my_container:/nope", str(env.host / "x")), errno.ENOENT)
    assert os.listdir(env.host) == []


def test_out_file_source_with_trailing_slash_is_error(env: Env) -> None:
    """moby TestCpFromErrSrcNotDir: "not a directory"."""
    _err(lambda: env.store.cp("my_container:/etc/passwd/", str(env.host / "x")), errno.ENOTDIR)


def test_out_dst_existing_file_with_trailing_slash_is_error(env: Env) -> None:
    """moby TestCpFromErrDstNotDir: a destination that is a file but written ``file/``."""
    (env.host / "f").write_text("file")
    _err(lambda: env.store.cp("my_container:/etc/passwd", str(env.host / "f") + "/"), errno.ENOTDIR)
    assert (env.host / "f").read_text() == "file"


def test_out_whole_root(env: Env) -> None:
    env.store.cp("my_container:/", str(env.host / "rootfs"))
    t = host_files(env.host / "rootfs")
    assert t["etc/passwd"] == PASSWD
    assert t["links/to_root"] == "link:/"


def test_out_by_id_and_prefix(env: Env) -> None:
    env.store.cp(f"{env.c.id}:/etc/passwd", str(env.host / "a"))
    env.store.cp(f"{env.c.short_id}:/etc/passwd", str(env.host / "b"))
    assert (env.host / "a").read_text() == (env.host / "b").read_text() == PASSWD


def test_out_reads_container_changes(env: Env) -> None:
    env.c.fs.write_text("/etc/passwd", "changed in container\n")
    env.c.fs.remove("/srv/dir/one.txt")
    env.store.cp("my_container:/etc/passwd", str(env.host / "pw"))
    env.store.cp("my_container:/srv/dir", str(env.host / "d"))
    assert (env.host / "pw").read_text() == "changed in container\n"
    assert host_files(env.host / "d") == {"nested": "dir", "nested/two.txt": "two\n"}


def test_out_relative_container_path(env: Env) -> None:
    env.store.cp("my_container:etc/passwd", str(env.host / "pw"))
    assert (env.host / "pw").read_text() == PASSWD


def test_out_and_in_across_file_systems(env: Env) -> None:
    # The host side on tmpfs: copy_file_range refuses other file systems (EXDEV), and the content is
    # read and written, whatever each file's size against the copy buffer.
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(env.host).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("needs a writable /dev/shm on another file system than the test's")
    sizes = {"empty": 0, "small": 5000, "big": (3 << 20) + 7}
    blobs = {name: os.urandom(n) for name, n in sizes.items()}
    env.c.fs.makedirs("/srv/x")
    for name, data in blobs.items():
        env.c.fs.write_bytes(f"/srv/x/{name}", data)
    out = Path(tempfile.mkdtemp(dir=shm))
    try:
        env.store.cp("my_container:/srv/x", str(out / "x"))
        assert {p.name: p.read_bytes() for p in (out / "x").iterdir()} == blobs
        env.store.cp(str(out / "x"), "my_container:/srv/back")
        assert {name: env.c.fs.read_bytes(f"/srv/back/{name}") for name in blobs} == blobs
    finally:
        shutil.rmtree(out)


# ==================================================================================================
# The docker cp table, host → container


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    s.mkdir()
    (s / "file.txt").write_text("host file\n")
    (s / "tree").mkdir()
    (s / "tree" / "a.txt").write_text("a\n")
    (s / "tree" / "sub").mkdir()
    (s / "tree" / "sub" / "b.txt").write_text("b\n")
    return s


def ctree(fs: ovlcore.ContainerFS, top: str) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in fs.walk(top):
        for n in dirs + files:
            p = dirpath.rstrip("/") + "/" + n
            rel = p[len(top.rstrip("/")) + 1 :]
            if fs.is_symlink(p):
                out[rel] = "link:" + fs.readlink(p)
            elif fs.is_dir(p):
                out[rel] = "dir"
            else:
                out[rel] = fs.read_text(p)
    return out


def test_in_file_to_missing_path(env: Env, src: Path) -> None:
    env.store.cp(str(src / "file.txt"), "my_container:/etc/new.txt")
    assert env.c.fs.read_text("/etc/new.txt") == "host file\n"
    assert [str(ch) for ch in env.c.diff()] == ["C /etc", "A /etc/new.txt"]


def test_in_file_to_missing_path_with_slash_is_error(env: Env, src: Path) -> None:
    _err(lambda: env.store.cp(str(src / "file.txt"), "my_container:/etc/nodir/"), errno.ENOENT, errno.ENOTDIR)
    assert not env.c.fs.exists("/etc/nodir")
    assert env.c.diff() == []


def test_in_file_over_existing_file(env: Env, src: Path) -> None:
    env.store.cp(str(src / "file.txt"), "my_container:/etc/passwd")
    assert env.c.fs.read_text("/etc/passwd") == "host file\n"
    assert env.store.images.get("base:1").fs.read_text("/etc/passwd") == PASSWD
    assert [str(ch) for ch in env.c.diff()] == ["C /etc", "C /etc/passwd"]


def test_in_file_into_existing_dir(env: Env, src: Path) -> None:
    env.store.cp(str(src / "file.txt"), "my_container:/etc")
    env.store.cp(str(src / "file.txt"), "my_container:/tmp/")
    assert env.c.fs.read_text("/etc/file.txt") == "host file\n"
    assert env.c.fs.read_text("/tmp/file.txt") == "host file\n"


def test_in_dir_to_missing_path(env: Env, src: Path) -> None:
    env.store.cp(str(src / "tree"), "my_container:/newtree")
    assert ctree(env.c.fs, "/newtree") == {"a.txt": "a\n", "sub": "dir", "sub/b.txt": "b\n"}


def test_in_dir_into_existing_dir(env: Env, src: Path) -> None:
    env.store.cp(str(src / "tree"), "my_container:/srv")
    assert ctree(env.c.fs, "/srv/tree") == {"a.txt": "a\n", "sub": "dir", "sub/b.txt": "b\n"}
    assert env.c.fs.read_bytes("/srv/a.png") == b"\x89PNG a"


def test_in_dir_dot_copies_contents(env: Env, src: Path) -> None:
    env.store.cp(str(src / "tree") + "/.", "my_container:/srv/dir")
    assert ctree(env.c.fs, "/srv/dir") == {
        "one.txt": "one\n",
        "nested": "dir",
        "nested/two.txt": "two\n",
        "a.txt": "a\n",
        "sub": "dir",
        "sub/b.txt": "b\n",
    }


def test_in_dir_to_existing_file_is_error(env: Env, src: Path) -> None:
    _err(lambda: env.store.cp(str(src / "tree"), "my_container:/etc/passwd"), errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
    assert env.c.fs.read_text("/etc/passwd") == PASSWD
    assert env.c.diff() == []


def test_in_parent_must_exist(env: Env, src: Path) -> None:
    _err(lambda: env.store.cp(str(src / "file.txt"), "my_container:/no/such/x"), errno.ENOENT)
    _err(lambda: env.store.cp(str(src / "tree"), "my_container:/no/such"), errno.ENOENT)
    assert env.c.diff() == []


def test_in_missing_host_source(env: Env, src: Path) -> None:
    _err(lambda: env.store.cp(str(src / "nope"), "my_container:/tmp/"), errno.ENOENT)


def test_in_file_source_with_trailing_slash_is_error(env: Env, src: Path) -> None:
    """moby TestCpToErrSrcNotDir."""
    _err(lambda: env.store.cp(str(src / "file.txt") + "/", "my_container:/tmp/x"), errno.ENOTDIR)
    assert not env.c.fs.exists("/tmp/x")


def test_in_dst_existing_file_with_trailing_slash_is_error(env: Env, src: Path) -> None:
    """moby TestCpToErrDstNotDir."""
    _err(lambda: env.store.cp(str(src / "file.txt"), "my_container:/etc/passwd/"), errno.ENOTDIR)
    assert env.c.fs.read_text("/etc/passwd") == PASSWD


def test_in_relative_host_path(env: Env, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(src)
    env.store.cp("file.txt", "my_container:/tmp/rel.txt")
    env.store.cp("./tree", "my_container:/tmp/")
    assert env.c.fs.read_text("/tmp/rel.txt") == "host file\n"
    assert env.c.fs.read_text("/tmp/tree/a.txt") == "a\n"


def test_in_leaves_image_layers_unchanged(env: Env, src: Path) -> None:
    img = env.store.images.get("base:1")
    before = snapshot(img.layers[0].path)
    env.store.cp(str(src / "tree") + "/.", "my_container:/srv/dir")
    env.store.cp(str(src / "file.txt"), "my_container:/etc/passwd")
    assert snapshot(img.layers[0].path) == before


# ==================================================================================================
# Mounts


def test_in_and_out_of_volume(env: Env, src: Path) -> None:
    env.store.cp(str(src / "tree"), "my_container:/vol/")
    env.store.cp(str(src / "file.txt"), "my_container:/vol/f")
    assert (env.vol / "tree" / "sub" / "b.txt").read_text() == "b\n"
    assert (env.vol / "f").read_text() == "host file\n"
    assert upper_tree(env.c) == [] and env.c.diff() == []
    env.store.cp("my_container:/vol/tree", str(env.host / "back"))
    assert host_files(env.host / "back") == {"a.txt": "a\n", "sub": "dir", "sub/b.txt": "b\n"}


def test_in_and_out_of_bind_mount(env: Env, src: Path) -> None:
    env.store.cp(str(src / "file.txt"), "my_container:/shared/")
    assert (env.shared / "file.txt").read_text() == "host file\n"
    assert upper_tree(env.c) == [] and env.c.diff() == []
    (env.shared / "from_host").write_text("hello")
    env.store.cp("my_container:/shared/from_host", str(env.host))
    assert (env.host / "from_host").read_text() == "hello"


def test_into_read_only_mount_is_error(env: Env, src: Path) -> None:
    before = snapshot(env.rovol)
    e = _err(lambda: env.store.cp(str(src / "file.txt"), "my_container:/ro/"), errno.EROFS)
    assert isinstance(e, PermissionError)
    _err(lambda: env.store.cp(str(src / "tree"), "my_container:/ro/t"), errno.EROFS)
    assert snapshot(env.rovol) == before
    assert upper_tree(env.c) == []


def test_out_of_read_only_mount_works(env: Env) -> None:
    (env.rovol / "r.txt").write_text("readable")
    env.store.cp("my_container:/ro/r.txt", str(env.host))
    assert (env.host / "r.txt").read_text() == "readable"


def test_copy_over_mount_target_dir(env: Env, src: Path) -> None:
    """A directory copied over a path holding a mount goes into the mount for that part."""
    (src / "over").mkdir()
    (src / "over" / "vol").mkdir()
    (src / "over" / "vol" / "inside.txt").write_text("into the volume")
    (src / "over" / "top.txt").write_text("into the writable layer")
    env.store.cp(str(src / "over") + "/.", "my_container:/")
    assert (env.vol / "inside.txt").read_text() == "into the volume"
    assert env.c.fs.read_text("/top.txt") == "into the writable layer"
    assert "top.txt" in upper_tree(env.c)
    assert not any(p.startswith("vol") for p in upper_tree(env.c))


# ==================================================================================================
# Symlinks


def test_out_symlink_copied_as_link(env: Env) -> None:
    env.store.cp("my_container:/links/to_passwd", str(env.host / "l"))
    assert os.readlink(env.host / "l") == "/etc/passwd"


def test_out_symlink_followed_with_L(env: Env) -> None:
    env.store.cp("my_container:/links/to_passwd", str(env.host / "l"), follow_symlinks=True)
    assert not (env.host / "l").is_symlink()
    assert (env.host / "l").read_text() == PASSWD  # the container's, not the host's /etc/passwd


def test_out_symlink_to_dir_followed_with_L(env: Env) -> None:
    env.store.cp("my_container:/links/to_data", str(env.host / "d"), follow_symlinks=True)
    assert (env.host / "d" / "seed.txt").read_text() == "seed from the image\n"


@pytest.mark.parametrize(
    "path",
    ["/links/to_root/etc/passwd", "/links/dotdot/etc/passwd", "/links/rel_etc/passwd", "/../../../../etc/passwd", "/srv/../../../etc/passwd"],
)
def test_out_links_before_last_component_resolve_in_container(env: Env, path: str) -> None:
    env.store.cp(f"my_container:{path}", str(env.host / "out"))
    assert (env.host / "out").read_text() == PASSWD


def test_in_symlink_copied_as_link(env: Env, tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "hl")
    env.store.cp(str(tmp_path / "hl"), "my_container:/tmp/hl")
    assert env.c.fs.is_symlink("/tmp/hl")
    assert env.c.fs.readlink("/tmp/hl") == "/etc/passwd"
    assert env.c.fs.read_text("/tmp/hl") == PASSWD


def test_in_symlink_followed_with_L(env: Env, tmp_path: Path) -> None:
    (tmp_path / "real").write_text("real content")
    os.symlink(str(tmp_path / "real"), tmp_path / "hl")
    env.store.cp(str(tmp_path / "hl"), "my_container:/tmp/hl", follow_symlinks=True)
    assert not env.c.fs.is_symlink("/tmp/hl")
    assert env.c.fs.read_text("/tmp/hl") == "real content"


def test_in_through_container_link_component(env: Env, src: Path) -> None:
    env.store.cp(str(src / "file.txt"), "my_container:/links/to_data/")
    assert env.c.fs.read_text("/data/file.txt") == "host file\n"
    env.store.cp(str(src / "file.txt"), "my_container:/links/to_root/tmp/via_root.txt")
    assert env.c.fs.read_text("/tmp/via_root.txt") == "host file\n"


# ==================================================================================================
# Archive mode: owner and mode


@needs_root
def test_out_archive_keeps_owner_and_mode(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    """Host files get real owners when the copier can chown (root), whatever convention the store
    uses internally: the store's override xattr is no substitute on the host."""
    any_store.containers.create(any_image, name="c")
    any_store.cp("c:/data", str(tmp_path / "a"), archive=True)
    for rel, want in {"": (1234, 5678, 0o750), "seed.txt": (1234, 5678, 0o640), "sub": (1234, 5678, 0o711), "sub/deep.txt": (42, 43, 0o600)}.items():
        st = os.lstat(tmp_path / "a" / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == want, rel


def test_mtime_kept_both_ways(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c = any_store.containers.create(any_image, name="c")
    any_store.cp("c:/srv/dir", str(tmp_path / "d"))
    assert os.stat(tmp_path / "d" / "one.txt").st_mtime == 1_600_000_000
    assert os.stat(tmp_path / "d").st_mtime == 1_600_000_000
    f = tmp_path / "f"
    f.write_text("x")
    os.utime(f, (1_000_000_000, 1_000_000_000))
    any_store.cp(str(f), "c:/tmp/f")
    assert c.fs.stat("/tmp/f").st_mtime == 1_000_000_000


def test_hard_links_kept_both_ways(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c = any_store.containers.create(any_image, name="c")
    c.fs.link("/srv/a.png", "/srv/hl.png")
    any_store.cp("c:/srv", str(tmp_path / "out"))
    assert os.stat(tmp_path / "out" / "a.png").st_ino == os.stat(tmp_path / "out" / "hl.png").st_ino
    d = tmp_path / "h"
    d.mkdir()
    (d / "one").write_text("same")
    os.link(d / "one", d / "two")
    any_store.cp(str(d), "c:/tmp/")
    assert c.fs.stat("/tmp/h/one").st_ino == c.fs.stat("/tmp/h/two").st_ino
    c.fs.write_text("/tmp/h/one", "changed")
    assert c.fs.read_text("/tmp/h/two") == "changed"


def test_out_without_archive_owner_is_caller_mode_kept(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    any_store.containers.create(any_image, name="c")
    any_store.cp("c:/data/seed.txt", str(tmp_path / "s"))
    st = os.lstat(tmp_path / "s")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_in_archive_keeps_mode(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c = any_store.containers.create(any_image, name="c")
    f = tmp_path / "m"
    f.write_text("x")
    os.chmod(f, 0o4751 if IS_ROOT else 0o751)
    any_store.cp(str(f), "c:/tmp/m", archive=True)
    assert stat.S_IMODE(c.fs.stat("/tmp/m").st_mode) == (0o4751 if IS_ROOT else 0o751)


@needs_root
def test_in_archive_keeps_owner(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c = any_store.containers.create(any_image, name="c")
    d = tmp_path / "owned"
    d.mkdir()
    (d / "f").write_text("x")
    os.chown(d, 2001, 2002)
    os.chown(d / "f", 3001, 3002)
    os.chmod(d / "f", 0o640)
    any_store.cp(str(d), "c:/tmp/", archive=True)
    st = c.fs.stat("/tmp/owned")
    assert (st.st_uid, st.st_gid) == (2001, 2002)
    st = c.fs.stat("/tmp/owned/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (3001, 3002, 0o640)


# ==================================================================================================
# Globs (beyond Docker)


def test_glob_out_of_container(env: Env) -> None:
    env.store.cp("my_container:/srv/*.png", str(env.host))
    assert host_files(env.host) == {"a.png": "\ufffdPNG a", "b.png": "\ufffdPNG b"}


def test_glob_into_container(env: Env, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for n in ("x.png", "y.png", "z.txt"):
        (pics / n).write_text(n)
    env.store.cp(str(pics / "*.png"), "my_container:/shared/")
    assert sorted(os.listdir(env.shared)) == ["x.png", "y.png"]


def test_glob_matches_directories_too(env: Env) -> None:
    env.store.cp("my_container:/srv/*", str(env.host))
    t = host_files(env.host)
    assert sorted(t) == sorted(["a.png", "b.png", "notes.txt", "dir", "dir/one.txt", "dir/nested", "dir/nested/two.txt"])


def test_glob_no_match_is_error(env: Env, tmp_path: Path) -> None:
    _err(lambda: env.store.cp("my_container:/srv/*.gif", str(env.host)), errno.ENOENT)
    _err(lambda: env.store.cp(str(tmp_path / "*.gif"), "my_container:/tmp/"), errno.ENOENT)
    assert os.listdir(env.host) == []


def test_glob_destination_must_be_existing_directory(env: Env, tmp_path: Path) -> None:
    _err(lambda: env.store.cp("my_container:/srv/*.png", str(env.host / "missing")))
    (env.host / "file").write_text("f")
    _err(lambda: env.store.cp("my_container:/srv/*.png", str(env.host / "file")))
    assert host_files(env.host) == {"file": "f"}
    _err(lambda: env.store.cp(str(tmp_path / "shared_mount" / "*"), "my_container:/etc/passwd"))


# ==================================================================================================
# The seed's examples


def test_seed_example_bind_mount(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    os.mkdir("shared_mount")
    for i in range(3):
        Path(f"pic{i}.png").write_bytes(b"\x89PNG %d" % i)
    Path("notes.txt").write_text("not copied")
    c = store.containers.create(image, name="my_container", mounts=[Mount.parse(f"type=bind,src={os.path.abspath('shared_mount')},dst=/shared")])
    store.cp("*.png", "my_container:/shared/")
    assert sorted(os.listdir("shared_mount")) == ["pic0.png", "pic1.png", "pic2.png"]
    assert c.fs.read_bytes("/shared/pic1.png") == b"\x89PNG 1"
    os.mkdir("back")
    store.cp("my_container:/shared/*.png", "back")
    assert sorted(os.listdir("back")) == ["pic0.png", "pic1.png", "pic2.png"]
    assert Path("back/pic2.png").read_bytes() == b"\x89PNG 2"
    assert c.diff() == []


def test_seed_example_volume(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        Path(f"pic{i}.png").write_bytes(b"\x89PNG %d" % i)
    c = any_store.containers.create(any_image, name="my_container", mounts=[Mount.parse_volume("my_vol:/shared")])
    # The empty volume was filled from the image's /shared.
    assert c.fs.listdir("/shared") == ["image_only.txt"]
    any_store.cp("*.png", "my_container:/shared/")
    assert sorted(c.fs.listdir("/shared")) == ["image_only.txt", "pic0.png", "pic1.png", "pic2.png"]
    os.mkdir("back")
    any_store.cp("my_container:/shared/*.png", "back/")
    assert sorted(os.listdir("back")) == ["pic0.png", "pic1.png", "pic2.png"]
    any_store.containers.remove("my_container")
    v = any_store.volumes.get("my_vol")
    assert sorted(os.listdir(v.mountpoint)) == ["image_only.txt", "pic0.png", "pic1.png", "pic2.png"]
    d = any_store.containers.create(any_image, name="again", mounts=["my_vol:/elsewhere"])
    assert d.fs.read_bytes("/elsewhere/pic0.png") == b"\x89PNG 0"


# ==================================================================================================
# Errors and extras


def test_cp_errors(env: Env, src: Path) -> None:
    with pytest.raises(ovlcore.ContainerNotFound):
        env.store.cp("nosuch:/etc/passwd", str(env.host))
    with pytest.raises(ValueError):
        env.store.cp(str(src / "file.txt"), str(env.host))  # no container side
    env.store.containers.create(env.store.images.get("base:1"), name="other")
    with pytest.raises(ValueError):
        env.store.cp("my_container:/etc/passwd", "other:/tmp/")


def test_cp_progress_reports_bytes(env: Env, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    seen: list[int] = []
    env.store.cp(str(big), "my_container:/tmp/big", progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 3 << 20
    assert env.c.fs.read_bytes("/tmp/big") == big.read_bytes()


def test_out_of_a_big_directory(env: Env) -> None:
    # Plain files go out in parallel batches between the entries copied in order (a subdirectory, a
    # symlink, hard links): the tree, modes and times are exact, progress only grows, and an entry
    # the host has taken fails with the first such file's error.
    fs = env.c.fs
    fs.makedirs("/big/sub")
    names = [f"f{i:04d}" for i in range(700)]
    for i, n in enumerate(names):
        fs.write_bytes(f"/big/{n}", n.encode() * (i % 7))
        fs.chmod(f"/big/{n}", 0o600 | (i % 2) * 0o044)
        fs.utime(f"/big/{n}", (1_600_000_000 + i, 1_600_000_000 + i))
    fs.symlink("f0001", "/big/f0300-link")
    fs.link("/big/f0002", "/big/f0500-hard")
    fs.write_text("/big/sub/inner", "inner\n")
    seen: list[int] = []
    env.store.cp("my_container:/big", str(env.host / "big"), progress=seen.append)
    got = snapshot(env.host / "big")
    assert sorted(got) == sorted(["."] + names + ["f0300-link", "f0500-hard", "sub", "sub/inner"])
    for i, n in enumerate(names):
        st = os.lstat(env.host / "big" / n)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime, (env.host / "big" / n).read_bytes()) == \
            (0o600 | (i % 2) * 0o044, 1_600_000_000 + i, n.encode() * (i % 7)), n
    assert os.readlink(env.host / "big" / "f0300-link") == "f0001"
    assert os.stat(env.host / "big" / "f0500-hard").st_ino == os.stat(env.host / "big" / "f0002").st_ino
    total = sum(len(n) * (i % 7) for i, n in enumerate(names)) + len("inner\n")
    assert seen == sorted(seen) and seen[-1] == total
    again = env.host / "again"
    again.mkdir()
    (again / "big").mkdir()
    for taken in ("f0400", "f0600"):
        (again / "big" / taken).mkdir()
    e = _err(lambda: env.store.cp("my_container:/big", str(again)), errno.EISDIR)
    assert "/big/f0400" in str(e)
    # After a commit the files share their inodes with the new layer (two links each, one name here).
    env.c.commit("big:1")
    env.store.cp("my_container:/big", str(env.host / "committed"))
    assert {n: (env.host / "committed" / n).read_bytes() for n in names} == {n: n.encode() * (i % 7) for i, n in enumerate(names)}
    assert os.stat(env.host / "committed" / "f0500-hard").st_ino == os.stat(env.host / "committed" / "f0002").st_ino
    assert os.stat(env.host / "committed" / "f0003").st_nlink == 1


def test_cp_host_path_with_colon(env: Env, tmp_path: Path) -> None:
    d = tmp_path / "with:colon"
    d.mkdir()
    env.store.cp("my_container:/etc/hostname", str(d))
    assert (d / "hostname").read_text() == "image-hostname\n"


@needs_root
def test_cp_out_while_kernel_mounted(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    """Reading a mounted container is harmless (only writes through the API must be refused)."""
    c = store.containers.create(image, name="m")
    with c.mount():
        store.cp("m:/etc/passwd", str(tmp_path / "pw"))
        assert (tmp_path / "pw").read_text() == PASSWD


@needs_root
def test_cp_in_while_kernel_mounted_is_refused(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    c = store.containers.create(image, name="m")
    (tmp_path / "f").write_text("x")
    with c.mount():
        _err(lambda: store.cp(str(tmp_path / "f"), "m:/tmp/"), errno.EBUSY)


# ==================================================================================================
# Security


CANARY = "CANARY: host secret\n"


@dataclass
class Evil:
    store: ovlcore.Store
    c: ovlcore.Container
    root: Path  # tmp_path: everything outside the store must stay as it is
    canary: Path  # a host file outside everything
    hostdir: Path  # its directory
    out: Path  # where copies to the host go
    bind: Path


@pytest.fixture
def evil(any_store: ovlcore.Store, tmp_path: Path) -> Evil:
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    canary = hostdir / "host_secret"
    canary.write_text(CANARY)
    entries = BASE_ENTRIES + [
        D("evil"),
        L("evil/abs_file", str(canary)),
        L("evil/abs_dir", str(hostdir)),
        L("evil/root", "/"),
        L("evil/dotdot", "../../../../../../../../.."),
        L("evil/dotdot_abs", "../../../../../../../../.." + str(hostdir)),
        L("evil/etc_passwd", "/etc/passwd"),
    ]
    img = import_image(any_store, entries, tag="evil:1")
    bind = tmp_path / "bind"
    bind.mkdir()
    os.symlink(str(hostdir), bind / "to_hostdir")
    os.symlink("../../../../../../../..", bind / "up")
    c = any_store.containers.create(img, name="ev", mounts=[Mount("/vol", "evol"), Mount("/shared", str(bind), type="bind")])
    vol = any_store.volumes.get("evol").mountpoint
    os.symlink(str(hostdir), vol / "to_hostdir")
    os.symlink(str(canary), vol / "to_canary")
    out = tmp_path / "out"
    out.mkdir()
    return Evil(any_store, c, tmp_path, canary, hostdir, out, bind)


def _outside(e: Evil) -> dict:
    """Everything outside the store, the copy destination and the mount sources."""
    return snapshot(e.root, exclude=[e.store.root, e.out, e.bind])


def _no_canary_under(p: Path) -> None:
    for dirpath, _, files in os.walk(p):
        for n in files:
            f = Path(dirpath) / n
            if not f.is_symlink():
                assert "CANARY" not in f.read_text(errors="replace"), f


@pytest.mark.parametrize(
    "path, follow",
    [
        ("/evil/abs_file", True),
        ("/evil/abs_dir/host_secret", False),
        ("/evil/abs_dir", True),
        ("/evil/abs_dir/.", False),
        ("/evil/root{canary}", False),
        ("/evil/dotdot{canary}", False),
        ("/evil/dotdot_abs/host_secret", False),
        ("/vol/to_canary", True),
        ("/vol/to_hostdir/host_secret", False),
        ("/shared/to_hostdir/host_secret", False),
        ("/shared/up{canary}", False),
        ("/evil/abs_dir/*", False),
        ("/vol/to_hostdir/*", False),
    ],
)
def test_copy_out_never_reads_host(evil: Evil, path: str, follow: bool) -> None:
    path = path.format(canary=str(evil.canary))
    try:
        evil.store.cp(f"ev:{path}", str(evil.out / "x") if "*" not in path else str(evil.out), follow_symlinks=follow)
    except OSError:
        pass
    _no_canary_under(evil.out)


def test_copy_out_through_links_finds_containers_copy(evil: Evil) -> None:
    """When the container has its own file at the host path, links lead to it."""
    evil.c.fs.makedirs(str(evil.hostdir))
    evil.c.fs.write_text(str(evil.canary), "the container's own file\n")
    for i, p in enumerate(["/evil/abs_file", "/vol/to_canary", f"/evil/root{evil.canary}", "/evil/dotdot_abs/host_secret", "/shared/to_hostdir/host_secret"]):
        evil.store.cp(f"ev:{p}", str(evil.out / str(i)), follow_symlinks=True)
        assert (evil.out / str(i)).read_text() == "the container's own file\n", p


@pytest.mark.parametrize(
    "dst",
    [
        "/evil/abs_dir/",
        "/evil/abs_dir/new",
        "/evil/abs_file",
        "/evil/abs_dir/host_secret",
        "/evil/dotdot{hostdir}/",
        "/evil/dotdot{canary}",
        "/evil/root{hostdir}/x",
        "/evil/dotdot_abs/",
        "/vol/to_hostdir/",
        "/vol/to_canary",
        "/shared/to_hostdir/",
        "/shared/to_hostdir/host_secret",
        "/shared/up{hostdir}/x",
    ],
)
@pytest.mark.parametrize("what", ["file", "dir", "dir_contents"])
def test_copy_in_never_writes_host(evil: Evil, tmp_path: Path, dst: str, what: str) -> None:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "host_secret").write_text("PWNED\n")
    (payload / "new").write_text("PWNED\n")
    src = {"file": str(payload / "host_secret"), "dir": str(payload), "dir_contents": str(payload) + "/."}[what]
    before = _outside(evil)
    dst = dst.format(hostdir=str(evil.hostdir), canary=str(evil.canary))
    try:
        evil.store.cp(src, f"ev:{dst}")
    except OSError:
        pass
    assert evil.canary.read_text() == CANARY
    assert _outside(evil) == before
    assert sorted(os.listdir(evil.hostdir)) == ["host_secret"]


def test_copy_in_follow_links_never_writes_host(evil: Evil, tmp_path: Path) -> None:
    """-L follows the *source* link on the host side; the container side stays confined."""
    (tmp_path / "real").write_text("PWNED\n")
    os.symlink(str(tmp_path / "real"), tmp_path / "lnk")
    before = _outside(evil)
    for dst in ("/evil/abs_file", "/vol/to_canary", "/evil/abs_dir/"):
        try:
            evil.store.cp(str(tmp_path / "lnk"), f"ev:{dst}", follow_symlinks=True)
        except OSError:
            pass
    assert _outside(evil) == before


def test_fs_writes_through_evil_links_never_reach_host(evil: Evil) -> None:
    before = _outside(evil)
    fs = evil.c.fs
    for p in ("/evil/abs_file", f"/evil/root{evil.canary}", "/evil/dotdot_abs/host_secret", "/vol/to_canary", "/shared/to_hostdir/host_secret"):
        with pytest.raises(FileNotFoundError):
            fs.read_text(p)
        try:
            fs.write_text(p, "PWNED")
        except OSError:
            pass
        for op in (lambda: fs.chmod(p, 0o777), lambda: fs.truncate(p, 0), lambda: fs.utime(p, (1, 1)), lambda: fs.chown(p, 99, 99)):
            try:
                op()
            except OSError:
                pass
    for d in ("/evil/abs_dir", "/vol/to_hostdir", "/shared/to_hostdir"):
        for op in (lambda: fs.mkdir(d + "/newdir"), lambda: fs.symlink("/x", d + "/l"), lambda: fs.remove(d + "/host_secret"), lambda: fs.rmtree(d)):
            try:
                op()
            except OSError:
                pass
    assert evil.canary.read_text() == CANARY
    assert _outside(evil) == before


def test_symlink_swap_race_never_touches_host(evil: Evil, tmp_path: Path) -> None:
    """CVE-2018-15664: another party keeps replacing a container directory with a symlink to a host
    directory while cp runs in both directions. No host file may be read or written."""
    payload = tmp_path / "payload"
    payload.mkdir()
    for i in range(40):
        (payload / f"f{i:02}").write_text("PWNED\n")
    (payload / "host_secret").write_text("PWNED\n")
    evil.c.fs.mkdir("/race")
    before = _outside(evil)
    stop = threading.Event()
    swaps = [0]
    targets = [str(evil.hostdir), "/", "../../../../../../.." + str(evil.hostdir), str(evil.canary)]

    def swapper() -> None:
        other = evil.store.containers.get("ev")  # its own view, as another process would have
        fs = other.fs
        i = 0
        while not stop.is_set():
            for op in (
                lambda: fs.rmtree("/race"),
                lambda: fs.symlink(targets[i % len(targets)], "/race"),
                lambda: fs.remove("/race"),
                lambda: fs.mkdir("/race"),
                lambda: fs.write_text("/race/f00", "container data\n"),
            ):
                try:
                    op()
                except OSError:
                    pass
            i += 1
            swaps[0] += 1

    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    copies = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            for fn in (
                lambda: evil.store.cp(str(payload) + "/.", "ev:/race/"),
                lambda: evil.store.cp(str(payload / "host_secret"), "ev:/race/host_secret"),
                lambda: evil.store.cp(str(payload), "ev:/race/"),
                lambda: evil.store.cp("ev:/race/.", str(evil.out / f"o{copies}")),
                lambda: evil.store.cp("ev:/race/host_secret", str(evil.out / f"s{copies}")),
                lambda: evil.store.cp("ev:/race/*", str(evil.out)),
            ):
                try:
                    fn()
                except OSError:
                    pass
                copies += 1
    finally:
        stop.set()
        t.join(10)
    assert swaps[0] > 10 and copies > 10
    assert evil.canary.read_text() == CANARY
    assert sorted(os.listdir(evil.hostdir)) == ["host_secret"]
    assert _outside(evil) == before
    _no_canary_under(evil.out)
