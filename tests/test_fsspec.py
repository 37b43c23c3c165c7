"""``ovl://``: the fsspec file system over containers and images, with real clients (fsspec itself, pandas,
pyarrow) and fsspec's own abstract test suites."""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from support.images import BASE_ENTRIES, PASSWD
from support.stores import Sandbox
from support.tars import D, F, L, tar

fsspec = pytest.importorskip("fsspec")
from fsspec.tests.abstract import AbstractCopyTests, AbstractGetTests, AbstractOpenTests  # noqa: E402
from fsspec.tests.abstract import AbstractFixtures, AbstractPipeTests, AbstractPutTests  # noqa: E402

from ovlcore.ovlfs import OvlFileSystem  # noqa: E402

CSV = "city,population\nLyon,522250\nNantes,320732\nLille,236234\n"

ENTRIES = [*BASE_ENTRIES, F("srv/data.csv", CSV), D("srv/empty"), L("srv/dangling", "/nowhere"), L("srv/loop", "/srv/loop")]


@pytest.fixture
def ovl(store: ovlcore.Store) -> Iterator[OvlFileSystem]:
    """A store with the image ``base:1`` and the container ``web`` made from it, and ``ovl://`` over it."""
    store.images.import_archive(io.BytesIO(tar(*ENTRIES)), tag="base:1")
    store.containers.create("base:1", name="web")
    fs = OvlFileSystem(root=store.root, skip_instance_cache=True)
    yield fs
    fs.store.close()


def each_raises(exc: type[BaseException], *calls: Any) -> None:
    for call in calls:
        with pytest.raises(exc):
            call()


def opts(store: ovlcore.Store) -> dict[str, Any]:
    return {"root": str(store.root)}


# ----- registration, paths, names -----


def test_registered_through_the_entry_point(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    assert fsspec.get_filesystem_class("ovl") is OvlFileSystem
    fs = fsspec.filesystem("ovl", root=str(store.root))
    assert isinstance(fs, OvlFileSystem)
    assert fs.cat("ovl://web/etc/hostname") == b"image-hostname\n"
    with fsspec.open("ovl://base:1/etc/passwd", "rt", root=str(store.root)) as f:
        assert f.read() == PASSWD


def test_default_root_is_the_default_store(store: ovlcore.Store, ovl: OvlFileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVLCORE_ROOT", str(store.root))
    fs = fsspec.filesystem("ovl", skip_instance_cache=True)
    assert fs.store.root == store.root and fs.cat("web/etc/hostname") == b"image-hostname\n"
    fs2, path = fsspec.core.url_to_fs("ovl://web/etc", root=str(store.root))
    assert isinstance(fs2, OvlFileSystem) and path == "web/etc"
    # Instances are cached per root, and survive pickling (dask ships them to workers).
    assert fsspec.filesystem("ovl", root=str(store.root)) is fs2
    assert pickle.loads(pickle.dumps(fs2)).cat("web/etc/hostname") == b"image-hostname\n"


def test_importing_ovlcore_does_not_import_fsspec() -> None:
    code = "import sys, ovlcore; assert 'fsspec' not in sys.modules and 'ovlcore.ovlfs' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_three_spellings_of_a_path(ovl: OvlFileSystem) -> None:
    for p in ("ovl://web/etc/hostname", "web/etc/hostname", "/web/etc/hostname", "web/etc/hostname/"):
        assert ovl.cat_file(p) == b"image-hostname\n"
    assert ovl.unstrip_protocol("web/etc") == "ovl://web/etc"
    assert ovl._parent("ovl://web/etc/hostname") == "web/etc"


def test_root_lists_containers_and_images(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    untagged = store.images.import_archive(io.BytesIO(tar(D("x"))))
    store.images.import_archive(io.BytesIO(tar(D("y"))), tag="127.0.0.1:5000/team/app:1")
    names = ovl.ls("", detail=False)
    app = store.images.get("127.0.0.1:5000/team/app:1")
    assert sorted(names) == sorted(["web", "base:1", f"sha256:{untagged.short_id}", f"sha256:{app.short_id}"])
    assert all(e["type"] == "directory" for e in ovl.ls("ovl://"))
    assert ovl.ls(f"sha256:{untagged.short_id}", detail=False) == [f"sha256:{untagged.short_id}/x"]
    # A reference with `/` in it: the leading components up to the one with the tag.
    assert ovl.ls("127.0.0.1:5000/team/app:1", detail=False) == ["127.0.0.1:5000/team/app:1/y"]
    assert ovl.isdir("ovl://127.0.0.1:5000/team/app:1/y")


def test_container_first_then_image(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    img = store.images.get("base:1")
    # An image and a container both answering to "shadow": the container wins.
    store.images.tag("base:1", "shadow:latest")
    ctr = store.containers.create("base:1", name="shadow")
    ctr.fs.write_text("/etc/hostname", "container\n")
    assert ovl.cat("shadow/etc/hostname") == b"container\n"
    assert ovl.cat("shadow:latest/etc/hostname") == b"image-hostname\n"
    # Images by full id, short id, id prefix, with and without sha256:.
    for ref in (img.id, img.short_id, img.id[7:15], "sha256:" + img.id[7:15]):
        assert ovl.cat(f"{ref}/etc/hostname") == b"image-hostname\n"
    # Containers by id and id prefix.
    assert ovl.cat(f"{ctr.id}/etc/hostname") == b"container\n"
    assert ovl.cat(f"{ctr.short_id}/etc/hostname") == b"container\n"
    assert ovl.info(ctr.id)["container"] == ctr.id
    assert ovl.info("base:1")["image"] == img.id


def test_unknown_names_and_paths(ovl: OvlFileSystem) -> None:
    for p in ("nosuch/etc/hostname", "nosuch:1/x", "ovl://deadbeefcafe/x", "Bad..Name/x"):
        with pytest.raises(FileNotFoundError):
            ovl.cat(p)
        assert not ovl.exists(p)
    each_raises(
        FileNotFoundError,
        lambda: ovl.info("web/etc/nosuch"),
        lambda: ovl.ls("base:1/nosuch"),
        lambda: ovl.mkdir("nosuch/dir"),
        lambda: ovl.pipe("nosuch/x", b"x"),
        lambda: ovl.open("web/etc/nosuch", "rb"),
        lambda: ovl.rm("web/etc/nosuch"),
    )
    assert not ovl.exists("web/etc/hostname/below")
    assert ovl.exists("web") and ovl.exists("base:1") and ovl.exists("")


# ----- reading -----


def test_ls_and_info_details(ovl: OvlFileSystem) -> None:
    entries = {e["name"]: e for e in ovl.ls("ovl://web/data")}
    assert sorted(entries) == ["web/data/pw", "web/data/seed.txt", "web/data/sub"]
    seed = entries["web/data/seed.txt"]
    assert (seed["type"], seed["size"], seed["uid"], seed["gid"], seed["mode"] & 0o7777) == ("file", 20, 1234, 5678, 0o640)
    assert seed["mtime"] == 1_600_000_000 and seed["islink"] is False
    sub = entries["web/data/sub"]
    assert (sub["type"], sub["mode"] & 0o7777, sub["uid"]) == ("directory", 0o711, 1234)
    pw = entries["web/data/pw"]
    assert (pw["type"], pw["islink"], pw["destination"], pw["size"]) == ("file", True, "/etc/passwd", len(PASSWD))
    assert ovl.info("web/data/seed.txt") == seed
    assert ovl.info("base:1/srv/dangling")["type"] == "link"
    assert ovl.info("base:1/srv/loop")["type"] == "link"
    assert ovl.info("web/links/to_data")["type"] == "directory"
    # ls on a file: the file; on a symlinked directory: its entries under the name as given.
    assert ovl.ls("web/etc/hostname", detail=False) == ["web/etc/hostname"]
    assert ovl.ls("web/links/to_data", detail=False) == ["web/links/to_data/pw", "web/links/to_data/seed.txt", "web/links/to_data/sub"]
    assert ovl.isfile("web/data/pw") and ovl.isdir("web/data") and not ovl.isdir("web/data/pw")
    assert ovl.size("base:1/srv/data.csv") == len(CSV)
    assert ovl.info("web")["type"] == "directory"


def test_open_reads_with_seeks_and_ranges(ovl: OvlFileSystem) -> None:
    data = CSV.encode()
    with ovl.open("ovl://base:1/srv/data.csv", "rb") as f:
        assert f.seekable()
        f.seek(5)
        assert f.read(10) == data[5:15]
        f.seek(-7, os.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(0)
        assert f.readline() == b"city,population\n"
        assert f.tell() == 16
    with ovl.open("web/srv/data.csv", "r") as t:
        assert t.read() == CSV
    assert ovl.cat_file("web/srv/data.csv", start=5, end=15) == data[5:15]
    assert ovl.cat_file("web/srv/data.csv", start=-7) == data[-7:]
    assert ovl.cat_file("web/srv/data.csv", start=3, end=-3) == data[3:-3]
    assert ovl.cat_file("web/srv/data.csv", start=40, end=10) == b""
    assert ovl.cat_file("web/srv/data.csv", start=10_000) == b""
    assert ovl.cat_ranges(["web/srv/data.csv", "base:1/etc/hostname"], [0, 6], [4, 14]) == [b"city", b"hostname"]
    assert ovl.read_block("web/srv/data.csv", 20, 10, delimiter=b"\n") == b"Nantes,320732\n"
    assert ovl.head("web/srv/data.csv", 4) == b"city" and ovl.tail("web/srv/data.csv", 7) == data[-7:]
    assert ovl.cat("web/srv/dir", recursive=True, on_error="omit") == {"web/srv/dir/one.txt": b"one\n", "web/srv/dir/nested/two.txt": b"two\n"}
    with pytest.raises(IsADirectoryError):
        ovl.cat_file("web/srv")


def test_walk_find_glob_du(ovl: OvlFileSystem) -> None:
    assert ovl.find("web/srv/dir") == ["web/srv/dir/nested/two.txt", "web/srv/dir/one.txt"]
    assert ovl.find("web/srv/dir", withdirs=True) == ["web/srv/dir", "web/srv/dir/nested", "web/srv/dir/nested/two.txt", "web/srv/dir/one.txt"]
    assert ovl.find("web/srv/dir", maxdepth=1) == ["web/srv/dir/one.txt"]
    walked = list(ovl.walk("web/srv"))
    assert walked[0] == ("web/srv", ["dir", "empty"], ["a.png", "b.png", "dangling", "data.csv", "loop", "notes.txt"])
    details = next(iter(ovl.walk("web/srv", detail=True)))
    assert details[2]["data.csv"]["size"] == len(CSV)
    assert sorted(ovl.glob("ovl://web/srv/*.png")) == ["web/srv/a.png", "web/srv/b.png"]
    assert ovl.glob("web/srv/**/*.txt") == ["web/srv/dir/nested/two.txt", "web/srv/dir/one.txt", "web/srv/notes.txt"]
    assert ovl.du("web/srv/dir") == 8
    assert ovl.du("web/srv/dir", total=False) == {"web/srv/dir/nested/two.txt": 4, "web/srv/dir/one.txt": 4}
    # Symlinked directories are listed but not entered: links/to_root (-> /) does not make this endless.
    everything = ovl.find("web")
    assert "web/etc/passwd" in everything and not any(p.startswith("web/links/to_root/") for p in everything)
    assert ovl.find("web/links", withdirs=True) == ["web/links", "web/links/dotdot", "web/links/rel_etc", "web/links/to_data", "web/links/to_passwd", "web/links/to_root"]
    # Bottom-up walk: children before parents.
    order = [d for d, _, _ in ovl.walk("web/srv", topdown=False)]
    assert order.index("web/srv/dir/nested") < order.index("web/srv/dir") < order.index("web/srv")


def test_modified_created_checksum_ukey(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    m = ovl.modified("web/data/seed.txt")
    assert m.tzinfo is not None and m.timestamp() == 1_600_000_000
    assert ovl.created("web") == store.containers.get("web").created
    assert ovl.created("base:1") == store.images.get("base:1").created
    with pytest.raises(NotImplementedError):
        ovl.created("web/etc/hostname")
    key, ck = ovl.ukey("web/etc/hostname"), ovl.checksum("web/etc/hostname")
    assert ovl.ukey("web/etc/hostname") == key and ovl.ukey("base:1/etc/hostname") != key
    ovl.pipe("web/etc/hostname", b"changed\n")
    assert ovl.ukey("web/etc/hostname") != key and ovl.checksum("web/etc/hostname") != ck
    with pytest.raises(NotImplementedError):
        ovl.sign("web/etc/hostname")


# ----- writing -----


def test_images_are_read_only(store: ovlcore.Store, ovl: OvlFileSystem, tmp_path: Path) -> None:
    before = ovl.cat("base:1", recursive=True, on_error="omit")
    (tmp_path / "local.txt").write_text("x")
    each_raises(
        PermissionError,
        lambda: ovl.pipe("base:1/etc/hostname", b"x"),
        lambda: ovl.open("base:1/etc/new", "wb"),
        lambda: ovl.open("base:1/etc/hostname", "ab"),
        lambda: ovl.touch("base:1/etc/new"),
        lambda: ovl.mkdir("base:1/newdir"),
        lambda: ovl.makedirs("base:1/a/b", exist_ok=True),
        lambda: ovl.rm("base:1/etc/hostname"),
        lambda: ovl.rm("base:1/srv", recursive=True),
        lambda: ovl.rmdir("base:1/srv/empty"),
        lambda: ovl.mv("base:1/etc/hostname", "base:1/etc/h2"),
        lambda: ovl.cp_file("web/etc/hostname", "base:1/etc/h2"),
        lambda: ovl.put(str(tmp_path / "local.txt"), "base:1/tmp/"),
    )
    assert ovl.cat("base:1", recursive=True, on_error="omit") == before
    # Containers and images are not made or removed through the file system.
    with pytest.raises(PermissionError):
        ovl.rm("web", recursive=True)
    assert store.containers.get("web").diff() == []


def test_writes_copy_up_and_show_in_diff(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    ctr = store.containers.get("web")
    with ovl.open("ovl://web/etc/hostname", "ab") as f:
        f.write(b"appended\n")
    assert ovl.cat("web/etc/hostname") == b"image-hostname\nappended\n"
    with ovl.open("web/srv/notes.txt", "r+b") as f:
        f.seek(4)
        f.write(b"A")
    assert ovl.cat("web/srv/notes.txt") == b"not A png\n"
    ovl.pipe("web/tmp/new.txt", b"new\n")
    ovl.makedirs("web/tmp/a/b")
    ovl.touch("web/tmp/a/b/empty")
    ovl.rm("web/srv/dir", recursive=True)
    ovl.rm("web/srv/a.png")
    ovl.mv("web/data/sub", "web/data/moved")
    ovl.cp_file("base:1/srv/b.png", "web/tmp/b.png")
    assert ovl.cat("web/tmp/b.png") == b"\x89PNG b"
    changes = {(c.kind, c.path) for c in ctr.diff()}
    assert changes == {
        ("C", "/etc"), ("C", "/etc/hostname"), ("C", "/srv"), ("C", "/srv/notes.txt"), ("D", "/srv/dir"),
        ("D", "/srv/a.png"), ("C", "/tmp"), ("A", "/tmp/new.txt"), ("A", "/tmp/a"), ("A", "/tmp/a/b"),
        ("A", "/tmp/a/b/empty"), ("A", "/tmp/b.png"), ("C", "/data"), ("D", "/data/sub"), ("A", "/data/moved"),
        ("A", "/data/moved/deep.txt"),
    }
    # The image did not change.
    assert store.images.get("base:1").fs.read_text("/etc/hostname") == "image-hostname\n"
    assert ovl.exists("base:1/srv/dir/one.txt") and not ovl.exists("web/srv/dir")
    assert ovl.cat("web/data/moved/deep.txt") == b"deep\n"


def test_write_modes_and_directories(ovl: OvlFileSystem) -> None:
    ovl.pipe_file("web/tmp/x", b"1", mode="create")
    each_raises(
        FileExistsError,
        lambda: ovl.pipe_file("web/tmp/x", b"2", mode="create"),
        lambda: ovl.open("web/tmp/x", "xb"),
        lambda: ovl.mkdir("web/tmp"),
        lambda: ovl.makedirs("web/etc"),
    )
    ovl.makedirs("web/etc", exist_ok=True)
    ovl.makedirs("web", exist_ok=True)
    with pytest.raises(FileNotFoundError):
        ovl.mkdir("web/no/such", create_parents=False)
    ovl.mkdir("web/no/such")
    assert ovl.isdir("web/no/such")
    with pytest.raises(OSError):
        ovl.rmdir("web/no")  # not empty
    ovl.rmdir("web/no/such")
    ovl.rm("web/no")  # an empty directory goes without recursive
    with pytest.raises(OSError):
        ovl.rm("web/srv/dir")
    ovl.touch("web/tmp/x", truncate=False)
    assert ovl.cat("web/tmp/x") == b"1"
    ovl.touch("web/tmp/x")
    assert ovl.cat("web/tmp/x") == b""
    with pytest.raises(IsADirectoryError):
        ovl.open("web/etc", "wb")
    with pytest.raises(FileNotFoundError):
        ovl.pipe("web/nodir/x", b"x")
    ovl.rm("web/srv/*.png")
    assert ovl.glob("web/srv/*.png") == []


def test_mounts_route_to_volumes_and_binds(tmp_path: Path, store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "host.txt").write_text("from the host\n")
    mounts = [ovlcore.Mount("/data", "vol"), ovlcore.Mount("/shared", str(bind), type="bind", read_only=True)]
    ctr = store.containers.create("base:1", name="mounted", mounts=mounts)
    assert ovl.ls("mounted/shared", detail=False) == ["mounted/shared/host.txt"]
    assert ovl.cat("mounted/shared/host.txt") == b"from the host\n"
    with pytest.raises(PermissionError):
        ovl.pipe("mounted/shared/new.txt", b"x")
    # The volume was filled from the image; writes there go to the volume, not the writable layer.
    assert ovl.info("mounted/data/seed.txt")["uid"] == 1234
    ovl.pipe("mounted/data/new.txt", b"in the volume\n")
    assert (Path(store.volumes.get("vol").mountpoint) / "new.txt").read_text() == "in the volume\n"
    assert ctr.diff() == []
    assert ovl.find("mounted/data") == ["mounted/data/new.txt", "mounted/data/pw", "mounted/data/seed.txt", "mounted/data/sub/deep.txt"]


def test_mv_between_containers_and_into_directories(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    store.containers.create("base:1", name="other")
    ovl.mv("web/srv/dir", "other/tmp/dir")
    assert ovl.find("other/tmp/dir") == ["other/tmp/dir/nested/two.txt", "other/tmp/dir/one.txt"]
    assert not ovl.exists("web/srv/dir")
    ovl.mv("other/etc/hostname", "other/tmp")  # an existing directory receives it
    assert ovl.cat("other/tmp/hostname") == b"image-hostname\n" and not ovl.exists("other/etc/hostname")
    with pytest.raises(FileNotFoundError):
        ovl.mv("web/srv/nosuch", "web/tmp/x")


def test_transactions_publish_on_commit(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    with ovl.transaction:
        with ovl.open("web/tmp/t.txt", "wb") as f:
            f.write(b"staged")
        assert not ovl.exists("web/tmp/t.txt")
    assert ovl.cat("web/tmp/t.txt") == b"staged"
    assert ovl.ls("web/tmp", detail=False) == ["web/tmp/t.txt"]
    try:
        with ovl.transaction:
            with ovl.open("web/tmp/u.txt", "wb") as f:
                f.write(b"dropped")
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    assert ovl.ls("web/tmp", detail=False) == ["web/tmp/t.txt"]


def test_symlinks_stay_inside_the_container(sandbox: Sandbox, store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    before = sandbox.snapshot_outside()
    outside = os.path.relpath(sandbox.outside, "/")
    # Reads through links that point at / or climb with ..: the container's files, never the host's.
    assert ovl.cat("web/links/dotdot/etc/passwd") == PASSWD.encode()
    assert ovl.cat("web/links/to_root/etc/hostname") == b"image-hostname\n"
    assert ovl.cat("web/links/to_passwd") == PASSWD.encode()
    with pytest.raises(FileNotFoundError):
        ovl.cat(f"web/links/dotdot/{outside}/secret")
    with pytest.raises(FileNotFoundError):
        ovl.cat(f"web/links/to_root/../../../{outside}/secret")
    # Writes through them land in the container.
    ovl.pipe("web/links/dotdot/escape.txt", b"in the container\n")
    ovl.pipe("web/links/to_root/tmp/via_root.txt", b"x")
    ovl.makedirs(f"web/links/dotdot/{outside}", exist_ok=True)
    ovl.pipe(f"web/links/dotdot/{outside}/secret", b"not the host's\n")
    ctr = store.containers.get("web")
    assert ctr.fs.read_text("/escape.txt") == "in the container\n"
    assert ctr.fs.read_text("/tmp/via_root.txt") == "x"
    assert sandbox.snapshot_outside() == before
    assert (sandbox.outside / "secret").read_text() == "host secret\n"
    # get: a link is copied as what it points to inside the container.
    local = sandbox.base / "got"
    ovl.get("web/links/to_passwd", str(local))
    assert local.read_text() == PASSWD


def test_get_and_put_with_the_host(tmp_path: Path, store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    src = tmp_path / "up"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.txt").write_text("b\n")
    os.chmod(src / "a.txt", 0o640)
    ovl.put(str(src / "a.txt"), "ovl://web/tmp/")
    assert ovl.cat("web/tmp/a.txt") == b"a\n" and ovl.info("web/tmp/a.txt")["mode"] & 0o777 == 0o640
    ovl.put(str(src), "web/tmp/tree", recursive=True)
    assert ovl.find("web/tmp/tree") == ["web/tmp/tree/a.txt", "web/tmp/tree/sub/b.txt"]
    ovl.put(str(tmp_path / "up" / "a.txt"), "web/etc/hostname")  # replaces an image file
    assert ovl.cat("web/etc/hostname") == b"a\n"
    assert store.images.get("base:1").fs.read_text("/etc/hostname") == "image-hostname\n"
    down = tmp_path / "down"
    ovl.get("base:1/srv/dir", str(down), recursive=True)
    assert (down / "one.txt").read_text() == "one\n" and (down / "nested" / "two.txt").read_text() == "two\n"
    ovl.get("web/data/seed.txt", str(tmp_path / "seed.txt"))
    assert (tmp_path / "seed.txt").read_text() == "seed from the image\n"
    buf = io.BytesIO()
    ovl.get_file("web/srv/data.csv", None, outfile=buf)
    assert buf.getvalue() == CSV.encode()


# ----- real clients: pandas, pyarrow -----


def test_pandas_csv_and_parquet(store: ovlcore.Store, ovl: OvlFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.read_csv("ovl://base:1/srv/data.csv", storage_options=opts(store))
    assert list(df["city"]) == ["Lyon", "Nantes", "Lille"] and int(df["population"].sum()) == 1_079_216
    df["big"] = df["population"] > 300_000
    df.to_csv("ovl://web/srv/out.csv", index=False, storage_options=opts(store))
    assert pd.read_csv("ovl://web/srv/out.csv", storage_options=opts(store)).equals(df)
    df.to_parquet("ovl://web/tmp/data.parquet", storage_options=opts(store))
    back = pd.read_parquet("ovl://web/tmp/data.parquet", storage_options=opts(store))
    assert back.equals(df)
    assert ovl.cat_file("web/tmp/data.parquet", start=0, end=4) == b"PAR1"
    assert ("A", "/tmp/data.parquet") in {(c.kind, c.path) for c in store.containers.get("web").diff()}
    with pytest.raises(PermissionError):
        df.to_csv("ovl://base:1/srv/out.csv", storage_options=opts(store))


def test_pyarrow_dataset_over_the_file_system(ovl: OvlFileSystem) -> None:
    pa = pytest.importorskip("pyarrow")
    ds = pytest.importorskip("pyarrow.dataset")
    pq = pytest.importorskip("pyarrow.parquet")
    for year in (2023, 2024):
        table = pa.table({"year": [year] * 3, "value": [year * 10 + i for i in range(3)]})
        ovl.makedirs(f"web/srv/ds/year={year}", exist_ok=True)
        with ovl.open(f"web/srv/ds/year={year}/part-0.parquet", "wb") as f:
            pq.write_table(table.drop(["year"]), f)
    dataset = ds.dataset("web/srv/ds", filesystem=ovl, format="parquet", partitioning="hive")
    t = dataset.to_table(filter=ds.field("year") == 2024)
    assert sorted(t.column("value").to_pylist()) == [20240, 20241, 20242]
    assert dataset.count_rows() == 6
    # Written by pyarrow through the same file system.
    ds.write_dataset(t, "web/srv/out", filesystem=ovl, format="parquet")
    assert ds.dataset("web/srv/out", filesystem=ovl, format="parquet").count_rows() == 3
    assert pq.read_table("web/srv/ds/year=2023/part-0.parquet", filesystem=ovl).num_rows == 3


# ----- fsspec's own abstract tests -----


class OvlFixtures(AbstractFixtures):  # type: ignore[misc]
    """A container ``work`` in a fresh store, its ``/work`` directory as the test area."""

    @pytest.fixture
    def fs(self, store: ovlcore.Store) -> Iterator[OvlFileSystem]:
        store.images.import_archive(io.BytesIO(tar(*BASE_ENTRIES)), tag="base:1")
        store.containers.create("base:1", name="work")
        # Object-store style, as the suites expect of the local file system too (they run it with auto_mkdir).
        fs = OvlFileSystem(root=store.root, auto_mkdir=True, skip_instance_cache=True)
        yield fs
        fs.store.close()

    @pytest.fixture
    def fs_join(self) -> Any:
        return posixpath.join

    @pytest.fixture
    def fs_path(self, fs: OvlFileSystem) -> str:
        fs.makedirs("work/area", exist_ok=True)
        return "work/area"


class TestOvlCopy(OvlFixtures, AbstractCopyTests):  # type: ignore[misc]
    pass


class TestOvlGet(OvlFixtures, AbstractGetTests):  # type: ignore[misc]
    pass


class TestOvlPut(OvlFixtures, AbstractPutTests):  # type: ignore[misc]
    pass


class TestOvlOpen(OvlFixtures, AbstractOpenTests):  # type: ignore[misc]
    pass


class TestOvlPipe(OvlFixtures, AbstractPipeTests):  # type: ignore[misc]
    pass
