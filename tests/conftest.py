"""The suite's fixtures. What they are made of lives in :mod:`support` (``tests/support/``).

* ``sandbox``: ``tmp_path`` as ``store/`` next to ``outside/``, a sentinel nothing may write into;
* ``store``: a fresh store in ``sandbox.root`` with the running user's own metadata convention;
  ``rootless_store``: the rootless convention even as root; ``any_store``: once per convention
  (``root`` skips for an unprivileged user);
* ``image`` / ``any_image``: :data:`support.images.BASE_ENTRIES` imported into ``store`` / ``any_store``;
* ``sample``: :func:`support.images.make_images` (a base and a child image) in ``any_store``;
* ``kernel_overlay``: skips the test unless ``mount -t overlay`` works here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ovlcore
from support.images import SampleImages, import_image, make_images
from support.kernel import mount_refused
from support.privilege import PRIVILEGES
from support.stores import Sandbox, open_store


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture
def store(sandbox: Sandbox) -> Iterator[ovlcore.Store]:
    with open_store(sandbox.root) as s:
        yield s


@pytest.fixture
def rootless_store(sandbox: Sandbox) -> Iterator[ovlcore.Store]:
    with open_store(sandbox.root, "rootless") as s:
        yield s


@pytest.fixture(params=PRIVILEGES)
def any_store(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[ovlcore.Store]:
    with open_store(sandbox.root, request.param) as s:
        yield s


@pytest.fixture
def image(store: ovlcore.Store) -> ovlcore.Image:
    return import_image(store)


@pytest.fixture
def any_image(any_store: ovlcore.Store) -> ovlcore.Image:
    return import_image(any_store)


@pytest.fixture
def sample(any_store: ovlcore.Store) -> SampleImages:
    return make_images(any_store)


@pytest.fixture(scope="session")
def kernel_overlay() -> None:
    reason = mount_refused()
    if reason:
        pytest.skip(reason)
