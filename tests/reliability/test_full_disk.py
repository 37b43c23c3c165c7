"""A full file system and a read-only one: clear errors, nothing half-made, and the store works again."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import ovlcore

from support.stores import leftovers
from support.tars import D, F, tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB ext4 file system, loop-mounted."""
    image = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(48 << 20)
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"loop mount refused: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_fails_cleanly_and_recovers(small_fs: Path) -> None:
    root = small_fs / "store"
    store = ovlcore.Store(root)
    base = store.images.import_archive(io.BytesIO(tar(D("etc"), F("etc/a", b"a"), F("big/blob", os.urandom(4 << 20)))), tag="base:1")
    ctr = store.containers.create(base, name="c")
    made: list[str] = []
    failures: dict[str, OSError] = {}

    def attempt(what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except OSError as e:
            assert e.errno in (errno.ENOSPC, errno.EDQUOT), f"{what}: unexpected error {e!r}"
            failures.setdefault(what, e)

    for i in range(40):
        images_before = {img.id for img in store.images.list()}
        attempt("import", lambda: made.append(store.images.import_archive(io.BytesIO(tar(F(f"f{i}", os.urandom(6 << 20)))), tag=f"fill:{i}").id))
        attempt("write", lambda: ctr.fs.write_bytes(f"/w{i}", os.urandom(3 << 20)))
        attempt("copy-up", lambda: ctr.fs.open("/big/blob", "ab").close())
        attempt("commit", lambda: made.append(ctr.commit(f"commit:{i}").id))
        attempt("container", lambda: store.containers.create(base, mounts=[ovlcore.Mount("/big", None)]))
        # Whatever failed left nothing behind, and every visible object is whole.
        assert leftovers(root) == []
        assert store.check().problems == []
        new = {img.id for img in store.images.list()} - images_before
        for image_id in new:
            for layer in store.images.get(image_id).layers:
                assert layer.path.is_dir()
        if {"import", "write", "commit"} <= failures.keys():
            break
    assert "import" in failures, "the file system never filled up"
    msg = str(failures["import"])
    assert "No space left" in msg or "quota" in msg.lower()

    # Free space: the store works again.
    for image_id in made:
        try:
            store.images.remove(image_id, force=True)
        except (ovlcore.ImageNotFound, ovlcore.ImageInUse):
            pass
    for c in store.containers.list():
        if c.name != "c":
            store.containers.remove(c.id, volumes=True)
    store.containers.remove("c")
    store.prune()
    again = store.images.import_archive(io.BytesIO(tar(F("ok", b"works again"))), tag="again:1")
    assert again.fs.read_text("/ok") == "works again"
    assert store.check(verify_digests=True).problems == []


def test_read_only_store_gives_clear_errors(small_fs: Path) -> None:
    root = small_fs / "store"
    store = ovlcore.Store(root)
    base = store.images.import_archive(io.BytesIO(tar(D("etc"), F("etc/a", b"a"))), tag="base:1")
    ctr = store.containers.create(base, name="c")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(OSError) as e:
            store.images.import_archive(io.BytesIO(tar(F("x", b"x"))), tag="nope:1")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e2:
            ctr.fs.write_text("/etc/a", "changed")
        assert e2.value.errno == errno.EROFS
        assert ctr.fs.read_text("/etc/a") == "a"  # reading still works
        assert [i.id for i in store.images.list()] == [base.id]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    store = ovlcore.Store(root)
    assert store.check().problems == []
    assert store.containers.get("c").fs.read_text("/etc/a") == "a"
