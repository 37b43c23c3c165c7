"""Containers: the seed's walkthrough, and the lifecycle rules (create, share, name, get, remove, image in
use, size)."""

from __future__ import annotations

import os

import pytest

import ovlcore
from support.diffs import assert_parents_first, diff_pairs
from support.images import BIG, SampleImages
from support.trees import compare_trees, fs_tree, snapshot


def layer_snapshots(img: ovlcore.Image) -> dict[str, object]:
    return {layer.chain_id: snapshot(layer.path) for layer in img.layers}


# --------------------------------------------------------------------------------------------------
# The walkthrough
# --------------------------------------------------------------------------------------------------


def test_walkthrough(sample: SampleImages) -> None:
    """The seed's story: a base image, a child image with two more layers, two containers sharing the
    layers, a write in one invisible to the other, a delete, diff, commit; removing the container
    leaves the image unchanged."""
    store, base, child = sample.store, sample.base, sample.child
    assert len(base.layers) == 1
    assert len(child.layers) == 3
    assert [layer.chain_id for layer in child.layers[:1]] == [base.layers[0].chain_id]
    before = layer_snapshots(child)
    image_tree = fs_tree(child.fs)

    web = store.containers.create(child, name="web")
    db = store.containers.create("child:1", name="db")
    # both containers stand on the very same layer directories
    assert web.image == db.image == child
    for c in (web, db):
        assert os.listdir(c.upper) == []
        # reading a file of the bottom layer reads the shared layer file itself
        assert c.fs.stat("/data/big.bin").st_ino == os.stat(base.layers[0].path / "data/big.bin").st_ino
        assert c.fs.stat("/opt/tool").st_ino == os.stat(child.layers[2].path / "opt/tool").st_ino
        assert compare_trees(image_tree, fs_tree(c.fs), times=True) == []

    # the child image's view: layer 2 changed motd, deleted hostname, made /usr/share/doc opaque
    assert web.fs.read_text("/etc/motd") == "welcome to the child image\n"
    assert not web.fs.exists("/etc/hostname")
    assert web.fs.listdir("/usr/share/doc") == ["c.txt"]
    assert web.fs.read_bytes("/data/big.bin") == BIG
    assert web.fs.read_text("/opt/tool") == "tool v1\n"

    # a write in one container is invisible to the other
    web.fs.write_text("/etc/motd", "web was here\n")
    web.fs.write_text("/app/new.txt", "new file\n")
    assert web.fs.read_text("/etc/motd") == "web was here\n"
    assert db.fs.read_text("/etc/motd") == "welcome to the child image\n"
    assert not db.fs.exists("/app/new.txt")

    # a delete
    web.fs.remove("/etc/passwd")
    web.fs.rmtree("/usr/share")
    assert not web.fs.exists("/etc/passwd")
    assert not web.fs.exists("/usr/share/doc/c.txt")
    assert db.fs.read_text("/etc/passwd").startswith("root:")
    assert db.fs.listdir("/usr/share/doc") == ["c.txt"]

    # diff
    want = [
        ("A", "/app/new.txt"),
        ("C", "/app"),
        ("C", "/etc"),
        ("C", "/etc/motd"),
        ("D", "/etc/passwd"),
        ("C", "/usr"),
        ("D", "/usr/share"),
    ]
    got = diff_pairs(web)
    assert sorted(got, key=lambda kp: kp[1]) == sorted(want, key=lambda kp: kp[1])
    assert_parents_first(got)
    assert diff_pairs(db) == []

    # commit: a new image with one more layer that a new container sees exactly as web sees it
    web_tree = fs_tree(web.fs)
    new = web.commit(tag="web:snapshot", message="walkthrough", author="seed <seed@example.com>")
    assert len(new.layers) == 4
    assert [layer.chain_id for layer in new.layers[:3]] == [layer.chain_id for layer in child.layers]
    assert new.history()[0].comment == "walkthrough"
    c3 = store.containers.create("web:snapshot")
    assert compare_trees(web_tree, fs_tree(c3.fs), times=True) == []
    assert diff_pairs(c3) == []

    # remove the container: its writable layer goes, the image is unchanged and still usable
    upper = web.upper
    store.containers.remove("web")
    assert not upper.exists()
    assert not web.dir.exists()
    with pytest.raises(ovlcore.ContainerNotFound):
        store.containers.get("web")
    assert layer_snapshots(child) == before
    again = store.containers.create(child)
    assert compare_trees(image_tree, fs_tree(again.fs), times=True) == []
    assert db.fs.read_text("/etc/motd") == "welcome to the child image\n"
    # the committed image does not depend on the removed container
    assert compare_trees(web_tree, fs_tree(store.images.get("web:snapshot").fs), times=True) == []


# --------------------------------------------------------------------------------------------------
# create
# --------------------------------------------------------------------------------------------------


def test_create_adds_an_empty_writable_layer_without_copying(sample: SampleImages) -> None:
    store, child = sample.store, sample.child
    before = layer_snapshots(child)
    layers_before = {layer.chain_id for layer in store.layers.list()}
    c = store.containers.create(child, labels={"role": "test"}, command=["/bin/sh", "-c", "true"])
    assert c.upper.is_dir()
    assert os.listdir(c.upper) == []
    assert c.size().rw == 0
    assert c.labels == {"role": "test"}
    assert c.image.id == child.id
    assert len(c.id) == 64 and all(ch in "0123456789abcdef" for ch in c.id)
    assert c.short_id == c.id[:12]
    assert c.name
    # no layer was added or copied, and the image's layers are untouched
    assert {layer.chain_id for layer in store.layers.list()} == layers_before
    assert layer_snapshots(child) == before
    # the store's disk usage for the container is tiny: nothing of the image was copied
    total = 0
    for dirpath, _, files in os.walk(c.dir):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    assert total < 16 * 1024


def test_many_containers_share_the_layer_dirs(sample: SampleImages) -> None:
    store, child = sample.store, sample.child
    before = layer_snapshots(child)
    cs = [store.containers.create(child) for _ in range(8)]
    assert len({c.id for c in cs}) == 8
    assert len({c.name for c in cs}) == 8
    assert len({str(c.upper) for c in cs}) == 8
    for i, c in enumerate(cs):
        for path, layer in (("/bin/sh", 0), ("/etc/motd", 1), ("/app/data/x.bin", 2)):
            assert c.fs.stat(path).st_ino == os.stat(str(child.layers[layer].path) + path).st_ino
        c.fs.write_text("/etc/motd", f"container {i}\n")
    for i, c in enumerate(cs):
        assert c.fs.read_text("/etc/motd") == f"container {i}\n"
    assert layer_snapshots(child) == before
    assert store.containers.create(child).fs.read_text("/etc/motd") == "welcome to the child image\n"


def test_names_are_unique(sample: SampleImages) -> None:
    store = sample.store
    c = store.containers.create(sample.child, name="unique")
    with pytest.raises(ovlcore.NameConflict):
        store.containers.create(sample.base, name="unique")
    assert isinstance(ovlcore.NameConflict("x"), ovlcore.errors.Conflict)
    # the failed create left nothing behind
    assert [x.id for x in store.containers.list()] == [c.id]
    # the name is free again once the container is gone
    c.remove()
    c2 = store.containers.create(sample.base, name="unique")
    assert c2.name == "unique" and c2.id != c.id


def test_get_by_name_id_and_prefix(sample: SampleImages) -> None:
    store = sample.store
    a = store.containers.create(sample.child, name="alpha")
    b = store.containers.create(sample.child, name="beta")
    for ref in ("alpha", "/alpha", a.id, a.id[:12], a.short_id, a.id[:8]):
        got = store.containers.get(ref)
        assert got.id == a.id, ref
        assert got.name == "alpha"
    assert store.containers.get(b.id[:10]).id == b.id
    with pytest.raises(ovlcore.ContainerNotFound):
        store.containers.get("gamma")
    with pytest.raises(ovlcore.ContainerNotFound):
        store.containers.get("0" * 64)  # a full-length id that no container has
    assert isinstance(ovlcore.ContainerNotFound("x"), LookupError)
    assert {c.id for c in store.containers.list()} == {a.id, b.id}


def test_remove_deletes_only_the_writable_layer(sample: SampleImages) -> None:
    store, child = sample.store, sample.child
    before = layer_snapshots(child)
    images_before = sorted(i.id for i in store.images.list())
    c = store.containers.create(child, name="doomed")
    c.fs.write_bytes("/etc/motd", b"changed")
    c.fs.rmtree("/app")
    c.fs.mkdir("/newdir")
    c.fs.chmod("/bin/sh", 0o700)
    assert os.listdir(c.upper)
    cdir = c.dir
    store.containers.remove(c.id[:12])
    assert not cdir.exists()
    assert sorted(i.id for i in store.images.list()) == images_before
    assert layer_snapshots(child) == before
    assert store.images.get("child:1").id == child.id
    fresh = store.containers.create("child:1")
    assert fresh.fs.read_text("/etc/motd") == "welcome to the child image\n"
    assert fresh.fs.listdir("/app") == ["data", "main.py"]
    with pytest.raises(ovlcore.ContainerNotFound):
        store.containers.remove("doomed")


def test_container_remove_method_and_prune(sample: SampleImages) -> None:
    store = sample.store
    a = store.containers.create(sample.child)
    b = store.containers.create(sample.base)
    a.fs.write_bytes("/x", b"12345")
    a.remove()
    assert [c.id for c in store.containers.list()] == [b.id]
    b.fs.write_bytes("/y", b"123")
    report = store.containers.prune()
    assert report.deleted == [b.id]
    assert report.space_reclaimed == 3
    assert store.containers.list() == []
    # images are still there
    assert store.images.get("child:1").id == sample.child.id


def test_image_in_use_cannot_be_removed(sample: SampleImages) -> None:
    store, child = sample.store, sample.child
    c = store.containers.create(child)
    for ref in ("child:1", child.id, child.short_id):
        with pytest.raises(ovlcore.ImageInUse):
            store.images.remove(ref)
    assert isinstance(ovlcore.ImageInUse("x"), ovlcore.errors.Conflict)
    # nothing was removed
    assert store.images.get("child:1").id == child.id
    assert c.fs.read_text("/opt/tool") == "tool v1\n"
    # a parent image's layers are used by the container too
    base_layer = sample.base.layers[0].path
    assert base_layer.is_dir()
    # force: the image loses its tag but the container keeps working
    store.images.remove("child:1", force=True)
    assert "child:1" not in [t for i in store.images.list() for t in i.tags]
    assert c.fs.read_text("/opt/tool") == "tool v1\n"
    assert c.image.id == child.id
    c.fs.write_text("/opt/tool", "tool v2\n")
    assert c.fs.read_text("/opt/tool") == "tool v2\n"
    # once the container is gone the image can go
    c.remove()
    store.images.remove(child.id)
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.get(child.id)


def test_image_removable_after_its_containers_are_removed(sample: SampleImages) -> None:
    store = sample.store
    cs = [store.containers.create(sample.child) for _ in range(3)]
    for c in cs[:-1]:
        c.remove()
    with pytest.raises(ovlcore.ImageInUse):
        store.images.remove("child:1")
    cs[-1].remove()
    out = store.images.remove("child:1")
    assert any(line.startswith("Deleted:") for line in out)
    # the base image and its layer are untouched and usable
    c = store.containers.create("base:1")
    assert c.fs.read_bytes("/data/big.bin") == BIG


# --------------------------------------------------------------------------------------------------
# size
# --------------------------------------------------------------------------------------------------


def test_size(sample: SampleImages) -> None:
    store, child = sample.store, sample.child
    c = store.containers.create(child)
    s0 = c.size()
    assert s0.rw == 0
    assert s0.virtual == child.size
    assert child.size == sum(layer.size for layer in child.layers)
    c.fs.write_bytes("/new.bin", b"x" * 1000)
    assert c.size().rw == 1000
    # copy-up of a lower file (metadata change) brings its data into the writable layer
    c.fs.chmod("/data/big.bin", 0o600)
    assert c.size().rw == 1000 + len(BIG)
    # a symlink counts its target's length; a hard link counts once
    c.fs.symlink("abc", "/lnk")
    assert c.size().rw == 1000 + len(BIG) + 3
    c.fs.link("/new.bin", "/new-link.bin")
    assert c.size().rw == 1000 + len(BIG) + 3
    # deleting lower files adds nothing (a whiteout has no content)
    c.fs.remove("/etc/passwd")
    c.fs.rmtree("/usr")
    s = c.size()
    assert s.rw == 1000 + len(BIG) + 3
    assert s.virtual == s.rw + child.size
    # ...and deleting a file of the writable layer gives its bytes back
    c.fs.remove("/new.bin")
    c.fs.remove("/new-link.bin")
    assert c.size().rw == len(BIG) + 3


def test_ambiguous_id_prefix(sample: SampleImages) -> None:
    store = sample.store
    cs = [store.containers.create(sample.base) for _ in range(17)]  # two share a first hex digit
    first: dict[str, list[str]] = {}
    for c in cs:
        first.setdefault(c.id[0], []).append(c.id)
    digit, ids = next((d, ids) for d, ids in first.items() if len(ids) > 1)
    with pytest.raises(ovlcore.AmbiguousReference):
        store.containers.get(digit)
    for cid in ids:
        assert store.containers.get(cid).id == cid


def test_two_handles_of_one_container(sample: SampleImages) -> None:
    store = sample.store
    a = store.containers.create(sample.child, name="twice")
    b = store.containers.get("twice")
    assert a == b
    assert b.fs.read_text("/etc/motd") == "welcome to the child image\n"  # b's view is loaded
    a.fs.write_text("/etc/motd", "from a\n")
    a.fs.remove("/etc/passwd")
    assert b.fs.read_text("/etc/motd") == "from a\n"
    assert not b.fs.exists("/etc/passwd")
    assert diff_pairs(a) == diff_pairs(b)


def test_removing_the_parent_image_keeps_the_container_working(sample: SampleImages) -> None:
    store = sample.store
    before = layer_snapshots(sample.child)
    c = store.containers.create(sample.child)
    try:
        store.images.remove("base:1")
    except ovlcore.errors.Conflict:
        pass  # refusing is fine too (docker: "image has dependent child images")
    assert layer_snapshots(sample.child) == before
    assert c.fs.read_bytes("/data/big.bin") == BIG
    assert store.containers.create("child:1").fs.read_text("/bin/sh").startswith("#!/fake/shell")
