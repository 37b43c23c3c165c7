"""``RUN`` steps through an OCI runtime (``crun`` or ``runc``): an OCI bundle (``config.json`` per the runtime
spec) over the build container's mounted tree, run to completion with its output streamed.

A runtime is used only after it ran a probe container once (a 128-byte static program that exits 0):
Debian's crun 1.8.1 refuses every container on hybrid-cgroup hosts while runc works there. Unprivileged,
the runtime runs rootless, in a user namespace mapping the caller to root."""

from __future__ import annotations

import collections
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Runtime", "RunResult", "find_runtime", "RuntimeUnavailable", "DEFAULT_PATH", "bundle_config", "rootless"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CANDIDATES = ("runc", "crun")
#: Docker's default capabilities.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
#: Directories the runtime mounts on (made in the tree when missing; taken out again after the step).
MOUNT_POINTS = ("/proc", "/dev", "/sys")


class RuntimeUnavailable(RuntimeError):
    """No OCI runtime on PATH passes the probe."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    tail: str


def _true_program() -> bytes | None:
    """A minimal static ELF that exits 0, for this machine's architecture (None where we have none)."""
    if platform.machine() != "x86_64":
        return None
    code = bytes.fromhex("b83c00000031ff0f05")  # mov eax, 60 (exit); xor edi, edi; syscall
    base, size = 0x400000, 64 + 56 + 9
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1, base + 120, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def rootless() -> bool:
    return os.geteuid() != 0


def bundle_config(
    rootfs: str, args: Sequence[str], env: Sequence[str], cwd: str, uid: int, gid: int, *,
    hostname: str = "ovlcore-build", network: str = "none", additional_gids: Sequence[int] = (),
) -> dict[str, Any]:
    """The OCI runtime config of one step (runtime spec 1.0)."""
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if network != "host":
        namespaces.append({"type": "network"})
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] + ([] if rootless() else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if network == "host" or rootless():
        # sysfs may only be mounted by the owner of the network namespace: share the host's read-only.
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]})
    if rootless():
        mounts = [m for m in mounts if m["type"] != "mqueue"]
    linux: dict[str, Any] = {"namespaces": namespaces, "maskedPaths": MASKED, "readonlyPaths": READONLY}
    if rootless():
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # never above what this process may have
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, **({"additionalGids": list(additional_gids)} if additional_gids else {})},
            "args": list(args),
            "env": list(env),
            "cwd": cwd or "/",
            "capabilities": {k: CAPABILITIES for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


class Runtime:
    """One OCI runtime program (``runc``, ``crun``, or a path to one)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.basename(path)

    def __repr__(self) -> str:
        return f"<Runtime {self.path}>"

    def _argv(self, state: str) -> list[str]:
        argv = [self.path, "--root", state]
        if rootless() and self.name == "runc":
            argv += ["--rootless", "true"]
        return argv

    def run(
        self, config: dict[str, Any], container_id: str, *, output: Callable[[str], None] | None = None, tail_lines: int = 30
    ) -> RunResult:
        """Run the container ``config`` describes to completion; its output goes to ``output`` line by line.
        Returns its exit code and the last lines it printed."""
        with tempfile.TemporaryDirectory(prefix="ovlcore-bundle-") as bundle:
            state = os.path.join(bundle, "state")
            os.mkdir(state, 0o700)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config, f)
            argv = self._argv(state) + ["run", "--bundle", bundle, container_id]
            tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
            code = -1
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except OSError as e:
                raise RuntimeUnavailable(f"cannot start the OCI runtime {self.path}: {e}") from e
            assert proc.stdout is not None
            try:
                for raw in proc.stdout:
                    line = raw.decode("utf-8", "replace")
                    tail.append(line)
                    if output is not None:
                        output(line)
                code = proc.wait()
            except BaseException:
                # Interrupted (or the output callback failed): the step's processes must not outlive it.
                proc.kill()
                proc.wait()
                code = -1
                raise
            finally:
                if code != 0:
                    # A container left behind by a runtime that failed or was stopped half-way.
                    subprocess.run(self._argv(state) + ["delete", "--force", container_id], capture_output=True, check=False)
            return RunResult(code, "".join(tail))

    def probe(self) -> str | None:
        """Run a container that exits 0: ``None`` when it works, else why not."""
        program = _true_program()
        if program is None:
            return None  # no probe program for this architecture: trust the runtime
        with tempfile.TemporaryDirectory(prefix="ovlcore-probe-") as tmp:
            root = Path(tmp) / "rootfs"
            root.mkdir()
            for d in MOUNT_POINTS:
                (root / d.lstrip("/")).mkdir()
            exe = root / "true"
            exe.write_bytes(program)
            exe.chmod(0o755)
            config = bundle_config(str(root), ["/true"], [f"PATH={DEFAULT_PATH}"], "/", 0, 0)
            result = self.run(config, f"ovlcore-probe-{os.getpid()}-{threading.get_ident()}")
            if result.exit_code != 0:
                return result.tail.strip().splitlines()[-1] if result.tail.strip() else f"exit status {result.exit_code}"
        return None


_probed: dict[str, str | None] = {}
_lock = threading.Lock()


def find_runtime(name: str | None = None) -> Runtime:
    """The runtime ``name`` names (a program on PATH or a path), or the first of runc/crun on PATH that
    passes the probe. Raises :class:`RuntimeUnavailable` naming what was tried and why it failed."""
    names = [name] if name else list(CANDIDATES)
    tried = []
    for n in names:
        path = shutil.which(n)
        if path is None:
            tried.append(f"{n}: not found on PATH")
            continue
        with _lock:
            if path not in _probed:
                _probed[path] = Runtime(path).probe()
            why = _probed[path]
        if why is None:
            return Runtime(path)
        tried.append(f"{n} ({path}): {why}")
    raise RuntimeUnavailable("no usable OCI runtime for RUN steps (" + "; ".join(tried) + ")")
