"""The Dockerfile language without building: the parser (directives, continuations, comments, heredocs,
JSON and shell forms, flags, line numbers in errors), variable substitution, .dockerignore patterns and
the context's source rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ovlcore.build.context import Context, SourceError, glob_match
from ovlcore.build.dockerfile import parse, split_words
from ovlcore.build.expand import ExpandError, Lexer, Scope
from ovlcore.build.ignore import IgnoreRules, read_patterns
from ovlcore.errors import BuildError, OvlError


def test_instructions_lines_and_forms() -> None:
    df = parse(
        "# syntax=docker/dockerfile:1\n"
        "FROM busybox AS base\n"
        "\n"
        "# a comment\n"
        "RUN echo a \\\n"
        "  # comment inside a continuation\n"
        "\n"
        "    && echo b\n"
        'CMD ["sh", "-c", "echo hi"]\n'
        "ENTRYPOINT [not json\n"
        "copy --chown=1:2 --from=base a b/\n"
    )
    assert df.syntax == "docker/dockerfile:1"
    cmds = [(i.cmd, i.line) for i in df.instructions]
    assert cmds == [("FROM", 2), ("RUN", 5), ("CMD", 9), ("ENTRYPOINT", 10), ("COPY", 11)]
    run = df.instructions[1]
    assert run.args == "echo a     && echo b"
    assert run.end_line == 8
    assert run.json is None
    assert df.instructions[2].json == ["sh", "-c", "echo hi"]
    assert df.instructions[3].json is None and df.instructions[3].args == "[not json"
    copy = df.instructions[4]
    assert copy.flags == {"chown": "1:2", "from": "base"} and copy.args == "a b/"


def test_escape_directive_changes_the_continuation_character() -> None:
    df = parse("# escape=`\nFROM scratch\nCOPY a `\n  c:\\dir\\\n")
    assert df.escape == "`"
    assert df.instructions[1].args == "a   c:\\dir\\"


def test_directives_only_at_the_top() -> None:
    df = parse("FROM scratch\n# escape=`\nCOPY a \\\n b\n")
    assert df.escape == "\\" and df.instructions[1].args == "a  b"
    with pytest.raises(BuildError, match="only one escape"):
        parse("# escape=`\n# escape=\\\nFROM scratch\n")


def test_heredocs() -> None:
    df = parse("FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-'A' /x\n\tliteral $V\nA\nLABEL x=1\n")
    run, copy, label = df.instructions[1:]
    assert run.heredocs[0].content == "echo one\necho two\n" and run.heredocs[0].expand
    assert copy.heredocs[0].content == "literal $V\n" and not copy.heredocs[0].expand
    assert (run.line, copy.line, label.line) == (2, 6, 9)
    with pytest.raises(BuildError, match="unterminated heredoc") as e:
        parse("FROM scratch\nRUN <<EOF\necho\n")
    assert e.value.line == 2


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("FROM scratch\nFOO bar\n", 2, "unknown instruction: FOO"),
        ("FROM scratch\n\n\nCOPY --bogus=1 a b\n", 4, "unknown flag: --bogus"),
        ("FROM scratch\nENV\n", 2, "ENV requires at least one argument"),
    ],
)
def test_syntax_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(BuildError, match=message) as e:
        parse(text, "ctx/Dockerfile")
    assert e.value.line == line and e.value.dockerfile == "ctx/Dockerfile"
    assert str(e.value).startswith(f"ctx/Dockerfile:{line}: ")
    assert isinstance(e.value, OvlError)


def test_empty_dockerfile() -> None:
    with pytest.raises(BuildError, match="no instructions"):
        parse("# just a comment\n\n")


@pytest.mark.parametrize(
    "word, expected",
    [
        ("$A", "a"),
        ("${A}b", "ab"),
        ("x$UNSET.y", "x.y"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${A:+set}", "set"),
        ("${EMPTY:+set}", ""),
        ("${EMPTY+set}", "set"),
        ("${UNSET:-${A}x}", "ax"),
        ("'$A'", "$A"),
        ('"$A b"', "a b"),
        ('"\\$A"', "$A"),
        ("\\$A", "$A"),
        ('"a\\b"', "a\\b"),
        ("$", "$"),
        ("a$1", "a"),
    ],
)
def test_substitution(word: str, expected: str) -> None:
    env = {"A": "a", "EMPTY": ""}
    assert Lexer().word(word, env) == expected


def test_substitution_errors_and_words() -> None:
    lx = Lexer()
    with pytest.raises(ExpandError, match="UNSET: must be set"):
        lx.word("${UNSET:?must be set}", {})
    with pytest.raises(ExpandError, match="missing '}'"):
        lx.word("${A", {"A": "1"})
    with pytest.raises(ExpandError, match="single-quote"):
        lx.word("'abc", {})
    assert lx.words('a "b c" $V', {"V": "v"}) == ["a", "b c", "v"]
    assert Lexer("`").word("`$A", {"A": "x"}) == "$A"
    assert split_words('A="x y" B=z\\ w C') == ['A="x y"', "B=z\\ w", "C"]


def test_arg_scoping() -> None:
    scope = Scope({"B": "from-cli", "HTTP_PROXY": "http://proxy"}, {"M": "meta"})
    scope.declare("A", "default")
    scope.declare("B", "default")
    scope.declare("M", None)  # redeclared: takes the value from before FROM
    scope.declare("U", None)
    scope.env = {"A": "env wins"}
    assert scope.values() == {"A": "env wins", "B": "from-cli", "M": "meta"}
    assert scope.run_args() == [("B", "from-cli"), ("HTTP_PROXY", "http://proxy"), ("M", "meta")]


@pytest.mark.parametrize(
    "patterns, path, ignored",
    [
        (["*.log"], "a.log", True),
        (["*.log"], "sub/a.log", False),
        (["**/*.log"], "sub/deep/a.log", True),
        (["**/*.log"], "a.log", True),
        (["sub"], "sub/x/y", True),
        (["sub", "!sub/keep"], "sub/keep", False),
        (["sub", "!sub/keep"], "sub/other", True),
        (["!sub/keep", "sub"], "sub/keep", True),
        (["/abs/./x/../y"], "abs/y", True),
        (["te?t"], "test", True),
        (["[a-c]x"], "bx", True),
        (["# comment", ""], "# comment", False),
    ],
)
def test_dockerignore_patterns(patterns: list[str], path: str, ignored: bool) -> None:
    rules = IgnoreRules(read_patterns("\n".join(patterns)))
    assert rules.ignored(path) is ignored


def test_go_globs() -> None:
    assert glob_match("*.txt", "a.txt") and not glob_match("*.txt", "d/a.txt")
    assert glob_match("d/?.txt", "d/a.txt") and not glob_match("d?a.txt", "d/a.txt")
    assert glob_match("[^b]x", "ax") and not glob_match("[^b]x", "bx")


def test_context_sources(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "d" / "a.txt").write_text("a")
    (ctx / "d" / "b.log").write_text("b")
    (ctx / "top.txt").write_text("t")
    (tmp_path / "secret").write_text("s")
    os.symlink("../secret", ctx / "escape")
    os.symlink("d/a.txt", ctx / "inside")
    (ctx / ".dockerignore").write_text("**/*.log\n")
    c = Context(ctx)
    assert [e.rel for e in c.sources("*.txt")] == ["top.txt"]
    assert [e.rel for e in c.walk("d")] == ["d", "d/a.txt"]
    assert c.sources("inside")[0].host == str((ctx / "d" / "a.txt").resolve())
    for bad in ("../secret", "escape"):
        with pytest.raises(SourceError, match="outside the build context"):
            c.sources(bad)
    with pytest.raises(SourceError, match="excluded by .dockerignore"):
        c.sources("d/b.log")
    with pytest.raises(SourceError, match="not found"):
        c.sources("missing")
    # The cache digest sees content and mode, not times.
    before = c.digest(c.sources("d"))
    os.utime(ctx / "d" / "a.txt", (1, 1))
    assert c.digest(c.sources("d")) == before
    (ctx / "d" / "a.txt").chmod(0o600)
    assert c.digest(c.sources("d")) != before
