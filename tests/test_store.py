"""``ovlcore.Store`` (root, driver, privilege, context manager, sharing a root) and the error classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ovlcore
from ovlcore import errors

from support.privilege import IS_ROOT
from support.tars import F, tar


def test_root_is_created_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = ovlcore.Store("rel/store")
    assert s.root == tmp_path / "rel" / "store"
    assert s.root.is_absolute() and s.root.is_dir()
    assert isinstance(s.root, Path)


def test_default_root_from_ovlcore_root(tmp_path, monkeypatch):
    monkeypatch.setenv("OVLCORE_ROOT", str(tmp_path / "from-env"))
    assert ovlcore.Store().root == tmp_path / "from-env"


def test_default_root_from_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("OVLCORE_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert ovlcore.Store().root == tmp_path / "xdg" / "ovlcore"


def test_default_root_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("OVLCORE_ROOT", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ovlcore.Store().root == tmp_path / "home" / ".local" / "share" / "ovlcore"


def test_driver(tmp_path):
    assert ovlcore.Store(tmp_path / "a").driver == "userspace"
    assert ovlcore.Store(tmp_path / "b", driver="userspace").driver == "userspace"
    with pytest.raises(ValueError):
        ovlcore.Store(tmp_path / "c", driver="btrfs")


def test_context_manager(tmp_path):
    with ovlcore.Store(tmp_path / "s") as s:
        assert isinstance(s, ovlcore.Store)
        s.layers.apply(tar(F("x", b"x")))


def test_default_privilege_follows_the_user(store):
    assert store.privilege == ("root" if IS_ROOT else "rootless")


def test_two_store_objects_share_one_root(sandbox):
    a = ovlcore.Store(sandbox.root)
    b = ovlcore.Store(sandbox.root)
    img = a.images.import_archive(tar(F("x", b"shared")), tag="shared")
    assert b.images.get("shared") == img
    assert b.images.get("shared").fs.read_bytes("/x") == b"shared"
    b.images.remove("shared")
    assert a.images.list() == []


def test_another_process_sees_the_store(sandbox):
    a = ovlcore.Store(sandbox.root)
    a.images.import_archive(tar(F("x", b"from parent")), tag="p")
    code = (
        "import ovlcore, sys\n"
        f"s = ovlcore.Store({str(sandbox.root)!r})\n"
        "sys.stdout.write(s.images.get('p').fs.read_text('/x'))\n"
        "s.images.import_archive(iter([open(sys.argv[1], 'rb').read()]), tag='child')\n"
    )
    tarfile_path = sandbox.base / "c.tar"
    tarfile_path.write_bytes(tar(F("y", b"from child")))
    out = subprocess.run([sys.executable, "-c", code, str(tarfile_path)], capture_output=True, text=True, check=True)
    assert out.stdout == "from parent"
    assert a.images.get("child").fs.read_bytes("/y") == b"from child"


def test_reopen_removes_staging_left_by_a_crash(sandbox):
    s = ovlcore.Store(sandbox.root)
    # what a killed import leaves: a staging directory whose lock nobody holds
    debris = s.root / "tmp" / ("ab" * 16)
    (debris / "diff").mkdir(parents=True)
    (debris / "diff" / "half-written").write_bytes(b"x")
    (s.root / "tmp" / (("ab" * 16) + ".lock")).write_bytes(b"")
    ovlcore.Store(sandbox.root)
    assert os.listdir(s.root / "tmp") == []


def test_store_prune_removes_unreferenced_layers(store):
    kept = store.images.import_archive(tar(F("k", b"k")), tag="kept")
    loose = store.layers.apply(tar(F("l", b"loose")))  # kept by apply until removed or pruned
    report = store.prune()
    assert loose.chain_id.removeprefix("sha256:") in report.deleted or loose.chain_id in report.deleted
    assert report.space_reclaimed >= len(b"loose")
    assert [layer.chain_id for layer in store.layers.list()] == [kept.layers[0].chain_id]
    assert store.images.get("kept").fs.read_bytes("/k") == b"k"


# ----- errors ----------------------------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(errors.NotFound, errors.OvlError) and issubclass(errors.NotFound, LookupError)
    for cls in (errors.ImageNotFound, errors.ContainerNotFound, errors.VolumeNotFound, errors.LayerNotFound):
        assert issubclass(cls, errors.NotFound)
    for cls in (errors.NameConflict, errors.ImageInUse, errors.VolumeInUse):
        assert issubclass(cls, errors.Conflict) and issubclass(cls, errors.OvlError)
    assert issubclass(errors.InvalidArchive, errors.OvlError) and issubclass(errors.InvalidArchive, ValueError)
    assert issubclass(errors.InvalidReference, errors.OvlError) and issubclass(errors.InvalidReference, ValueError)
    assert issubclass(errors.AmbiguousReference, errors.InvalidReference)
    assert not issubclass(errors.OvlError, OSError)


def test_errors_exported_from_package():
    for name in errors.__all__:
        assert getattr(ovlcore, name) is getattr(errors, name)


def test_public_names():
    for name in ("Store", "Image", "Images", "Layer", "Layers", "ContainerFS", "DirEntry", "HistoryEntry", "PruneReport", "__version__"):
        assert hasattr(ovlcore, name), name
    assert isinstance(ovlcore.__version__, str) and ovlcore.__version__
