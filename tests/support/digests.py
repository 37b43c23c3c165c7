"""Content identities of the OCI image format, computed independently of the product."""

from __future__ import annotations

import hashlib


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent_chain: str | None, diff_id: str) -> str:
    """The OCI chain id formula."""
    if parent_chain is None:
        return diff_id
    return sha256_digest(f"{parent_chain} {diff_id}".encode())
