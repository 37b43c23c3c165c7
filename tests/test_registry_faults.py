"""Pulls from a registry that misbehaves (:mod:`support.fault_registry`): each fault ends in a clear error
or in success, and never in something half-made (no new image, no new layer, ``check()`` clean, nothing
staged left). Transient faults (429 with ``Retry-After``, 500, a dropped connection) are retried, a
dropped blob resumed with ``Range``; a pull killed with SIGKILL midway resumes on the next pull."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ovlcore
from ovlcore import errors
from support.compression import gzip_bytes
from support.fault_registry import Fault, FaultRegistry
from support.images import image_chain
from support.oci import RawImage, build_image
from support.stores import Sandbox, leftovers, open_store
from support.tars import D, F, TarBuilder, pad, raw_header, tar
from support.trees import compare_trees, fs_tree

pytestmark = pytest.mark.registry

BASE = tar(D("etc"), F("etc/os-release", "ID=fault\n"), D("usr"), F("usr/lib.so", bytes(range(256)) * 50))


def noise(n: int, seed: int = 1) -> bytes:
    """``n`` bytes gzip cannot shrink (so a blob is about as large as its content)."""
    import random

    return random.Random(seed).randbytes(n)


def serve(fr: FaultRegistry, tars: list[bytes], name: str = "team/app", **kw: object) -> RawImage:
    raw = build_image(tars, **kw)  # type: ignore[arg-type]
    fr.add_image(name, raw, "1")
    return raw


def expected_tree(tmp_path: Path, tars: list[bytes]) -> dict[str, object]:
    with open_store(tmp_path / "expected") as ref:
        return fs_tree(image_chain(ref, tars).fs)  # type: ignore[return-value]


class Before:
    """A store's images and layers, to prove a failed pull added neither."""

    def __init__(self, store: ovlcore.Store) -> None:
        self.store = store
        self.images = sorted(i.id for i in store.images.list())
        self.layers = sorted(layer.chain_id for layer in store.layers.list())

    def assert_unchanged(self) -> None:
        assert sorted(i.id for i in self.store.images.list()) == self.images
        assert sorted(layer.chain_id for layer in self.store.layers.list()) == self.layers
        assert self.store.check().problems == []
        assert leftovers(Path(self.store.root)) == []


@pytest.fixture
def dst(sandbox: Sandbox, client_home: object) -> ovlcore.Store:
    """A store whose pulls retry quickly (client_home sets the backoff) and that already has an image."""
    store = open_store(sandbox.root, registry=ovlcore.RegistryConfig(retries=3))
    store.images.import_archive(io.BytesIO(tar(F("present", "x"))), tag="present:1")
    return store


# -- errors ------------------------------------------------------------------------------------------------


def test_blob_not_matching_its_digest(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    raw = serve(fault_registry, [BASE, tar(F("top", noise(50_000)))])
    fault_registry.fault(raw.layers[1].digest, Fault("corrupt", times=None))
    before = Before(dst)
    with pytest.raises(errors.OvlError, match=r"(?i)digest"):
        dst.images.pull(fault_registry.ref("team/app:1"))
    before.assert_unchanged()


def test_corrupt_config(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    raw = serve(fault_registry, [BASE])
    fault_registry.fault(raw.config.digest, Fault("corrupt", times=None))
    before = Before(dst)
    with pytest.raises(errors.OvlError, match=r"(?i)digest"):
        dst.images.pull(fault_registry.ref("team/app:1"))
    before.assert_unchanged()


def test_truncated_blob(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    raw = serve(fault_registry, [BASE, tar(F("top", noise(50_000)))])
    fault_registry.fault(raw.layers[1].digest, Fault("truncate", after=20_000, times=None))
    before = Before(dst)
    with pytest.raises(errors.OvlError, match=r"(?i)truncat|short|size|length|digest|end of"):
        dst.images.pull(fault_registry.ref("team/app:1"))
    before.assert_unchanged()


def test_layer_not_matching_the_configs_diff_id(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    """The blob matches its digest, but its content is not the layer the config names."""
    top, other = tar(F("top", "what the config says\n")), tar(F("top", "something else\n"))
    raw = build_image([BASE, top], raw_layers=[gzip_bytes(BASE), gzip_bytes(other)])
    fault_registry.add_image("team/app", raw, "1")
    before = Before(dst)
    with pytest.raises(errors.OvlError, match=r"(?i)diff.?id|digest"):
        dst.images.pull(fault_registry.ref("team/app:1"))
    before.assert_unchanged()


def test_path_traversal_in_a_layer(fault_registry: FaultRegistry, dst: ovlcore.Store, sandbox: Sandbox) -> None:
    evil = TarBuilder().dir("etc").raw(raw_header("../../etc/x", size=4)).raw(pad(b"evil")).bytes()
    serve(fault_registry, [BASE, evil])
    before = Before(dst)
    outside = sandbox.snapshot_outside()
    with pytest.raises(errors.OvlError, match=re.escape("../../etc/x")):
        dst.images.pull(fault_registry.ref("team/app:1"))
    before.assert_unchanged()
    assert sandbox.snapshot_outside() == outside
    assert not (sandbox.base / "etc").exists() and not (sandbox.root.parent.parent / "etc" / "x").exists()


def test_unknown_tag(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    serve(fault_registry, [BASE])
    before = Before(dst)
    with pytest.raises(errors.ImageNotFound):
        dst.images.pull(fault_registry.ref("team/app:2"))
    before.assert_unchanged()


def test_persistent_500_gives_up(fault_registry: FaultRegistry, dst: ovlcore.Store) -> None:
    raw = serve(fault_registry, [BASE])
    fault_registry.fault(raw.layers[0].digest, Fault("status", status=500, times=None))
    before = Before(dst)
    with pytest.raises(errors.RegistryError) as e:
        dst.images.pull(fault_registry.ref("team/app:1"))
    assert e.value.status == 500
    assert 2 <= len(fault_registry.blob_gets(raw.layers[0].digest)) <= 4  # retries=3: bounded
    before.assert_unchanged()


# -- transient faults: success -----------------------------------------------------------------------------


def pulled_ok(fr: FaultRegistry, store: ovlcore.Store, raw: RawImage, tmp_path: Path, ref: str = "team/app:1",
              **kw: object) -> ovlcore.Image:
    img = store.images.pull(fr.ref(ref), **kw)  # type: ignore[arg-type]
    assert (img.id, img.diff_ids) == (raw.image_id, raw.diff_ids)
    assert compare_trees(expected_tree(tmp_path, raw.tars), fs_tree(img.fs), times=True) == []
    assert store.check().problems == [] and leftovers(Path(store.root)) == []
    return img


@pytest.mark.parametrize("what", ["manifest", "blob"])
def test_429_with_retry_after_then_success(fault_registry: FaultRegistry, dst: ovlcore.Store, tmp_path: Path, what: str) -> None:
    raw = serve(fault_registry, [BASE, tar(F("top", "t\n"))])
    target = raw.digest if what == "manifest" else raw.layers[1].digest
    fault_registry.fault(target, Fault("status", status=429, retry_after="1"))
    pulled_ok(fault_registry, dst, raw, tmp_path)
    kind = "/manifests/" if what == "manifest" else "/blobs/"
    hits = [r for r in fault_registry.log() if kind in r.path
            and (what == "manifest" or (r.method == "GET" and r.path.endswith(target)))]
    assert len(hits) >= 2
    assert hits[1].at - hits[0].at >= 0.9  # Retry-After honoured (the test backoff is 20 ms)


def test_500_then_success(fault_registry: FaultRegistry, dst: ovlcore.Store, tmp_path: Path) -> None:
    raw = serve(fault_registry, [BASE, tar(F("top", "t\n"))])
    fault_registry.fault(raw.layers[0].digest, Fault("status", status=500, times=2))
    fault_registry.fault(raw.config.digest, Fault("status", status=503, times=1))
    pulled_ok(fault_registry, dst, raw, tmp_path)
    assert len(fault_registry.blob_gets(raw.layers[0].digest)) == 3


def test_redirect_to_another_host_gets_no_credentials(make_fault_registry: object, dst: ovlcore.Store, tmp_path: Path) -> None:
    fr: FaultRegistry = make_fault_registry(auth=("alice", "s3cret"), redirect_blobs=True)  # type: ignore[operator]
    raw = serve(fr, [BASE, tar(F("top", "t\n"))])
    with pytest.raises(errors.Unauthorized):
        dst.images.pull(fr.ref("team/app:1"))
    pulled_ok(fr, dst, raw, tmp_path, auth=("alice", "s3cret"))
    assert fr.blob_server is not None
    elsewhere = fr.blob_server.log()
    assert len(elsewhere) >= 3  # the config and both layers came from the other host
    assert [r.authorization for r in elsewhere] == [None] * len(elsewhere)
    assert any(r.authorization and r.authorization.startswith("Basic ") for r in fr.log())


def test_dropped_connection_resumes_with_range(fault_registry: FaultRegistry, dst: ovlcore.Store, tmp_path: Path) -> None:
    raw = serve(fault_registry, [BASE, tar(F("top", noise(600_000)))])
    layer = raw.layers[1]
    cut = 300_000
    fault_registry.fault(layer.digest, Fault("drop", after=cut))
    pulled_ok(fault_registry, dst, raw, tmp_path)
    gets = fault_registry.blob_gets(layer.digest)
    assert len(gets) == 2 and gets[0].range in (None, "bytes=0-")
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", gets[1].range or "")
    assert m and 0 < int(m[1]) <= cut, gets[1].range


def test_index_platforms(fault_registry: FaultRegistry, dst: ovlcore.Store, tmp_path: Path) -> None:
    """A Docker manifest list (the OCI index is covered in test_registry): platform picked, variant included."""
    a = build_image([BASE, tar(F("arch", "amd64\n"))], architecture="amd64")
    b = build_image([BASE, tar(F("arch", "arm64 v8\n"))], architecture="arm64", variant="v8")
    c = build_image([BASE, tar(F("arch", "arm v7\n"))], architecture="arm", variant="v7")
    fault_registry.add_index("multi", [a, b, c], "1", format="docker")
    assert pulled_ok(fault_registry, dst, b, tmp_path, "multi:1", platform="linux/arm64/v8").fs.read_text("/arch") == "arm64 v8\n"
    assert pulled_ok(fault_registry, dst, c, tmp_path, "multi:1", platform="linux/arm/v7").fs.read_text("/arch") == "arm v7\n"
    before = Before(dst)
    with pytest.raises(errors.ImageNotFound) as e:
        dst.images.pull(fault_registry.ref("multi:1"), platform="linux/arm/v6")
    for offered in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7"):
        assert offered in str(e.value)
    before.assert_unchanged()


# -- killed midway -----------------------------------------------------------------------------------------

PULLER = """
import sys
import ovlcore
store = ovlcore.Store(sys.argv[1])
store.images.pull(sys.argv[2])
print("pulled", flush=True)
"""


def test_sigkill_midway_then_pull_again_resumes(fault_registry: FaultRegistry, sandbox: Sandbox, client_home: object,
                                                tmp_path: Path) -> None:
    raw = serve(fault_registry, [BASE, tar(F("big", noise(8 << 20)))])
    layer = raw.layers[1]
    stall_at = 3 << 20
    fault_registry.fault(layer.digest, Fault("stall", after=stall_at))
    # (the child inherits this process's environment, which client_home isolated)
    proc = subprocess.Popen([sys.executable, "-c", PULLER, str(sandbox.root), fault_registry.ref("team/app:1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not fault_registry.wait_stalled(0.1):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the pull never reached the stalling blob"
        time.sleep(1.0)  # let the puller write (and verify) what it received
        assert proc.poll() is None, proc.communicate()[1].decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fault_registry.clear_log()
    with open_store(sandbox.root) as store:
        img = pulled_ok(fault_registry, store, raw, tmp_path)
        assert img.tags == [fault_registry.ref("team/app:1")]
    gets = fault_registry.blob_gets(layer.digest)
    ranges = [re.fullmatch(r"bytes=(\d+)-(\d*)", r.range or "") for r in gets]
    starts = [int(m[1]) for m in ranges if m]
    assert starts and 0 < starts[0] <= stall_at, [r.range for r in gets]
