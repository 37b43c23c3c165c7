"""Hostile and malformed archives. Each must raise ``InvalidArchive`` (also a ``ValueError``) whose message
names the offending entry, write nothing outside the store, and leave no layer (nor staging debris)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

import ovlcore
from ovlcore.errors import InvalidArchive

from support.compression import bzip2_bytes, gzip_bytes, xz_bytes, zstd_bytes
from support.tars import EOF_BLOCKS, D, F, TarBuilder, pad, raw_header, tar


def expect_refused(store: ovlcore.Store, sandbox, data: bytes, entry: str | None, *, parent=None) -> InvalidArchive:
    """Apply ``data`` and check the error and that no trace of the attempt is left anywhere."""
    layers_before = {layer.chain_id for layer in store.layers.list()}
    outside_before = sandbox.snapshot_outside()
    with pytest.raises(InvalidArchive) as ei:
        store.layers.apply(data, parent=parent)
    err = ei.value
    assert isinstance(err, ValueError)
    assert isinstance(err, ovlcore.OvlError)
    if entry is not None:
        assert entry in str(err), f"message {str(err)!r} does not name the entry {entry!r}"
    assert {layer.chain_id for layer in store.layers.list()} == layers_before
    assert os.listdir(store.root / "tmp") == [], "staging debris left in tmp/"
    assert sandbox.snapshot_outside() == outside_before, "something was written outside the store"
    assert (sandbox.outside / "secret").read_text() == "host secret\n"
    return err


def no_host_path(p: str) -> None:
    assert not os.path.lexists(p), f"{p} was created on the host"


# ----- paths escaping the root -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../escaped", "a/../../escaped", "./../escaped", "a/b/../../../escaped", "..", "../"],
)
def test_parent_traversal(store, sandbox, name):
    t = TarBuilder().dir("a").dir("a/b").raw(raw_header(name, size=4)).raw(pad(b"evil")).bytes()
    expect_refused(store, sandbox, t, name.rstrip("/") or name)
    no_host_path(str(sandbox.base / "escaped"))
    no_host_path(str(sandbox.root / "escaped"))


def test_absolute_path(store, sandbox):
    target = f"{sandbox.outside}/planted"
    t = TarBuilder().raw(raw_header(target, size=4)).raw(pad(b"evil")).bytes()
    expect_refused(store, sandbox, t, target)
    no_host_path(target)


def test_absolute_etc_path(store, sandbox):
    t = TarBuilder().raw(raw_header("/etc/ovlcore-test-planted", size=4)).raw(pad(b"evil")).bytes()
    expect_refused(store, sandbox, t, "/etc/ovlcore-test-planted")
    no_host_path("/etc/ovlcore-test-planted")


def test_absolute_path_via_pax(store, sandbox):
    t = TarBuilder().file("x", b"evil", pax={"path": f"{sandbox.outside}/pax-planted"}).bytes()
    expect_refused(store, sandbox, t, "pax-planted")


def test_traversal_via_gnu_long_name(store, sandbox):
    name = "a/" + "b" * 120 + "/../../../escaped-long"
    t = TarBuilder(format=tarfile.GNU_FORMAT).file(name, b"evil").bytes()
    expect_refused(store, sandbox, t, "escaped-long")
    no_host_path(str(sandbox.base / "escaped-long"))


# ----- symlinks leading out --------------------------------------------------------------------------


def test_file_through_a_symlink_to_outside(store, sandbox):
    t = TarBuilder().symlink("link", str(sandbox.outside)).file("link/file", b"evil").bytes()
    expect_refused(store, sandbox, t, "link/file")
    no_host_path(str(sandbox.outside / "file"))


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "chardev"])
def test_other_entry_kinds_through_a_symlink(any_store, sandbox, kind):
    t = TarBuilder().file("real", b"r").symlink("link", str(sandbox.outside))
    name = "link/planted"
    if kind == "symlink":
        t.symlink(name, "/etc/passwd")
    elif kind == "hardlink":
        t.hardlink(name, "real")
    elif kind == "fifo":
        t.fifo(name)
    else:
        if any_store.privilege == "root" and os.geteuid() != 0:
            pytest.skip("device nodes need root")
        t.chardev(name, 1, 3)
    expect_refused(any_store, sandbox, t.bytes(), name)
    no_host_path(str(sandbox.outside / "planted"))


def test_file_through_a_relative_symlink_climbing_out(store, sandbox):
    t = TarBuilder().symlink("up", "../../../..").file("up/planted", b"evil").bytes()
    expect_refused(store, sandbox, t, "up/planted")


def test_file_through_a_symlink_inside_the_layer(store, sandbox):
    # Even a link that stays inside: an entry may not go through a symlink.
    t = TarBuilder().dir("real").symlink("alias", "real").file("alias/f", b"x").bytes()
    expect_refused(store, sandbox, t, "alias/f")


def test_directory_through_a_symlink(store, sandbox):
    t = TarBuilder().symlink("link", str(sandbox.outside)).dir("link/sub").bytes()
    expect_refused(store, sandbox, t, "link/sub")
    no_host_path(str(sandbox.outside / "sub"))


def test_overwriting_a_file_through_a_symlink(store, sandbox):
    # link -> outside/secret, then a regular file named `link`: must never write into the target.
    t = TarBuilder().symlink("link", str(sandbox.outside / "secret")).file("link", b"overwritten").bytes()
    expect_refused(store, sandbox, t, "link")


def test_whiteout_through_a_symlink(store, sandbox):
    t = TarBuilder().symlink("link", str(sandbox.outside)).whiteout("link/secret").bytes()
    expect_refused(store, sandbox, t, "link/.wh.secret")


def test_opaque_marker_through_a_symlink(store, sandbox):
    t = TarBuilder().symlink("link", str(sandbox.outside)).opaque("link").bytes()
    expect_refused(store, sandbox, t, "link/.wh..wh..opq")
    assert "trusted.overlay.opaque" not in os.listxattr(sandbox.outside)
    assert "user.overlay.opaque" not in os.listxattr(sandbox.outside)


def test_file_under_a_lower_layers_symlink_goes_into_the_new_layer(store, sandbox):
    # Each layer is applied into its own directory, so `link/file` over a lower `link -> outside`
    # implies a directory `link` in the new layer (hiding the symlink), as Docker's overlay2 does.
    # Nothing may reach the symlink's target.
    outside_before = sandbox.snapshot_outside()
    base = store.layers.apply(TarBuilder().symlink("link", str(sandbox.outside)).bytes())
    top = store.layers.apply(TarBuilder().file("link/file", b"data").bytes(), parent=base)
    assert sandbox.snapshot_outside() == outside_before
    no_host_path(str(sandbox.outside / "file"))
    fs = store.images.create(layer=top, parent=store.images.create(layer=base)).fs
    assert fs.is_dir("/link") and not fs.is_symlink("/link")
    assert fs.listdir("/link") == ["file"]


# ----- hard links leading out ------------------------------------------------------------------------


def test_hard_link_to_an_absolute_outside_path(store, sandbox):
    t = TarBuilder().hardlink("stolen", str(sandbox.outside / "secret")).bytes()
    expect_refused(store, sandbox, t, "stolen")


def test_hard_link_to_etc_passwd(store, sandbox):
    t = TarBuilder().hardlink("passwd", "/etc/passwd").bytes()
    expect_refused(store, sandbox, t, "passwd")


def test_hard_link_with_parent_traversal(store, sandbox):
    t = TarBuilder().hardlink("stolen", "../outside/secret").bytes()
    expect_refused(store, sandbox, t, "stolen")


def test_hard_link_through_a_symlink(store, sandbox):
    t = TarBuilder().symlink("link", str(sandbox.outside)).hardlink("stolen", "link/secret").bytes()
    expect_refused(store, sandbox, t, "stolen")


def test_hard_link_to_a_missing_entry(store, sandbox):
    t = TarBuilder().hardlink("h", "not-in-this-archive").bytes()
    expect_refused(store, sandbox, t, "h")


def test_hard_link_to_a_lower_layer_file(store, sandbox):
    # A hard link names another path *in the same archive*; a lower layer's file is not one.
    base = store.layers.apply(tar(F("lower-file", b"x")))
    expect_refused(store, sandbox, TarBuilder().hardlink("h", "lower-file").bytes(), "h", parent=base)


def test_hard_link_to_a_directory(store, sandbox):
    t = TarBuilder().dir("d").hardlink("h", "d").bytes()
    expect_refused(store, sandbox, t, "h")


# ----- bad whiteouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh..", "a/.wh..", "a/.wh...", ".wh.", "a/.wh.", ".wh..."])
def test_bad_whiteout_names(store, sandbox, name):
    t = TarBuilder().dir("a").file(name, b"", mode=0o600).bytes()
    expect_refused(store, sandbox, t, name)


def test_whiteout_of_dotdot_on_a_lower_layer_deletes_nothing(store, sandbox):
    base = store.layers.apply(tar(D("a"), F("a/keep", b"k"), F("top", b"t")))
    expect_refused(store, sandbox, TarBuilder().dir("a").file("a/.wh..", b"").bytes(), "a/.wh..", parent=base)
    fs = store.images.create(layer=base).fs
    assert fs.listdir("/") == ["a", "top"]


# ----- malformed streams -----------------------------------------------------------------------------


def test_truncated_in_file_content(store, sandbox):
    data = tar(F("first", b"1"), F("bigfile", b"x" * 10000))
    cut = data.index(b"x" * 100) + 3000
    expect_refused(store, sandbox, data[:cut], "bigfile")


def test_truncated_in_a_header(store, sandbox):
    data = tar(F("first", b"1"), F("second", b"2"))
    cut = 1024 + 200  # inside the second header
    expect_refused(store, sandbox, data[:cut], None)


def test_truncated_in_pax_header(store, sandbox):
    data = TarBuilder().file("x" * 200, b"data").bytes()
    expect_refused(store, sandbox, data[:600], None)


def test_truncated_gzip(store, sandbox):
    data = gzip_bytes(tar(F("a", os.urandom(50000)), F("b", b"b")))
    expect_refused(store, sandbox, data[: len(data) // 2], None)


def test_gzip_without_its_trailer(store, sandbox):
    data = gzip_bytes(tar(F("a", b"a" * 1000)))
    expect_refused(store, sandbox, data[:-8], None)


def test_gzip_magic_with_garbage(store, sandbox):
    expect_refused(store, sandbox, b"\x1f\x8b\x08\x00" + os.urandom(2000), None)


def test_truncated_zstd(store, sandbox):
    data = zstd_bytes(tar(F("a", os.urandom(50000))))
    expect_refused(store, sandbox, data[: len(data) // 2], None)


@pytest.mark.parametrize("pack", [bzip2_bytes, xz_bytes], ids=["bzip2", "xz"])
def test_truncated_bzip2_and_xz(store, sandbox, pack):
    data = pack(tar(F("a", os.urandom(50000)), F("b", b"b")))
    expect_refused(store, sandbox, data[: len(data) // 2], None)


@pytest.mark.parametrize("magic, name", [(b"BZh91AY&SY", "bzip2"), (b"\xfd7zXZ\x00", "xz")], ids=["bzip2", "xz"])
def test_bzip2_and_xz_magic_with_garbage_is_refused_naming_the_compression(store, sandbox, magic, name):
    err = expect_refused(store, sandbox, magic + os.urandom(2000), None)
    assert f"{name} stream" in str(err)


def test_garbage_is_not_a_tar(store, sandbox):
    expect_refused(store, sandbox, b"this is not a tar archive at all\n" * 100, None)


def test_bad_header_checksum(store, sandbox):
    t = TarBuilder().raw(raw_header("f", size=0, checksum=12345)).bytes()
    expect_refused(store, sandbox, t, None)


def test_non_numeric_mode_field(store, sandbox):
    t = TarBuilder().raw(raw_header("badmode", fields={"mode": b"zzzzzzz\0"})).bytes()
    expect_refused(store, sandbox, t, "badmode")


def test_sparse_file(store, sandbox):
    t = TarBuilder().raw(raw_header("sparse", type=b"S", size=0)).bytes()
    expect_refused(store, sandbox, t, "sparse")


def test_socket_or_unknown_type(store, sandbox):
    t = TarBuilder().raw(raw_header("weird", type=b"Z")).bytes()
    expect_refused(store, sandbox, t, "weird")


def test_empty_symlink_target(store, sandbox):
    t = TarBuilder().raw(raw_header("l", type=b"2", linkname=b"")).bytes()
    expect_refused(store, sandbox, t, "l")


# ----- duplicates and conflicts ----------------------------------------------------------------------


def test_duplicate_regular_files(store, sandbox):
    t = TarBuilder().file("dup", b"one").file("dup", b"two").bytes()
    expect_refused(store, sandbox, t, "dup")


def test_duplicate_file_then_directory(store, sandbox):
    t = TarBuilder().file("x", b"one").dir("x").bytes()
    expect_refused(store, sandbox, t, "x")


def test_duplicate_symlink_then_file(store, sandbox):
    t = TarBuilder().symlink("s", "target").file("s", b"x").bytes()
    expect_refused(store, sandbox, t, "s")


def test_failure_in_a_late_entry_leaves_nothing(store, sandbox):
    # Much content is written before the bad entry is met; all of it must go.
    t = TarBuilder().dir("big")
    for i in range(50):
        t.file(f"big/f{i}", os.urandom(2000))
    t.raw(raw_header("../late-escape", size=0))
    expect_refused(store, sandbox, t.bytes(), "../late-escape")


def test_failed_import_archive_leaves_no_image(store, sandbox):
    data = TarBuilder().file("ok", b"x").raw(raw_header("../bad")).bytes()
    with pytest.raises(InvalidArchive):
        store.images.import_archive(data, tag="bad:1")
    assert store.images.list() == []
    assert store.layers.list() == []
    assert os.listdir(store.root / "tmp") == []
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.get("bad:1")


def test_store_still_works_after_refusals(store, sandbox):
    for bad in (TarBuilder().raw(raw_header("../x")).bytes(), b"\x1f\x8bgarbage"):
        with pytest.raises(InvalidArchive):
            store.layers.apply(bad)
    layer = store.layers.apply(tar(F("ok", b"fine")))
    assert (Path(layer.path) / "ok").read_bytes() == b"fine"


def test_end_blocks_only_is_an_empty_layer(store):
    # Not an error: the empty layer (Docker produces it for metadata-only steps).
    layer = store.layers.apply(EOF_BLOCKS)
    assert os.listdir(layer.path) == []
