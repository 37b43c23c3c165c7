"""Metadata at scale: the cost of lookups and changes as a store grows to 10,000 containers and images.

For each size N (10, 100, 1,000 and 10,000; 10 and 100 in smoke runs), a store holds N containers and N
images (config-only build steps, each tagged), and these are measured against the same store: creating a
container, getting one by name and by id prefix, listing all of them, committing a one-file change, and
getting an image by id prefix. The baseline of each curve is the same operation on the smallest store;
``compare.py`` prints the curves and checks the targets (create at 10,000 within 1.3x of its cost at
100 and under 8 ms; get under 0.5 ms and list under 100 ms at 10,000; a one-file commit under 15 ms at
1,000 and flat; an image by id prefix under 1 ms at 10,000).
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

import ovlcore
from _support import curve_point
from conftest import small_mode

FULL_SIZES = (10, 100, 1000, 10000)
SMALL_SIZES = (10, 100)


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("etc/hostname", b"scale\n"), ("etc/motd", b"hello\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Scaled:
    """A store with ``n`` containers and ``n`` images."""

    def __init__(self, root: Path, n: int) -> None:
        self.n = n
        self.store = ovlcore.Store(root)
        self.base = self.store.images.import_archive(_tar(), tag="scale/base:1")
        images = self.store.images
        self.images = [images.create(layer=None, parent=self.base, created_by=f"step {i}", tag=f"scale/img:{i}") for i in range(n - 1)]
        self.images.append(self.base)
        containers = self.store.containers
        self.containers = [containers.create(self.base, name=f"c{i}") for i in range(n)]
        self.rng = random.Random(n)

    def some_container(self) -> ovlcore.Container:
        return self.rng.choice(self.containers)

    def some_image(self) -> ovlcore.Image:
        return self.rng.choice(self.images)


def sizes(small: bool) -> tuple[int, ...]:
    return SMALL_SIZES if small else FULL_SIZES


@pytest.fixture(scope="module")
def stores(module_dir: Path) -> dict[int, Scaled]:
    """The store of each size, made when a benchmark first asks for it."""

    class BySize(dict[int, Scaled]):
        def __missing__(self, n: int) -> Scaled:
            made = self[n] = Scaled(module_dir / f"store-{n}", n)
            return made

    return BySize()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", sizes(small_mode(metafunc.config)))


def _info(benchmark: object, n: int, what: str, **target: float) -> None:
    # A point of this group's cost curve, drawn by report.py: the x axis is the number of objects.
    group = benchmark.group  # type: ignore[attr-defined]
    curve_point(benchmark, group, "ovlcore", n, "containers and images in the store", what=what, objects=n, **target)


@pytest.mark.benchmark(group="scale-create")
def test_create(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    made: list[ovlcore.Container] = []
    benchmark.pedantic(lambda: made.append(s.store.containers.create(s.base)), rounds=30, warmup_rounds=2)
    _info(benchmark, n, "containers.create(image)", target_s=0.008)
    assert made and all(c.image_id == s.base.id for c in made)
    for c in made:
        c.remove()


@pytest.mark.benchmark(group="scale-get-name")
def test_get_by_name(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    want = s.some_container()
    got = benchmark(s.store.containers.get, want.name)
    _info(benchmark, n, "containers.get(name)", target_s=0.0005)
    assert got == want


@pytest.mark.benchmark(group="scale-get-prefix")
def test_get_by_id_prefix(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    want = s.some_container()
    got = benchmark(s.store.containers.get, want.id[:12])
    _info(benchmark, n, "containers.get(id[:12])", target_s=0.0005)
    assert got == want


@pytest.mark.benchmark(group="scale-list")
def test_list(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    got = benchmark.pedantic(s.store.containers.list, rounds=10 if n >= 10000 else 30, warmup_rounds=1)
    _info(benchmark, n, "containers.list()", target_s=0.1)
    assert len(got) == n, sorted(c.name for c in got)


@pytest.mark.benchmark(group="scale-commit")
def test_commit_one_file(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    c = s.store.containers.create(s.base, name=f"committer-{n}")
    counter = iter(range(10**6))

    def change() -> None:
        c.fs.write_text("/etc/motd", f"change {next(counter)}\n")

    made: list[ovlcore.Image] = []
    benchmark.pedantic(lambda: made.append(c.commit()), setup=change, rounds=20, warmup_rounds=2)
    _info(benchmark, n, "container.commit() of a one-file change", target_s=0.015)
    assert made[-1].fs.read_text("/etc/motd").startswith("change ")
    c.remove()
    for img in made:
        img.remove()


@pytest.mark.benchmark(group="scale-images-get")
def test_image_by_id_prefix(benchmark, stores, n) -> None:  # type: ignore[no-untyped-def]
    s = stores[n]
    want = s.some_image()
    got = benchmark(s.store.images.get, want.id[7:19])
    _info(benchmark, n, "images.get(id prefix)", target_s=0.001)
    assert got == want
