"""Volume and bind mounts in a container: parsing, creation checks, pre-population, routing of every path
under a mount target, read-only mounts, nested mounts, symlinks inside mounts, and the kernel mount."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import ovlcore
from ovlcore import Mount

from support import TESTS_DIR
from support.images import PASSWD, import_image
from support.layout import upper_tree
from support.privilege import IS_ROOT, needs_root
from support.stores import open_store
from support.trees import snapshot

# ==================================================================================================
# Mount objects and Docker's syntaxes


def test_mount_defaults() -> None:
    m = Mount("/data")
    assert (m.target, m.source, m.type, m.read_only, m.nocopy) == ("/data", None, "volume", False, False)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("type=bind,src=/abs,dst=/shared,readonly", Mount("/shared", "/abs", type="bind", read_only=True)),
        ("type=bind,source=/abs,target=/shared", Mount("/shared", "/abs", type="bind")),
        ("type=bind,source=/abs,destination=/shared,ro=true", Mount("/shared", "/abs", type="bind", read_only=True)),
        ("type=bind,src=/abs,dst=/shared,readonly=false", Mount("/shared", "/abs", type="bind")),
        ("type=volume,src=my_vol,dst=/data", Mount("/data", "my_vol")),
        ("src=my_vol,dst=/data", Mount("/data", "my_vol")),
        ("type=volume,dst=/data", Mount("/data")),
        ("type=volume,src=v,dst=/data,volume-nocopy", Mount("/data", "v", nocopy=True)),
        ("type=volume,src=v,dst=/data,ro", Mount("/data", "v", read_only=True)),
    ],
)
def test_mount_parse(spec: str, expected: Mount) -> None:
    assert Mount.parse(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "type=bind,src=relative/path,dst=/shared",  # bind source must be absolute
        "type=bind,dst=/shared",  # bind needs a source
        "type=volume,src=v",  # no target
        "type=volume,src=v,dst=relative",  # target must be absolute
        "type=tmpfs,dst=/t",  # unsupported type
        "type=volume,src=v,dst=/d,bogus=1",  # unknown option
        "type=volume,src=v,dst=/",  # over the root
        "type=volume,src=../x,dst=/d",  # bad volume name
    ],
)
def test_mount_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        Mount.parse(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("my_vol:/data:ro", Mount("/data", "my_vol", read_only=True)),
        ("my_vol:/data", Mount("/data", "my_vol")),
        ("/host/dir:/data", Mount("/data", "/host/dir", type="bind")),
        ("/host/dir:/data:ro", Mount("/data", "/host/dir", type="bind", read_only=True)),
        ("/host/dir:/data:rw", Mount("/data", "/host/dir", type="bind")),
        ("/data", Mount("/data")),
        ("my_vol:/data:nocopy", Mount("/data", "my_vol", nocopy=True)),
    ],
)
def test_mount_parse_volume_short_form(spec: str, expected: Mount) -> None:
    assert Mount.parse_volume(spec) == expected


def test_mount_target_normalized() -> None:
    assert Mount("/data/").target == "/data"
    assert Mount("/a/../data/./x").target == "/data/x"
    assert Mount("//data").target == "/data"


@pytest.mark.parametrize("kwargs", [dict(target="data"), dict(target="/"), dict(target="/x", type="tmpfs"), dict(target="/x", source="rel", type="bind"), dict(target="/x", type="bind")])
def test_mount_constructor_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Mount(**kwargs)


def test_create_accepts_mount_strings(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    host = tmp_path / "h"
    host.mkdir()
    c = store.containers.create(image, mounts=[f"type=bind,src={host},dst=/shared,readonly", "v1:/vol1"])
    assert c.mounts == [Mount("/shared", str(host), type="bind", read_only=True), Mount("/vol1", "v1")]


def test_duplicate_mount_targets_rejected(store: ovlcore.Store, image: ovlcore.Image) -> None:
    with pytest.raises(ValueError):
        store.containers.create(image, mounts=[Mount("/data", "a"), Mount("/data/", "b")])
    assert store.containers.list() == []


# ==================================================================================================
# Creation checks


def test_bind_source_must_exist(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as ei:
        store.containers.create(image, name="c", mounts=[Mount("/shared", str(missing), type="bind")])
    assert str(missing) in str(ei.value)
    assert store.containers.list() == []


def test_bind_source_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Mount("/shared", "shared_mount", type="bind")


def test_volume_on_image_file_is_an_error(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    with pytest.raises((OSError, ValueError, ovlcore.OvlError)) as ei:
        any_store.containers.create(any_image, name="c", mounts=[Mount("/etc/hostname", "v")])
    assert "/etc/hostname" in str(ei.value)
    assert any_store.containers.list() == []


def test_failed_create_leaves_no_volumes_behind(store: ovlcore.Store, image: ovlcore.Image) -> None:
    """"No operation leaves a half-made object visible after an error": the volumes a failed container
    creation made for its earlier mounts must not stay behind."""
    with pytest.raises((OSError, ValueError, ovlcore.OvlError)):
        store.containers.create(image, mounts=[Mount("/data"), Mount("/newdir", "fresh_named"), Mount("/etc/hostname", "v")])
    assert store.containers.list() == []
    assert [v.name for v in store.volumes.list()] == []


def test_failed_create_bind_missing_leaves_no_volumes(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.containers.create(image, mounts=[Mount("/data"), Mount("/shared", str(tmp_path / "nope"), type="bind")])
    assert [v.name for v in store.volumes.list()] == []


# ==================================================================================================
# Pre-population


def test_empty_volume_is_filled_from_image_dir(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/data", "pre")])
    v = any_store.volumes.get("pre")
    assert sorted(os.listdir(v.mountpoint)) == ["pw", "seed.txt", "sub"]
    assert (v.mountpoint / "seed.txt").read_text() == "seed from the image\n"
    assert (v.mountpoint / "sub" / "deep.txt").read_text() == "deep\n"
    assert os.readlink(v.mountpoint / "pw") == "/etc/passwd"  # a link is copied as a link
    # The container sees the image's owner and mode, on the volume root and inside.
    st = c.fs.stat("/data")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o750)
    st = c.fs.stat("/data/seed.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    st = c.fs.stat("/data/sub")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o711)
    st = c.fs.stat("/data/sub/deep.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (42, 43, 0o600)
    # Filling the volume did not touch the writable layer.
    assert upper_tree(c) == [] and c.diff() == []


@needs_root
def test_prefilled_volume_has_native_owner_in_root_store(store: ovlcore.Store, image: ovlcore.Image) -> None:
    assert store.privilege == "root"
    store.containers.create(image, mounts=[Mount("/data", "pre")])
    mp = store.volumes.get("pre").mountpoint
    st = os.stat(mp)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o750)
    st = os.stat(mp / "seed.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)


def test_anonymous_volume_is_filled_too(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(image, mounts=[Mount("/data")])
    v = store.volumes.get(c.mounts[0].source)
    assert sorted(os.listdir(v.mountpoint)) == ["pw", "seed.txt", "sub"]


def test_nocopy_leaves_volume_empty(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/data", "nc", nocopy=True)])
    assert os.listdir(any_store.volumes.get("nc").mountpoint) == []
    assert c.fs.listdir("/data") == []
    assert not c.fs.exists("/data/seed.txt")


def test_nocopy_through_parse(store: ovlcore.Store, image: ovlcore.Image) -> None:
    store.containers.create(image, mounts=[Mount.parse("type=volume,src=nc,dst=/data,volume-nocopy")])
    assert os.listdir(store.volumes.get("nc").mountpoint) == []


def test_volume_with_data_is_never_overwritten(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    v = any_store.volumes.create("full")
    (v.mountpoint / "mine.txt").write_text("mine")
    (v.mountpoint / "seed.txt").write_text("the volume's own seed")
    c = any_store.containers.create(any_image, mounts=[Mount("/data", "full")])
    assert sorted(os.listdir(v.mountpoint)) == ["mine.txt", "seed.txt"]
    assert c.fs.read_text("/data/seed.txt") == "the volume's own seed"
    assert not c.fs.exists("/data/sub")


def test_filled_volume_not_refilled_by_second_container(store: ovlcore.Store, image: ovlcore.Image) -> None:
    a = store.containers.create(image, mounts=[Mount("/data", "v")])
    a.fs.remove("/data/seed.txt")
    b = store.containers.create(image, mounts=[Mount("/srv", "v")])
    # b mounts the (non-empty) volume elsewhere: nothing from /srv is copied, seed.txt stays deleted.
    assert sorted(b.fs.listdir("/srv")) == ["pw", "sub"]


def test_volume_on_missing_top_level_path(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/newdir", "nv")])
    assert c.fs.is_dir("/newdir")
    assert c.fs.listdir("/newdir") == []
    assert "newdir" in c.fs.listdir("/")
    c.fs.write_text("/newdir/f", "x")
    assert (any_store.volumes.get("nv").mountpoint / "f").read_text() == "x"


def test_volume_on_missing_nested_path(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/new/deeper", "nv")])
    assert c.fs.is_dir("/new/deeper")
    assert c.fs.listdir("/new/deeper") == []
    assert "deeper" in c.fs.listdir("/new")
    assert "new" in c.fs.listdir("/")
    c.fs.write_text("/new/deeper/f", "x")
    assert (any_store.volumes.get("nv").mountpoint / "f").read_text() == "x"


# ==================================================================================================
# Bind mounts


def test_bind_mount_hides_image_content(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    shared = tmp_path / "shared_mount"
    shared.mkdir()
    (shared / "host.txt").write_text("from the host")
    c = any_store.containers.create(any_image, mounts=[Mount("/shared", str(shared), type="bind")])
    assert c.fs.listdir("/shared") == ["host.txt"]
    assert not c.fs.exists("/shared/image_only.txt")
    assert c.fs.read_text("/shared/host.txt") == "from the host"
    # The host directory is never filled from the image (only volumes are).
    assert os.listdir(shared) == ["host.txt"]


def test_bind_mount_writes_land_on_host(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    shared = tmp_path / "shared_mount"
    shared.mkdir()
    c = any_store.containers.create(any_image, mounts=[Mount("/shared", str(shared), type="bind")])
    c.fs.write_text("/shared/out.txt", "written in the container")
    c.fs.mkdir("/shared/sub")
    c.fs.write_bytes("/shared/sub/b", b"\x00\x01")
    c.fs.symlink("/etc/passwd", "/shared/pwlink")
    assert (shared / "out.txt").read_text() == "written in the container"
    assert (shared / "sub" / "b").read_bytes() == b"\x00\x01"
    assert os.readlink(shared / "pwlink") == "/etc/passwd"
    c.fs.remove("/shared/out.txt")
    assert not (shared / "out.txt").exists()
    assert upper_tree(c) == [] and c.diff() == []


def test_bind_mount_of_a_file(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    f = tmp_path / "hostname"
    f.write_text("host-provided\n")
    c = store.containers.create(image, mounts=[Mount("/etc/hostname", str(f), type="bind")])
    assert c.fs.read_text("/etc/hostname") == "host-provided\n"
    c.fs.write_text("/etc/hostname", "changed\n")
    assert f.read_text() == "changed\n"
    assert upper_tree(c) == []


def test_read_only_bind(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    shared = tmp_path / "ro_src"
    shared.mkdir()
    (shared / "f").write_text("orig")
    c = store.containers.create(image, mounts=[Mount.parse(f"type=bind,src={shared},dst=/shared,readonly")])
    before = snapshot(shared)
    assert c.fs.read_text("/shared/f") == "orig"
    for op in (lambda: c.fs.write_text("/shared/f", "changed"), lambda: c.fs.mkdir("/shared/d"), lambda: c.fs.remove("/shared/f")):
        with pytest.raises(OSError) as ei:  # the exception class: test_read_only_refusals_are_permission_errors
            op()
        assert ei.value.errno == errno.EROFS
    assert snapshot(shared) == before


# ==================================================================================================
# Routing: mounts never touch the writable layer, diff, commit or export


def _mounted(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> tuple[ovlcore.Container, Path, Path]:
    shared = tmp_path / "shared_mount"
    shared.mkdir()
    c = store.containers.create(image, name="m", mounts=[Mount("/data", "my_vol"), Mount("/shared", str(shared), type="bind")])
    return c, store.volumes.get("my_vol").mountpoint, shared


def _write_everything_under_mounts(c: ovlcore.Container) -> None:
    fs = c.fs
    fs.write_text("/data/new.txt", "new in volume")
    with fs.open("/data/seed.txt", "a") as f:  # a pre-filled file: no copy-up anywhere
        f.write("appended\n")
    fs.mkdir("/data/newdir")
    fs.write_text("/data/newdir/x", "x")
    fs.chmod("/data/seed.txt", 0o600)
    fs.utime("/data/sub", (1, 1))
    fs.rename("/data/newdir/x", "/data/newdir/y")
    fs.symlink("../seed.txt", "/data/newdir/lnk")
    fs.remove("/data/pw")
    fs.rmtree("/data/sub")
    fs.write_text("/shared/host_new.txt", "to host")
    fs.mkdir("/shared/hd")
    fs.truncate("/data/new.txt", 3)


def test_writes_under_mounts_never_touch_writable_layer(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c, vol, shared = _mounted(any_store, any_image, tmp_path)
    _write_everything_under_mounts(c)
    assert upper_tree(c) == []
    assert c.diff() == []
    assert sorted(os.listdir(vol)) == ["new.txt", "newdir", "seed.txt"]
    assert (vol / "new.txt").read_text() == "new"
    assert (vol / "seed.txt").read_text() == "seed from the image\nappended\n"
    assert sorted(os.listdir(vol / "newdir")) == ["lnk", "y"]
    assert sorted(os.listdir(shared)) == ["hd", "host_new.txt"]
    # The image is unchanged.
    assert any_image.fs.read_text("/data/seed.txt") == "seed from the image\n"
    assert any_image.fs.exists("/data/sub/deep.txt")


def test_diff_lists_other_changes_but_not_mounts(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    c, _, _ = _mounted(store, image, tmp_path)
    _write_everything_under_mounts(c)
    c.fs.write_text("/etc/new.conf", "x")
    assert [str(ch) for ch in c.diff()] == ["C /etc", "A /etc/new.conf"]


def test_commit_excludes_mount_contents(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c, _, _ = _mounted(any_store, any_image, tmp_path)
    _write_everything_under_mounts(c)
    c.fs.write_text("/etc/new.conf", "x")
    img = c.commit("committed:1")
    top = img.layers[-1]
    with tarfile.open(fileobj=top.tar(), mode="r|") as t:
        names = sorted(m.name.rstrip("/") for m in t)
    assert names == ["etc", "etc/new.conf"]
    d = any_store.containers.create(img)
    assert d.fs.read_text("/data/seed.txt") == "seed from the image\n"
    assert not d.fs.exists("/data/new.txt")
    assert d.fs.exists("/data/sub/deep.txt")
    assert d.fs.listdir("/shared") == ["image_only.txt"]


def test_export_excludes_mount_contents(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path) -> None:
    c, _, _ = _mounted(any_store, any_image, tmp_path)
    _write_everything_under_mounts(c)
    buf = io.BytesIO()
    c.export(buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        members = {m.name.rstrip("/"): m for m in t.getmembers()}
    for leaked in ("data/new.txt", "data/newdir", "data/newdir/y", "shared/host_new.txt", "shared/hd"):
        assert leaked not in members
    # Whatever export shows at the mount targets comes from the image, not from the mounts.
    if "data/seed.txt" in members:
        with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
            assert t.extractfile("data/seed.txt").read() == b"seed from the image\n"
    assert "etc/passwd" in members


def test_cross_mount_rename_is_exdev_and_changes_nothing(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    c, vol, _ = _mounted(store, image, tmp_path)
    c.fs.write_text("/data/x", "x")
    for src, dst in [("/data/x", "/etc/x"), ("/etc/passwd", "/data/passwd"), ("/data/x", "/shared/x")]:
        with pytest.raises(OSError) as ei:
            c.fs.rename(src, dst)
        assert ei.value.errno == errno.EXDEV
    assert c.fs.read_text("/data/x") == "x"
    assert upper_tree(c) == []


# ==================================================================================================
# Read-only mounts


RO_WRITES = {
    "write_new": lambda fs: fs.write_text("/ro/new", "x"),
    "overwrite": lambda fs: fs.write_text("/ro/seed.txt", "x"),
    "append": lambda fs: fs.open("/ro/seed.txt", "a"),
    "open_rw": lambda fs: fs.open("/ro/seed.txt", "r+"),
    "mkdir": lambda fs: fs.mkdir("/ro/d"),
    "remove": lambda fs: fs.remove("/ro/seed.txt"),
    "rmtree": lambda fs: fs.rmtree("/ro/sub"),
    "rename": lambda fs: fs.rename("/ro/seed.txt", "/ro/s2"),
    "symlink": lambda fs: fs.symlink("x", "/ro/l"),
    "link": lambda fs: fs.link("/ro/seed.txt", "/ro/h"),
    "chmod": lambda fs: fs.chmod("/ro/seed.txt", 0o777),
    "chown": lambda fs: fs.chown("/ro/seed.txt", 7, 7),
    "utime": lambda fs: fs.utime("/ro/seed.txt", (5, 5)),
    "truncate": lambda fs: fs.truncate("/ro/seed.txt", 0),
    "setxattr": lambda fs: fs.setxattr("/ro/seed.txt", "user.k", b"v"),
    "mkfifo": lambda fs: fs.mkfifo("/ro/fifo"),
}


def _ro_container(store: ovlcore.Store, image: ovlcore.Image) -> tuple[ovlcore.Container, Path]:
    c = store.containers.create(image, mounts=[Mount("/ro", "rov", read_only=True)])
    # /ro is not in the image, so the volume starts empty: fill it through another, writable mount.
    store.containers.create(image, mounts=[Mount("/data", "rov")])
    return c, store.volumes.get("rov").mountpoint


@pytest.mark.parametrize("op", sorted(RO_WRITES))
def test_read_only_volume_refuses_writes_with_erofs(any_store: ovlcore.Store, any_image: ovlcore.Image, op: str) -> None:
    c, mp = _ro_container(any_store, any_image)
    before = snapshot(mp)
    assert c.fs.read_text("/ro/seed.txt") == "seed from the image\n"
    with pytest.raises(OSError) as ei:
        RO_WRITES[op](c.fs)
    assert ei.value.errno == errno.EROFS
    assert ei.value.filename is not None and str(ei.value.filename).startswith("/ro")
    assert snapshot(mp) == before
    assert upper_tree(c) == []


def test_read_only_refusals_are_permission_errors(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    """API: "PermissionError for read-only mounts" (errno EROFS, checked above for every operation)."""
    c, _ = _ro_container(store, image)
    bind = tmp_path / "rob"
    bind.mkdir()
    (bind / "f").write_text("f")
    b = store.containers.create(image, mounts=[Mount("/rob", str(bind), type="bind", read_only=True)])
    wrong = {}
    for op, fn in {"bind_write": lambda: b.fs.write_text("/rob/f", "x"), "bind_mkdir": lambda: b.fs.mkdir("/rob/d")}.items():
        try:
            fn()
        except PermissionError:
            continue
        except OSError as e:
            wrong[op] = type(e).__name__
    for op, fn in sorted(RO_WRITES.items()):
        try:
            fn(c.fs)
        except PermissionError:
            continue
        except OSError as e:
            wrong[op] = type(e).__name__
        else:
            wrong[op] = "no error"
    assert wrong == {}, f"not PermissionError: {wrong}"


def test_read_only_errors_are_oserror_with_erofs(store: ovlcore.Store, image: ovlcore.Image) -> None:
    """The errno part of the contract, independently of the exception class."""
    c = store.containers.create(image, mounts=[Mount("/ro", "rov", read_only=True)])
    with pytest.raises(OSError) as ei:
        c.fs.write_text("/ro/new", "x")
    assert ei.value.errno == errno.EROFS


def test_read_only_mount_target_itself(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(image, mounts=[Mount("/data", "rov", read_only=True)])
    for op in (lambda: c.fs.chmod("/data", 0o777), lambda: c.fs.rmtree("/data"), lambda: c.fs.rename("/data", "/data2")):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno in (errno.EROFS, errno.EBUSY)
    assert c.fs.read_text("/data/seed.txt") == "seed from the image\n"
    assert upper_tree(c) == []


# ==================================================================================================
# Nested mounts


@pytest.mark.parametrize("order", ["outer_first", "inner_first"])
def test_nested_mounts_resolve_to_deepest(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path, order: str) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    mounts = [Mount("/data", "outer"), Mount("/data/inner", "innervol"), Mount("/data/inner/deepest", str(bind), type="bind")]
    if order == "inner_first":
        mounts.reverse()
    c = any_store.containers.create(any_image, mounts=mounts)
    outer = any_store.volumes.get("outer").mountpoint
    inner = any_store.volumes.get("innervol").mountpoint
    c.fs.write_text("/data/o.txt", "outer")
    c.fs.write_text("/data/inner/i.txt", "inner")
    c.fs.write_text("/data/inner/deepest/b.txt", "bind")
    assert (outer / "o.txt").read_text() == "outer"
    assert (inner / "i.txt").read_text() == "inner"
    assert (bind / "b.txt").read_text() == "bind"
    assert not (outer / "inner" / "i.txt").exists()
    assert not (inner / "deepest" / "b.txt").exists()
    assert "inner" in c.fs.listdir("/data")
    assert "deepest" in c.fs.listdir("/data/inner")
    assert c.fs.listdir("/data/inner/deepest") == ["b.txt"]
    assert upper_tree(c) == []


def test_nested_read_only_inside_writable_and_vice_versa(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(
        image,
        mounts=[Mount("/a", "a"), Mount("/a/ro", "aro", read_only=True), Mount("/b", "b", read_only=True), Mount("/b/rw", "brw")],
    )
    c.fs.write_text("/a/x", "x")
    with pytest.raises(OSError) as ei:
        c.fs.write_text("/a/ro/x", "x")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        c.fs.write_text("/b/x", "x")
    assert ei.value.errno == errno.EROFS
    c.fs.write_text("/b/rw/x", "x")
    assert (store.volumes.get("brw").mountpoint / "x").read_text() == "x"


def test_volume_nested_in_bind_mount(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    bind = tmp_path / "b"
    bind.mkdir()
    c = store.containers.create(image, mounts=[Mount("/shared", str(bind), type="bind"), Mount("/shared/v", "nv")])
    c.fs.write_text("/shared/v/f", "vol")
    assert (store.volumes.get("nv").mountpoint / "f").read_text() == "vol"
    assert not (bind / "v" / "f").exists()


# ==================================================================================================
# Symlinks inside mounts resolve inside the container's root


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    d = tmp_path / "host"
    d.mkdir()
    p = d / "host_secret"
    p.write_text("CANARY: host secret\n")
    return p


def test_volume_link_to_etc_passwd_means_containers(any_store: ovlcore.Store, any_image: ovlcore.Image) -> None:
    c = any_store.containers.create(any_image, mounts=[Mount("/data", "v")])
    # /data/pw came from the image into the volume: a link to /etc/passwd.
    assert c.fs.read_text("/data/pw") == PASSWD
    with open("/etc/passwd") as f:
        assert f.read() != PASSWD  # the host's is different, so the check above means something


def test_links_in_volume_and_bind_never_reach_host(any_store: ovlcore.Store, any_image: ovlcore.Image, tmp_path: Path, canary: Path) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    os.symlink(str(canary), bind / "abs")
    os.symlink("../../../../../../../../../..", bind / "up")
    os.symlink(str(canary.parent), bind / "hostdir")
    c = any_store.containers.create(any_image, mounts=[Mount("/data", "v"), Mount("/shared", str(bind), type="bind")])
    vol = any_store.volumes.get("v").mountpoint
    os.symlink(str(canary), vol / "abs")
    os.symlink("/", vol / "root")
    outside = snapshot(tmp_path, exclude=[any_store.root])

    for p in ("/data/abs", "/shared/abs", "/shared/hostdir/host_secret"):
        with pytest.raises(FileNotFoundError):
            c.fs.read_bytes(p)
    with pytest.raises(FileNotFoundError):
        c.fs.listdir("/shared/hostdir")
    # ..-chains stop at the container's root
    assert c.fs.read_text("/shared/up/etc/passwd") == PASSWD
    assert c.fs.read_text("/data/root/etc/passwd") == PASSWD
    assert sorted(c.fs.listdir("/shared/up")) == sorted(c.fs.listdir("/"))
    # stat through the links
    with pytest.raises(FileNotFoundError):
        c.fs.stat("/data/abs")
    # writes through the links
    for p in ("/data/abs", "/shared/abs", "/shared/hostdir/new"):
        with pytest.raises(OSError):
            c.fs.write_text(p, "PWNED")
    # Once the container has that path, a write through the link goes to the container's copy.
    c.fs.makedirs(str(canary.parent))
    c.fs.write_text("/data/abs", "in the container")
    assert c.fs.read_text(str(canary)) == "in the container"
    assert c.fs.read_text("/shared/abs") == "in the container"
    assert snapshot(tmp_path, exclude=[any_store.root]) == outside
    assert canary.read_text() == "CANARY: host secret\n"


# ==================================================================================================
# The kernel mount: volumes and binds mounted at their targets


def _is_mount(p: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(p) for line in f)


@needs_root
def test_kernel_mount_binds_volumes_and_sources(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "host.txt").write_text("host")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "r.txt").write_text("read only")
    c = store.containers.create(
        image,
        mounts=[Mount("/data", "kv"), Mount("/shared", str(rw), type="bind"), Mount("/ro", str(ro), type="bind", read_only=True), Mount("/rovol", "rv", read_only=True)],
    )
    vol = store.volumes.get("kv").mountpoint
    ro_before = snapshot(ro)
    with c.mount() as where:
        assert sorted(os.listdir(where / "data")) == ["pw", "seed.txt", "sub"]
        assert (where / "shared" / "host.txt").read_text() == "host"
        assert not (where / "shared" / "image_only.txt").exists()
        assert (where / "ro" / "r.txt").read_text() == "read only"
        (where / "data" / "k.txt").write_text("via kernel")
        (where / "shared" / "k.txt").write_text("via kernel")
        for p in (where / "ro" / "x", where / "rovol" / "x"):
            with pytest.raises(OSError) as ei:
                p.write_text("x")
            assert ei.value.errno == errno.EROFS
        assert (where / "etc" / "passwd").read_text() == PASSWD
    assert not _is_mount(where)
    assert (vol / "k.txt").read_text() == "via kernel"
    assert (rw / "k.txt").read_text() == "via kernel"
    assert snapshot(ro) == ro_before
    assert c.diff() == []
    assert "data/k.txt" not in upper_tree(c)


@needs_root
def test_kernel_mount_of_rootless_convention_store(tmp_path: Path) -> None:
    """A store made with the rootless convention (opaque markers in ``user.overlay.opaque``) mounts with
    ``userxattr``; as root that must work too, with its volumes."""
    s = open_store(tmp_path / "rstore", "rootless")
    img = import_image(s)
    c = s.containers.create(img, mounts=[Mount("/data", "rv")])
    c.fs.rmtree("/srv/dir")
    c.fs.mkdir("/srv/dir")  # opaque directory
    c.fs.write_text("/srv/dir/only.txt", "only")
    with c.mount() as where:
        assert (where / "etc" / "passwd").read_text() == PASSWD
        assert sorted(os.listdir(where / "srv" / "dir")) == ["only.txt"]
        assert (where / "data" / "seed.txt").read_text() == "seed from the image\n"


@needs_root
@pytest.mark.parametrize("order", ["outer_first", "inner_first"])
def test_kernel_mount_nested_mounts(store: ovlcore.Store, image: ovlcore.Image, order: str) -> None:
    mounts = [Mount("/data", "outer"), Mount("/data/inner", "innervol")]
    if order == "inner_first":
        mounts.reverse()
    c = store.containers.create(image, mounts=mounts)
    with c.mount() as where:
        (where / "data" / "inner" / "i.txt").write_text("inner")
    assert (store.volumes.get("innervol").mountpoint / "i.txt").read_text() == "inner"


@needs_root
def test_kernel_mount_bind_of_a_file(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> None:
    f = tmp_path / "cfg"
    f.write_text("host cfg\n")
    g = tmp_path / "hostname"
    g.write_text("bound hostname\n")
    c = store.containers.create(image, mounts=[Mount("/etc/app.cfg", str(f), type="bind"), Mount("/etc/hostname", str(g), type="bind")])
    assert c.fs.read_text("/etc/app.cfg") == "host cfg\n"
    with c.mount() as where:
        assert (where / "etc" / "hostname").read_text() == "bound hostname\n"
        assert (where / "etc" / "app.cfg").read_text() == "host cfg\n"


@needs_root
def test_kernel_mount_leaves_no_mountpoint_in_diff(store: ovlcore.Store, image: ovlcore.Image) -> None:
    """Docker creates mount points in the init layer: ``docker diff`` never shows them."""
    c = store.containers.create(image, mounts=[Mount("/newvol/deep", "nv")])
    with c.mount():
        pass
    assert c.diff() == []
    d = c.commit("after-mount:1")
    e = store.containers.create(d)
    assert not e.fs.exists("/newvol")


# ==================================================================================================
# A mount source that disappears after creation


@pytest.fixture
def orphaned(store: ovlcore.Store, image: ovlcore.Image, tmp_path: Path) -> tuple[ovlcore.Store, Path]:
    """A container whose bind source was deleted on the host, and one whose volume was force-removed."""
    bind = tmp_path / "gone"
    bind.mkdir()
    a = store.containers.create(image, name="lost_bind", mounts=[Mount("/shared", str(bind), type="bind")])
    a.fs.write_text("/etc/changed", "x")
    b = store.containers.create(image, name="lost_vol", mounts=[Mount("/data", "doomed")])
    b.fs.write_text("/etc/changed", "x")
    shutil.rmtree(bind)
    store.volumes.remove("doomed", force=True)
    return store, bind


def test_store_wide_commands_survive_a_vanished_mount_source(orphaned: tuple[ovlcore.Store, Path]) -> None:
    """One container's deleted bind source must not break ``system df`` for the whole store."""
    store, _ = orphaned
    rows = {r.type: r for r in store.df()}
    assert rows["Containers"].total == 2


@pytest.mark.parametrize("name", ["lost_bind", "lost_vol"])
def test_container_outside_the_mount_works_without_its_source(orphaned: tuple[ovlcore.Store, Path], name: str) -> None:
    """diff/size/reading the layers do not depend on the mount sources (Docker's ``diff`` works on a
    container whose bind source is gone)."""
    store, _ = orphaned
    c = store.containers.get(name)
    assert [str(ch) for ch in c.diff()] == ["C /etc", "A /etc/changed"]
    assert c.size().rw > 0
    assert c.fs.read_text("/etc/changed") == "x"


def test_vanished_bind_source_error_names_it(orphaned: tuple[ovlcore.Store, Path]) -> None:
    store, bind = orphaned
    c = store.containers.get("lost_bind")
    with pytest.raises(FileNotFoundError) as ei:
        c.fs.listdir("/shared")
    assert str(bind) in str(ei.value) or ei.value.filename in (str(bind), "/shared")
    c.remove()
    store.containers.get("lost_vol").remove(volumes=True)
    assert store.containers.list() == []


# ==================================================================================================
# The kernel mount must resolve mount targets inside the container (CVE-2021-30465 class)


_ESCAPE_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import ovlcore
from ovlcore import Mount
from support.images import BASE_ENTRIES, import_image
from support.tars import L
tmp, kind = sys.argv[2], sys.argv[3]
hostside = os.path.join(tmp, "hostside")
os.mkdir(hostside)
bind = os.path.join(tmp, "bindsrc")
os.mkdir(bind)
s = ovlcore.Store(os.path.join(tmp, "store"))
img = import_image(s, BASE_ENTRIES + [L("links/to_host", hostside)], tag="esc:1")  # /links/to_root -> / is in BASE_ENTRIES
target = {"link": "/links/to_host/escape", "root": "/links/to_root" + hostside + "/escape"}[kind]
mounts = [Mount(target, "ev"), Mount(target + "2", bind, type="bind")]
c = s.containers.create(img, mounts=mounts)
(s.volumes.get("ev").mountpoint / "marker").write_text("volume")
result = {}
try:
    with c.mount() as where:
        result["host_entries"] = sorted(os.listdir(hostside))
        result["host_mounts"] = [l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[4].startswith(hostside)]
except OSError as e:
    result["error"] = repr(e)
result["after"] = sorted(os.listdir(hostside))
print(json.dumps(result))
"""


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to contain the probe's mounts")
@pytest.mark.parametrize("kind", ["link", "root"])
def test_kernel_mount_target_through_container_symlink_stays_inside(tmp_path: Path, kind: str) -> None:
    """A mount target reached through a symlink of the image (``/links/to_host -> /some/host/dir``,
    ``/links/to_root -> /``) must be resolved inside the container's root, as Docker does
    (FollowSymlinkInScope): ``mount()`` may neither create directories nor mount anything on the host
    path the link names. The probe runs in its own mount namespace so a failure cannot leak a mount."""
    script = tmp_path / "probe.py"
    script.write_text(_ESCAPE_CHILD)
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(script), str(TESTS_DIR), str(tmp_path), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    import json

    r = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert r.get("host_mounts", []) == [], f"mount() mounted onto the host: {r}"
    assert r.get("host_entries", []) == [], f"mount() created entries on the host: {r}"
    assert r["after"] == [], r


@pytest.mark.skipif(IS_ROOT, reason="checks the error an unprivileged user gets")
def test_kernel_mount_unprivileged_raises_permission_error(store: ovlcore.Store, image: ovlcore.Image) -> None:
    c = store.containers.create(image, mounts=[Mount("/data", "v")])
    with pytest.raises(PermissionError):
        with c.mount(driver="kernel"):
            pass
    assert not (c.dir / "mounted").exists()
    c.fs.write_text("/etc/after", "writable again")  # no stale "mounted" marker blocks the API
