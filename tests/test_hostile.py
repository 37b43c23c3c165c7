"""The hostile-input corpus beyond plain traversal (see test_bad_archives.py): archives that try to escape
through link chains or a symlink later turned into a directory, forged metadata, lying sizes, bad PAX
values, decompression bombs, odd names; and hostile container contents met by export, get_archive and
the merged view. Everything is generated here, no binary blobs."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import zlib

import pytest

from ovlcore.errors import InvalidArchive

from support.tars import EOF_BLOCKS, TarBuilder, pad, raw_header
from test_bad_archives import expect_refused


def pax_header(records: dict[str, bytes]) -> bytes:
    """A PAX extended header block (type x) with exactly the given (possibly malformed) records."""
    body = b""
    for k, v in records.items():
        rec = b" " + k.encode() + b"=" + v + b"\n"
        n = len(rec) + len(str(len(rec)))
        n = len(rec) + len(str(n))
        body += str(n).encode() + rec
    return raw_header("PaxHeader/x", type=b"x", size=len(body)) + pad(body)


# ----- escapes that take more than one step ---------------------------------------------------------


def test_symlink_later_replaced_by_a_directory(store, sandbox):
    data = (
        TarBuilder().symlink("a", str(sandbox.outside)).dir("a").file("a/planted", b"x").bytes()
    )
    expect_refused(store, sandbox, data, "a")


def test_symlink_chain_to_outside(store, sandbox):
    data = (
        TarBuilder()
        .symlink("l1", "l2")
        .symlink("l2", "l3")
        .symlink("l3", str(sandbox.outside))
        .file("l1/planted", b"x")
        .bytes()
    )
    expect_refused(store, sandbox, data, "l1/planted")


def test_relative_symlink_chain_climbing_out(store, sandbox):
    data = TarBuilder().dir("d").symlink("d/up", "..").symlink("up2", "d/up/d/up/../..").file("up2/x", b"x").bytes()
    expect_refused(store, sandbox, data, "up2/x")


def test_hard_link_chain_stays_inside(store):
    data = TarBuilder().file("f", b"shared").hardlink("h1", "f").hardlink("h2", "h1").bytes()
    layer = store.layers.apply(data)
    fs = store.images.create(layer=layer).fs
    assert fs.read_text("/h2") == "shared"
    assert os.stat(layer.path / "h2").st_ino == os.stat(layer.path / "f").st_ino
    assert layer.tar().read() == data


def test_hard_link_to_a_symlink_to_outside_links_the_symlink(store, sandbox):
    # The link names the symlink itself (never what it points to): no host file gets a second name.
    data = TarBuilder().symlink("s", str(sandbox.outside / "secret")).hardlink("h", "s").bytes()
    layer = store.layers.apply(data)
    assert os.path.islink(layer.path / "h")
    assert os.stat(sandbox.outside / "secret").st_nlink == 1


# ----- forged metadata -------------------------------------------------------------------------------


def test_devices_and_setuid_are_never_real_in_a_rootless_store(rootless_store):
    data = (
        TarBuilder()
        .chardev("dev/mem", 1, 1, mode=0o666)
        .blockdev("dev/sda", 8, 0, mode=0o660)
        .file("bin/su", b"#!", mode=0o4755, uid=0)
        .file("bin/wall", b"#!", mode=0o2755, gid=5)
        .bytes()
    )
    layer = rootless_store.layers.apply(data)
    for name in ("dev/mem", "dev/sda", "bin/su", "bin/wall"):
        st = os.lstat(layer.path / name)
        assert stat.S_ISREG(st.st_mode), name
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), name
    fs = rootless_store.images.create(layer=layer).fs
    assert stat.S_ISCHR(fs.lstat("/dev/mem").st_mode) and fs.lstat("/dev/mem").st_rdev == os.makedev(1, 1)
    assert stat.S_ISBLK(fs.lstat("/dev/sda").st_mode)
    assert stat.S_IMODE(fs.lstat("/bin/su").st_mode) == 0o4755
    assert fs.read_bytes("/dev/mem") == b""  # reading the stand-in never reads a device
    assert layer.tar().read() == data


@pytest.mark.skipif(os.geteuid() != 0, reason="an unprivileged user cannot chown to a forged owner at all")
def test_forged_owner_xattr_in_the_archive_is_ignored_as_root(store):
    t = TarBuilder()
    t.file("f", b"x", xattrs={"user.containers.override_stat": "0:0:4755:file", "user.ok": "kept"})
    t.dir("d", xattrs={"trusted.overlay.opaque": "y"})
    layer = store.layers.apply(t.bytes())
    assert os.getxattr(layer.path / "f", "user.ok") == b"kept"
    assert "user.containers.override_stat" not in os.listxattr(layer.path / "f")
    assert "trusted.overlay.opaque" not in os.listxattr(layer.path / "d")


# ----- sizes that lie --------------------------------------------------------------------------------


def test_huge_declared_size_with_little_data(store, sandbox):
    data = raw_header("big", size=1 << 40) + b"x" * 512 + EOF_BLOCKS
    expect_refused(store, sandbox, data, "big")


def test_declared_size_beyond_the_octal_field_via_pax(store, sandbox):
    data = pax_header({"size": b"999999999999999999"}) + raw_header("big", size=0) + EOF_BLOCKS
    expect_refused(store, sandbox, data, None)


@pytest.mark.parametrize(
    "records",
    [
        {"size": b"12abc"},
        {"uid": b"-1"},
        {"gid": b"99999999999999999999"},
        {"mtime": b"yesterday"},
        {"atime": b"1.2.3"},
        {"path": b"../escaped"},
        {"path": b"/etc/escaped"},
        {"linkpath": b"/etc/shadow"},
    ],
)
def test_pax_headers_with_bad_values(store, sandbox, records):
    kind = b"1" if "linkpath" in records else b"0"
    data = pax_header(records) + raw_header("entry", type=kind) + EOF_BLOCKS
    expect_refused(store, sandbox, data, None)
    assert not os.path.lexists("/etc/escaped")


def test_gnu_sparse_in_pax_form(store, sandbox):
    data = pax_header({"GNU.sparse.major": b"1", "GNU.sparse.minor": b"0", "GNU.sparse.name": b"s"}) + raw_header("s", size=0) + EOF_BLOCKS
    expect_refused(store, sandbox, data, None)


# ----- a decompression bomb --------------------------------------------------------------------------


def _gzip_bomb(expanded: int) -> bytes:
    """A gzip member of a tar holding one file of ``expanded`` zero bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(raw_header("zeros", size=expanded))]
    chunk = b"\0" * (1 << 20)
    for _ in range(expanded >> 20):
        out.append(comp.compress(chunk))
    out.append(comp.compress(EOF_BLOCKS))
    out.append(comp.flush())
    return b"".join(out)


def test_gzip_bomb_is_stopped_by_the_size_limit_in_bounded_memory(store, sandbox, tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_gzip_bomb(1 << 30))
    assert bomb.stat().st_size < 2 << 20  # a megabyte or two that expands to a gigabyte
    # In a child process, so that its peak memory is its own: VmHWM is this process image's peak (its
    # ru_maxrss would include the peak of the pytest process it was started from).
    code = (
        "import sys, ovlcore\n"
        "s = ovlcore.Store(sys.argv[1])\n"
        "try:\n"
        "    s.layers.apply(sys.argv[2], max_size=64 << 20)\n"
        "except ovlcore.InvalidArchive as e:\n"
        "    print('refused', e)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print('maxrss_kib', hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(store.root), str(bomb)], capture_output=True, text=True, check=True).stdout
    assert "refused" in out and "limit" in out
    rss = int(out.split("maxrss_kib")[1].split()[0])
    assert rss < 200 * 1024, f"peak memory {rss} KiB"
    assert store.layers.list() == []
    assert os.listdir(store.root / "tmp") == []


def test_import_archive_takes_the_limit_too(store, tmp_path):
    with pytest.raises(InvalidArchive, match="limit"):
        store.images.import_archive(io.BytesIO(_gzip_bomb(8 << 20)), tag="bomb:1", max_size=1 << 20)
    assert store.images.list() == []


# ----- names -----------------------------------------------------------------------------------------


def test_non_utf8_names_are_kept_as_bytes(store):
    name = b"caf\xe9-\xff"
    data = raw_header(name, size=3) + pad(b"abc") + EOF_BLOCKS
    layer = store.layers.apply(data)
    fs = store.images.create(layer=layer).fs
    shown = os.fsdecode(name)
    assert fs.listdir("/") == [shown]
    assert fs.read_bytes("/" + shown) == b"abc"
    assert os.path.exists(os.path.join(os.fsencode(layer.path), name))
    assert layer.tar().read() == data


# ----- hostile container contents ---------------------------------------------------------------------


@pytest.fixture
def hostile(store, sandbox):
    data = (
        TarBuilder()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .symlink("to_secret", str(sandbox.outside / "secret"))
        .symlink("to_root", "/")
        .symlink("climb", "../../../../../../..")
        .symlink("loop_a", "loop_b")
        .symlink("loop_b", "loop_a")
        .bytes()
    )
    img = store.images.import_archive(io.BytesIO(data), tag="hostile:1")
    return store.containers.create(img, name="hostile")


def test_view_never_reaches_the_host(hostile, sandbox):
    fs = hostile.fs
    with pytest.raises(FileNotFoundError):
        fs.read_text("/to_secret")
    assert fs.read_text("/climb/etc/passwd") == fs.read_text("/to_root/etc/passwd") == "root:x:0:0::/root:/bin/sh\n"
    with pytest.raises(OSError) as e:
        fs.read_text("/loop_a")
    assert e.value.errno == 40  # ELOOP
    before = sandbox.snapshot_outside()
    fs.write_text("/climb/tmp-planted", "x")
    with pytest.raises(FileNotFoundError):
        fs.write_text("/to_secret", "overwritten?")  # the parent of the target does not exist in the container
    assert sandbox.snapshot_outside() == before
    assert (sandbox.outside / "secret").read_text() == "host secret\n"


def test_export_and_get_archive_keep_links_as_links(hostile, sandbox, tmp_path):
    out = tmp_path / "export.tar"
    hostile.export(out)
    with tarfile.open(out) as t:
        members = {m.name: m for m in t.getmembers()}
        assert members["to_secret"].issym() and members["to_secret"].linkname == str(sandbox.outside / "secret")
        assert members["loop_a"].issym()
        for m in t.getmembers():
            if m.isfile():
                assert b"host secret" not in t.extractfile(m).read()
    chunks, info = hostile.get_archive("/to_secret")
    data = b"".join(chunks)
    assert info["linkTarget"] == str(sandbox.outside / "secret")
    assert b"host secret" not in data
    chunks, _ = hostile.get_archive("/to_root/etc")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as t:
        assert t.extractfile("etc/passwd").read().startswith(b"root:x")
