"""Image references (``name:tag``), ids and names, checked the way Docker checks them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import _ovlcore
from .errors import InvalidReference

__all__ = [
    "parse_tag", "normalize_id", "is_id_prefix", "check_name", "ID_HEX", "Remote", "parse_remote", "split_digest", "short_name",
]

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


@dataclass(frozen=True)
class Remote:
    """A registry reference, normalized as Docker does (the one parser is the core's)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The repository's local name: Docker's short form on docker.io (``busybox``, ``user/app``),
        ``host[:port]/path`` elsewhere."""
        return short_name(self.registry, self.repository)

    @property
    def local_tag(self) -> str | None:
        """The tag a pull gives the image (none for a pull by digest)."""
        return f"{self.name}:{self.tag}" if self.tag is not None and self.digest is None else None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def short_name(registry: str, repository: str) -> str:
    if registry == "docker.io":
        return repository.removeprefix("library/")
    return f"{registry}/{repository}"


def parse_remote(ref: str) -> Remote:
    """``[host[:port]/]path[:tag][@sha256:...]`` with Docker's defaults (``docker.io``, ``library/``,
    ``latest``); :class:`InvalidReference` when malformed."""
    if not isinstance(ref, str):
        raise InvalidReference(f"invalid reference format: {ref!r} is not a string")
    try:
        registry, repository, tag, digest = _ovlcore.parse_reference(ref)
    except ValueError as e:
        raise InvalidReference(str(e)) from None
    return Remote(registry, repository, tag, digest)


def split_digest(ref: str) -> tuple[str, str]:
    """``name@sha256:...`` as (the name's local form, the digest) for looking up pulled images."""
    remote = parse_remote(ref)
    if remote.digest is None:
        raise InvalidReference(f"invalid reference format: {ref!r} has no digest")
    return remote.name, remote.digest


def familiar_tag(tag: str) -> str:
    """A ``docker.io/library/x:t`` (or ``library/x:t``) tag in the short form pulls store; other tags
    unchanged."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if tag.startswith(prefix):
            tag = tag[len(prefix):]
            break
    return tag.removeprefix("library/") if tag.count("/") == 1 else tag


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
