"""``ovlcore demo``: the story of Docker's data storage, told on a real store.

Images are stacks of layers; a container adds one writable layer; writes copy files up, deletions leave
whiteouts; ``diff`` lists the changes, ``commit`` turns them into a new layer; volumes and bind mounts keep
data outside the layers; ``cp`` moves files in and out. Every claim printed is checked as it is made.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._format import human_ago, human_size
from .images import Image
from .mounts import Mount
from .store import Store

__all__ = ["run"]

PREFIX = "ovlcore-demo"


def _tar(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """A tar of (name, content or None for a directory, mode) entries, as a layer or a root file system."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime = now
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _base_rootfs() -> bytes:
    """A tiny Alpine-like root file system (made up on the spot: no download)."""
    entries: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("bin/sh", b"#!/bin/busybox sh\n" + b"\0" * 4000, 0o755),
        ("etc", None, 0o755),
        ("etc/os-release", b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.6.5\n', 0o644),
        ("etc/motd", b"Welcome to Alpine!\n", 0o644),
        ("etc/apk", None, 0o755),
        ("etc/apk/world", b"alpine-baselayout\nbusybox\n", 0o644),
        ("lib", None, 0o755),
        ("lib/apk", None, 0o755),
        ("lib/apk/db", None, 0o755),
        ("lib/apk/db/installed", b"P:busybox\nV:1.26.2\n", 0o644),
        ("root", None, 0o700),
        ("tmp", None, 0o1777),
        ("usr", None, 0o755),
        ("usr/share", None, 0o755),
        ("usr/share/locale", None, 0o755),
    ]
    for lang in ("de", "fr", "ja"):
        entries.append((f"usr/share/locale/{lang}", None, 0o755))
        entries.append((f"usr/share/locale/{lang}/busybox.mo", os.urandom(3000), 0o644))
    return _tar(entries)


class Demo:
    def __init__(self, store: Store, console: Console) -> None:
        self.store = store
        self.c = console
        self.made_images: list[str] = []
        self.made_containers: list[str] = []
        self.made_volumes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="ovlcore-demo-"))
        self.prefix = self._free_prefix()

    def _free_prefix(self) -> str:
        """``ovlcore-demo``, or ``ovlcore-demo2``... when an earlier ``--keep`` run left its objects."""
        tags = {t for img in self.store.images.list() for t in img.tags}
        names = {c.name for c in self.store.containers.list()} | {v.name for v in self.store.volumes.list()}
        n = 1
        while True:
            prefix = PREFIX if n == 1 else f"{PREFIX}{n}"
            if not any(t.startswith(prefix + "/") for t in tags) and not any(x.startswith(prefix + "-") for x in names):
                return prefix
            n += 1

    def say(self, text: str) -> None:
        self.c.print(text)

    def step(self, n: int, title: str) -> None:
        self.c.print()
        self.c.rule(f"[bold cyan]{n}. {title}")

    def check(self, claim: str, ok: bool) -> None:
        """Print a claim and verify it: the demo fails loudly if the story is not true."""
        if not ok:
            raise AssertionError(f"demo claim failed: {claim}")
        self.c.print(f"  [green]✓[/green] {claim}")

    def history(self, image: Image) -> None:
        t = Table(box=None, header_style="bold")
        t.add_column("IMAGE", no_wrap=True)
        t.add_column("CREATED", no_wrap=True)
        t.add_column("CREATED BY", no_wrap=True, overflow="ellipsis", max_width=36)
        t.add_column("SIZE", no_wrap=True, justify="right")
        t.add_column("COMMENT", overflow="ellipsis")
        for h in image.history():
            t.add_row(h.id if h.id == "<missing>" else h.id[7:19], human_ago(h.created), escape(h.created_by), human_size(h.size), escape(h.comment))
        self.c.print(t)

    def layer_step(self, parent: Image, created_by: str, entries: list[tuple[str, bytes | None, int]], tag: str) -> Image:
        img = self.store.images.apply(parent, io.BytesIO(_tar(entries)), tag=tag, created_by=created_by)
        self.made_images.append(img.id)
        return img

    def run(self) -> None:
        s = self.store
        self.c.print(f"[bold]ovlcore demo[/bold] — Docker's data storage, on the store at [italic]{s.root}[/italic]")

        self.step(1, "An image is a stack of read-only layers")
        self.say("We make a tiny root file system archive and import it: that is a [bold]base image[/bold], one layer.")
        base = s.images.import_archive(io.BytesIO(_base_rootfs()), tag=f"{self.prefix}/alpine:3.6", changes=['CMD ["/bin/sh"]'], message="base root file system")
        self.made_images.append(base.id)
        self.say(f"  image [bold]{base.short_id}[/bold] tagged {base.tags[0]}, {len(base.layers)} layer, {human_size(base.size)}")
        self.say("Then two build steps, as a Dockerfile's [italic]RUN apk update[/italic] and [italic]RUN apk add git[/italic] would make them:")
        updated = self.layer_step(
            base,
            "/bin/sh -c apk update",
            [("var", None, 0o755), ("var/cache", None, 0o755), ("var/cache/apk", None, 0o755), ("var/cache/apk/APKINDEX.tar.gz", os.urandom(20000), 0o644)],
            f"{self.prefix}/step:update",
        )
        git = self.layer_step(
            updated,
            "/bin/sh -c apk add git",
            [
                ("usr/bin", None, 0o755),
                ("usr/bin/git", os.urandom(60000), 0o755),
                ("etc/apk/world", b"alpine-baselayout\nbusybox\ngit\n", 0o644),
                ("lib/apk/db/installed", b"P:busybox\nV:1.26.2\nP:git\nV:2.13.7\n", 0o644),
            ],
            f"{self.prefix}/step:git",
        )
        final = s.images.create(layer=None, parent=git, tag=f"{self.prefix}/git:latest", created_by='/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "git"]', changes=['CMD ["/bin/sh", "-c", "git"]'])
        self.made_images.append(final.id)
        self.say(f"\n[bold]history[/bold] of {final.tags[0]} (newest first; each line a build step, most with a layer):")
        self.history(final)
        self.check(f"{final.tags[0]} has {len(final.layers)} layers, stacked on the base image's layer", final.layers[0] == base.layers[0] and len(final.layers) == 3)
        self.say(f"  the top layer holds only what [italic]apk add git[/italic] changed: {', '.join(sorted(os.listdir(final.layers[-1].path)))}")

        self.step(2, "Containers share the image's layers and add one writable layer each")
        a = s.containers.create(final, name=f"{self.prefix}-a")
        b = s.containers.create(final, name=f"{self.prefix}-b")
        self.made_containers += [a.id, b.id]
        same = [la.path for la in a.image.layers] == [lb.path for lb in b.image.layers]
        self.check("both containers read the very same layer directories (nothing was copied)", same)
        self.check("each has its own, empty writable layer", a.upper != b.upper and not os.listdir(a.upper) and not os.listdir(b.upper))
        self.say(f"  /etc/os-release in container a: {a.fs.read_text('/etc/os-release').splitlines()[0]}")

        self.step(3, "Writes go to the writable layer: copy-up and whiteouts")
        a.fs.write_text("/root/notes.txt", "a new file\n")
        self.check("a new file lands in a's writable layer", (a.upper / "root/notes.txt").is_file())
        with a.fs.open("/etc/motd", "a") as f:
            f.write("Edited in container a.\n")
        self.check("changing /etc/motd first copied it up into the writable layer", (a.upper / "etc/motd").read_text().endswith("Edited in container a.\n"))
        self.check("…while the image layer's copy is unchanged", (final.layers[0].path / "etc/motd").read_text() == "Welcome to Alpine!\n")
        a.fs.rmtree("/usr/share/locale")
        wh = os.lstat(a.upper / "usr/share/locale")
        self.check("deleting /usr/share/locale left a whiteout (a 0/0 character device) in the writable layer", stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0)
        self.check("container b still sees the original files", b.fs.read_text("/etc/motd") == "Welcome to Alpine!\n" and b.fs.exists("/usr/share/locale/fr"))
        self.say(f"  writable layer of a: {human_size(a.size().rw)}; image: {human_size(final.size)} shared by both")

        self.step(4, "diff lists a container's changes (A added, C changed, D deleted)")
        for ch in a.diff():
            self.say(f"  {ch.kind} {ch.path}")

        self.step(5, "commit turns the changes into a new layer and image")
        committed = a.commit(f"{self.prefix}/committed:1", message="notes and motd", author="ovlcore demo", created_by="/bin/sh -c edit-things")
        self.made_images.append(committed.id)
        self.history(committed)
        c = s.containers.create(committed, name=f"{self.prefix}-c")
        self.made_containers.append(c.id)
        self.check("a container of the new image sees exactly what a saw", c.fs.read_text("/etc/motd") == a.fs.read_text("/etc/motd") and not c.fs.exists("/usr/share/locale"))

        self.step(6, "Volumes and bind mounts keep data outside the layers")
        shared = self.tmp / "shared_mount"
        shared.mkdir()
        vol_name = f"{self.prefix}-vol"
        d = s.containers.create(final, name=f"{self.prefix}-d", mounts=[Mount("/data", vol_name), Mount("/shared", str(shared), type="bind")])
        self.made_containers.append(d.id)
        self.made_volumes.append(vol_name)
        d.fs.write_text("/data/db.txt", "kept in a volume\n")
        d.fs.write_text("/shared/report.txt", "written to the host\n")
        self.check("the volume write went to the volume, not the writable layer", (s.volumes.get(vol_name).mountpoint / "db.txt").exists() and d.diff() == [])
        self.check("the bind-mount write is on the host", (shared / "report.txt").read_text() == "written to the host\n")
        s.containers.remove(d.id)
        self.made_containers.remove(d.id)
        self.check("after removing the container, the volume's data is still there", (s.volumes.get(vol_name).mountpoint / "db.txt").read_text() == "kept in a volume\n")

        self.step(7, "cp copies files between the host and a container")
        pics = self.tmp / "pics"
        pics.mkdir()
        for i in range(3):
            (pics / f"photo{i}.png").write_bytes(b"\x89PNG fake image %d" % i)
        e = s.containers.create(final, name=f"{self.prefix}-e", mounts=[Mount("/shared", vol_name)])
        self.made_containers.append(e.id)
        s.cp(str(pics / "*.png"), f"{e.name}:/shared/")
        self.say(f"  ovlcore cp {pics}/*.png {e.name}:/shared/  →  {', '.join(e.fs.listdir('/shared'))}")
        out = self.tmp / "back"
        out.mkdir()
        s.cp(f"{e.name}:/etc/os-release", str(out))
        self.check("and out again: /etc/os-release copied to the host", (out / "os-release").read_text().startswith('NAME="Alpine Linux"'))

        self.step(8, "system df: what the store holds")
        t = Table(box=None, header_style="bold")
        for col in ("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"):
            t.add_column(col)
        for r in s.df():
            t.add_row(r.type, str(r.total), str(r.active), human_size(r.size), human_size(r.reclaimable))
        self.c.print(t)

    def cleanup(self) -> None:
        s = self.store
        for cid in self.made_containers:
            s.containers.remove(cid, volumes=True)
        for name in self.made_volumes:
            try:
                s.volumes.remove(name)
            except Exception:
                pass
        for iid in reversed(self.made_images):
            try:
                s.images.remove(iid, force=True)
            except Exception:
                pass
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def run(store: Store, *, keep: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the demo on ``store``; cleans up after itself unless ``keep``. Returns what it made."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 120  # in a pipe or a log, keep the tables whole rather than 80 columns wide
    demo = Demo(store, console)
    start = time.monotonic()
    try:
        demo.run()
    finally:
        made = {"images": list(demo.made_images), "containers": list(demo.made_containers), "volumes": list(demo.made_volumes)}
        if not keep:
            demo.cleanup()
    demo.c.print()
    demo.c.print(f"[bold green]Done[/bold green] in {time.monotonic() - start:.1f}s." + ("" if keep else " Everything the demo made was removed (use --keep to look around)."))
    return made

