"""Format 1 → format 2: the JSON record files of the first release become the indexed records.

Format 1 kept ``layers/<chain>/layer.json``, ``images/<id>/image.json``, ``repositories.json``,
``containers/<id>/container.json`` and ``volumes/<name>/volume.json``. Migrating builds a complete
``metadata.db`` in a staging directory from them, renames it into place, and only then rewrites
``store.json`` to format 2: a crash at any point before that leaves a format-1 store that the first
release still reads (a half-built database is never used, and a complete one is rebuilt). The old record
files are removed afterwards. A store that may not be written is read through an in-memory database
built the same way, without changing anything on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _ovlcore
from .._time import normalize_time
from .layout import Layout
from .records import SCHEMA, SCHEMA_2, ContainerRecord, ImageRecord, LayerRecord, VolumeRecord, Writer

__all__ = ["Format1", "read_format1", "fill", "upgrade_schema"]


@dataclass
class Format1:
    """Every record of a format-1 store."""

    layers: list[LayerRecord] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    containers: list[ContainerRecord] = field(default_factory=list)
    volumes: list[VolumeRecord] = field(default_factory=list)
    #: The record files read, removed once the migration is complete.
    files: list[Path] = field(default_factory=list)


def _read(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def read_format1(layout: Layout) -> Format1:
    """The records of a format-1 store. Objects without a readable record (half-made by a crash, which
    format 1's recovery would have removed) are left out."""
    legacy = layout.legacy
    out = Format1()
    for name in _names(layout.layers):
        path = legacy.layer_record(layout.layer("sha256:" + name))
        rec = _read(path)
        if isinstance(rec, dict) and rec.get("chain_id") == "sha256:" + name:
            tar_size = rec.get("tar_size")
            out.layers.append(LayerRecord(
                chain_id=str(rec["chain_id"]), diff_id=str(rec["diff_id"]), parent=rec.get("parent") or None,
                size=int(rec.get("size", 0)), tar_size=tar_size if isinstance(tar_size, int) else None,
                created=normalize_time(rec.get("created")), retained=bool(rec.get("retained")),
            ))
            out.files.append(path)
    for name in _names(layout.images):
        image = layout.image("sha256:" + name)
        meta_path = legacy.image_record(image)
        meta = _read(meta_path)
        try:
            config = image.config.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if _ovlcore.sha256(config) != "sha256:" + name:
            continue
        cfg = json.loads(config)
        chains: list[str] = []
        for diff_id in (cfg.get("rootfs") or {}).get("diff_ids") or []:
            chains.append(_ovlcore.chain_id(chains[-1] if chains else None, diff_id))
        meta = meta if isinstance(meta, dict) else {}
        out.images.append(ImageRecord(
            id="sha256:" + name, chain_ids=tuple(chains), parent=meta.get("parent") or None,
            created=normalize_time(cfg.get("created")), added=normalize_time(meta.get("added")),
        ))
        if meta_path.exists():
            out.files.append(meta_path)
    repos = _read(legacy.repositories)
    if isinstance(repos, dict):
        out.tags = {str(k): str(v) for k, v in repos.items()}
        out.files.append(legacy.repositories)
    for cid in _names(layout.containers):
        path = legacy.container_record(layout.container(cid))
        rec = _read(path)
        if isinstance(rec, dict) and rec.get("id") == cid:
            out.containers.append(ContainerRecord.new(
                cid, str(rec["name"]), str(rec["image"]), normalize_time(rec.get("created")),
                labels=dict(rec.get("labels") or {}), command=list(rec.get("command") or []), mounts=list(rec.get("mounts") or []),
            ))
            out.files.append(path)
    for name in _names(layout.volumes):
        path = legacy.volume_record(layout.volume(name))
        rec = _read(path)
        if isinstance(rec, dict) and rec.get("name") == name:
            out.volumes.append(VolumeRecord(
                name=name, created=normalize_time(rec.get("created")), labels=dict(rec.get("labels") or {}),
                anonymous=bool(rec.get("anonymous")),
            ))
            out.files.append(path)
    return out


def fill(conn: sqlite3.Connection, path: Path, old: Format1) -> None:
    """Create the schema in the empty database ``conn`` and insert every record."""
    conn.executescript("BEGIN;" + SCHEMA)  # one transaction: one sync, not one per statement
    w = Writer(conn, path)
    for layer in old.layers:
        w.put_layer(layer)
    for image in old.images:
        w.put_image(image)
    for tag, image_id in old.tags.items():
        w.set_tag(tag, image_id)
    for container in old.containers:
        w.put_container(container)
    for volume in old.volumes:
        w.put_volume(volume)
    conn.execute("COMMIT")


def upgrade_schema(conn: sqlite3.Connection) -> None:
    """Records schema 1 -> 2: add the tables of what registries told us (repo digests, blob digests of
    layers). Nothing existing changes; one transaction, so a crash leaves schema 1 as it was."""
    conn.executescript("BEGIN IMMEDIATE;" + SCHEMA_2 + "COMMIT;")


def remove_files(old: Format1) -> None:
    for p in old.files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
