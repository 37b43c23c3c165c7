"""Running the installed ``ovlcore`` command, as a user would (a real process)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def _console_script() -> list[str]:
    """The installed ``ovlcore`` console script next to this interpreter (a venv), else on PATH, else
    the same entry point through this interpreter."""
    here = Path(sys.executable).parent / "ovlcore"
    if here.exists():
        return [str(here)]
    found = shutil.which("ovlcore")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from ovlcore.cli import main; sys.argv[0] = 'ovlcore'; main()"]


#: argv prefix running the ``ovlcore`` command
OVLCORE_CMD = _console_script()
#: the same as one shell word sequence (for ``sh -c`` and tmux)
OVLCORE_SH = " ".join(shlex.quote(a) for a in OVLCORE_CMD)


def run_cli(*args: str, root: Path | None = None, input: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``ovlcore [--root ROOT] ARGS`` (stdout and stderr captured as pipes), with neither
    ``OVLCORE_ROOT`` nor ``OVLCORE_PRIVILEGE`` from the test's environment unless ``env`` sets them."""
    cmd = [*OVLCORE_CMD, *(["--root", str(root)] if root is not None else []), *args]
    e = {k: v for k, v in os.environ.items() if k not in ("OVLCORE_ROOT", "OVLCORE_PRIVILEGE")}
    e.update(env or {})
    return subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=timeout)
