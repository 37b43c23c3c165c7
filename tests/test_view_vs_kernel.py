"""Differential tests against the kernel: random layer stacks are imported with ``store.layers.apply``, the
layer directories mounted with ``mount -t overlay -o lowerdir=TOP:...:BOTTOM``, and everything reachable in
the mount is compared with ``image.fs``. A pure-Python model of the OCI layer rules checks both as well, so
a wrong on-disk conversion (which the kernel would faithfully show) is caught too.

The kernel and the view must agree on: the set of paths, every entry's type, mode, owner, mtime, size,
content and link target, every directory's listing, and the outcome (or errno) of resolving any path with
symlinks followed inside the root (as under chroot)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ovlcore

from support.kernel import MountRefused, overlay
from support.stores import open_store
from support.tars import TarBuilder

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="kernel overlayfs mounts need root"),
    pytest.mark.usefixtures("kernel_overlay"),
]

NAMES = ["a", "b", "c"]
FILE_MODES = [0o644, 0o755, 0o600, 0o4755, 0o2711, 0o444]
DIR_MODES = [0o755, 0o700, 0o555, 0o1777, 0o2750]
IDS = [0, 1000]
MTIMES = [1_400_000_000, 1_500_000_000, 1_600_000_000]
TARGETS = ["a", "b", "a/b", "../a", "/a", "/a/b", "/", ".", "..", "../../..", "/b/../c", "nonexistent", "a/b/c", "c/../a", "/c/a"]
CONTENTS = [b"", b"x", b"hello\n", b"A" * 700]


def all_paths(depth: int = 3) -> list[str]:
    out, frontier = [], [""]
    for _ in range(depth):
        frontier = [f"{p}/{n}" if p else n for p in frontier for n in NAMES]
        out += frontier
    return out


PROBES = all_paths() + ["a/../b", "a/b/../../c", "a/./b", "../a", "a/b/c/../../..", "b/a/../c/b"]


# ----- random layers ---------------------------------------------------------------------------------


@dataclass
class Layer:
    entries: dict[str, dict] = field(default_factory=dict)  # path -> {kind, mode, uid, gid, mtime, data|target|link}
    whiteouts: set[str] = field(default_factory=set)  # paths deleted below
    opaques: set[str] = field(default_factory=set)  # directories made opaque
    order: list[tuple[str, str]] = field(default_factory=list)  # ("entry"|"whiteout"|"opaque", path), tar order

    def tar(self) -> bytes:
        t = TarBuilder()
        for what, p in self.order:
            if what == "whiteout":
                t.whiteout(p)
            elif what == "opaque":
                t.opaque(p)
            else:
                e = self.entries[p]
                if e["kind"] == "hardlink":
                    t.hardlink(p, e["link"])
                    continue
                kw = dict(uid=e["uid"], gid=e["gid"], mtime=e["mtime"])
                if e["kind"] == "dir":
                    t.dir(p, mode=e["mode"], **kw)
                elif e["kind"] == "file":
                    t.file(p, e["data"], mode=e["mode"], **kw)
                else:
                    t.symlink(p, e["target"], **kw)
        return t.bytes()


def parents(p: str) -> list[str]:
    parts = p.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@st.composite
def layers(draw, index: int) -> Layer:
    layer = Layer()
    meta = lambda kind: dict(  # noqa: E731
        kind=kind,
        mode=draw(st.sampled_from(DIR_MODES if kind == "dir" else FILE_MODES)),
        uid=draw(st.sampled_from(IDS)),
        gid=draw(st.sampled_from(IDS)),
        mtime=draw(st.sampled_from(MTIMES)),
    )

    def make_dirs(paths: list[str]) -> bool:
        if any(a in layer.entries and layer.entries[a]["kind"] != "dir" for a in paths):
            return False
        for a in paths:
            if a not in layer.entries:
                # Some directories have no entry of their own: the importer creates them (implied).
                layer.entries[a] = {**meta("dir"), "implied": draw(st.booleans())}
        return True

    path_st = st.sampled_from(all_paths())
    for _ in range(draw(st.integers(0, 9))):
        op = draw(st.sampled_from(["file", "file", "file", "dir", "dir", "symlink", "symlink", "whiteout", "whiteout", "opaque", "hardlink"]))
        p = draw(path_st)
        if op == "whiteout":
            if p not in layer.whiteouts and make_dirs(parents(p)):
                layer.whiteouts.add(p)
        elif op == "opaque":
            if make_dirs(parents(p) + [p]):
                layer.opaques.add(p)
        elif p in layer.entries or not make_dirs(parents(p)):
            continue
        elif op == "dir":
            layer.entries[p] = meta("dir")
        elif op == "file":
            layer.entries[p] = {**meta("file"), "data": draw(st.sampled_from(CONTENTS)) + f"<{index}:{p}>".encode()}
        elif op == "symlink":
            layer.entries[p] = {**meta("symlink"), "target": draw(st.sampled_from(TARGETS))}
        else:
            files = sorted(q for q, e in layer.entries.items() if e["kind"] == "file")
            if files:
                layer.entries[p] = {"kind": "hardlink", "link": draw(st.sampled_from(files))}

    # Known product bug (see test_layers.py::TestWhiteouts): `.wh.d` followed by something under an implied
    # `d` fails. Generated stacks avoid that one pattern so this test keeps looking for other bugs.
    for d in layer.whiteouts:
        if d in layer.entries:
            layer.entries[d].pop("implied", None)

    # A random tar order in which every directory entry precedes what lies below it and a hard link's
    # target precedes the link (as in any tar); whiteouts and opaque markers go anywhere after their parent.
    items = [("entry", p) for p, e in layer.entries.items() if not e.get("implied")]
    items += [("whiteout", p) for p in layer.whiteouts] + [("opaque", p) for p in layer.opaques]
    items = draw(st.permutations(sorted(items)))
    done: set[tuple[str, str]] = set()

    def emit(item: tuple[str, str]) -> None:
        if item in done:
            return
        what, p = item
        for a in parents(p) + ([p] if what == "opaque" and p in layer.whiteouts else []):
            if not layer.entries[a].get("implied"):
                emit(("entry", a))
        if what == "entry" and layer.entries[p]["kind"] == "hardlink":
            emit(("entry", layer.entries[p]["link"]))
        done.add(item)
        layer.order.append(item)

    for item in items:
        emit(item)
    return layer


@st.composite
def stacks(draw) -> list[Layer]:
    n = draw(st.integers(3, 6))
    return [draw(layers(i)) for i in range(n)]


# ----- the OCI model ---------------------------------------------------------------------------------


def model_tree(stack: list[Layer]) -> dict[str, dict]:
    """The merged tree the OCI layer rules define: path -> {kind, data|target, mode, uid, gid, mtime}."""
    tree: dict[str, dict] = {}

    def drop(p: str, *, keep_self: bool = False) -> None:
        for q in [q for q in tree if q.startswith(p + "/") or (q == p and not keep_self)]:
            del tree[q]

    implied_meta = {"kind": "dir", "mode": 0o755, "uid": 0, "gid": 0, "mtime": None}
    for layer in stack:
        # Deletions act on the layers below only, before anything this layer adds.
        for d in layer.opaques:
            drop(d, keep_self=True)
        for p in layer.whiteouts:
            drop(p)
        made: set[str] = set()  # directories this layer has already put in place
        for what, p in layer.order:
            # Missing directories above an entry (and the directory of an opaque marker) are created
            # root-owned 0755, replacing any lower non-directory and topping any lower directory.
            for a in parents(p) + ([p] if what == "opaque" else []):
                if a in made:
                    continue
                made.add(a)
                old = tree.get(a)
                if old is None or old["kind"] != "dir":
                    drop(a)
                tree[a] = dict(implied_meta)
            if what != "entry":
                continue
            e = dict(layer.entries[p])
            if e["kind"] == "hardlink":
                e = dict(layer.entries[e["link"]])
            old = tree.get(p)
            if not (e["kind"] == "dir" and old is not None and old["kind"] == "dir"):
                drop(p)
            tree[p] = e
            made.add(p)
    return tree


# ----- reading the kernel mount ----------------------------------------------------------------------


def kernel_tree(mnt: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for n in dirnames + filenames:
            host = os.path.join(dirpath, n)
            rel = os.path.relpath(host, mnt)
            st_ = os.lstat(host)
            e = {"st": st_}
            if stat.S_ISDIR(st_.st_mode):
                e["kind"] = "dir"
                e["list"] = sorted(os.listdir(host))
            elif stat.S_ISLNK(st_.st_mode):
                e["kind"] = "symlink"
                e["target"] = os.readlink(host)
            elif stat.S_ISREG(st_.st_mode):
                e["kind"] = "file"
                with open(host, "rb") as f:
                    e["data"] = f.read()
            else:
                e["kind"] = "other"
            out[rel] = e
    return out


def chroot_resolve(mnt: Path, path: str, follow_last: bool) -> tuple[str, os.stat_result | int]:
    """Resolve ``path`` in the mounted tree as under chroot(mnt): ("ok", lstat of the result, host path)
    or ("err", errno)."""
    todo = deque(c for c in path.split("/") if c)
    if path.endswith("/") and todo:
        todo.append(".")
    stack: list[str] = []
    links = 0
    while todo:
        name = todo.popleft()
        if name == ".":
            continue
        if name == "..":
            if stack:
                stack.pop()
            continue
        last = not todo
        host = os.path.join(mnt, *stack, name)
        try:
            st_ = os.lstat(host)
        except FileNotFoundError:
            return ("err", errno.ENOENT)
        if stat.S_ISLNK(st_.st_mode) and (follow_last or not last):
            links += 1
            if links > 40:
                return ("err", errno.ELOOP)
            target = os.readlink(host)
            if target.startswith("/"):
                stack = []
            comps = [c for c in target.split("/") if c]
            if target.endswith("/") and comps:
                comps.append(".")  # a trailing slash: what precedes must be a directory
            todo.extendleft(reversed(comps))
            continue
        if last:
            return ("ok", (st_, host))
        if not stat.S_ISDIR(st_.st_mode):
            return ("err", errno.ENOTDIR)
        stack.append(name)
    host = os.path.join(mnt, *stack)
    return ("ok", (os.lstat(host), host))


# ----- the comparison --------------------------------------------------------------------------------


def view_tree(fs: ovlcore.ContainerFS) -> set[str]:
    seen: set[str] = set()
    todo = ["/"]
    while todo:
        d = todo.pop()
        for e in fs.scandir(d):
            rel = e.path.lstrip("/")
            seen.add(rel)
            if e.is_dir(follow_symlinks=False):
                todo.append(e.path)
    return seen


def logical(st_: os.stat_result) -> tuple:
    return (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, st_.st_mtime_ns)


def expected(m: dict, actual: os.stat_result) -> tuple:
    """The model's metadata; an implied directory's time is whenever it was made."""
    mtime = actual.st_mtime_ns if m["mtime"] is None else m["mtime"] * 10**9
    return (m["mode"], m["uid"], m["gid"], mtime)


def meta_of(st_: os.stat_result, *, with_size: bool) -> tuple:
    return (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, st_.st_mtime_ns) + ((st_.st_size,) if with_size else ())


def compare(stack: list[Layer], privilege: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="ovl-oracle-"))
    try:
        store = open_store(base / "store", privilege)
        img = None
        top = None
        for layer in stack:
            top = store.layers.apply(layer.tar(), parent=top)
            img = store.images.create(layer=top, parent=img)
        assert img is not None and top is not None
        fs = img.fs
        lowers = [layer.path for layer in reversed(img.layers)]
        assert lowers == [Path(p) for p in top.stack_paths()]
        model = model_tree(stack)
        mnt = base / "mnt"
        try:
            with overlay(lowers, mnt, userxattr=(privilege == "rootless")):
                check_mount(mnt, fs, model, privilege)
        except MountRefused as e:
            pytest.skip(str(e))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def check_mount(mnt: Path, fs: ovlcore.ContainerFS, model: dict[str, dict], privilege: str) -> None:
    native = privilege == "root"
    ktree = kernel_tree(mnt)

    # 1. the kernel shows what the OCI rules say (the import converted the layers correctly)
    assert sorted(ktree) == sorted(model), "kernel tree differs from the OCI model"
    for p, m in model.items():
        k = ktree[p]
        assert k["kind"] == m["kind"], p
        if m["kind"] == "file":
            assert k["data"] == m["data"], p
        elif m["kind"] == "symlink":
            assert k["target"] == m["target"], p
        if native and m["kind"] != "symlink":
            assert logical(k["st"]) == expected(m, k["st"]), p

    # 2. the view shows the same tree as the kernel
    assert sorted(view_tree(fs)) == sorted(ktree), "view tree differs from the kernel's"
    assert fs.listdir("/") == sorted(os.listdir(mnt))
    for p, k in ktree.items():
        cp = "/" + p
        vst = fs.lstat(cp)
        if native:
            assert meta_of(vst, with_size=k["kind"] != "dir") == meta_of(k["st"], with_size=k["kind"] != "dir"), cp
        else:
            assert stat.S_IFMT(vst.st_mode) == stat.S_IFMT(k["st"].st_mode), cp
            m = model[p]
            if m["kind"] != "symlink":  # the view reports the recorded (logical) metadata
                assert logical(vst) == expected(m, vst), cp
        if k["kind"] == "dir":
            assert fs.listdir(cp) == k["list"], cp
        elif k["kind"] == "file":
            assert fs.read_bytes(cp) == k["data"], cp
        elif k["kind"] == "symlink":
            assert fs.readlink(cp) == k["target"], cp

    # 3. path resolution (symlinks followed inside the root) agrees, including errors
    for p in sorted(set(PROBES) | set(ktree) | {f"{q}/{n}" for q in ktree for n in NAMES}):
        cp = "/" + p
        for follow in (True, False):
            want = chroot_resolve(mnt, p, follow)
            try:
                got_st = fs.stat(cp, follow_symlinks=follow)
            except OSError as e:
                assert want == ("err", e.errno), f"{cp} follow={follow}: view raised errno {e.errno}, kernel gives {want}"
                assert e.filename is not None
                continue
            assert want[0] == "ok", f"{cp} follow={follow}: view found it, kernel gives errno {want[1]}"
            kst, host = want[1]
            assert stat.S_IFMT(got_st.st_mode) == stat.S_IFMT(kst.st_mode), cp
            if native:
                assert meta_of(got_st, with_size=not stat.S_ISDIR(kst.st_mode)) == meta_of(kst, with_size=not stat.S_ISDIR(kst.st_mode)), cp
            if follow and stat.S_ISREG(kst.st_mode):
                with open(host, "rb") as f:
                    assert fs.read_bytes(cp) == f.read(), cp
            if follow and stat.S_ISDIR(kst.st_mode):
                assert fs.listdir(cp) == sorted(os.listdir(host)), cp
        # the predicates agree with the resolution
        r = chroot_resolve(mnt, p, True)
        assert fs.exists(cp) == (r[0] == "ok"), cp
        assert fs.is_dir(cp) == (r[0] == "ok" and stat.S_ISDIR(r[1][0].st_mode)), cp
        lr = chroot_resolve(mnt, p, False)
        assert fs.is_symlink(cp) == (lr[0] == "ok" and stat.S_ISLNK(lr[1][0].st_mode)), cp


# ----- tests -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stacks())
def test_random_stacks_match_the_kernel(stack):
    compare(stack, "root")


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stacks())
def test_random_stacks_match_the_kernel_rootless_convention(stack):
    # The rootless store's layers, mounted with `userxattr` (user.overlay.opaque), as rootless tools do.
    compare(stack, "rootless")


def fixed(entries: dict[str, dict] | None = None, whiteouts=(), opaques=(), order=None) -> Layer:
    layer = Layer(entries=dict(entries or {}), whiteouts=set(whiteouts), opaques=set(opaques))
    layer.order = order or (
        [("entry", p) for p in layer.entries] + [("whiteout", p) for p in whiteouts] + [("opaque", p) for p in opaques]
    )
    return layer


def D(mode=0o755):
    return {"kind": "dir", "mode": mode, "uid": 0, "gid": 0, "mtime": MTIMES[0]}


def F(data: bytes, mode=0o644):
    return {"kind": "file", "data": data, "mode": mode, "uid": 0, "gid": 0, "mtime": MTIMES[1]}


def L(target: str):
    return {"kind": "symlink", "target": target, "mode": 0o777, "uid": 0, "gid": 0, "mtime": MTIMES[2]}


@pytest.mark.parametrize("privilege", ["root", "rootless"])
def test_fixed_stack_matches_the_kernel(privilege):
    bottom = fixed({"a": D(), "a/x": F(b"ax"), "a/y": F(b"ay"), "b": F(b"b"), "c": D(), "c/a": L("/a/x"), "c/b": D(), "c/b/c": F(b"deep")})
    mid = fixed({"a": D(0o700), "a/z": F(b"az"), "b": D(), "b/a": F(b"ba"), "c": D()}, whiteouts=["a/x", "c/b"])
    top = fixed({"a": D(), "c": D(), "c/b": L("../a")}, opaques=["a"], whiteouts=["b"])
    compare([bottom, mid, top], privilege)


@pytest.mark.parametrize("privilege", ["root", "rootless"])
def test_whiteout_and_readd_in_one_layer_matches_the_kernel(privilege):
    bottom = fixed({"a": D(), "a/old": F(b"old"), "b": F(b"b")})
    # `.wh.a` then `a/` + `a/new` (and the reverse for b): the lower entry is hidden, this layer's kept.
    top = fixed(
        {"a": D(), "a/new": F(b"new"), "b": F(b"new b")},
        whiteouts=["a", "b"],
        order=[("whiteout", "a"), ("entry", "a"), ("entry", "a/new"), ("entry", "b"), ("whiteout", "b")],
    )
    compare([bottom, fixed({"c": F(b"c")}), top], privilege)


@pytest.mark.parametrize("privilege", ["root", "rootless"])
def test_single_layer_matches_the_kernel(privilege):
    only = fixed({"a": D(), "a/b": F(b"x"), "l": L("a/b"), "m": L("/a")})
    compare([only], privilege)


@pytest.mark.parametrize("privilege", ["root"])
def test_symlink_targets_with_trailing_slashes_match_the_kernel(privilege):
    # A trailing slash in a target requires a directory: `l -> f/` with f a file is ENOTDIR.
    only = fixed({"f": F(b"file"), "d": D(), "d/x": F(b"x"), "lf": L("f/"), "ld": L("d/"), "labs": L("/f/"),
                  "ldot": L("f/."), "lchain": L("lf"), "ldd": L("/d//")})
    compare([only, fixed({"g": F(b"g")})], privilege)
