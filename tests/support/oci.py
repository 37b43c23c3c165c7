"""Images as a registry holds them, built in code: blobs, configs, Docker schema 2 / OCI manifests, manifest
lists / OCI indexes, and OCI layout directories (what ``skopeo copy oci:DIR ...`` reads).

Layer tars come from :mod:`support.tars`; digests and diff_ids are computed here independently of the
product (:mod:`support.digests`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .compression import gzip_bytes, zstd_bytes
from .digests import sha256_digest
from .tars import D, F, tar

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip", "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
             "none": "application/vnd.oci.image.layer.v1.tar"}


def canonical(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class RawImage:
    """One image manifest with its config and layers (``tars``: the uncompressed layer tars)."""

    manifest: bytes
    media_type: str
    config: Blob
    layers: list[Blob]
    tars: list[bytes]
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The manifest digest."""
        return sha256_digest(self.manifest)

    @property
    def image_id(self) -> str:
        """The config digest (what ``Image.id`` must be)."""
        return self.config.digest

    @property
    def diff_ids(self) -> list[str]:
        return [sha256_digest(t) for t in self.tars]

    def blobs(self) -> dict[str, bytes]:
        """Every blob the manifest names, by digest."""
        return {b.digest: b.data for b in [self.config, *self.layers]}


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    return gzip_bytes(data) if compression == "gzip" else zstd_bytes(data)


def build_image(tars: list[bytes], *, format: str = "docker", compression: str = "gzip",
                os: str = "linux", architecture: str = "amd64", variant: str | None = None,
                cmd: list[str] | None = None, raw_layers: list[bytes] | None = None) -> RawImage:
    """An image of ``tars`` (bottom first) as ``format`` (``docker``/``oci``). ``raw_layers`` replaces the
    compressed blobs (for a blob that is not what its diff_id says)."""
    assert format in ("docker", "oci") and (format == "oci" or compression == "gzip")
    config_obj: dict[str, object] = {
        "architecture": architecture,
        "os": os,
        "created": "2020-09-13T12:26:40Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": f"layer {i}"} for i in range(len(tars))],
    }
    if variant:
        config_obj["variant"] = variant
    config = Blob(canonical(config_obj), DOCKER_CONFIG if format == "docker" else OCI_CONFIG)
    datas = raw_layers if raw_layers is not None else [_compress(t, compression) for t in tars]
    layer_type = DOCKER_LAYER if format == "docker" else OCI_LAYER[compression]
    layers = [Blob(d, layer_type) for d in datas]
    media_type = DOCKER_MANIFEST if format == "docker" else OCI_MANIFEST
    manifest = canonical({"schemaVersion": 2, "mediaType": media_type, "config": config.descriptor(),
                          "layers": [b.descriptor() for b in layers]})
    platform = {"os": os, "architecture": architecture, **({"variant": variant} if variant else {})}
    return RawImage(manifest, media_type, config, layers, tars, platform)


def build_index(images: list[RawImage], *, format: str = "oci") -> tuple[bytes, str]:
    """A manifest list (``docker``) or OCI index (``oci``) of ``images`` with their platforms: (bytes, media type)."""
    media_type = OCI_INDEX if format == "oci" else DOCKER_LIST
    manifests = [{"mediaType": i.media_type, "digest": i.digest, "size": len(i.manifest), "platform": i.platform}
                 for i in images]
    return canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}), media_type


def platform_images(compression: str = "gzip") -> dict[str, RawImage]:
    """Two OCI images of different content: ``linux/amd64`` and ``linux/arm64/v8``, each with a file
    ``/platform`` naming its platform, over a shared base layer."""
    base = tar(D("etc"), F("etc/os-release", "ID=ovltest\n"))
    out = {}
    for plat in ("linux/amd64", "linux/arm64/v8"):
        os_, arch, *var = plat.split("/")
        top = tar(F("platform", plat + "\n"), D("opt"), F(f"opt/{arch}.bin", arch.encode() * 100))
        out[plat] = build_image([base, top], format="oci", compression=compression, os=os_, architecture=arch,
                                variant=var[0] if var else None)
    return out


def write_oci_layout(directory: Path, images: list[RawImage], *, tag: str = "1", index: bool = True) -> Path:
    """An OCI image layout at ``directory``: ``oci-layout``, ``blobs/sha256/*`` and an ``index.json`` whose
    one entry (annotated with ``tag``) is an index of ``images`` (``index``), or the one image itself."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> None:
        (blobs / sha256_digest(data).removeprefix("sha256:")).write_bytes(data)

    for img in images:
        for data in img.blobs().values():
            put(data)
        put(img.manifest)
    if index:
        data, media_type = build_index(images)
        put(data)
        top = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
    else:
        assert len(images) == 1
        top = {"mediaType": images[0].media_type, "digest": images[0].digest, "size": len(images[0].manifest)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [top]}))
    return directory
