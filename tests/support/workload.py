"""The stress test's worker: random operations on a shared store.

Run as ``python -m support.workload ROOT SEED OPS OUT`` (from ``tests/``) it is one worker process: it
applies random operations to the store at ROOT and writes, as JSON to OUT, what it expects the store to
hold afterwards.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from .tars import D, F, tar


def base_tar() -> bytes:
    files = {f"etc/file{i}": f"base {i}\n".encode() for i in range(20)}
    files.update({f"usr/share/doc/d{i}": os.urandom(2000) for i in range(30)})
    return tar(*map(D, ("etc", "usr", "usr/share", "usr/share/doc")), *(F(n, d) for n, d in files.items()))


def worker(root: str, seed: int, ops: int) -> dict[str, Any]:
    import ovlcore
    from ovlcore.errors import OvlError

    rng = random.Random(seed)
    store = ovlcore.Store(root)
    me = f"w{seed}"
    expect: dict[str, Any] = {"tags": {}, "containers": {}, "volumes": [], "errors": {}}
    containers: dict[str, dict[str, str]] = {}
    tags: dict[str, str] = {}
    volumes: list[str] = []
    host = Path(tempfile.mkdtemp(prefix=f"ovl-stress-{me}-"))
    counter = 0

    def fresh() -> str:
        nonlocal counter
        counter += 1
        return f"{me}-{counter}"

    def op_import() -> None:
        tag = f"{me}/img:{fresh()}"
        files = {f"etc/file{i}": f"{tag} {i}\n".encode() for i in range(4)}
        files[f"data/{fresh()}"] = os.urandom(rng.randint(0, 5000))
        if rng.random() < 0.5:
            img = store.images.import_archive(io.BytesIO(tar(D("etc"), *(F(n, d) for n, d in files.items()))), tag=tag)
        else:
            img = store.images.apply("base:1", io.BytesIO(tar(*(F(n, d) for n, d in files.items()))), tag=tag, created_by="stress step")
        tags[tag] = img.id

    def op_create() -> None:
        name = fresh()
        image = rng.choice([*tags.keys(), "base:1"]) if tags else "base:1"
        mounts = []
        if rng.random() < 0.3:
            vol = f"{me}-vol-{fresh()}"
            mounts.append(ovlcore.Mount("/usr/share", vol))
            volumes.append(vol)
        store.containers.create(image, name=name, mounts=mounts)
        containers[name] = {}

    def op_write() -> None:
        if not containers:
            return op_create()
        name = rng.choice(sorted(containers))
        c = store.containers.get(name)
        path = rng.choice(["/etc/file1", "/etc/file2", f"/etc/new-{rng.randint(0, 5)}", "/root-note"])
        data = f"{name} {fresh()}\n"
        c.fs.write_text(path, data)
        containers[name][path] = data
        if rng.random() < 0.2 and c.fs.exists("/etc/file3"):
            c.fs.remove("/etc/file3")
            containers[name]["/etc/file3"] = ""

    def op_commit() -> None:
        if not containers:
            return op_create()
        name = rng.choice(sorted(containers))
        tag = f"{me}/commit:{fresh()}"
        img = store.containers.get(name).commit(tag, message="stress")
        tags[tag] = img.id

    def op_tag() -> None:
        if not tags:
            return op_import()
        src = rng.choice(sorted(tags))
        new = f"{me}/alias:{fresh()}"
        store.images.tag(src, new)
        tags[new] = tags[src]

    def op_rmi() -> None:
        if not tags:
            return
        tag = rng.choice(sorted(tags))
        try:
            store.images.remove(tag)
        except ovlcore.ImageInUse:
            return
        del tags[tag]

    def op_rm() -> None:
        if not containers:
            return
        name = rng.choice(sorted(containers))
        store.containers.remove(name, volumes=True)
        del containers[name]

    def op_volume() -> None:
        name = f"{me}-v-{fresh()}"
        v = store.volumes.create(name)
        (v.mountpoint / "f").write_text(name)
        volumes.append(name)
        if rng.random() < 0.5:
            victim = rng.choice(volumes)
            try:
                store.volumes.remove(victim)
                volumes.remove(victim)
            except ovlcore.VolumeInUse:
                pass

    def op_cp() -> None:
        if not containers:
            return op_create()
        name = rng.choice(sorted(containers))
        f = host / f"{fresh()}.txt"
        f.write_text(f.name)
        store.cp(str(f), f"{name}:/etc/")
        containers[name][f"/etc/{f.name}"] = f.name
        out = host / fresh()
        out.mkdir()
        store.cp(f"{name}:/etc/{f.name}", str(out))
        assert (out / f.name).read_text() == f.name

    def op_prune() -> None:
        store.prune()

    def op_save_load() -> None:
        if not tags or not hasattr(store.images, "save"):
            return op_import()
        tag = rng.choice(sorted(tags))
        archive = host / f"{fresh()}.tar"
        store.images.save([tag], str(archive))
        store.images.load(str(archive))

    table = [
        (op_import, 3), (op_create, 4), (op_write, 8), (op_commit, 3), (op_tag, 2), (op_rmi, 2),
        (op_rm, 2), (op_volume, 2), (op_cp, 3), (op_prune, 1), (op_save_load, 1),
    ]
    funcs = [f for f, w in table for _ in range(w)]
    for _ in range(ops):
        f = rng.choice(funcs)
        try:
            f()
        except (OvlError, OSError) as e:  # allowed to fail cleanly (e.g. an image pruned by another worker)
            expect["errors"][f.__name__] = expect["errors"].get(f.__name__, 0) + 1
            if not isinstance(e, (ovlcore.ImageNotFound, ovlcore.ContainerNotFound, ovlcore.VolumeNotFound, ovlcore.ImageInUse, ovlcore.NameConflict)):
                raise
    expect["tags"] = tags
    expect["containers"] = containers
    expect["volumes"] = volumes
    return expect


if __name__ == "__main__":
    root, seed, ops, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    result = worker(root, seed, ops)
    Path(out).write_text(json.dumps(result))
