""".dockerignore: Docker's pattern rules (moby/patternmatcher): one pattern a line, ``#`` comments, ``**`` for
any number of directories, ``*``/``?``/``[...]`` within one name, ``!`` exceptions; the last pattern that
matches a path (or one of its parent directories) decides."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

__all__ = ["IgnoreRules", "read_patterns"]


def read_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, cleaned as Docker cleans them."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if not line:
            continue
        line = posixpath.normpath(line)
        if line.startswith("/"):
            line = line.lstrip("/") or "."
        out.append(("!" if exclusion else "") + line)
    return out


def _compile(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # **/ is **
                out += ".*" if i >= n else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            if i < n:
                out += re.escape(pattern[i])
                i += 1
            else:
                out += re.escape("\\")
        elif ch == "[":
            j = pattern.find("]", i)
            if j < 0:
                out += re.escape(ch)
            else:
                body = pattern[i:j]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = j + 1
        else:
            out += re.escape(ch)
    return re.compile(out + "$")


@dataclass
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool
    text: str


class IgnoreRules:
    """The compiled patterns of a ``.dockerignore``."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [_Pattern(_compile(p.lstrip("!")), p.startswith("!"), p.lstrip("!")) for p in patterns]
        self.has_exclusions = any(p.exclusion for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def ignored(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, ``/``-separated) is left out of the context."""
        path = posixpath.normpath(path)
        parents = path.split("/")[:-1]
        matched = False
        for p in self.patterns:
            if p.exclusion != matched:
                continue
            hit = bool(p.regex.match(path))
            if not hit:
                for k in range(1, len(parents) + 1):
                    if p.regex.match("/".join(parents[:k])):
                        hit = True
                        break
            if hit:
                matched = not p.exclusion
        return matched

    def may_include_below(self, directory: str) -> bool:
        """Whether an exception pattern might bring back something below an ignored ``directory``."""
        directory = posixpath.normpath(directory)
        for p in self.patterns:
            if p.exclusion and (p.text.startswith(directory + "/") or "*" in p.text or "?" in p.text or "[" in p.text):
                return True
        return False
