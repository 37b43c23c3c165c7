"""The store: one root directory holding layers, images, containers and volumes, shared safely by any
number of processes and threads (see :mod:`ovlcore._store` for the model underneath)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from . import cp as _cp
from . import maintenance
from ._store import Storage
from .archive import Archive
from .containers import Containers
from .images import Builder, Images
from .layers import Layers
from .registry import Registry, RegistryConfig
from .reports import CheckReport, DiskUsage, PruneReport
from .volumes import Volumes

__all__ = ["Store", "PruneReport", "CheckReport", "DiskUsage", "default_root"]

DRIVERS = ("auto", "userspace", "overlay")


def default_root() -> Path:
    """``$OVLCORE_ROOT``, else ``$XDG_DATA_HOME/ovlcore``, else ``~/.local/share/ovlcore``."""
    env = os.environ.get("OVLCORE_ROOT")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "ovlcore"


class Store:
    """An ovlcore store rooted at ``root`` (created on first use). Also a context manager.

    ``driver``: ``"userspace"`` (the default that ``"auto"`` picks) serves every operation without
    mounting anything; ``"overlay"`` also allows kernel overlayfs mounts and needs the privilege to mount.
    ``registry``: how registries are reached (see :class:`ovlcore.RegistryConfig`; defaults read the
    usual credential files and ``certs.d`` directories).
    ``read_only``: open without changing anything (also what a store this process may not write gets);
    a store of an older format is then read as it is, without migrating it.
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, driver: str = "auto", read_only: bool = False,
        registry: RegistryConfig | None = None,
    ) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"unknown driver {driver!r} (choose from {', '.join(DRIVERS)})")
        self.root = (Path(root) if root is not None else default_root()).expanduser().absolute()
        self.driver = "userspace" if driver == "auto" else driver
        self._storage = Storage(self.root, read_only=read_only)
        self.layers = Layers(self._storage)
        self.registry = registry if registry is not None else RegistryConfig()
        self.images = Images(
            self._storage, self.layers, functools.partial(Archive, self._storage, self.layers),
            lambda images: Registry(self._storage, self.layers, images, self.registry),
            self._builder,
        )
        self.volumes = Volumes(self._storage)
        self.containers = Containers(self._storage, self.images, self.volumes)

    def _builder(self, images: Images) -> Builder:
        # Imported on first build: the builder's dependencies (subprocess, tempfile) stay out of
        # `import ovlcore`.
        from .build import Builder as DockerfileBuilder

        return DockerfileBuilder(images, self.containers)

    @property
    def privilege(self) -> str:
        """How the store keeps metadata: ``"root"`` (native owners, devices) or ``"rootless"`` (the
        ``user.containers.override_stat`` xattr)."""
        return self._storage.privilege

    @property
    def read_only(self) -> bool:
        """Whether this store object may change nothing."""
        return not self._storage.writable

    # ----- lifecycle -----

    def close(self) -> None:
        """Release what the store holds open (objects made from it stay usable)."""
        self._storage.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {str(self.root)!r} driver={self.driver!r} privilege={self.privilege!r}>"

    # ----- operations across objects -----

    def cp(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        follow_symlinks: bool = False,
        archive: bool = False,
        progress: Any = None,
    ) -> None:
        """``docker cp``: each side is a host path or ``CONTAINER:PATH``. See :mod:`ovlcore.cp`."""
        _cp.copy(self.containers, os.fspath(src), os.fspath(dst), follow_symlinks=follow_symlinks, archive=archive, progress=progress)

    def login(self, host: str, user: str, password: str) -> str:
        """``docker login``: verify the credentials against ``host`` (``Unauthorized`` when refused, and
        nothing saved), then save them under ``auths["HOST:PORT"]``. Returns the file written."""
        return Registry(self._storage, self.layers, self.images, self.registry).login(host, user, password)

    def logout(self, host: str) -> bool:
        """``docker logout``: forget the saved credentials of ``host``; whether there were any."""
        return Registry(self._storage, self.layers, self.images, self.registry).logout(host)

    def prune(self) -> PruneReport:
        """Remove dangling images no container uses, unused anonymous volumes, and layers nothing
        references (including layers kept by ``layers.apply``)."""
        return maintenance.prune(self._storage, self.images, self.containers, self.volumes)

    def df(self) -> list[DiskUsage]:
        """Disk usage like ``docker system df``: images, containers, local volumes. A container counts as
        active when mounted; images and volumes when a container uses them."""
        return maintenance.disk_usage(self.images, self.containers, self.volumes, self.layers)

    def check(self, repair: bool = False, *, verify_digests: bool = False) -> CheckReport:
        """Verify the records against the content and report problems (see :func:`ovlcore.maintenance.check`);
        with ``repair``, fix what can be fixed safely."""
        return maintenance.check(self._storage, self.layers, repair=repair, verify_digests=verify_digests)
