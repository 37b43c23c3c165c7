"""The OCI image layout: ``oci-layout``, ``index.json`` (one descriptor per tag, named by
``org.opencontainers.image.ref.name``) and ``blobs/sha256/...`` for layers, configs and manifests. Saving
adds a ``manifest.json`` naming the same blobs, as Docker 25 does, so that ``docker load`` takes it too.
Loading resolves manifest lists and indexes to this machine's platform."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import _ovlcore
from .._config import host_arch
from ..errors import InvalidArchive, InvalidReference
from .blobs import BlobWriter, SaveItem
from .members import Members
from .plans import ImagePlan, LayerPlan, chains, familiar, load_json, parse_config
from .spec import (
    ANN_CONTAINERD_NAME,
    ANN_REF_NAME,
    DIGEST,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    OCI_LAYOUT_VERSION,
    hex_of,
    json_bytes,
)


def qualified(tag: str) -> str:
    """The fully qualified form containerd names images by: ``x:1`` is ``docker.io/library/x:1``."""
    first, slash, _ = tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return tag
    return f"docker.io/{tag}" if slash else f"docker.io/library/{tag}"


def write(blobs: BlobWriter, items: list[SaveItem]) -> None:
    tw = blobs.tw
    mtime0 = items[0].mtime
    tw.add_bytes("oci-layout", json_bytes({"imageLayoutVersion": OCI_LAYOUT_VERSION}), mtime0)
    index: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for it in items:
        img = it.image
        written = [blobs.layer(layer, it.mtime, "oci") for layer in img.layers]
        tw.add_dir("blobs", it.mtime)
        tw.add_dir("blobs/sha256", it.mtime)
        config_name = f"blobs/sha256/{hex_of(img.id)}"
        tw.add_bytes(config_name, img.config_bytes, it.mtime)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": img.id, "size": len(img.config_bytes)},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in written],
        }
        mbytes = json_bytes(manifest)
        mdigest = _ovlcore.sha256(mbytes)
        tw.add_bytes(f"blobs/sha256/{hex_of(mdigest)}", mbytes, it.mtime)
        desc: dict[str, Any] = {"mediaType": MT_OCI_MANIFEST, "digest": mdigest, "size": len(mbytes)}
        desc["platform"] = {"architecture": img.config.get("architecture") or "amd64", "os": img.config.get("os") or "linux"}
        if it.tags:
            for tag in it.tags:
                index.append({**desc, "annotations": {ANN_REF_NAME: tag, ANN_CONTAINERD_NAME: qualified(tag)}})
        else:
            index.append(desc)
        docker_manifest.append({"Config": config_name, "RepoTags": list(it.tags) or None, "Layers": [b.path for b in written]})
    tw.add_bytes("index.json", json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index}), mtime0)
    tw.add_bytes("manifest.json", json_bytes(docker_manifest), mtime0)


def _descriptor(d: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise InvalidArchive(f"{what}: descriptor is not an object")
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType", "")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise InvalidArchive(f"{what}: descriptor digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArchive(f"{what}: descriptor size {size!r} is not a byte count")
    return digest, size, str(mt or "")


def _blob_member(arc: Members, digest: str, size: int, what: str) -> str:
    name = f"blobs/sha256/{hex_of(digest)}"
    if not arc.has(name):
        raise InvalidArchive(f"{what}: blob {digest} is missing from the archive")
    if arc.size(name) != size:
        raise InvalidArchive(f"{what}: blob {digest} is {arc.size(name)} bytes, its descriptor says {size}")
    return name


def _read_blob(arc: Members, digest: str, size: int, what: str) -> bytes:
    data = arc.read_small(_blob_member(arc, digest, size, what), what)
    got = _ovlcore.sha256(data)
    if got != digest:
        raise InvalidArchive(f"{what}: digest mismatch: blob {digest} hashes to {got}")
    return data


def _ref_tag(annotations: Any) -> str | None:
    """The tag an index entry names: ``io.containerd.image.name``, else a ref.name that is a full
    reference (``name:tag``; a bare ref.name is only a tag, with no repository to put it in)."""
    if not isinstance(annotations, dict):
        return None
    for key in (ANN_CONTAINERD_NAME, ANN_REF_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and value and (key == ANN_CONTAINERD_NAME or ":" in value or "/" in value):
            try:
                return familiar(value)
            except InvalidReference:
                continue
    return None


def _platform_ok(desc: dict[str, Any]) -> bool:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return True
    return bool(p.get("os", "linux") == "linux" and p.get("architecture", host_arch()) == host_arch())


def plan(arc: Members) -> list[ImagePlan]:
    if arc.has("oci-layout"):
        layout = load_json(arc.read_small("oci-layout", "oci-layout file"), "oci-layout file")
        if not isinstance(layout.get("imageLayoutVersion"), str):
            raise InvalidArchive("oci-layout file has no imageLayoutVersion")
    index = load_json(arc.read_small("index.json", "OCI index"), "index.json")
    plans: dict[str, ImagePlan] = {}

    def manifests(idx: dict[str, Any], what: str, depth: int) -> Iterator[tuple[dict[str, Any], str | None]]:
        entries = idx.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArchive(f"{what} has no manifests list")
        for n, desc in enumerate(entries):
            dwhat = f"{what} manifests[{n}]"
            digest, size, mt = _descriptor(desc, dwhat)
            tag = _ref_tag(desc.get("annotations"))
            if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
                if depth > 4:
                    raise InvalidArchive(f"{dwhat}: indexes nested too deeply")
                sub = load_json(_read_blob(arc, digest, size, dwhat), f"index {digest}")
                chosen = [
                    d for d in sub.get("manifests") or []
                    if isinstance(d, dict) and _platform_ok(d)
                    and (d.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
                ]
                if not chosen:
                    raise InvalidArchive(f"{dwhat}: index {digest} has no image for linux/{host_arch()}")
                for m, _ in manifests({"manifests": chosen[:1]}, f"index {digest}", depth + 1):
                    yield m, tag
            elif mt in (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, ""):
                yield {"digest": digest, "size": size, "what": dwhat}, tag
            else:
                raise InvalidArchive(f"{dwhat}: unsupported media type {mt!r}")

    for m, tag in manifests(index, "index.json", 0):
        digest, size, what = m["digest"], m["size"], m["what"]
        man = load_json(_read_blob(arc, digest, size, what), f"manifest {digest}")
        cdigest, csize, _ = _descriptor(man.get("config"), f"manifest {digest} config")
        config = _read_blob(arc, cdigest, csize, f"config of manifest {digest}")
        diff_ids = parse_config(config, f"image config {cdigest}")
        layers = man.get("layers")
        if not isinstance(layers, list):
            raise InvalidArchive(f"manifest {digest} has no layers list")
        if len(layers) != len(diff_ids):
            raise InvalidArchive(f"manifest {digest} names {len(layers)} layers but its config has {len(diff_ids)} diff_ids")
        plan_layers = []
        for n, (desc, diff_id, (chain, parent)) in enumerate(zip(layers, diff_ids, chains(diff_ids))):
            lwhat = f"manifest {digest} layers[{n}]"
            ldigest, lsize, lmt = _descriptor(desc, lwhat)
            if "layer" not in lmt and "rootfs.diff" not in lmt:
                raise InvalidArchive(f"{lwhat}: unsupported layer media type {lmt!r}")
            member = _blob_member(arc, ldigest, lsize, lwhat)
            plan_layers.append(LayerPlan(member, diff_id, chain, parent, blob_digest=ldigest, blob_size=lsize))
        image = plans.get(cdigest)
        if image is None:
            image = plans[cdigest] = ImagePlan(config, cdigest, plan_layers, [])
        if tag and tag not in image.tags:
            image.tags.append(tag)
    return list(plans.values())
