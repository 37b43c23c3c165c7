"""The store: one root directory holding layers, images, containers and volumes, shared safely by any
number of processes and threads (see :mod:`ovlcore._storage` for the locking model)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _ovlcore, _storage
from ._storage import Layout, StoreLock, move_to_trash, read_json, write_json
from .errors import OvlError
from .containers import Containers
from .images import Images
from .layers import Layers
from .volumes import Volumes

__all__ = ["Store", "PruneReport", "CheckReport", "DiskUsage", "default_root"]

DRIVERS = ("auto", "userspace", "overlay")


def default_root() -> Path:
    """``$OVLCORE_ROOT``, else ``$XDG_DATA_HOME/ovlcore``, else ``~/.local/share/ovlcore``."""
    env = os.environ.get("OVLCORE_ROOT")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "ovlcore"


@dataclass
class PruneReport:
    """What a prune removed (ids and names) and how many bytes it freed."""

    deleted: list[str] = field(default_factory=list)
    space_reclaimed: int = 0


@dataclass
class CheckReport:
    """Problems :meth:`Store.check` found, and with ``repair=True`` what it fixed."""

    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is left wrong (no problem, or every one repaired)."""
        return not self.problems or len(self.repaired) >= len(self.problems)


@dataclass
class DiskUsage:
    """One row of ``docker system df``."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int


class Store:
    """An ovlcore store rooted at ``root`` (created on first use). Also a context manager.

    ``driver``: ``"userspace"`` (the default that ``"auto"`` picks) serves every operation without
    mounting anything; ``"overlay"`` also allows kernel overlayfs mounts and needs the privilege to mount.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, driver: str = "auto") -> None:
        if driver not in DRIVERS:
            raise ValueError(f"unknown driver {driver!r} (choose from {', '.join(DRIVERS)})")
        self.root = Path(root) if root is not None else default_root()
        self.root = self.root.expanduser().absolute()
        self.driver = "userspace" if driver == "auto" else driver
        self._layout = Layout(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        for d in self._layout.dirs():
            if not d.is_dir():
                d.mkdir(exist_ok=True)
        self._lock = StoreLock(self._layout.lock)
        self.privilege = self._init_info()
        self.layers = Layers(self)
        self.images = Images(self)
        self.containers = Containers(self)
        self.volumes = Volumes(self)
        self._closed = False
        try:
            self._recover()
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # A store that may only be read: nothing to recover from here.

    def _recover(self) -> list[str]:
        """Remove what crashed operations left: staging directories, trash, scratch files, and layers a
        crash published without the image that was to use them (a live operation publishes both in one
        hold of the store lock, so only a dead one leaves such a layer)."""
        removed = _storage.recover(self._layout)
        with self._lock.exclusive():
            trash = self._unused_layers(self._unreferenced_layers())
        self._empty(trash)
        return removed + [f"layers/{p.name}" for p, _ in trash]

    def _unreferenced_layers(self) -> list[str]:
        used = self._image_chains()
        return ["sha256:" + n for n in os.listdir(self._layout.layers) if "sha256:" + n not in used]

    def _init_info(self) -> str:
        """Read the store's record, writing it on first use. A store keeps the metadata convention it was
        made with: ``root`` (native owners, devices) or ``rootless`` (override xattrs)."""
        try:
            return self._check_info(read_json(self._layout.info))
        except FileNotFoundError:
            pass
        with self._lock.exclusive():
            try:
                info = read_json(self._layout.info)
            except FileNotFoundError:
                privilege = os.environ.get("OVLCORE_PRIVILEGE") or ("root" if os.geteuid() == 0 else "rootless")
                if privilege not in ("root", "rootless"):
                    raise ValueError(f"OVLCORE_PRIVILEGE must be 'root' or 'rootless', not {privilege!r}") from None
                info = {"version": _storage.STORE_VERSION, "privilege": privilege}
                write_json(self._layout.info, info)
        return self._check_info(info)

    def _check_info(self, info: dict[str, Any]) -> str:
        if info.get("version") != _storage.STORE_VERSION:
            raise OvlError(f"store {self.root} has format version {info.get('version')}, this ovlcore reads {_storage.STORE_VERSION}")
        privilege = str(info["privilege"])
        if privilege == "root" and os.geteuid() != 0:
            raise PermissionError(f"store {self.root} was made by root and needs root to use")
        return privilege

    # ----- lifecycle -----

    def close(self) -> None:
        """Release the store (it holds nothing open: objects stay usable)."""
        self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {str(self.root)!r} driver={self.driver!r} privilege={self.privilege!r}>"

    # ----- references between objects (callers hold the store lock) -----

    def _containers_using(self, image_id: str) -> list[str]:
        """Names of containers created from ``image_id``."""
        names = []
        try:
            entries = os.listdir(self._layout.containers)
        except FileNotFoundError:
            return []
        for cid in entries:
            try:
                rec = read_json(self._layout.container(cid) / "container.json")
            except (FileNotFoundError, NotADirectoryError):
                continue
            if rec.get("image") == image_id:
                names.append(str(rec.get("name", cid)))
        return sorted(names)

    def _image_chains(self) -> set[str]:
        """Chain ids of every layer some image uses."""
        used: set[str] = set()
        for image_id in self.images._ids():
            img = self.images._maybe(image_id)
            if img is not None:
                used.update(img.chain_ids)
        return used

    def _layer_record(self, chain: str) -> dict[str, Any] | None:
        try:
            rec = read_json(self._layout.layer(chain) / "layer.json")
            return rec if isinstance(rec, dict) else None
        except FileNotFoundError:
            return None

    def _layer_children(self) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {}
        for name in os.listdir(self._layout.layers):
            rec = self._layer_record(name)
            if rec and rec.get("parent"):
                children.setdefault(str(rec["parent"]), []).append(str(rec["chain_id"]))
        return children

    def _remove_anonymous_volumes(self, container: dict[str, Any]) -> list[tuple[Path, int]]:
        """Trash the anonymous volumes of a removed container that no other container uses."""
        out = []
        for m in container.get("mounts") or []:
            if m.get("type") == "volume" and m.get("anonymous") and m.get("source"):
                name = str(m["source"])
                if not self.volumes._users(name):
                    p = move_to_trash(self._layout, self._layout.volume(name))
                    if p:
                        out.append((p, 0))
        return out

    def _delete_image(self, image_id: str) -> list[tuple[Path, int]]:
        p = move_to_trash(self._layout, self._layout.image(image_id))
        return [(p, 0)] if p else []

    def _unused_layers(self, chains: list[str], *, include_retained: bool = False) -> list[tuple[Path, int]]:
        """Move to the trash the layers among ``chains`` (and, recursively, their parents) that no image
        uses and no other layer is built on. Returns (trash path, content size) pairs."""
        used = self._image_chains()
        children = self._layer_children()
        out: list[tuple[Path, int]] = []
        todo = list(reversed(chains))  # top first, so children go before their parents
        seen: set[str] = set()
        while todo:
            chain = todo.pop(0)
            if chain in seen or chain in used:
                continue
            seen.add(chain)
            rec = self._layer_record(chain)
            if rec is None or (rec.get("retained") and not include_retained):
                continue
            if any(self._layout.layer(c).exists() for c in children.get(chain, [])):
                continue
            p = move_to_trash(self._layout, self._layout.layer(chain))
            if p:
                out.append((p, int(rec.get("size", 0))))
            if rec.get("parent"):
                todo.append(str(rec["parent"]))
        return out

    def _remove_layers(self, chains: list[str]) -> None:
        from .errors import Conflict

        trash = []
        with self._lock.exclusive():
            used = self._image_chains()
            children = self._layer_children()
            for chain in chains:
                if chain in used:
                    raise Conflict(f"layer {chain} is used by an image")
                if any(self._layout.layer(c).exists() for c in children.get(chain, [])):
                    raise Conflict(f"layer {chain} has layers built on it")
                p = move_to_trash(self._layout, self._layout.layer(chain))
                if p:
                    trash.append((p, 0))
        self._empty(trash)

    def _collect_layers(self, chains: list[str]) -> None:
        """Drop layers an aborted operation made, if nothing took them up meanwhile."""
        with self._lock.exclusive():
            trash = self._unused_layers(chains)
        self._empty(trash)

    def _empty(self, trash: list[tuple[Path, int]]) -> None:
        _storage.empty_trash([p for p, _ in trash])

    # ----- maintenance -----

    def prune(self) -> PruneReport:
        """Remove dangling images no container uses, and layers nothing references (including layers
        kept by ``layers.apply``)."""
        report = self.images.prune()
        vols = self.volumes.prune()
        report.deleted.extend(vols.deleted)
        report.space_reclaimed += vols.space_reclaimed
        with self._lock.exclusive():
            used = self._image_chains()
            names = os.listdir(self._layout.layers)
            chains = [str(rec["chain_id"]) for n in names if (rec := self._layer_record(n)) and rec["chain_id"] not in used]
            trash = self._unused_layers(chains, include_retained=True)
        self._empty(trash)
        report.deleted.extend(chain for chain in chains if not self._layout.layer(chain).exists())
        report.space_reclaimed += sum(s for _, s in trash)
        return report

    def df(self) -> list[DiskUsage]:
        """Disk usage like ``docker system df``: images, containers, local volumes. A container counts as
        active when mounted; images and volumes when a container uses them."""
        images = self.images.list()
        containers = self.containers.list()
        volumes = self.volumes.list()
        layer_sizes = {layer.chain_id: layer.size for layer in self.layers.list()}
        used_images = {c.image_id for c in containers}
        active_images = [i for i in images if i.id in used_images]
        all_layers = {c for i in images for c in i.chain_ids}
        active_layers = {c for i in active_images for c in i.chain_ids}
        size = sum(layer_sizes.get(c, 0) for c in all_layers)
        reclaim = sum(layer_sizes.get(c, 0) for c in all_layers - active_layers)
        rows = [DiskUsage("Images", len(images), len(active_images), size, reclaim)]
        c_sizes = [(c, c.size().rw) for c in containers]
        mounted = [c for c, _ in c_sizes if (c.dir / "mounted").exists()]
        c_total = sum(s for _, s in c_sizes)
        rows.append(
            DiskUsage("Containers", len(containers), len(mounted), c_total, c_total - sum(s for c, s in c_sizes if c in mounted))
        )
        in_use = {m.source for c in containers for m in c.mounts if m.type == "volume"}
        v_sizes = [(v, v.size()) for v in volumes]
        rows.append(
            DiskUsage(
                "Local Volumes",
                len(volumes),
                sum(1 for v in volumes if v.name in in_use),
                sum(s for _, s in v_sizes),
                sum(s for v, s in v_sizes if v.name not in in_use),
            )
        )
        return rows

    def cp(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        follow_symlinks: bool = False,
        archive: bool = False,
        progress: Any = None,
    ) -> None:
        """``docker cp``: each side is a host path or ``CONTAINER:PATH``. See :mod:`ovlcore.cp`."""
        from .cp import copy

        copy(self, os.fspath(src), os.fspath(dst), follow_symlinks=follow_symlinks, archive=archive, progress=progress)

    def check(self, repair: bool = False, *, verify_digests: bool = False) -> CheckReport:
        """Verify metadata against content and report problems: image configs against their ids, every
        image's layers present, layer records and parents, containers' images and volumes, tags, and
        leftovers of crashed operations (staging directories, trash, scratch files, orphan layers).
        ``verify_digests`` also re-hashes every layer's tar against its diff_id (reads everything).
        With ``repair``, fix what can safely be fixed: leftovers and orphans removed, dangling tags
        dropped; problems with no safe fix (a missing layer, a corrupt config) stay reported."""
        report = CheckReport()
        lay = self._layout
        with self._lock.exclusive() if repair else self._lock.shared():
            for name in sorted(os.listdir(lay.images)):
                image_id = "sha256:" + name
                img = self.images._maybe(image_id)
                if img is None:
                    report.problems.append(f"image {image_id}: record incomplete")
                    continue
                if _ovlcore.sha256(img.config_bytes) != image_id:
                    report.problems.append(f"image {image_id}: config does not match its digest")
                for chain in img.chain_ids:
                    if not (lay.layer(chain) / "diff").is_dir():
                        report.problems.append(f"image {image_id}: layer {chain} missing")
            for name in sorted(os.listdir(lay.layers)):
                rec = self._layer_record("sha256:" + name)
                if rec is None or "sha256:" + name != rec.get("chain_id") or not (lay.layers / name / "diff").is_dir():
                    report.problems.append(f"layer sha256:{name}: record or content missing or inconsistent")
                    continue
                if rec.get("parent") and self._layer_record(str(rec["parent"])) is None:
                    report.problems.append(f"layer sha256:{name}: parent {rec['parent']} missing")
                if verify_digests:
                    layer = self.layers.get("sha256:" + name)
                    with layer.tar() as t:
                        while t.read(1 << 20):
                            pass
                        got = t.diff_id
                    if got != layer.diff_id:
                        report.problems.append(f"layer sha256:{name}: content hashes to {got}, recorded {layer.diff_id}")
            volumes = set(os.listdir(lay.volumes))
            for rec in self.containers._records():
                cdir = lay.container(str(rec["id"]))
                if self.images._maybe(str(rec["image"])) is None:
                    report.problems.append(f"container {rec['name']}: image {rec['image']} missing")
                if not (cdir / "diff").is_dir():
                    report.problems.append(f"container {rec['name']}: writable layer missing")
                for m in rec.get("mounts") or []:
                    if m.get("type") == "volume" and m.get("source") not in volumes:
                        report.problems.append(f"container {rec['name']}: volume {m.get('source')} missing")
            repos = self.images._repositories()
            for tag, image_id in sorted(repos.items()):
                if self.images._maybe(image_id) is None:
                    report.problems.append(f"tag {tag}: image {image_id} missing")
                    if repair:
                        del repos[tag]
                        write_json(lay.repositories, repos)
                        report.repaired.append(f"tag {tag}: removed")
            for p in self._leftovers():
                report.problems.append(f"leftover {p}")
            for chain in self._unreferenced_layers():
                rec = self._layer_record(chain)
                if rec is not None and not rec.get("retained"):
                    report.problems.append(f"layer {chain}: no image uses it (left by a crash)")
        if repair:
            report.repaired.extend(f"{p}: removed" for p in self._recover())
        return report

    def _leftovers(self) -> list[str]:
        """Entries crashed operations left in tmp/, trash/ and containers' scratch directories."""
        out = []
        for entry in os.listdir(self._layout.trash):
            out.append(f"trash/{entry}")
        for entry in os.listdir(self._layout.tmp):
            base = entry.removesuffix(".lock")
            lock = self._layout.tmp / f"{base}.lock"
            if not entry.endswith(".lock") and not entry.endswith(".pending") and not _storage.held(lock):
                out.append(f"tmp/{entry}")
        for cid in os.listdir(self._layout.containers):
            scratch = self._layout.container(cid) / "scratch"
            if scratch.is_dir():
                out.extend(f"containers/{cid}/scratch/{e}" for e in os.listdir(scratch) if not _storage._owner_alive(e))
        return out
