"""A registry that misbehaves on purpose: a small server on loopback speaking enough of the distribution API
(``/v2/``, manifests by tag or digest with ``Accept`` negotiation, blobs with ``HEAD`` and ``Range``/206,
uploads: monolithic, chunked ``PATCH``, ``PUT ?digest=``, cross-repository mount) to serve and receive images,
and recording every request (``log()``: method, path, headers) so tests can see what a client did.

Faults are set per blob digest (:class:`Fault`; a ``status`` fault also per manifest digest): bytes that do not match the digest, a short
blob, an HTTP status (429 with ``Retry-After``, 500) before success, a connection dropped after N bytes,
a response that stalls after N bytes. With ``redirect_blobs`` blob GETs are answered 307 to a second
loopback server on another port (``blob_server``, with its own log); with ``auth`` every ``/v2/`` request
needs those Basic credentials.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

from .digests import sha256_digest
from .loopback import Handler, LoopbackServer, Request
from .oci import DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, RawImage, build_index

_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs/uploads|blobs|tags)/(?P<rest>[^?]*)")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)


@dataclass
class Fault:
    """What goes wrong when a blob (or manifest) is fetched.

    ``kind``: ``corrupt`` (one byte changed: the digest does not match), ``truncate`` (served ``after`` bytes
    as if that were all of it), ``status`` (answer ``status``, with ``Retry-After: retry_after`` if set),
    ``drop`` (send ``after`` bytes of the full length, then close the connection), ``stall`` (send ``after``
    bytes, then hang until the server stops), ``slow`` (send ``after`` bytes every ``delay`` seconds). ``times``: how many GETs get the fault before the blob is
    served correctly (``None``: every one).
    """

    kind: str
    after: int = 0
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.05
    times: int | None = 1
    hits: int = 0

    def fires(self) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)


def _error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


class FaultApp:
    def __init__(self, auth: tuple[str, str] | None) -> None:
        self.auth = auth
        self.lock = threading.Lock()
        self.blobs: dict[str, bytes] = {}
        self.repos: dict[str, Repo] = {}
        self.faults: dict[str, Fault] = {}
        self.uploads: dict[str, bytearray] = {}
        self.redirect_to: str | None = None
        self.released = threading.Event()
        self.stalled = threading.Event()

    def repo(self, name: str) -> Repo:
        return self.repos.setdefault(name, Repo())

    # -- serving -------------------------------------------------------------------------------------

    def handle(self, h: Handler) -> None:
        path = h.path.split("?")[0]
        if not path.startswith("/v2/"):
            h.reply(404, b"not found")
            return
        if self.auth and not self._authorized(h.headers.get("authorization")):
            h.reply(401, _error("UNAUTHORIZED", "authentication required"),
                    {"WWW-Authenticate": 'Basic realm="ovlcore-fault"', "Content-Type": "application/json"})
            return
        if path == "/v2/":
            h.reply(200, b"{}", {"Content-Type": "application/json", "Docker-Distribution-API-Version": "registry/2.0"})
            return
        m = _PATH.match(h.path)
        if not m:
            h.reply(404, _error("NAME_UNKNOWN", "no such endpoint"))
            return
        name, kind, rest = m["name"], m["kind"], urllib.parse.unquote(m["rest"])
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        if kind == "manifests":
            self._manifest(h, name, rest)
        elif kind == "blobs":
            self._blob(h, name, rest)
        elif kind == "blobs/uploads":
            self._upload(h, name, rest, query)
        elif kind == "tags" and rest == "list":
            with self.lock:
                tags = sorted(self.repo(name).tags)
            h.reply(200, json.dumps({"name": name, "tags": tags}).encode(), {"Content-Type": "application/json"})
        else:
            h.reply(404, _error("UNSUPPORTED", "unsupported"))

    def _authorized(self, header: str | None) -> bool:
        assert self.auth
        want = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return header == want

    def _manifest(self, h: Handler, name: str, ref: str) -> None:
        if h.command == "PUT":
            data = h.body()
            media_type = h.headers.get("content-type", OCI_MANIFEST).split(";")[0]
            digest = sha256_digest(data)
            if ref.startswith("sha256:") and ref != digest:
                h.reply(400, _error("DIGEST_INVALID", "manifest digest does not match"))
                return
            with self.lock:
                r = self.repo(name)
                missing = [d for d in _referenced(data) if d not in r.blobs and d not in r.manifests]
                if missing:
                    h.reply(400, _error("MANIFEST_BLOB_UNKNOWN", f"blob unknown: {missing[0]}"))
                    return
                r.manifests[digest] = (data, media_type)
                if not ref.startswith("sha256:"):
                    r.tags[ref] = digest
            h.reply(201, b"", {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"})
            return
        if h.command not in ("GET", "HEAD"):
            h.reply(405, b"")
            return
        with self.lock:
            r = self.repos.get(name)
            digest = (ref if ref.startswith("sha256:") else r.tags.get(ref)) if r else None
            found = r.manifests.get(digest) if r and digest else None
            fault = self.faults.get(digest) if digest else None
            fire = fault is not None and fault.kind == "status" and fault.fires()
        if found is None or digest is None:
            h.reply(404, _error("MANIFEST_UNKNOWN", f"manifest unknown: {ref}"), {"Content-Type": "application/json"})
            return
        if fire and fault:
            self._status(h, fault)
            return
        data, media_type = found
        accept = [a.split(";")[0].strip() for a in ",".join(h.headers.get_all("accept") or []).split(",") if a.strip()]
        if accept and media_type not in accept and "*/*" not in accept:
            if media_type in INDEX_TYPES:  # like distribution: an old client gets the linux/amd64 entry
                amd64 = [m for m in json.loads(data)["manifests"]
                         if m.get("platform", {}).get("architecture") == "amd64" and m["mediaType"] in accept]
                if amd64:
                    with self.lock:
                        digest = amd64[0]["digest"]
                        data, media_type = r.manifests[digest]
            if media_type not in accept:
                h.reply(404, _error("MANIFEST_UNKNOWN", f"no manifest of the types accepted: {accept}"))
                return
        h.reply(200, data, {"Content-Type": media_type, "Docker-Content-Digest": digest})

    def _status(self, h: Handler, fault: Fault) -> None:
        headers = {"Content-Type": "application/json"}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        code = "TOOMANYREQUESTS" if fault.status == 429 else "UNKNOWN"
        h.reply(fault.status, _error(code, f"injected {fault.status}"), headers)

    def _blob(self, h: Handler, name: str, digest: str) -> None:
        if h.command not in ("GET", "HEAD"):
            h.reply(405, b"")
            return
        with self.lock:
            known = digest in self.repo(name).blobs
            data = self.blobs.get(digest)
            fault = self.faults.get(digest)
            fire = h.command == "GET" and fault is not None and fault.fires()
            redirect = self.redirect_to
        if not known or data is None:
            h.reply(404, _error("BLOB_UNKNOWN", f"blob unknown: {digest}"), {"Content-Type": "application/json"})
            return
        if fire and fault and fault.kind == "status":
            self._status(h, fault)
            return
        if h.command == "GET" and redirect:
            h.reply(307, b"", {"Location": f"{redirect}/blobs/{digest}?signature=t0ps3cr3t"})
            return
        serve_blob(self, h, digest, data, fault if fire else None)

    def _upload(self, h: Handler, name: str, session: str, query: dict[str, list[str]]) -> None:
        if h.command == "POST" and not session:
            if "mount" in query:
                digest, source = query["mount"][0], query.get("from", [""])[0]
                with self.lock:
                    ok = source in self.repos and digest in self.repos[source].blobs
                    if ok:
                        self.repo(name).blobs.add(digest)
                if ok:
                    h.reply(201, b"", {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
                    return
            body = h.body()
            if "digest" in query:  # a monolithic upload
                self._finish(h, name, bytearray(body), query["digest"][0])
                return
            sid = uuid.uuid4().hex
            with self.lock:
                self.uploads[sid] = bytearray(body)
            h.reply(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{sid}", "Docker-Upload-UUID": sid,
                               "Range": "0-0"})
            return
        with self.lock:
            buf = self.uploads.get(session)
        if buf is None:
            h.reply(404, _error("BLOB_UPLOAD_UNKNOWN", "upload unknown"))
            return
        if h.command == "PATCH":
            buf += h.body()
            h.reply(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{session}", "Docker-Upload-UUID": session,
                               "Range": f"0-{max(len(buf) - 1, 0)}"})
        elif h.command == "PUT":
            buf += h.body()
            with self.lock:
                self.uploads.pop(session, None)
            self._finish(h, name, buf, query.get("digest", [""])[0])
        elif h.command == "GET":
            h.reply(204, b"", {"Range": f"0-{max(len(buf) - 1, 0)}", "Docker-Upload-UUID": session})
        else:
            h.reply(405, b"")

    def _finish(self, h: Handler, name: str, data: bytearray, digest: str) -> None:
        if sha256_digest(bytes(data)) != digest:
            h.reply(400, _error("DIGEST_INVALID", "provided digest did not match uploaded content"))
            return
        with self.lock:
            self.blobs[digest] = bytes(data)
            self.repo(name).blobs.add(digest)
        h.reply(201, b"", {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _referenced(manifest: bytes) -> list[str]:
    """The digests a manifest or index names."""
    try:
        m = json.loads(manifest)
    except ValueError:
        return []
    out = [m["config"]["digest"]] if "config" in m else []
    out += [layer["digest"] for layer in m.get("layers", [])]
    out += [x["digest"] for x in m.get("manifests", [])]
    return out


def serve_blob(app: FaultApp, h: Handler, digest: str, data: bytes, fault: Fault | None) -> None:
    """Send ``data`` (honouring ``Range``), spoiled as ``fault`` says."""
    total = len(data)
    if fault and fault.kind == "corrupt":
        data = data[:-1] + bytes([data[-1] ^ 0xFF]) if data else b"x"
    elif fault and fault.kind == "truncate":
        data = data[: fault.after]
        total = len(data)
    start, end = 0, total - 1
    m = _RANGE.match(h.headers.get("range", ""))
    status = 200
    headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest, "Accept-Ranges": "bytes"}
    if m:
        start = int(m[1])
        end = min(int(m[2]), total - 1) if m[2] else total - 1
        if start >= total or start > end:
            h.reply(416, b"", {"Content-Range": f"bytes */{total}"})
            return
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    body = data[start : end + 1]
    h.send_response(status)
    headers["Content-Length"] = str(len(body))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    if h.command == "HEAD":
        return
    if fault and fault.kind in ("drop", "stall"):
        h.wfile.write(body[: fault.after])
        h.wfile.flush()
        if fault.kind == "stall":
            app.stalled.set()
            app.released.wait(300)
        h.close_connection = True
        h.connection.shutdown(2)  # the client sees the connection end mid-body
        return
    if fault and fault.kind == "slow":
        for i in range(0, len(body), max(fault.after, 1)):
            h.wfile.write(body[i : i + fault.after])
            h.wfile.flush()
            time.sleep(fault.delay)
        return
    h.wfile.write(body)


class BlobStoreApp:
    """The second host blob GETs are redirected to: ``/blobs/DIGEST`` with ``Range``; no auth wanted."""

    def __init__(self, app: FaultApp) -> None:
        self.app = app

    def handle(self, h: Handler) -> None:
        digest = h.path.split("?")[0].removeprefix("/blobs/")
        data = self.app.blobs.get(digest)
        if data is None:
            h.reply(404, b"no such blob")
            return
        serve_blob(self.app, h, digest, data, None)


class FaultRegistry:
    """A running fault registry (see the module's docstring). Stop it with :meth:`stop`."""

    def __init__(self, *, auth: tuple[str, str] | None = None, redirect_blobs: bool = False) -> None:
        self.app = FaultApp(auth)
        self.server = LoopbackServer(self.app).start()
        self.blob_server: LoopbackServer | None = None
        if redirect_blobs:
            self.blob_server = LoopbackServer(BlobStoreApp(self.app)).start()
            self.app.redirect_to = self.blob_server.url

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.app.auth

    def ref(self, path: str) -> str:
        return f"{self.host}/{path}"

    # -- content ---------------------------------------------------------------------------------------

    def add_blob(self, name: str, data: bytes) -> str:
        digest = sha256_digest(data)
        with self.app.lock:
            self.app.blobs[digest] = data
            self.app.repo(name).blobs.add(digest)
        return digest

    def add_manifest(self, name: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256_digest(data)
        with self.app.lock:
            r = self.app.repo(name)
            r.manifests[digest] = (data, media_type)
            if tag:
                r.tags[tag] = digest
        return digest

    def add_image(self, name: str, image: RawImage, tag: str | None = "1") -> str:
        """Serve ``image`` as ``NAME:TAG``; returns its manifest digest."""
        for data in image.blobs().values():
            self.add_blob(name, data)
        return self.add_manifest(name, image.manifest, image.media_type, tag)

    def add_index(self, name: str, images: list[RawImage], tag: str = "1", format: str = "oci") -> str:
        """Serve ``images`` under one index (or manifest list) as ``NAME:TAG``; returns the index digest."""
        for img in images:
            self.add_image(name, img, None)
        data, media_type = build_index(images, format=format)
        return self.add_manifest(name, data, media_type, tag)

    def fault(self, digest: str, fault: Fault) -> Fault:
        with self.app.lock:
            self.app.faults[digest] = fault
        return fault

    def has_blob(self, name: str, digest: str) -> bool:
        with self.app.lock:
            return digest in self.app.repos.get(name, Repo()).blobs

    def manifest(self, name: str, ref: str) -> tuple[bytes, str] | None:
        with self.app.lock:
            r = self.app.repos.get(name)
            if r is None:
                return None
            digest = ref if ref.startswith("sha256:") else r.tags.get(ref)
            return r.manifests.get(digest) if digest else None

    # -- what clients did ------------------------------------------------------------------------------

    def log(self) -> list[Request]:
        return self.server.log()

    def clear_log(self) -> None:
        self.server.clear_log()
        if self.blob_server:
            self.blob_server.clear_log()

    def blob_gets(self, digest: str | None = None) -> list[Request]:
        """GETs of blobs (of ``digest``), on the registry and on the redirect target."""
        logs = self.log() + (self.blob_server.log() if self.blob_server else [])
        return [r for r in logs if r.method == "GET" and "/blobs/" in r.path and "/uploads/" not in r.path
                and (digest is None or r.path.split("?")[0].endswith(digest))]

    def uploads(self) -> list[Request]:
        """Requests that start, carry or finish a blob upload (a mount counts: it is a POST)."""
        return [r for r in self.log() if "/blobs/uploads/" in r.path]

    def wait_stalled(self, timeout: float = 60) -> bool:
        """Until a ``stall`` fault has sent its bytes and hangs."""
        return self.app.stalled.wait(timeout)

    def stop(self) -> None:
        self.app.released.set()
        self.server.stop()
        if self.blob_server:
            self.blob_server.stop()
