"""``store.images``: import_archive, create, get (tags, ids, prefixes), list, tag, remove, prune, and the
``Image`` object (id, config, created, layers, size, history, fs)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

import ovlcore
from ovlcore.errors import AmbiguousReference, ImageInUse, ImageNotFound, InvalidReference

from support.compression import gzip_bytes, zstd_bytes
from support.digests import sha256_digest
from support.tars import D, F, W, tar

ROOTFS = tar(
    D("bin"),
    F("bin/sh", b"#!shell" * 10),
    D("etc"),
    F("etc/os-release", b"ID=test\n"),
)


def layer_tar(name: str, data: bytes = b"data") -> bytes:
    return tar(D("app"), F(f"app/{name}", data))


def derive(store: ovlcore.Store, parent: ovlcore.Image, tar: bytes, **kw) -> ovlcore.Image:
    layer = store.layers.apply(tar, parent=parent.layers[-1] if parent.layers else None)
    return store.images.create(layer=layer, parent=parent, **kw)


# ----- import_archive --------------------------------------------------------------------------------


class TestImportArchive:
    def test_config_rootfs_and_history(self, store):
        before = datetime.now(timezone.utc)
        img = store.images.import_archive(ROOTFS, tag="base:1", message="initial import")
        cfg = img.config
        assert cfg["rootfs"] == {"type": "layers", "diff_ids": [sha256_digest(ROOTFS)]}
        assert cfg["os"] == "linux" and cfg["architecture"]
        assert len(cfg["history"]) == 1
        h = cfg["history"][0]
        assert h["comment"] == "initial import"
        assert not h.get("empty_layer", False)
        assert before - timedelta(seconds=1) <= img.created <= datetime.now(timezone.utc) + timedelta(seconds=1)
        assert img.created.tzinfo is not None and img.created.utcoffset() == timedelta(0)
        assert h["created"] == cfg["created"]

    def test_id_is_sha256_of_the_config_bytes(self, store):
        img = store.images.import_archive(ROOTFS)
        raw = (store.root / "images" / img.id.removeprefix("sha256:") / "config.json").read_bytes()
        assert img.id == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert json.loads(raw) == img.config
        assert img.short_id == img.id[7:19]
        assert len(img.short_id) == 12

    def test_changes_edit_the_config(self, store):
        img = store.images.import_archive(
            ROOTFS,
            changes=["ENV A=1", 'CMD ["sh"]', 'ENV B="two words"', "WORKDIR /srv", "USER nobody", "EXPOSE 80", "LABEL k=v"],
        )
        c = img.config["config"]
        assert c["Env"] == ["A=1", "B=two words"]
        assert c["Cmd"] == ["sh"]
        assert c["WorkingDir"] == "/srv"
        assert c["User"] == "nobody"
        assert c["ExposedPorts"] == {"80/tcp": {}}
        assert c["Labels"] == {"k": "v"}

    def test_shell_form_cmd(self, store):
        img = store.images.import_archive(ROOTFS, changes=["CMD echo hi"])
        assert img.config["config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]

    def test_bad_change_fails_before_anything_is_made(self, store):
        with pytest.raises(ValueError):
            store.images.import_archive(ROOTFS, changes=["FROBNICATE x"])
        assert store.images.list() == [] and store.layers.list() == []

    @pytest.mark.parametrize("how", ["bytes", "path", "file", "chunks", "gzip", "zstd"])
    def test_sources(self, store, tmp_path, how):
        if how == "bytes":
            src = ROOTFS
        elif how == "path":
            src = tmp_path / "rootfs.tar"
            src.write_bytes(ROOTFS)
        elif how == "file":
            src = io.BytesIO(ROOTFS)
        elif how == "chunks":
            src = iter([ROOTFS[:100], ROOTFS[100:1500], ROOTFS[1500:]])
        elif how == "gzip":
            src = gzip_bytes(ROOTFS)
        else:
            src = zstd_bytes(ROOTFS)
        img = store.images.import_archive(src)
        assert img.config["rootfs"]["diff_ids"] == [sha256_digest(ROOTFS)]
        assert img.fs.read_bytes("/etc/os-release") == b"ID=test\n"

    def test_one_layer(self, store):
        img = store.images.import_archive(ROOTFS)
        assert len(img.layers) == 1
        assert img.layers[0].diff_id == sha256_digest(ROOTFS)
        assert img.layers[0].parent is None

    def test_same_archive_twice_shares_the_layer(self, store):
        a = store.images.import_archive(ROOTFS, message="a")
        b = store.images.import_archive(ROOTFS, message="b")
        assert a.id != b.id
        assert a.layers[0].path == b.layers[0].path
        assert len(store.layers.list()) == 1

    def test_invalid_tag_is_refused_before_import(self, store):
        with pytest.raises(InvalidReference):
            store.images.import_archive(ROOTFS, tag="Bad Name")
        assert store.layers.list() == []


# ----- tags and references ---------------------------------------------------------------------------


class TestReferences:
    def test_name_means_latest(self, store):
        img = store.images.import_archive(ROOTFS, tag="alpine")
        assert img.tags == ["alpine:latest"]
        assert store.images.get("alpine") == img
        assert store.images.get("alpine:latest") == img

    def test_get_by_name_tag(self, store):
        a = store.images.import_archive(ROOTFS, tag="repo/app:1.0")
        b = store.images.import_archive(layer_tar("x"), tag="repo/app:2.0")
        assert store.images.get("repo/app:1.0") == a
        assert store.images.get("repo/app:2.0") == b
        with pytest.raises(ImageNotFound):
            store.images.get("repo/app")  # :latest does not exist

    def test_registry_host_with_port(self, store):
        img = store.images.import_archive(ROOTFS, tag="localhost:5000/team/app:v1")
        assert store.images.get("localhost:5000/team/app:v1") == img
        assert img.tags == ["localhost:5000/team/app:v1"]

    def test_get_by_full_id_and_hex(self, store):
        img = store.images.import_archive(ROOTFS)
        assert store.images.get(img.id) == img
        assert store.images.get(img.id.removeprefix("sha256:")) == img

    @pytest.mark.parametrize("n", [4, 5, 12, 20])
    def test_get_by_unique_prefix(self, store, n):
        img = store.images.import_archive(ROOTFS)
        hexid = img.id.removeprefix("sha256:")
        assert store.images.get(hexid[:n]) == img
        assert store.images.get("sha256:" + hexid[:n]) == img

    def test_prefix_shorter_than_4_is_not_an_id(self, store):
        img = store.images.import_archive(ROOTFS)
        with pytest.raises((ImageNotFound, InvalidReference)):
            store.images.get(img.id[7:10])
        with pytest.raises(InvalidReference):
            store.images.get("sha256:" + img.id[7:10])

    def test_ambiguous_prefix(self, store):
        seen: dict[str, str] = {}
        for i in range(3000):
            img = store.images.create(layer=None, comment=f"image {i}")
            p = img.id[7:11]
            if p in seen and seen[p] != img.id:
                break
            seen[p] = img.id
        else:
            pytest.fail("no two image ids shared a 4-digit prefix")
        with pytest.raises(AmbiguousReference) as ei:
            store.images.get(p)
        assert isinstance(ei.value, InvalidReference) and isinstance(ei.value, ValueError)
        with pytest.raises(AmbiguousReference):
            store.images.get("sha256:" + p)
        # a longer prefix tells them apart
        assert store.images.get(img.id[7:40]) == img

    def test_a_tag_wins_over_an_id_prefix(self, store):
        # Docker resolves a reference as a name first.
        by_id = store.images.import_archive(ROOTFS)
        prefix = by_id.id[7:13]
        by_tag = store.images.import_archive(layer_tar("t"), tag=prefix)
        assert store.images.get(prefix) == by_tag
        assert store.images.get("sha256:" + prefix) == by_id

    def test_remove_by_prefix_untags_and_deletes(self, store):
        img = store.images.import_archive(ROOTFS, tag="one")
        out = store.images.remove(img.id[7:15])
        assert out == ["Untagged: one:latest", f"Deleted: {img.id}"]
        assert store.images.list() == []

    def test_unknown_references(self, store):
        store.images.import_archive(ROOTFS, tag="present")
        for ref in ("absent", "absent:tag", "present:other", "sha256:" + "f" * 64, "ffffffff", "present@sha256:" + "a" * 64):
            with pytest.raises(ImageNotFound) as ei:
                store.images.get(ref)
            assert isinstance(ei.value, LookupError)

    @pytest.mark.parametrize(
        "ref",
        ["", "UPPER", "has space", "name:", ":tag", "name:-bad", "name:" + "t" * 129, "a//b", "-lead",
         "name@sha256:abc", "name@md5:" + "a" * 32, "sha256:xyz", "sha256:"],
    )
    def test_invalid_references(self, store, ref):
        store.images.import_archive(ROOTFS, tag="present")
        with pytest.raises(InvalidReference) as ei:
            store.images.get(ref)
        assert isinstance(ei.value, ValueError)

    @pytest.mark.parametrize("ref", ["UPPER", "bad name", "x:", "a//b"])
    def test_invalid_tags_are_refused_by_tag(self, store, ref):
        img = store.images.import_archive(ROOTFS)
        with pytest.raises(InvalidReference):
            store.images.tag(img, ref)
        assert img.tags == []

    def test_tag_adds_and_moves_tags(self, store):
        a = store.images.import_archive(ROOTFS, tag="a")
        b = store.images.import_archive(layer_tar("b"))
        store.images.tag("a", "second:v1")
        assert sorted(store.images.get(a.id).tags) == ["a:latest", "second:v1"]
        store.images.tag(b.id, "a")  # moves a:latest to b
        assert store.images.get("a") == b
        assert store.images.get(a.id).tags == ["second:v1"]
        b.tag("third")
        assert sorted(store.images.get(b.id).tags) == ["a:latest", "third:latest"]

    def test_tag_of_a_missing_image(self, store):
        with pytest.raises(ImageNotFound):
            store.images.tag("missing:1", "new")
        assert store.images.list() == []

    def test_list_newest_first(self, store):
        imgs = [store.images.import_archive(layer_tar(str(i)), tag=f"img{i}") for i in range(3)]
        listed = store.images.list()
        assert [i.id for i in listed] == [i.id for i in reversed(imgs)]


# ----- remove and prune ------------------------------------------------------------------------------


class TestRemove:
    def test_untag_when_other_tags_remain(self, store):
        img = store.images.import_archive(ROOTFS, tag="one")
        store.images.tag(img, "two")
        out = store.images.remove("one")
        assert out == ["Untagged: one:latest"]
        assert store.images.get(img.id).tags == ["two:latest"]
        assert img.layers[0].path.is_dir()

    def test_delete_with_last_tag_and_free_the_layer(self, store):
        img = store.images.import_archive(ROOTFS, tag="only")
        path = img.layers[0].path
        out = store.images.remove("only")
        assert "Untagged: only:latest" in out and f"Deleted: {img.id}" in out
        with pytest.raises(ImageNotFound):
            store.images.get(img.id)
        assert store.images.list() == []
        assert store.layers.list() == []
        assert not path.exists()
        assert os.listdir(store.root / "trash") == []

    def test_remove_by_id_with_several_tags_needs_force(self, store):
        img = store.images.import_archive(ROOTFS, tag="one")
        store.images.tag(img, "two")
        with pytest.raises(ImageInUse):
            store.images.remove(img.id)
        assert sorted(store.images.get(img.id).tags) == ["one:latest", "two:latest"]
        store.images.remove(img.id, force=True)
        assert store.images.list() == []
        with pytest.raises(ImageNotFound):
            store.images.get("one")

    def test_remove_untagged_by_id(self, store):
        img = store.images.import_archive(ROOTFS)
        assert store.images.remove(img.short_id) == [f"Deleted: {img.id}"]
        assert store.layers.list() == []

    def test_image_remove_method(self, store):
        img = store.images.import_archive(ROOTFS, tag="x")
        img.remove()
        assert store.images.list() == []

    def test_shared_layers_survive(self, store):
        base = store.images.import_archive(ROOTFS, tag="base")
        child = derive(store, base, layer_tar("c"), comment="child")
        store.images.tag(child, "child")
        base_layer = base.layers[0]
        store.images.remove("base")
        # the child still uses the base layer
        assert base_layer.path.is_dir()
        assert store.images.get("child").fs.read_bytes("/bin/sh") == b"#!shell" * 10
        assert store.images.get("child").layers[0].path == base_layer.path

    def test_layer_shared_by_two_imports_is_freed_with_the_last_one(self, store):
        a = store.images.import_archive(ROOTFS, tag="a", message="first")
        b = store.images.import_archive(ROOTFS, tag="b", message="second")
        assert a.layers[0].path == b.layers[0].path
        path = a.layers[0].path
        store.images.remove("a")
        assert store.images.get("b").fs.read_bytes("/etc/os-release") == b"ID=test\n"
        assert [layer.chain_id for layer in store.layers.list()] == [b.layers[0].chain_id]
        store.images.remove("b")
        assert store.layers.list() == []
        assert not path.exists()

    def test_removing_the_child_keeps_the_parent_image_and_layers(self, store):
        base = store.images.import_archive(ROOTFS, tag="base")
        child = derive(store, base, layer_tar("c"))
        store.images.tag(child, "child")
        child_top = child.layers[-1]
        store.images.remove("child")
        with pytest.raises(ImageNotFound):
            store.images.get(child.id)
        assert store.images.get("base").fs.read_bytes("/bin/sh") == b"#!shell" * 10
        # the top layer was made by layers.apply, which keeps it until layers.remove
        assert {layer.chain_id for layer in store.layers.list()} == {base.layers[0].chain_id, child_top.chain_id}
        store.layers.remove(child_top.chain_id)
        assert not child_top.path.exists()
        assert store.images.get("base").layers[0].path.is_dir()

    def test_remove_unknown(self, store):
        with pytest.raises(ImageNotFound):
            store.images.remove("nothing:here")

    def test_prune_removes_dangling_images_only(self, store):
        tagged = store.images.import_archive(ROOTFS, tag="keep")
        dangling = store.images.import_archive(layer_tar("d"))
        dangling_size = dangling.size
        report = store.images.prune()
        assert dangling.id in report.deleted
        assert tagged.id not in report.deleted
        assert report.space_reclaimed == dangling_size
        assert [i.id for i in store.images.list()] == [tagged.id]
        assert [layer.chain_id for layer in store.layers.list()] == [tagged.layers[0].chain_id]

    def test_prune_keeps_layers_shared_with_kept_images(self, store):
        keep = store.images.import_archive(ROOTFS, tag="keep", message="kept")
        store.images.import_archive(ROOTFS, message="dangling, same layer")
        store.images.prune()
        assert [i.id for i in store.images.list()] == [keep.id]
        assert keep.layers[0].path.is_dir()

    def test_prune_keeps_untagged_parents_of_other_images(self, store):
        # Docker's dangling images are untagged images no other image is built on; an untagged
        # parent of a tagged image is an intermediate image, kept (its id stays in the history).
        base = store.images.import_archive(ROOTFS)
        child = derive(store, base, layer_tar("c"), tag="child")
        report = store.images.prune()
        assert base.id not in report.deleted
        assert store.images.get(base.id) == base
        assert [e.id for e in store.images.get("child").history()] == [child.id, base.id]

    def test_prune_all(self, store):
        store.images.import_archive(ROOTFS, tag="keep")
        store.images.prune(all=True)
        assert store.images.list() == []
        assert store.layers.list() == []


# ----- create (derived images) -----------------------------------------------------------------------


class TestCreate:
    def test_inherits_config_and_appends_layer_and_history(self, store):
        base = store.images.import_archive(ROOTFS, tag="base", changes=["ENV A=1", 'CMD ["sh"]'])
        child = derive(store, base, layer_tar("x"), created_by="/bin/sh -c make", comment="build", author="Ann <a@x>",
                       changes=["ENV B=2"], tag="child:1")
        cfg = child.config
        assert cfg["config"]["Env"] == ["A=1", "B=2"]
        assert cfg["config"]["Cmd"] == ["sh"]
        assert cfg["rootfs"]["diff_ids"] == base.config["rootfs"]["diff_ids"] + [sha256_digest(layer_tar("x"))]
        assert cfg["history"][:-1] == base.config["history"]
        last = cfg["history"][-1]
        assert last["created_by"] == "/bin/sh -c make"
        assert last["comment"] == "build"
        assert last["author"] == "Ann <a@x>"
        assert cfg["author"] == "Ann <a@x>"
        assert child.tags == ["child:1"]
        # the parent is unchanged
        assert store.images.get("base").config == base.config

    def test_lower_layers_are_the_very_same_directories(self, store):
        base = store.images.import_archive(ROOTFS)
        mid = derive(store, base, layer_tar("m"))
        top = derive(store, mid, layer_tar("t"))
        assert [l.chain_id for l in top.layers[:2]] == [l.chain_id for l in mid.layers]
        for a, b in zip(top.layers[:2], mid.layers):
            assert a.path == b.path
            assert os.path.samefile(a.path, b.path)
        assert os.path.samefile(top.layers[0].path, base.layers[0].path)
        # one directory per layer in the store, nothing copied
        assert len(os.listdir(store.root / "layers")) == 3
        assert len(store.layers.list()) == 3

    def test_child_view_merges_all_layers(self, store):
        base = store.images.import_archive(ROOTFS)
        child = derive(store, base, tar(D("etc"), W("etc/os-release"), F("etc/new", b"n")))
        assert child.fs.listdir("/etc") == ["new"]
        assert base.fs.listdir("/etc") == ["os-release"]

    def test_layer_must_sit_on_the_parents_top_layer(self, store):
        base = store.images.import_archive(ROOTFS)
        stray = store.layers.apply(layer_tar("stray"))  # a base layer, not on top of `base`
        with pytest.raises(ValueError):
            store.images.create(layer=stray, parent=base)
        other = store.layers.apply(layer_tar("o"), parent=store.layers.apply(layer_tar("p")))
        with pytest.raises(ValueError):
            store.images.create(layer=other, parent=base)
        with pytest.raises(ValueError):
            store.images.create(layer=other, parent=None)  # it sits on a layer: a parent image is needed
        assert len(store.images.list()) == 1

    def test_config_only_step(self, store):
        base = store.images.import_archive(ROOTFS)
        child = store.images.create(layer=None, parent=base, created_by="/bin/sh -c #(nop)  ENV X=1", changes=["ENV X=1"])
        assert child.config["rootfs"]["diff_ids"] == base.config["rootfs"]["diff_ids"]
        assert child.config["history"][-1]["empty_layer"] is True
        assert child.layers == base.layers
        assert child.size == base.size

    def test_parent_by_reference(self, store):
        store.images.import_archive(ROOTFS, tag="base")
        base = store.images.get("base")
        layer = store.layers.apply(layer_tar("x"), parent=base.layers[-1])
        child = store.images.create(layer=layer, parent="base")
        assert child.layers[0] == base.layers[0]


# ----- Image properties ------------------------------------------------------------------------------


class TestImageProperties:
    def test_size_is_all_layers(self, store):
        base = store.images.import_archive(ROOTFS)
        child = derive(store, base, layer_tar("x", b"y" * 1234))
        assert base.size == len(b"#!shell" * 10) + len(b"ID=test\n")
        assert child.size == base.size + 1234
        assert child.size == sum(l.size for l in child.layers)

    def test_layers_bottom_first(self, store):
        base = store.images.import_archive(ROOTFS)
        child = derive(store, base, layer_tar("x"))
        assert [l.diff_id for l in child.layers] == child.config["rootfs"]["diff_ids"]
        assert child.layers[1].parent == child.layers[0]

    def test_history_newest_first_with_ids_sizes_and_missing(self, store):
        base = store.images.import_archive(ROOTFS, tag="base", message="imported")
        mid = derive(store, base, layer_tar("m", b"m" * 100), created_by="step mid", comment="c-mid", tag="mid")
        cfg_step = store.images.create(layer=None, parent=mid, created_by="step env", changes=["ENV Q=1"])
        top = derive(store, cfg_step, tar(F("t", b"t" * 7)), created_by="step top")
        h = top.history()
        assert [e.created_by for e in h] == ["step top", "step env", "step mid", ""]
        assert [e.id for e in h] == [top.id, cfg_step.id, mid.id, base.id]
        assert [e.size for e in h] == [7, 0, 100, base.size]
        assert [e.empty_layer for e in h] == [False, True, False, False]
        assert h[2].comment == "c-mid" and h[3].comment == "imported"
        assert h[2].tags == ["mid:latest"]
        assert all(e.created is not None and e.created.tzinfo is not None for e in h)
        assert h[0].created >= h[-1].created
        # Without the local images for the lower steps, their ids are unknown.
        store.images.remove(cfg_step.id)
        h2 = store.images.get(top.id).history()
        assert [e.id for e in h2] == [top.id, "<missing>", "<missing>", "<missing>"]
        assert [e.size for e in h2] == [7, 0, 100, base.size]

    def test_image_fs_is_read_only(self, store):
        img = store.images.import_archive(ROOTFS)
        for mode in ("w", "wb", "a", "r+", "x"):
            with pytest.raises(PermissionError) as ei:
                img.fs.open("/etc/os-release", mode)
            assert ei.value.errno == errno.EROFS
            assert ei.value.filename == "/etc/os-release"
        assert img.fs.read_bytes("/etc/os-release") == b"ID=test\n"

    def test_image_fs_write_methods_raise_erofs(self, store):
        # API.md lists these ContainerFS methods; on an image's read-only view each raises EROFS
        # (PermissionError) naming the path, and changes nothing.
        img = store.images.import_archive(ROOTFS)
        calls = {
            "write_bytes": lambda fs: fs.write_bytes("/new", b"x"),
            "write_text": lambda fs: fs.write_text("/new", "x"),
            "mkdir": lambda fs: fs.mkdir("/new"),
            "remove": lambda fs: fs.remove("/etc/os-release"),
            "unlink": lambda fs: fs.unlink("/etc/os-release"),
            "rmdir": lambda fs: fs.rmdir("/etc"),
            "rmtree": lambda fs: fs.rmtree("/etc"),
            "rename": lambda fs: fs.rename("/etc/os-release", "/etc/x"),
            "symlink": lambda fs: fs.symlink("/x", "/new"),
            "link": lambda fs: fs.link("/etc/os-release", "/new"),
            "chmod": lambda fs: fs.chmod("/etc/os-release", 0o600),
            "chown": lambda fs: fs.chown("/etc/os-release", 1, 1),
            "utime": lambda fs: fs.utime("/etc/os-release"),
            "truncate": lambda fs: fs.truncate("/etc/os-release", 0),
            "setxattr": lambda fs: fs.setxattr("/etc/os-release", "user.x", b"1"),
            "removexattr": lambda fs: fs.removexattr("/etc/os-release", "user.x"),
        }
        wrong = {}
        for name, call in calls.items():
            try:
                call(img.fs)
            except PermissionError as e:
                if e.errno != errno.EROFS:
                    wrong[name] = f"errno {e.errno}"
            except Exception as e:  # noqa: BLE001
                wrong[name] = f"{type(e).__name__}: {e}"
            else:
                wrong[name] = "no error"
        assert wrong == {}
        assert img.fs.listdir("/") == ["bin", "etc"]
        assert img.fs.read_bytes("/etc/os-release") == b"ID=test\n"

    def test_images_are_equal_by_id(self, store):
        img = store.images.import_archive(ROOTFS, tag="x")
        assert store.images.get("x") == img
        assert hash(store.images.get("x")) == hash(img)
        assert img.config is not img.config  # a copy: editing it cannot change the image
        c = img.config
        c["config"]["Env"] = ["HACKED=1"]
        assert "Env" not in store.images.get("x").config["config"]
