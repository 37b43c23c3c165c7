"""Image references (``name:tag``), ids and names, checked the way Docker checks them."""

from __future__ import annotations

import re

from .errors import InvalidReference

__all__ = ["parse_tag", "normalize_id", "is_id_prefix", "check_name", "ID_HEX"]

# docker/distribution's reference grammar, without digests.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_CONTAINER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ID_HEX = 64


def parse_tag(ref: str) -> tuple[str, str]:
    """Split ``name[:tag]`` into (name, tag), ``latest`` by default; :class:`InvalidReference` when the
    name or tag breaks Docker's rules."""
    if not isinstance(ref, str) or not ref:
        raise InvalidReference(f"invalid reference format: {ref!r} is empty")
    if "@" in ref:
        raise InvalidReference(f"invalid reference format: {ref!r}: digest references are not supported")
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"invalid reference format: tag {tag!r} must be 1-128 characters of letters, digits, "
                "'_', '.' and '-', not starting with '.' or '-'"
            )
    if len(name) > 255:
        raise InvalidReference(f"invalid reference format: repository name {name[:40]!r}... is longer than 255 characters")
    if not _NAME.match(name):
        if name.lower() != name and _NAME.match(name.lower()):
            raise InvalidReference(f"invalid reference format: repository name {name!r} must be lowercase")
        raise InvalidReference(
            f"invalid reference format: {name!r} is not a valid repository name (lowercase letters, digits and "
            "separators '.', '_', '__', '-' between them, components separated by '/')"
        )
    return name, tag


def full_tag(ref: str) -> str:
    """``name`` → ``name:latest``; validates."""
    name, tag = parse_tag(ref)
    return f"{name}:{tag}"


def is_id_prefix(ref: str) -> bool:
    """Whether ``ref`` can be an id or id prefix (4+ hex digits, optionally after ``sha256:``)."""
    hexpart = ref.removeprefix("sha256:")
    return 4 <= len(hexpart) <= ID_HEX and bool(_HEX.match(hexpart))


def normalize_id(ref: str) -> str:
    """The hex part of an id or id prefix."""
    return ref.removeprefix("sha256:")


def check_name(name: str, what: str = "container") -> str:
    """Validate a container or volume name (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``; a container name may be
    written with Docker's leading ``/``). Returns the name without it."""
    ok = isinstance(name, str) and _CONTAINER_NAME.match(name) and (what == "container" or not name.startswith("/"))
    if not ok:
        raise InvalidReference(
            f"invalid {what} name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, starting with a letter or digit"
        )
    return name.lstrip("/")
