"""The suite's fixtures. What they are made of lives in :mod:`support` (``tests/support/``).

* ``sandbox``: ``tmp_path`` as ``store/`` next to ``outside/``, a sentinel nothing may write into;
* ``store``: a fresh store in ``sandbox.root`` with the running user's own metadata convention;
  ``rootless_store``: the rootless convention even as root; ``any_store``: once per convention
  (``root`` skips for an unprivileged user);
* ``image`` / ``any_image``: :data:`support.images.BASE_ENTRIES` imported into ``store`` / ``any_store``;
* ``sample``: :func:`support.images.make_images` (a base and a child image) in ``any_store``;
* ``kernel_overlay``: skips the test unless ``mount -t overlay`` works here;
* ``client_home``: ``$DOCKER_CONFIG``, ``$REGISTRY_AUTH_FILE``, ``$HOME``... in a temporary directory
  (:mod:`support.credentials`); every registry fixture uses it, so no test reads or writes the real ones;
* ``registry`` (plain HTTP), ``tls_registry`` (htpasswd Basic over TLS), ``token_registry`` (Bearer
  tokens), ``any_registry`` (once per mode): a running ``docker-registry`` (:mod:`support.registry`);
* ``fault_registry``: :class:`support.fault_registry.FaultRegistry`, anonymous; ``make_fault_registry``
  makes more (with ``auth=``, ``redirect_blobs=``), all stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ovlcore
from support.credentials import ClientHome, isolate
from support.fault_registry import FaultRegistry
from support.images import SampleImages, import_image, make_images
from support.kernel import mount_refused
from support.privilege import PRIVILEGES
from support.registry import MODES, Registry, start_registry
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


@pytest.fixture
def client_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> ClientHome:
    return isolate(tmp_path_factory.mktemp("client"), monkeypatch)


def _registry(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp(f"registry-{mode}"), mode)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def registry(client_home: ClientHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "plain")


@pytest.fixture
def tls_registry(client_home: ClientHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "basic")


@pytest.fixture
def token_registry(client_home: ClientHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "token")


@pytest.fixture(params=MODES)
def any_registry(request: pytest.FixtureRequest, client_home: ClientHome,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, request.param)


@pytest.fixture
def make_fault_registry(client_home: ClientHome) -> Iterator[Callable[..., FaultRegistry]]:
    made: list[FaultRegistry] = []

    def make(**kw: object) -> FaultRegistry:
        made.append(FaultRegistry(**kw))  # type: ignore[arg-type]
        return made[-1]

    try:
        yield make
    finally:
        for r in made:
            r.stop()


@pytest.fixture
def fault_registry(make_fault_registry: Callable[..., FaultRegistry]) -> FaultRegistry:
    return make_fault_registry()
