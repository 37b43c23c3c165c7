"""The kernel-oracle operation sequences of ``test_writes_vs_kernel``, run through the FUSE mount.

The same random sequences are applied with the ``os`` module to a kernel overlay mount and to the
container mounted with ``driver="fuse"``: same errno after every step (two known exceptions: EXDEV for
a directory from the image layers, handled as there; a rename between two names of one hard-linked
file, a no-op through FUSE as on any file system), same merged trees, same writable-layer
markers; at the end the layer the FUSE mount left is mounted by the kernel and must show the same tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from support.fuse import force_unmount, require_fuse
from support.layout import upper_markers
from support.operations import apply_host, host_move_dir
from support.trees import host_tree
from test_writes_vs_kernel import PHASES, KEnv, KernelDifferential, compare_merged, compare_uppers, errname
from test_writes_vs_kernel import kenv as kenv  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return a != b and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino) and not os.path.isdir(a)


class FuseDifferential(KernelDifferential):
    def __init__(self, kenv: KEnv) -> None:
        super().__init__(kenv)
        self.stack = contextlib.ExitStack()
        self.fuse_dir = self.dir / "fuse"
        try:
            self.f = str(self.stack.enter_context(self.c.mount(self.fuse_dir, driver="fuse")))
        except BaseException:
            self.failed = True
            self.teardown()
            raise

    def _compare_op(self, op: tuple[Any, ...]) -> None:
        same_file = op[0] == "rename" and _same_file(self.f + op[1], self.f + op[2])
        kerr = apply_host(self.m, op)
        ferr = apply_host(self.f, op)
        if same_file and kerr is None:
            # Two names of one hard-linked file: rename(2) succeeds and does nothing, as POSIX says and
            # as the VFS does before asking any file system; the kernel's overlay, whose hard links
            # from image layers are separate inodes (a copy-up breaks them), removes the source.
            assert ferr is None and os.path.lexists(self.f + op[1]), f"{op}: fuse {errname(ferr)}"
            os.unlink(self.f + op[1])
            return
        if op[0] == "rename" and kerr == errno.EXDEV:
            src, dst = op[1], op[2]
            d = self.m + dst
            if os.path.isdir(d) and not os.path.islink(d) and os.listdir(d):
                assert ferr == errno.ENOTEMPTY, f"{op}: kernel EXDEV (non-empty destination), fuse {errname(ferr)}"
            else:
                assert ferr is None, f"{op}: fuse {errname(ferr)} where a directory move should work"
                host_move_dir(self.m, src, dst)
            return
        assert ferr == kerr, f"{op}: kernel {errname(kerr)}, fuse {errname(ferr)}"

    def _same_trees(self) -> None:
        problems = compare_merged(host_tree(self.f), host_tree(self.merged), self.t0)
        assert problems == [], "merged trees differ (fuse vs kernel):\n" + "\n".join(problems)
        problems = compare_uppers(upper_markers(self.c.upper), upper_markers(self.upper), self.k.image_tree)
        assert problems == [], "writable layers differ:\n" + "\n".join(problems)

    def teardown(self) -> None:
        try:
            self.stack.close()
        finally:
            force_unmount(str(self.fuse_dir))
            super().teardown()


def test_fuse_differential(kenv: KEnv) -> None:  # noqa: F811
    require_fuse()
    run_state_machine_as_test(
        lambda: FuseDifferential(kenv),
        settings=settings(max_examples=15, stateful_step_count=25, deadline=None, phases=PHASES,
                          suppress_health_check=list(HealthCheck)),
    )
