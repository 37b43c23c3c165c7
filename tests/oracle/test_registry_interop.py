"""Registry interoperability: what ovlcore pushes, Docker pulls and runs and skopeo reads; what Docker and
skopeo push (a two-platform OCI index included), ovlcore pulls with the same ids, diff_ids and contents.

Needs ``docker-registry`` (else every test skips); the Docker tests need a running engine and
``busybox-static`` (see :mod:`support.docker`), the skopeo tests ``skopeo``. Docker treats 127.0.0.0/8
registries as insecure, so the plain-HTTP registry fixture serves both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import ovlcore
from ovlcore import errors
from support.digests import sha256_digest
from support.docker import DockerObjects, busybox_rootfs, run
from support.fault_registry import Fault, FaultRegistry
from support.oci import platform_images, write_oci_layout
from support.registry import Registry
from support.stores import open_store
from support.tars import D, F, tar
from support.trees import compare_trees, fs_tree

pytestmark = pytest.mark.registry


def registry_store(root: Path, reg: Registry) -> ovlcore.Store:
    return open_store(root, registry=reg.registry_config())


def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    return run("skopeo", *args)


def docker_inspect(ref: str) -> dict[str, object]:
    return json.loads(run("docker", "image", "inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def two_layer_image(store: ovlcore.Store, tmp_path: Path, tag: str) -> ovlcore.Image:
    """busybox plus a committed layer holding ``/hello``."""
    store.images.import_archive(str(busybox_rootfs(tmp_path)), tag="bb:1", changes=['CMD ["sh"]'])
    ctr = store.containers.create("bb:1")
    ctr.fs.write_text("/hello", "hello from ovlcore\n")
    ctr.fs.remove("/gone.txt")
    return ctr.commit(tag, message="hello")


# -- Docker ------------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_docker_runs_what_we_push(dk: DockerObjects, registry: Registry, tmp_path: Path) -> None:
    store = registry_store(tmp_path / "s", registry)
    img = two_layer_image(store, tmp_path, "app:1")
    ref = registry.ref(f"interop/{dk.prefix}:1")
    dk.images.append(ref)
    store.images.push("app:1", ref)
    run("docker", "pull", ref)
    inspect = docker_inspect(ref)
    assert inspect["Id"] == img.id
    assert inspect["RootFS"]["Layers"] == img.diff_ids  # type: ignore[index]
    out = run("docker", "run", "--rm", "--network", "none", ref, "sh", "-c", "cat /hello; test ! -e /gone.txt && echo gone")
    assert out.stdout.decode() == "hello from ovlcore\ngone\n"
    # zstd OCI too: Docker 20.10 can pull it only if it knows zstd; gzip OCI is universal
    ref2 = registry.ref(f"interop/{dk.prefix}-oci:1")
    dk.images.append(ref2)
    store.images.push("app:1", ref2, format="oci")
    run("docker", "pull", ref2)
    assert docker_inspect(ref2)["Id"] == img.id


@pytest.mark.docker
def test_we_pull_what_docker_pushes(dk: DockerObjects, registry: Registry, tmp_path: Path) -> None:
    base = registry.ref(f"docker/{dk.prefix}-base:1")
    made = registry.ref(f"docker/{dk.prefix}:1")
    dk.images += [base, made]
    run("docker", "import", str(busybox_rootfs(tmp_path)), base)
    cname = dk.container("mk")
    run("docker", "run", "--name", cname, "--network", "none", base, "sh", "-c",
        "echo made by docker > /made && rm /gone.txt && rm -r /olddir")
    run("docker", "commit", "-c", 'CMD ["sh"]', cname, made)
    run("docker", "push", made)
    inspect = docker_inspect(made)
    store = registry_store(tmp_path / "s", registry)
    img = store.images.pull(made)
    assert img.id == inspect["Id"]
    assert img.diff_ids == inspect["RootFS"]["Layers"]  # type: ignore[index]
    assert img.fs.read_text("/made") == "made by docker\n"
    assert not img.fs.exists("/gone.txt") and not img.fs.exists("/olddir")
    assert img.fs.read_text("/data/a.txt") == "alpha\n"
    digest = json.loads(run("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", made).stdout)
    assert any(d.split("@")[1] in " ".join(img.repo_digests) for d in digest)


# -- skopeo ------------------------------------------------------------------------------------------------


def test_skopeo_inspects_and_copies_what_we_push(registry: Registry, tmp_path: Path) -> None:
    store = registry_store(tmp_path / "s", registry)
    img = two_layer_image(store, tmp_path, "app:1")
    ref = registry.ref("ours/app:1")
    digest = store.images.push("app:1", ref)
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert info["Digest"] == digest
    assert len(info["Layers"]) == len(img.diff_ids)
    config = skopeo("inspect", "--tls-verify=false", "--raw", "--config", f"docker://{ref}").stdout
    assert config == img.config_bytes
    layout = tmp_path / "copied"
    # A `dir:` copy keeps the manifest as pushed (an `oci:` copy converts a Docker config, changing its id).
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"dir:{layout}")
    raw = (layout / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    manifest = json.loads(raw)
    assert manifest["config"]["digest"] == img.id
    for blob in manifest["layers"]:
        assert "sha256:" + hashlib.sha256((layout / blob["digest"].split(":")[1]).read_bytes()).hexdigest() == blob["digest"]


def test_we_pull_what_skopeo_pushes(registry: Registry, tmp_path: Path) -> None:
    src = registry_store(tmp_path / "src", registry)
    img = two_layer_image(src, tmp_path, "app:1")
    archive = tmp_path / "app.tar"
    src.images.save(["app:1"], archive)
    ref = registry.ref("skopeo/app:1")
    skopeo("copy", "-q", "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{ref}")
    dst = registry_store(tmp_path / "dst", registry)
    pulled = dst.images.pull(ref)
    assert (pulled.id, pulled.diff_ids) == (img.id, img.diff_ids)
    theirs, ours = fs_tree(img.fs), fs_tree(pulled.fs)
    assert compare_trees(theirs, ours) == []
    # A layer tar keeps whole seconds (as Docker's): the committed layer's own files have nanoseconds.
    assert {p: n.mtime_ns // 10**9 for p, n in theirs.items() if p != "/"} == {p: n.mtime_ns // 10**9 for p, n in ours.items() if p != "/"}


@pytest.mark.parametrize("fixture", ["registry", "tls_registry", "token_registry"])
def test_two_platform_index_pushed_by_skopeo(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(fixture)
    images = platform_images()
    layout = write_oci_layout(tmp_path / "layout", list(images.values()))
    ref = reg.ref("multi/app:1")
    flags = reg.skopeo_flags("dest")
    if reg.mode == "token":  # skopeo checks the token server with the registry's TLS settings
        flags = [f for f in flags if not f.startswith("--dest-tls-verify")] + ["--dest-tls-verify=false"]
    skopeo("copy", "--all", "-q", *flags, f"oci:{layout}:1", f"docker://{ref}")
    store = registry_store(tmp_path / "s", reg)
    for plat, raw in images.items():
        img = store.images.pull(ref, platform=plat, auth=reg.auth)
        assert (img.id, img.diff_ids) == (raw.image_id, raw.diff_ids)
        assert img.fs.read_text("/platform") == plat + "\n"
    with pytest.raises(errors.ImageNotFound) as e:
        store.images.pull(ref, platform="linux/ppc64le", auth=reg.auth)
    assert "linux/amd64" in str(e.value) and "linux/arm64/v8" in str(e.value)
    # by the index's digest, too
    inspect_flags = [f.replace("--dest-", "--") for f in flags]
    raw_index = skopeo("inspect", "--raw", *inspect_flags, f"docker://{ref}").stdout
    by_digest = store.images.pull(reg.ref(f"multi/app@{sha256_digest(raw_index)}"), platform="linux/arm64/v8",
                                  auth=reg.auth)
    assert by_digest.id == images["linux/arm64/v8"].image_id


@pytest.mark.docker
def test_docker_against_the_fault_registry(dk: DockerObjects, fault_registry: FaultRegistry, tmp_path: Path) -> None:
    """The fixture checked with a real client: Docker pushes to it (chunked PATCH) and, after a dropped
    connection, resumes the blob with ``Range`` as the ovlcore tests expect of ovlcore."""
    ref = fault_registry.ref(f"dk/{dk.prefix}:1")
    dk.images.append(ref)
    (tmp_path / "l.tar").write_bytes(tar(D("etc"), F("etc/x", b"hello\n" + bytes(range(256)) * 400)))
    run("docker", "import", str(tmp_path / "l.tar"), ref)
    run("docker", "push", ref)
    assert [r.method for r in fault_registry.uploads() if r.headers.get("transfer-encoding") == "chunked"]
    manifest = json.loads(fault_registry.manifest(f"dk/{dk.prefix}", "1")[0])  # type: ignore[index]
    layer = manifest["layers"][0]["digest"]
    run("docker", "rmi", ref)
    fault_registry.fault(layer, Fault("drop", after=50))
    run("docker", "pull", ref)
    assert [r.range for r in fault_registry.blob_gets(layer)][-1] == "bytes=50-"
