"""Many processes on one store: every operation that succeeded is reflected, nothing is corrupt, no deadlock."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ovlcore

from support import TESTS_DIR
from support.workload import base_tar

WORKERS = int(os.environ.get("OVLCORE_STRESS_WORKERS", "8"))
OPS = int(os.environ.get("OVLCORE_STRESS_OPS", "200"))


@pytest.mark.timeout(600)
def test_eight_processes_share_one_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ovlcore.Store(root)
    store.images.import_archive(io.BytesIO(base_tar()), tag="base:1")
    procs = []
    start = time.monotonic()
    for seed in range(WORKERS):
        out = tmp_path / f"w{seed}.json"
        procs.append((subprocess.Popen([sys.executable, "-m", "support.workload", str(root), str(seed), str(OPS), str(out)], cwd=TESTS_DIR), out))
    for p, _ in procs:
        try:
            assert p.wait(timeout=540) == 0, "a worker failed (see its traceback above)"
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            pytest.fail("workers did not finish: deadlock or livelock")
    elapsed = time.monotonic() - start
    print(f"\n{WORKERS} processes x {OPS} operations in {elapsed:.1f}s")

    store = ovlcore.Store(root)
    report = store.check(verify_digests=True)
    assert report.problems == []
    for img in store.images.list():
        for layer in img.layers:
            assert layer.path.is_dir()
    for _, out in procs:
        expect = json.loads(out.read_text())
        for tag, image_id in expect["tags"].items():
            assert store.images.get(tag).id == image_id, tag
        for name, files in expect["containers"].items():
            c = store.containers.get(name)
            for path, content in files.items():
                if content == "":
                    assert not c.fs.exists(path), (name, path)
                else:
                    assert c.fs.read_text(path) == content, (name, path)
        for vol in expect["volumes"]:
            store.volumes.get(vol)
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "trash").iterdir()) == []
