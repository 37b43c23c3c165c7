"""Image configs: Dockerfile-style edits (as ``docker commit --change`` and ``docker import --change`` take
them), the config of one more build step, and the canonical bytes this store writes."""

from __future__ import annotations

import json
import os
import posixpath
import shlex
from datetime import datetime, timezone
from typing import Any

from ._time import format_time

__all__ = ["apply_changes", "describe_change", "child_config", "encode_config", "host_arch"]

SUPPORTED = ("ENV", "CMD", "ENTRYPOINT", "WORKDIR", "USER", "LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL", "ONBUILD")


def _exec_form(arg: str) -> list[str]:
    """``["a", "b"]`` (JSON) as is; anything else is run by the shell, as Docker does."""
    text = arg.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", text]


def _pairs(instruction: str, arg: str) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` pairs, or the legacy ``KEY value`` form."""
    words = shlex.split(arg)
    if not words:
        raise ValueError(f"{instruction} needs at least one argument")
    if "=" not in words[0]:
        if len(words) < 2 and instruction == "ENV":
            raise ValueError(f"ENV {arg!r}: expected KEY=VALUE or KEY VALUE")
        key, _, rest = arg.strip().partition(" ")
        return [(key, rest.strip())]
    out = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise ValueError(f"{instruction} {arg!r}: expected KEY=VALUE pairs")
        out.append((key, value))
    return out


def apply_changes(config: dict[str, Any], changes: list[str] | None) -> dict[str, Any]:
    """Apply instructions such as ``ENV A=1`` or ``CMD ["sh"]`` to an image config's ``config`` object
    (modified in place and returned). Unknown instructions raise :class:`ValueError`."""
    for change in changes or []:
        if not isinstance(change, str) or not change.strip():
            raise ValueError(f"empty or non-text change: {change!r}")
        instruction, _, arg = change.strip().partition(" ")
        instruction = instruction.upper()
        arg = arg.strip()
        if instruction == "ENV":
            env: list[str] = list(config.get("Env") or [])
            for key, value in _pairs("ENV", arg):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
            config["Env"] = env
        elif instruction == "LABEL":
            labels: dict[str, str] = dict(config.get("Labels") or {})
            for key, value in _pairs("LABEL", arg):
                labels[key] = value
            config["Labels"] = labels
        elif instruction in ("CMD", "ENTRYPOINT"):
            config["Cmd" if instruction == "CMD" else "Entrypoint"] = _exec_form(arg)
        elif instruction == "WORKDIR":
            if not arg:
                raise ValueError("WORKDIR needs a path")
            config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", arg))
        elif instruction == "USER":
            if not arg:
                raise ValueError("USER needs a user")
            config["User"] = arg
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for p in arg.split():
                port, _, proto = p.partition("/")
                if not port.isdigit():
                    raise ValueError(f"EXPOSE {p!r}: not a port number")
                ports[f"{port}/{proto or 'tcp'}"] = {}
            config["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            vols = dict(config.get("Volumes") or {})
            paths = json.loads(arg) if arg.startswith("[") else arg.split()
            for v in paths:
                vols[str(v)] = {}
            config["Volumes"] = vols
        elif instruction == "STOPSIGNAL":
            config["StopSignal"] = arg
        elif instruction == "ONBUILD":
            config["OnBuild"] = list(config.get("OnBuild") or []) + [arg]
        else:
            raise ValueError(f"unsupported change instruction {instruction!r} (supported: {', '.join(SUPPORTED)})")
    return config


def describe_change(change: str) -> str:
    """How Docker shows a config-only step in ``history``."""
    return f"/bin/sh -c #(nop)  {change.strip()}"


def host_arch() -> str:
    """This machine's architecture as OCI names it (``amd64``, ``arm64``, ...)."""
    m = os.uname().machine.lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def encode_config(config: dict[str, Any]) -> bytes:
    """The canonical bytes of a config this store writes (sorted keys, no spaces)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def child_config(
    base: dict[str, Any] | None,
    diff_id: str | None,
    *,
    created_by: str,
    comment: str,
    author: str | None,
    changes: list[str] | None,
    config: dict[str, Any] | None = None,
    created: datetime | None = None,
) -> bytes:
    """The config of ``base`` (a parsed image config, or ``None`` for a base image) plus one step: a layer
    ``diff_id`` (or none: ``empty_layer``) and its history entry. ``config`` replaces the runtime config
    before ``changes`` apply; ``created`` (default: now) dates the image and the entry (a build with
    ``SOURCE_DATE_EPOCH`` gives its epoch)."""
    now = created if created is not None else datetime.now(timezone.utc)
    if base is not None:
        cfg = json.loads(json.dumps(base))
    else:
        cfg = {"architecture": host_arch(), "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    if config is not None:
        cfg["config"] = dict(config)
    apply_changes(cfg.setdefault("config", {}), changes)
    cfg["created"] = format_time(now)
    entry: dict[str, Any] = {"created": cfg["created"], "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
        cfg["author"] = author
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []}).setdefault("diff_ids", []).append(diff_id)
    cfg.setdefault("history", []).append(entry)
    return encode_config(cfg)
