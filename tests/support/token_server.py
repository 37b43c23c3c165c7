"""A distribution token server for the tests: ``GET /token?service=S&scope=repository:NAME:ACTIONS``
with Basic credentials answers ``{"token": JWT}`` (ES256, ``x5c``), granting each user only the actions
they may take (:data:`USERS`); a wrong password is 401, and no credentials get a token granting nothing.
Every request is logged (``server.log()``)."""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .certs import KeyPair, jwt_es256, token_claims
from .loopback import Handler, LoopbackServer

#: user -> (password, actions on every repository)
USERS: dict[str, tuple[str, frozenset[str]]] = {
    "alice": ("s3cret", frozenset({"pull", "push"})),
    "bob": ("hunter2", frozenset({"pull"})),
}

ISSUER = "ovlcore-test-issuer"


def basic_user(header: str | None, users: dict[str, tuple[str, frozenset[str]]]) -> str | None:
    """The user a ``Basic`` Authorization header names with the right password; ``""`` for none sent;
    ``None`` for wrong credentials."""
    if not header:
        return ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    known = users.get(user)
    return user if known and known[0] == password else None


@dataclass
class TokenApp:
    signer: KeyPair
    service: str
    users: dict[str, tuple[str, frozenset[str]]]
    lifetime: int = 300

    def grant(self, user: str, scopes: list[str]) -> list[dict[str, object]]:
        allowed = self.users[user][1] if user else frozenset()
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        return access

    def handle(self, h: Handler) -> None:
        url = urllib.parse.urlsplit(h.path)
        if url.path != "/token" or h.command not in ("GET", "POST"):
            h.reply(404, b"not found")
            return
        query = urllib.parse.parse_qs(url.query)
        if h.command == "POST":  # the OAuth2 form some clients use
            query.update(urllib.parse.parse_qs(h.body().decode()))
        user = basic_user(h.headers.get("authorization"), self.users)
        if user is None and "password" in query:
            name, password = query.get("username", [""])[0], query["password"][0]
            user = name if self.users.get(name, ("",))[0] == password else None
        if user is None:
            h.reply(401, b'{"details":"wrong username or password"}', {"Content-Type": "application/json"})
            return
        if query.get("service", [self.service])[0] != self.service:
            h.reply(400, b'{"details":"unknown service"}', {"Content-Type": "application/json"})
            return
        scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
        claims = token_claims(issuer=ISSUER, subject=user, audience=self.service,
                              access=self.grant(user, scopes), lifetime=self.lifetime)
        token = jwt_es256(self.signer, claims)
        body = json.dumps({"token": token, "access_token": token, "expires_in": self.lifetime,
                           "issued_at": "1970-01-01T00:00:00Z"}).encode()
        h.reply(200, body, {"Content-Type": "application/json"})


def start_token_server(signer: KeyPair, service: str, tls: tuple[Path, Path] | None,
                       users: dict[str, tuple[str, frozenset[str]]] = USERS) -> LoopbackServer:
    """A running token server (stop it with ``.stop()``); its realm is ``server.url + "/token"``."""
    return LoopbackServer(TokenApp(signer, service, users), tls).start()
