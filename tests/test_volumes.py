"""Volumes: store-managed directories (``volumes/<name>/_data``) that outlive containers."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ovlcore
from ovlcore import Mount


HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ----- create / get / list -----


def test_create_named_volume(any_store: ovlcore.Store) -> None:
    before = datetime.now(timezone.utc)
    v = any_store.volumes.create("my_vol", labels={"tier": "db", "empty": ""})
    assert v.name == "my_vol"
    assert v.anonymous is False
    assert v.labels == {"tier": "db", "empty": ""}
    assert v.created.tzinfo is not None
    assert before - timedelta(seconds=2) <= v.created <= datetime.now(timezone.utc) + timedelta(seconds=2)
    # Docker's layout: volumes/<name>/_data
    assert v.mountpoint == any_store.root / "volumes" / "my_vol" / "_data"
    assert v.mountpoint.is_dir()
    assert os.listdir(v.mountpoint) == []


def test_create_anonymous_volume(any_store: ovlcore.Store) -> None:
    v = any_store.volumes.create()
    assert HEX64.match(v.name), v.name
    assert v.anonymous is True
    assert v.labels == {}
    assert v.mountpoint.is_dir()
    w = any_store.volumes.create()
    assert w.name != v.name
    assert {x.name for x in any_store.volumes.list()} == {v.name, w.name}


def test_create_existing_name_returns_it_and_keeps_data(store: ovlcore.Store) -> None:
    v = store.volumes.create("keep", labels={"a": "1"})
    (v.mountpoint / "f").write_text("data")
    again = store.volumes.create("keep")
    assert again == v
    assert (again.mountpoint / "f").read_text() == "data"
    assert again.labels == {"a": "1"}


def test_get_and_list(any_store: ovlcore.Store) -> None:
    a = any_store.volumes.create("alpha", labels={"x": "y"})
    b = any_store.volumes.create("beta")
    got = any_store.volumes.get("alpha")
    assert got == a and got.labels == {"x": "y"} and got.mountpoint == a.mountpoint
    assert got.created == a.created
    names = [v.name for v in any_store.volumes.list()]
    assert sorted(names) == ["alpha", "beta"]
    assert any_store.volumes.get("beta") == b


def test_volumes_persist_across_store_instances(store: ovlcore.Store) -> None:
    store.volumes.create("persist", labels={"k": "v"})
    other = ovlcore.Store(store.root)
    v = other.volumes.get("persist")
    assert v.labels == {"k": "v"} and not v.anonymous


def test_get_missing_volume(store: ovlcore.Store) -> None:
    with pytest.raises(ovlcore.VolumeNotFound) as ei:
        store.volumes.get("nope")
    assert "nope" in str(ei.value)
    assert isinstance(ei.value, LookupError)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".", ""])
def test_bad_volume_names_never_reach_outside(store: ovlcore.Store, tmp_path: Path, bad: str) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises((ovlcore.InvalidReference, ValueError)):
        store.volumes.create(bad)
    with pytest.raises((ovlcore.VolumeNotFound, ovlcore.InvalidReference)):
        store.volumes.get(bad)
    assert sorted(os.listdir(tmp_path)) == before
    assert store.volumes.list() == []


def test_volume_name_with_leading_slash_is_not_a_host_path(store: ovlcore.Store, image: ovlcore.Image) -> None:
    """``check_name`` accepts a leading ``/`` (container names allow it), but a volume named ``/x`` must
    neither be created at the host's ``/x`` nor anywhere outside the store."""
    import secrets
    import shutil

    evil = f"/ovlcore-t56-{secrets.token_hex(6)}"
    try:
        try:
            v = store.volumes.create(evil)
        except (ovlcore.InvalidReference, ValueError):
            v = None
        assert not os.path.lexists(evil), f"volumes.create({evil!r}) created {evil} on the host"
        if v is not None:
            assert str(v.mountpoint).startswith(str(store.root) + "/")
        try:
            store.containers.create(image, mounts=[Mount("/x", evil + "m")])
        except (ovlcore.InvalidReference, ValueError):
            pass
        assert not os.path.lexists(evil + "m"), f"a volume mount with source {evil + 'm'!r} created it on the host"
    finally:
        for p in (evil, evil + "m"):
            if os.path.lexists(p):
                shutil.rmtree(p)


# ----- remove -----


def test_remove_volume_deletes_data(any_store: ovlcore.Store) -> None:
    v = any_store.volumes.create("gone")
    (v.mountpoint / "file").write_text("x")
    (v.mountpoint / "d").mkdir()
    any_store.volumes.remove("gone")
    assert not (any_store.root / "volumes" / "gone").exists()
    assert any_store.volumes.list() == []
    with pytest.raises(ovlcore.VolumeNotFound):
        any_store.volumes.get("gone")
    with pytest.raises(ovlcore.VolumeNotFound):
        any_store.volumes.remove("gone")


def test_remove_in_use_needs_force(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    any_store.volumes.create("busy")
    any_store.containers.create(any_image, name="user1", mounts=[Mount("/data", "busy")])
    with pytest.raises(ovlcore.VolumeInUse) as ei:
        any_store.volumes.remove("busy")
    assert "busy" in str(ei.value) and "user1" in str(ei.value)
    assert isinstance(ei.value, ovlcore.Conflict)
    assert any_store.volumes.get("busy").mountpoint.is_dir()
    any_store.volumes.remove("busy", force=True)
    with pytest.raises(ovlcore.VolumeNotFound):
        any_store.volumes.get("busy")


def test_volume_removable_once_container_is_gone(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(image, mounts=[Mount("/data", "v")])
    with pytest.raises(ovlcore.VolumeInUse):
        store.volumes.remove("v")
    c.remove()
    store.volumes.remove("v")
    assert store.volumes.list() == []


def test_volume_object_remove(store: ovlcore.Store) -> None:
    v = store.volumes.create("obj")
    v.remove()
    assert store.volumes.list() == []


# ----- prune -----


def test_prune_removes_only_unused_anonymous(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    named = any_store.volumes.create("named")
    anon = any_store.volumes.create()
    (anon.mountpoint / "blob").write_bytes(b"x" * 10000)
    used_anon_ctr = any_store.containers.create(any_image, mounts=[Mount("/data")])
    used_anon = used_anon_ctr.mounts[0].source
    assert used_anon is not None and any_store.volumes.get(used_anon).anonymous

    r = any_store.volumes.prune()
    assert r.deleted == [anon.name]
    assert r.space_reclaimed >= 10000
    names = {v.name for v in any_store.volumes.list()}
    assert names == {named.name, used_anon}


def test_prune_all_removes_unused_named_too(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    any_store.volumes.create("unused_named")
    any_store.volumes.create("used_named")
    anon = any_store.volumes.create()
    any_store.containers.create(any_image, mounts=[Mount("/data", "used_named")])
    r = any_store.volumes.prune(all=True)
    assert sorted(r.deleted) == sorted(["unused_named", anon.name])
    assert [v.name for v in any_store.volumes.list()] == ["used_named"]


def test_prune_on_empty_store(store: ovlcore.Store) -> None:
    r = store.volumes.prune()
    assert r.deleted == [] and r.space_reclaimed == 0


# ----- volumes referenced by mounts -----


def test_mount_creates_missing_named_volume(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    with pytest.raises(ovlcore.VolumeNotFound):
        any_store.volumes.get("auto")
    c = any_store.containers.create(any_image, mounts=[Mount("/newdir", "auto")])
    v = any_store.volumes.get("auto")
    assert v.anonymous is False
    assert c.mounts == [Mount("/newdir", "auto")]


def test_mount_without_source_makes_anonymous_volume(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/newdir")])
    (m,) = c.mounts
    assert m.type == "volume" and m.source is not None and HEX64.match(m.source)
    v = any_store.volumes.get(m.source)
    assert v.anonymous
    c.fs.write_text("/newdir/f", "in anon")
    assert (v.mountpoint / "f").read_text() == "in anon"


def test_named_volume_survives_container_removal(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, name="c", mounts=[Mount("/data", "my_vol")])
    c.fs.write_text("/data/kept.txt", "kept")
    any_store.containers.remove("c", volumes=True)
    v = any_store.volumes.get("my_vol")
    assert (v.mountpoint / "kept.txt").read_text() == "kept"
    # A new container sees the data (and the volume is not re-filled from the image).
    d = any_store.containers.create(any_image, mounts=[Mount("/data", "my_vol")])
    assert d.fs.read_text("/data/kept.txt") == "kept"


def test_remove_with_volumes_removes_anonymous_only(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/data"), Mount("/named", "nv")])
    anon = c.mounts[0].source
    assert anon is not None
    anon_dir = any_store.volumes.get(anon).mountpoint.parent
    c.remove(volumes=True)
    with pytest.raises(ovlcore.VolumeNotFound):
        any_store.volumes.get(anon)
    assert not anon_dir.exists()
    assert any_store.volumes.get("nv")


def test_remove_without_volumes_keeps_anonymous(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(image, mounts=[Mount("/data")])
    anon = c.mounts[0].source
    assert anon is not None
    c.remove()
    assert store.volumes.get(anon).anonymous
    assert store.volumes.prune().deleted == [anon]


def test_remove_volumes_spares_anonymous_volume_still_used_elsewhere(store: ovlcore.Store, image: ovlcore.Image) -> None:
    a = store.containers.create(image, name="a", mounts=[Mount("/data")])
    anon = a.mounts[0].source
    assert anon is not None
    store.containers.create(image, name="b", mounts=[Mount("/data", anon)])
    a.remove(volumes=True)
    assert store.volumes.get(anon)


def test_store_prune_removes_unused_anonymous_volumes(store: ovlcore.Store, image: ovlcore.Image) -> None:
    anon = store.volumes.create()
    store.volumes.create("named")
    r = store.prune()
    assert anon.name in r.deleted
    assert [v.name for v in store.volumes.list()] == ["named"]


def test_df_counts_volumes(store: ovlcore.Store, image: ovlcore.Image) -> None:
    used = store.volumes.create("used")
    (used.mountpoint / "a").write_bytes(b"a" * 5000)
    unused = store.volumes.create("unused")
    (unused.mountpoint / "b").write_bytes(b"b" * 7000)
    store.containers.create(image, mounts=[Mount("/data", "used")])
    rows = {r.type: r for r in store.df()}
    v = rows["Local Volumes"]
    assert v.total == 2 and v.active == 1
    assert v.size >= 12000
    assert 7000 <= v.reclaimable < v.size
