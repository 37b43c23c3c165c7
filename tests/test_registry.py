"""Pull, push and login against a real registry (Debian's ``docker-registry``, in each auth mode) and the
test registry server: round trips into a fresh store, what is (not) transferred, credentials files, errors,
the command line and progress."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

import ovlcore
from ovlcore import errors
from support.cli import OVLCORE_CMD, run_cli
from support.credentials import ClientHome
from support.fault_registry import Fault, FaultRegistry
from support.images import image_chain, make_images
from support.oci import OCI_LAYER, OCI_MANIFEST, build_image, platform_images
from support.registry import PULLER, Registry
from support.stores import leftovers, open_store
from support.tars import D, F, tar
from support.terminal import run_on_pty
from support.trees import compare_trees, fs_tree

pytestmark = pytest.mark.registry

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def stores(tmp_path: Path, *registries: Registry | FaultRegistry, **kw: object) -> tuple[ovlcore.Store, ovlcore.Store]:
    """A source store and a fresh destination store, both trusting ``registries``' CAs."""
    ca_dirs = tuple(str(r.certs_dir) for r in registries if getattr(r, "certs_dir", None))
    cfg = ovlcore.RegistryConfig(ca_dirs=ca_dirs, **kw)  # type: ignore[arg-type]
    return open_store(tmp_path / "src", registry=cfg), open_store(tmp_path / "dst", registry=cfg)


def assert_same_image(a: ovlcore.Image, b: ovlcore.Image) -> None:
    assert b.id == a.id
    assert b.diff_ids == a.diff_ids
    assert b.config_bytes == a.config_bytes
    assert compare_trees(fs_tree(a.fs), fs_tree(b.fs), times=True, names=("pushed", "pulled")) == []


def assert_clean(store: ovlcore.Store) -> None:
    report = store.check()
    assert report.problems == [], report.problems
    assert leftovers(Path(store.root)) == []


def fetched(fr: FaultRegistry) -> set[str]:
    """The digests of the blobs GET requests asked the test registry for."""
    return {r.path.split("?")[0].rsplit("/", 1)[1] for r in fr.blob_gets()}


# -- round trips -------------------------------------------------------------------------------------------


def test_round_trip_every_auth_mode(any_registry: Registry, tmp_path: Path) -> None:
    reg = any_registry
    src, dst = stores(tmp_path, reg)
    sample = make_images(src)
    ref = reg.ref("team/app:1")
    digest = src.images.push("child:1", ref, auth=reg.auth)
    assert digest.startswith("sha256:")
    status, headers, manifest = reg.manifest("team/app", "1")
    assert status == 200 and headers["docker-content-digest"] == digest

    img = dst.images.pull(ref, auth=reg.auth)
    assert_same_image(sample.child, img)
    assert ref in img.tags
    assert f"{reg.host}/team/app@{digest}" in img.repo_digests
    assert dst.images.get(f"{reg.host}/team/app@{digest}").id == img.id
    assert dst.images.get(ref).id == img.id
    assert_clean(dst)
    # The parent chain's layers came along: the image runs as a container.
    ctr = dst.containers.create(ref)
    assert ctr.fs.read_bytes("/opt/tool") == b"tool v1\n"


@pytest.mark.parametrize("format,compression", [("docker", "gzip"), ("oci", "gzip"), ("oci", "zstd")])
def test_push_formats_and_compressions(registry: Registry, tmp_path: Path, format: str, compression: str) -> None:
    src, dst = stores(tmp_path, registry)
    sample = make_images(src)
    ref = registry.ref(f"fmt/{format}-{compression}:1")
    digest = src.images.push("child:1", ref, format=format, compression=compression)
    status, headers, body = registry.manifest(ref.split("/", 1)[1].split(":")[0], "1")
    manifest = json.loads(body)
    assert headers["docker-content-digest"] == digest
    if format == "oci":
        assert headers["content-type"] == OCI_MANIFEST
        assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER[compression]}
    else:
        assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    repo = ref.split("/", 1)[1].split(":")[0]
    first = registry.blob(repo, manifest["layers"][0]["digest"])
    assert first.startswith(ZSTD_MAGIC if compression == "zstd" else GZIP_MAGIC)
    assert registry.blob(repo, manifest["config"]["digest"]) == sample.child.config_bytes
    assert_same_image(sample.child, dst.images.pull(ref))


PUSH_PEAK = """
import sys, ovlcore
store = ovlcore.Store(sys.argv[1])
store.images.push("layers:8", sys.argv[2], compression=sys.argv[3])
print([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
"""


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_push_of_many_layers_at_once_in_bounded_memory(registry: Registry, tmp_path: Path, compression: str) -> None:
    # Four layers are compressed and sent at once (max_parallel's default), each with its read-ahead
    # buffers and, for zstd, its workers' jobs: zstd's workers are shared out between the layers, not all
    # given to each (that peaked at 140-170 MB here), and buffers are reused, not reallocated per megabyte.
    src, dst = stores(tmp_path, registry)
    image = None
    for i in range(8):
        archive = tmp_path / f"layer{i}.tar"
        archive.write_bytes(tar(F(f"data{i}.bin", os.urandom(24 << 20))))
        layer = src.layers.apply(archive, parent=image.top_layer if image else None)
        image = src.images.create(layer=layer, parent=image, tag="layers:8")
        archive.unlink()
    ref = registry.ref(f"many/{compression}:1")
    src.close()
    # In a child process, so that the peak is the push's own (VmHWM; ru_maxrss would include pytest's).
    out = subprocess.run([sys.executable, "-c", PUSH_PEAK, str(tmp_path / "src"), ref, compression],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_mib = int(out.stdout.split()[-1]) >> 10
    assert peak_mib < 150, f"pushing 8 layers ({compression}) peaked at {peak_mib} MiB"
    pulled = dst.images.pull(ref)
    assert pulled.diff_ids == image.diff_ids


def test_second_push_sends_no_blob(registry: Registry, tmp_path: Path) -> None:
    src, _ = stores(tmp_path, registry)
    make_images(src)
    ref = registry.ref("team/app:1")
    first = src.images.push("child:1", ref)
    before = len(registry.access_log())
    assert src.images.push("child:1", ref) == first
    again = registry.access_log()[before:]
    assert again, "the second push asked the registry nothing"
    assert [a for a in again if "/blobs/uploads/" in a.path] == []
    assert {a.method for a in again} <= {"GET", "HEAD", "PUT"}  # PUT: the manifest only


def test_second_push_to_the_fault_registry_sends_no_blob(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    src, _ = stores(tmp_path)
    make_images(src)
    ref = fault_registry.ref("team/app:1")
    src.images.push("child:1", ref)
    assert [r for r in fault_registry.uploads() if r.method in ("PUT", "PATCH")]  # the first push sent blobs
    fault_registry.clear_log()
    src.images.push("child:1", ref)
    log = fault_registry.log()
    assert fault_registry.uploads() == []
    assert [r for r in log if r.method in ("PATCH", "POST")] == []
    assert [r for r in log if r.method == "PUT" and "/manifests/" not in r.path] == []
    assert all(int(r.headers.get("content-length") or 0) < 4096 for r in log)  # nothing carried a layer


def layer_digests(reg: Registry, repo: str, ref: str = "1") -> list[str]:
    status, _, body = reg.manifest(repo, ref)
    assert status == 200
    return [layer["digest"] for layer in json.loads(body)["layers"]]


def test_cross_repository_mount(any_registry: Registry, tmp_path: Path) -> None:
    reg = any_registry
    src, dst = stores(tmp_path, reg)
    sample = make_images(src)
    src.images.push("child:1", reg.ref("team/app:1"), auth=reg.auth)
    layers = layer_digests(reg, "team/app")
    before = len(reg.access_log())
    src.images.push("child:1", reg.ref("team/other:1"), auth=reg.auth)
    second = [a for a in reg.access_log()[before:] if "/blobs/uploads/" in a.path]
    unquoted = [(a, urllib.parse.unquote(a.path)) for a in second]
    for digest in layers:
        mounts = [a for a, p in unquoted if a.method == "POST" and f"mount={digest}" in p and "from=team/app" in p]
        assert [a.status for a in mounts] == [201], second
        assert [a for a, p in unquoted if a.method in ("PUT", "PATCH") and digest in p] == []  # not uploaded
    assert_same_image(sample.child, dst.images.pull(reg.ref("team/other:1"), auth=reg.auth))


def test_mount_refused_falls_back_to_upload(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    """The fault registry answers 202 to a mount from a repository it does not know the blob in: the
    push then uploads."""
    src, dst = stores(tmp_path)
    sample = make_images(src)
    src.images.push("child:1", fault_registry.ref("team/app:1"))
    with fault_registry.app.lock:  # forget that team/app has the blobs: the mount cannot succeed
        fault_registry.app.repos["team/app"].blobs.clear()
    fault_registry.clear_log()
    src.images.push("child:1", fault_registry.ref("team/other:1"))
    manifest = json.loads(fault_registry.manifest("team/other", "1")[0])  # type: ignore[index]
    assert all(fault_registry.has_blob("team/other", layer["digest"]) for layer in manifest["layers"])
    assert [r for r in fault_registry.uploads() if r.method == "POST" and "mount=" in r.path]  # it tried
    assert [r for r in fault_registry.uploads() if r.method in ("PUT", "PATCH")]  # then uploaded
    assert_same_image(sample.child, dst.images.pull(fault_registry.ref("team/other:1")))


def test_pull_downloads_no_layer_the_store_has(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    fr = fault_registry
    base = tar(D("etc"), F("etc/base", "base\n" * 100))
    a = build_image([base, tar(F("a", "image a\n"))])
    b = build_image([base, tar(F("b", "image b\n"))])
    fr.add_image("team/a", a, "1")
    fr.add_image("team/b", b, "1")
    _, dst = stores(tmp_path)
    dst.images.pull(fr.ref("team/a:1"))
    fr.clear_log()
    img = dst.images.pull(fr.ref("team/b:1"))
    assert img.id == b.image_id and img.diff_ids == b.diff_ids
    assert fetched(fr) & {layer.digest for layer in b.layers} == {b.layers[1].digest}
    # The same image again, under another name: no layer at all.
    fr.add_image("team/again", a, "1")
    fr.clear_log()
    again = dst.images.pull(fr.ref("team/again:1"))
    assert again.id == a.image_id
    assert fetched(fr) & {layer.digest for layer in a.layers} == set()
    assert fr.ref("team/again:1") in again.tags


def test_pull_after_push_downloads_no_layer(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    """What a store pushed it knows the blob digests of (as Docker's v2 metadata): pulling it back under
    another name fetches no layer."""
    src, _ = stores(tmp_path)
    make_images(src)
    src.images.push("child:1", fault_registry.ref("team/app:1"))
    fault_registry.clear_log()
    img = src.images.pull(fault_registry.ref("team/app:1"))
    assert img.id == src.images.get("child:1").id
    manifest = json.loads(fault_registry.manifest("team/app", "1")[0])  # type: ignore[index]
    assert fetched(fault_registry) & {layer["digest"] for layer in manifest["layers"]} == set()


def test_pull_oci_zstd_image_from_the_test_registry(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    tars = [tar(D("etc"), F("etc/x", "x\n")), tar(F("y", b"\0" * 100_000))]
    raw = build_image(tars, format="oci", compression="zstd")
    fault_registry.add_image("z/app", raw, "1")
    _, dst = stores(tmp_path)
    img = dst.images.pull(fault_registry.ref("z/app:1"))
    assert (img.id, img.diff_ids) == (raw.image_id, raw.diff_ids)
    ref_store = open_store(tmp_path / "ref")
    expected = image_chain(ref_store, tars)
    assert compare_trees(fs_tree(expected.fs), fs_tree(img.fs), times=True) == []


def test_platform_selection(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    images = platform_images()
    fault_registry.add_index("multi", list(images.values()), "1")
    _, dst = stores(tmp_path)
    for plat, raw in images.items():
        img = dst.images.pull(fault_registry.ref("multi:1"), platform=plat)
        assert img.id == raw.image_id
        assert img.fs.read_text("/platform") == plat + "\n"
    with pytest.raises(errors.ImageNotFound) as e:
        dst.images.pull(fault_registry.ref("multi:1"), platform="linux/s390x")
    assert "linux/amd64" in str(e.value) and "linux/arm64/v8" in str(e.value)


def test_push_by_digest(registry: Registry, tmp_path: Path) -> None:
    src, dst = stores(tmp_path, registry)
    sample = make_images(src)
    digest = src.images.push("child:1", registry.ref("team/app:1"))
    img = dst.images.pull(registry.ref(f"team/app@{digest}"))
    assert_same_image(sample.child, img)
    assert f"{registry.host}/team/app@{digest}" in img.repo_digests


def test_progress_events(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    tars = [tar(F("a", b"a" * 50_000)), tar(F("b", bytes(range(256)) * 400))]
    raw = build_image(tars)
    fault_registry.add_image("p/app", raw, "1")
    _, dst = stores(tmp_path)
    events: list[ovlcore.TransferEvent] = []
    dst.images.pull(fault_registry.ref("p/app:1"), progress=events.append)
    assert all(isinstance(e, ovlcore.TransferEvent) for e in events)
    for layer in raw.layers:
        mine = [e for e in events if e.digest == layer.digest]
        assert mine, f"no event for {layer.digest}"
        assert mine[-1].done_bytes == mine[-1].total_bytes == len(layer.data)
        assert [e.done_bytes for e in mine] == sorted(e.done_bytes for e in mine)


# -- login, credentials ------------------------------------------------------------------------------------

OTHER = {"other.example:5000": {"auth": base64.b64encode(b"carol:pw").decode()}}


@pytest.mark.parametrize("fixture", ["tls_registry", "token_registry"])
def test_login_stores_credentials_then_push_and_pull_use_them(fixture: str, request: pytest.FixtureRequest,
                                                            client_home: ClientHome, tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(fixture)
    client_home.write_config({"auths": dict(OTHER), "experimental": "enabled"})
    src, dst = stores(tmp_path, reg)
    sample = make_images(src)
    with pytest.raises(errors.Unauthorized):  # no credentials yet
        src.images.push("child:1", reg.ref("team/app:1"))
    src.login(reg.host, *reg.auth)  # type: ignore[misc]
    cfg = client_home.config()
    assert cfg["experimental"] == "enabled" and cfg["auths"]["other.example:5000"] == OTHER["other.example:5000"]
    assert client_home.stored_credentials(reg.host) == reg.auth
    src.images.push("child:1", reg.ref("team/app:1"))
    assert_same_image(sample.child, dst.images.pull(reg.ref("team/app:1")))
    src.logout(reg.host)
    cfg = client_home.config()
    assert reg.host not in cfg.get("auths", {}) and cfg["auths"]["other.example:5000"] == OTHER["other.example:5000"]
    with pytest.raises(errors.Unauthorized):
        ovlcore.Store(tmp_path / "third", registry=ovlcore.RegistryConfig(ca_dirs=(str(reg.certs_dir),))).images.pull(
            reg.ref("team/app:1"))


@pytest.mark.parametrize("fixture", ["tls_registry", "token_registry"])
def test_wrong_password_is_unauthorized_and_stores_nothing(fixture: str, request: pytest.FixtureRequest,
                                                          client_home: ClientHome, tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(fixture)
    client_home.write_config({"auths": dict(OTHER)})
    src, _ = stores(tmp_path, reg)
    with pytest.raises(errors.Unauthorized) as e:
        src.login(reg.host, "alice", "wrong")
    assert isinstance(e.value, PermissionError) and isinstance(e.value, errors.RegistryError)
    assert client_home.config() == {"auths": OTHER}
    with pytest.raises(errors.Unauthorized):
        src.images.pull(reg.ref("team/app:1"), auth=("alice", "wrong"))


def test_pull_only_user_cannot_push(token_registry: Registry, tmp_path: Path) -> None:
    reg = token_registry
    src, dst = stores(tmp_path, reg)
    sample = make_images(src)
    src.images.push("child:1", reg.ref("team/app:1"), auth=reg.auth)
    assert_same_image(sample.child, dst.images.pull(reg.ref("team/app:1"), auth=PULLER))
    with pytest.raises(errors.Unauthorized):
        dst.images.push(reg.ref("team/app:1"), reg.ref("team/app:2"), auth=PULLER)
    assert reg.manifest("team/app", "2")[0] == 404


def test_cli_login_logout(tls_registry: Registry, client_home: ClientHome, tmp_path: Path) -> None:
    reg = tls_registry
    client_home.trust(reg.certs_dir)  # the CLI reads ~/.config/containers/certs.d
    env = client_home.env()
    r = run_cli("login", "-u", "alice", "--password-stdin", reg.host, input=b"wrong\n", env=env)
    assert r.returncode != 0 and client_home.stored_credentials(reg.host) is None
    r = run_cli("login", "-u", "alice", "--password-stdin", reg.host, input=b"s3cret\n", env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert client_home.stored_credentials(reg.host) == ("alice", "s3cret")
    root = tmp_path / "cli"
    import_ = run_cli("import", "-", "app:1", root=root, input=tar(F("hello", "hi\n")), env=env)
    assert import_.returncode == 0, import_.stderr.decode()
    push = run_cli("push", "app:1", reg.ref("team/app:1"), root=root, env=env)
    assert push.returncode == 0, push.stderr.decode()
    assert run_cli("logout", reg.host, root=root, env=env).returncode == 0
    assert client_home.stored_credentials(reg.host) is None
    pull = run_cli("pull", reg.ref("team/app:1"), root=tmp_path / "cli2", env=env)
    assert pull.returncode != 0 and b"nauthori" in pull.stderr  # "Unauthorized" or "unauthorized"


def test_cli_pull_push_images_digests(registry: Registry, client_home: ClientHome, tmp_path: Path) -> None:
    env = client_home.env()
    root = tmp_path / "cli"
    assert run_cli("import", "-", "app:1", root=root, input=tar(F("hello", "hi\n")), env=env).returncode == 0
    push = run_cli("push", "app:1", registry.ref("team/app:1"), root=root, env=env)
    assert push.returncode == 0, push.stderr.decode()
    status, headers, _ = registry.manifest("team/app", "1")
    digest = headers["docker-content-digest"]
    assert digest in push.stdout.decode() + push.stderr.decode()
    other = tmp_path / "cli2"
    pull = run_cli("pull", registry.ref("team/app:1"), root=other, env=env)
    assert pull.returncode == 0, pull.stderr.decode()
    listing = run_cli("images", "--digests", root=other, env=env)
    assert listing.returncode == 0
    text = listing.stdout.decode()
    assert "DIGEST" in text.splitlines()[0]
    line = next(l for l in text.splitlines() if f"{registry.host}/team/app" in l)
    assert digest in line and "1" in line.split()
    # push SRC alone pushes to the name it has
    run_cli("tag", "app:1", registry.ref("team/solo:2"), root=root, env=env)
    assert run_cli("push", registry.ref("team/solo:2"), root=root, env=env).returncode == 0
    assert registry.manifest("team/solo", "2")[0] == 200


def test_cli_pull_platform(fault_registry: FaultRegistry, client_home: ClientHome, tmp_path: Path) -> None:
    images = platform_images()
    fault_registry.add_index("multi", list(images.values()), "1")
    root = tmp_path / "cli"
    r = run_cli("pull", "--platform", "linux/arm64/v8", fault_registry.ref("multi:1"), root=root, env=client_home.env())
    assert r.returncode == 0, r.stderr.decode()
    with open_store(root) as store:
        img = store.images.get(fault_registry.ref("multi:1"))
        assert img.id == images["linux/arm64/v8"].image_id
        assert img.fs.read_text("/platform") == "linux/arm64/v8\n"
    r = run_cli("pull", "--platform", "linux/riscv64", fault_registry.ref("multi:1"), root=tmp_path / "cli2", env=client_home.env())
    assert r.returncode != 0 and b"linux/amd64" in r.stderr and b"linux/arm64/v8" in r.stderr


def test_cli_pull_progress_on_pty(fault_registry: FaultRegistry, client_home: ClientHome, tmp_path: Path) -> None:
    tars = [tar(F("one", bytes(range(256)) * 2000)), tar(F("two", bytes(reversed(range(256))) * 2000))]
    raw = build_image(tars, compression="gzip")
    fault_registry.add_image("slow/app", raw, "1")
    for layer in raw.layers:  # about 1.5 s per layer: long enough for bars
        fault_registry.fault(layer.digest, Fault("slow", after=max(len(layer.data) // 15, 1), delay=0.1, times=None))
    # (the child inherits this process's environment, which client_home isolated)
    term, out, rc, duration = run_on_pty([*OVLCORE_CMD, "--root", str(tmp_path / "s"), "pull", fault_registry.ref("slow/app:1")])
    text = term.decode(errors="replace")
    assert rc == 0, text
    assert duration > 1.0
    for layer in raw.layers:  # one line per layer, named by its short digest, as docker pull
        assert layer.digest.removeprefix("sha256:")[:12] in text, text[-3000:]


# -- errors ------------------------------------------------------------------------------------------------


def test_unknown_tag_and_repository(any_registry: Registry, tmp_path: Path) -> None:
    reg = any_registry
    src, dst = stores(tmp_path, reg)
    make_images(src)
    src.images.push("base:1", reg.ref("team/app:1"), auth=reg.auth)
    for ref in ("team/app:nope", "team/none:1"):
        with pytest.raises(errors.ImageNotFound):
            dst.images.pull(reg.ref(ref), auth=reg.auth)
    assert dst.images.list() == [] and dst.layers.list() == []
    assert_clean(dst)


def test_tls_registry_without_its_ca_is_a_certificate_error(tls_registry: Registry, tmp_path: Path) -> None:
    store = open_store(tmp_path / "s", registry=ovlcore.RegistryConfig())
    with pytest.raises(errors.RegistryError) as e:
        store.images.pull(tls_registry.ref("team/app:1"), auth=tls_registry.auth)
    assert "certificate" in str(e.value).lower()
    assert [a for a in tls_registry.access_log() if a.path.startswith("/v2/team")] == []  # no request got through
    with pytest.raises(errors.RegistryError):
        store.login(tls_registry.host, *tls_registry.auth)  # type: ignore[misc]


def test_import_and_push_of_an_imported_tar(registry: Registry, tmp_path: Path) -> None:
    """The simplest case end to end: ``import_archive`` then push, pull elsewhere."""
    src, dst = stores(tmp_path, registry)
    img = src.images.import_archive(io.BytesIO(tar(D("etc"), F("etc/motd", "hi\n"))), tag="plain:1")
    src.images.push("plain:1", registry.ref("plain:1"))
    assert_same_image(img, dst.images.pull(registry.ref("plain:1")))
