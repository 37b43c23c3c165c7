"""The sample images the tests start from, generated in code.

* :data:`BASE_ENTRIES` / :func:`import_image`: the base of the volume, mount, cp, CLI and demo tests (a
  directory with a distinctive owner to pre-populate volumes from, symlinks that try to leave the root,
  files a bind mount must hide);
* :func:`make_images`: a base image with every entry kind (hard link, device, setuid file, xattrs) and a
  child image with two more layers (a whiteout, an opaque directory, new files), for the container tests;
* :func:`image_chain`: an image made of given layer tars.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import ovlcore

from .tars import FIXED_MTIME as T0
from .tars import D, Entry, F, H, L, tar

PASSWD = "root:x:0:0:container-root:/root:/bin/sh\n"

BASE_ENTRIES: list[Entry] = [
    D("bin"),
    F("bin/sh", b"#!fake shell\n", 0o755),
    D("etc"),
    F("etc/passwd", PASSWD),
    F("etc/hostname", "image-hostname\n"),
    # A directory with a distinctive owner and mode, to pre-populate volumes from.
    D("data", 0o750, 1234, 5678),
    F("data/seed.txt", "seed from the image\n", 0o640, 1234, 5678),
    D("data/sub", 0o711, 1234, 5678),
    F("data/sub/deep.txt", "deep\n", 0o600, 42, 43),
    L("data/pw", "/etc/passwd"),
    # Something a bind mount at /shared must hide.
    D("shared"),
    F("shared/image_only.txt", "only in the image\n"),
    D("tmp", 0o1777),
    D("links"),
    L("links/to_root", "/"),
    L("links/to_passwd", "/etc/passwd"),
    L("links/dotdot", "../../../../../../.."),
    L("links/rel_etc", "../etc"),
    L("links/to_data", "/data"),
    D("srv"),
    F("srv/a.png", b"\x89PNG a"),
    F("srv/b.png", b"\x89PNG b"),
    F("srv/notes.txt", "not a png\n"),
    D("srv/dir"),
    F("srv/dir/one.txt", "one\n"),
    D("srv/dir/nested"),
    F("srv/dir/nested/two.txt", "two\n"),
]


def import_image(store: ovlcore.Store, entries: list[Entry] = BASE_ENTRIES, tag: str = "base:1") -> ovlcore.Image:
    return store.images.import_archive(io.BytesIO(tar(*entries)), tag=tag)


BIG = bytes((i * 7 + i // 256) % 251 for i in range(20_000))

RICH_BASE = [
    D("bin/"),
    F("bin/sh", b"#!/fake/shell\n" * 20, 0o755),
    D("etc/"),
    F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
    F("etc/group", b"root:x:0:\nuser:x:1000:\n"),
    F("etc/hostname", b"base\n"),
    F("etc/motd", b"welcome\n", mtime=T0 + 5),
    F("etc/secret", b"s3cr3t\n", 0o600, mtime=T0 + 7),
    F("etc/suid", b"\x7fELF-ish", 0o4755, mtime=T0 + 9),
    D("usr/"),
    D("usr/bin/"),
    F("usr/bin/a", b"hard linked\n", 0o755),
    H("usr/bin/b", "usr/bin/a", mode=0o755),
    D("usr/lib/"),
    F("usr/lib/libx.so", b"\0libx" * 100, 0o755),
    D("usr/share/"),
    D("usr/share/doc/"),
    F("usr/share/doc/a.txt", b"doc a\n"),
    F("usr/share/doc/b.txt", b"doc b\n"),
    D("usr/share/doc/sub/"),
    F("usr/share/doc/sub/deep.txt", b"deep\n"),
    L("lib", "usr/lib"),
    D("var/"),
    D("var/log/", 0o750, mtime=T0 + 11),
    D("home/"),
    D("home/user/", 0o750, 1000, 1000),
    F("home/user/.profile", b"export PS1='$ '\n", 0o640, 1000, 1000, xattrs={"user.note": b"hello", "user.other": b"x"}),
    D("dev/"),
    Entry("dev/null", "c", mode=0o666, dev=(1, 3)),
    D("tmp/", 0o1777),
    D("data/"),
    F("data/big.bin", BIG, mtime=T0 + 13),
]

RICH_LAYER2 = [
    D("etc/", mtime=T0 + 100),
    F("etc/motd", b"welcome to the child image\n", mtime=T0 + 100),
    F("etc/.wh.hostname"),
    D("usr/"),
    D("usr/share/"),
    D("usr/share/doc/", mtime=T0 + 100),
    F("usr/share/doc/.wh..wh..opq"),
    F("usr/share/doc/c.txt", b"doc c (child)\n", mtime=T0 + 100),
    D("app/", mtime=T0 + 100),
    F("app/main.py", b"print('hello')\n", mtime=T0 + 100),
]

RICH_LAYER3 = [
    D("app/", mtime=T0 + 200),
    D("app/data/", mtime=T0 + 200),
    F("app/data/x.bin", bytes(range(256)) * 4, mtime=T0 + 200),
    D("opt/", mtime=T0 + 200),
    F("opt/tool", b"tool v1\n", 0o755, mtime=T0 + 200),
]


@dataclass
class SampleImages:
    store: ovlcore.Store
    base: ovlcore.Image
    child: ovlcore.Image


def make_images(store: ovlcore.Store) -> SampleImages:
    """``base:1`` (:data:`RICH_BASE`, one layer) and ``child:1`` (two more layers) in ``store``."""
    base = store.images.import_archive(io.BytesIO(tar(*RICH_BASE)), tag="base:1", changes=["ENV PATH=/bin:/usr/bin", "CMD [\"/bin/sh\"]"])
    l2 = store.layers.apply(io.BytesIO(tar(*RICH_LAYER2)), parent=base.top_layer)
    mid = store.images.create(layer=l2, parent=base, tag="mid:1", created_by="RUN customize")
    l3 = store.layers.apply(io.BytesIO(tar(*RICH_LAYER3)), parent=l2)
    child = store.images.create(layer=l3, parent=mid, tag="child:1", created_by="RUN install tool")
    return SampleImages(store, base, child)


def image_chain(store: ovlcore.Store, tars: list[bytes], tag: str | None = None) -> ovlcore.Image:
    """An image whose layers are ``tars`` (bottom first), built with layers.apply + images.create."""
    img = None
    parent = None
    for t in tars:
        layer = store.layers.apply(t, parent=parent)
        img = store.images.create(layer=layer, parent=img)
        parent = layer
    assert img is not None
    if tag:
        store.images.tag(img, tag)
    return img
