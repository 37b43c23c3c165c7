"""What the image-spec and Docker's archive format name: media types, annotations, digests, and the
canonical JSON of what this store writes."""

from __future__ import annotations

import json
import re
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: An OCI layout's blob path (``blobs/sha256/<hex>``).
BLOB_PATH = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
