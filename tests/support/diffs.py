"""``docker diff`` computed from two merged-tree descriptions (SEMANTICS.md; moby's naive ``ChangesDirs``),
the oracle that ``Container.diff()`` is checked against."""

from __future__ import annotations

import os

import ovlcore

from .trees import Node


def _stat_differs(old: Node, new: Node) -> bool:
    if (old.kind, old.mode, old.uid, old.gid, old.rdev) != (new.kind, new.mode, new.uid, new.gid, new.rdev):
        return True
    if new.kind != "dir" and (old.mtime_ns != new.mtime_ns or old.size != new.size):
        return True
    return False


def expected_diff(image: dict[str, Node], container: dict[str, Node]) -> list[tuple[str, str]]:
    """``docker diff`` of two tree descriptions (both rooted at ``/``), computed like moby's
    ``ChangesDirs`` (``FileInfo.addChanges``): sorted by path."""
    out: list[tuple[str, str]] = []

    def add_changes(path: str, new: Node, old: Node | None, added: bool) -> None:
        start = len(out)
        if old is None:
            out.append(("A", path))
            added = True
        # only recurse on the old directory if the new entry is a directory too
        old_children = set(old.children or ()) if (old is not None and new.kind == "dir") else set()
        for name in new.children or ():
            cp = path.rstrip("/") + "/" + name
            oc = image[cp] if name in old_children else None
            child_added = False
            if oc is not None:
                if _stat_differs(oc, container[cp]):
                    out.append(("C", cp))
                    child_added = True
                old_children.discard(name)
            add_changes(cp, container[cp], oc, child_added)
        for name in sorted(old_children):
            out.append(("D", path.rstrip("/") + "/" + name))
        if len(out) > start and new.kind == "dir" and not added and path != "/":
            out.insert(start, ("C", path))

    add_changes("/", container["/"], image["/"], False)
    return sorted(out, key=lambda kp: kp[1])


def diff_pairs(container: ovlcore.Container) -> list[tuple[str, str]]:
    return [(ch.kind, ch.path) for ch in container.diff()]


def assert_parents_first(changes: list[tuple[str, str]]) -> None:
    """Each directory before its children, and no path twice."""
    paths = [p for _, p in changes]
    assert len(paths) == len(set(paths)), f"a path is listed twice: {paths}"
    index = {p: i for i, p in enumerate(paths)}
    for p in paths:
        anc = os.path.dirname(p)
        while anc != "/":
            if anc in index:
                assert index[anc] < index[p], f"{anc} listed after its descendant {p}"
            anc = os.path.dirname(anc)
