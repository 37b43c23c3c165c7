"""Registries: ``pull``, ``push``, ``login`` and ``logout`` over the OCI distribution API.

The network, the digests and the layer streams are the core's (:class:`ovlcore._ovlcore.RegistryClient`);
this module decides what to fetch or send and publishes what a pull brings in one transaction: the new
layers, the image, its tag and its repo digest, or nothing. What registries tell us is recorded as Docker's
v2 metadata does: the manifest an image was pulled or pushed as (``Image.repo_digests``) and which
registry blob holds which layer, so that a second pull downloads nothing and a second push sends nothing.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from . import _ovlcore
from ._store import Storage
from ._store.records import BlobRecord
from .errors import InvalidArchive, InvalidReference
from .images import Image, Images
from .layers import Layers, layer_record
from .references import Remote, parse_remote

__all__ = ["RegistryConfig", "TransferEvent", "Registry", "Auth", "TransferCallback"]

#: ``None`` (the usual credential files), ``(user, password)``, or ``{"identitytoken": ...}``.
Auth = Union[None, tuple[str, str], Mapping[str, str]]


@dataclass(frozen=True)
class RegistryConfig:
    """How the store reaches registries. ``insecure``: hosts (``host:port``) that may be reached over plain
    HTTP when they do not speak TLS (loopback always may); ``ca_dirs``: more ``certs.d`` directories
    (``DIR/HOST[:PORT]/*.crt``, or ``DIR/*.crt`` for every host); ``auth_file``: read first, and written
    by ``login``/``logout`` (else Docker's ``config.json``); layers moved ``max_parallel`` at a time (each one
    in flight holds some 15-25 MB of buffers); each request tried ``retries`` more times on connection
    errors, 408, 429 and 5xx."""

    insecure: tuple[str, ...] = ()
    ca_dirs: tuple[str | os.PathLike[str], ...] = ()
    auth_file: str | os.PathLike[str] | None = None
    max_parallel: int = 4
    retries: int = 5


@dataclass(frozen=True)
class TransferEvent:
    """Progress of one blob: ``state`` is ``waiting``, ``downloading``, ``uploading``, ``verifying``,
    ``exists`` (already there: not moved), ``mounted`` (cross-repository mount) or ``done``.
    ``digest`` is the blob digest when pulling, the layer's diff_id when pushing (the blob digest is only
    known once it is sent)."""

    digest: str
    done_bytes: int
    total_bytes: int | None
    state: str


TransferCallback = Callable[[TransferEvent], None]


def _compression_of(media_type: str) -> str:
    if "zstd" in media_type:
        return "zstd"
    if "gzip" in media_type:
        return "gzip"
    return "none" if media_type.endswith(".tar") else "gzip"


def _events(progress: TransferCallback | None) -> Callable[[str, int, int | None, str], None] | None:
    if progress is None:
        return None

    def call(digest: str, done: int, total: int | None, state: str) -> None:
        progress(TransferEvent(digest, done, total, state))

    return call


@dataclass
class _Plan:
    """A pull: what the registry describes and what of it the store lacks."""

    remote: Remote
    manifest_digest: str
    config: bytes
    layers: builtins.list[tuple[str, str, int, builtins.list[str]]]
    diff_ids: builtins.list[str]
    chains: builtins.list[str] = field(default_factory=list)


class Registry:
    """The registry operations of one store (made by :class:`ovlcore.Store`)."""

    def __init__(self, storage: Storage, layers: Layers, images: Images, config: RegistryConfig) -> None:
        self._storage = storage
        self._layers = layers
        self._images = images
        self.config = config

    def client(self, auth: Auth = None) -> _ovlcore.RegistryClient:
        c = self.config
        user = password = token = None
        if isinstance(auth, tuple):
            user, password = auth
        elif isinstance(auth, Mapping):
            token = auth.get("identitytoken") or auth.get("identity_token")
            user, password = auth.get("username"), auth.get("password")
            if token is None and (user is None or password is None):
                raise ValueError("auth must be (user, password) or {'identitytoken': ...} or {'username': ..., 'password': ...}")
        elif auth is not None:
            raise TypeError(f"auth must be None, (user, password) or a mapping, not {type(auth).__name__}")
        return _ovlcore.RegistryClient(
            insecure=list(c.insecure), ca_dirs=[os.fspath(d) for d in c.ca_dirs],
            auth_file=os.fspath(c.auth_file) if c.auth_file is not None else None,
            max_parallel=c.max_parallel, retries=c.retries, username=user, password=password, identity_token=token,
        )

    # ----- pull -----

    def _plan(self, client: _ovlcore.RegistryClient, remote: Remote, ref: str, platform: str | None) -> _Plan:
        res = client.resolve(ref, platform)
        config: bytes = res["config"]
        try:
            cfg = json.loads(config)
            diff_ids = list(cfg["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise InvalidArchive(f"{remote}: the image config is not an OCI image config (no rootfs.diff_ids)") from None
        layers = [tuple(d) for d in res["layers"]]
        if len(diff_ids) != len(layers):
            raise InvalidArchive(f"{remote}: the manifest names {len(layers)} layers, the config {len(diff_ids)} diff_ids")
        plan = _Plan(remote, res["manifest_digest"], config, layers, diff_ids)
        for d in diff_ids:
            plan.chains.append(_ovlcore.chain_id(plan.chains[-1] if plan.chains else None, d))
        return plan

    def pull(self, ref: str, *, platform: str | None = None, auth: Auth = None, progress: TransferCallback | None = None) -> Image:
        remote = parse_remote(ref)
        client = self.client(auth)
        plan = self._plan(client, remote, ref, platform)
        events = _events(progress)
        layout = self._storage.layout
        with self._storage.transaction() as tx:
            jobs: builtins.list[tuple[Any, ...]] = []
            staged: dict[int, Any] = {}
            stacks: dict[int, builtins.list[str]] = {}  # layer index -> content dirs of it and below, top first
            for i, ((media_type, digest, size, urls), chain) in enumerate(zip(plan.layers, plan.chains)):
                have = self._layers.find(chain)
                if have is not None or any(plan.chains[j] == chain for j in staged):
                    stacks[i] = have.stack_paths() if have is not None else stacks[next(j for j in staged if plan.chains[j] == chain)]
                    if events is not None:
                        events(digest, size, size, "exists")
                    continue
                st = tx.stage_layer()
                staged[i] = st
                # The core lets a layer read the ones below (being pulled alongside) once they are complete.
                lower = stacks[i - 1] if i else []
                stacks[i] = [str(st.content), *lower]
                jobs.append((media_type, digest, size, urls, str(st.content), str(st.tarsplit), lower, str(layout.download(digest))))
            results = client.pull_layers(str(remote), jobs, privilege=self._storage.privilege, progress=events) if jobs else []
            records = {}
            for (i, st), (diff_id, size, tar_size) in zip(staged.items(), results):
                if diff_id != plan.diff_ids[i]:
                    raise InvalidArchive(
                        f"{remote}: layer {plan.layers[i][1]}: diff_id mismatch: its tar hashes to {diff_id}, "
                        f"the image config says {plan.diff_ids[i]}"
                    )
                records[i] = layer_record(diff_id, plan.chains[i - 1] if i else None, size=size, tar_size=tar_size)
            with tx.publishing() as pub:
                for i, st in staged.items():  # bottom first
                    pub.add_layer(st, records[i])
                img = self._images.publish(tx, pub, plan.config, parent=None, tag=remote.local_tag)
                pub.set_repo_digest(f"{remote.name}@{plan.manifest_digest}", img.id)
                for (media_type, digest, _, _), diff_id in zip(plan.layers, plan.diff_ids):
                    pub.record_blob(BlobRecord(digest, remote.registry, remote.repository, diff_id, _compression_of(media_type)))
        return img

    # ----- push -----

    def push(
        self,
        src: str | Image,
        dest: str | None = None,
        *,
        auth: Auth = None,
        format: str = "docker",
        compression: str = "gzip",
        progress: TransferCallback | None = None,
    ) -> str:
        if format not in ("docker", "oci"):
            raise ValueError(f"unknown manifest format {format!r} (use 'docker' or 'oci')")
        if compression not in ("gzip", "zstd"):
            raise ValueError(f"unknown compression {compression!r} (use 'gzip' or 'zstd')")
        img = self._images.get(src)
        if dest is None:
            if not isinstance(src, str):
                tags = img.tags
                if not tags:
                    raise ValueError("push of an untagged image needs a destination")
                dest = tags[0]
            else:
                dest = src
        remote = parse_remote(dest)
        records = self._storage.records
        layout = self._storage.layout
        layers = []
        for layer in img.layers:
            split = layout.layer(layer.chain_id).tarsplit
            parent = layer.parent
            known = [
                (b.digest, b.repository)
                for b in records.blobs_of(layer.diff_id)
                if b.registry == remote.registry and b.compression == compression
            ]
            # The destination repository first: a HEAD there settles it.
            known.sort(key=lambda k: k[1] != remote.repository)
            layers.append((str(layer.path), str(split) if split.exists() else None, parent.stack_paths() if parent else [], layer.diff_id, known))
        client = self.client(auth)
        manifest_digest, blobs = client.push(
            str(remote), layers, img.config_bytes, format=format, compression=compression,
            privilege=self._storage.privilege, progress=_events(progress),
        )
        with self._storage.transaction() as tx, tx.publishing() as pub:
            for diff_id, digest, _size, _media_type, _how in blobs:
                pub.record_blob(BlobRecord(digest, remote.registry, remote.repository, diff_id, compression))
            if pub.records.image(img.id) is not None:
                pub.set_repo_digest(f"{remote.name}@{manifest_digest}", img.id)
        return str(manifest_digest)

    # ----- credentials -----

    def login(self, host: str, user: str, password: str) -> str:
        """Check the credentials against ``host`` (``Unauthorized`` when refused; nothing is saved then),
        then save them as ``docker login`` does. Returns the file written."""
        registry = _registry_host(host)
        self.client((user, password)).login(registry)
        return str(_ovlcore.store_credentials(registry, user, password, auth_file=self._auth_file()))

    def fetch(self, url: str, dest: str | os.PathLike[str]) -> tuple[str, int, str | None]:
        """``GET url`` through the registry transport (same CAs, redirects, retries; no credentials) into
        the new file ``dest``: (sha256 digest, size, ``Last-Modified``), for a Dockerfile's ``ADD <url>``."""
        return self.client(None).fetch(url, os.fspath(dest))

    def logout(self, host: str) -> bool:
        """Forget the saved credentials of ``host``; whether there were any."""
        return bool(_ovlcore.erase_credentials(_registry_host(host), auth_file=self._auth_file()))

    def _auth_file(self) -> str | None:
        return os.fspath(self.config.auth_file) if self.config.auth_file is not None else None


def _registry_host(host: str) -> str:
    """``host[:port]`` from what ``login`` takes (a URL or a bare name; docker.io for Docker Hub)."""
    h = host.strip()
    for scheme in ("https://", "http://"):
        h = h.removeprefix(scheme)
    h = h.split("/", 1)[0]
    if h in ("", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    if not h or any(c.isspace() for c in h):
        raise InvalidReference(f"invalid registry host {host!r}")
    return h.lower()
