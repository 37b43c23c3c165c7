"""The Dockerfile language, as BuildKit's parser reads it: parser directives (``# escape=``, ``# syntax=``),
comments, line continuations, heredocs (``<<EOF``) for ``RUN``/``COPY``/``ADD``, JSON (exec) and shell forms,
``--flag=value`` options, with the line each instruction starts on (for errors)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import BuildError

__all__ = ["Dockerfile", "Instruction", "Heredoc", "parse", "INSTRUCTIONS", "split_words"]

INSTRUCTIONS = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
)
#: Instructions whose arguments may be a JSON array (the exec form).
JSON_FORMS = ("ADD", "COPY", "CMD", "ENTRYPOINT", "RUN", "SHELL", "VOLUME")
HEREDOC_FORMS = ("ADD", "COPY", "RUN")
#: Options each instruction takes (anything else is an error, as in BuildKit).
FLAGS = {
    "FROM": ("platform",),
    "RUN": ("network", "mount", "security"),
    "COPY": ("from", "chown", "chmod", "link", "parents", "exclude"),
    "ADD": ("chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}

_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([a-zA-Z_][a-zA-Z0-9_]*)\2")


@dataclass(frozen=True)
class Heredoc:
    """``<<NAME`` ... ``NAME``: the lines between, with a final newline. ``expand``: the name was not quoted
    (variables in the content are expanded); ``chomp``: ``<<-`` strips leading tabs."""

    name: str
    content: str
    expand: bool = True
    chomp: bool = False


@dataclass
class Instruction:
    """One instruction. ``args`` is the text after the options (continuations joined); ``json`` the exec form
    when the arguments are a JSON array of strings."""

    cmd: str
    args: str
    line: int
    end_line: int
    original: str
    flags: dict[str, str] = field(default_factory=dict)
    json: list[str] | None = None
    heredocs: list[Heredoc] = field(default_factory=list)

    def __str__(self) -> str:
        return self.original


@dataclass
class Dockerfile:
    path: str
    escape: str
    instructions: list[Instruction]
    syntax: str | None = None


def _error(path: str, line: int, message: str) -> BuildError:
    return BuildError(message, dockerfile=path, line=line)


def _ends_with_escape(line: str, escape: str) -> tuple[str, bool]:
    """(the line without a trailing continuation character, whether it had one)."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape):
        return stripped[: -len(escape)], True
    return line, False


def _is_comment(line: str) -> bool:
    return line.lstrip(" \t").startswith("#")


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes in the words (BuildKit's
    ``parseWords``: for ``ENV``/``LABEL``/``ARG`` pairs, expanded and unquoted afterwards)."""
    words: list[str] = []
    word = ""
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if not quote and ch in " \t\n":
            if word:
                words.append(word)
                word = ""
            i += 1
            continue
        if ch == escape and i + 1 < len(text) and quote != "'":
            word += ch + text[i + 1]
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        word += ch
        i += 1
    if word:
        words.append(word)
    return words


def _flags(path: str, line: int, cmd: str, rest: str) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` options, and what follows them."""
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        m = re.match(r"--([a-zA-Z][a-zA-Z0-9-]*)(?:=(\S*))?\s*", rest)
        if m is None:
            break
        name, value = m.group(1), m.group(2)
        if name not in FLAGS.get(cmd, ()):
            raise _error(path, line, f"unknown flag: --{name} (for {cmd})")
        if name == "exclude" and name in flags:
            value = flags[name] + "\n" + (value or "")
        flags[name] = value if value is not None else "true"
        rest = rest[m.end():]
    return flags, rest


def _as_json(cmd: str, rest: str) -> list[str] | None:
    if cmd not in JSON_FORMS or not rest.lstrip().startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def parse(text: str, path: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile. Errors are :class:`BuildError` with the line number."""
    lines = text.replace("\r\n", "\n").split("\n")
    if text.startswith("\ufeff"):
        lines[0] = lines[0][1:]
    escape = "\\"
    syntax: str | None = None
    seen: set[str] = set()
    i = 0
    # Parser directives: only at the very top, before any comment, blank line or instruction.
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m is None:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise _error(path, i + 1, f"only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise _error(path, i + 1, f"invalid escape token {value!r} does not match ` or \\")
            escape = value
        elif key == "syntax":
            syntax = value  # accepted and ignored: this builder is the frontend
        i += 1

    out: list[Instruction] = []
    n = len(lines)
    while i < n:
        raw = lines[i]
        i += 1
        start = i
        if _is_comment(raw) or not raw.strip():
            continue
        line, more = _ends_with_escape(raw.lstrip(" \t"), escape)
        while more and i < n:
            nxt = lines[i]
            i += 1
            if _is_comment(nxt) or not nxt.strip():
                continue  # comments and empty lines inside a continuation are skipped
            part, more = _ends_with_escape(nxt, escape)
            line += part
        end = i
        cmd, _, rest = line.strip().partition(" ")
        if "\t" in cmd:
            cmd, _, tail = cmd.partition("\t")
            rest = tail + " " + rest
        upper = cmd.upper()
        if upper not in INSTRUCTIONS:
            raise _error(path, start, f"unknown instruction: {cmd}")
        rest = rest.strip()
        flags, rest = _flags(path, start, upper, rest)
        heredocs: list[Heredoc] = []
        if upper in HEREDOC_FORMS and not rest.startswith("["):
            for m in _HEREDOC.finditer(rest):
                chomp, quoted, name = m.group(1) == "-", m.group(2), m.group(3)
                body: list[str] = []
                while True:
                    if i >= n:
                        raise _error(path, start, f"unterminated heredoc <<{name}")
                    text_line = lines[i]
                    i += 1
                    if chomp:
                        text_line = text_line.lstrip("\t")
                    if text_line == name:
                        break
                    body.append(text_line + "\n")
                heredocs.append(Heredoc(name, "".join(body), expand=not quoted, chomp=chomp))
            end = i
        if not rest and not heredocs:
            raise _error(path, start, f"{upper} requires at least one argument")
        out.append(
            Instruction(upper, rest, start, end, line.strip(), flags=flags, json=_as_json(upper, rest), heredocs=heredocs)
        )
    if not out:
        raise BuildError("the Dockerfile has no instructions", dockerfile=path)
    return Dockerfile(path, escape, out, syntax)
