"""Running a command on a fresh pseudo-terminal (120x30), as progress bars are tested."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def terminal_env() -> dict[str, str]:
    """This environment as a terminal user's: no store variables, no colour or CI overrides, 120x30."""
    e = {k: v for k, v in os.environ.items() if k not in ("OVLCORE_ROOT", "OVLCORE_PRIVILEGE", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI")}
    e["TERM"] = "xterm-256color"
    e["COLUMNS"] = "120"
    e["LINES"] = "30"
    return e


def run_on_pty(cmd: list[str], *, stdout_to_pipe: bool = True, timeout: float = 120) -> tuple[bytes, bytes, int, float]:
    """Run ``cmd`` with stderr (and stdout unless ``stdout_to_pipe``) on a fresh pty; returns
    (everything written to the terminal, stdout if piped, exit status, duration)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_to_pipe else slave,
        stderr=slave,
        env=terminal_env(),
        close_fds=True,
    )
    os.close(slave)
    term = bytearray()
    out = bytearray()
    fds = [master] + ([proc.stdout.fileno()] if proc.stdout else [])
    deadline = start + timeout
    while fds and time.monotonic() < deadline:
        r, _, _ = select.select(fds, [], [], 0.1)
        for fd in r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            if not chunk:
                fds.remove(fd)
            elif fd == master:
                term += chunk
            else:
                out += chunk
        if proc.poll() is not None and not r:
            break
    rc = proc.wait(timeout=10)
    duration = time.monotonic() - start
    os.close(master)
    if proc.stdout:
        out += proc.stdout.read()
        proc.stdout.close()
    return bytes(term), bytes(out), rc, duration
