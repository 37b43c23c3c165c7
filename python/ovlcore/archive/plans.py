"""What a load will do, decided from the archive's metadata before any layer is read: the images, their
configs and tags, and each layer's member, diff id, chain and expected blob digest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import _ovlcore
from ..errors import InvalidArchive, InvalidReference
from ..references import full_tag
from .spec import DIGEST


@dataclass
class LayerPlan:
    member: str
    diff_id: str
    chain_id: str
    parent: str | None
    #: The digest and size the blob must have (OCI descriptors, ``blobs/sha256/`` paths); None: unknown.
    blob_digest: str | None = None
    blob_size: int | None = None


@dataclass
class ImagePlan:
    config: bytes
    image_id: str
    layers: list[LayerPlan]
    tags: list[str]
    parent: str | None = None


def parse_config(data: bytes, what: str) -> list[str]:
    """The diff_ids of an image config, after checking it is one."""
    cfg = load_json(data, what)
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids", []), list):
        raise InvalidArchive(f"{what} has no rootfs.diff_ids list")
    diff_ids = rootfs.get("diff_ids") or []
    for d in diff_ids:
        if not isinstance(d, str) or not DIGEST.match(d):
            raise InvalidArchive(f"{what}: {d!r} in rootfs.diff_ids is not a sha256 digest")
    return [str(d) for d in diff_ids]


def chains(diff_ids: list[str]) -> list[tuple[str, str | None]]:
    """(chain id, parent chain id) of each layer, bottom first."""
    out: list[tuple[str, str | None]] = []
    parent: str | None = None
    for d in diff_ids:
        chain = _ovlcore.chain_id(parent, d)
        out.append((chain, parent))
        parent = chain
    return out


def familiar(tag: str) -> str:
    """A tag in Docker's familiar form: ``docker.io/library/x:1`` is ``x:1``, ``docker.io/u/x:1`` is ``u/x:1``."""
    t = full_tag(tag)
    for host in ("docker.io/", "index.docker.io/"):
        if t.startswith(host):
            t = t[len(host) :]
            if t.startswith("library/") and "/" not in t[len("library/") :]:
                t = t[len("library/") :]
            break
    return t


def check_tags(tags: Any, what: str) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArchive(f"{what}: RepoTags is not a list of strings")
    out = []
    for t in tags:
        try:
            out.append(familiar(t))
        except InvalidReference as e:
            raise InvalidArchive(f"{what}: invalid tag {t!r}: {e}") from None
    return out


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArchive(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArchive(f"{what} is not a JSON object")
    return obj
