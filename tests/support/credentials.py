"""The client side of registry credentials, isolated per test: ``$DOCKER_CONFIG``, ``$REGISTRY_AUTH_FILE``,
``$HOME`` and ``$XDG_RUNTIME_DIR`` pointed at temporary directories (never the real ones), and reading
what a ``login`` stored there."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Pulls retry quickly in tests (the contract's backoff base, in ms).
BACKOFF_MS = "20"


@dataclass
class ClientHome:
    root: Path

    @property
    def docker_config(self) -> Path:
        """``$DOCKER_CONFIG`` (a directory)."""
        return self.root / "docker"

    @property
    def config_json(self) -> Path:
        return self.docker_config / "config.json"

    @property
    def auth_file(self) -> Path:
        """``$REGISTRY_AUTH_FILE``."""
        return self.root / "containers" / "auth.json"

    def env(self) -> dict[str, str]:
        """The variables, for a child process."""
        return {
            "DOCKER_CONFIG": str(self.docker_config),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "HOME": str(self.root / "home"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_CONFIG_HOME": str(self.root / "home" / ".config"),
            "OVLCORE_REGISTRY_BACKOFF_MS": BACKOFF_MS,
        }

    @property
    def user_certs_d(self) -> Path:
        """``~/.config/containers/certs.d`` of the isolated home (read by default, as by podman)."""
        return self.root / "home" / ".config" / "containers" / "certs.d"

    def trust(self, certs_dir: Path | None) -> None:
        """Copy a ``certs.d`` tree into :attr:`user_certs_d`, for clients given no ``ca_dirs`` (the CLI)."""
        if certs_dir is not None:
            shutil.copytree(certs_dir, self.user_certs_d, dirs_exist_ok=True)

    def config(self) -> dict[str, Any]:
        """``$DOCKER_CONFIG/config.json`` as JSON (``{}`` when there is none)."""
        return json.loads(self.config_json.read_text()) if self.config_json.exists() else {}

    def write_config(self, obj: dict[str, Any]) -> None:
        self.config_json.write_text(json.dumps(obj))

    def stored_credentials(self, host: str) -> tuple[str, str] | None:
        """The user and password ``auths[host]`` holds, if any."""
        entry = self.config().get("auths", {}).get(host)
        if not entry or "auth" not in entry:
            return None
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        return user, password


def isolate(root: Path, monkeypatch: pytest.MonkeyPatch) -> ClientHome:
    """Point this process's credential lookups at ``root`` (undone by ``monkeypatch``)."""
    home = ClientHome(root)
    for k, v in home.env().items():
        monkeypatch.setenv(k, v)
    for d in (home.docker_config, home.auth_file.parent, root / "home", root / "run"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "run").chmod(0o700)
    return home
