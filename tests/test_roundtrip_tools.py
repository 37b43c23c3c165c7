"""Round trips with real archivers: a host directory tree packed by GNU tar (default, ``--format=pax``,
``--format=gnu``, ``--format=ustar``) or busybox tar, applied, and read back through the view: the same
names, types, content, modes, times and link targets; ``walk`` matches ``os.walk`` on the source tree;
and the layer re-exports the archive byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from support.privilege import IS_ROOT

GNU_TAR = shutil.which("tar")
BUSYBOX = shutil.which("busybox")

LONG_DIR = "long-" + "d" * 90 + "/" + "nested-" + "e" * 90
LONG_FILE = "file-" + "f" * 150


def make_tree(root: Path, *, long_names: bool) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "empty").write_bytes(b"")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(70000))
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "bin" / "suid").write_bytes(b"s")
    os.chmod(root / "bin" / "suid", 0o4755)
    (root / "private").mkdir(mode=0o700)
    os.chmod(root / "private", 0o700)
    (root / "private" / "key").write_bytes(b"k")
    os.chmod(root / "private" / "key", 0o600)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.symlink("../etc/hosts", root / "bin" / "hosts-rel")
    os.symlink("/etc/hosts", root / "hosts-abs")
    os.symlink("etc", root / "etc-link")  # a symlink to a directory
    os.symlink("missing", root / "dangling")
    os.link(root / "etc" / "hosts", root / "bin" / "hosts-hard")
    os.mkfifo(root / "fifo")
    (root / "space name").write_text("spaces")
    (root / "ünï").write_text("utf-8 name")
    if long_names:
        (root / LONG_DIR).mkdir(parents=True)
        (root / LONG_DIR / LONG_FILE).write_text("deep and long")
        os.symlink("../" + "t" * 120, root / LONG_DIR / "long-link")
    if IS_ROOT:
        os.chown(root / "etc" / "hosts", 1000, 2000)
        os.chown(root / "private", 33, 33)
    # fixed, distinct mtimes (directories last, so creating children does not move them)
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), reverse=True)):
        for j, n in enumerate(filenames + dirnames):
            os.utime(os.path.join(dirpath, n), (1_500_000_000 + i * 100 + j,) * 2, follow_symlinks=False)
    os.utime(root, (1_400_000_000,) * 2)


def pack(tool: str, src: Path, out: Path) -> bytes:
    if tool == "busybox":
        if BUSYBOX is None:
            pytest.skip("busybox is not installed")
        cmd = [BUSYBOX, "tar", "-C", str(src), "-cf", str(out), "."]
    else:
        if GNU_TAR is None:
            pytest.skip("GNU tar is not installed")
        cmd = [GNU_TAR, "-C", str(src), "-cf", str(out)]
        if tool != "gnu-default":
            cmd.append(f"--format={tool.removeprefix('gnu-')}")
        cmd.append(".")
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def assert_same_tree(src: Path, fs, *, check_owner: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames:
            host = Path(dirpath) / n
            cpath = "/" + str(host.relative_to(src))
            hst = os.lstat(host)
            vst = fs.lstat(cpath)
            assert stat.S_IFMT(vst.st_mode) == stat.S_IFMT(hst.st_mode), cpath
            assert vst.st_mtime == int(hst.st_mtime), cpath
            if not stat.S_ISLNK(hst.st_mode):
                assert stat.S_IMODE(vst.st_mode) == stat.S_IMODE(hst.st_mode), cpath
            if check_owner and not stat.S_ISLNK(hst.st_mode):
                assert (vst.st_uid, vst.st_gid) == (hst.st_uid, hst.st_gid), cpath
            if stat.S_ISREG(hst.st_mode):
                assert fs.read_bytes(cpath) == host.read_bytes(), cpath
                assert vst.st_size == hst.st_size, cpath
            elif stat.S_ISLNK(hst.st_mode):
                assert fs.readlink(cpath) == os.readlink(host), cpath
            elif stat.S_ISDIR(hst.st_mode):
                assert fs.listdir(cpath) == sorted(os.listdir(host)), cpath
    assert fs.listdir("/") == sorted(os.listdir(src))


@pytest.mark.parametrize(
    "tool,long_names",
    [("gnu-default", True), ("gnu-pax", True), ("gnu-gnu", True), ("gnu-ustar", False), ("busybox", True)],
)
def test_round_trip(any_store, tmp_path, tool, long_names):
    src = tmp_path / "src"
    make_tree(src, long_names=long_names)
    data = pack(tool, src, tmp_path / "x.tar")
    layer = any_store.layers.apply(tmp_path / "x.tar")
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    img = any_store.images.create(layer=layer)
    assert_same_tree(src, img.fs, check_owner=IS_ROOT)
    # hard links stay hard links
    assert img.fs.stat("/bin/hosts-hard").st_ino == img.fs.stat("/etc/hosts").st_ino
    # the absolute link resolves inside the image
    assert img.fs.read_text("/hosts-abs") == "127.0.0.1 localhost\n"
    assert layer.tar().read() == data


def test_round_trip_gzip_by_gnu_tar(store, tmp_path):
    src = tmp_path / "src"
    make_tree(src, long_names=True)
    out = tmp_path / "x.tar.gz"
    subprocess.run([GNU_TAR, "-C", str(src), "-czf", str(out), "."], check=True)
    img = store.images.import_archive(out, tag="gz")
    assert_same_tree(src, img.fs, check_owner=IS_ROOT)
    plain = subprocess.run(["gzip", "-dc", str(out)], check=True, capture_output=True).stdout
    assert img.layers[0].tar().read() == plain


def test_gnu_tar_xattrs(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_text("x")
    try:
        os.setxattr(f, "user.origin", b"gnu tar")
    except OSError as e:
        pytest.skip(f"user xattrs not supported on {tmp_path}: {e}")
    out = tmp_path / "x.tar"
    subprocess.run([GNU_TAR, "-C", str(src), "--xattrs", "--xattrs-include=user.*", "--format=pax", "-cf", str(out), "."], check=True)
    img = store.images.import_archive(out)
    assert img.fs.getxattr("/f", "user.origin") == b"gnu tar"
    assert img.fs.listxattr("/f") == ["user.origin"]


def test_walk_matches_os_walk(store, tmp_path):
    src = tmp_path / "src"
    make_tree(src, long_names=True)
    out = tmp_path / "x.tar"
    pack("gnu-pax", src, out)
    fs = store.images.import_archive(out).fs
    expected = [
        ("/" + os.path.relpath(d, src) if d != str(src) else "/", sorted(dn), sorted(fn))
        for d, dn, fn in os.walk(src)
    ]
    got = [(d, sorted(dn), sorted(fn)) for d, dn, fn in fs.walk("/")]
    assert sorted(got) == sorted(expected)


def test_extract_with_gnu_tar_matches(store, tmp_path):
    # The re-exported layer extracts with GNU tar to the same tree the view shows.
    src = tmp_path / "src"
    make_tree(src, long_names=True)
    pack("gnu-pax", src, tmp_path / "x.tar")
    layer = store.layers.apply(tmp_path / "x.tar")
    exported = tmp_path / "exported.tar"
    exported.write_bytes(layer.tar().read())
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run([GNU_TAR, "-C", str(dest), "-xpf", str(exported)], check=True)
    assert_same_tree(dest, store.images.create(layer=layer).fs, check_owner=IS_ROOT)
