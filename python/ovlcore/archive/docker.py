"""The docker-archive format (what ``docker save`` writes and ``docker load`` reads):
``<diff-id hex>/layer.tar`` (with ``VERSION`` and a legacy ``json``), ``<image-id hex>.json`` (the exact
config bytes), ``manifest.json`` and ``repositories``."""

from __future__ import annotations

import json
import re
from typing import Any

from .. import _ovlcore
from ..errors import InvalidArchive
from .blobs import BlobWriter, SaveItem
from .members import Members, member_name
from .plans import ImagePlan, LayerPlan, chains, check_tags, parse_config
from .spec import BLOB_PATH, DIGEST, hex_of, json_bytes

_CONFIG_NAME = re.compile(r"^([0-9a-f]{64})\.json$")


def write(blobs: BlobWriter, items: list[SaveItem]) -> None:
    tw = blobs.tw
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    ids = {it.image.id for it in items}
    for it in items:
        img = it.image
        paths = [blobs.layer(layer, it.mtime, "docker").path for layer in img.layers]
        config_name = f"{hex_of(img.id)}.json"
        tw.add_bytes(config_name, img.config_bytes, it.mtime)
        entry: dict[str, Any] = {"Config": config_name, "RepoTags": list(it.tags) or None, "Layers": paths}
        if img.parent_id and img.parent_id in ids:
            entry["Parent"] = img.parent_id
        manifest.append(entry)
        for tag in it.tags:
            name, _, t = tag.rpartition(":")
            if paths:
                repositories.setdefault(name, {})[t] = paths[-1].split("/")[0]
    tw.add_bytes("manifest.json", json_bytes(manifest), items[0].mtime)
    if repositories:
        tw.add_bytes("repositories", json_bytes(repositories), items[0].mtime)


def plan(arc: Members) -> list[ImagePlan]:
    try:
        manifest = json.loads(arc.read_small("manifest.json", "manifest"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArchive(f"manifest.json is not JSON: {e}") from None
    if not isinstance(manifest, list):
        raise InvalidArchive("manifest.json is not a list of images")
    plans: list[ImagePlan] = []
    for i, item in enumerate(manifest):
        what = f"manifest.json entry {i}"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise InvalidArchive(f"{what} has no Config")
        layers = item.get("Layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidArchive(f"{what}: Layers is not a list of paths")
        config_name = member_name(item["Config"])
        if config_name is None:
            raise InvalidArchive(f"{what}: config path {item['Config']!r} escapes the archive")
        config = arc.read_small(config_name, "image config")
        image_id = _ovlcore.sha256(config)
        named = BLOB_PATH.match(config_name) or _CONFIG_NAME.match(config_name)
        if named and named.group(1) != hex_of(image_id):
            raise InvalidArchive(f"image config {config_name!r}: digest mismatch: its content hashes to {image_id}")
        diff_ids = parse_config(config, f"image config {config_name!r}")
        if len(diff_ids) != len(layers):
            raise InvalidArchive(
                f"{what}: manifest names {len(layers)} layers but config {config_name!r} has {len(diff_ids)} diff_ids"
            )
        plan_layers = []
        for raw, diff_id, (chain, parent) in zip(layers, diff_ids, chains(diff_ids)):
            name = member_name(raw)
            if name is None:
                raise InvalidArchive(f"{what}: layer path {raw!r} escapes the archive")
            if not arc.has(name):
                raise InvalidArchive(f"layer {raw!r} named by {what} is not in the archive")
            blob = BLOB_PATH.match(name)
            plan_layers.append(LayerPlan(name, diff_id, chain, parent, blob_digest="sha256:" + blob.group(1) if blob else None))
        image = ImagePlan(config, image_id, plan_layers, check_tags(item.get("RepoTags"), what))
        parent_id = item.get("Parent")
        if isinstance(parent_id, str) and DIGEST.match(parent_id):
            image.parent = parent_id
        plans.append(image)
    return plans
