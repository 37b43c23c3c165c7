"""``ovlcore demo``: it completes on a fresh store, what it claims is true of the store it leaves with
``--keep``, and without ``--keep`` it leaves nothing of its own behind."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

import ovlcore

from support.cli import run_cli
from support.images import import_image
from support.privilege import require

PREFIX = "ovlcore-demo"


def _run_demo(tmp_path: Path, *args: str, privilege: str | None = None, root: Path | None = None):
    require(privilege)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = {"TMPDIR": str(tmpdir), "COLUMNS": "200"}
    if privilege:
        env["OVLCORE_PRIVILEGE"] = privilege
    root = root or tmp_path / "store"
    p = run_cli("demo", *args, root=root, env=env, timeout=300)
    return p, root, tmpdir


@pytest.fixture(scope="module", params=["root", "rootless"])
def kept(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One ``demo --keep`` run per store convention, shared by the claim checks below."""
    tmp_path = tmp_path_factory.mktemp(f"demo-{request.param}")
    p, root, tmpdir = _run_demo(tmp_path, "--keep", privilege=request.param)
    return p, ovlcore.Store(root), tmpdir


def test_demo_keep_completes(kept) -> None:
    p, store, _ = kept
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert "Traceback" not in p.stderr.decode()
    assert "Done" in out
    assert out.count("✓") >= 12
    for n in range(1, 9):
        assert re.search(rf"\b{n}\. ", out), n


def test_demo_images(kept) -> None:
    _, store, _ = kept
    tags = sorted(t for i in store.images.list() for t in i.tags)
    assert tags == sorted(
        [f"{PREFIX}/alpine:3.6", f"{PREFIX}/step:update", f"{PREFIX}/step:git", f"{PREFIX}/git:latest", f"{PREFIX}/committed:1"]
    )
    base = store.images.get(f"{PREFIX}/alpine:3.6")
    final = store.images.get(f"{PREFIX}/git:latest")
    assert len(base.layers) == 1 and len(final.layers) == 3
    assert final.layers[0] == base.layers[0]
    assert final.layers[0].path == base.layers[0].path
    # The top layer holds only what `apk add git` changed.
    assert sorted(os.listdir(final.layers[-1].path)) == ["etc", "lib", "usr"]
    # history: newest first, with the build steps
    created_by = [h.created_by for h in final.history()]
    assert created_by[1:3] == ["/bin/sh -c apk add git", "/bin/sh -c apk update"]
    assert final.history()[0].empty_layer
    # Layers are stored once: 3 for the build + 1 for the commit.
    assert len(store.layers.list()) == 4


def test_demo_containers_share_image_layer_directories(kept) -> None:
    _, store, _ = kept
    a = store.containers.get(f"{PREFIX}-a")
    b = store.containers.get(f"{PREFIX}-b")
    final = store.images.get(f"{PREFIX}/git:latest")
    assert a.image.id == b.image.id == final.id
    assert [l.path for l in a.image.layers] == [l.path for l in b.image.layers] == [l.path for l in final.layers]
    for layer in final.layers:
        assert str(layer.path).startswith(str(store.root / "layers"))
    # Not only the same paths in the records: both views read the very same inodes of the layer.
    base_layer = final.layers[0].path
    for c in (a, b):
        st = c.fs.stat("/bin/sh")
        real = os.stat(base_layer / "bin" / "sh")
        assert (st.st_ino, st.st_dev) == (real.st_ino, real.st_dev)
        git = c.fs.stat("/usr/bin/git")
        realgit = os.stat(final.layers[2].path / "usr" / "bin" / "git")
        assert (git.st_ino, git.st_dev) == (realgit.st_ino, realgit.st_dev)
    # Nothing of the image was copied into the containers' directories.
    for c in (a, b):
        total = 0
        for dirpath, _, files in os.walk(c.dir):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
        assert total < 10_000, f"{c.name} holds {total} bytes"
    assert os.listdir(b.upper) == []


def test_demo_copy_up_and_whiteout_claims(kept) -> None:
    _, store, _ = kept
    a = store.containers.get(f"{PREFIX}-a")
    b = store.containers.get(f"{PREFIX}-b")
    final = store.images.get(f"{PREFIX}/git:latest")
    assert (a.upper / "root" / "notes.txt").read_text() == "a new file\n"
    assert (a.upper / "etc" / "motd").read_text() == "Welcome to Alpine!\nEdited in container a.\n"
    assert (final.layers[0].path / "etc" / "motd").read_text() == "Welcome to Alpine!\n"
    wh = os.lstat(a.upper / "usr" / "share" / "locale")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert b.fs.read_text("/etc/motd") == "Welcome to Alpine!\n"
    assert b.fs.exists("/usr/share/locale/fr/busybox.mo")
    assert not a.fs.exists("/usr/share/locale")
    assert [str(c) for c in a.diff()] == ["C /etc", "C /etc/motd", "C /root", "A /root/notes.txt", "C /usr", "C /usr/share", "D /usr/share/locale"]


def test_demo_diff_output_matches_diff(kept) -> None:
    p, store, _ = kept
    a = store.containers.get(f"{PREFIX}-a")
    out = p.stdout.decode()
    for ch in a.diff():
        assert re.search(rf"^\s+{ch.kind} {re.escape(ch.path)}$", out, re.M), str(ch)


def test_demo_commit_claims(kept) -> None:
    _, store, _ = kept
    committed = store.images.get(f"{PREFIX}/committed:1")
    a = store.containers.get(f"{PREFIX}-a")
    c = store.containers.get(f"{PREFIX}-c")
    assert c.image.id == committed.id
    h = committed.history()[0]
    assert h.comment == "notes and motd" and h.created_by == "/bin/sh -c edit-things"
    assert committed.config.get("author") == "ovlcore demo"
    assert c.fs.read_text("/etc/motd") == a.fs.read_text("/etc/motd")
    assert not c.fs.exists("/usr/share/locale")
    assert c.fs.read_text("/root/notes.txt") == "a new file\n"
    assert len(committed.layers) == 4


def test_demo_volume_and_cp_claims(kept) -> None:
    _, store, _ = kept
    v = store.volumes.get(f"{PREFIX}-vol")
    assert not v.anonymous
    assert (v.mountpoint / "db.txt").read_text() == "kept in a volume\n"
    assert sorted(os.listdir(v.mountpoint)) == ["db.txt", "photo0.png", "photo1.png", "photo2.png"]
    assert (v.mountpoint / "photo1.png").read_bytes() == b"\x89PNG fake image 1"
    with pytest.raises(ovlcore.ContainerNotFound):
        store.containers.get(f"{PREFIX}-d")
    e = store.containers.get(f"{PREFIX}-e")
    assert sorted(e.fs.listdir("/shared")) == ["db.txt", "photo0.png", "photo1.png", "photo2.png"]
    assert e.diff() == []
    # Only the volume holds the data: no container's writable layer has it.
    for c in store.containers.list():
        for dirpath, _, files in os.walk(c.upper):
            assert "db.txt" not in files and not any(f.endswith(".png") for f in files)
    assert sorted(c.name for c in store.containers.list()) == [f"{PREFIX}-{x}" for x in "abce"]


def test_demo_store_is_consistent(kept) -> None:
    _, store, _ = kept
    r = store.check()
    assert r.ok and r.problems == []


def test_demo_df_claims(kept) -> None:
    p, store, _ = kept
    rows = {u.type: u for u in store.df()}
    assert rows["Images"].total == 5
    assert rows["Containers"].total == 4
    assert rows["Local Volumes"].total == 1 and rows["Local Volumes"].active == 1


@pytest.mark.parametrize("privilege", ["root", "rootless"])
def test_demo_without_keep_leaves_nothing(tmp_path: Path, privilege: str) -> None:
    p, root, tmpdir = _run_demo(tmp_path, privilege=privilege)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert "Everything the demo made was removed" in p.stdout.decode()
    s = ovlcore.Store(root)
    assert s.images.list() == []
    assert s.containers.list() == []
    assert s.volumes.list() == []
    assert s.layers.list() == []
    assert s.check().ok
    assert os.listdir(tmpdir) == [], "the demo left temporary files behind"
    # Nothing left on disk either (trash emptied).
    leftovers = []
    for sub in ("layers", "images", "containers", "volumes"):
        d = root / sub
        if d.exists():
            leftovers += [f"{sub}/{n}" for n in os.listdir(d)]
    assert leftovers == []


def test_demo_spares_users_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    s = ovlcore.Store(root)
    img = import_image(s)
    s.containers.create(img, name="mine", mounts=[ovlcore.Mount("/data", "myvol")])
    anon = s.volumes.create()
    p, _, _ = _run_demo(tmp_path, root=root)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    s = ovlcore.Store(root)
    assert s.images.get("base:1").id == img.id
    assert s.containers.get("mine")
    assert {v.name for v in s.volumes.list()} == {"myvol", anon.name}
    assert [i.id for i in s.images.list()] == [img.id]


def test_demo_again_after_keep_does_not_damage_kept_objects(tmp_path: Path) -> None:
    """"use --keep to look around", then run the demo again: the second run must either work or fail
    cleanly — never untag or delete what the first run kept."""
    p, root, _ = _run_demo(tmp_path, "--keep")
    assert p.returncode == 0
    s = ovlcore.Store(root)
    before = {i.id: sorted(i.tags) for i in s.images.list()}
    ctrs = sorted(c.name for c in s.containers.list())
    p2, _, _ = _run_demo(tmp_path, root=root)
    assert b"Traceback" not in p2.stderr
    s = ovlcore.Store(root)
    after = {i.id: sorted(i.tags) for i in s.images.list()}
    assert after == before
    assert sorted(c.name for c in s.containers.list()) == ctrs


def test_demo_api_run_returns_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from rich.console import Console

    from ovlcore.demo import run

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    s = ovlcore.Store(tmp_path / "store")
    made = run(s, keep=True, console=Console(file=open(os.devnull, "w")))
    assert len(made["images"]) == 5 and len(made["containers"]) == 4 and made["volumes"] == [f"{PREFIX}-vol"]
    assert {c.id for c in s.containers.list()} == set(made["containers"])
