"""Who runs the suite, and the store's two metadata conventions.

``root``: native owners and devices, ``trusted.overlay.opaque``. ``rootless``: owner, mode and device type
in ``user.containers.override_stat``, ``user.overlay.opaque`` (what an unprivileged user gets, and what
``OVLCORE_PRIVILEGE=rootless`` asks for). A store takes its convention when it is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

IS_ROOT = os.geteuid() == 0

#: The two metadata conventions.
PRIVILEGES = ("root", "rootless")

#: For tests that need real root: native owners, device nodes, ``trusted.*`` xattrs, mount(2).
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (native owners, device nodes, trusted.* xattrs or mount)")


def require(privilege: str | None) -> None:
    """Skip the test when it asks for the ``root`` convention and the user is not root."""
    if privilege == "root" and not IS_ROOT:
        pytest.skip("a store with the root convention needs root")


@contextlib.contextmanager
def privilege_env(privilege: str | None) -> Iterator[None]:
    """``OVLCORE_PRIVILEGE`` set to ``privilege`` inside the block (unset for ``None``: the user's own
    convention), as it was afterwards."""
    old = os.environ.pop("OVLCORE_PRIVILEGE", None)
    if privilege is not None:
        os.environ["OVLCORE_PRIVILEGE"] = privilege
    try:
        yield
    finally:
        os.environ.pop("OVLCORE_PRIVILEGE", None)
        if old is not None:
            os.environ["OVLCORE_PRIVILEGE"] = old
