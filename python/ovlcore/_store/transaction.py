"""One transaction for every change the store makes visible: stage outside the lock, publish under it.

A transaction first *stages*: it builds new objects (layer directories, image configs, containers,
volumes) in private directories under ``tmp/<tx>/`` while holding only its own lock file
``tmp/<tx>.lock``, for as long as that takes. It then *publishes* in one short hold of the store lock:
new directories are renamed into place, the records change in one database transaction, and only then
are removed objects renamed into ``trash/``. Any failure undoes the renames and rolls the records back.

Before each rename, the transaction appends what it is about to add or remove to its lock file (and
syncs it). If the process dies, the next store open finds the lock file unheld and, under the store lock,
removes every object it named that has no record (a rename whose commit never happened, or a removal
whose rename never happened), then the staging directory. So a layer, image, container or volume is
visible complete or not at all, and nothing a crash leaves behind survives the next open.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _ovlcore
from ..errors import LayerNotFound
from .files import fsync_dir
from .layout import ContainerDir, ImageDir, Layout, LayerDir, VolumeDir
from .locks import create_locked
from .records import BlobRecord, ContainerRecord, ImageRecord, LayerRecord, Records, VolumeRecord, Writer

if TYPE_CHECKING:
    from . import Storage

__all__ = ["Transaction", "Publisher", "empty_trash", "move_to_trash"]


def move_to_trash(layout: Layout, path: Path) -> Path | None:
    """Rename ``path`` into the trash; ``None`` if it was already gone."""
    dest = layout.trash / os.urandom(16).hex()
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    return dest


def empty_trash(paths: list[Path]) -> None:
    for p in paths:
        _ovlcore.remove_tree(str(p))


class Transaction:
    """Use as a context manager: whatever it staged and did not publish is removed when it ends."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._layout = storage.layout
        self._name = os.urandom(16).hex()
        self._fd: int | None = None
        self._dir = self._layout.tmp / self._name
        self._seq = itertools.count()

    @property
    def lock_path(self) -> Path:
        return self._layout.tmp / f"{self._name}.lock"

    def _begin(self) -> None:
        if self._fd is None:
            self._fd = create_locked(self._layout.tmp, self.lock_path)
            os.mkdir(self._dir, 0o700)

    def stage(self) -> Path:
        """A new, empty private directory to build one object in."""
        self._begin()
        path = self._dir / str(next(self._seq))
        os.mkdir(path, 0o700)
        return path

    def stage_layer(self) -> LayerDir:
        """A staged layer directory whose content directory exists, 0755 whatever the umask (as Docker
        makes it; an archive's ``./`` entry may change it)."""
        staged = LayerDir(self.stage())
        make_root_dir(staged.content)
        return staged

    def stage_image(self, config: bytes) -> ImageDir:
        staged = ImageDir(self.stage())
        with open(staged.config, "wb") as f:
            f.write(config)
            f.flush()
            os.fsync(f.fileno())
        return staged

    def stage_container(self) -> ContainerDir:
        staged = ContainerDir(self.stage())
        make_root_dir(staged.upper)
        for d in (staged.work, staged.scratch):
            d.mkdir()
        return staged

    def stage_volume(self) -> VolumeDir:
        staged = VolumeDir(self.stage())
        make_root_dir(staged.data)
        return staged

    def intend(self, action: str, kind: str, key: str) -> None:
        """Record, durably, that this transaction is about to add or remove an object."""
        self._begin()
        assert self._fd is not None
        os.write(self._fd, f"{action} {kind} {key}\n".encode())
        os.fsync(self._fd)

    @contextlib.contextmanager
    def publishing(self) -> Iterator[Publisher]:
        """Hold the store lock and one write transaction on the records; the block publishes through the
        :class:`Publisher` it gets. All of it takes effect when the block ends, or none of it."""
        storage = self._storage
        with storage.lock.exclusive():
            pub: Publisher | None = None
            try:
                with storage.records.writing() as records:
                    pub = Publisher(self, records)
                    yield pub
                    pub.sync()
            except BaseException:
                if pub is not None:
                    pub.undo()
                raise
            # Committed: now retire what was removed.
            trash = pub.retire()
        empty_trash(trash)

    def close(self) -> None:
        if self._fd is None:
            return
        _ovlcore.remove_tree(str(self._dir))
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_root_dir(path: Path) -> None:
    path.mkdir()
    os.chmod(path, 0o755)


class Publisher:
    """What one publishing block may do. ``records`` answers questions inside the write transaction
    (it sees this block's own changes)."""

    def __init__(self, tx: Transaction, records: Writer) -> None:
        self._tx = tx
        self._layout = tx._layout
        self.records = records
        self._added: list[Path] = []
        self._removed: list[Path] = []

    # ----- renames -----

    def _place(self, kind: str, key: str, staged: Path) -> None:
        dest = self._layout.object_path(kind, key)
        self._tx.intend("add", kind, key)
        try:
            os.rename(staged, dest)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # No record names it and no other publisher runs: a dead transaction's leftover.
            move_to_trash(self._layout, dest)
            os.rename(staged, dest)
        self._added.append(dest)

    def _retire(self, kind: str, key: str) -> None:
        self._tx.intend("remove", kind, key)
        self._removed.append(self._layout.object_path(kind, key))

    def sync(self) -> None:
        for parent in {p.parent for p in self._added}:
            fsync_dir(parent)

    def undo(self) -> None:
        for p in reversed(self._added):
            with contextlib.suppress(OSError):
                moved = move_to_trash(self._layout, p)
                if moved is not None:
                    _ovlcore.remove_tree(str(moved))
        self._added.clear()
        self._removed.clear()

    def retire(self) -> list[Path]:
        out = []
        for p in self._removed:
            moved = move_to_trash(self._layout, p)
            if moved is not None:
                out.append(moved)
        return out

    # ----- layers -----

    def add_layer(self, staged: LayerDir, rec: LayerRecord) -> LayerRecord:
        """Publish a staged layer; the store's own record when it has the layer already (then marked
        retained too if ``rec`` is)."""
        w = self.records
        existing = w.layer(rec.chain_id)
        if existing is not None:
            if rec.retained and not existing.retained:
                w.set_retained(rec.chain_id, True)
                return LayerRecord(**{**existing.__dict__, "retained": True})
            return existing
        if rec.parent is not None and w.layer(rec.parent) is None:
            raise LayerNotFound(f"parent layer {rec.parent} was removed meanwhile")
        self._place("layer", rec.chain_id, staged.path)
        w.put_layer(rec)
        return rec

    def remove_layer(self, chain_id: str) -> None:
        self.records.delete_layer(chain_id)
        self._retire("layer", chain_id)

    def collect_layers(self, chains: list[str], *, include_retained: bool = False) -> list[LayerRecord]:
        """Remove the layers among ``chains`` (and, going down, their parents) that no image uses and no
        other layer is built on; returns their records."""
        w = self.records
        out: list[LayerRecord] = []
        todo = list(reversed(chains))  # top first, so children go before their parents
        seen: set[str] = set()
        while todo:
            chain = todo.pop(0)
            if chain in seen:
                continue
            seen.add(chain)
            rec = w.layer(chain)
            if rec is None or (rec.retained and not include_retained):
                continue
            if w.layer_in_use(chain) or w.layer_has_children(chain):
                continue
            self.remove_layer(chain)
            out.append(rec)
            if rec.parent:
                todo.append(rec.parent)
        return out

    # ----- images -----

    def add_image(self, staged: ImageDir | None, rec: ImageRecord) -> ImageRecord:
        """Publish an image (its config staged by :meth:`Transaction.stage_image`) unless the store has
        it; every layer it names must be in the store (or published in this block)."""
        w = self.records
        existing = w.image(rec.id)
        if existing is not None:
            return existing
        for chain in rec.chain_ids:
            if w.layer(chain) is None:
                raise LayerNotFound(f"layer {chain} of image {rec.id} is not in the store")
        assert staged is not None, "a new image needs its staged config"
        self._place("image", rec.id, staged.path)
        w.put_image(rec)
        return rec

    def remove_image(self, image_id: str) -> None:
        self.records.delete_image(image_id)
        self._retire("image", image_id)

    def set_tag(self, tag: str, image_id: str) -> None:
        self.records.set_tag(tag, image_id)

    def remove_tag(self, tag: str) -> None:
        self.records.delete_tag(tag)

    def set_repo_digest(self, repo_digest: str, image_id: str) -> None:
        """Record that the image is the manifest ``name@sha256:...`` of a registry."""
        self.records.set_repo_digest(repo_digest, image_id)

    def record_blob(self, rec: BlobRecord) -> None:
        """Record that a registry blob holds a layer (what pull and push learn)."""
        self.records.put_blob(rec)

    # ----- containers and volumes -----

    def add_container(self, staged: ContainerDir, rec: ContainerRecord) -> None:
        self._place("container", rec.id, staged.path)
        self.records.put_container(rec)

    def remove_container(self, container_id: str) -> None:
        self.records.delete_container(container_id)
        self._retire("container", container_id)

    def add_volume(self, staged: VolumeDir, rec: VolumeRecord) -> None:
        self._place("volume", rec.name, staged.path)
        self.records.put_volume(rec)

    def fill_volume(self, name: str, staged: VolumeDir) -> None:
        """Give the existing, still empty volume ``name`` the staged data (a pre-populated copy)."""
        os.rename(staged.data, self._layout.volume(name).data)

    def remove_volume(self, name: str) -> None:
        self.records.delete_volume(name)
        self._retire("volume", name)


def records_have(records: Records | Writer, kind: str, key: str) -> bool:
    """Whether the records know the object (what recovery asks of each object an intent names)."""
    if kind == "layer":
        return records.layer(key) is not None
    if kind == "image":
        return records.image(key) is not None
    if kind == "container":
        return records.container(key) is not None
    if kind == "volume":
        return records.volume(key) is not None
    return True
