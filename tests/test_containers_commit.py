"""``diff``, ``commit`` and ``export``: docker diff's rules (checked against a diff computed from the two
merged trees), the committed layer's content (its tar applied onto the image's layers, with GNU tar and
with an in-memory model, must give the container's merged view), diff_id determinism, history,
``changes``, the committed layer staying immutable while the container goes on, and export."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ovlcore
from support.diffs import assert_parents_first, diff_pairs, expected_diff
from support.images import SampleImages, make_images
from support.layer_apply import gnu_tar_apply, model_of_fs, strip_links, tar_model
from support.operations import apply_fs, dir_op_strategy, op_strategy
from support.privilege import IS_ROOT
from support.stores import open_store
from support.tars import FIXED_MTIME, read_all
from support.trees import compare_trees, fs_tree, host_tree, snapshot


@pytest.fixture
def c(sample: SampleImages) -> Iterator[ovlcore.Container]:
    before = {layer.chain_id: snapshot(layer.path) for layer in sample.child.layers}
    container = sample.store.containers.create(sample.child, command=["/bin/sh", "-c", "make things"])
    yield container
    after = {layer.chain_id: snapshot(layer.path) for layer in sample.child.layers}
    assert after == before, "an image layer changed"


def oracle(sample: SampleImages, c: ovlcore.Container) -> list[tuple[str, str]]:
    return expected_diff(fs_tree(sample.child.fs, xattrs=False), fs_tree(c.fs, xattrs=False))


def sorted_diff(c: ovlcore.Container) -> list[tuple[str, str]]:
    got = diff_pairs(c)
    assert_parents_first(got)
    return sorted(got, key=lambda kp: kp[1])


def rich_changes(c: ovlcore.Container) -> None:
    """A bit of everything a container does."""
    fs = c.fs
    fs.write_text("/etc/motd", "motd of the container\n")
    with fs.open("/data/big.bin", "ab") as f:
        f.write(b"appended")
    fs.remove("/etc/passwd")
    fs.rmtree("/usr/share")
    fs.mkdir("/usr/share")  # opaque: hides the image's /usr/share/doc
    fs.write_bytes("/usr/share/readme", b"fresh share\n")
    fs.rename("/app", "/srv")  # an image directory, renamed
    fs.mkdir("/newdir/sub", parents=True)
    fs.write_bytes("/newdir/sub/file", b"new file")
    fs.link("/newdir/sub/file", "/newdir/hardlink")
    fs.symlink("/etc/motd", "/newdir/abs-link")
    fs.symlink("../etc", "/newdir/rel-link")
    fs.chmod("/bin/sh", 0o700)
    fs.chown("/etc/group", 1000, 1000)
    fs.setxattr("/etc/secret", "user.tag", b"value")
    fs.mkfifo("/newdir/fifo", 0o640)
    fs.utime("/opt/tool", ns=(FIXED_MTIME * 10**9, (FIXED_MTIME + 42) * 10**9))
    fs.remove("/etc/motd")
    fs.mkdir("/etc/motd", 0o711)  # a type change
    fs.write_bytes("/etc/motd/inside", b"i")


# --------------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------------


def test_diff_rules(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    # a same-size, same-mtime rewrite is invisible (content is not compared)
    st0 = fs.stat("/opt/tool")
    fs.write_bytes("/opt/tool", b"tool v2\n")
    fs.utime("/opt/tool", ns=(st0.st_atime_ns, st0.st_mtime_ns))
    # copy-up without a change: invisible
    with fs.open("/etc/secret", "r+b"):
        pass
    # metadata changes: C
    fs.chmod("/bin/sh", 0o700)
    fs.chown("/etc/group", 0, 1000)
    fs.utime("/etc/suid", ns=(FIXED_MTIME * 10**9, (FIXED_MTIME + 1) * 10**9))
    # a directory's own mode change: C (the directory is not listed twice)
    fs.chmod("/var/log", 0o700)
    fs.write_bytes("/var/log/new.log", b"log")
    # new tree: A for every new path
    fs.mkdir("/srv/www/html", parents=True)
    fs.write_bytes("/srv/www/html/index.html", b"<html/>")
    # deleted tree: D, descendants not listed
    fs.rmtree("/usr/share")
    fs.remove("/usr/bin/b")
    # type changes: C; the new directory's children A; the old directory's children not listed
    fs.remove("/etc/motd")
    fs.mkdir("/etc/motd")
    fs.write_bytes("/etc/motd/x", b"x")
    fs.rmtree("/app/data")
    fs.write_bytes("/app/data", b"now a file")
    # a new symlink
    fs.symlink("sh", "/bin/shell")
    want = [
        ("C", "/app"),
        ("C", "/app/data"),
        ("C", "/bin"),
        ("C", "/bin/sh"),
        ("A", "/bin/shell"),
        ("C", "/etc"),
        ("C", "/etc/group"),
        ("C", "/etc/motd"),
        ("A", "/etc/motd/x"),
        ("C", "/etc/suid"),
        ("A", "/srv"),
        ("A", "/srv/www"),
        ("A", "/srv/www/html"),
        ("A", "/srv/www/html/index.html"),
        ("C", "/usr"),
        ("C", "/usr/bin"),
        ("D", "/usr/bin/b"),
        ("D", "/usr/share"),
        ("C", "/var"),
        ("C", "/var/log"),
        ("A", "/var/log/new.log"),
    ]
    got = sorted_diff(c)
    assert got == sorted(want, key=lambda kp: kp[1])
    assert got == oracle(sample, c)
    assert all(p != "/" for _, p in got)
    assert all(str(ch) == f"{ch.kind} {ch.path}" for ch in c.diff())


def test_diff_inside_recreated_directory(sample: SampleImages, c: ovlcore.Container) -> None:
    """A directory deleted and made again hides all of the image's entries below it: for docker diff
    (a comparison of the merged trees) the image's entries under it that are gone are deleted, at any
    depth, and names made again are changes, not additions."""
    fs = c.fs
    fs.rmtree("/app")
    fs.mkdir("/app/data/deeper", parents=True)  # /app opaque; /app/data made inside it
    fs.write_bytes("/app/main.py", b"again")
    want = [
        ("C", "/app"),
        ("C", "/app/data"),
        ("A", "/app/data/deeper"),
        ("D", "/app/data/x.bin"),
        ("C", "/app/main.py"),
    ]
    assert oracle(sample, c) == want
    assert sorted_diff(c) == want


def test_diff_of_renamed_directory(sample: SampleImages, c: ovlcore.Container) -> None:
    c.fs.rename("/usr", "/usr2")
    got = sorted_diff(c)
    assert got == oracle(sample, c)
    assert ("D", "/usr") in got and ("A", "/usr2") in got and ("A", "/usr2/share/doc/c.txt") in got
    c.fs.rename("/usr2", "/usr")
    # renamed back: the merged tree is the image's again, except for directory times (see
    # test_rename_keeps_directory_times), which docker diff does not compare
    assert sorted_diff(c) == oracle(sample, c) == []


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.one_of(st.lists(op_strategy(), max_size=14), st.lists(dir_op_strategy(), max_size=10)))
def test_diff_matches_merged_tree_comparison(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Random operation sequences: ``diff()`` (read from the writable layer) equals the diff computed
    from the image's and the container's merged trees, whatever the sequence."""
    envs = _diff_envs(tmp_path_factory)
    for e in envs:
        c = e.store.containers.create(e.child)
        try:
            for op in ops:
                apply_fs(c.fs, op)
            got = sorted_diff(c)
            want = expected_diff(e.tree, fs_tree(c.fs, xattrs=False))
            assert got == want, f"privilege {e.store.privilege}"
        finally:
            c.remove()


class _DiffEnv:
    def __init__(self, images: SampleImages) -> None:
        self.store, self.child = images.store, images.child
        self.tree = fs_tree(images.child.fs, xattrs=False)


_DIFF_ENVS: dict[str, list[_DiffEnv]] = {}


def _diff_envs(factory: pytest.TempPathFactory) -> list[_DiffEnv]:
    key = str(factory.getbasetemp())
    if key not in _DIFF_ENVS:
        out = []
        for priv in (["root"] if IS_ROOT else []) + ["rootless"]:
            store = open_store(factory.mktemp(f"diffstore-{priv}"), priv)
            out.append(_DiffEnv(make_images(store)))
        _DIFF_ENVS[key] = out
    return _DIFF_ENVS[key]


# --------------------------------------------------------------------------------------------------
# commit: the layer's content
# --------------------------------------------------------------------------------------------------


def layer_blobs(img: ovlcore.Image) -> list[bytes]:
    out = []
    for layer in img.layers:
        stream = layer.tar()
        data = read_all(stream, 1 << 16)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.diff_id == stream.diff_id
        out.append(data)
    return out


def test_commit_layer_content_model(sample: SampleImages, c: ovlcore.Container) -> None:
    """The image's layer tars, then the committed one, applied with the OCI whiteout rules give the
    container's merged tree: every path, type, mode, owner, size, content, link target, xattr and
    (whole-second) mtime."""
    rich_changes(c)
    new = c.commit(tag="rich:1")
    blobs = layer_blobs(new)
    model = strip_links(tar_model(blobs))
    assert model == model_of_fs(c.fs)
    # the committed tar holds only the changes: whiteouts for deletions, an opaque marker for the
    # directory made again, nothing for untouched image files
    with tarfile.open(fileobj=io.BytesIO(blobs[-1])) as t:
        names = [m.name.rstrip("/") for m in t.getmembers()]
    assert "etc/.wh.passwd" in names
    assert "usr/share/.wh..wh..opq" in names
    assert ".wh.app" in names
    assert "usr/lib/libx.so" not in names and "home/user/.profile" not in names
    assert len(names) == len(set(names))


@pytest.mark.skipif(not IS_ROOT, reason="GNU tar can only restore owners and device nodes as root")
def test_commit_layer_content_gnu_tar(sample: SampleImages, c: ovlcore.Container, tmp_path: Path) -> None:
    """The same with GNU tar: extract the image's layers and the committed one in order (whiteouts and
    opaque markers applied first), then compare the host tree with the container's merged view."""
    rich_changes(c)
    new = c.commit()
    root = tmp_path / "rootfs"
    root.mkdir()
    for blob in layer_blobs(new):
        gnu_tar_apply(root, blob, tmp_path)
    want = fs_tree(c.fs)
    got = host_tree(root)
    # tar keeps whole seconds
    sec = lambda t: {p: n.__class__(**{**n.__dict__, "mtime_ns": n.mtime_ns // 10**9 * 10**9}) for p, n in t.items()}  # noqa: E731
    assert compare_trees(sec(got), sec(want), times=True, names=("gnu-tar", "container")) == []


def test_commit_and_export_unusual_entries(sample: SampleImages, c: ovlcore.Container) -> None:
    """Long paths and link targets (PAX), ids beyond ustar, binary xattrs, unusual names."""
    fs = c.fs
    deep = "/" + "/".join(["d" * 40] * 5)
    fs.mkdir(deep, parents=True)
    fs.write_bytes(deep + "/" + "f" * 120, b"long")
    fs.symlink("t" * 150, "/longlink")
    fs.write_bytes("/bigid", b"x")
    fs.chown("/bigid", 3_000_000, 4_000_000)
    fs.setxattr("/bigid", "user.bin", bytes(range(256)))
    fs.write_bytes("/name with spaces & ünï", b"u")
    new = c.commit()
    assert strip_links(tar_model(layer_blobs(new))) == model_of_fs(c.fs)
    buf = io.BytesIO()
    c.export(buf)
    assert strip_links(tar_model([buf.getvalue()])) == model_of_fs(c.fs)
    got = sorted_diff(c)
    assert ("A", deep + "/" + "f" * 120) in got and ("A", "/name with spaces & ünï") in got
    assert got == oracle(sample, c)


def test_commit_then_new_container_sees_the_same(sample: SampleImages, c: ovlcore.Container) -> None:
    rich_changes(c)
    seen = fs_tree(c.fs)
    new = c.commit(tag="rich:2")
    c2 = sample.store.containers.create("rich:2")
    assert compare_trees(seen, fs_tree(c2.fs), times=True, names=("committer", "new container")) == []
    assert compare_trees(seen, fs_tree(new.fs), times=True, names=("committer", "image")) == []
    assert c2.diff() == []
    # the committing container is unaffected: same view, same diff against its own image
    assert compare_trees(seen, fs_tree(c.fs), times=True) == []
    assert c.image.id == sample.child.id
    assert sorted_diff(c) == oracle(sample, c)


def test_commit_of_a_fresh_container_is_an_empty_layer(sample: SampleImages, c: ovlcore.Container) -> None:
    new = c.commit()
    assert len(new.layers) == len(sample.child.layers) + 1
    data = read_all(new.layers[-1].tar(), 1 << 16)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.getmembers() == []
    assert compare_trees(fs_tree(sample.child.fs), fs_tree(new.fs), times=True) == []


# --------------------------------------------------------------------------------------------------
# commit: identity
# --------------------------------------------------------------------------------------------------


def test_layer_tar_hashes_to_diff_id(sample: SampleImages, c: ovlcore.Container) -> None:
    rich_changes(c)
    new = c.commit()
    top = new.layers[-1]
    assert new.config["rootfs"]["diff_ids"] == sample.child.config["rootfs"]["diff_ids"] + [top.diff_id]
    for _ in range(2):
        stream = top.tar()
        data = read_all(stream, 1 << 16)
        assert stream.diff_id == top.diff_id
        assert "sha256:" + hashlib.sha256(data).hexdigest() == top.diff_id
    # the same layer found by diff id and by chain id
    assert sample.store.layers.get(top.chain_id) == top
    assert top.parent == sample.child.layers[-1]


def test_same_content_committed_twice_gives_same_diff_id(sample: SampleImages, c: ovlcore.Container) -> None:
    rich_changes(c)
    first = c.commit()
    second = c.commit()
    assert first.layers[-1].diff_id == second.layers[-1].diff_id
    assert first.layers[-1].chain_id == second.layers[-1].chain_id
    assert first.layers[-1].path == second.layers[-1].path
    assert len(sample.store.layers.list()) == len(sample.child.layers) + 1


def _normalize_times(c: ovlcore.Container, ns: int) -> None:
    """Give every entry of the writable layer the same times (children first)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(c.upper):
        for n in dirnames + filenames:
            hp = os.path.join(dirpath, n)
            st = os.lstat(hp)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # a whiteout
            entries.append("/" + os.path.relpath(hp, c.upper))
    for p in sorted(entries, key=lambda p: -p.count("/")):
        c.fs.utime(p, ns=(ns, ns), follow_symlinks=False)


def test_diff_id_is_deterministic_across_containers(sample: SampleImages) -> None:
    """Two containers making the same changes (times made equal) commit to the same diff_id."""
    ids = []
    for _ in range(2):
        c = sample.store.containers.create(sample.child)
        rich_changes(c)
        _normalize_times(c, (FIXED_MTIME + 1000) * 10**9)
        ids.append(c.commit().layers[-1].diff_id)
    assert ids[0] == ids[1]


# --------------------------------------------------------------------------------------------------
# commit: config and history
# --------------------------------------------------------------------------------------------------


def test_commit_history_and_config(sample: SampleImages, c: ovlcore.Container) -> None:
    c.fs.write_bytes("/hello", b"hello world")
    parent_hist = sample.child.history()
    new = c.commit("hist:1", message="a message", author="Ada <ada@example.com>")
    h = new.history()
    assert len(h) == len(parent_hist) + 1
    top = h[0]
    assert top.id == new.id
    assert top.created_by == "/bin/sh -c make things"  # the container's command
    assert top.comment == "a message"
    assert top.empty_layer is False
    assert top.size == new.layers[-1].size == 11
    assert "hist:1" in top.tags
    assert [(e.created_by, e.comment, e.size) for e in h[1:]] == [(e.created_by, e.comment, e.size) for e in parent_hist]
    cfg = new.config
    assert cfg["history"][-1]["author"] == "Ada <ada@example.com>"
    assert cfg["history"][-1]["comment"] == "a message"
    assert cfg["author"] == "Ada <ada@example.com>"
    assert cfg["history"][:-1] == sample.child.config["history"]
    assert cfg["config"] == sample.child.config["config"]  # no changes asked for: the config is kept
    assert new.tags == ["hist:1"] or new.tags == ["docker.io/library/hist:1"] or "hist" in new.tags[0]
    assert sample.store.images.get("hist:1").id == new.id
    assert new.parent_id == sample.child.id
    # created_by given explicitly
    other = c.commit(created_by="manual step")
    assert other.history()[0].created_by == "manual step"
    assert other.tags == []  # no tag: a dangling image


def test_commit_changes(sample: SampleImages, c: ovlcore.Container) -> None:
    new = c.commit(changes=[
        "ENV A=1 B=two",
        'CMD ["sh", "-c", "echo hi"]',
        "WORKDIR /srv",
        "WORKDIR app",
        "LABEL org.example=yes",
        "EXPOSE 8080 53/udp",
        "USER nobody",
        "ENTRYPOINT /bin/entry",
        "VOLUME /data",
    ])
    cfg = new.config["config"]
    assert "PATH=/bin:/usr/bin" in cfg["Env"]  # kept from the base image
    assert "A=1" in cfg["Env"] and "B=two" in cfg["Env"]
    assert cfg["Cmd"] == ["sh", "-c", "echo hi"]
    assert cfg["WorkingDir"] == "/srv/app"
    assert cfg["Labels"] == {"org.example": "yes"}
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert cfg["User"] == "nobody"
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", "/bin/entry"]
    assert "/data" in cfg["Volumes"]
    assert sample.child.config["config"]["Cmd"] == ["/bin/sh"]  # the parent is unchanged


def test_commit_with_bad_change_leaves_nothing(sample: SampleImages, c: ovlcore.Container) -> None:
    c.fs.write_bytes("/x", b"x")
    images = sorted(i.id for i in sample.store.images.list())
    layers = sorted(layer.chain_id for layer in sample.store.layers.list())
    with pytest.raises(ValueError):
        c.commit("bad:1", changes=["FROBNICATE everything"])
    assert sorted(i.id for i in sample.store.images.list()) == images
    assert sorted(layer.chain_id for layer in sample.store.layers.list()) == layers
    with pytest.raises(ovlcore.ImageNotFound):
        sample.store.images.get("bad:1")
    assert c.fs.read_bytes("/x") == b"x"


# --------------------------------------------------------------------------------------------------
# commit: the committed layer stays immutable while the container goes on
# --------------------------------------------------------------------------------------------------


def _regular_files(root: Path) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            hp = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(hp).st_mode):
                out.append("/" + os.path.relpath(hp, root))
    return sorted(out)


WRITES_AFTER_COMMIT = {
    "write": lambda fs, p: fs.write_bytes(p, b"rewritten after commit"),
    "append": lambda fs, p: _append(fs, p),
    "open_rw_write": lambda fs, p: _rw(fs, p),
    "truncate": lambda fs, p: fs.truncate(p, 1),
    "chmod": lambda fs, p: fs.chmod(p, 0o600),
    "chown": lambda fs, p: fs.chown(p, 4321, 4321),
    "utime": lambda fs, p: fs.utime(p, ns=(1, 1)),
    "setxattr": lambda fs, p: fs.setxattr(p, "user.after", b"commit"),
}


def _append(fs: ovlcore.ContainerFS, p: str) -> None:
    with fs.open(p, "ab") as f:
        f.write(b"+")


def _rw(fs: ovlcore.ContainerFS, p: str) -> None:
    with fs.open(p, "r+b") as f:
        f.write(b"ZZ")


@pytest.mark.parametrize("how", sorted(WRITES_AFTER_COMMIT))
def test_writes_after_commit_leave_committed_layer_alone(sample: SampleImages, c: ovlcore.Container, how: str) -> None:
    rich_changes(c)
    seen = fs_tree(c.fs)
    new = c.commit(tag="after:1")
    top = new.layers[-1]
    # right after the commit, the layer's files are the writable layer's files (shared inodes), except
    # files the container hard-linked itself: those are copied once (their names linked in the layer), so
    # that the container's own links keep working after the commit
    files = [p for p in _regular_files(top.path)]
    assert files
    shared = 0
    for p in files:
        in_layer, in_upper = os.lstat(str(top.path) + p), os.lstat(str(c.upper) + p)
        if in_layer.st_ino == in_upper.st_ino:
            shared += 1
        else:
            assert in_upper.st_nlink >= 2 and in_layer.st_nlink >= 2, p
    assert shared > 0
    snap = snapshot(top.path)
    for p in files:
        if c.fs.is_file(p):
            WRITES_AFTER_COMMIT[how](c.fs, p)
    # the container sees its new changes...
    assert compare_trees(seen, fs_tree(c.fs), times=True) != []
    # ...the committed layer does not
    after = snapshot(top.path)
    assert after == snap
    data = read_all(top.tar(), 1 << 16)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == top.diff_id
    c2 = sample.store.containers.create("after:1")
    assert compare_trees(seen, fs_tree(c2.fs), times=True, names=("at commit", "new container")) == []


def test_hard_links_stay_linked_after_commit(sample: SampleImages, c: ovlcore.Container) -> None:
    """Two names of one file in the writable layer are still one file after a commit: a write through
    one name shows through the other (and the committed layer keeps the old content)."""
    fs = c.fs
    fs.write_bytes("/one", b"one")
    fs.link("/one", "/two")
    new = c.commit()
    fs.write_bytes("/two", b"written through two")
    assert fs.read_bytes("/one") == b"written through two"
    assert fs.stat("/one").st_ino == fs.stat("/two").st_ino
    assert new.fs.read_bytes("/one") == b"one"


def test_hard_link_made_after_commit(sample: SampleImages, c: ovlcore.Container) -> None:
    fs = c.fs
    fs.write_bytes("/one", b"one")
    new = c.commit()
    fs.link("/one", "/two")
    fs.write_bytes("/two", b"written through two")
    assert fs.read_bytes("/one") == b"written through two"
    assert new.fs.read_bytes("/one") == b"one"
    assert not new.fs.exists("/two")


def test_commit_through_another_handle(sample: SampleImages, c: ovlcore.Container) -> None:
    """A second handle of the same container, whose view was loaded before the commit, must also leave
    the committed layer alone when it writes."""
    other = sample.store.containers.get(c.id)
    c.fs.write_bytes("/shared", b"before commit")
    assert other.fs.read_bytes("/shared") == b"before commit"  # other's view is loaded
    new = c.commit()
    snap = snapshot(new.layers[-1].path)
    other.fs.write_bytes("/shared", b"after")
    with other.fs.open("/shared", "ab") as f:
        f.write(b"!")
    other.fs.chmod("/shared", 0o600)
    assert snapshot(new.layers[-1].path) == snap
    assert new.fs.read_bytes("/shared") == b"before commit"
    assert c.fs.read_bytes("/shared") == b"after!"


def test_remove_committed_container_keeps_image(sample: SampleImages, c: ovlcore.Container) -> None:
    rich_changes(c)
    seen = fs_tree(c.fs)
    new = c.commit(tag="keep:1")
    c.remove()
    assert compare_trees(seen, fs_tree(sample.store.images.get("keep:1").fs), times=True) == []
    data = read_all(new.layers[-1].tar(), 1 << 16)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == new.layers[-1].diff_id


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def test_export_holds_the_merged_tree(sample: SampleImages, c: ovlcore.Container, tmp_path: Path) -> None:
    rich_changes(c)
    dest = tmp_path / "export.tar"
    c.export(dest)
    buf = io.BytesIO()
    c.export(buf)
    assert dest.read_bytes() == buf.getvalue()
    blob = dest.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        names = [m.name for m in t.getmembers()]
    assert not any(os.path.basename(n.rstrip("/")).startswith(".wh.") for n in names)
    assert len(names) == len(set(names))
    model = tar_model([blob])
    # hard links in the export point at a path with the same content
    for p, rec in model.items():
        if "hardlink_of" in rec:
            assert c.fs.stat(p).st_ino == c.fs.stat(rec["hardlink_of"]).st_ino
    assert strip_links(model) == model_of_fs(c.fs)
    # export of the image's own view is the image
    c0 = sample.store.containers.create(sample.child)
    buf0 = io.BytesIO()
    c0.export(buf0)
    assert strip_links(tar_model([buf0.getvalue()])) == model_of_fs(sample.child.fs)


def test_commit_progress_ends_at_the_layer_tar_size(c: ovlcore.Container) -> None:
    # Reports come at most every 20 ms; the last, whenever it comes, is the new layer tar's size.
    c.fs.mkdir("/many")
    for i in range(300):
        c.fs.write_bytes(f"/many/f{i:03d}", os.urandom(i * 37))
    seen: list[int] = []
    img = c.commit("progress:1", progress=seen.append)
    top = img.top_layer
    assert top is not None and top.tar_size
    assert seen == sorted(seen) and seen[-1] == top.tar_size
