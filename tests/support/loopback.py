"""Small HTTP(S) servers the tests run on loopback in a thread (the token server, the fault registry),
with a log of every request they received; and free ports."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    """One request a loopback server received: ``headers`` with lower-case names."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    #: ``time.monotonic()`` when it arrived
    at: float = field(default_factory=time.monotonic)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


class Handler(BaseHTTPRequestHandler):
    """Logs each request on its server, then dispatches to ``server.app.handle(handler)``."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    body_read = False

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the log is ``server.requests``
        pass

    def _dispatch(self) -> None:
        req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        with self.server.lock:
            self.server.requests.append(req)
        self.body_read = False
        try:
            self.server.app.handle(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        if self.unread_body():  # answered without reading it: the connection cannot be reused
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def unread_body(self) -> bool:
        """Whether the request has a body the app did not read."""
        sent = int(self.headers.get("content-length") or 0) > 0 or "chunked" in self.headers.get("transfer-encoding", "").lower()
        return sent and not self.body_read

    def body(self) -> bytes:
        """The request body (Content-Length or chunked)."""
        self.body_read = True
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A complete response (no body for HEAD, Content-Length still given)."""
        self.send_response(status)
        hs = {"Content-Length": str(len(body)), **(headers or {})}
        if self.unread_body():
            hs["Connection"] = "close"
        for k, v in hs.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: Any

    def __init__(self, app: Any, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.app = app
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.tls = tls
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            # the handshake happens in the handler's thread, so one bad client cannot block accept()
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> LoopbackServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def log(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()
