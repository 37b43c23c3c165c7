"""Symbolic links inside a container resolve inside the container's root, as under chroot: an absolute
target starts at the container's ``/`` and ``..`` never climbs above it. Whatever the links (from the
image or made in the container, absolute, ``../..`` chains, pointing at real host paths), no operation
of ``container.fs`` reads or changes a host file outside the store. Both metadata conventions."""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from support.images import make_images
from support.tars import Entry, tar
from support.trees import snapshot

HOST_SECRET = b"host secret: must never be read or written through a container\n"


class Host:
    """Host files the links point at: a directory under the test's tmp dir, and one directly under
    /tmp (a path that the container also has a parent for)."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "host"
        self.dir.mkdir()
        (self.dir / "secret.txt").write_bytes(HOST_SECRET)
        (self.dir / "sub").mkdir()
        (self.dir / "sub" / "deep.txt").write_bytes(HOST_SECRET)
        os.chmod(self.dir / "secret.txt", 0o644)
        self.tmpfile = Path("/tmp") / f"ovlcore-canary-{secrets.token_hex(6)}"
        self.tmpfile.write_bytes(HOST_SECRET)
        self.snap = self.snapshot()

    def snapshot(self) -> Any:
        st = os.lstat(self.tmpfile)
        xa = sorted(os.listxattr(self.tmpfile))
        return (snapshot(self.dir), self.tmpfile.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xa)

    def check(self) -> None:
        assert self.snapshot() == self.snap, "a host file changed"
        for p in (self.dir / "newsub", self.dir / "sub" / "new"):
            assert not os.path.lexists(p)


@pytest.fixture
def setup(any_store: ovlcore.Store, tmp_path: Path) -> Iterator[tuple[ovlcore.Container, Host]]:
    host = Host(tmp_path)
    store = any_store
    imgs = make_images(store)
    # an image layer full of links that would escape on the host
    hostile = [
        Entry("links/", "d"),
        Entry("links/abs-etc", "l", link="/etc"),
        Entry("links/abs-passwd", "l", link="/etc/passwd"),
        Entry("links/up", "l", link="../../../../../../../../.."),
        Entry("links/up-etc", "l", link="../../../../../../../../../etc"),
        Entry("links/host-dir", "l", link=str(host.dir)),
        Entry("links/host-secret", "l", link=str(host.dir / "secret.txt")),
        Entry("links/host-tmpfile", "l", link=str(host.tmpfile)),
        Entry("links/host-dir-rel", "l", link="../../../../../../../../.." + str(host.dir)),
        Entry("links/loop", "l", link="loop"),
        Entry("links/chain1", "l", link="chain2"),
        Entry("links/chain2", "l", link="/links/up/etc/motd"),
    ]
    layer = store.layers.apply(io.BytesIO(tar(*hostile)), parent=imgs.child.top_layer)
    img = store.images.create(layer=layer, parent=imgs.child, tag="hostile:1")
    c = store.containers.create(img)
    # the same kinds of links made inside the container
    c.fs.mkdir("/mine")
    c.fs.symlink("/", "/mine/root")
    c.fs.symlink("../../../../../..", "/mine/up")
    c.fs.symlink(str(host.dir), "/mine/host-dir")
    c.fs.symlink(str(host.tmpfile), "/mine/host-tmpfile")
    yield c, host
    host.check()
    host.tmpfile.unlink()


def test_reads_stay_inside(setup: tuple[ovlcore.Container, Host]) -> None:
    c, host = setup
    fs = c.fs
    passwd = fs.read_bytes("/etc/passwd")
    assert fs.read_bytes("/links/abs-passwd") == passwd
    assert fs.read_bytes("/links/abs-etc/passwd") == passwd
    assert fs.read_bytes("/links/up/etc/passwd") == passwd
    assert fs.read_bytes("/links/up-etc/passwd") == passwd
    assert fs.read_bytes("/mine/root/etc/passwd") == passwd
    assert fs.read_bytes("/mine/up/etc/passwd") == passwd
    assert fs.read_bytes("/links/chain1") == fs.read_bytes("/etc/motd")
    assert fs.read_bytes("/../../../../etc/passwd") == passwd
    assert fs.read_bytes("/etc/../../../etc/passwd") == passwd
    assert fs.listdir("/links/up") == fs.listdir("/")
    assert fs.listdir("/mine/up") == fs.listdir("/")
    assert fs.stat("/links/up/etc/passwd").st_ino == fs.stat("/etc/passwd").st_ino
    # host paths named by links do not exist in the container
    for p in ("/links/host-dir", "/links/host-secret", "/links/host-tmpfile", "/links/host-dir-rel",
              "/mine/host-dir", "/mine/host-tmpfile", "/links/host-dir/secret.txt"):
        assert not fs.exists(p), p
        with pytest.raises(FileNotFoundError) as ei:
            fs.read_bytes(p)
        assert ei.value.filename is not None
    with pytest.raises(FileNotFoundError):
        fs.listdir("/links/host-dir")
    with pytest.raises(OSError) as ei:
        fs.read_bytes("/links/loop")
    assert ei.value.errno == errno.ELOOP
    # the links themselves read back as written
    assert fs.readlink("/links/host-dir") == str(host.dir)
    assert fs.readlink("/links/up") == "../../../../../../../../.."
    walked = [d for d, _, _ in fs.walk("/links")]
    assert walked == ["/links"]  # walk does not follow links


def test_writes_through_links_stay_inside(setup: tuple[ovlcore.Container, Host]) -> None:
    c, host = setup
    fs = c.fs
    # a link to a host path whose parent exists in the container: the file is made in the container
    fs.write_bytes("/links/host-tmpfile", b"written in the container")
    assert fs.read_bytes(str(host.tmpfile)) == b"written in the container"
    assert fs.is_symlink("/links/host-tmpfile")
    with fs.open("/mine/host-tmpfile", "ab") as f:
        f.write(b"+more")
    assert fs.read_bytes(str(host.tmpfile)) == b"written in the container+more"
    # a link to a host directory the container does not have
    for p in ("/links/host-secret", "/links/host-dir/new", "/mine/host-dir/secret.txt", "/links/host-dir-rel/secret.txt"):
        with pytest.raises(FileNotFoundError):
            fs.write_bytes(p, b"pwned")
    # ...until the container makes it: then it is the container's
    fs.mkdir(str(host.dir), parents=True)
    fs.write_bytes("/links/host-dir/secret.txt", b"container's own")
    fs.mkdir("/links/host-dir/newsub")
    fs.mkdir("/mine/host-dir/sub/new", parents=True)
    assert fs.read_bytes(str(host.dir / "secret.txt")) == b"container's own"
    assert fs.read_bytes("/links/host-secret") == b"container's own"
    # writing through ../.. links
    fs.write_bytes("/links/up/etc/motd", b"motd via up")
    assert fs.read_bytes("/etc/motd") == b"motd via up"
    fs.write_bytes("/mine/root/tmp/x", b"x")
    assert fs.read_bytes("/tmp/x") == b"x"
    host.check()


def test_metadata_changes_through_links_stay_inside(setup: tuple[ovlcore.Container, Host]) -> None:
    c, host = setup
    fs = c.fs
    fs.write_bytes(str(host.tmpfile), b"inside")  # the container's own file at that path
    for p in ("/links/host-tmpfile", "/mine/host-tmpfile"):
        fs.chmod(p, 0o600)
        fs.chown(p, 1234, 1234)
        fs.utime(p, ns=(1, 1))
        fs.truncate(p, 2)
        fs.setxattr(p, "user.pwned", b"1")
    assert fs.read_bytes(str(host.tmpfile)) == b"in"
    for p in ("/links/host-secret", "/links/host-dir/sub/deep.txt"):
        for call in (lambda: fs.chmod(p, 0o777), lambda: fs.chown(p, 1, 1), lambda: fs.utime(p, ns=(1, 1)),
                     lambda: fs.truncate(p, 0), lambda: fs.setxattr(p, "user.pwned", b"1")):
            with pytest.raises(FileNotFoundError):
                call()
    fs.chmod("/links/up/etc/motd", 0o600)
    assert stat.S_IMODE(fs.stat("/etc/motd").st_mode) == 0o600
    host.check()


def test_namespace_changes_through_links_stay_inside(setup: tuple[ovlcore.Container, Host]) -> None:
    c, host = setup
    fs = c.fs
    with pytest.raises(FileNotFoundError):
        fs.rename("/etc/motd", "/links/host-dir/moved")
    with pytest.raises(FileNotFoundError):
        fs.link("/etc/motd", "/links/host-dir/hardlink")
    with pytest.raises(FileNotFoundError):
        fs.symlink("x", "/links/host-dir/sym")
    with pytest.raises(FileNotFoundError):
        fs.remove("/links/host-dir/secret.txt")
    with pytest.raises(FileNotFoundError):
        fs.rmtree("/links/host-dir/sub")
    with pytest.raises(FileNotFoundError):
        fs.rmdir("/links/host-dir/sub")
    # removing and renaming links acts on the links
    fs.remove("/links/host-secret")
    fs.rename("/links/host-dir", "/links/host-dir-renamed")
    assert fs.readlink("/links/host-dir-renamed") == str(host.dir)
    with pytest.raises(NotADirectoryError):
        fs.rmtree("/mine/host-dir")
    # deleting a whole tree full of links deletes the links only
    fs.rmtree("/links")
    fs.rmtree("/mine")
    assert not fs.exists("/links") and not fs.exists("/mine")
    # rename through a ../.. link
    fs.rename("/usr/../../etc/group", "/var/../../group")  # both inside the container
    assert fs.exists("/group") and not fs.exists("/etc/group")
    host.check()


def test_diff_commit_export_do_not_follow_links(setup: tuple[ovlcore.Container, Host], tmp_path: Path) -> None:
    c, host = setup
    fs = c.fs
    fs.symlink(str(host.dir / "secret.txt"), "/new-host-link")
    diff = {(ch.kind, ch.path) for ch in c.diff()}
    assert ("A", "/new-host-link") in diff
    assert all(not p.startswith(str(host.dir)) for _, p in diff)
    buf = io.BytesIO()
    c.export(buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        for m in t.getmembers():
            if m.isreg():
                assert t.extractfile(m).read() != HOST_SECRET, m.name  # type: ignore[union-attr]
        links = {m.name.lstrip("./"): m.linkname for m in t.getmembers() if m.issym()}
    assert links["new-host-link"] == str(host.dir / "secret.txt")
    assert links["links/up"] == "../../../../../../../../.."
    img = c.commit()
    c2 = ovlcore.Store(c.dir.parents[1]).containers.create(img)
    assert c2.fs.readlink("/new-host-link") == str(host.dir / "secret.txt")
    assert not c2.fs.exists("/new-host-link")
    host.check()
