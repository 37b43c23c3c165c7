"""``Layer.tar()``: an imported layer re-exports byte for byte (tar-split), compressed streams decompress to
the same tar, and the stream reports its digests once read to the end."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile

import pytest

from support.compression import gzip_bytes, unzstd_bytes, zstd_bytes
from support.digests import sha256_digest
from support.tars import TarBuilder, read_all


def rich_tar(fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Every entry kind, odd sizes (padding), xattrs, PAX times, long names, whiteouts and markers."""
    t = TarBuilder(format=fmt)
    t.dir("./", mode=0o755)
    t.dir("etc", mode=0o755, uid=0, gid=0)
    t.file("etc/a", b"a" * 1, mode=0o644)
    t.file("etc/b", b"b" * 511)
    t.file("etc/c", b"c" * 512)
    t.file("etc/d", b"d" * 513, uid=1000, gid=1000)
    t.file("etc/big", bytes(range(256)) * 300, mode=0o600)
    t.file("etc/empty", b"")
    t.file("etc/ns", b"ns", pax={"mtime": "1600000000.987654321"})
    t.file("etc/xattr", b"x", xattrs={"user.k": "value"})
    t.symlink("etc/link", "../usr/bin/tool")
    t.hardlink("etc/hard", "etc/d")
    t.fifo("etc/fifo")
    t.dir("usr").dir("usr/bin")
    t.file("usr/bin/tool", b"#!/bin/sh\necho hi\n", mode=0o4755)
    t.file("usr/" + "L" * 150, b"long name")
    t.whiteout("usr/gone")
    t.opaque("etc")
    return t.bytes()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT], ids=["pax", "gnu", "ustar"])
def test_plain_reexport_is_byte_identical(any_store, fmt):
    if fmt == tarfile.USTAR_FORMAT:
        data = TarBuilder(format=fmt).dir("d").file("d/f", b"hello" * 200).symlink("d/l", "f").hardlink("d/h", "d/f").bytes()
    else:
        data = rich_tar(fmt)
    layer = any_store.layers.apply(data)
    out = layer.tar()
    assert read_all(out) == data
    assert out.diff_id == layer.diff_id == sha256_digest(data)


def test_reexport_read_in_small_chunks(any_store):
    data = rich_tar()
    layer = any_store.layers.apply(data)
    assert read_all(layer.tar(), chunk=100) == data
    assert read_all(layer.tar(), chunk=1) == data


def test_reexport_keeps_bytes_a_parser_would_normalise(store):
    # Non-canonical header fields (user/group names, odd spacing in numeric fields, a trailer longer
    # than two zero blocks) are kept as they were.
    t = TarBuilder(format=tarfile.GNU_FORMAT)
    ti = t.info("f", tarfile.REGTYPE, mode=0o644, uid=7, gid=8)
    ti.uname, ti.gname = "someone", "somegroup"
    t.add(ti, b"data")
    data = t.bytes() + b"\0" * 9216
    layer = store.layers.apply(data)
    assert read_all(layer.tar()) == data


def test_gzip_input_reexports_the_uncompressed_tar(any_store):
    data = rich_tar()
    layer = any_store.layers.apply(gzip_bytes(data))
    out = layer.tar()
    assert read_all(out) == data
    assert out.diff_id == sha256_digest(data)


def test_zstd_input_reexports_the_uncompressed_tar(any_store):
    data = rich_tar()
    layer = any_store.layers.apply(zstd_bytes(data))
    assert read_all(layer.tar()) == data


def test_gzip_output_decompresses_to_the_same_tar(any_store):
    data = rich_tar()
    layer = any_store.layers.apply(data)
    out = layer.tar(compression="gzip")
    blob = read_all(out, chunk=4096)
    assert blob[:2] == b"\x1f\x8b"
    assert gzip.decompress(blob) == data
    assert out.diff_id == layer.diff_id
    assert out.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert out.digest != out.diff_id


def test_zstd_output_decompresses_to_the_same_tar(any_store):
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command line tool is not installed")
    data = rich_tar()
    layer = any_store.layers.apply(data)
    out = layer.tar(compression="zstd")
    blob = read_all(out, chunk=4096)
    assert blob[:4] == b"\x28\xb5\x2f\xfd"
    assert unzstd_bytes(blob) == data
    assert out.diff_id == layer.diff_id
    assert out.digest == sha256_digest(blob)


def test_compressed_outputs_reimport_as_the_same_layer(store):
    data = rich_tar()
    layer = store.layers.apply(data)
    gz = read_all(layer.tar(compression="gzip"))
    again = store.layers.apply(io.BytesIO(gz))
    assert again == layer
    assert len(store.layers.list()) == 1


def test_digests_are_set_only_after_the_end(store):
    data = rich_tar()
    layer = store.layers.apply(data)
    out = layer.tar()
    assert out.diff_id is None and out.digest is None
    first = out.read(1000)
    assert len(first) == 1000
    assert out.diff_id is None
    rest = out.read()
    assert first + rest == data
    assert out.read() == b""
    assert out.diff_id == layer.diff_id
    assert out.digest == layer.diff_id  # uncompressed: the blob is the tar


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_digests_are_set_after_one_read_to_the_end(store, compression):
    # read() with no size reads to EOF: both digests must then be known, as after a chunked read.
    layer = store.layers.apply(rich_tar())
    out = layer.tar(compression=compression)
    blob = out.read()
    assert out.diff_id == layer.diff_id
    assert out.digest == sha256_digest(blob)


def test_stream_is_a_readable_binary_file(store):
    data = rich_tar()
    layer = store.layers.apply(data)
    out = layer.tar()
    assert out.readable()
    buf = bytearray(700)
    n = out.readinto(buf)
    assert n == 700 and bytes(buf) == data[:700]
    # usable where a file object is expected
    with tarfile.open(fileobj=layer.tar(), mode="r|") as tf:
        names = [m.name for m in tf]
    assert "etc/big" in names and "usr/.wh.gone" in names and "etc/.wh..wh..opq" in names


def test_reexport_of_a_layer_with_a_parent(store):
    base = TarBuilder().dir("usr").file("usr/gone", b"g").dir("etc").file("etc/x", b"x").bytes()
    top = rich_tar()
    l0 = store.layers.apply(base)
    l1 = store.layers.apply(top, parent=l0)
    assert read_all(l1.tar()) == top
    assert read_all(l0.tar()) == base


def test_unknown_compression_is_refused(store):
    layer = store.layers.apply(rich_tar())
    with pytest.raises(ValueError):
        read_all(layer.tar(compression="lz4"))
