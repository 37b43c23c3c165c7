"""Progress bars: shown on stderr when it is a terminal and the operation takes more than a moment;
silent when stderr is a pipe. Checked under tmux (a real terminal emulator) and under a bare pty."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from support.cli import OVLCORE_CMD, OVLCORE_SH, run_cli
from support.images import BASE_ENTRIES
from support.tars import tar
from support.terminal import run_on_pty, terminal_env

HAVE_TMUX = shutil.which("tmux") is not None

BAR_GLYPHS = ("━", "╸", "╺")
SIZE_MB = 400


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tar holding one ~400 MB file of zeros, stored sparsely (instant to make, no disk used); importing
    it reads and writes all of it, which takes well over a second here."""
    p = tmp_path_factory.mktemp("big") / "big.tar"
    size = SIZE_MB << 20
    ti = tarfile.TarInfo("zeros.bin")
    ti.size = size
    ti.mode = 0o644
    with open(p, "wb") as f:
        f.write(ti.tobuf(tarfile.PAX_FORMAT))
        f.truncate(512 + size + 1024)
    return p


SLOW_PRODUCER = r"""
import sys, tarfile, time
size = 96 << 20
ti = tarfile.TarInfo("slow.bin"); ti.size = size; ti.mode = 0o644
out = sys.stdout.buffer
out.write(ti.tobuf(tarfile.PAX_FORMAT))
chunk = b"\0" * (1 << 20)
for _ in range(size >> 20):
    out.write(chunk); out.flush(); time.sleep(0.015)
out.write(b"\0" * 1024); out.flush()
"""


def slow_tar_cmd() -> str:
    """A shell command writing a 96 MB tar to stdout over about 1.5 seconds."""
    import shlex
    import sys

    return f"{shlex.quote(sys.executable)} -c {shlex.quote(SLOW_PRODUCER)}"


def test_import_progressrun_on_pty(tmp_path: Path, big_tar: Path) -> None:
    root = tmp_path / "store"
    try:
        term, out, rc, duration = run_on_pty([*OVLCORE_CMD, "--root", str(root), "import", str(big_tar), "big:1"])
        assert rc == 0, term.decode(errors="replace")
        assert out.decode().startswith("sha256:")
        if duration < 0.6:
            pytest.skip(f"the import took only {duration:.2f}s on this machine: too short to expect a progress bar")
        text = term.decode(errors="replace")
        assert "Importing" in text, text[:2000]
        assert any(g in text for g in BAR_GLYPHS), text[:2000]
        assert "MB" in text or "GB" in text  # the transferred amount
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_slow_stdin_import_progressrun_on_pty(tmp_path: Path) -> None:
    """The same with a deterministic duration: the archive arrives slowly through stdin."""
    root = tmp_path / "store"
    term, out, rc, duration = run_on_pty(["sh", "-c", f"{slow_tar_cmd()} | {OVLCORE_SH} --root {root} import - slow:1"])
    assert rc == 0, term.decode(errors="replace")
    assert duration > 1.0
    assert out.decode().startswith("sha256:")
    text = term.decode(errors="replace")
    assert "Importing" in text, text[:2000]
    assert any(g in text for g in BAR_GLYPHS)


def test_slow_stdin_import_silent_when_stderr_is_a_pipe(tmp_path: Path) -> None:
    root = tmp_path / "store"
    start = time.monotonic()
    p = subprocess.run(["sh", "-c", f"{slow_tar_cmd()} | {OVLCORE_SH} --root {root} import - slow:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=terminal_env(), timeout=120)
    assert time.monotonic() - start > 1.0
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    assert p.stdout.decode().startswith("sha256:") and len(p.stdout.decode().split()) == 1


def test_file_import_silent_when_stderr_is_a_pipe(tmp_path: Path, big_tar: Path) -> None:
    root = tmp_path / "store"
    try:
        p = subprocess.run([*OVLCORE_CMD, "--root", str(root), "import", str(big_tar), "big:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=terminal_env(), timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stderr == b""
        assert p.stdout.decode().startswith("sha256:") and len(p.stdout.decode().split()) == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_quick_command_shows_no_progressrun_on_pty(tmp_path: Path) -> None:
    """Only operations that run longer than a moment show a bar."""
    small = tmp_path / "small.tar"
    small.write_bytes(tar(*BASE_ENTRIES))
    term, out, rc, duration = run_on_pty([*OVLCORE_CMD, "--root", str(tmp_path / "store"), "import", str(small), "small:1"])
    assert rc == 0
    assert duration < 5
    text = term.decode(errors="replace")
    assert "Importing" not in text and not any(g in text for g in BAR_GLYPHS), text


def test_cp_progress_on_pty_and_not_in_pipe(tmp_path: Path) -> None:
    root = tmp_path / "store"
    small = tmp_path / "small.tar"
    small.write_bytes(tar(*BASE_ENTRIES))
    assert run_cli("import", str(small), "b:1", root=root).returncode == 0
    assert run_cli("create", "--name", "c", "b:1", root=root).returncode == 0
    src = tmp_path / "many"
    src.mkdir()
    block = os.urandom(16 << 10)
    for i in range(3000):  # many small files: the copy takes over a second, progress advances file by file
        (src / f"f{i:05}").write_bytes(block)
    try:
        term, out, rc, duration = run_on_pty([*OVLCORE_CMD, "--root", str(root), "cp", str(src), "c:/tmp/"])
        assert rc == 0, term
        if duration < 0.8:
            pytest.skip(f"the copy took only {duration:.2f}s on this machine: too short for a bar")
        text = term.decode(errors="replace")
        assert "Copying" in text and any(g in text for g in BAR_GLYPHS), text[:2000]
        p = subprocess.run([*OVLCORE_CMD, "--root", str(root), "cp", str(src), "c:/tmp/again"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=terminal_env())
        assert p.returncode == 0 and p.stderr == b"" and p.stdout == b""
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_archive_never_written_to_a_terminal(tmp_path: Path) -> None:
    small = tmp_path / "small.tar"
    small.write_bytes(tar(*BASE_ENTRIES))
    root = tmp_path / "store"
    assert run_cli("import", str(small), "b:1", root=root).returncode == 0
    assert run_cli("create", "--name", "c", "b:1", root=root).returncode == 0
    term, _, rc, _ = run_on_pty([*OVLCORE_CMD, "--root", str(root), "export", "c"], stdout_to_pipe=False)
    assert rc == 1
    text = term.decode(errors="replace")
    assert "terminal" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


# ----- tmux: a real terminal emulator, screen captured while the command runs -----


class Tmux:
    def __init__(self, tmp_path: Path) -> None:
        self.sock = f"ovlt56-{uuid.uuid4().hex[:8]}"
        self.name = "t"
        self.tmp = tmp_path

    def __call__(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(["tmux", "-L", self.sock, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=terminal_env())
        if check:
            assert p.returncode == 0, p.stderr
        return p.stdout

    def run(self, shell_cmd: str, timeout: float = 120) -> tuple[str, list[str], int]:
        """Run ``shell_cmd`` in a 120x30 tmux window; returns (raw pane output, screen captures taken
        while it ran, exit status)."""
        go, done, log = self.tmp / "go", self.tmp / "done", self.tmp / "pane.log"
        script = f"while [ ! -e {go} ]; do sleep 0.05; done; {shell_cmd}; echo $? > {done}; sleep 60"
        self("new-session", "-d", "-s", self.name, "-x", "120", "-y", "30", "sh", "-c", script)
        self("pipe-pane", "-t", self.name, "-o", f"cat >> {log}")
        go.touch()
        screens = []
        deadline = time.monotonic() + timeout
        while not done.exists() and time.monotonic() < deadline:
            screens.append(self("capture-pane", "-p", "-t", self.name, check=False))
            time.sleep(0.1)
        time.sleep(0.3)
        assert done.exists(), "the command did not finish under tmux"
        rc = int(done.read_text().strip())
        return (log.read_bytes().decode(errors="replace") if log.exists() else ""), screens, rc

    def close(self) -> None:
        self("kill-session", "-t", self.name, check=False)
        self("kill-server", check=False)


@pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed")
def test_import_progress_under_tmux(tmp_path: Path) -> None:
    root = tmp_path / "store"
    t = Tmux(tmp_path)
    try:
        raw, screens, rc = t.run(f"{slow_tar_cmd()} | {OVLCORE_SH} --root {root} import - big:1 > {tmp_path / 'id.txt'}")
        assert rc == 0, raw
        assert (tmp_path / "id.txt").read_text().startswith("sha256:")
        seen = raw + "\n".join(screens)
        assert "Importing" in seen, seen[-2000:]
        assert any(g in seen for g in BAR_GLYPHS)
        assert any("Importing" in s for s in screens), "the bar was never on the screen while the import ran"
    finally:
        t.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed")
def test_no_progress_under_tmux_when_stderr_is_piped(tmp_path: Path) -> None:
    root = tmp_path / "store"
    t = Tmux(tmp_path)
    try:
        raw, screens, rc = t.run(f"{slow_tar_cmd()} | {OVLCORE_SH} --root {root} import - big:1 2>&1 | cat > {tmp_path / 'all.txt'}")
        assert rc == 0
        both = (tmp_path / "all.txt").read_text()
        assert both.startswith("sha256:") and len(both.split()) == 1
        assert "Importing" not in raw and not any("Importing" in s for s in screens)
    finally:
        t.close()
        shutil.rmtree(root, ignore_errors=True)
