"""Registry references, repo digests, credential files and the records schema 2 — what pull and push rest
on, checked without a registry (the round trips against real registries are tests/test_registry_*.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

import ovlcore
from ovlcore import _ovlcore
from ovlcore._store.records import BlobRecord
from ovlcore.references import familiar_tag, parse_remote

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "full", "local_tag"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("user/app:2", "docker.io/user/app:2", "user/app:2"),
        ("index.docker.io/library/x", "docker.io/library/x:latest", "x:latest"),
        ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        (f"127.0.0.1:5000/app@{DIGEST}", f"127.0.0.1:5000/app@{DIGEST}", None),
    ],
)
def test_references_normalize_as_docker_does(ref: str, full: str, local_tag: str | None) -> None:
    r = parse_remote(ref)
    assert str(r) == full
    assert r.local_tag == local_tag


@pytest.mark.parametrize("ref", ["", "UPPER/case", "a//b", "app:", "app@sha256:abc", "-x", "host:port/x"])
def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(ovlcore.InvalidReference):
        parse_remote(ref)


def test_familiar_tags() -> None:
    assert familiar_tag("docker.io/library/busybox:1") == "busybox:1"
    assert familiar_tag("docker.io/user/app:1") == "user/app:1"
    assert familiar_tag("library/busybox:1") == "busybox:1"
    assert familiar_tag("127.0.0.1:5000/a:1") == "127.0.0.1:5000/a:1"


def test_images_are_found_by_repo_digest_and_docker_io_tags(store: ovlcore.Store, image: ovlcore.Image) -> None:
    storage = store._storage
    with storage.transaction() as tx, tx.publishing() as pub:
        pub.set_repo_digest(f"127.0.0.1:5000/team/app@{DIGEST}", image.id)
        pub.record_blob(BlobRecord(DIGEST, "127.0.0.1:5000", "team/app", image.diff_ids[0], "gzip"))
    assert image.repo_digests == [f"127.0.0.1:5000/team/app@{DIGEST}"]
    assert store.images.get(f"127.0.0.1:5000/team/app@{DIGEST}") == image
    assert [b.repository for b in storage.records.blobs_of(image.diff_ids[0])] == ["team/app"]
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.get(f"127.0.0.1:5000/other@{DIGEST}")
    store.images.tag(image, "busybox:1")
    assert store.images.get("docker.io/library/busybox:1") == image
    store.images.remove(image.id, force=True)
    assert storage.records.repo_digest_target(f"127.0.0.1:5000/team/app@{DIGEST}") is None


def test_credentials_are_saved_like_docker_login_and_erased(tmp_path: Path) -> None:
    f = tmp_path / "auth.json"
    f.write_text(json.dumps({"auths": {"other:1": {"auth": "eDp5"}}, "psFormat": "table"}))
    assert _ovlcore.store_credentials("127.0.0.1:5000", "alice", "s3cret", auth_file=f) == f
    cfg = json.loads(f.read_text())
    assert cfg["auths"]["127.0.0.1:5000"] == {"auth": "YWxpY2U6czNjcmV0"}
    assert cfg["psFormat"] == "table" and "other:1" in cfg["auths"]
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    store = ovlcore.Store(tmp_path / "s", registry=ovlcore.RegistryConfig(auth_file=f))
    assert store.logout("127.0.0.1:5000") is True
    assert store.logout("127.0.0.1:5000") is False
    assert "127.0.0.1:5000" not in json.loads(f.read_text())["auths"]


def test_login_writes_docker_config_json_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    path = _ovlcore.store_credentials("reg.example:5000", "u", "p")
    assert path == tmp_path / "docker" / "config.json"
    assert _ovlcore.erase_credentials("reg.example:5000") is True


def test_registry_errors() -> None:
    e = ovlcore.Unauthorized("no", 401, "UNAUTHORIZED")
    assert isinstance(e, ovlcore.RegistryError) and isinstance(e, PermissionError) and isinstance(e, ovlcore.OvlError)
    assert (str(e), e.status, e.code) == ("no", 401, "UNAUTHORIZED")
    r = ovlcore.RegistryError("boom", 500, None)
    assert (str(r), r.status, r.code) == ("boom", 500, None)


def test_config_and_events_are_frozen_dataclasses() -> None:
    c = ovlcore.RegistryConfig(insecure=("h:1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.retries = 1  # type: ignore[misc]
    assert (c.max_parallel, c.retries, c.auth_file) == (4, 5, None)
    ev = ovlcore.TransferEvent(DIGEST, 1, 2, "downloading")
    assert ev.total_bytes == 2


def test_push_checks_its_arguments(store: ovlcore.Store, image: ovlcore.Image) -> None:
    with pytest.raises(ValueError):
        store.images.push(image, "127.0.0.1:1/x:1", format="v1")
    with pytest.raises(ValueError):
        store.images.push(image, "127.0.0.1:1/x:1", compression="lz4")
    with pytest.raises(ovlcore.InvalidReference):
        store.images.push(image, "Bad/Name")


def test_an_unreachable_registry_is_a_registry_error(store: ovlcore.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    store.registry = ovlcore.RegistryConfig(retries=0)
    with pytest.raises(ovlcore.RegistryError) as info:
        store.images.pull(f"127.0.0.1:{port}/x:1")
    assert info.value.status is None


def _downgrade_to_schema_1(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE repo_digests; DROP TABLE blobs; PRAGMA user_version = 1;")
    conn.close()


def test_schema_1_records_are_upgraded_on_open(tmp_path: Path, image: ovlcore.Image, store: ovlcore.Store) -> None:
    store.close()
    db = store.root / "metadata.db"
    _downgrade_to_schema_1(db)
    ro = ovlcore.Store(store.root, read_only=True)  # read as it is, knowing no registry records
    assert ro.images.get(image.id).repo_digests == []
    ro.close()
    reopened = ovlcore.Store(store.root)
    assert reopened._storage.records.schema_version() == 2
    assert reopened.images.get(image.id).repo_digests == []
    assert reopened.check().problems == []


def test_prune_drops_stale_partial_downloads(store: ovlcore.Store) -> None:
    downloads = store._storage.layout.downloads
    old = store._storage.layout.download(DIGEST)
    old.write_bytes(b"x" * 100)
    past = time.time() - 3600
    os.utime(old, (past, past))
    fresh = store._storage.layout.download("sha256:" + "cd" * 32)
    fresh.write_bytes(b"y")
    store.prune()
    assert sorted(p.name for p in downloads.iterdir()) == [fresh.name]


def test_a_configured_credential_helper_stores_and_erases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(f'#!/bin/sh\necho "$1 $(cat)" >> {log}\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"127.0.0.1:5000": "fake"}}))
    _ovlcore.store_credentials("127.0.0.1:5000", "bob", "pw", auth_file=cfg)
    assert _ovlcore.erase_credentials("127.0.0.1:5000", auth_file=cfg) is True
    lines = log.read_text().splitlines()
    assert lines[0].startswith("store ") and json.loads(lines[0][6:]) == {"ServerURL": "127.0.0.1:5000", "Username": "bob", "Secret": "pw"}
    assert lines[1] == "erase 127.0.0.1:5000"
    assert json.loads(cfg.read_text()) == {"credHelpers": {"127.0.0.1:5000": "fake"}}  # no secret in the file
