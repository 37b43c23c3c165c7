"""Store-wide maintenance: prune, check (and repair), disk usage."""

from __future__ import annotations

import os

from . import _ovlcore
from ._store import Storage
from ._store.recovery import clean_all_scratch, drop_downloads
from ._store.transaction import empty_trash, move_to_trash, records_have
from .containers import Containers
from .images import Images
from .errors import CorruptStore
from .layers import Layer, Layers
from .reports import CheckReport, DiskUsage, PruneReport
from .volumes import Volumes

__all__ = ["prune", "check", "disk_usage"]


def prune(storage: Storage, images: Images, containers: Containers, volumes: Volumes) -> PruneReport:
    """Dangling images no container uses, unused anonymous volumes, and layers nothing references
    (including layers kept by ``layers.apply``)."""
    report = images.prune()
    report.add(volumes.prune())
    with storage.transaction() as tx, tx.publishing() as pub:
        in_use = pub.records.layers_in_use()
        chains = [rec.chain_id for rec in pub.records.layers() if rec.chain_id not in in_use]
        removed = pub.collect_layers(chains, include_retained=True)
    report.deleted.extend(rec.chain_id for rec in removed)
    report.space_reclaimed += sum(rec.size for rec in removed)
    report.space_reclaimed += drop_downloads(storage.layout)
    return report


def disk_usage(images: Images, containers: Containers, volumes: Volumes, layers: Layers) -> list[DiskUsage]:
    """Like ``docker system df``: images, containers, local volumes. A container counts as active when
    mounted; images and volumes when a container uses them."""
    all_images = images.list()
    all_containers = containers.list()
    all_volumes = volumes.list()
    layer_sizes = {layer.chain_id: layer.size for layer in layers.list()}
    used_images = {c.image_id for c in all_containers}
    active_images = [i for i in all_images if i.id in used_images]
    all_layers = {c for i in all_images for c in i.chain_ids}
    active_layers = {c for i in active_images for c in i.chain_ids}
    size = sum(layer_sizes.get(c, 0) for c in all_layers)
    reclaim = sum(layer_sizes.get(c, 0) for c in all_layers - active_layers)
    rows = [DiskUsage("Images", len(all_images), len(active_images), size, reclaim)]
    c_sizes = [(c, c.size().rw) for c in all_containers]
    mounted = [c for c, _ in c_sizes if c.mounted_at is not None]
    c_total = sum(s for _, s in c_sizes)
    rows.append(DiskUsage("Containers", len(all_containers), len(mounted), c_total, c_total - sum(s for c, s in c_sizes if c in mounted)))
    in_use = {m.source for c in all_containers for m in c.mounts if m.type == "volume"}
    v_sizes = [(v, v.size()) for v in all_volumes]
    rows.append(
        DiskUsage(
            "Local Volumes",
            len(all_volumes),
            sum(1 for v in all_volumes if v.name in in_use),
            sum(s for _, s in v_sizes),
            sum(s for v, s in v_sizes if v.name not in in_use),
        )
    )
    return rows


def _verify(layer: Layer) -> list[str]:
    """What is wrong with a layer's content: its tar must replay and hash to its diff_id."""
    try:
        with layer.tar() as t:
            while t.read(1 << 20):
                pass
            got = t.diff_id
    except CorruptStore as e:
        return [f"layer {layer.chain_id}: {e}"]
    return [] if got == layer.diff_id else [f"layer {layer.chain_id}: content hashes to {got}, recorded {layer.diff_id}"]


def check(storage: Storage, layers: Layers, *, repair: bool = False, verify_digests: bool = False) -> CheckReport:
    """Verify the records against the content: image configs against their ids, every image's layers
    present, layer parents, containers' images and volumes, tags, directories no record names, and
    leftovers of crashed operations. ``verify_digests`` also re-hashes every layer's tar against its
    diff_id (reads everything). With ``repair``, fix what can safely be fixed: leftovers and orphans
    removed, dangling tags dropped; problems with no safe fix (a missing layer, a corrupt config) stay
    reported. The store lock is held throughout, so no change is half-seen."""
    report = CheckReport()
    layout = storage.layout
    trash = []
    with storage.lock.exclusive():
        records = storage.records
        problems = report.problems
        for row in records.integrity():
            problems.append(f"records: {row}")
        images = {rec.id: rec for rec in records.images()}
        all_layers = {rec.chain_id: rec for rec in records.layers()}
        for image_id, rec in images.items():
            try:
                config = layout.image(image_id).config.read_bytes()
            except FileNotFoundError:
                problems.append(f"image {image_id}: config missing")
                continue
            if _ovlcore.sha256(config) != image_id:
                problems.append(f"image {image_id}: config does not match its digest")
            for chain in rec.chain_ids:
                if chain not in all_layers or not layout.layer(chain).content.is_dir():
                    problems.append(f"image {image_id}: layer {chain} missing")
        in_use = records.layers_in_use()
        for chain, lrec in all_layers.items():
            if not layout.layer(chain).content.is_dir():
                problems.append(f"layer {chain}: content missing")
                continue
            if lrec.parent and lrec.parent not in all_layers:
                problems.append(f"layer {chain}: parent {lrec.parent} missing")
            if chain not in in_use and not lrec.retained and not records.layer_has_children(chain):
                problems.append(f"layer {chain}: no image uses it (left by a crash)")
            if verify_digests:
                problems.extend(_verify(layers.get(chain)))
        volumes = {rec.name for rec in records.volumes()}
        for crec in records.containers():
            if crec.image_id not in images:
                problems.append(f"container {crec.name}: image {crec.image_id} missing")
            if not layout.container(crec.id).upper.is_dir():
                problems.append(f"container {crec.name}: writable layer missing")
            for volume in crec.volumes:
                if volume not in volumes:
                    problems.append(f"container {crec.name}: volume {volume} missing")
        dangling = [(tag, image_id) for tag, image_id in records.tags().items() if image_id not in images]
        for tag, image_id in dangling:
            problems.append(f"tag {tag}: image {image_id} missing")
        orphans = []
        for kind in ("layer", "image", "container", "volume"):
            for name in sorted(os.listdir(layout.kind_dir(kind))):
                key = layout.key_of(kind, name)
                if not records_have(records, kind, key):
                    problems.append(f"{kind} directory {name}: no record (left by a crash)")
                    orphans.append(layout.object_path(kind, key))
        problems.extend(f"leftover {p}" for p in storage.leftovers())
        if repair:
            with storage.records.writing() as w:
                for tag, _ in dangling:
                    w.delete_tag(tag)
            report.repaired.extend(f"tag {tag}: removed" for tag, _ in dangling)
            for path in orphans:
                moved = move_to_trash(layout, path)
                if moved is not None:
                    trash.append(moved)
                    report.repaired.append(f"{path.relative_to(layout.root)}: removed")
            report.repaired.extend(f"{p}: removed" for p in clean_all_scratch(storage))
    empty_trash(trash)
    if repair:
        with storage.transaction() as tx, tx.publishing() as pub:
            crashed = [c for c, rec in all_layers.items() if c not in in_use and not rec.retained]
            removed = pub.collect_layers(crashed)
        report.repaired.extend(f"layer {rec.chain_id}: removed" for rec in removed)
        report.repaired.extend(f"{p}: removed" for p in storage.recover())
    return report
