"""Stores made by the first release (format 1: JSON record files) open and keep working.

The fixture was made by that release (tests/fixtures/format1/make.py), with what it reported about every
object in ``expected.json``. A writable open migrates the store to format 2 atomically; a read-only open
reads it as it is; a crash at any point of the migration leaves a store that opens and is complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ovlcore

FIXTURE = Path(__file__).parent / "fixtures" / "format1"
LEGACY_RECORDS = ("layer.json", "image.json", "container.json", "volume.json", "repositories.json")


def _describe() -> Any:
    spec = importlib.util.spec_from_file_location("format1_make", FIXTURE / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.describe


describe = _describe()
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def unpack(dest: Path) -> Path:
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xzf", str(FIXTURE / "store.tar.gz"), "-C", str(dest)], check=True)
    return dest / "store"


def files(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` with the sha256 of its content."""
    out = {}
    for top, _dirs, names in os.walk(root):
        for n in names:
            p = Path(top) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def legacy_records(root: Path) -> dict[str, str]:
    return {p: h for p, h in files(root).items() if p.endswith(LEGACY_RECORDS)}


def version(root: Path) -> int:
    return int(json.loads((root / "store.json").read_text())["version"])


def test_the_fixture_is_a_format1_store(tmp_path: Path) -> None:
    root = unpack(tmp_path)
    assert version(root) == 1
    assert not (root / "metadata.db").exists()
    assert len(legacy_records(root)) >= 10


def test_a_writable_open_migrates_and_changes_nothing_users_see(tmp_path: Path) -> None:
    root = unpack(tmp_path)
    store = ovlcore.Store(root)
    assert version(root) == 2
    assert (root / "metadata.db").is_file()
    assert legacy_records(root) == {}, "format-1 record files survived the migration"
    assert describe(store) == EXPECTED
    assert store.check(verify_digests=True).problems == []
    # Opening again does not migrate again, and a second object sees the same.
    assert describe(ovlcore.Store(root)) == EXPECTED


def test_a_migrated_store_keeps_working(tmp_path: Path) -> None:
    store = ovlcore.Store(unpack(tmp_path))
    worker = store.containers.get("worker")
    assert "A /new/after-commit" in [str(c) for c in worker.diff()]
    again = worker.commit("fixture/app:3")
    step = store.images.get("fixture/step:1")
    assert again.parent_id == step.id
    assert again.fs.read_text("/new/after-commit") == "later\n"
    assert [h.id for h in again.history()][:2] == [again.id, step.id]
    # The volumes' users are known: the named volume is in use, the unused one is not.
    with pytest.raises(ovlcore.VolumeInUse):
        store.volumes.remove("fixture_data")
    store.volumes.remove("unused_vol")
    # Removing the server (with its anonymous volume) and pruning leaves a consistent store.
    anonymous = [v.name for v in store.volumes.list() if v.anonymous]
    store.containers.remove("server", volumes=True)
    assert not any(v.name in anonymous for v in store.volumes.list())
    store.prune()
    assert store.check(verify_digests=True).problems == []
    assert store.images.get("fixture/base:1").fs.read_text("/etc/motd") == "welcome\n"


def test_a_read_only_open_reads_the_store_as_it_is(tmp_path: Path) -> None:
    root = unpack(tmp_path)
    before = files(root)
    store = ovlcore.Store(root, read_only=True)
    assert store.read_only
    assert describe(store) == EXPECTED
    with pytest.raises(PermissionError):
        store.images.tag("fixture/base:1", "nope:1")
    with pytest.raises(PermissionError):
        store.containers.get("worker").fs.write_text("/etc/hostname", "changed")
    assert version(root) == 1
    assert not (root / "metadata.db").exists()
    assert files(root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: needs an unprivileged user")
def test_a_store_this_user_may_not_write_is_read_without_migrating(tmp_path: Path) -> None:
    root = unpack(tmp_path)
    os.chmod(root, 0o555)
    try:
        store = ovlcore.Store(root)
        assert store.read_only
        assert describe(store) == EXPECTED
        assert version(root) == 1
    finally:
        os.chmod(root, 0o755)


CRASH = """
import os, signal, sys
import ovlcore._store as storage
import ovlcore._store.migrate as migrate

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

step = sys.argv[2]
if step == "while-filling":
    migrate.Writer.put_container = die
elif step == "after-the-rename":
    storage.fsync_dir = die
elif step == "after-the-switch":
    migrate.remove_files = die
import ovlcore
ovlcore.Store(sys.argv[1])
"""


@pytest.mark.parametrize("step", ["while-filling", "after-the-rename", "after-the-switch"])
def test_a_crash_mid_migration_leaves_a_complete_store(tmp_path: Path, step: str) -> None:
    root = unpack(tmp_path)
    records_before = legacy_records(root)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(root), step], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if step == "after-the-switch":
        assert version(root) == 2
    else:
        # Format 1, untouched: the first release still reads it (a database beside it is not its concern).
        assert version(root) == 1
        assert legacy_records(root) == records_before
    store = ovlcore.Store(root)
    assert version(root) == 2
    assert describe(store) == EXPECTED
    assert store.check().problems == []
    assert os.listdir(root / "tmp") == []


def test_processes_opening_a_format1_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    root = unpack(tmp_path)
    code = "import ovlcore, sys; s = ovlcore.Store(sys.argv[1]); print(len(s.images.list()))"
    children = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [c.communicate(timeout=120)[0].strip() for c in children]
    assert [c.returncode for c in children] == [0] * 4
    assert outputs == [str(len(EXPECTED["images"]))] * 4
    assert describe(ovlcore.Store(root)) == EXPECTED
