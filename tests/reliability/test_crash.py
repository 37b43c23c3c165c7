"""SIGKILL long operations at random points (seeded): reopening the store recovers by itself.

After every kill: `check()` finds nothing, no temporary file remains, everything that existed before is
intact, and no half-made layer, image, container or volume is visible.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ovlcore

from support.stores import leftovers
from support.tars import D, F, tar

KILLS = int(os.environ.get("OVLCORE_CRASH_KILLS", "8"))
SEED = int(os.environ.get("OVLCORE_CRASH_SEED", "1234"))

PRELUDE = """
import io, os, sys, ovlcore
store = ovlcore.Store(sys.argv[1])
data = sys.argv[2]
print("go", flush=True)
"""

# Each operation, run in a child process that the test kills. `data` is a scratch directory of the test.
OPERATIONS = {
    "import": "store.images.import_archive(os.path.join(data, 'big.tar'), tag='crash/import:1')",
    "apply": "store.images.apply('base:1', os.path.join(data, 'big.tar'), tag='crash/apply:1')",
    "commit": "store.containers.get('writer').commit('crash/commit:1')",
    "copy-up": "f = store.containers.get('appender').fs.open('/big/blob', 'ab'); f.write(b'x'); f.close()",
    "cp": "store.cp(os.path.join(data, 'tree'), 'writer:/cp-target')",
    "volume-prepopulation": "store.containers.create('base:1', mounts=[ovlcore.Mount('/docs', None)])",
    "remove": "store.containers.remove('victim', volumes=True)",
    "prune": "store.prune()",
    "load": "store.images.load(os.path.join(data, 'saved.tar'))",
}


def snapshot(store: ovlcore.Store) -> dict[str, object]:
    return {
        "images": {i.id: sorted(i.tags) for i in store.images.list()},
        "containers": {c.name: c.image_id for c in store.containers.list()},
        "volumes": sorted(v.name for v in store.volumes.list()),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("crashdata")
    rng = random.Random(SEED)
    files = {f"big/f{i:04d}": rng.randbytes(rng.randint(100, 20_000)) for i in range(1500)}
    files["big/blob"] = rng.randbytes(24 << 20)
    files.update({f"docs/d{i}": rng.randbytes(3000) for i in range(800)})
    (d / "big.tar").write_bytes(tar(D("big"), D("docs"), *(F(n, d) for n, d in files.items())))
    tree = d / "tree"
    tree.mkdir()
    for i in range(1500):
        (tree / f"t{i}").write_bytes(rng.randbytes(8000))
    return d


def prepare(root: Path, data: Path) -> None:
    """The objects the operations work on (re-made when an operation removed them)."""
    store = ovlcore.Store(root)
    names = {c.name for c in store.containers.list()}
    if not store.images.list():
        store.images.import_archive(str(data / "big.tar"), tag="base:1")
    if "writer" not in names:
        w = store.containers.create("base:1", name="writer")
        for i in range(300):
            w.fs.write_bytes(f"/big/new{i}", os.urandom(4096))
        w.fs.rmtree("/docs")
    if "appender" not in names:
        store.containers.create("base:1", name="appender")
    if "victim" not in names:
        v = store.containers.create("base:1", name="victim", mounts=[ovlcore.Mount("/docs", None)])
        for i in range(200):
            v.fs.write_bytes(f"/big/x{i}", os.urandom(8192))
    for i in range(3):
        store.images.apply("base:1", io.BytesIO(tar(F(f"dangling{i}", os.urandom(50_000)))))
    if hasattr(store.images, "save") and not (data / "saved.tar").exists():
        store.images.save(["base:1"], str(data / "saved.tar"))


def run_child(root: Path, data: Path, code: str) -> subprocess.Popen[bytes]:
    """Start the operation in a child; returns once the child is about to begin it."""
    script = PRELUDE + textwrap.dedent(code)
    p = subprocess.Popen([sys.executable, "-c", script, str(root), str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"go\n"
    return p


@pytest.mark.timeout(900)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_kill_and_recover(operation: str, tmp_path: Path, data: Path) -> None:
    if operation == "load" and not hasattr(ovlcore.Images, "save"):
        pytest.skip("save/load not available")
    root = tmp_path / "store"
    rng = random.Random(f"{SEED}-{operation}")
    prepare(root, data)
    # How long the operation takes when left alone.
    p = run_child(root, data, OPERATIONS[operation])
    t0 = time.monotonic()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    duration = time.monotonic() - t0
    kills = 0
    for _ in range(KILLS):
        prepare(root, data)
        store = ovlcore.Store(root)
        before = snapshot(store)
        p = run_child(root, data, OPERATIONS[operation])
        time.sleep(rng.uniform(0, duration))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=300)
        # Reopening recovers by itself.
        store = ovlcore.Store(root)
        assert leftovers(root) == [], f"{operation}: temporary files survived recovery"
        report = store.check()
        assert report.problems == [], f"{operation}: {report.problems}"
        after = snapshot(store)
        # Everything that existed before is intact (except what the operation itself removes).
        for image_id, tags in before["images"].items():  # type: ignore[union-attr]
            if operation != "prune" or tags:
                assert image_id in after["images"], f"{operation}: image {image_id} lost"
        for name in before["containers"]:  # type: ignore[union-attr]
            if not (operation == "remove" and name == "victim"):
                assert name in after["containers"], f"{operation}: container {name} lost"
        for img in store.images.list():
            for layer in img.layers:
                assert (layer.path).is_dir()
        for c in store.containers.list():
            c.fs.listdir("/")
    assert ovlcore.Store(root).check(verify_digests=True).problems == []
    print(f"\n{operation}: ran {duration:.2f}s alone; {kills} of {KILLS} runs killed midway, all recovered")
