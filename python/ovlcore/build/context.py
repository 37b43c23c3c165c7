"""The build context: a host directory, less what ``.dockerignore`` leaves out. ``COPY``/``ADD`` sources are
found here (globs as Go's ``filepath.Match`` over context paths), must stay inside it (symbolic links
included), and are summed up into a cache key from their names, types, modes, sizes, link targets and
content — never their times."""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import _ovlcore
from .ignore import IgnoreRules, read_patterns

__all__ = ["Context", "Entry", "SourceError", "has_glob", "glob_match"]


class SourceError(ValueError):
    """A source that is missing, ignored, or outside the context."""


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


@functools.lru_cache(maxsize=256)
def _go_pattern(pattern: str) -> re.Pattern[str]:
    """Go's ``filepath.Match``: ``*`` and ``?`` never match ``/``."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i < len(pattern):
            out += re.escape(pattern[i])
            i += 1
        elif ch == "[" and "]" in pattern[i:]:
            j = pattern.index("]", i)
            body = pattern[i:j]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body).replace("\\", "\\\\") + "]"
            i = j + 1
        else:
            out += re.escape(ch)
    return re.compile(out + "$")


def glob_match(pattern: str, path: str) -> bool:
    return _go_pattern(pattern).match(path) is not None


@dataclass(frozen=True)
class Entry:
    """One entry of the context: ``rel`` is its path relative to the context root."""

    rel: str
    host: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class Context:
    """A build context rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise SourceError(f"the build context {root} is not a directory")
        ignore_file = self.root / ".dockerignore"
        try:
            patterns = read_patterns(ignore_file.read_text())
        except FileNotFoundError:
            patterns = []
        self.ignore = IgnoreRules(patterns)

    def _inside(self, host: str, shown: str) -> str:
        real = os.path.realpath(host)
        if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
            raise SourceError(f"forbidden path outside the build context: {shown} ({real})")
        return real

    def _clean(self, src: str) -> str:
        rel = posixpath.normpath("/" + src).lstrip("/") or "."
        if posixpath.normpath(src).startswith("../") or posixpath.normpath(src) == "..":
            raise SourceError(f"forbidden path outside the build context: {src}")
        return rel

    def sources(self, src: str) -> list[Entry]:
        """The entries one ``COPY`` source names (a path or a glob), symbolic links followed inside the
        context. Raises :class:`SourceError` when nothing is there."""
        rel = self._clean(src)
        if has_glob(rel):
            out = [e for e in self.walk(".") if e.rel != "." and glob_match(rel, e.rel) and not self._matched_parent(e.rel, rel)]
            if not out:
                raise SourceError(f"no source files were specified: {src} matches nothing in the build context")
            return out
        host = os.path.join(self.root, rel)
        real = self._inside(host, src)
        if rel != "." and self.ignore.ignored(rel) and not (os.path.isdir(real) and self.ignore.may_include_below(rel)):
            raise SourceError(f"file not found in build context or excluded by .dockerignore: {src}")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise SourceError(f"file not found in build context or excluded by .dockerignore: stat {src}: file does not exist") from None
        return [Entry(rel, real, st)]

    @staticmethod
    def _matched_parent(rel: str, pattern: str) -> bool:
        """A glob match inside a directory that matched too is copied with that directory."""
        parts = rel.split("/")
        return any(glob_match(pattern, "/".join(parts[:k])) for k in range(1, len(parts)))

    def walk(self, rel: str, host: str | None = None) -> Iterator[Entry]:
        """The entry ``rel`` and everything below it that ``.dockerignore`` keeps, parents first, names
        sorted; symbolic links are not followed (below the top)."""
        host = host if host is not None else os.path.join(self.root, rel)
        st = os.stat(host) if rel == "." else os.lstat(host)
        yield Entry(rel, host, st)
        if not stat.S_ISDIR(st.st_mode):
            return
        for name in sorted(os.listdir(host)):
            child = name if rel == "." else f"{rel}/{name}"
            child_host = os.path.join(host, name)
            if self.ignore and self.ignore.ignored(child):
                if os.path.isdir(child_host) and not os.path.islink(child_host) and self.ignore.may_include_below(child):
                    # Only what an exception brings back below it is kept.
                    for e in self.walk(child, child_host):
                        if e.rel != child and not self.ignore.ignored(e.rel):
                            yield e
                continue
            yield from self.walk(child, child_host)

    def complete(self, entry: Entry) -> bool:
        """Whether nothing below ``entry`` is ignored (it can then be copied in one piece)."""
        if not self.ignore or not entry.is_dir:
            return True
        root = entry.host
        for dirpath, dirnames, filenames in os.walk(root):
            base = os.path.relpath(dirpath, self.root)
            for name in dirnames + filenames:
                rel = name if base == "." else f"{base}/{name}"
                if self.ignore.ignored(rel):
                    return False
        return True

    def digest(self, entries: list[Entry]) -> str:
        """A digest of what ``entries`` (and everything below them) hold: names, types, modes, sizes, link
        targets and content; not times (so a touched file stays a cache hit)."""
        summary: list[list[object]] = []
        for top in entries:
            for e in self.walk(top.rel, top.host) if top.is_dir else [top]:
                mode = e.st.st_mode
                item: list[object] = [e.rel, stat.S_IFMT(mode), stat.S_IMODE(mode)]
                if stat.S_ISREG(mode):
                    with open(e.host, "rb") as f:
                        item += [e.st.st_size, _ovlcore.sha256(f.read())]
                elif stat.S_ISLNK(mode):
                    item.append(os.readlink(e.host))
                summary.append(item)
        return _ovlcore.sha256(json.dumps(summary).encode())
