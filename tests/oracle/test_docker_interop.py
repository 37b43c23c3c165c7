"""Interoperability with a real Docker engine: what ovlcore saves, Docker loads and runs; what Docker saves,
ovlcore loads with the same ids, history and contents; ``export`` and ``docker export`` agree.

Needs a running Docker engine (CI starts one: ``containerd &``, ``dockerd --iptables=false --bridge=none &``)
and ``busybox-static``. Without them every test here skips, saying why.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import secrets
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from support.docker import DockerObjects, busybox_rootfs, run

pytestmark = pytest.mark.docker

#: What Docker adds to every container (its "init layer") and what `docker export` therefore shows.
DOCKER_INIT = {
    ".dockerenv",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc",
    "sys",
}


def ovl_tree(fs: Any) -> dict[str, tuple[Any, ...]]:
    """{path without leading /: (kind, permissions, uid, gid, size or None, content digest / link target)}."""
    out: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in fs.walk("/"):
        for name in dirs + files:
            p = top.rstrip("/") + "/" + name
            st = fs.lstat(p)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                entry: tuple[Any, ...] = ("symlink", stat.S_IMODE(mode), st.st_uid, st.st_gid, None, fs.readlink(p))
            elif stat.S_ISDIR(mode):
                entry = ("dir", stat.S_IMODE(mode), st.st_uid, st.st_gid, None, None)
            elif stat.S_ISREG(mode):
                digest = hashlib.sha256(fs.read_bytes(p)).hexdigest()
                entry = ("file", stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size, digest)
            else:
                entry = ("other", stat.S_IMODE(mode), st.st_uid, st.st_gid, None, None)
            out[p.lstrip("/")] = entry
    return out


def tar_tree(data: bytes, *, drop: set[str] = frozenset()) -> dict[str, tuple[Any, ...]]:  # type: ignore[assignment]
    """The same description from a tar (hard links resolved to their target's content)."""
    out: dict[str, tuple[Any, ...]] = {}
    digests: dict[str, tuple[int, str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            name = m.name.rstrip("/").removeprefix("./")
            if not name or name == "." or name in drop:
                continue
            perm = m.mode & 0o7777
            if m.issym():
                out[name] = ("symlink", 0o777, m.uid, m.gid, None, m.linkname)
            elif m.isdir():
                out[name] = ("dir", perm, m.uid, m.gid, None, None)
            elif m.islnk():
                size, digest = digests[m.linkname.rstrip("/").removeprefix("./")]
                out[name] = ("file", perm, m.uid, m.gid, size, digest)
            elif m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
                digests[name] = (m.size, digest)
                out[name] = ("file", perm, m.uid, m.gid, m.size, digest)
            else:
                out[name] = ("other", perm, m.uid, m.gid, None, None)
    return out


def tar_mtimes(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.rstrip("/").removeprefix("./"): int(m.mtime) for m in tf.getmembers()}


def build_ovlcore_image(store: ovlcore.Store, tmp_path: Path) -> ovlcore.Image:
    """busybox base + two committed layers with whiteouts, an opaque directory and a type change."""
    base = store.images.import_archive(str(busybox_rootfs(tmp_path)), tag="bb-base:1", changes=['CMD ["sh"]'])
    c = store.containers.create(base, name="one")
    fs = c.fs
    fs.write_bytes("/data/new.txt", b"new in layer 1\n")
    fs.remove("/gone.txt")
    fs.rmtree("/olddir")
    fs.rmtree("/opq")
    fs.mkdir("/opq")
    fs.write_bytes("/opq/fresh", b"fresh\n")
    fs.chmod("/data/a.txt", 0o600)
    fs.symlink("../data/a.txt", "/bin/a-link")
    one = c.commit("bb-one:1", message="layer one", changes=["ENV ONE=1"])
    c2 = store.containers.create(one, name="two")
    fs2 = c2.fs
    fs2.remove("/data/new.txt")
    fs2.rmtree("/data/sub")
    fs2.write_bytes("/data/sub", b"a file where a directory was\n")
    fs2.mkdir("/opq/nested")
    fs2.write_bytes("/opq/nested/n", b"n\n")
    with fs2.open("/data/big", "ab") as f:
        f.write(b"tail")
    return c2.commit("bb-two:1", message="layer two")


LIST_SCRIPT = (
    "cd / && for top in $(busybox ls -A /); do case $top in proc|sys|dev) continue;; esac; "
    "busybox find \"$top\" -xdev; done | while read -r p; do "
    "busybox stat -c '%n|%F|%a|%u|%g|%s' \"$p\"; "
    "if busybox test -f \"$p\" -a ! -L \"$p\"; then busybox sha256sum \"$p\"; fi; done"
)


def docker_listing(dk: DockerObjects, image: str, drop: set[str]) -> dict[str, tuple[Any, ...]]:
    """What a shell inside a Docker container of ``image`` sees (container-made mounts dropped)."""
    out = run("docker", "run", "--name", dk.container("list"), "--network", "none", image, "sh", "-c", LIST_SCRIPT).stdout.decode()
    seen: dict[str, tuple[Any, ...]] = {}
    digests: dict[str, str] = {}
    for line in out.splitlines():
        if "|" in line:
            name, kind, perm, uid, gid, size = line.rsplit("|", 5)
            name = name.removeprefix("./")
            top = name.split("/")[0]
            if name in drop or top in {"proc", "sys", "dev"}:
                continue
            k = {"directory": "dir", "symbolic link": "symlink", "regular file": "file", "regular empty file": "file"}.get(kind, "other")
            seen[name] = (k, int(perm, 8), int(uid), int(gid), int(size) if k == "file" else None)
        elif line.strip():
            digest, _, name = line.partition("  ")
            digests[name.removeprefix("./")] = digest
    return {n: v + (digests.get(n),) for n, v in seen.items()}


def test_ovlcore_image_runs_in_docker(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> None:
    img = build_ovlcore_image(store, tmp_path)
    tag = dk.image("two")
    store.images.tag(img, tag)
    out = tmp_path / "save.tar"
    store.images.save(tag, out)
    loaded = run("docker", "load", "-i", str(out)).stdout.decode()
    assert f"Loaded image: {tag}" in loaded
    inspect = json.loads(run("docker", "image", "inspect", tag).stdout)[0]
    assert inspect["Id"] == img.id
    assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in img.layers]

    ours = {n: (k, perm, uid, gid, size if k == "file" else None, extra if k == "file" else None) for n, (k, perm, uid, gid, size, extra) in ovl_tree(img.fs).items()}
    theirs = docker_listing(dk, tag, DOCKER_INIT)
    # Symlinks: busybox stat reports 777 and the target length; compare kind and presence for them.
    for n, v in ours.items():
        if v[0] == "symlink":
            assert theirs.get(n, ("?",))[0] == "symlink", n
            theirs[n] = v
    assert theirs == ours
    for deleted in ("gone.txt", "olddir", "opq/keep1", "opq/sub", "data/new.txt", "data/sub/b.txt"):
        assert deleted not in theirs
    r = run("docker", "run", "--name", dk.container("cat"), "--network", "none", tag, "sh", "-c",
            "cat /opq/fresh /opq/nested/n /data/sub; test ! -e /gone.txt && test ! -e /olddir && echo absent")
    assert r.stdout.decode() == "fresh\nn\na file where a directory was\nabsent\n"


def test_oci_save_loads_in_docker(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> None:
    img = build_ovlcore_image(store, tmp_path)
    tag = dk.image("oci")
    store.images.tag(img, tag)
    out = tmp_path / "oci.tar"
    store.images.save(tag, out, format="oci", compression="gzip")
    run("docker", "load", "-i", str(out))
    inspect = json.loads(run("docker", "image", "inspect", tag).stdout)[0]
    assert inspect["Id"] == img.id
    r = run("docker", "run", "--name", dk.container("cat"), "--network", "none", tag, "cat", "/opq/fresh")
    assert r.stdout == b"fresh\n"


def test_bzip2_and_xz_layers_load_in_both(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> None:
    """A docker-archive whose layer members are bzip2, xz and gzip: Docker loads it, and so does ovlcore,
    with the same image id and diff_ids."""
    img = build_ovlcore_image(store, tmp_path)
    tag = dk.image("bzxz")
    store.images.tag(img, tag)
    plain = tmp_path / "plain.tar"
    store.images.save(tag, plain)
    mixed = tmp_path / "mixed.tar"
    with tarfile.open(plain) as src, tarfile.open(mixed, "w") as dst:
        (entry,) = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
        packs = {name: [bz2.compress, lzma.compress, gzip.compress][n % 3] for n, name in enumerate(entry["Layers"])}
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None and m.name in packs:
                data = packs[m.name](data)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    run("docker", "load", "-i", str(mixed))
    inspect = json.loads(run("docker", "image", "inspect", tag).stdout)[0]
    assert inspect["Id"] == img.id and inspect["RootFS"]["Layers"] == img.diff_ids
    (ours,) = ovlcore.Store(tmp_path / "other").images.load(mixed)
    assert ours.id == img.id and ovl_tree(ours.fs) == ovl_tree(img.fs)


def test_docker_made_images_load(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> None:
    rootfs = busybox_rootfs(tmp_path)
    base = dk.image("base")
    one = dk.image("one")
    two = dk.image("two")
    run("docker", "import", "-m", "imported", str(rootfs), base)
    c1 = dk.container("c1")
    run("docker", "run", "--name", c1, "--network", "none", base, "sh", "-c",
        "echo new > /data/new.txt; rm /gone.txt; rm -r /olddir; rm -r /opq; mkdir /opq; echo f > /opq/fresh")
    run("docker", "commit", "-m", "first", "-c", "ENV ONE=1", c1, one)
    c2 = dk.container("c2")
    # A container that changes nothing: Docker commits an empty layer whose tar it saves as a symlink.
    run("docker", "run", "--name", c2, "--network", "none", one, "sh", "-c", ":")
    run("docker", "commit", "-m", "nothing", c2, two)
    archive = tmp_path / "docker-save.tar"
    run("docker", "save", "-o", str(archive), base, one, two)

    loaded = store.images.load(archive)
    assert len(loaded) == 3
    for tag in (base, one, two):
        inspect = json.loads(run("docker", "image", "inspect", tag).stdout)[0]
        img = store.images.get(tag)
        assert img.id == inspect["Id"]
        assert [layer.diff_id for layer in img.layers] == inspect["RootFS"]["Layers"]
        assert img.tags == [tag]
        rows = [json.loads(line) for line in run("docker", "history", "--no-trunc", "--human=false", "--format", "{{json .}}", tag).stdout.splitlines()]
        hist = img.history()
        assert [(h.created_by, h.comment, h.size) for h in hist] == [(r["CreatedBy"], r["Comment"], int(r["Size"])) for r in rows]
        assert [h.id for h in hist] == [r["ID"] for r in rows]
        # Same merged contents: compare with `docker export` of a container that never ran.
        cname = dk.container("exp-" + tag.split(":")[0][-4:] + secrets.token_hex(2))
        run("docker", "create", "--name", cname, "--network", "none", tag, "sh")
        exported = run("docker", "export", cname).stdout
        assert tar_tree(exported, drop=DOCKER_INIT) == ovl_tree(img.fs)
    # The layers the three images share were stored once.
    assert len(store.layers.list()) == len({c for i in loaded for c in i.chain_ids})


def test_export_matches_docker_export(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> None:
    img = build_ovlcore_image(store, tmp_path)
    tag = dk.image("exp")
    store.images.tag(img, tag)
    out = tmp_path / "save.tar"
    store.images.save(tag, out)
    run("docker", "load", "-i", str(out))

    # The same changes on both sides, then both containers exported.
    cname = dk.container("exp")
    run("docker", "run", "--name", cname, "--network", "none", tag, "sh", "-c",
        "echo changed > /data/a.txt; rm /data/a-hardlink; mkdir -p /work/d; echo w > /work/d/w; rm -r /opq/nested; ln -s /work/d /wlink")
    theirs = run("docker", "export", cname).stdout
    c = store.containers.create(img, name="exp")
    fs = c.fs
    fs.write_bytes("/data/a.txt", b"changed\n")
    fs.remove("/data/a-hardlink")
    fs.mkdir("/work")
    fs.mkdir("/work/d")
    fs.write_bytes("/work/d/w", b"w\n")
    fs.rmtree("/opq/nested")
    fs.symlink("/work/d", "/wlink")
    ours_path = tmp_path / "ours.tar"
    c.export(ours_path)
    ours = ours_path.read_bytes()
    assert tar_tree(ours) == tar_tree(theirs, drop=DOCKER_INIT)
    # Untouched files keep their times in both.
    mt_ours, mt_theirs = tar_mtimes(ours), tar_mtimes(theirs)
    for name in ("bin/busybox", "data/big", "opq/fresh", "data/sub"):
        assert mt_ours[name] == mt_theirs[name], name
    # An unchanged container: the same entries, in the same order.
    c2 = store.containers.create(img, name="plain")
    buf = io.BytesIO()
    c2.export(buf)
    cplain = dk.container("plain")
    run("docker", "create", "--name", cplain, "--network", "none", tag, "sh")
    plain = run("docker", "export", cplain).stdout
    assert tar_tree(buf.getvalue()) == tar_tree(plain, drop=DOCKER_INIT)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        docker_order = [m.name.rstrip("/") for m in tf.getmembers() if m.name.rstrip("/") not in DOCKER_INIT]
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        our_order = [m.name.rstrip("/") for m in tf.getmembers()]
    assert our_order == docker_order
