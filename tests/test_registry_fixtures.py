"""The registry fixtures themselves, checked with plain HTTP requests and ``skopeo`` (no ovlcore registry
code): each mode of the real registry authenticates as it says, the token server's tokens are accepted
with the scopes each user has, and the fault registry serves, receives and misbehaves as configured."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.certs import jwt_claims
from support.credentials import ClientHome
from support.digests import sha256_digest
from support.fault_registry import Fault, FaultRegistry
from support.oci import OCI_INDEX, OCI_MANIFEST, build_image, platform_images, write_oci_layout
from support.registry import PULLER, PUSHER, Registry
from support.tars import F, tar

pytestmark = pytest.mark.registry


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def push_blob(reg: Registry, repo: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A two-step upload (POST, then PUT ?digest=) with urllib; Debian's registry ignores single-POST data."""
    status, h, _ = reg.get(f"/v2/{repo}/blobs/uploads/", headers, method="POST")
    if status != 202:
        return status, h
    loc = h["location"]
    url = loc if loc.startswith("http") else reg.url + loc
    sep = "&" if "?" in url else "?"
    req = urllib.request.Request(f"{url}{sep}digest={sha256_digest(data)}", data=data, method="PUT",
                                 headers={**headers, "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, context=reg.ssl_context() if reg.tls else None, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {}


def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r


# -- the real registry -----------------------------------------------------------------------------------


def test_plain_registry_serves_and_logs(registry: Registry) -> None:
    assert registry.get("/v2/")[0] == 200
    blob = b"hello registry"
    status, h = push_blob(registry, "team/app", blob, {})
    assert status == 201, h
    got = registry.get(f"/v2/team/app/blobs/{sha256_digest(blob)}")
    assert got[0] == 200 and got[2] == blob
    log = registry.access_log()
    assert any(a.method == "PUT" and "/blobs/uploads/" in a.path and a.status == 201 for a in log)
    assert (registry.storage / "docker" / "registry" / "v2" / "repositories" / "team" / "app").is_dir()
    registry.restart()  # empty again, same port
    assert registry.get(f"/v2/team/app/blobs/{sha256_digest(blob)}")[0] == 404
    assert registry.get("/v2/")[0] == 200


def test_tls_registry_requires_basic_auth_and_its_ca(tls_registry: Registry) -> None:
    reg = tls_registry
    assert reg.url.startswith("https://")
    status, h, _ = reg.get("/v2/")
    assert status == 401 and h["www-authenticate"].startswith("Basic ")
    assert reg.get("/v2/", basic(*PUSHER))[0] == 200
    assert reg.get("/v2/", basic("alice", "wrong"))[0] == 401
    # Without the test CA the certificate does not verify.
    with pytest.raises(urllib.error.URLError) as e:
        urllib.request.urlopen(reg.url + "/v2/", context=ssl.create_default_context(), timeout=10)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    assert reg.certs_dir is not None and (reg.certs_dir / reg.host / "ca.crt").is_file()


def test_token_registry_honours_scopes_per_user(token_registry: Registry) -> None:
    reg = token_registry
    status, h, _ = reg.get("/v2/")
    assert status == 401
    challenge = h["www-authenticate"]
    assert challenge.startswith("Bearer ") and f'realm="{reg.token_server.url}/token"' in challenge  # type: ignore[union-attr]

    alice = reg.token("repository:team/app:pull,push")
    assert jwt_claims(alice)["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert push_blob(reg, "team/app", b"alice's blob", {"Authorization": f"Bearer {alice}"})[0] == 201

    bob = reg.token("repository:team/app:pull,push", PULLER)
    assert jwt_claims(bob)["access"][0]["actions"] == ["pull"]
    bob_h = {"Authorization": f"Bearer {bob}"}
    assert reg.get(f"/v2/team/app/blobs/{sha256_digest(b'alice' + chr(39).encode() + b's blob')}", bob_h)[0] == 200
    assert push_blob(reg, "team/app", b"bob's blob", bob_h)[0] == 401

    with pytest.raises(urllib.error.HTTPError) as e:
        reg.token("repository:team/app:pull", ("alice", "wrong"))
    assert e.value.code == 401
    anonymous = reg.token("repository:team/app:pull", None)
    assert jwt_claims(anonymous)["access"][0]["actions"] == []
    assert reg.get("/v2/team/app/tags/list", {"Authorization": f"Bearer {anonymous}"})[0] == 401
    # A token that is not signed by the trusted key is refused.
    forged = alice[: alice.rindex(".")] + "." + base64.urlsafe_b64encode(bytes(64)).rstrip(b"=").decode()
    assert reg.get("/v2/", {"Authorization": f"Bearer {forged}"})[0] == 401


@pytest.mark.parametrize("mode", ["plain", "basic", "token"])
def test_skopeo_pushes_a_two_platform_index(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    skopeo()
    reg: Registry = request.getfixturevalue({"plain": "registry", "basic": "tls_registry", "token": "token_registry"}[mode])
    images = platform_images()
    layout = write_oci_layout(tmp_path / "layout", list(images.values()))
    dest = f"docker://{reg.ref('multi/app:1')}"
    flags = reg.skopeo_flags("dest")
    if mode == "token":  # skopeo's token request shares the registry's TLS settings: the token server's CA
        flags = [f for f in flags if not f.startswith("--dest-tls-verify")] + ["--dest-tls-verify=false"]
    run("skopeo", "copy", "--all", "-q", *flags, f"oci:{layout}:1", dest)
    inspect_flags = [f.replace("--dest-", "--") for f in flags]
    raw = json.loads(run("skopeo", "inspect", "--raw", *inspect_flags, dest).stdout)
    assert raw["mediaType"] == OCI_INDEX
    assert sorted(m["digest"] for m in raw["manifests"]) == sorted(i.digest for i in images.values())
    config = json.loads(run("skopeo", "inspect", "--config", "--override-arch", "arm64", "--override-variant", "v8",
                            *inspect_flags, dest).stdout)
    assert config["rootfs"]["diff_ids"] == images["linux/arm64/v8"].diff_ids


# -- the fault registry -----------------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_fault_registry_serves_manifests_and_ranges(fault_registry: FaultRegistry) -> None:
    fr = fault_registry
    img = build_image([tar(F("a.txt", "a" * 5000))], format="oci")
    digest = fr.add_image("team/app", img, "1")
    assert fetch(fr.url + "/v2/")[0] == 200
    status, h, body = fetch(fr.url + "/v2/team/app/manifests/1", {"Accept": OCI_MANIFEST})
    assert (status, h["content-type"], h["docker-content-digest"], body) == (200, OCI_MANIFEST, digest, img.manifest)
    assert fetch(fr.url + f"/v2/team/app/manifests/{digest}")[2] == img.manifest
    assert fetch(fr.url + "/v2/team/app/manifests/1", {"Accept": "application/x-other"})[0] == 404
    assert fetch(fr.url + "/v2/team/app/manifests/nope")[0] == 404
    layer = img.layers[0]
    head = fetch(fr.url + f"/v2/team/app/blobs/{layer.digest}", method="HEAD")
    assert head[0] == 200 and head[1]["content-length"] == str(len(layer.data)) and head[2] == b""
    part = fetch(fr.url + f"/v2/team/app/blobs/{layer.digest}", {"Range": "bytes=10-"})
    assert part[0] == 206 and part[2] == layer.data[10:]
    assert part[1]["content-range"] == f"bytes 10-{len(layer.data) - 1}/{len(layer.data)}"
    assert fetch(fr.url + f"/v2/other/blobs/{layer.digest}")[0] == 404
    assert [r.method for r in fr.log()][-3:] == ["HEAD", "GET", "GET"]
    assert fr.log()[-2].range == "bytes=10-"


def test_fault_registry_index_negotiation(fault_registry: FaultRegistry) -> None:
    images = list(platform_images().values())
    fault_registry.add_index("multi", images, "1")
    url = fault_registry.url + "/v2/multi/manifests/1"
    assert json.loads(fetch(url, {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})[2])["mediaType"] == OCI_INDEX
    # A client that does not take indexes gets the linux/amd64 image.
    assert fetch(url, {"Accept": OCI_MANIFEST})[2] == images[0].manifest


def test_fault_registry_receives_pushes_and_mounts(fault_registry: FaultRegistry) -> None:
    fr = fault_registry
    data = b"layer bytes" * 100
    d = sha256_digest(data)
    status, h, _ = fetch(fr.url + "/v2/team/app/blobs/uploads/", method="POST")
    assert status == 202
    req = urllib.request.Request(fr.url + h["location"], data=data[:500], method="PATCH")
    with urllib.request.urlopen(req) as r:
        assert r.headers["Range"] == "0-499"
    req = urllib.request.Request(fr.url + h["location"] + f"?digest={d}", data=data[500:], method="PUT")
    with urllib.request.urlopen(req) as r:
        assert r.status == 201
    assert fr.has_blob("team/app", d)
    # A wrong digest is refused.
    status, h, _ = fetch(fr.url + "/v2/team/app/blobs/uploads/", method="POST")
    req = urllib.request.Request(fr.url + h["location"] + f"?digest={sha256_digest(b'x')}", data=b"y", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400
    # Mount from a repository that has the blob: 201; from one that does not: 202 (an upload session).
    assert fetch(fr.url + f"/v2/team/other/blobs/uploads/?mount={d}&from=team/app", method="POST")[0] == 201
    assert fr.has_blob("team/other", d)
    assert fetch(fr.url + f"/v2/team/third/blobs/uploads/?mount={d}&from=nowhere", method="POST")[0] == 202
    # A manifest naming blobs the repository has is accepted, and tagged.
    img = build_image([tar(F("x", "x"))])
    for blob in img.blobs().values():
        fr.add_blob("team/other", blob)
    req = urllib.request.Request(fr.url + "/v2/team/other/manifests/2", data=img.manifest, method="PUT",
                                 headers={"Content-Type": img.media_type})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Docker-Content-Digest"] == img.digest
    assert fr.manifest("team/other", "2") == (img.manifest, img.media_type)
    assert [r.method for r in fr.uploads()] == ["POST", "PATCH", "PUT", "POST", "PUT", "POST", "POST"]


def test_fault_registry_faults(fault_registry: FaultRegistry) -> None:
    fr = fault_registry
    data = bytes(range(256)) * 64
    d = fr.add_blob("r", data)
    url = fr.url + f"/v2/r/blobs/{d}"

    fr.fault(d, Fault("corrupt", times=None))
    for _ in range(2):
        body = fetch(url)[2]
        assert len(body) == len(data) and sha256_digest(body) != d

    fr.fault(d, Fault("truncate", after=1000, times=None))
    status, h, body = fetch(url)
    assert status == 200 and body == data[:1000] and h["content-length"] == "1000"

    fr.fault(d, Fault("status", status=429, retry_after="1"))
    status, h, _ = fetch(url)
    assert status == 429 and h["retry-after"] == "1"
    assert fetch(url)[2] == data

    fr.fault(d, Fault("status", status=500, times=2))
    assert [fetch(url)[0] for _ in range(3)] == [500, 500, 200]

    fr.fault(d, Fault("slow", after=4096, delay=0.1, times=None))
    start = time.monotonic()
    assert fetch(url)[2] == data
    assert time.monotonic() - start >= 0.3

    fr.fault(d, Fault("drop", after=3000))
    conn = http.client.HTTPConnection("127.0.0.1", fr.server.port, timeout=10)
    conn.request("GET", f"/v2/r/blobs/{d}")
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert e.value.partial == data[:3000]
    resumed = fetch(url, {"Range": "bytes=3000-"})
    assert resumed[0] == 206 and data[:3000] + resumed[2] == data


def test_fault_registry_stall_hangs_until_stopped(make_fault_registry: object) -> None:
    fr: FaultRegistry = make_fault_registry()  # type: ignore[operator]
    data = b"s" * 10000
    d = fr.add_blob("r", data)
    fr.fault(d, Fault("stall", after=4000))
    conn = http.client.HTTPConnection("127.0.0.1", fr.server.port, timeout=1)
    conn.request("GET", f"/v2/r/blobs/{d}")
    resp = conn.getresponse()
    assert resp.read(4000) == data[:4000]
    assert fr.wait_stalled(5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        resp.read(1)
    assert time.monotonic() - start >= 0.9
    conn.close()
    assert fetch(fr.url + f"/v2/r/blobs/{d}")[2] == data  # the next request is served


def test_fault_registry_auth_and_redirect(make_fault_registry: object, client_home: ClientHome) -> None:
    fr: FaultRegistry = make_fault_registry(auth=("alice", "s3cret"), redirect_blobs=True)  # type: ignore[operator]
    assert fr.blob_server is not None and fr.blob_server.port != fr.server.port
    d = fr.add_blob("r", b"redirected blob")
    status, h, _ = fetch(fr.url + "/v2/")
    assert status == 401 and h["www-authenticate"] == 'Basic realm="ovlcore-fault"'
    assert fetch(fr.url + "/v2/", basic("alice", "wrong"))[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", fr.server.port, timeout=10)
    conn.request("GET", f"/v2/r/blobs/{d}", headers=basic("alice", "s3cret"))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 307
    location = resp.headers["Location"]
    assert location.startswith(fr.blob_server.url + "/blobs/" + d)
    assert fetch(location)[2] == b"redirected blob"
    # The second host's log shows what a client sent it (a leak of credentials would be seen).
    assert fetch(location, basic("alice", "s3cret"))[0] == 200
    assert [r.authorization is not None for r in fr.blob_server.log()] == [False, True]
    assert len(fr.blob_gets(d)) == 3


def test_fault_registry_speaks_enough_for_skopeo(fault_registry: FaultRegistry, tmp_path: Path) -> None:
    """A real client pushes an index to it and copies it back unchanged."""
    skopeo()
    images = platform_images()
    layout = write_oci_layout(tmp_path / "layout", list(images.values()))
    ref = f"docker://{fault_registry.ref('multi/app:1')}"
    run("skopeo", "copy", "--all", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", ref)
    assert fault_registry.manifest("multi/app", "1") is not None
    for img in images.values():
        assert all(fault_registry.has_blob("multi/app", d) for d in img.blobs())
    run("skopeo", "copy", "--all", "-q", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'back'}:1")
    back = json.loads((tmp_path / "back" / "index.json").read_text())["manifests"][0]
    data, _ = fault_registry.manifest("multi/app", "1")  # type: ignore[misc]
    assert back["digest"] == sha256_digest(data)
    arm = json.loads(run("skopeo", "inspect", "--tls-verify=false", "--override-arch", "arm64", "--override-variant", "v8",
                         "--config", ref).stdout)
    assert arm["rootfs"]["diff_ids"] == images["linux/arm64/v8"].diff_ids
