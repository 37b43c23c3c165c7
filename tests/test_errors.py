"""What reaches the caller when something fails: the caller's own exceptions (from a progress callback, a
source's ``read()``, a destination's ``write()``) unchanged; a stream cut short as ``TruncatedArchive``
(still an ``InvalidArchive``); a damaged store as ``CorruptStore``, never blamed on the input."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest

import ovlcore
from ovlcore import CorruptStore, InvalidArchive, TruncatedArchive


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BIG = os.urandom(3 << 20)  # several progress reports' worth


class Boom(Exception):
    """The caller's own exception type: nothing in ovlcore knows it."""


def failing_after(n: int) -> Callable[[int], None]:
    calls = []

    def progress(done: int) -> None:
        calls.append(done)
        if len(calls) >= n:
            raise Boom(f"stop at {done}")

    return progress


@pytest.fixture
def image(store: ovlcore.Store) -> ovlcore.Image:
    return store.images.import_archive(tar_of({"etc/motd": b"hello\n", "big": BIG}), tag="base:1")


# ----- the caller's own exceptions --------------------------------------------------------------------


def test_progress_exception_from_import_reaches_the_caller(store: ovlcore.Store) -> None:
    with pytest.raises(Boom):
        store.layers.apply(tar_of({"big": BIG}), progress=failing_after(1))
    assert store.layers.list() == []
    assert os.listdir(store.root / "tmp") == []


def test_progress_exception_from_save_and_load_reaches_the_caller(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    out = tmp_path / "a.tar"
    with pytest.raises(Boom):
        store.images.save("base:1", out, progress=failing_after(2))
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    store.images.save("base:1", out)
    other = ovlcore.Store(tmp_path / "other")
    with pytest.raises(Boom):
        other.images.load(out, progress=failing_after(3))
    assert other.images.list() == [] and other.layers.list() == []
    assert os.listdir(other.root / "tmp") == []


def test_progress_exception_from_export_commit_and_cp_reaches_the_caller(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    ctr = store.containers.create("base:1", name="c")
    with pytest.raises(Boom):
        ctr.export(tmp_path / "e.tar", progress=failing_after(1))
    ctr.fs.write_bytes("/new", BIG)
    with pytest.raises(Boom):
        ctr.commit("next:1", progress=failing_after(1))
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.get("next:1")
    with pytest.raises(Boom):
        store.cp("c:/big", str(tmp_path / "copied"), progress=failing_after(1))


class Destination(io.RawIOBase):
    def __init__(self, fail_after: int) -> None:
        self.left = fail_after

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise Boom("disk on fire")
        return len(data)


def test_destination_write_exception_reaches_the_caller(store: ovlcore.Store, image: ovlcore.Image) -> None:
    with pytest.raises(Boom, match="disk on fire"):
        store.images.save("base:1", Destination(1 << 20))
    ctr = store.containers.create("base:1")
    with pytest.raises(Boom, match="disk on fire"):
        ctr.export(Destination(1 << 20))


def test_source_read_exception_reaches_the_caller(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    buf = io.BytesIO()
    store.images.save("base:1", buf)

    class Dropped(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(buf.getvalue()[: 1 << 20])

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            chunk = self.data.read(n)
            if not chunk:
                raise ConnectionResetError(104, "Connection reset by peer")
            return chunk

    other = ovlcore.Store(tmp_path / "other")
    with pytest.raises(ConnectionResetError):
        other.images.load(Dropped())
    assert os.listdir(other.root / "tmp") == []


# ----- input cut short ----------------------------------------------------------------------------------


def test_a_layer_cut_in_its_content_is_truncated(store: ovlcore.Store) -> None:
    data = tar_of({"big": BIG})
    with pytest.raises(TruncatedArchive) as e:
        store.layers.apply(data[: len(data) // 2])
    assert isinstance(e.value, InvalidArchive) and isinstance(e.value, ValueError)
    assert "big" in str(e.value)
    assert e.value.expected == len(BIG) and e.value.got is not None and e.value.got < len(BIG)


def test_a_layer_cut_in_a_header_is_truncated(store: ovlcore.Store) -> None:
    data = tar_of({"a": b"1", "b": b"2"})
    with pytest.raises(TruncatedArchive) as e:
        store.layers.apply(data[: 1024 + 100])
    assert e.value.expected is None


def test_a_cut_archive_is_truncated(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    out = tmp_path / "a.tar"
    store.images.save("base:1", out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 2 * len(BIG) // 3])
    other = ovlcore.Store(tmp_path / "other")
    with pytest.raises(TruncatedArchive, match="truncated"):
        other.images.load(out)
    assert other.images.list() == []


# ----- a damaged store ----------------------------------------------------------------------------------


def test_a_layer_file_changed_in_size_is_a_corrupt_store(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    layer = image.layers[0]
    with open(layer.path / "etc/motd", "ab") as f:
        f.write(b"tampered\n")
    with pytest.raises(CorruptStore, match="etc/motd"):
        layer.tar().read()
    out = tmp_path / "a.tar"
    out.write_bytes(b"previous")
    with pytest.raises(CorruptStore):
        store.images.save("base:1", out)
    assert out.read_bytes() == b"previous"
    assert not isinstance(CorruptStore("x"), InvalidArchive)
    # check() reports it rather than raising.
    problems = store.check(verify_digests=True).problems
    assert [p for p in problems if layer.chain_id in p and "etc/motd" in p], problems


def test_a_layer_whose_content_no_longer_hashes_to_its_diff_id_is_a_corrupt_store(
    store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path
) -> None:
    layer = image.layers[0]
    (layer.path / "etc/motd").write_bytes(b"HELLO\n")  # same size: the replay works, the digest differs
    with pytest.raises(CorruptStore, match="diff_id"):
        store.images.save("base:1", tmp_path / "a.tar")
    assert not (tmp_path / "a.tar").exists()
    problems = store.check(verify_digests=True).problems
    assert [p for p in problems if layer.chain_id in p and "hashes to" in p], problems
