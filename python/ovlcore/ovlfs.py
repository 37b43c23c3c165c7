"""``ovl://``: ovlcore's containers and images as an `fsspec <https://filesystem-spec.readthedocs.io>`_ file
system, for pandas, pyarrow, dask and the rest of the Python data ecosystem::

    fs = fsspec.filesystem("ovl", root="/path/to/store")
    fs.ls("ovl://web/etc")
    pandas.read_csv("ovl://app:1/srv/data.csv", storage_options={"root": "/path/to/store"})

A thin adaptor over :class:`ovlcore.fs.ContainerFS` (the one union view): every read and write goes through
it, so copy-up, whiteouts, mounts and symlink containment are the view's. Needs the ``fsspec`` extra
(``pip install 'ovlcore[fsspec]'``); ``import ovlcore`` does not import this module or fsspec.

Paths: ``ovl://NAME/path``, ``NAME/path`` and ``/NAME/path`` are the same. ``NAME`` is looked up first as
a container (name, full id or unique id prefix), then as an image (``name:tag``, ``name`` for
``name:latest``, ``sha256:<id>``, unique id prefix): on ambiguity **the container wins**. An image whose
reference has a ``/`` in it (``127.0.0.1:5000/team/app:1``) is reached by writing the whole reference as the
leading components (``ovl://127.0.0.1:5000/team/app:1/etc/hostname``) when no container or image matches the
first component alone. The root (``ovl://``) lists containers by name and images by tag (an image with no
tag usable as one component: ``sha256:<short id>``).

Images are read-only: writes raise ``PermissionError`` (``EROFS``). Unknown names raise
``FileNotFoundError``. Writes to a container land in its writable layer (copy-up first) and show in
:meth:`ovlcore.Container.diff`. Containers and images themselves are not made or removed through here.

``ls``/``info`` details: ``name``, ``size``, ``type`` (``"file"``, ``"directory"``, ``"other"`` for devices,
fifos and sockets; a symlink has its target's type and size, as fsspec's local file system reports, and
``"link"`` when it does not resolve), ``islink``, ``destination`` (a symlink's target as stored), ``mode``,
``uid``, ``gid``, ``mtime``, ``ino``, ``nlink``. ``walk``/``find`` do not enter symlinked directories
(as :func:`os.walk`): a link to ``/`` cannot make a walk endless.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import io
import os
import secrets
import stat
from collections.abc import Iterator
from typing import IO, Any

try:
    from fsspec.callbacks import DEFAULT_CALLBACK, Callback
    from fsspec.spec import AbstractFileSystem
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("ovl:// needs fsspec: pip install 'ovlcore[fsspec]'") from e

from .containers import Container
from .errors import AmbiguousReference, InvalidReference, NotFound
from .fs import ContainerFS
from .images import Image
from .store import Store

__all__ = ["OvlFileSystem"]

# The most leading components an image reference with `/` may take (host/namespace/repo:tag).
_MAX_REF_COMPONENTS = 5


class _Target:
    """What the first path component(s) named: a container or an image, with its file system."""

    __slots__ = ("top", "obj", "fs")

    def __init__(self, top: str, obj: Container | Image, fs: ContainerFS) -> None:
        self.top = top
        self.obj = obj
        self.fs = fs

    def name(self, rel: str) -> str:
        """The fsspec name of the container path ``rel``."""
        return self.top if rel == "/" else self.top + rel


class OvlFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec has no type hints
    """fsspec's ``AbstractFileSystem`` over an ovlcore store's containers and images (see the module)."""

    protocol = ("ovl",)
    root_marker = ""

    def __init__(self, root: str | os.PathLike[str] | None = None, auto_mkdir: bool = False, **storage_options: Any) -> None:
        """``root``: the store's root (``None``: the default, as ``ovlcore.Store()``). ``auto_mkdir``: writing
        a file creates its missing parent directories (as fsspec's local file system with that option)."""
        super().__init__(root=root, auto_mkdir=auto_mkdir, **storage_options)
        self.store = Store(root)
        self.auto_mkdir = auto_mkdir
        # By id, so each keeps its view (the layer stack opened once) across calls. Names are looked up on
        # every call: a container or tag may be removed, renamed or moved meanwhile; ids never change meaning.
        self._containers: dict[str, Container] = {}
        self._images: dict[str, Image] = {}

    # ----- paths -----

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        p = os.fspath(path)
        if p.startswith("ovl://"):
            p = p[len("ovl://") :]
        return p.strip("/")

    @property
    def fsid(self) -> str:
        """One store, one file system (fsspec compares these to decide whether a copy stays inside)."""
        return f"ovl:{self.store.root}"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return "ovl://" + str(self._strip_protocol(name))

    def _lookup(self, ref: str) -> _Target | None:
        """The container, else the image, ``ref`` names; ``None`` when neither."""
        try:
            c = self.store.containers.get(ref)
        except AmbiguousReference:
            raise
        except (NotFound, InvalidReference):
            pass
        else:
            c = self._containers.setdefault(c.id, c)
            return _Target(ref, c, c.fs)
        try:
            img = self.store.images.get(ref)
        except AmbiguousReference:
            raise
        except (NotFound, InvalidReference):
            return None
        img = self._images.setdefault(img.id, img)
        return _Target(ref, img, img.fs)

    def _locate(self, path: Any) -> tuple[_Target, str]:
        """The target and the container path (absolute) of an fsspec path."""
        p = self._strip_protocol(path)
        parts = p.split("/")
        if not p:
            raise IsADirectoryError(errno.EISDIR, "the root of ovl:// lists containers and images", "ovl://")
        t = self._lookup(parts[0])
        k = 1
        if t is None:
            for k in range(2, min(len(parts), _MAX_REF_COMPONENTS) + 1):
                t = self._lookup("/".join(parts[:k])) if ":" in parts[k - 1] or "@" in parts[k - 1] else None
                if t is not None:
                    break
        if t is None:
            raise FileNotFoundError(errno.ENOENT, f"no container or image named {parts[0]!r} in the store {self.store.root}", p)
        return t, "/" + "/".join(parts[k:])

    def _writable(self, path: Any) -> tuple[_Target, str]:
        """As :meth:`_locate`, refusing images."""
        t, rel = self._locate(path)
        t.fs.check_writable(rel)
        return t, rel

    def _new_file(self, path: Any) -> tuple[_Target, str]:
        """As :meth:`_writable`, for a file about to be written: its parents made first with ``auto_mkdir``."""
        t, rel = self._writable(path)
        if rel == "/":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", t.top)
        if self.auto_mkdir:
            t.fs.makedirs(rel.rsplit("/", 1)[0] or "/", exist_ok=True)
        return t, rel

    # ----- details -----

    def _info(self, t: _Target, rel: str, st: os.stat_result, name: str | None = None) -> dict[str, Any]:
        """fsspec's details of the entry at ``rel`` whose ``lstat`` is ``st`` (``name``: as listed)."""
        mode = st.st_mode
        kind = _TYPES.get(stat.S_IFMT(mode), "other")
        out = {
            "name": t.name(rel) if name is None else name,
            "size": 0 if kind == "directory" else st.st_size,  # a directory's st_size says nothing in a union
            "type": kind,
            "islink": False,
            "mode": mode,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
        }
        if kind == "link":
            out["islink"] = True
            out["destination"] = t.fs.readlink(rel)
            try:
                target = t.fs.stat(rel)
            except OSError:
                pass  # dangling, a loop, or a component that is not a directory: type "link"
            else:
                out["type"] = kind = _TYPES.get(stat.S_IFMT(target.st_mode), "other")
                out["size"] = 0 if kind == "directory" else target.st_size
        return out

    def _root_listing(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for img in self.store.images.list():
            names = [tag for tag in img.tags if "/" not in tag] or [f"sha256:{img.short_id}"]
            for n in names:
                out[n] = {"name": n, "size": 0, "type": "directory", "image": img.id}
        for c in self.store.containers.list():
            out[c.name] = {"name": c.name, "size": 0, "type": "directory", "container": c.id}
        return [out[k] for k in sorted(out)]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        p = self._strip_protocol(path)
        if not p:
            entries = self._root_listing()
        else:
            t, rel = self._locate(p)
            st = t.fs.stat(rel)
            if stat.S_ISDIR(st.st_mode):
                # Named under the path as given (a symlinked directory lists under its own name).
                base = rel.rstrip("/") + "/"
                entries = [self._info(t, base + n, lst, f"{p}/{n}") for n, lst in t.fs.scandir_stat(rel)]
            else:
                entries = [self._info(t, rel, t.fs.lstat(rel), p)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        p = self._strip_protocol(path)
        if not p:
            return {"name": "", "size": 0, "type": "directory"}
        t, rel = self._locate(p)
        out = self._info(t, rel, t.fs.lstat(rel), p)
        if rel == "/":
            out["container" if isinstance(t.obj, Container) else "image"] = t.obj.id
        return out

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        return True

    def walk(
        self, path: str, maxdepth: int | None = None, topdown: bool = True, on_error: Any = "omit", **kwargs: Any
    ) -> Iterator[tuple[str, Any, Any]]:
        """As fsspec's ``walk`` (``detail=True`` gives info dicts), one listing with details per directory;
        a symlinked directory is listed with the directories but not entered (as :func:`os.walk`)."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        p = self._strip_protocol(path)
        detail = kwargs.pop("detail", False)
        try:
            listing = self.ls(p, detail=True)
        except OSError as e:
            if on_error == "raise":
                raise
            if callable(on_error):
                on_error(e)
            return
        dirs: dict[str, Any] = {}
        files: dict[str, Any] = {}
        for info in listing:
            if info["name"] == p:  # `p` is a file: fsspec reports it under the name ""
                files[""] = info
            elif info["type"] == "directory":
                dirs[info["name"].rsplit("/", 1)[-1]] = info
            else:
                files[info["name"].rsplit("/", 1)[-1]] = info
        listed = (dirs, files) if detail else (list(dirs), list(files))
        if topdown:
            yield p, *listed
        if maxdepth is None or maxdepth > 1:
            below = None if maxdepth is None else maxdepth - 1
            # Top-down, the caller may have pruned the directory list in place.
            for d in list(listed[0]):
                if d in dirs and not dirs[d].get("islink"):
                    yield from self.walk(dirs[d]["name"], maxdepth=below, topdown=topdown, on_error=on_error, detail=detail)
        if not topdown:
            yield p, *listed

    # ----- reading -----

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | str | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> IO[bytes] | _StagedFile:
        """A real file object from the view: reads seek freely (the file descriptor is the layer's file);
        writes copy an image file up first and go to the writable layer."""
        # fsspec callers may pass block_size="default" or 0: the usual buffer then.
        buffering = block_size if isinstance(block_size, int) and block_size > 0 else io.DEFAULT_BUFFER_SIZE
        if "r" in mode and "+" not in mode:
            t, rel = self._locate(path)
            return _Reader(t.fs.open(rel, "rb", buffering=0), buffering, t.name(rel))
        t, rel = self._new_file(path)
        if autocommit:
            return t.fs.open(rel, mode, buffering)
        if mode not in ("wb", "xb"):
            raise NotImplementedError(f"ovl:// transactions write whole files (mode 'wb' or 'xb'), not {mode!r}")
        if mode == "xb" and t.fs.lexists(rel):
            raise FileExistsError(errno.EEXIST, "File exists", rel)
        parent, base = rel.rsplit("/", 1)
        staging = f"{parent}/.{base}.ovl-{secrets.token_hex(6)}"
        return _StagedFile(t.fs, staging, rel, t.fs.open(staging, "xb", buffering))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """The bytes ``[start, end)`` (negative: from the end), read with ``pread`` at that offset."""
        t, rel = self._locate(path)
        with t.fs.open(rel, "rb", buffering=0) as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            lo = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
            hi = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
            chunks: list[bytes] = []
            while lo < hi:
                chunk = os.pread(fd, hi - lo, lo)
                if not chunk:
                    break
                chunks.append(chunk)
                lo += len(chunk)
        return b"".join(chunks)

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.timezone.utc)

    def created(self, path: str) -> datetime.datetime:
        """When the container or image was created, for its root; layers record no birth time of files."""
        t, rel = self._locate(path)
        if rel != "/":
            raise NotImplementedError("ovl:// files have no creation time (layers keep mtime and ctime only)")
        return t.obj.created

    def ukey(self, path: str) -> str:
        """Changes when the file does: which container or image, the entry (its inode changes on copy-up),
        size, mode and mtime."""
        t, rel = self._locate(path)
        st = t.fs.stat(rel)
        key = (t.obj.id, rel, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns)
        return hashlib.sha256(repr(key).encode()).hexdigest()

    def get_file(
        self, rpath: str, lpath: Any, callback: Callback = DEFAULT_CALLBACK, outfile: Any = None, **kwargs: Any
    ) -> None:
        """Copy one file to the host with the core's ``cp`` (symlinks followed, mode kept, owner the caller)."""
        if outfile is not None or not isinstance(lpath, (str, os.PathLike)):
            super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
            return
        t, rel = self._locate(rpath)
        host = os.path.abspath(os.fspath(lpath))
        if t.fs.is_dir(rel):
            os.makedirs(host, exist_ok=True)
            return
        os.makedirs(os.path.dirname(host), exist_ok=True)
        callback.set_size(t.fs.stat(rel).st_size)
        done = t.fs.view.copy_out(rel, os.path.dirname(host), os.path.basename(host), follow_symlinks=True)
        callback.relative_update(done)

    # ----- writing (containers) -----

    def put_file(
        self, lpath: Any, rpath: str, callback: Callback = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        """Copy one host file into a container with the core's ``cp`` (host symlinks followed)."""
        t, rel = self._writable(rpath)
        if mode == "create" and t.fs.lexists(rel):
            raise FileExistsError(errno.EEXIST, "File exists", self._strip_protocol(rpath))
        host = os.path.abspath(os.fspath(lpath))
        if os.path.isdir(host):
            t.fs.makedirs(rel, exist_ok=True)
            return
        t.fs.makedirs(rel.rsplit("/", 1)[0] or "/", exist_ok=True)
        callback.set_size(os.path.getsize(host))
        done = t.fs.view.copy_in(os.path.dirname(host), os.path.basename(host), rel, follow_symlinks=True)
        callback.relative_update(done)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        t, rel = self._new_file(path)
        with t.fs.open(rel, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        """Create an empty file, or truncate it; ``truncate=False`` on an existing one sets its times to now."""
        t, rel = self._new_file(path)
        if truncate or not t.fs.lexists(rel):
            t.fs.open(rel, "wb").close()
        else:
            t.fs.utime(rel)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        t, rel = self._writable(path)
        if t.fs.lexists(rel):
            raise FileExistsError(errno.EEXIST, "File exists", self._strip_protocol(path))
        t.fs.mkdir(rel, parents=create_parents)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        t, rel = self._writable(path)
        if rel == "/":
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, "File exists", self._strip_protocol(path))
            return
        t.fs.makedirs(rel, exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        t, rel = self._writable(path)
        _not_root(t, rel)
        t.fs.rmdir(rel)

    def rm_file(self, path: str) -> None:
        t, rel = self._writable(path)
        _not_root(t, rel)
        if stat.S_ISDIR(t.fs.lstat(rel).st_mode):
            t.fs.rmdir(rel)
        else:
            t.fs.remove(rel)

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files, and with ``recursive`` directory trees (one whiteout for a tree from the image).
        Globs expand; without ``recursive`` a directory must be empty."""
        if maxdepth is not None:
            super().rm(path, recursive=recursive, maxdepth=maxdepth)
            return
        paths = path if isinstance(path, list) else [path]
        expanded: list[str] = []
        for p in paths:
            if isinstance(p, str) and any(c in p for c in "*?["):
                expanded += self.expand_path(p, recursive=False)
            else:
                expanded.append(self._strip_protocol(p))
        for p in expanded:
            t, rel = self._writable(p)
            _not_root(t, rel)
            if recursive and stat.S_ISDIR(t.fs.lstat(rel).st_mode):
                t.fs.rmtree(rel)
            else:
                self.rm_file(p)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy a file (from any container or image into a container): the kernel copies the bytes."""
        src, srel = self._locate(path1)
        if src.fs.is_dir(srel):
            dst, drel = self._writable(path2)
            dst.fs.makedirs(drel, exist_ok=True)
            return
        dst, drel = self._new_file(path2)
        with src.fs.open(srel, "rb", buffering=0) as fin, dst.fs.open(drel, "wb", buffering=0) as fout:
            _copy_fd(fin.fileno(), fout.fileno())

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        """Rename inside one container (directories from the image too); otherwise copy, then delete. As
        ``shutil.move``, a destination that is an existing directory receives the source inside it."""
        single = isinstance(path1, str) and isinstance(path2, str) and not any(c in path1 for c in "*?[")
        if single:
            src, srel = self._writable(path1)
            dst, drel = self._writable(path2)
            if src.obj.id == dst.obj.id and isinstance(src.obj, Container):
                _not_root(src, srel)
                if srel != drel and dst.fs.is_dir(drel):
                    drel = drel.rstrip("/") + "/" + srel.rsplit("/", 1)[-1]
                if srel != drel:
                    src.fs.rename(srel, drel)
                return
        super().mv(path1, path2, recursive=recursive or single, maxdepth=maxdepth, **kwargs)


# fsspec's entry types; "link" is only kept for a symlink that does not resolve (see the module).
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "link"}


def _not_root(t: _Target, rel: str) -> None:
    if rel == "/":
        raise PermissionError(errno.EPERM, f"{t.top} is a container's root: remove containers with the store's API", t.top)


def _copy_fd(src: int, dst: int) -> None:
    """Copy a whole file between descriptors in the kernel (``copy_file_range``, reflinks where the file
    system has them); ``sendfile`` where the kernel refuses that pair."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        offset = os.lseek(dst, 0, os.SEEK_CUR)
        os.lseek(src, offset, os.SEEK_SET)
        while os.sendfile(dst, src, None, 1 << 30):
            pass


class _Reader(io.BufferedReader):
    """The view's file, buffered, with what fsspec's readers look for on a file: ``size`` and ``path``."""

    def __init__(self, raw: Any, buffer_size: int, path: str) -> None:
        super().__init__(raw, buffer_size)
        self.path = path

    @property
    def size(self) -> int:
        return os.fstat(self.fileno()).st_size


class _StagedFile(io.RawIOBase):
    """A file written under a staging name (``.NAME.ovl-XXXX`` beside it) in the writable layer, renamed into
    place on ``commit`` (fsspec transactions) and removed on ``discard``."""

    def __init__(self, fs: ContainerFS, staging: str, final: str, f: IO[bytes]) -> None:
        super().__init__()
        self.fs, self.staging, self.final, self.file = fs, staging, final, f

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        self.file.close()
        super().close()

    def commit(self) -> None:
        self.close()
        self.fs.rename(self.staging, self.final)

    def discard(self) -> None:
        self.close()
        self.fs.remove(self.staging)
