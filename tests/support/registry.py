"""A real registry for the tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1, on a free
port, with its own config, storage and log under a temporary directory, in one of three modes:

* ``plain``: HTTP, anonymous;
* ``basic``: HTTPS with a certificate from a CA the test made (SAN 127.0.0.1), htpasswd Basic auth;
* ``token``: HTTP, Bearer tokens from :mod:`support.token_server` (over HTTPS, same CA), signed ES256
  with an ``x5c`` certificate the registry trusts through ``auth.token.rootcertbundle``; alice may push
  and pull, bob only pull.

:func:`start_registry` skips the test (with the reason) when the binary is missing. The registry's access
log (``Registry.access_log()``) shows what clients asked (a cross-repository mount is a
``POST .../blobs/uploads/?mount=...`` answered 201).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .certs import KeyPair, certs_d, issue, make_ca
from .loopback import LoopbackServer, free_port
from .token_server import ISSUER, USERS, start_token_server

MODES = ("plain", "basic", "token")
SERVICE = "ovlcore-test-registry"
#: The user who may push and pull in every mode (anyone may in ``plain``).
PUSHER = ("alice", USERS["alice"][0])
#: The user who may only pull (``token`` mode; ``basic`` does not distinguish users).
PULLER = ("bob", USERS["bob"][0])


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


_ACCESS = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class Access:
    """One line of the registry's access log."""

    method: str
    path: str
    status: int


@dataclass
class Registry:
    mode: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    storage: Path
    #: ``certs.d`` directory for ``RegistryConfig(ca_dirs=(...,))`` (``HOST:PORT/ca.crt`` for the registry
    #: and, in token mode, the token server); ``None`` in plain mode.
    certs_dir: Path | None = None
    ca: KeyPair | None = None
    token_server: LoopbackServer | None = None
    users: dict[str, str] = field(default_factory=dict)
    #: how to start the process again (:meth:`restart`)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls(self) -> bool:
        return self.mode == "basic"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def needs_auth(self) -> bool:
        return self.mode != "plain"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials that may push and pull (``None``: anonymous)."""
        return PUSHER if self.needs_auth else None

    def ref(self, path: str) -> str:
        """``HOST:PORT/PATH`` (``team/app:1``...)."""
        return f"{self.host}/{path}"

    def registry_config(self, **kw: Any) -> Any:
        """``ovlcore.RegistryConfig`` trusting this registry's CA."""
        import ovlcore

        ca_dirs = (str(self.certs_dir),) if self.certs_dir else ()
        return ovlcore.RegistryConfig(ca_dirs=ca_dirs, **kw)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca:
            ctx.load_verify_locations(str(self.ca.cert))
        return ctx

    def cert_dir(self) -> Path | None:
        """The one directory with this registry's ``ca.crt`` (skopeo's ``--cert-dir``)."""
        return self.certs_dir / self.host if self.certs_dir else None

    def skopeo_flags(self, side: str = "dest") -> list[str]:
        """Flags for skopeo to reach this registry as ``side`` (``src``/``dest``, or ``""`` for inspect)."""
        p = f"--{side}-" if side else "--"
        out = [f"{p}tls-verify={'true' if self.tls else 'false'}"]
        if self.tls:
            out.append(f"{p}cert-dir={self.cert_dir()}")
        if self.needs_auth:
            out.append(f"{p}creds={PUSHER[0]}:{PUSHER[1]}")
        return out

    def access_log(self) -> list[Access]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ACCESS.match(line)
            if m:
                out.append(Access(m["method"], m["path"], int(m["status"])))
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """A raw request to the registry (``/v2/...``): status, headers (lower-case), body."""
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context() if self.tls else None, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def auth_headers(self, repo: str, actions: str = "pull", user: tuple[str, str] | None = PUSHER) -> dict[str, str]:
        """What to send to reach ``repo`` for ``actions`` as ``user`` in this mode."""
        import base64

        if self.mode == "basic" and user:
            return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}
        if self.mode == "token":
            return {"Authorization": "Bearer " + self.token(f"repository:{repo}:{actions}", user)}
        return {}

    def manifest(self, repo: str, ref: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
        """``GET /v2/REPO/manifests/REF`` with credentials; ``accept`` defaults to every manifest type."""
        from .oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

        accept = accept or ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST])
        return self.get(f"/v2/{repo}/manifests/{ref}", {"Accept": accept, **self.auth_headers(repo)})

    def blob(self, repo: str, digest: str) -> bytes:
        status, _, body = self.get(f"/v2/{repo}/blobs/{digest}", self.auth_headers(repo))
        assert status == 200, (status, body[:200])
        return body

    def token(self, scope: str, user: tuple[str, str] | None = PUSHER) -> str:
        """A Bearer token from the token server (token mode) for ``scope``, asked as ``user``."""
        assert self.token_server is not None and self.ca is not None
        import base64
        import urllib.parse

        headers = {}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        q = urllib.parse.urlencode({"service": SERVICE, "scope": scope})
        req = urllib.request.Request(f"{self.token_server.url}/token?{q}", headers=headers)
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as r:
            return str(json.load(r)["token"])

    def restart(self, *, wipe: bool = True) -> None:
        """Stop the process and start it again on the same port (``wipe``: with empty storage, so a
        benchmark round finds no blob from the one before)."""
        self._stop_process()
        if wipe:
            shutil.rmtree(self.storage, ignore_errors=True)
        self.process = _spawn(self.argv, self.log_path, self.env)
        if not _wait_ready(self):
            raise RuntimeError(f"docker-registry did not restart:\n{self.log_text()[-2000:]}")

    def _stop_process(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self._stop_process()
        if self.token_server:
            self.token_server.stop()


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    try:
        import bcrypt
    except ImportError:
        pytest.skip("the `bcrypt` package is not installed (pip install '.[test]')")
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")


def _config(mode: str, port: int, workdir: Path, storage: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The registry's config (written as JSON, which is YAML) and what the mode made (certs, token server)."""
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "ovlcore-test-secret", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    made: dict[str, Any] = {}
    if mode == "plain":
        return cfg, made
    ca = make_ca(workdir / "pki")
    made["ca"] = ca
    made["certs_dir"] = certs_d(workdir / "certs.d", f"127.0.0.1:{port}", ca)
    if mode == "basic":
        server = issue(ca, workdir / "pki", "server")
        cfg["http"]["tls"] = {"certificate": str(server.cert), "key": str(server.key)}
        _htpasswd(workdir / "htpasswd", {u: p for u, (p, _) in USERS.items()})
        cfg["auth"] = {"htpasswd": {"realm": "ovlcore-test", "path": str(workdir / "htpasswd")}}
    elif mode == "token":
        signing_ca = make_ca(workdir / "pki", "signing-ca", "ovlcore token signing CA")
        signer = issue(signing_ca, workdir / "pki", "signer", cn="ovlcore token signer", ip=None, server=False)
        tls = issue(ca, workdir / "pki", "token-server")
        ts = start_token_server(signer, SERVICE, (tls.cert, tls.key))
        made["token_server"] = ts
        certs_d(workdir / "certs.d", ts.host, ca)
        cfg["auth"] = {"token": {"realm": ts.url + "/token", "service": SERVICE, "issuer": ISSUER,
                                 "rootcertbundle": str(signing_ca.cert)}}
    else:
        raise ValueError(mode)
    return cfg, made


def start_registry(workdir: Path, mode: str = "plain") -> Registry:
    """A running registry in ``mode`` (stop it with ``.stop()``); skips when ``docker-registry`` is missing."""
    binary = registry_binary()
    if binary is None:
        pytest.skip("Debian's registry is not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    # The registry reads REGISTRY_* variables as config overrides (REGISTRY_AUTH_FILE would become auth.file).
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    last = ""
    for attempt in range(3):
        port = free_port()
        storage = workdir / "storage"
        cfg, made = _config(mode, port, workdir / f"run{attempt}", storage)
        cfg_path = workdir / f"config{attempt}.yml"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        log_path = workdir / f"registry{attempt}.log"
        argv = [binary, "serve", str(cfg_path)]
        reg = Registry(mode, port, workdir, _spawn(argv, log_path, env), log_path, storage, made.get("certs_dir"),
                       made.get("ca"), made.get("token_server"),
                       {u: p for u, (p, _) in USERS.items()} if mode != "plain" else {}, argv, env)
        if _wait_ready(reg):
            return reg
        reg.stop()
        last = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start:\n{last}")


def _spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # appended: a restart keeps the earlier access log
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_ready(reg: Registry, timeout: float = 20) -> bool:
    """Until ``/v2/`` answers (200, or 401 with auth); false if the process exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            return False
        try:
            status, _, _ = reg.get("/v2/")
            if status in (200, 401):
                return True
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.05)
    return False
