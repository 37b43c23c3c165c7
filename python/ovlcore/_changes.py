"""Dockerfile-style config edits, as ``docker commit --change`` and ``docker import --change`` take them."""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Any

__all__ = ["apply_changes", "describe_change"]

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
