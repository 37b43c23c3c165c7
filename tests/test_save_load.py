"""images.save / images.load: docker-archive and OCI layout round trips, shared layers, compression, and
bad archives (InvalidArchive naming the problem, the store left exactly as it was)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest

import ovlcore
from ovlcore import InvalidArchive
from support.digests import sha256_digest
from support.stores import open_store
from support.tars import D, Entry, F, L, tar


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


BASE_ENTRIES: list[Entry] = [
    D("bin/"),
    F("bin/tool", b"#!/bin/sh\necho tool\n"),
    L("bin/alias", "tool"),
    D("etc/"),
    F("etc/config", b"a=1\n"),
    F("etc/gone", b"to be deleted\n"),
    D("opq/"),
    F("opq/old1", b"old 1\n"),
    D("opq/sub/"),
    F("opq/sub/old2", b"old 2\n"),
    D("var/"),
    D("var/lib/"),
    F("var/lib/data", b"x" * 10000),
    D("doomed/"),
    F("doomed/inside", b"inside\n"),
]


def snapshot(store: ovlcore.Store) -> dict[str, Any]:
    """Everything a failed load must leave unchanged."""
    return {
        "images": sorted(i.id for i in store.images.list()),
        "layers": sorted(layer.chain_id for layer in store.layers.list()),
        "tmp": sorted(os.listdir(store.root / "tmp")),
        "trash": sorted(os.listdir(store.root / "trash")),
        "layer_dirs": sorted(os.listdir(store.root / "layers")),
        "image_dirs": sorted(os.listdir(store.root / "images")),
        "tags": sorted((t, i.id) for i in store.images.list() for t in i.tags),
    }


def tree(fs: Any) -> dict[str, tuple[Any, ...]]:
    """The merged view as {path: (type, mode, uid, gid, content digest or link target)}."""
    out: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in fs.walk("/"):
        for name in dirs + files:
            p = top.rstrip("/") + "/" + name
            st = fs.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                extra: Any = fs.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = sha256_digest(fs.read_bytes(p))
            else:
                extra = None
            out[p] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
    return out


def members(path: Path | bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    f: Any = io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")
    with f, tarfile.open(fileobj=f, mode="r:") as tf:
        out = {}
        for info in tf.getmembers():
            data = tf.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            out[info.name] = (info, data)
        return out


def write_tar(path: Path, items: dict[str, tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, (info, data) in items.items():
            info = _copy_info(info, name)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)


def _copy_info(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    new = tarfile.TarInfo(name)
    new.type, new.mode, new.mtime, new.linkname = info.type, info.mode, info.mtime, info.linkname
    return new


def edit_archive(src: Path, dst: Path, edit: Callable[[dict[str, tuple[tarfile.TarInfo, bytes | None]]], None]) -> Path:
    items = members(src)
    edit(items)
    write_tar(dst, items)
    return dst


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def docker_archive(path: Path, layers: list[bytes], *, tags: list[str] | None = None, config: bytes | None = None) -> Path:
    """A docker-archive made by hand: the given layer tars, a config naming their diff_ids."""
    items: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    names = []
    for n, layer in enumerate(layers):
        name = f"l{n}/layer.tar"
        items[name] = file_entry(name, layer)
        names.append(name)
    if config is None:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "created": "2024-01-01T00:00:00Z",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(x) for x in layers]},
                "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"step {n}"} for n in range(len(layers))],
            }
        ).encode()
    cname = sha256_digest(config).removeprefix("sha256:") + ".json"
    items[cname] = file_entry(cname, config)
    manifest = [{"Config": cname, "RepoTags": tags or ["crafted:1"], "Layers": names}]
    items["manifest.json"] = file_entry("manifest.json", json.dumps(manifest).encode())
    write_tar(path, items)
    return path


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def other(tmp_path: Path) -> ovlcore.Store:
    return open_store(tmp_path / "other")


@pytest.fixture()
def images(store: ovlcore.Store, tmp_path: Path) -> dict[str, ovlcore.Image]:
    """base:1 (imported), app:1 (a commit with whiteouts and an opaque directory), app:2 (another commit
    on app:1), side:1 (a different commit on base:1)."""
    src = tmp_path / "rootfs.tar"
    src.write_bytes(tar(*BASE_ENTRIES))
    base = store.images.import_archive(str(src), tag="base:1", changes=["ENV PATH=/bin", 'CMD ["/bin/tool"]'])
    c = store.containers.create(base, name="c1")
    fs = c.fs
    fs.write_bytes("/etc/new", b"new file\n")
    fs.remove("/etc/gone")
    fs.rmtree("/doomed")
    fs.rmtree("/opq")
    fs.mkdir("/opq")
    fs.write_bytes("/opq/fresh", b"fresh\n")
    fs.chmod("/etc/config", 0o600)
    with fs.open("/var/lib/data", "ab") as f:
        f.write(b"appended")
    fs.symlink("/etc/config", "/cfg-link")
    app1 = c.commit("app:1", message="first commit", author="tester", changes=["ENV A=1"])
    c1b = store.containers.create(app1, name="c1b")
    c1b.fs.write_bytes("/second", b"2\n")
    c1b.fs.remove("/bin/alias")
    c1b.fs.rmtree("/opq")
    c1b.fs.mkdir("/opq")
    c1b.fs.write_bytes("/opq/fresh", b"fresher\n")
    app2 = c1b.commit("app:2", message="second commit")
    c2 = store.containers.create(base, name="c2")
    c2.fs.write_bytes("/side", b"side\n")
    side = c2.commit("side:1")
    return {"base": base, "app1": app1, "app2": app2, "side": side}


def assert_same_image(a: ovlcore.Image, b: ovlcore.Image) -> None:
    assert a.id == b.id
    assert a.config_bytes == b.config_bytes
    assert [x.diff_id for x in a.layers] == [x.diff_id for x in b.layers]
    assert [x.chain_id for x in a.layers] == [x.chain_id for x in b.layers]
    ha = [(h.created, h.created_by, h.comment, h.empty_layer, h.size) for h in a.history()]
    hb = [(h.created, h.created_by, h.comment, h.empty_layer, h.size) for h in b.history()]
    assert ha == hb
    assert tree(a.fs) == tree(b.fs)


# ----------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_round_trip_preserves_ids_tags_history_and_contents(
    fmt: str, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    out = tmp_path / f"save-{fmt}.tar"
    store.images.save(["app:2", "app:1", "side:1"], out, format=fmt)
    loaded = other.images.load(out)
    assert [i.id for i in loaded] == [images["app2"].id, images["app1"].id, images["side"].id]
    for key in ("app1", "app2", "side"):
        mine = images[key]
        theirs = other.images.get(mine.id)
        assert_same_image(mine, theirs)
        assert theirs.tags == mine.tags
    # Whiteouts and the opaque directory survive: the merged views agree, deleted paths stay deleted.
    fs = other.images.get("app:2").fs
    assert not fs.lexists("/etc/gone") and not fs.lexists("/doomed") and not fs.lexists("/bin/alias")
    assert fs.listdir("/opq") == ["fresh"]
    assert fs.read_bytes("/var/lib/data") == b"x" * 10000 + b"appended"
    assert fs.read_bytes("/opq/fresh") == b"fresher\n"
    # The base was not named, so it is not tagged, but its layer is there.
    with pytest.raises(ovlcore.ImageNotFound):
        other.images.get("base:1")
    assert other.check().ok
    assert os.listdir(other.root / "tmp") == []


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_layers_reexport_byte_identical_after_load(
    fmt: str, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    out = tmp_path / "x.tar"
    store.images.save("app:2", out, format=fmt)
    other.images.load(out)
    for layer in other.images.get("app:2").layers:
        stream = layer.tar()
        data = stream.read()
        assert sha256_digest(data) == layer.diff_id == stream.diff_id
        assert len(data) == layer.tar_size


def test_docker_archive_layout(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "d.tar"
    store.images.save(["app:1", "side:1"], out)
    m = members(out)
    manifest = json.loads(m["manifest.json"][1])  # type: ignore[arg-type]
    assert [e["RepoTags"] for e in manifest] == [["app:1"], ["side:1"]]
    for entry, img in zip(manifest, [images["app1"], images["side"]]):
        assert m[entry["Config"]][1] == img.config_bytes
        assert entry["Config"] == img.id.removeprefix("sha256:") + ".json"
        for path, layer in zip(entry["Layers"], img.layers):
            assert sha256_digest(m[path][1]) == layer.diff_id  # type: ignore[arg-type]
            assert m[path.replace("layer.tar", "VERSION")][1] == b"1.0"
    repos = json.loads(m["repositories"][1])  # type: ignore[arg-type]
    assert set(repos) == {"app", "side"}
    # The shared base layer is written once.
    layer_tars = [n for n in m if n.endswith("/layer.tar")]
    assert len(layer_tars) == len({lay.diff_id for i in (images["app1"], images["side"]) for lay in i.layers}) == 3


def test_oci_layout(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    store.images.save(["app:2", "side:1"], out, format="oci")
    m = members(out)
    assert json.loads(m["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[arg-type]
    index = json.loads(m["index.json"][1])  # type: ignore[arg-type]
    assert index["schemaVersion"] == 2
    refs = [d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]]
    assert refs == ["app:2", "side:1"]
    names = [d["annotations"]["io.containerd.image.name"] for d in index["manifests"]]
    assert names == ["docker.io/library/app:2", "docker.io/library/side:1"]
    blobs = {n.removeprefix("blobs/sha256/"): d for n, (_, d) in m.items() if n.startswith("blobs/sha256/") and d is not None}
    # Every blob is named by its digest.
    for hexd, data in blobs.items():
        assert sha256_digest(data) == "sha256:" + hexd
    layer_digests = []
    for desc, img in zip(index["manifests"], [images["app2"], images["side"]]):
        assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        raw = blobs[desc["digest"].removeprefix("sha256:")]
        assert len(raw) == desc["size"]
        man = json.loads(raw)
        assert man["config"]["digest"] == img.id
        assert man["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert blobs[img.id.removeprefix("sha256:")] == img.config_bytes
        for ld, layer in zip(man["layers"], img.layers):
            assert ld["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
            assert ld["digest"] == layer.diff_id
            assert ld["size"] == len(blobs[ld["digest"].removeprefix("sha256:")])
            layer_digests.append(ld["digest"])
    # Shared layers once: 3 layers for app:2, 2 for side:1, the base shared.
    assert len(layer_digests) == 5
    layer_blobs = [n for n in blobs if "sha256:" + n in layer_digests]
    assert len(layer_blobs) == 4


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_oci_compressed_layers(
    compression: str, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    out = tmp_path / "c.tar"
    store.images.save("app:2", out, format="oci", compression=compression)
    m = members(out)
    index = json.loads(m["index.json"][1])  # type: ignore[arg-type]
    man = json.loads(m["blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:")][1])  # type: ignore[arg-type]
    for ld, layer in zip(man["layers"], images["app2"].layers):
        assert ld["mediaType"] == f"application/vnd.oci.image.layer.v1.tar+{compression}"
        assert ld["digest"] != layer.diff_id
        blob = m["blobs/sha256/" + ld["digest"].removeprefix("sha256:")][1]
        assert sha256_digest(blob) == ld["digest"] and len(blob) == ld["size"]  # type: ignore[arg-type]
    (img,) = other.images.load(out)
    assert_same_image(images["app2"], img)
    assert img.tags == ["app:2"]


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_docker_archive_with_compressed_layers(
    compression: str | None, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    out = tmp_path / "c.tar"
    store.images.save("app:1", out, compression=compression)
    (img,) = other.images.load(out)
    assert_same_image(images["app1"], img)


def test_docker_archive_with_bzip2_and_xz_layers(
    store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    # Docker's load decompresses layer.tar members whatever their compression, bzip2 and xz included.
    saved = tmp_path / "plain.tar"
    store.images.save("app:2", saved)

    def compress(items: dict[str, tuple[tarfile.TarInfo, bytes | None]]) -> None:
        (entry,) = json.loads(items["manifest.json"][1])  # type: ignore[arg-type]
        assert len(entry["Layers"]) >= 3
        for n, name in enumerate(entry["Layers"]):
            info, data = items[name]
            assert data is not None
            pack = [bz2.compress, lzma.compress, gzip.compress][n % 3]
            items[name] = (info, pack(data))

    (img,) = other.images.load(edit_archive(saved, tmp_path / "mixed.tar", compress))
    assert_same_image(images["app2"], img)
    assert img.diff_ids == images["app2"].diff_ids and os.listdir(other.root / "tmp") == []


def test_save_refs_follow_docker(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    store.images.tag("app:1", "app:latest")
    out = tmp_path / "r.tar"
    # A bare repository name saves every tag of that repository.
    store.images.save("app", out)
    manifest = json.loads(members(out)["manifest.json"][1])  # type: ignore[arg-type]
    tags = sorted(t for e in manifest for t in e["RepoTags"])
    assert tags == ["app:1", "app:2", "app:latest"]
    assert len(manifest) == 2
    # By id: no tag. Duplicates collapse.
    store.images.save([images["side"].id, images["side"].short_id], out)
    manifest = json.loads(members(out)["manifest.json"][1])  # type: ignore[arg-type]
    assert manifest == [
        {"Config": images["side"].id.removeprefix("sha256:") + ".json", "RepoTags": None, "Layers": manifest[0]["Layers"]}
    ]
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.save("nope:1", out)
    with pytest.raises(ValueError):
        store.images.save("app:1", out, format="zip")


def test_save_to_file_objects_and_progress(
    store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    seen: list[int] = []
    buf = io.BytesIO()
    store.images.save("app:2", buf, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == len(buf.getvalue())
    path = tmp_path / "p.tar"
    store.images.save("app:2", path)
    assert path.read_bytes() == buf.getvalue()  # deterministic output
    # Load from a seekable file object, from a stream that cannot seek, and with progress.
    buf.seek(0)
    (img,) = other.images.load(buf)
    assert img.id == images["app2"].id

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            return self._b.read(min(n, 7777) if n and n > 0 else n)

    third = ovlcore.Store(tmp_path / "third")
    loaded_progress: list[int] = []
    (img,) = third.images.load(Pipe(buf.getvalue()), progress=loaded_progress.append)
    assert img.id == images["app2"].id and loaded_progress
    assert os.listdir(third.root / "tmp") == []


def test_save_to_path_is_atomic(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "atomic.tar"
    out.write_bytes(b"previous")

    def broken(self: Any, compression: Any = None) -> Any:
        raise OSError(5, "disk on fire")

    monkeypatch.setattr(ovlcore.Layer, "tar", broken)
    with pytest.raises(OSError, match="disk on fire"):
        store.images.save("app:1", out)
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_load_compressed_archive(
    how: str, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    plain = tmp_path / "a.tar"
    store.images.save("app:2", plain, format="oci")
    if how == "gzip":
        packed = tmp_path / "a.tar.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        if shutil.which("zstd") is None:
            pytest.skip("the zstd program is not installed")
        packed = tmp_path / "a.tar.zst"
        subprocess.run(["zstd", "-q", "-o", str(packed), str(plain)], check=True)
    (img,) = other.images.load(packed)
    assert_same_image(images["app2"], img)
    # As a file object too.
    third = ovlcore.Store(tmp_path / "third")
    with open(packed, "rb") as f:
        (img,) = third.images.load(f)
    assert img.id == images["app2"].id
    assert os.listdir(other.root / "tmp") == [] and os.listdir(third.root / "tmp") == []


def test_load_oci_directory(store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    store.images.save(["app:2", "side:1"], out, format="oci", compression="gzip")
    d = tmp_path / "layout"
    d.mkdir()
    with tarfile.open(out) as tf:
        tf.extractall(d, filter="data")
    loaded = other.images.load(d)
    assert {i.id for i in loaded} == {images["app2"].id, images["side"].id}
    assert other.images.get("side:1").id == images["side"].id


def test_load_skips_layers_the_store_has(
    store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first.tar"
    store.images.save("app:1", first, format="oci")
    other.images.load(first)
    before = {layer.chain_id: (layer.path.stat().st_ino, layer.created) for layer in other.layers.list()}
    calls: list[Any] = []
    from ovlcore.archive.members import Members

    real = Members.import_layer

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(Members, "import_layer", counting)
    second = tmp_path / "second.tar"
    store.images.save(["app:2", "side:1"], second, format="oci")
    other.images.load(second)
    # app:2 adds one layer on app:1, side:1 one on the base: two extractions, the three known layers skipped.
    assert len(calls) == 2
    after = {layer.chain_id: (layer.path.stat().st_ino, layer.created) for layer in other.layers.list()}
    assert {k: after[k] for k in before} == before
    # Loading the same archive again extracts nothing and changes nothing but (identical) tags.
    snap = snapshot(other)
    other.images.load(second)
    assert len(calls) == 2
    assert snapshot(other) == snap


def test_load_moves_tags(store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "t.tar"
    store.images.save("app:1", out)
    other.images.load(out)
    store.images.tag("app:2", "app:1")
    store.images.save("app:1", out)
    other.images.load(out)
    assert other.images.get("app:1").id == images["app2"].id
    assert other.images.get(images["app1"].id).tags == []


# ----------------------------------------------------------------------------------------------------
# bad archives
# ----------------------------------------------------------------------------------------------------


def expect_invalid(store: ovlcore.Store, source: Any, *fragments: str) -> str:
    before = snapshot(store)
    with pytest.raises(InvalidArchive) as exc:
        store.images.load(source)
    msg = str(exc.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert snapshot(store) == before
    assert isinstance(exc.value, ValueError)
    return msg


def flip_last_content_byte(data: bytes) -> bytes:
    """Change one byte of file content inside a layer tar (size unchanged)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        biggest = max((m for m in tf.getmembers() if m.isreg()), key=lambda m: m.size)
        pos = biggest.offset_data + biggest.size - 1
    out = bytearray(data)
    out[pos] ^= 0xFF
    return bytes(out)


@pytest.fixture()
def saved(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "d.tar"
    o = tmp_path / "o.tar"
    store.images.save(["app:2", "side:1"], d)
    store.images.save(["app:2", "side:1"], o, format="oci")
    return {"docker": d, "oci": o}


def test_docker_layer_diff_id_mismatch(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    # Corrupt the top layer of app:2: the layers below it are extracted first and must go again.
    top = images["app2"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info, data = items[f"{top}/layer.tar"]
        items[f"{top}/layer.tar"] = (info, flip_last_content_byte(data))

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, "diff_id mismatch", f"{top}/layer.tar")
    assert other.layers.list() == []


def test_oci_blob_digest_mismatch(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    top = images["side"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info, data = items[f"blobs/sha256/{top}"]
        items[f"blobs/sha256/{top}"] = (info, flip_last_content_byte(data))

    bad = edit_archive(saved["oci"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, "mismatch", top)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_oci_compressed_blob_digest_mismatch(
    compression: str, store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path
) -> None:
    good = tmp_path / "c.tar"
    store.images.save("app:1", good, format="oci", compression=compression)
    # Claim a different (but well-formed) blob: rename a layer blob and fix up the manifest's digest only
    # in the index entry... simpler: swap in a blob with the same uncompressed content, other compression.
    items = members(good)
    index = json.loads(items["index.json"][1])  # type: ignore[arg-type]
    mname = "blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:")
    man = json.loads(items[mname][1])  # type: ignore[arg-type]
    ld = man["layers"][-1]
    blob_name = "blobs/sha256/" + ld["digest"].removeprefix("sha256:")
    info, blob = items[blob_name]
    # Append a second (empty) gzip/zstd frame: the same uncompressed bytes, a different blob digest.
    extra = gzip.compress(b"") if compression == "gzip" else bytes.fromhex("28b52ffd2000010000")
    items[blob_name] = (info, blob + extra)  # type: ignore[operator]
    ld["size"] = len(blob) + len(extra)  # type: ignore[arg-type]
    new_man = json.dumps(man).encode()
    new_mname = "blobs/sha256/" + sha256_digest(new_man).removeprefix("sha256:")
    items[new_mname] = file_entry(new_mname, new_man)
    index["manifests"][0]["digest"] = sha256_digest(new_man)
    index["manifests"][0]["size"] = len(new_man)
    items["index.json"] = file_entry("index.json", json.dumps(index).encode())
    bad = tmp_path / "bad.tar"
    write_tar(bad, items)
    expect_invalid(other, bad, "digest mismatch", ld["digest"])


def test_oci_missing_blob(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    top = images["app2"].layers[-1].diff_id.removeprefix("sha256:")
    bad = edit_archive(saved["oci"], tmp_path / "bad.tar", lambda items: items.pop(f"blobs/sha256/{top}"))
    expect_invalid(other, bad, "missing", top)
    cfg = images["side"].id.removeprefix("sha256:")
    bad = edit_archive(saved["oci"], tmp_path / "bad2.tar", lambda items: items.pop(f"blobs/sha256/{cfg}"))
    expect_invalid(other, bad, "missing", cfg)


def test_oci_blob_size_mismatch(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    top = images["app2"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info, data = items[f"blobs/sha256/{top}"]
        items[f"blobs/sha256/{top}"] = (info, data + b"\0" * 512)

    bad = edit_archive(saved["oci"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, top, "bytes")


def test_manifest_names_missing_layer(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    top = images["side"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        items.pop(f"{top}/layer.tar")

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, f"{top}/layer.tar", "not in the archive")

    def edit2(items: dict[str, Any]) -> None:
        manifest = json.loads(items["manifest.json"][1])
        manifest[0]["Layers"][1] = "nowhere/layer.tar"
        items["manifest.json"] = file_entry("manifest.json", json.dumps(manifest).encode())

    bad = edit_archive(saved["docker"], tmp_path / "bad2.tar", edit2)
    expect_invalid(other, bad, "nowhere/layer.tar", "not in the archive")


def test_layer_count_mismatch(other: ovlcore.Store, saved: dict[str, Path], tmp_path: Path) -> None:
    def edit(items: dict[str, Any]) -> None:
        manifest = json.loads(items["manifest.json"][1])
        manifest[0]["Layers"].pop()
        items["manifest.json"] = file_entry("manifest.json", json.dumps(manifest).encode())

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, "2 layers", "3 diff_ids")


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ([F("../escape", b"evil")], "../escape"),
        ([D("ok/"), F("ok/../../escape", b"evil")], "escape"),
        ([F("/abs/escape", b"evil")], "absolute"),
        ([L("link", "/tmp"), F("link/escape", b"evil")], "link/escape"),
    ],
)
def test_path_escape_inside_a_layer(other: ovlcore.Store, tmp_path: Path, entries: list[Any], fragment: str) -> None:
    good = tar(D("a/"), F("a/file", b"fine"))
    evil = tar(*entries)
    # The escape sits in the second layer: the first one was extracted and must be discarded.
    bad = docker_archive(tmp_path / "bad.tar", [good, evil])
    expect_invalid(other, bad, "l1/layer.tar", fragment)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()


@pytest.mark.parametrize("config", [b"this is not json", b"[1, 2]", b'{"rootfs": 3}'])
def test_config_that_is_not_json(other: ovlcore.Store, tmp_path: Path, config: bytes) -> None:
    layer = tar(F("f", b"x"))
    bad = docker_archive(tmp_path / "bad.tar", [layer], config=config)
    expect_invalid(other, bad, "config", sha256_digest(config).removeprefix("sha256:"))


def test_config_digest_mismatch(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    cfg = images["side"].id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info, data = items[f"{cfg}.json"]
        items[f"{cfg}.json"] = (info, data.replace(b'"os":"linux"', b'"os":"LINUX"'))

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, "digest mismatch", cfg)
    bad = edit_archive(saved["oci"], tmp_path / "bad2.tar", lambda items: items.__setitem__(f"blobs/sha256/{cfg}", (items[f"blobs/sha256/{cfg}"][0], items[f"blobs/sha256/{cfg}"][1].replace(b'"os":"linux"', b'"os":"LINUX"'))))  # type: ignore[union-attr]
    expect_invalid(other, bad, "digest mismatch", cfg)


def test_failure_in_a_later_image_publishes_nothing(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    # app:2 is fine; side:1's own layer is corrupt: neither image (nor the shared base) may appear.
    top = images["side"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info, data = items[f"{top}/layer.tar"]
        items[f"{top}/layer.tar"] = (info, flip_last_content_byte(data))

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, "diff_id mismatch")
    assert other.images.list() == [] and other.layers.list() == []


def test_not_an_archive(other: ovlcore.Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, I am not a tar file" * 100)
    expect_invalid(other, junk, "not a valid tar archive")
    empty = tmp_path / "empty.tar"
    empty.write_bytes(tar(F("something", b"else")))
    expect_invalid(other, empty, "neither manifest.json", "index.json")
    expect_invalid(other, io.BytesIO(gzip.compress(b"garbage" * 1000)), "not a valid tar archive")


def test_truncated_archive(other: ovlcore.Store, saved: dict[str, Path], tmp_path: Path) -> None:
    data = saved["docker"].read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    before = snapshot(other)
    with pytest.raises(InvalidArchive):
        other.images.load(cut)
    assert snapshot(other) == before
    # The same through a stream that must be spooled first.
    before = snapshot(other)
    with pytest.raises(InvalidArchive):
        other.images.load(io.BufferedReader(io.BytesIO(gzip.compress(data[: len(data) // 2]))))  # type: ignore[arg-type]
    assert snapshot(other) == before


def test_outer_symlink_escape(other: ovlcore.Store, saved: dict[str, Path], images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    top = images["side"].layers[-1].diff_id.removeprefix("sha256:")

    def edit(items: dict[str, Any]) -> None:
        info = tarfile.TarInfo(f"{top}/layer.tar")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../etc/passwd"
        items[f"{top}/layer.tar"] = (info, None)

    bad = edit_archive(saved["docker"], tmp_path / "bad.tar", edit)
    expect_invalid(other, bad, f"{top}/layer.tar", "not in the archive")


# ----------------------------------------------------------------------------------------------------
# other tools: skopeo and umoci read what save writes, and write what load reads
# ----------------------------------------------------------------------------------------------------

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (apt-get install skopeo)")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (apt-get install umoci)")


@needs_skopeo
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_skopeo_inspects_oci_archive(compression: str | None, store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    store.images.save("app:2", out, format="oci", compression=compression)
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], check=True, capture_output=True, text=True).stdout)
    config = json.loads(
        subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{out}:app:2"], check=True, capture_output=True, text=True).stdout
    )
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in images["app2"].layers]
    assert len(info["Layers"]) == 3
    if compression is None:
        assert info["Layers"] == [layer.diff_id for layer in images["app2"].layers]
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{out}"], check=True, capture_output=True, text=True).stdout)
    assert raw["config"]["digest"] == images["app2"].id


@needs_skopeo
def test_skopeo_made_archives_load(store: ovlcore.Store, other: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    store.images.save("app:2", out, format="oci")
    # skopeo rewrites our archive: an OCI directory with gzip layers, and a docker-archive.
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "gzip", f"oci-archive:{out}", f"oci:{layout}:re:1"],
        check=True,
        capture_output=True,
    )
    (img,) = other.images.load(layout)
    assert img.id == images["app2"].id and img.tags == ["re:1"]
    assert tree(img.fs) == tree(images["app2"].fs)
    darchive = tmp_path / "d.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{out}", f"docker-archive:{darchive}:re:2"], check=True, capture_output=True)
    third = ovlcore.Store(tmp_path / "third")
    (img,) = third.images.load(darchive)
    assert [lay.diff_id for lay in img.layers] == [lay.diff_id for lay in images["app2"].layers]
    assert img.tags == ["re:2"]
    assert tree(img.fs) == tree(images["app2"].fs)


@needs_umoci
def test_umoci_unpacks_oci_layout(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    store.images.save("app:2", out, format="oci", compression="gzip")
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tf:
        tf.extractall(layout, filter="data")
    stat_out = subprocess.run(["umoci", "stat", "--json", "--image", f"{layout}:app:2"], check=True, capture_output=True, text=True)
    history = json.loads(stat_out.stdout)["history"]
    assert [h.get("created_by", "") for h in history] == [h["created_by"] for h in images["app2"].config["history"]]
    bundle = tmp_path / "bundle"
    cmd = ["umoci", "unpack", "--image", f"{layout}:app:2", str(bundle)]
    if os.geteuid() != 0:
        cmd.insert(2, "--rootless")
    subprocess.run(cmd, check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    found = set()
    for top, dirs, files in os.walk(rootfs):
        for n in dirs + files:
            found.add("/" + os.path.relpath(os.path.join(top, n), rootfs))
    assert found == set(tree(images["app2"].fs))
    assert (rootfs / "var/lib/data").read_bytes() == b"x" * 10000 + b"appended"


def test_save_to_pipes_and_open_files(store: ovlcore.Store, images: dict[str, ovlcore.Image], tmp_path: Path) -> None:
    """The core writes straight to a real file descriptor: a pipe, or a buffered file already holding data
    (whose position stays right for what is written after)."""
    import threading

    ref = io.BytesIO()
    store.images.save(["app:2", "side:1"], ref, format="oci")
    expected = ref.getvalue()
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
    reader.start()
    with os.fdopen(w, "wb") as f:
        store.images.save(["app:2", "side:1"], f, format="oci")
    reader.join()
    assert got == [expected]
    path = tmp_path / "mixed.bin"
    with open(path, "wb") as f:
        f.write(b"prefix")
        store.images.save(["app:2", "side:1"], f, format="oci")
        assert f.tell() == 6 + len(expected)
        f.write(b"suffix")
    assert path.read_bytes() == b"prefix" + expected + b"suffix"
    # Container export takes the same path.
    c = store.containers.create("app:2")
    buf = io.BytesIO()
    c.export(buf)
    c.export(tmp_path / "e.tar")
    assert (tmp_path / "e.tar").read_bytes() == buf.getvalue()


def test_layer_tar_without_verification(store: ovlcore.Store, images: dict[str, ovlcore.Image]) -> None:
    for layer in images["app2"].layers:
        verified = layer.tar()
        data = verified.read()
        assert verified.diff_id == verified.digest == layer.diff_id
        fast = layer.tar(verify=False)
        assert fast.read() == data
        assert fast.diff_id is None and fast.digest is None
        packed = layer.tar("gzip", verify=False)
        assert gzip.decompress(packed.read()) == data
        assert packed.diff_id is None and packed.digest is not None
