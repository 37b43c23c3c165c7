"""Fixtures of the Docker oracle tests: ``docker`` (the engine's version; skips without one) and ``dk``
(names for Docker objects, removed at the end of the test). What they are made of: :mod:`support.docker`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.docker import DockerObjects, docker_engine


@pytest.fixture(scope="session")
def docker() -> str:
    return docker_engine()


@pytest.fixture()
def dk(docker: str) -> Iterator[DockerObjects]:
    objs = DockerObjects()
    try:
        yield objs
    finally:
        objs.cleanup()
