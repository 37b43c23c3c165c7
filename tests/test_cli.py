"""The ``ovlcore`` command line: every command, Docker-like tables, ``--json``, ``-q``, errors and exit
codes, and streaming archives through stdin/stdout.

Most tests go through click's ``CliRunner`` (in process); streaming, exit codes and the console script
itself are checked with real subprocesses.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ovlcore
from ovlcore import Mount
from ovlcore._format import human_ago, human_size
from ovlcore.cli import cli as ovl_cli

from support.cli import run_cli
from support.images import BASE_ENTRIES, PASSWD
from support.privilege import IS_ROOT, needs_root, require
from support.tars import tar

HEX = re.compile(r"^[0-9a-f]+$")
SIZE = re.compile(r"^\d+(\.\d+)?(B|kB|MB|GB)$")
AGO = re.compile(r"^(Less than a second ago|\d+ seconds? ago|About a minute ago|\d+ minutes ago)$")

HAS_SAVE = hasattr(ovlcore.Images, "save") and hasattr(ovlcore.Images, "load")
needs_save = pytest.mark.skipif(not HAS_SAVE, reason="save/load not merged yet")


class CLI:
    """Runs ``ovlcore --root ROOT ...`` through click's CliRunner."""

    def __init__(self, root: Path, privilege: str | None) -> None:
        self.root = root
        self.env = {"OVLCORE_PRIVILEGE": privilege} if privilege else {}
        self.env["OVLCORE_ROOT"] = None  # type: ignore[assignment]

    def run(self, *args: str, input: bytes | str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(ovl_cli, ["--root", str(self.root), *args], input=input, env=self.env, catch_exceptions=True)

    def __call__(self, *args: str, input: bytes | str | None = None) -> str:
        r = self.run(*args, input=input)
        assert r.exit_code == 0, f"ovlcore {' '.join(args)} -> {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}\nexc: {r.exception!r}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args))

    def fails(self, *args: str, code: int = 1) -> str:
        r = self.run(*args)
        assert r.exit_code == code, f"ovlcore {' '.join(args)} -> {r.exit_code} (wanted {code})\nstdout: {r.stdout}\nstderr: {r.stderr}"
        assert isinstance(r.exception, SystemExit), f"an exception escaped: {r.exception!r}"
        assert "Traceback" not in r.stderr
        return r.stderr

    def store(self) -> ovlcore.Store:
        return ovlcore.Store(self.root)


def _cli(tmp_path: Path, privilege: str | None) -> CLI:
    require(privilege)
    return CLI(tmp_path / "store", privilege)


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return _cli(tmp_path, None)


@pytest.fixture(params=["root", "rootless"])
def pcli(request: pytest.FixtureRequest, tmp_path: Path) -> CLI:
    c = _cli(tmp_path, request.param)
    c("images")  # creates the store with that convention
    assert c.store().privilege == request.param
    return c


@pytest.fixture
def base_tar(tmp_path: Path) -> Path:
    p = tmp_path / "base.tar"
    p.write_bytes(tar(*BASE_ENTRIES))
    return p


def _import(c: CLI, tar: Path, tag: str = "base:1") -> str:
    out = c("import", str(tar), tag).strip()
    assert re.match(r"^sha256:[0-9a-f]{64}$", out), out
    return out


def table(text: str, headers: list[str]) -> list[list[str]]:
    """Parse a Docker-style table: checks the header row and that every cell starts at its header's
    column (alignment), and returns the rows' cells."""
    lines = text.rstrip("\n").split("\n")
    head = lines[0]
    starts = []
    pos = 0
    for h in headers:
        i = head.find(h, pos)
        assert i >= 0, f"header {h!r} missing in {head!r}"
        starts.append(i)
        pos = i + len(h)
    assert re.split(r"\s{2,}", head.strip()) == headers, head
    rows = []
    for line in lines[1:]:
        cells = []
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(line)
            cell = line[s:end]
            if k > 0:
                assert s == 0 or line[s - 1] == " ", f"column {headers[k]} misaligned in {line!r}"
            cells.append(cell.strip())
        # a cell never runs into the next column
        for k in range(1, len(starts)):
            if line[starts[k]:].strip():
                assert line[starts[k] - 1] == " "
        rows.append(cells)
    return rows


# ==================================================================================================
# Basics


def test_version() -> None:
    r = CliRunner().invoke(ovl_cli, ["--version"])
    assert r.exit_code == 0
    assert ovlcore.__version__ in r.stdout
    p = run_cli("--version")
    assert p.returncode == 0 and ovlcore.__version__.encode() in p.stdout


def test_help_lists_every_command() -> None:
    r = CliRunner().invoke(ovl_cli, ["--help"])
    assert r.exit_code == 0
    for cmd in ["import", "images", "history", "tag", "rmi", "save", "load", "create", "ps", "diff", "commit", "export", "rm", "cp", "mount", "volume", "system", "check", "demo"]:
        assert re.search(rf"^\s+{cmd}\b", r.stdout, re.M), cmd
    r = CliRunner().invoke(ovl_cli, ["volume", "--help"])
    for cmd in ["create", "ls", "inspect", "rm", "prune"]:
        assert re.search(rf"^\s+{cmd}\b", r.stdout, re.M), cmd
    r = CliRunner().invoke(ovl_cli, ["system", "--help"])
    for cmd in ["df", "prune"]:
        assert re.search(rf"^\s+{cmd}\b", r.stdout, re.M), cmd


def test_console_script_uses_same_store_as_api(tmp_path: Path, base_tar: Path) -> None:
    root = tmp_path / "s"
    p = run_cli("import", str(base_tar), "viacli:1", root=root)
    assert p.returncode == 0, p.stderr
    image_id = p.stdout.decode().strip()
    assert ovlcore.Store(root).images.get("viacli:1").id == image_id
    ovlcore.Store(root).containers.create("viacli:1", name="apictr")
    p = run_cli("ps", "-q", "--no-trunc", root=root)
    assert p.stdout.decode().split() == [ovlcore.Store(root).containers.get("apictr").id]


def test_root_from_environment(tmp_path: Path, base_tar: Path) -> None:
    root = tmp_path / "envroot"
    p = run_cli("import", str(base_tar), "e:1", env={"OVLCORE_ROOT": str(root)})
    assert p.returncode == 0, p.stderr
    assert ovlcore.Store(root).images.get("e:1")


# ==================================================================================================
# Images


def test_import_and_images_table(pcli: CLI, base_tar: Path) -> None:
    image_id = _import(pcli, base_tar)
    out = pcli("images")
    rows = table(out, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])
    assert len(rows) == 1
    repo, tag, ident, created, size = rows[0]
    assert (repo, tag, ident) == ("base", "1", image_id[7:19])
    assert AGO.match(created), created
    img = pcli.store().images.get("base:1")
    assert size == human_size(img.size) and SIZE.match(size)


def test_images_json_is_the_same_data(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    pcli("tag", "base:1", "second:latest")
    data = pcli.json("images")
    img = pcli.store().images.get("base:1")
    assert sorted((d["Repository"], d["Tag"]) for d in data) == [("base", "1"), ("second", "latest")]
    for d in data:
        assert d["ID"] == img.id and d["Size"] == img.size
        assert datetime.fromisoformat(d["Created"]) == img.created


def test_json_for_import_volume_create_and_prune(cli: CLI, base_tar: Path) -> None:
    d = cli.json("import", str(base_tar), "j:1")
    assert d == {"ID": cli.store().images.get("j:1").id}
    assert cli.json("volume", "create", "jv") == {"Name": "jv"}
    anon = cli.json("volume", "create")["Name"]
    assert cli.store().volumes.get(anon).anonymous
    d = cli.json("system", "prune", "-f")
    assert anon in d["Deleted"] and isinstance(d["SpaceReclaimed"], int)


def test_images_quiet_and_no_trunc(cli: CLI, base_tar: Path) -> None:
    image_id = _import(cli, base_tar)
    cli("tag", "base:1", "again:2")
    assert cli("images", "-q").split() == [image_id[7:19]]  # one line per image, not per tag
    out = cli("images", "--no-trunc")
    assert image_id in out


def test_images_untagged_shows_none(cli: CLI, base_tar: Path) -> None:
    _import_untagged = cli("import", str(base_tar)).strip()
    rows = table(cli("images"), ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])
    assert rows[0][:3] == ["<none>", "<none>", _import_untagged[7:19]]


def test_import_gzip_message_and_changes(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    gz = tmp_path / "base.tar.gz"
    gz.write_bytes(gzip.compress(base_tar.read_bytes()))
    cli("import", "-m", "my message", "-c", "ENV A=1", "-c", 'CMD ["/bin/sh"]', str(gz), "gz:1")
    img = cli.store().images.get("gz:1")
    assert "A=1" in img.config["config"]["Env"]
    assert img.config["config"]["Cmd"] == ["/bin/sh"]
    assert img.history()[0].comment == "my message"
    assert img.fs.read_text("/etc/passwd") == PASSWD


def test_import_from_stdin_subprocess(tmp_path: Path, base_tar: Path) -> None:
    root = tmp_path / "s"
    p = run_cli("import", "-", "stdin:1", root=root, input=base_tar.read_bytes())
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    img = ovlcore.Store(root).images.get("stdin:1")
    assert p.stdout.decode().strip() == img.id
    assert img.fs.read_text("/etc/passwd") == PASSWD


def test_import_from_stdin_gzip_runner(cli: CLI, base_tar: Path) -> None:
    cli("import", "-", "stdin:gz", input=gzip.compress(base_tar.read_bytes()))
    assert cli.store().images.get("stdin:gz").fs.read_text("/etc/hostname") == "image-hostname\n"


def test_history_table_json_quiet(pcli: CLI, base_tar: Path) -> None:
    image_id = _import(pcli, base_tar)
    pcli("create", "--name", "h", "base:1")
    pcli("commit", "-m", "a comment", "h", "hist:2")
    rows = table(pcli("history", "hist:2"), ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])
    assert len(rows) == 2
    top = pcli.store().images.get("hist:2")
    assert rows[0][0] == top.id[7:19] and rows[0][4] == "a comment" and AGO.match(rows[0][1])
    assert rows[1][0] == image_id[7:19] and rows[1][4].startswith("Imported from")
    assert SIZE.match(rows[1][3])
    data = pcli.json("history", "hist:2")
    assert [d["ID"] for d in data] == [top.id, image_id]
    assert data[0]["Comment"] == "a comment"
    assert data[1]["Size"] == pcli.store().images.get(image_id).size
    assert pcli("history", "-q", "hist:2").split() == [top.id[7:19], image_id[7:19]]
    assert top.id in pcli("history", "--no-trunc", "hist:2")


def test_tag_and_rmi(cli: CLI, base_tar: Path) -> None:
    image_id = _import(cli, base_tar)
    assert cli("tag", "base:1", "other:2") == ""
    assert {(r[0], r[1]) for r in table(cli("images"), ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])} == {("base", "1"), ("other", "2")}
    assert cli("rmi", "other:2").strip() == "Untagged: other:2"
    out = cli("rmi", "base:1")
    assert "Untagged: base:1" in out and f"Deleted: {image_id}" in out
    assert cli("images", "-q") == ""


def test_rmi_in_use_and_force(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "user", "base:1")
    err = cli.fails("rmi", "base:1")
    assert len(err.strip().splitlines()) == 1 and "user" in err
    assert cli.store().images.get("base:1")


# ==================================================================================================
# Containers


def test_create_with_mounts_and_ps(pcli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(pcli, base_tar)
    shared = tmp_path / "shared_mount"
    shared.mkdir()
    cid = pcli("create", "--name", "web", "--mount", f"type=bind,src={shared},dst=/shared,readonly", "-v", "my_vol:/data", "-v", "/anon", "-l", "k=v", "base:1").strip()
    assert HEX.match(cid) and len(cid) == 64
    c = pcli.store().containers.get("web")
    assert c.id == cid and c.labels == {"k": "v"}
    assert c.mounts[0] == Mount("/shared", str(shared), type="bind", read_only=True)
    assert c.mounts[1] == Mount("/data", "my_vol")
    assert c.mounts[2].target == "/anon" and c.mounts[2].source and pcli.store().volumes.get(c.mounts[2].source).anonymous
    rows = table(pcli("ps"), ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"])
    assert len(rows) == 1
    assert rows[0][0] == cid[:12] and rows[0][1] == "base:1" and rows[0][5] == "web"
    assert AGO.match(rows[0][3])
    assert pcli("ps", "-a") == pcli("ps")
    assert pcli("ps", "-q").split() == [cid[:12]]
    assert pcli("ps", "-q", "--no-trunc").split() == [cid]


def test_create_command_with_dash_options_like_docker(cli: CLI, base_tar: Path) -> None:
    """``docker create IMAGE sh -c 'echo hi'``: options after IMAGE belong to the command."""
    _import(cli, base_tar)
    cli("create", "--name", "cmd", "base:1", "sh", "-c", "echo hi")
    assert cli.store().containers.get("cmd").command == ["sh", "-c", "echo hi"]


def test_create_json(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    d = cli.json("create", "--name", "j", "base:1")
    c = cli.store().containers.get("j")
    assert d == {"ID": c.id, "Name": "j"}


def test_create_errors(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(cli, base_tar)
    err = cli.fails("create", "--mount", f"type=bind,src={tmp_path / 'missing'},dst=/x", "base:1")
    assert str(tmp_path / "missing") in err and len(err.strip().splitlines()) == 1
    err = cli.fails("create", "nosuch:1")
    assert "No such image: nosuch:1" in err
    cli("create", "--name", "dup", "base:1")
    err = cli.fails("create", "--name", "dup", "base:1")
    assert "dup" in err
    r = cli.run("create", "--mount", "type=bogus,dst=/x", "base:1")
    assert r.exit_code in (1, 2) and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) >= 1
    err = cli.fails("create", "-v", "my_vol:/etc/hostname", "base:1")
    assert "/etc/hostname" in err
    assert [c.name for c in cli.store().containers.list()] == ["dup"]


def test_ps_size(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "s", "base:1")
    pcli.store().containers.get("s").fs.write_bytes("/big", b"x" * 5000)
    rows = table(pcli("ps", "-s"), ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES", "SIZE"])
    size = pcli.store().containers.get("s").size()
    assert rows[0][6] == f"{human_size(size.rw)} (virtual {human_size(size.virtual)})"
    assert re.match(r"^\d+(\.\d+)?(B|kB|MB) \(virtual \d+(\.\d+)?(B|kB|MB)\)$", rows[0][6])
    (d,) = pcli.json("ps", "-s")
    assert d["SizeRw"] == size.rw and d["SizeRootFs"] == size.virtual and d["Names"] == "s"


def test_ps_json(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "a", "base:1")
    cli("create", "--name", "b", "base:1")
    data = cli.json("ps")
    assert sorted(d["Names"] for d in data) == ["a", "b"]
    for d in data:
        c = cli.store().containers.get(d["Names"])
        assert d["ID"] == c.id and d["Image"] == "base:1" and d["Status"] == "Created"


def test_diff(pcli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "d", "-v", "v:/data", "base:1")
    c = pcli.store().containers.get("d")
    c.fs.write_text("/etc/new", "n")
    c.fs.write_text("/etc/passwd", "changed")
    c.fs.rmtree("/srv/dir")
    c.fs.write_text("/data/in_volume", "not listed")
    assert pcli("diff", "d").splitlines() == ["C /etc", "A /etc/new", "C /etc/passwd", "C /srv", "D /srv/dir"]
    assert pcli.json("diff", "d") == [
        {"Kind": "C", "Path": "/etc"},
        {"Kind": "A", "Path": "/etc/new"},
        {"Kind": "C", "Path": "/etc/passwd"},
        {"Kind": "C", "Path": "/srv"},
        {"Kind": "D", "Path": "/srv/dir"},
    ]


def test_commit_message_author_changes(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "c", "base:1")
    pcli.store().containers.get("c").fs.write_text("/etc/added", "x")
    out = pcli("commit", "-m", "my msg", "-a", "Jane <j@x>", "-c", "ENV FOO=bar", "-c", "WORKDIR /srv", "c", "committed:1").strip()
    img = pcli.store().images.get("committed:1")
    assert out == img.id
    assert img.config["config"]["WorkingDir"] == "/srv"
    assert "FOO=bar" in img.config["config"]["Env"]
    h = img.history()[0]
    assert h.comment == "my msg"
    assert img.config.get("author") == "Jane <j@x>"
    assert img.fs.read_text("/etc/added") == "x"
    d = pcli.json("commit", "c")
    assert pcli.store().images.get(d["ID"]).tags == []


def test_export_to_file_and_stdout(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "e", "-v", "ev:/data", "base:1")
    c = cli.store().containers.get("e")
    c.fs.write_text("/etc/exported", "yes")
    c.fs.write_text("/data/vol_only", "no")
    cli("export", "-o", str(tmp_path / "e.tar"), "e")
    with tarfile.open(tmp_path / "e.tar") as t:
        names = {m.name.rstrip("/") for m in t.getmembers()}
        assert t.extractfile("etc/exported").read() == b"yes"
    assert "etc/passwd" in names and "data/vol_only" not in names
    p = run_cli("export", "e", root=cli.root)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (tmp_path / "e.tar").read_bytes()


def test_rm_and_rm_v(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "r", "-v", "/anon", "-v", "named:/data", "base:1")
    anon = pcli.store().containers.get("r").mounts[0].source
    assert pcli("rm", "-v", "r").strip() == "r"
    names = [v.name for v in pcli.store().volumes.list()]
    assert names == ["named"] and anon not in names
    pcli("create", "--name", "r2", "-v", "/anon", "base:1")
    anon2 = pcli.store().containers.get("r2").mounts[0].source
    pcli("rm", "r2")
    assert anon2 in [v.name for v in pcli.store().volumes.list()]
    assert pcli("ps", "-a", "-q") == ""


def test_rm_errors_and_partial(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "x", "base:1")
    r = cli.run("rm", "x", "nope")
    assert r.exit_code == 1
    assert r.stdout.strip() == "x"
    assert "No such container: nope" in r.stderr and "Traceback" not in r.stderr
    assert cli.store().containers.list() == []


def test_rm_json(cli: CLI, base_tar: Path) -> None:
    """--json gives the same data as the text output: the removed containers."""
    _import(cli, base_tar)
    cli("create", "--name", "x", "base:1")
    out = cli("--json", "rm", "x")
    assert "x" in json.loads(out)


def test_cp_both_ways(pcli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "cp", "base:1")
    f = tmp_path / "f.txt"
    f.write_text("from host")
    assert pcli("cp", str(f), "cp:/etc/") == ""
    assert pcli.store().containers.get("cp").fs.read_text("/etc/f.txt") == "from host"
    out = tmp_path / "out"
    out.mkdir()
    pcli("cp", "cp:/links/to_passwd", str(out / "link"))
    assert os.readlink(out / "link") == "/etc/passwd"
    pcli("cp", "-L", "cp:/links/to_passwd", str(out / "followed"))
    assert (out / "followed").read_text() == PASSWD
    pcli("cp", "cp:/srv/*.png", str(out))
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]


@needs_root
def test_cp_archive(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "cp", "base:1")
    cli("cp", "-a", "cp:/data/seed.txt", str(tmp_path / "a"))
    st = os.stat(tmp_path / "a")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    cli("cp", "cp:/data/seed.txt", str(tmp_path / "b"))
    assert os.stat(tmp_path / "b").st_uid == 0


def test_cp_errors(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "cp", "base:1")
    err = cli.fails("cp", "cp:/nope", str(tmp_path))
    assert "/nope" in err and len(err.strip().splitlines()) == 1
    err = cli.fails("cp", "ghost:/etc/passwd", str(tmp_path))
    assert "No such container: ghost" in err
    err = cli.fails("cp", str(tmp_path), str(tmp_path / "x"))
    assert len(err.strip().splitlines()) == 1
    cli.fails("cp", "cp:/srv/dir", str(tmp_path / "missing" / "x"))
    cli.fails("cp", "cp", "/etc/passwd", "extra", code=2)


@needs_root
def test_mount_runs_command_in_merged_tree(cli: CLI, base_tar: Path, tmp_path: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "m", "-v", "mv:/data", "base:1")
    p = run_cli("mount", "m", "--", "cat", "etc/passwd", "data/seed.txt", root=cli.root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == PASSWD + "seed from the image\n"
    assert b"mounted at" in p.stderr
    p = run_cli("mount", "m", "--", "sh", "-c", "echo new > etc/made-in-mount; exit 3", root=cli.root)
    assert p.returncode == 3
    c = cli.store().containers.get("m")
    assert c.fs.read_text("/etc/made-in-mount") == "new\n"
    assert not (c.dir / "mounted").exists()
    with open("/proc/self/mountinfo") as f:
        assert str(c.dir) not in f.read()


# ==================================================================================================
# Volumes


def test_volume_commands(pcli: CLI) -> None:
    assert pcli("volume", "create", "-l", "a=1", "-l", "b=2", "myv").strip() == "myv"
    anon = pcli("volume", "create").strip()
    assert HEX.match(anon) and len(anon) == 64
    rows = table(pcli("volume", "ls"), ["DRIVER", "VOLUME NAME"])
    assert sorted(rows) == sorted([["local", "myv"], ["local", anon]])
    assert sorted(pcli("volume", "ls", "-q").split()) == sorted(["myv", anon])
    (info,) = json.loads(pcli("volume", "inspect", "myv"))
    v = pcli.store().volumes.get("myv")
    assert info["Name"] == "myv" and info["Labels"] == {"a": "1", "b": "2"} and info["Mountpoint"] == str(v.mountpoint)
    assert info["Driver"] == "local"
    assert datetime.fromisoformat(info["CreatedAt"]) == v.created
    data = pcli.json("volume", "ls")
    assert sorted(d["Name"] for d in data) == sorted(["myv", anon])
    assert pcli("volume", "rm", "myv").strip() == "myv"
    assert pcli("volume", "ls", "-q").split() == [anon]


def test_volume_inspect_several_and_missing(cli: CLI) -> None:
    cli("volume", "create", "a")
    cli("volume", "create", "b")
    assert [d["Name"] for d in json.loads(cli("volume", "inspect", "a", "b"))] == ["a", "b"]
    err = cli.fails("volume", "inspect", "nope")
    assert "No such volume: nope" in err


def test_volume_rm_in_use(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    cli("create", "--name", "user", "-v", "busy:/data", "base:1")
    err = cli.fails("volume", "rm", "busy")
    assert "busy" in err and "user" in err and len(err.strip().splitlines()) == 1
    cli("volume", "rm", "-f", "busy")
    cli.fails("volume", "rm", "busy")


def test_volume_prune(cli: CLI, base_tar: Path) -> None:
    anon = cli("volume", "create").strip()
    cli("volume", "create", "named")
    out = cli("volume", "prune", "-f")
    assert out.splitlines()[0] == "Deleted Volumes:"
    assert anon in out.splitlines()
    assert re.search(r"^Total reclaimed space: \d+(\.\d+)?(B|kB|MB)$", out, re.M)
    assert cli("volume", "ls", "-q").split() == ["named"]
    d = cli.json("volume", "prune", "-a", "-f")
    assert d["Deleted"] == ["named"] and d["SpaceReclaimed"] == 0


# ==================================================================================================
# System


def test_system_df(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    pcli("create", "--name", "a", "-v", "v:/data", "base:1")
    rows = table(pcli("system", "df"), ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"])
    assert [r[0] for r in rows] == ["Images", "Containers", "Local Volumes"]
    assert rows[0][1:3] == ["1", "1"]
    assert rows[1][1] == "1"
    assert rows[2][1:3] == ["1", "1"]
    for r in rows:
        assert SIZE.match(r[3]), r
        assert re.match(r"^\d+(\.\d+)?(B|kB|MB) \(\d+%\)$", r[4]), r
    data = pcli.json("system", "df")
    api = {u.type: u for u in pcli.store().df()}
    for d in data:
        u = api[d["Type"]]
        assert (d["TotalCount"], d["Active"], d["Size"], d["Reclaimable"]) == (u.total, u.active, u.size, u.reclaimable)


def test_system_prune(cli: CLI, base_tar: Path) -> None:
    image_id = cli("import", str(base_tar)).strip()  # dangling
    anon = cli("volume", "create").strip()
    out = cli("system", "prune", "-f")
    assert "Total reclaimed space:" in out
    assert image_id in out or image_id[7:] in out
    assert anon in out
    assert cli("images", "-q") == "" and cli("volume", "ls", "-q") == ""


def test_check(pcli: CLI, base_tar: Path) -> None:
    _import(pcli, base_tar)
    assert pcli("check").strip() == "store is consistent"
    d = pcli.json("check")
    assert d["OK"] is True and d["Problems"] == []
    # Break the store: an image's layer disappears.
    import shutil

    img = pcli.store().images.get("base:1")
    shutil.rmtree(img.layers[0].path.parent)
    r = pcli.run("check")
    assert r.exit_code == 1
    assert "problem:" in r.stdout and img.id in r.stdout


def test_check_verify_digests(cli: CLI, base_tar: Path) -> None:
    _import(cli, base_tar)
    r = cli.run("check", "--verify-digests")
    assert "Traceback" not in r.stderr and not (r.exception and not isinstance(r.exception, SystemExit)), repr(r.exception)
    assert r.exit_code == 0, r.stderr


# ==================================================================================================
# Errors and exit codes


@pytest.fixture(scope="module")
def err_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with base:1 shared by the error tests (none of which changes it)."""
    d = tmp_path_factory.mktemp("errs")
    (d / "base.tar").write_bytes(tar(*BASE_ENTRIES))
    assert run_cli("import", str(d / "base.tar"), "base:1", root=d / "s").returncode == 0
    return d / "s"


@pytest.mark.parametrize(
    "args, message",
    [
        (["history", "foo"], "No such image: foo"),
        (["rmi", "foo"], "No such image: foo"),
        (["tag", "foo", "bar"], "No such image: foo"),
        (["create", "foo"], "No such image: foo"),
        (["diff", "nope"], "No such container: nope"),
        (["commit", "nope"], "No such container: nope"),
        (["export", "-o", "/dev/null", "nope"], "No such container: nope"),
        (["rm", "nope"], "No such container: nope"),
        (["volume", "inspect", "nope"], "No such volume: nope"),
        (["volume", "rm", "nope"], "No such volume: nope"),
        (["import", "/nonexistent/file.tar"], "/nonexistent/file.tar"),
        (["tag", "base:1", "Bad:Name!"], "Name!"),
        (["history", "Bad Ref"], "Bad Ref"),
    ],
)
def test_errors_are_one_line_exit_1(err_root: Path, args: list[str], message: str) -> None:
    root = err_root
    for json_flag in ([], ["--json"]):
        p = run_cli(*json_flag, *args, root=root)
        err = p.stderr.decode()
        assert p.returncode == 1, (args, p.returncode, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert message in err, err


def test_error_names_the_image_as_docker_does(tmp_path: Path) -> None:
    p = run_cli("history", "foo", root=tmp_path / "s")
    assert p.stderr.decode().strip() in ("Error: No such image: foo:latest", "Error: No such image: foo", "No such image: foo:latest")


def test_bad_archive_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 100)
    p = run_cli("import", str(bad), "bad:1", root=tmp_path / "s")
    assert p.returncode == 1 and b"Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["images", "--bogus"],
        ["create"],
        ["tag", "only-one"],
        ["cp", "one"],
        ["volume", "bogus"],
        ["system", "bogus"],
        ["ps", "extra-arg"],
        [],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    p = run_cli(*args, root=tmp_path / "s")
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert b"Traceback" not in p.stderr
    assert p.stdout == b""


# ==================================================================================================
# save / load (another branch)


@needs_save
def test_save_to_file_and_load(tmp_path: Path, base_tar: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("import", str(base_tar), "base:1", root=a).returncode == 0
    p = run_cli("save", "-o", str(tmp_path / "img.tar"), "base:1", root=a)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    with tarfile.open(tmp_path / "img.tar") as t:
        names = t.getnames()
    assert "manifest.json" in names
    p = run_cli("load", "-i", str(tmp_path / "img.tar"), root=b)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == "Loaded image: base:1"
    assert ovlcore.Store(b).images.get("base:1").id == ovlcore.Store(a).images.get("base:1").id


@needs_save
def test_save_to_stdout_and_load_from_stdin(tmp_path: Path, base_tar: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("import", str(base_tar), "base:1", root=a).returncode == 0
    p = run_cli("save", "base:1", root=a)
    assert p.returncode == 0, p.stderr
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        assert "manifest.json" in t.getnames()
    q = run_cli("load", root=b, input=p.stdout)
    assert q.returncode == 0, q.stderr
    assert b"Loaded image: base:1" in q.stdout
    q = run_cli("--json", "load", "-i", "-", root=tmp_path / "c", input=p.stdout)
    assert q.returncode == 0, q.stderr
    (d,) = json.loads(q.stdout)
    assert d["Tags"] == ["base:1"] and d["ID"] == ovlcore.Store(a).images.get("base:1").id
    q = run_cli("load", "-q", root=tmp_path / "d", input=p.stdout)
    assert q.returncode == 0 and q.stdout.strip() == b""


@needs_save
def test_save_oci_format(tmp_path: Path, base_tar: Path) -> None:
    a = tmp_path / "a"
    assert run_cli("import", str(base_tar), "base:1", root=a).returncode == 0
    p = run_cli("save", "--format", "oci", "-o", str(tmp_path / "oci.tar"), "base:1", root=a)
    assert p.returncode == 0, p.stderr
    with tarfile.open(tmp_path / "oci.tar") as t:
        names = t.getnames()
    assert "oci-layout" in names and "index.json" in names
    q = run_cli("load", "-i", str(tmp_path / "oci.tar"), root=tmp_path / "b")
    assert q.returncode == 0, q.stderr


@needs_save
def test_save_load_errors(tmp_path: Path) -> None:
    p = run_cli("save", "-o", str(tmp_path / "x.tar"), "nosuch:1", root=tmp_path / "a")
    assert p.returncode == 1 and b"No such image" in p.stderr and b"Traceback" not in p.stderr
    assert not (tmp_path / "x.tar").exists()
    p = run_cli("load", root=tmp_path / "a", input=b"garbage" * 200)
    assert p.returncode == 1 and b"Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ==================================================================================================
# Formatting helpers (Docker's rules)


@pytest.mark.parametrize(
    "n, s",
    [(0, "0B"), (195, "195B"), (999, "999B"), (1000, "1kB"), (1234, "1.23kB"), (4_030_000, "4.03MB"), (12_345_678_901, "12.3GB")],
)
def test_human_size(n: int, s: str) -> None:
    assert human_size(n) == s


@pytest.mark.parametrize(
    "delta, s",
    [
        (timedelta(milliseconds=200), "Less than a second ago"),
        (timedelta(seconds=1), "1 second ago"),
        (timedelta(seconds=45), "45 seconds ago"),
        (timedelta(seconds=90), "About a minute ago"),
        (timedelta(minutes=5), "5 minutes ago"),
        (timedelta(minutes=70), "About an hour ago"),
        (timedelta(hours=5), "5 hours ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=20), "2 weeks ago"),
        (timedelta(days=100), "3 months ago"),
        (timedelta(days=800), "2 years ago"),
    ],
)
def test_human_ago(delta: timedelta, s: str) -> None:
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert human_ago(now - delta, now) == s


@pytest.mark.skipif(IS_ROOT, reason="checks the error an unprivileged user gets")
def test_mount_unprivileged_is_a_clear_error(tmp_path: Path, base_tar: Path) -> None:
    root = tmp_path / "s"
    assert run_cli("import", str(base_tar), "base:1", root=root).returncode == 0
    assert run_cli("create", "--name", "m", "base:1", root=root).returncode == 0
    p = run_cli("mount", "--driver", "kernel", "m", "--", "true", root=root)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "root" in err or "privilege" in err
