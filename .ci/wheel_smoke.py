"""Smoke test of an installed ovlcore wheel: run by .ci/wheel-check with the interpreter of a fresh virtual
environment, from a directory outside the source tree, so what it imports is the installed package.

    python wheel_smoke.py EXPECTED_ENTRY_POINTS.json

The JSON file lists the entry points pyproject.toml declares ({group: {name: "module:attr"}}); the installed
distribution must have exactly those and every one must load. Python 3.10 compatible (the wheel is abi3
for 3.10+), standard library only.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

# What `import ovlcore` must not load: the CLI's and fsspec's dependencies (they load with what needs them).
LAZY = ("click", "rich", "fsspec")


def check(cond: object, what: str) -> None:
    if not cond:
        sys.exit(f"wheel smoke test FAILED: {what}")
    print(f"  ok: {what}")


def rootfs_tar() -> bytes:
    """A two-file root file system archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("etc/motd", b"welcome\n"), ("bin/hello", b"#!/bin/sh\necho hello\n")):
            d = tarfile.TarInfo(name.split("/")[0])
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
            f = tarfile.TarInfo(name)
            f.size, f.mode = len(data), 0o755
            tar.addfile(f, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    expected: dict[str, dict[str, str]] = json.loads(Path(sys.argv[1]).read_text())
    print(f"wheel smoke test: Python {sys.version.split()[0]} in {sys.prefix} as uid {os.getuid()}")
    for tool in ("cargo", "rustc"):
        check(shutil.which(tool) is None, f"no {tool} on PATH")

    import ovlcore

    pkg = Path(ovlcore.__file__).parent
    check(pkg.is_relative_to(Path(sysconfig.get_paths()["purelib"])), f"ovlcore {ovlcore.__version__} imported from the venv ({pkg})")
    check(metadata.version("ovlcore") == ovlcore.__version__, "distribution version = ovlcore.__version__")
    for name in ("py.typed", "_ovlcore.pyi"):
        check((pkg / name).is_file(), f"the wheel installed {name}")
    check(any(p.name.startswith("_ovlcore.") and p.suffix == ".so" for p in pkg.iterdir()), "the compiled core is installed")

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ovlcore; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    eager = sorted(m for m in loaded if m.split(".")[0] in LAZY)
    check(eager == [], f"`import ovlcore` loads none of {', '.join(LAZY)}")

    dist = metadata.distribution("ovlcore")
    installed = {(ep.group, ep.name): ep for ep in dist.entry_points}
    declared = {(g, n): v for g, eps in expected.items() for n, v in eps.items()}
    check(declared and set(installed) == set(declared), f"entry points = pyproject.toml's: {sorted(declared)}")
    bindir = Path(sysconfig.get_paths()["scripts"])
    for (group, name), value in sorted(declared.items()):
        ep = installed[(group, name)]
        check(ep.value == value, f"{group} {name} = {value}")
        obj = ep.load()
        check(callable(obj), f"{group} {name} loads ({obj!r})")
        if group in ("console_scripts", "gui_scripts"):
            check((bindir / name).is_file() and os.access(bindir / name, os.X_OK), f"{bindir / name} is installed")

    for script in ("ovlcore", "ovlcore-fuse"):
        res = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True, timeout=60)
        check(res.returncode == 0 and "usage" in res.stdout.lower(), f"{script} --help")

    with tempfile.TemporaryDirectory(prefix="ovlcore-smoke-") as tmp:
        with ovlcore.Store(Path(tmp) / "store") as store:
            base = store.images.import_archive(io.BytesIO(rootfs_tar()), tag="smoke:1")
            check(base.tags == ["smoke:1"] and len(base.layers) == 1, f"imported image {base.short_id}")
            ctr = store.containers.create("smoke:1", name="smoke")
            ctr.fs.write_text("/etc/motd", "changed\n")
            ctr.fs.write_text("/etc/new", "new\n")
            ctr.fs.remove("/bin/hello")
            changes = [str(c) for c in ctr.diff()]
            check(changes == ["C /bin", "D /bin/hello", "C /etc", "C /etc/motd", "A /etc/new"], f"container diff: {changes}")
            img = ctr.commit("smoke:2", message="smoke")
            view = store.containers.create("smoke:2").fs
            check(view.read_text("/etc/motd") == "changed\n" and not view.exists("/bin/hello"), f"committed image {img.short_id} has the changes")
            check(base.fs.read_text("/etc/motd") == "welcome\n", "the base image is unchanged")
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
