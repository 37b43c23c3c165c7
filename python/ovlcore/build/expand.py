"""Variable substitution in Dockerfile arguments, with the rules of BuildKit's shell lexer: ``$V``, ``${V}``,
``${V:-x}`` / ``${V-x}``, ``${V:+x}`` / ``${V+x}``, ``${V:?msg}`` / ``${V?msg}``; single quotes are literal,
double quotes expand but group; the escape character (``\\`` or the ``# escape=`` one) protects the next
character. Also the scoping of ``ARG`` and ``ENV`` values (:class:`Scope`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Lexer", "ExpandError", "Scope", "PROXY_ARGS"]

#: Build arguments usable without an ``ARG`` line, left out of ``docker history`` (as Docker does).
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy",
    "ALL_PROXY", "all_proxy",
)


class ExpandError(ValueError):
    """A bad substitution (``${``, an unterminated quote, ``${V:?message}`` with V unset)."""


def _name_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class _Scan:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch


class Lexer:
    """Expands words the way ``docker build`` does (``escape``: the Dockerfile's escape character)."""

    def __init__(self, escape: str = "\\") -> None:
        self.escape = escape

    def word(self, text: str, env: Mapping[str, str]) -> str:
        """One word: expanded, quotes removed, never split."""
        return self._run(text, env, split=False)[0] if text else ""

    def words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """Expanded, quotes removed, split on whitespace outside quotes."""
        return [w for w in self._run(text, env, split=True) if w != ""] if text else []

    def _run(self, text: str, env: Mapping[str, str], split: bool) -> list[str]:
        s = _Scan(text)
        words: list[str] = []
        cur: list[str] = []
        quoted_word = False
        while True:
            ch = s.next()
            if not ch:
                break
            if split and ch in " \t\n":
                if cur or quoted_word:
                    words.append("".join(cur))
                cur, quoted_word = [], False
                continue
            if ch == "'":
                cur.append(self._single(s))
                quoted_word = True
            elif ch == '"':
                cur.append(self._double(s, env))
                quoted_word = True
            elif ch == "$":
                cur.append(self._dollar(s, env))
            elif ch == self.escape:
                nxt = s.next()
                if not nxt:
                    break  # a lone escape at the end is dropped
                cur.append(nxt)
            else:
                cur.append(ch)
        if cur or quoted_word or not split:
            words.append("".join(cur))
        return words

    def _single(self, s: _Scan) -> str:
        out: list[str] = []
        while True:
            ch = s.next()
            if not ch:
                raise ExpandError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def _double(self, s: _Scan, env: Mapping[str, str]) -> str:
        out: list[str] = []
        while True:
            ch = s.next()
            if not ch:
                raise ExpandError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self._dollar(s, env))
                continue
            if ch == self.escape:
                nxt = s.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = s.next()
            out.append(ch)

    def _until_brace(self, s: _Scan, env: Mapping[str, str]) -> str:
        """The word of ``${V:-word}`` up to the closing brace (expanded, quotes removed)."""
        out: list[str] = []
        while True:
            ch = s.next()
            if not ch:
                raise ExpandError("missing '}'")
            if ch == "}":
                return "".join(out)
            if ch == "'":
                out.append(self._single(s))
            elif ch == '"':
                out.append(self._double(s, env))
            elif ch == "$":
                out.append(self._dollar(s, env))
            elif ch == self.escape:
                nxt = s.next()
                if not nxt:
                    raise ExpandError("missing '}'")
                out.append(nxt)
            else:
                out.append(ch)

    def _name(self, s: _Scan) -> str:
        out: list[str] = []
        first = s.peek()
        if first.isdigit():
            return s.next()  # $1: one digit, as the shell
        while _name_char(s.peek()):
            out.append(s.next())
        return "".join(out)

    def _dollar(self, s: _Scan, env: Mapping[str, str]) -> str:
        if s.peek() != "{":
            name = self._name(s)
            if not name:
                return "$"
            return env.get(name, "")
        s.next()
        name = self._name(s)
        if not name:
            raise ExpandError("bad substitution: missing variable name after '${'")
        ch = s.next()
        if ch == "}":
            return env.get(name, "")
        if not ch:
            raise ExpandError(f"missing '}}' in substitution of {name}")
        colon = ch == ":"
        if colon:
            ch = s.next()
        if ch not in ("-", "+", "?"):
            raise ExpandError(f"unsupported modifier ({ch!r}) in substitution of {name}")
        word = self._until_brace(s, env)
        value = env.get(name)
        present = value is not None and (value != "" or not colon)
        if ch == "-":
            return value if present and value is not None else word
        if ch == "+":
            return word if present else ""
        if not present:
            raise ExpandError(f"{name}: {word or 'parameter null or not set'}")
        return value or ""


@dataclass
class Scope:
    """The variables of one stage: ``ENV`` values (from the image and the stage) and the ``ARG`` values
    declared in the stage (``--build-arg`` overrides a default); an ``ENV`` wins over an ``ARG``."""

    build_args: Mapping[str, str]
    #: ARGs declared before the first FROM, with their values (usable in FROM lines and redeclared inside stages).
    meta: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str | None] = field(default_factory=dict)
    #: Every --build-arg some ARG used, to warn about the others (as Docker does).
    used: set[str] = field(default_factory=set)

    def declare(self, name: str, default: str | None) -> None:
        if name in self.build_args:
            self.used.add(name)
            self.args[name] = self.build_args[name]
        elif default is not None:
            self.args[name] = default
        else:
            self.args[name] = self.meta.get(name)

    def values(self) -> dict[str, str]:
        """What substitution sees."""
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(self.env)
        return out

    def run_args(self) -> list[tuple[str, str]]:
        """The ARG values a RUN step gets in its environment (not shadowed by an ENV), plus the proxy
        variables given as build arguments; sorted as Docker records them in ``created_by``."""
        out = {k: v for k, v in self.args.items() if v is not None and k not in self.env}
        for k in PROXY_ARGS:
            if k in self.build_args and k not in self.env:
                out[k] = self.build_args[k]
        return sorted(out.items())
