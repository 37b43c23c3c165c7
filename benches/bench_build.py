"""Dockerfile builds: ``store.images.build`` against Docker's classic builder (``DOCKER_BUILDKIT=0 docker
build``) and ``buildah bud``, on the same Dockerfile and context, contenders alternated round by round.

Dockerfile: 9 steps on a busybox base (built here from busybox-static; the shared ~200 MB benchmark rootfs
has no shell to RUN with): ENV, WORKDIR, a COPY of 5,000 files of 4 KiB, two RUN steps, a second COPY,
LABEL, CMD. Groups:

* ``build-uncached``: ``--no-cache`` builds (target: ovlcore ≥ 2x faster than Docker and than buildah);
* ``build-rebuild``: a rebuild where nothing changed, every step a cache hit (target: ≥ 10x faster than
  Docker's cached rebuild; buildah ``--layers`` for information).

Small inputs (50 files, one round) with ``--benchmark-disable``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from _support import docker_running, small_mode
from support.build import busybox_tar, runc_works, write_context

DOCKERFILE = """\
FROM {base}
ENV APP=/app MODE=bench
WORKDIR /app
COPY files/ /app/files/
RUN ls /app/files | wc -l > /app/count && echo built > /app/stamp
COPY one.txt /app/
RUN sha256sum /app/one.txt > /app/sum && rm /app/stamp
LABEL bench=build
CMD ["sh"]
"""
STEPS = 9
CONTENDERS = ("ovlcore", "docker", "buildah")


@dataclass
class BuildWorkload:
    small: bool
    work: Path
    ctx: Path
    store: ovlcore.Store
    base: str
    files: int
    docker: str | None
    buildah: list[str] | None
    why_buildah: str = ""
    made: list[str] = field(default_factory=list)


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(list(argv), capture_output=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace")


DOCKER_ENV = dict(os.environ, DOCKER_BUILDKIT="0")


@pytest.fixture(scope="module")
def workload(small: bool, module_dir: Path) -> Iterator[BuildWorkload]:
    why = runc_works()
    if why is not None:
        pytest.skip(why)
    n = 50 if small else 5000
    files: dict[str, str | bytes | int] = {f"files/d{i % 50:02d}/f{i:05d}": os.urandom(4096) for i in range(n)}
    base = f"ovlcore-bench-build-base:{os.getpid()}"
    files["one.txt"] = "1\n"
    files["Dockerfile"] = DOCKERFILE.format(base=base)
    ctx = write_context(module_dir / "ctx", files)
    store = ovlcore.Store(module_dir / "store")
    img = store.images.import_archive(io.BytesIO(busybox_tar()), tag=base)
    archive = module_dir / "base.tar"
    store.images.save(img, archive)
    docker = docker_running()
    if docker is None:
        sh("docker", "load", "-q", "-i", str(archive))
    buildah: list[str] | None = None
    why_buildah = ""
    if shutil.which("buildah") is None:
        why_buildah = "buildah is not installed"
    elif os.geteuid() != 0:
        why_buildah = "buildah baseline runs as root only here"
    else:
        buildah = ["buildah", "--root", str(module_dir / "buildah-root"), "--runroot", str(module_dir / "buildah-run"), "--storage-driver", "overlay"]
        sh(*buildah, "pull", "-q", f"docker-archive:{archive}")
    w = BuildWorkload(small, module_dir, ctx, store, base, n, docker, buildah, why_buildah)
    try:
        yield w
    finally:
        if docker is None:
            subprocess.run(["docker", "rmi", "-f", base, *w.made], capture_output=True)
        if buildah is not None:
            subprocess.run([*buildah, "rmi", "-a", "-f"], capture_output=True)
            subprocess.run(["umount", "-R", str(module_dir / "buildah-root" / "overlay")], capture_output=True)


def need(w: BuildWorkload, who: str) -> None:
    if who == "docker" and w.docker is not None:
        pytest.skip(f"Docker baseline skipped: {w.docker}")
    if who == "buildah" and w.buildah is None:
        pytest.skip(f"buildah baseline skipped: {w.why_buildah}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One item per (round, contender), round-major and rotated (see bench_registry.py)."""
    n = 1 if small_mode(metafunc.config) else int(os.environ.get("OVLCORE_BENCH_BUILD_ROUNDS", "4"))
    if "build_run" in metafunc.fixturenames:
        runs = [(r, CONTENDERS[(r + i) % len(CONTENDERS)]) for r in range(n) for i in range(len(CONTENDERS))]
        metafunc.parametrize("build_run", runs, ids=[f"{who}-r{r}" for r, who in runs])


def build(w: BuildWorkload, who: str, tag: str, *, cache: bool) -> str:
    """Build with one contender; returns what identifies the image."""
    if who == "ovlcore":
        return w.store.images.build(w.ctx, tag=tag, no_cache=not cache).id
    if who == "docker":
        w.made.append(tag)
        return sh("docker", "build", "-q", *([] if cache else ["--no-cache"]), "-t", tag, str(w.ctx), env=DOCKER_ENV).strip()
    assert w.buildah is not None
    return sh(*w.buildah, "bud", "-q", "--pull-never", "--layers" if cache else "--no-cache", "--isolation", "oci",
              "--network", "none", "-t", tag, str(w.ctx)).strip()


def check(w: BuildWorkload, who: str, tag: str) -> None:
    """The built image holds the RUN steps' results."""
    if who == "ovlcore":
        fs = w.store.containers.create(tag).fs
        assert fs.read_text("/app/count").strip() == "50"  # the 50 directories the files are spread over
        assert fs.read_text("/app/sum").endswith("/app/one.txt\n") and not fs.exists("/app/stamp")
        assert len(w.store.images.get(tag).config["history"]) == 1 + STEPS - 1
    elif who == "docker":
        assert sh("docker", "image", "inspect", "-f", "{{len .RootFS.Layers}}", tag).strip() == str(1 + 5)


@pytest.mark.benchmark(group="build-uncached")
def test_build_uncached(benchmark: Any, workload: BuildWorkload, build_run: tuple[int, str]) -> None:
    rnd, who = build_run
    need(workload, who)
    role = "ours" if who == "ovlcore" else "baseline"
    what = {"ovlcore": "images.build(no_cache=True)", "docker": "DOCKER_BUILDKIT=0 docker build --no-cache",
            "buildah": "buildah bud --no-cache"}[who]
    benchmark.extra_info.update(role=role, what=what, series=f"test_build_uncached_{who}", round=rnd, files=workload.files)
    tag = f"ovlcore-bench-build-{who}:{os.getpid()}"

    def setup() -> None:
        os.sync()

    benchmark.pedantic(lambda: build(workload, who, tag, cache=False), setup=setup, rounds=1, iterations=1)
    check(workload, who, tag)


@pytest.mark.benchmark(group="build-rebuild")
def test_build_rebuild(benchmark: Any, workload: BuildWorkload, build_run: tuple[int, str]) -> None:
    rnd, who = build_run
    need(workload, who)
    role = {"ovlcore": "ours", "docker": "baseline", "buildah": "info"}[who]
    what = {"ovlcore": "images.build, no change (all cache)", "docker": "DOCKER_BUILDKIT=0 docker build, no change",
            "buildah": "buildah bud --layers, no change"}[who]
    benchmark.extra_info.update(role=role, what=what, series=f"test_build_rebuild_{who}", round=rnd, files=workload.files)
    tag = f"ovlcore-bench-rebuild-{who}:{os.getpid()}"
    first = build(workload, who, tag, cache=True)  # warms the cache (untimed)
    out: list[str] = []
    benchmark.pedantic(lambda: out.append(build(workload, who, tag, cache=True)), rounds=1, iterations=1)
    if who != "buildah":
        assert out[-1] == first  # every step was a cache hit: the same image
    check(workload, who, tag)
