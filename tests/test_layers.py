"""``store.layers``: apply (sources, compression, identity), the layer-import rules of the OCI layer format
(whiteouts, opaque directories, metadata, links, devices, long names), and get/list/remove."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading

import pytest

import ovlcore
from ovlcore.errors import Conflict, InvalidReference, LayerNotFound

from support.compression import gzip_bytes, zstd_bytes
from support.digests import chain_id, sha256_digest
from support.images import image_chain
from support.layout import is_opaque, is_whiteout
from support.privilege import IS_ROOT, needs_root
from support.tars import FIXED_MTIME, D, F, L, O, TarBuilder, W, tar

BASE = tar(
    D("etc"),
    F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    F("etc/hosts", b"127.0.0.1 localhost\n"),
    D("usr"),
    D("usr/lib"),
    F("usr/lib/libc.so", b"\x7fELF" + b"\0" * 100),
    D("var"),
    F("var/log", b"log\n"),
)


def apply_view(store: ovlcore.Store, *tars: bytes) -> ovlcore.ContainerFS:
    """Apply ``tars`` as a stack (bottom first) and return the merged read-only view of it."""
    return image_chain(store, list(tars)).fs


# ----- sources, identity -------------------------------------------------------------------------


class TestApplySources:
    def test_bytes(self, store):
        layer = store.layers.apply(BASE)
        assert layer.diff_id == sha256_digest(BASE)

    def test_path_and_pathlike(self, store, tmp_path):
        p = tmp_path / "layer.tar"
        p.write_bytes(BASE)
        assert store.layers.apply(p).diff_id == sha256_digest(BASE)
        assert store.layers.apply(str(p)).diff_id == sha256_digest(BASE)

    def test_binary_file_object(self, store):
        assert store.layers.apply(io.BytesIO(BASE)).diff_id == sha256_digest(BASE)

    def test_iterable_of_chunks(self, store):
        chunks = (BASE[i : i + 777] for i in range(0, len(BASE), 777))
        assert store.layers.apply(chunks).diff_id == sha256_digest(BASE)

    def test_gzip_input_is_detected_and_diff_id_is_of_the_uncompressed_tar(self, store):
        layer = store.layers.apply(gzip_bytes(BASE))
        assert layer.diff_id == sha256_digest(BASE)

    def test_zstd_input_is_detected_and_diff_id_is_of_the_uncompressed_tar(self, store):
        layer = store.layers.apply(zstd_bytes(BASE))
        assert layer.diff_id == sha256_digest(BASE)

    def test_multi_member_gzip(self, store):
        # pigz and concatenated gzip files: several members form one stream.
        half = len(BASE) // 2
        layer = store.layers.apply(gzip_bytes(BASE[:half]) + gzip_bytes(BASE[half:]))
        assert layer.diff_id == sha256_digest(BASE)

    def test_content_is_the_same_whatever_the_compression(self, store):
        plain = store.layers.apply(BASE)
        gz = store.layers.apply(gzip_bytes(BASE))
        assert gz.chain_id == plain.chain_id
        assert (plain.path / "etc" / "passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"


class Trickle(io.RawIOBase):
    """A raw stream returning at most ``n`` bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes, n: int) -> None:
        self._b = io.BytesIO(data)
        self._n = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        d = self._b.read(min(len(buf), self._n))
        buf[: len(d)] = d
        return len(d)


class TestShortReadsAndFailingSources:
    @pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
    @pytest.mark.parametrize("n", [1, 3, 1000])
    def test_short_reads(self, store, compression, n):
        data = {"plain": lambda b: b, "gzip": gzip_bytes, "zstd": zstd_bytes}[compression](BASE)
        layer = store.layers.apply(Trickle(data, n))
        assert layer.diff_id == sha256_digest(BASE)

    def test_chunks_of_one_byte_first(self, store):
        data = gzip_bytes(BASE)
        assert store.layers.apply(iter([data[:1], data[1:2], data[2:]])).diff_id == sha256_digest(BASE)

    def test_error_raised_by_the_source_propagates(self, store):
        # A failing source (a dropped connection) is not a malformed archive: its own exception
        # reaches the caller, and nothing is left behind.
        def chunks():
            yield BASE[:1024]
            raise ConnectionResetError(104, "Connection reset by peer")

        with pytest.raises(ConnectionResetError):
            store.layers.apply(chunks())
        assert store.layers.list() == []
        assert os.listdir(store.root / "tmp") == []

    def test_non_bytes_chunks_are_a_type_error(self, store):
        with pytest.raises(TypeError):
            store.layers.apply(["not", "bytes"])
        assert store.layers.list() == []


class TestIdentity:
    def test_diff_id_is_sha256_of_uncompressed_tar(self, store):
        t = tar(F("a", b"x" * 10000))
        assert store.layers.apply(t).diff_id == sha256_digest(t)

    def test_diff_id_covers_bytes_after_end_of_archive(self, store):
        # Padding after the end-of-archive blocks is part of the layer stream and of its digest.
        t = tar(F("a", b"x")) + b"\0" * 8192
        assert store.layers.apply(t).diff_id == sha256_digest(t)

    def test_same_tar_twice_is_the_same_layer(self, store):
        a = store.layers.apply(BASE)
        b = store.layers.apply(io.BytesIO(BASE))
        assert a == b and a.chain_id == b.chain_id
        assert a.path == b.path
        assert [x.chain_id for x in store.layers.list()] == [a.chain_id]
        assert os.listdir(store.root / "tmp") == []

    def test_chain_id_of_a_base_layer_is_its_diff_id(self, store):
        layer = store.layers.apply(BASE)
        assert layer.chain_id == layer.diff_id
        assert layer.parent is None

    def test_chain_id_formula(self, store):
        l0 = store.layers.apply(BASE)
        t1 = tar(F("one", b"1"))
        t2 = tar(F("two", b"2"))
        l1 = store.layers.apply(t1, parent=l0)
        l2 = store.layers.apply(t2, parent=l1)
        assert l1.chain_id == chain_id(l0.chain_id, sha256_digest(t1))
        assert l2.chain_id == chain_id(l1.chain_id, sha256_digest(t2))
        assert l2.parent == l1 and l1.parent == l0
        assert l2.parent.parent.chain_id == l0.chain_id

    def test_same_diff_on_different_parents_gives_different_layers(self, store):
        t = tar(F("x", b"x"))
        bottom = store.layers.apply(t)
        on_base = store.layers.apply(t, parent=store.layers.apply(BASE))
        assert bottom.diff_id == on_base.diff_id
        assert bottom.chain_id != on_base.chain_id
        assert len({x.chain_id for x in store.layers.list()}) == 3

    def test_parent_given_by_chain_id_string(self, store):
        l0 = store.layers.apply(BASE)
        l1 = store.layers.apply(tar(F("x", b"x")), parent=l0.chain_id)
        assert l1.parent == l0

    def test_size_counts_file_bytes_and_symlink_targets_hard_links_once(self, store):
        t = (
            TarBuilder()
            .dir("d")
            .file("d/a", b"12345")
            .file("d/b", b"x" * 1000)
            .hardlink("d/c", "d/b")
            .symlink("d/l", "a")  # 1 byte of target
            .file("d/empty")
            .bytes()
        )
        assert store.layers.apply(t).size == 5 + 1000 + 1

    def test_pax_global_header_is_ignored_and_kept(self, store):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global", "mtime": "1"}) as tf:
            ti = tarfile.TarInfo("f")
            ti.size, ti.mtime = 2, FIXED_MTIME
            tf.addfile(ti, io.BytesIO(b"hi"))
        data = buf.getvalue()
        layer = store.layers.apply(data)
        assert os.listdir(layer.path) == ["f"]
        assert os.lstat(layer.path / "f").st_mtime == FIXED_MTIME
        assert layer.tar().read() == data

    def test_concurrent_applies_of_one_tar_make_one_layer(self, store):
        results: list[str] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                results.append(store.layers.apply(BASE).chain_id)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert set(results) == {sha256_digest(BASE)}
        assert len(store.layers.list()) == 1
        assert os.listdir(store.root / "tmp") == []


# ----- get / list / remove ---------------------------------------------------------------------------


class TestGetListRemove:
    def test_get_by_chain_id_diff_id_and_prefix(self, store):
        l0 = store.layers.apply(BASE)
        l1 = store.layers.apply(tar(F("x", b"x")), parent=l0)
        assert store.layers.get(l1.chain_id) == l1
        assert store.layers.get(l1.diff_id) == l1
        assert store.layers.get(l1.chain_id[7:19]) == l1
        assert store.layers.get(l0.chain_id) == l0

    def test_get_unknown_raises_layer_not_found(self, store):
        store.layers.apply(BASE)
        with pytest.raises(LayerNotFound) as ei:
            store.layers.get("sha256:" + "0" * 64)
        assert isinstance(ei.value, LookupError)

    def test_get_too_short_prefix_is_invalid(self, store):
        store.layers.apply(BASE)
        with pytest.raises(InvalidReference):
            store.layers.get("ab")

    def test_list(self, store):
        assert store.layers.list() == []
        l0 = store.layers.apply(BASE)
        l1 = store.layers.apply(tar(F("x", b"x")), parent=l0)
        assert {x.chain_id for x in store.layers.list()} == {l0.chain_id, l1.chain_id}

    def test_remove(self, store):
        l0 = store.layers.apply(BASE)
        path = l0.path
        store.layers.remove(l0.chain_id)
        assert store.layers.list() == []
        assert not path.exists()
        with pytest.raises(LayerNotFound):
            store.layers.get(l0.chain_id)

    def test_remove_refuses_a_layer_with_children(self, store):
        l0 = store.layers.apply(BASE)
        store.layers.apply(tar(F("x", b"x")), parent=l0)
        with pytest.raises(Conflict):
            store.layers.remove(l0.chain_id)
        assert l0.path.is_dir()

    def test_remove_refuses_a_layer_an_image_uses(self, store):
        img = store.images.import_archive(BASE, tag="base")
        with pytest.raises(Conflict):
            store.layers.remove(img.layers[0].chain_id)
        assert store.images.get("base").fs.read_text("/etc/hosts") == "127.0.0.1 localhost\n"

    def test_applied_layer_survives_removal_of_an_image_built_on_it(self, store):
        layer = store.layers.apply(BASE)
        img = store.images.create(layer=layer, tag="x")
        store.images.remove(img.id)
        assert store.layers.get(layer.chain_id).path.is_dir()


# ----- whiteouts and opaque directories --------------------------------------------------------------


class TestWhiteouts:
    def test_whiteout_hides_a_file_below(self, store):
        fs = apply_view(store, BASE, tar(D("etc"), W("etc/hosts")))
        assert fs.listdir("/etc") == ["passwd"]
        assert not fs.exists("/etc/hosts")

    def test_whiteout_is_stored_as_a_0_0_char_device(self, store):
        l0 = store.layers.apply(BASE)
        l1 = store.layers.apply(tar(D("etc"), W("etc/hosts")), parent=l0)
        assert is_whiteout(l1.path / "etc" / "hosts")
        assert not os.path.lexists(l1.path / "etc" / ".wh.hosts")

    def test_whiteout_hides_a_directory_and_everything_below(self, store):
        fs = apply_view(store, BASE, tar(W("usr")))
        assert fs.listdir("/") == ["etc", "var"]
        assert not fs.exists("/usr/lib/libc.so")

    def test_whiteout_never_deletes_a_file_the_same_layer_adds(self, store):
        # Whiteout after the file, and before it.
        for order in ("after", "before"):
            t = TarBuilder().dir("etc")
            if order == "before":
                t.whiteout("etc/hosts")
            t.file("etc/hosts", b"new hosts\n")
            if order == "after":
                t.whiteout("etc/hosts")
            fs = apply_view(store, BASE, t.bytes())
            assert fs.read_bytes("/etc/hosts") == b"new hosts\n", order
            assert fs.listdir("/etc") == ["hosts", "passwd"], order

    def test_whiteout_never_deletes_a_directory_the_same_layer_adds_but_hides_below(self, store):
        for order in ("after", "before"):
            t = TarBuilder()
            if order == "before":
                t.whiteout("usr")
            t.dir("usr").dir("usr/new").file("usr/new/f", b"f")
            if order == "after":
                t.whiteout("usr")
            fs = apply_view(store, BASE, t.bytes())
            assert fs.listdir("/usr") == ["new"], order
            assert fs.read_bytes("/usr/new/f") == b"f", order
            assert not fs.exists("/usr/lib"), order

    def test_whiteout_then_implied_parent_directory(self, store):
        # `.wh.usr` then `usr/new` with no explicit `usr/` entry: the layer adds the directory `usr`
        # (implied by its child), so the whiteout only hides the lower `usr`.
        t = TarBuilder().whiteout("usr").file("usr/new", b"n").bytes()
        fs = apply_view(store, BASE, t)
        assert fs.listdir("/usr") == ["new"]
        assert not fs.exists("/usr/lib")

    def test_whiteout_then_opaque_marker_then_directory(self, store):
        # `.wh.usr`, `usr/.wh..wh..opq`, `usr/`: delete the lower /usr, re-add it (opaque) in this layer.
        t = TarBuilder().whiteout("usr").opaque("usr").dir("usr").file("usr/new", b"n").bytes()
        fs = apply_view(store, BASE, t)
        assert fs.listdir("/usr") == ["new"]

    def test_whiteout_after_implied_parent_directory(self, store):
        t = TarBuilder().file("usr/new", b"n").whiteout("usr").bytes()
        fs = apply_view(store, BASE, t)
        assert fs.listdir("/usr") == ["new"]
        assert not fs.exists("/usr/lib")

    def test_whiteout_then_recreate_as_another_type(self, store):
        # The lower directory /usr is deleted and a file of that name added; the lower file /var/log
        # becomes a directory.
        t = TarBuilder().whiteout("usr").file("usr", b"now a file").dir("var").whiteout("var/log").dir("var/log").file("var/log/x", b"x").bytes()
        fs = apply_view(store, BASE, t)
        assert fs.is_file("/usr") and fs.read_bytes("/usr") == b"now a file"
        assert fs.listdir("/var/log") == ["x"]

    def test_whiteout_of_a_missing_name_is_harmless(self, store):
        fs = apply_view(store, BASE, tar(D("etc"), W("etc/nonexistent")))
        assert fs.listdir("/etc") == ["hosts", "passwd"]

    def test_whiteouts_that_hide_nothing_are_not_stored(self, store):
        # In a directory that exists in no lower layer (here: a bottom layer), the kernel would list a
        # whiteout device: a correct converter drops it.
        l0 = store.layers.apply(TarBuilder().dir("d").whiteout("d/x").whiteout("y").bytes())
        assert os.listdir(l0.path / "d") == []
        assert not os.path.lexists(l0.path / "y")
        assert apply_view(store, TarBuilder().dir("d").whiteout("d/x").bytes()).listdir("/d") == []

    def test_whiteout_markers_are_not_visible(self, store):
        fs = apply_view(store, BASE, tar(D("etc"), W("etc/hosts"), O("usr")))
        for d in ("/", "/etc", "/usr"):
            assert not [n for n in fs.listdir(d) if n.startswith(".wh.")]

    def test_other_wh_wh_names_are_skipped(self, store):
        t = TarBuilder().dir("etc").file("etc/.wh..wh.plnk", b"").file(".wh..wh.aufs", b"").bytes()
        l0 = store.layers.apply(BASE)
        layer = store.layers.apply(t, parent=l0)
        fs = store.images.create(layer=layer, parent=store.images.create(layer=l0)).fs
        assert fs.listdir("/etc") == ["hosts", "passwd"]
        assert fs.listdir("/") == ["etc", "usr", "var"]
        assert not os.path.lexists(layer.path / "etc" / ".wh..wh.plnk")

    def test_aufs_metadata_directory_and_its_content_are_skipped(self, store):
        # aufs keeps hard-link targets in /.wh..wh.plnk/; Docker skips every entry under that name.
        t = TarBuilder().dir(".wh..wh.plnk").file(".wh..wh.plnk/123.456", b"aufs").file("keep", b"k").bytes()
        fs = apply_view(store, t)
        assert fs.listdir("/") == ["keep"]

    def test_bare_wh_prefix_is_invalid(self, store):
        with pytest.raises(ovlcore.InvalidArchive, match=r"\.wh\."):
            store.layers.apply(tar(D("etc"), F("etc/.wh.", b"")))


class TestOpaque:
    def test_opaque_directory_hides_lower_children(self, store):
        fs = apply_view(store, BASE, tar(D("etc"), O("etc"), F("etc/new", b"n")))
        assert fs.listdir("/etc") == ["new"]
        assert not fs.exists("/etc/passwd")

    def test_opaque_marker_is_stored_as_xattr(self, store):
        l0 = store.layers.apply(BASE)
        l1 = store.layers.apply(tar(D("etc"), O("etc")), parent=l0)
        assert is_opaque(l1.path / "etc", store.privilege)
        assert os.listdir(l1.path / "etc") == []

    @pytest.mark.parametrize("position", ["first", "middle", "last", "before-dir"])
    def test_opaque_marker_applies_wherever_it_stands(self, store, position):
        t = TarBuilder()
        if position == "before-dir":
            t.opaque("etc")
        t.dir("etc", mode=0o700)
        if position == "first":
            t.opaque("etc")
        t.file("etc/a", b"a")
        if position == "middle":
            t.opaque("etc")
        t.file("etc/b", b"b")
        if position == "last":
            t.opaque("etc")
        t.file("top", b"t")
        fs = apply_view(store, BASE, t.bytes())
        assert fs.listdir("/etc") == ["a", "b"]
        assert stat.S_IMODE(fs.stat("/etc").st_mode) == 0o700
        assert fs.listdir("/") == ["etc", "top", "usr", "var"]

    def test_opaque_does_not_hide_the_directory_itself_or_siblings(self, store):
        fs = apply_view(store, BASE, tar(D("usr"), O("usr")))
        assert fs.is_dir("/usr")
        assert fs.listdir("/usr") == []
        assert fs.listdir("/") == ["etc", "usr", "var"]

    def test_opaque_hides_every_lower_layer(self, store):
        mid = tar(D("etc"), F("etc/mid", b"m"))
        fs = apply_view(store, BASE, mid, tar(D("etc"), O("etc"), F("etc/top", b"t")))
        assert fs.listdir("/etc") == ["top"]

    def test_directory_over_lower_opaque_merges_with_it_only(self, store):
        # Layer 1 makes /etc opaque (hiding layer 0); layer 2 adds a name: layer 1 + layer 2.
        l1 = tar(D("etc"), O("etc"), F("etc/one", b"1"))
        l2 = tar(D("etc"), F("etc/two", b"2"))
        fs = apply_view(store, BASE, l1, l2)
        assert fs.listdir("/etc") == ["one", "two"]

    def test_whiteouts_inside_an_opaque_directory_are_not_stored(self, store):
        l0 = store.layers.apply(BASE)
        t = TarBuilder().dir("etc").whiteout("etc/hosts").opaque("etc").file("etc/x", b"x").bytes()
        l1 = store.layers.apply(t, parent=l0)
        assert os.listdir(l1.path / "etc") == ["x"]

    def test_opaque_xattr_in_an_archive_is_not_honoured(self, any_store):
        # Storage-format xattrs come from markers only, never from the archive's own xattrs.
        t = TarBuilder().dir("etc", xattrs={"trusted.overlay.opaque": "y", "user.overlay.opaque": "y"}).bytes()
        fs = apply_view(any_store, BASE, t)
        assert fs.listdir("/etc") == ["hosts", "passwd"]


class TestTypeChanges:
    def test_file_above_hides_directory_below(self, store):
        fs = apply_view(store, BASE, tar(F("usr", b"file now")))
        assert fs.is_file("/usr")
        assert fs.read_bytes("/usr") == b"file now"
        with pytest.raises(NotADirectoryError):
            fs.listdir("/usr")

    def test_directory_above_replaces_file_below(self, store):
        fs = apply_view(store, BASE, tar(D("var"), D("var/log"), F("var/log/syslog", b"s")))
        assert fs.is_dir("/var/log")
        assert fs.listdir("/var/log") == ["syslog"]

    def test_symlink_above_hides_directory_below(self, store):
        fs = apply_view(store, BASE, tar(L("usr", "etc")))
        assert fs.is_symlink("/usr")
        assert fs.listdir("/usr") == ["hosts", "passwd"]  # followed: /etc

    def test_directory_above_directory_merges_and_takes_the_upper_metadata(self, store):
        t = TarBuilder().dir("etc", mode=0o750, uid=0, gid=42, mtime=FIXED_MTIME + 5).file("etc/new", b"n").bytes()
        fs = apply_view(store, BASE, t)
        assert fs.listdir("/etc") == ["hosts", "new", "passwd"]
        st = fs.stat("/etc")
        assert stat.S_IMODE(st.st_mode) == 0o750
        assert st.st_gid == 42
        assert st.st_mtime == FIXED_MTIME + 5


# ----- metadata --------------------------------------------------------------------------------------


class TestMetadata:
    def test_modes_including_setuid_setgid_sticky(self, any_store):
        t = (
            TarBuilder()
            .dir("d", mode=0o1777)
            .file("d/suid", b"s", mode=0o4755)
            .file("d/sgid", b"s", mode=0o2711)
            .file("d/private", b"p", mode=0o600)
            .file("d/none", b"n", mode=0o000)
            .dir("d/sub", mode=0o500)
            .bytes()
        )
        fs = apply_view(any_store, t)
        modes = {n: stat.S_IMODE(fs.lstat(f"/d/{n}").st_mode) for n in fs.listdir("/d")}
        assert modes == {"suid": 0o4755, "sgid": 0o2711, "private": 0o600, "none": 0o000, "sub": 0o500}
        assert stat.S_IMODE(fs.stat("/d").st_mode) == 0o1777

    def test_uid_gid_numbers_names_ignored(self, any_store):
        t = TarBuilder()
        ti = t.info("f", tarfile.REGTYPE, mode=0o644, uid=1000, gid=2000)
        ti.uname, ti.gname = "root", "root"  # names must not matter
        t.add(ti, b"x")
        t.dir("d", uid=33, gid=33)
        t.file("big", b"b", pax={"uid": "3000000", "gid": "3000001"})
        fs = apply_view(any_store, t.bytes())
        assert (fs.stat("/f").st_uid, fs.stat("/f").st_gid) == (1000, 2000)
        assert (fs.stat("/d").st_uid, fs.stat("/d").st_gid) == (33, 33)
        assert (fs.stat("/big").st_uid, fs.stat("/big").st_gid) == (3000000, 3000001)

    @needs_root
    def test_root_store_keeps_owners_natively(self, store):
        layer = store.layers.apply(TarBuilder().file("x", b"x", uid=1000, gid=2000, mode=0o4755).bytes())
        st = os.lstat(layer.path / "x")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 2000, 0o4755)

    def test_mtime_whole_seconds(self, any_store):
        t = TarBuilder().dir("d", mtime=1_000_000_000).file("d/f", b"x", mtime=1_234_567_890).symlink("d/l", "f", mtime=1_111_111_111).bytes()
        fs = apply_view(any_store, t)
        assert fs.lstat("/d/f").st_mtime_ns == 1_234_567_890 * 10**9
        assert fs.lstat("/d/l").st_mtime_ns == 1_111_111_111 * 10**9
        # A directory's time is restored after its children are written.
        assert fs.stat("/d").st_mtime_ns == 1_000_000_000 * 10**9

    def test_mtime_with_pax_nanoseconds(self, any_store):
        t = TarBuilder().file("f", b"x", pax={"mtime": "1600000000.123456789"}).dir("d", pax={"mtime": "1500000000.5"}).bytes()
        fs = apply_view(any_store, t)
        assert fs.stat("/f").st_mtime_ns == 1_600_000_000_123_456_789
        assert fs.stat("/d").st_mtime_ns == 1_500_000_000_500_000_000

    @pytest.mark.parametrize(
        "value,ns",
        [("1.000000001", 1_000_000_001), ("1600000000.1", 1_600_000_000_100_000_000), ("-86400", -86_400 * 10**9),
         ("-1.5", -1_500_000_000), ("-0.25", -250_000_000)],
    )
    def test_pax_mtime_values(self, store, value, ns):
        # PAX times are decimal seconds, negative ones included (before 1970).
        fs = apply_view(store, TarBuilder().file("f", b"x", pax={"mtime": value}).bytes())
        assert fs.stat("/f").st_mtime_ns == ns

    def test_gnu_base256_numbers(self, any_store):
        t = TarBuilder(format=tarfile.GNU_FORMAT).file("f", b"x", uid=3_000_000, gid=4_000_000, mtime=-86400).bytes()
        layer = any_store.layers.apply(t)
        st = any_store.images.create(layer=layer).fs.stat("/f")
        assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (3_000_000, 4_000_000, -86_400 * 10**9)
        assert layer.tar().read() == t

    def test_xattrs_from_pax_schily(self, any_store):
        t = TarBuilder().file("f", b"x", xattrs={"user.comment": "hello", "user.other": "v2"}).dir("d", xattrs={"user.d": "dir"}).bytes()
        fs = apply_view(any_store, t)
        assert fs.getxattr("/f", "user.comment") == b"hello"
        assert fs.getxattr("/d", "user.d") == b"dir"
        assert sorted(fs.listxattr("/f")) == ["user.comment", "user.other"]

    def test_xattr_values_with_newlines_and_binary_bytes(self, any_store):
        # tarfile writes each record as is behind its length ("%d %s=%s\n"); a value it cannot encode
        # as UTF-8 (bytes through surrogateescape) makes it put `hdrcharset=BINARY` first. The long
        # name's `path` record comes after the xattrs.
        binary = bytes(range(256))
        long = "l" * 150
        t = TarBuilder().file("f", b"x", pax={"SCHILY.xattr.user.bin": "a\nb\x00c"}).file(long, b"long", xattrs={"user.cap": binary}).bytes()
        assert b" SCHILY.xattr.user.bin=a\nb\x00c\n" in t and b"hdrcharset=BINARY" in t
        assert t.index(b"SCHILY.xattr.user.cap=") < t.index(b" path=" + long.encode())
        layer = any_store.layers.apply(t)
        fs = any_store.images.create(layer=layer).fs
        assert fs.getxattr("/f", "user.bin") == b"a\nb\x00c"
        assert fs.getxattr(f"/{long}", "user.cap") == binary
        assert fs.read_bytes(f"/{long}") == b"long"
        assert layer.tar().read() == t

    def test_symlink_target_kept_verbatim(self, any_store):
        targets = {"rel": "../x/./y", "abs": "/etc/passwd", "dangling": "nowhere", "dot": "."}
        t = TarBuilder()
        for name, target in targets.items():
            t.symlink(name, target)
        fs = apply_view(any_store, t.bytes())
        for name, target in targets.items():
            assert fs.readlink(f"/{name}") == target
            assert fs.is_symlink(f"/{name}")

    def test_long_symlink_target_pax(self, any_store):
        target = "/" + "/".join(["component"] * 40)
        fs = apply_view(any_store, TarBuilder().symlink("l", target).bytes())
        assert fs.readlink("/l") == target

    def test_hard_links_share_content_and_inode(self, any_store):
        t = TarBuilder().dir("d").file("d/orig", b"shared", mode=0o640).hardlink("d/link", "d/orig").hardlink("top", "d/orig").bytes()
        layer = any_store.layers.apply(t)
        a, b, c = (os.lstat(layer.path / p) for p in ("d/orig", "d/link", "top"))
        assert a.st_ino == b.st_ino == c.st_ino
        assert a.st_nlink == 3
        fs = any_store.images.create(layer=layer).fs
        assert fs.read_bytes("/top") == b"shared"
        assert stat.S_IMODE(fs.stat("/d/link").st_mode) == 0o640

    def test_hard_link_to_symlink(self, any_store):
        t = TarBuilder().symlink("s", "target").hardlink("h", "s").bytes()
        fs = apply_view(any_store, t)
        assert fs.readlink("/h") == "target"

    def test_fifo(self, any_store):
        fs = apply_view(any_store, TarBuilder().fifo("pipe", mode=0o640).bytes())
        st = fs.lstat("/pipe")
        assert stat.S_ISFIFO(st.st_mode)
        assert fs.listdir("/") == ["pipe"]

    def test_devices(self, any_store):
        if any_store.privilege == "root" and not IS_ROOT:
            pytest.skip("device nodes need root")
        t = (
            TarBuilder()
            .dir("dev")
            .chardev("dev/null", 1, 3, mode=0o666)
            .blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
            .chardev("dev/big", 511, 1_000_000, mode=0o600)
            .bytes()
        )
        fs = apply_view(any_store, t)
        assert fs.lstat("/dev/big").st_rdev == os.makedev(511, 1_000_000)
        null, sda = fs.lstat("/dev/null"), fs.lstat("/dev/sda")
        assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
        assert stat.S_IMODE(null.st_mode) == 0o666
        assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
        assert (stat.S_IMODE(sda.st_mode), sda.st_gid) == (0o660, 6)

    @needs_root
    def test_root_store_makes_real_device_nodes(self, store):
        layer = store.layers.apply(TarBuilder().chardev("null", 1, 3).bytes())
        st = os.lstat(layer.path / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)

    def test_char_device_0_0_in_archive_is_invalid(self, store):
        # 0/0 is the whiteout encoding; a layer tar expresses deletions with .wh. names.
        with pytest.raises(ovlcore.InvalidArchive, match="zero"):
            store.layers.apply(TarBuilder().chardev("zero", 0, 0).bytes())

    def test_implied_parents_are_root_owned_0755(self, any_store):
        fs = apply_view(any_store, tar(F("a/b/c", b"x")))
        for d in ("/a", "/a/b"):
            st = fs.stat(d)
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
            assert (st.st_uid, st.st_gid) == (0, 0)

    def test_root_without_an_entry_is_0755_whatever_the_umask(self, any_store):
        # Like Docker's overlay2 diff directories (made 0755 explicitly), the layer root of an archive
        # without a `./` entry must not depend on the importing process's umask.
        old = os.umask(0o077)
        try:
            fs = apply_view(any_store, tar(F("a/b", b"x"), D("c")))
        finally:
            os.umask(old)
        st = fs.stat("/")
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_IMODE(fs.stat("/a").st_mode) == 0o755

    def test_root_entry_sets_root_metadata(self, any_store):
        t = TarBuilder().dir("./", mode=0o750, mtime=1_300_000_000).file("f", b"x").bytes()
        fs = apply_view(any_store, t)
        st = fs.stat("/")
        assert stat.S_IMODE(st.st_mode) == 0o750
        assert st.st_mtime == 1_300_000_000

    def test_leading_dot_slash_names(self, any_store):
        t = TarBuilder().dir("./").dir("./etc").file("./etc/x", b"x").bytes()
        fs = apply_view(any_store, t)
        assert fs.listdir("/") == ["etc"]
        assert fs.read_bytes("/etc/x") == b"x"


class TestLongNames:
    LONG_DIR = "/".join(["d" * 60] * 3)  # 182 chars
    LONG_FILE = "f" * 120

    @pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
    def test_long_names_and_link_targets(self, any_store, fmt):
        path = f"{self.LONG_DIR}/{self.LONG_FILE}"
        target = "../" * 5 + "t" * 150
        t = TarBuilder(format=fmt)
        t.dir(self.LONG_DIR.split("/")[0]).dir("/".join(self.LONG_DIR.split("/")[:2])).dir(self.LONG_DIR)
        t.file(path, b"long").symlink(f"{self.LONG_DIR}/{'s' * 110}", target).hardlink("h" * 130, path)
        data = t.bytes()
        layer = any_store.layers.apply(data)
        fs = any_store.images.create(layer=layer).fs
        assert fs.read_bytes("/" + path) == b"long"
        assert fs.readlink(f"/{self.LONG_DIR}/{'s' * 110}") == target
        assert fs.read_bytes("/" + "h" * 130) == b"long"
        assert fs.listdir("/" + self.LONG_DIR) == sorted([self.LONG_FILE, "s" * 110])
        # and the exact bytes come back
        assert layer.tar().read() == data

    def test_ustar_prefix_field(self, any_store):
        # A ustar name split into prefix + name.
        prefix = "p" * 120
        t = TarBuilder(format=tarfile.USTAR_FORMAT).dir(prefix).file(f"{prefix}/file", b"x").bytes()
        fs = apply_view(any_store, t)
        assert fs.read_bytes(f"/{prefix}/file") == b"x"

    def test_non_ascii_names(self, any_store):
        t = TarBuilder().dir("ünïcödé").file("ünïcödé/日本語.txt", "text").bytes()
        fs = apply_view(any_store, t)
        assert fs.listdir("/ünïcödé") == ["日本語.txt"]
        assert fs.read_text("/ünïcödé/日本語.txt", encoding="utf-8") == "text"
