//! `View`: the merged (union) file system of an image or container, read side.

use std::borrow::Cow;
use std::ffi::{CString, OsString};
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ovlcore_core::{copy_in, copy_out, dir_usage, put_archive, CopyOptions, Kind, LayerTar, Lower, Meta, MountPoint, Owner, Privilege, Upper, View as CoreView};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use rustix::fs::OFlags;

use crate::errors::IntoPy;
use crate::io::{Progress, Source};
use crate::layers::TarStream;

/// A path in a container or an image, as the `View` methods take one: a `str` or an `os.PathLike`
/// giving one, relative paths taken from `/`. A `str` that is valid UTF-8 is used as it is (no copy: a
/// cached lookup costs little more than the conversion); one carrying undecodable bytes (as
/// `os.fsdecode` gives them back) and path-like objects go through `os.fspath` and the file-system
/// encoding.
pub struct ViewPath<'a>(Cow<'a, Path>);

impl<'a> FromPyObject<'a, '_> for ViewPath<'a> {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, '_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = <&'a str>::extract(ob) {
            return Ok(ViewPath::rooted(Cow::Borrowed(Path::new(s))));
        }
        let py = ob.py();
        static FSPATH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let p = FSPATH.import(py, "os", "fspath")?.call1((ob,))?;
        if !p.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(format!("container paths are str, not {}", p.get_type().name()?)));
        }
        Ok(ViewPath::rooted(Cow::Owned(p.extract::<PathBuf>()?)))
    }
}

impl ViewPath<'_> {
    fn rooted(p: Cow<'_, Path>) -> ViewPath<'_> {
        if p.as_os_str().as_bytes().starts_with(b"/") {
            ViewPath(p)
        } else {
            ViewPath(Cow::Owned(Path::new("/").join(p)))
        }
    }
}

impl std::ops::Deref for ViewPath<'_> {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

/// The container path `path` names (as the `View` methods take it), as a `str`.
#[pyfunction]
pub fn container_path(path: ViewPath<'_>) -> OsString {
    path.0.into_owned().into_os_string()
}

pub fn parse_privilege(s: &str) -> PyResult<Privilege> {
    match s {
        "root" => Ok(Privilege::Root),
        "rootless" => Ok(Privilege::Rootless),
        _ => Err(PyValueError::new_err(format!("unknown privilege {s:?}"))),
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::Char => "char",
        Kind::Block => "block",
    }
}

/// An `os.stat_result` from core metadata.
pub fn stat_result<'py>(py: Python<'py>, m: &Meta) -> PyResult<Bound<'py, PyAny>> {
    static STAT_RESULT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let cls = STAT_RESULT.import(py, "os", "stat_result")?;
    // Nanoseconds as an i64 where they fit (until 2262): a 128-bit integer converts ten times slower.
    let ns = |s: (i64, u32)| -> PyResult<Bound<'py, PyAny>> {
        match s.0.checked_mul(1_000_000_000).and_then(|n| n.checked_add(s.1 as i64)) {
            Some(n) => Ok(n.into_pyobject(py)?.into_any()),
            None => Ok((s.0 as i128 * 1_000_000_000 + s.1 as i128).into_pyobject(py)?.into_any()),
        }
    };
    let t = |s: (i64, u32)| -> PyResult<_> { Ok((s.0, s.0 as f64 + s.1 as f64 * 1e-9, ns(s)?)) };
    let (a, m_, c) = (t(m.atime)?, t(m.mtime)?, t(m.ctime)?);
    let fields = [
        m.mode.into_pyobject(py)?.into_any(),
        m.ino.into_pyobject(py)?.into_any(),
        m.dev.into_pyobject(py)?.into_any(),
        m.nlink.into_pyobject(py)?.into_any(),
        m.uid.into_pyobject(py)?.into_any(),
        m.gid.into_pyobject(py)?.into_any(),
        m.size.into_pyobject(py)?.into_any(),
        a.0.into_pyobject(py)?.into_any(),
        m_.0.into_pyobject(py)?.into_any(),
        c.0.into_pyobject(py)?.into_any(),
        a.1.into_pyobject(py)?.into_any(),
        m_.1.into_pyobject(py)?.into_any(),
        c.1.into_pyobject(py)?.into_any(),
        a.2,
        m_.2,
        c.2,
        m.blksize.into_pyobject(py)?.into_any(),
        m.blocks.into_pyobject(py)?.into_any(),
        m.rdev.into_pyobject(py)?.into_any(),
    ];
    // Filled in place, as os.stat does, where the type has exactly these fields (a call of the type
    // with a tuple costs about as much again as the rest of a stat).
    static FILLABLE: PyOnceLock<bool> = PyOnceLock::new();
    let fillable = *FILLABLE.get_or_init(py, || cls.getattr("n_fields").and_then(|n| n.extract::<usize>()).is_ok_and(|n| n == 19));
    if !fillable {
        return cls.call1((PyTuple::new(py, fields)?,));
    }
    // SAFETY: `cls` is a struct sequence type of 19 fields (checked above); each field is set once with
    // a new reference, which PyStructSequence_SetItem steals.
    unsafe {
        let obj = pyo3::ffi::PyStructSequence_New(cls.as_type_ptr());
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (i, f) in fields.into_iter().enumerate() {
            pyo3::ffi::PyStructSequence_SetItem(obj, i as pyo3::ffi::Py_ssize_t, f.into_ptr());
        }
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

/// The merged view of a layer stack, an optional writable layer and mounts.
#[pyclass(module = "ovlcore._ovlcore", frozen)]
pub struct View {
    pub inner: Arc<CoreView>,
}

#[pymethods]
impl View {
    /// `lower`: layer content directories, top first; `upper`: the writable layer; `mounts`:
    /// `(target, source, read_only)` with absolute container targets and host sources.
    /// `scratch`: a directory on the writable layer's file system for building copies; `shared`: the file
    /// listing inodes shared with committed layers.
    #[new]
    #[pyo3(signature = (lower, upper=None, *, scratch=None, shared=None, privilege="root", mounts=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
        scratch: Option<PathBuf>,
        shared: Option<PathBuf>,
        privilege: &str,
        mounts: Vec<(PathBuf, PathBuf, bool)>,
    ) -> PyResult<Self> {
        let privilege = parse_privilege(privilege)?;
        if upper.is_some() && scratch.is_none() {
            return Err(PyValueError::new_err("a writable layer needs a scratch directory"));
        }
        py.detach(|| {
            let lower = Lower::shared(&lower, privilege)?;
            let mut points = Vec::with_capacity(mounts.len());
            for (target, source, ro) in &mounts {
                points.push(MountPoint::new(target, source, *ro)?);
            }
            let upper = match (&upper, &scratch) {
                (Some(u), Some(s)) => Some(Upper::open(u, s, shared.as_deref())?),
                _ => None,
            };
            Ok(View { inner: Arc::new(CoreView::new(lower, upper, points)?) })
        })
        .py()
    }

    #[pyo3(signature = (path, follow_symlinks=true))]
    fn stat<'py>(&self, py: Python<'py>, path: ViewPath<'_>, follow_symlinks: bool) -> PyResult<Bound<'py, PyAny>> {
        let m = py.detach(|| self.inner.stat(&path, follow_symlinks)).py()?;
        stat_result(py, &m)
    }

    /// The kind of entry at `path` (`"file"`, `"dir"`, ...) or `None` when nothing is there.
    #[pyo3(signature = (path, follow_symlinks=true))]
    fn kind(&self, py: Python<'_>, path: ViewPath<'_>, follow_symlinks: bool) -> PyResult<Option<&'static str>> {
        py.detach(|| match self.inner.resolve(&path, follow_symlinks) {
            Ok(r) => Ok(r.kind().map(kind_name)),
            Err(e) if e.is_errno(libc::ENOENT) || e.is_errno(libc::ENOTDIR) || e.is_errno(libc::ELOOP) => Ok(None),
            Err(e) => Err(e),
        })
        .py()
    }

    fn listdir(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<Vec<OsString>> {
        let entries = py.detach(|| self.inner.list(&path)).py()?;
        Ok(entries.into_iter().map(|(n, _)| n).collect())
    }

    /// `(name, kind)` pairs of a directory, sorted by name.
    fn scandir(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<Vec<(OsString, &'static str)>> {
        let entries = py.detach(|| self.inner.list(&path)).py()?;
        Ok(entries.into_iter().map(|(n, k)| (n, kind_name(k))).collect())
    }

    /// `(name, stat_result)` of every entry of a directory (a final symlink not followed), sorted by name.
    fn scandir_stat<'py>(&self, py: Python<'py>, path: ViewPath<'_>) -> PyResult<Vec<(OsString, Bound<'py, PyAny>)>> {
        let entries = py.detach(|| self.inner.list_meta(&path)).py()?;
        entries.iter().map(|(n, m)| Ok((n.clone(), stat_result(py, m)?))).collect()
    }

    /// The path with symlinks resolved inside the container's root (the missing rest kept as written).
    fn canonical(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<OsString> {
        Ok(py.detach(|| self.inner.canonical(&path)).py()?.into_os_string())
    }

    fn readlink(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<OsString> {
        py.detach(|| self.inner.readlink(&path)).py()
    }

    /// Open an existing entry read-only; returns a file descriptor the caller owns.
    #[pyo3(signature = (path, follow_symlinks=true))]
    fn open_read(&self, py: Python<'_>, path: ViewPath<'_>, follow_symlinks: bool) -> PyResult<i32> {
        let extra = if follow_symlinks { OFlags::empty() } else { OFlags::NOFOLLOW };
        let fd = py.detach(|| self.inner.open_read(&path, extra)).py()?;
        Ok(fd.into_raw_fd())
    }

    #[pyo3(signature = (path, attribute, follow_symlinks=true))]
    fn getxattr<'py>(&self, py: Python<'py>, path: ViewPath<'_>, attribute: &str, follow_symlinks: bool) -> PyResult<Bound<'py, PyBytes>> {
        let attr = CString::new(attribute).map_err(|_| PyValueError::new_err("xattr name contains NUL"))?;
        let v = py.detach(|| self.inner.getxattr(&path, &attr, follow_symlinks)).py()?;
        match v {
            Some(v) => Ok(PyBytes::new(py, &v)),
            None => Err(pyo3::exceptions::PyOSError::new_err((libc::ENODATA, "No data available", path.as_os_str().to_os_string()))),
        }
    }

    #[pyo3(signature = (path, follow_symlinks=true))]
    fn listxattr(&self, py: Python<'_>, path: ViewPath<'_>, follow_symlinks: bool) -> PyResult<Vec<String>> {
        let names = py.detach(|| self.inner.listxattr(&path, follow_symlinks)).py()?;
        Ok(names.into_iter().map(|n| String::from_utf8_lossy(&n).into_owned()).collect())
    }

    // ----- writes (containers) -----

    /// Open for writing with `os.open` flags; returns a descriptor the caller owns.
    fn open_write(&self, py: Python<'_>, path: ViewPath<'_>, flags: i32, mode: u32) -> PyResult<i32> {
        let flags = OFlags::from_bits_retain(flags as u32);
        let fd = py.detach(|| self.inner.open_write(&path, flags, mode)).py()?;
        Ok(fd.into_raw_fd())
    }

    fn mkdir(&self, py: Python<'_>, path: ViewPath<'_>, mode: u32) -> PyResult<()> {
        py.detach(|| self.inner.mkdir(&path, mode)).py()
    }

    fn symlink(&self, py: Python<'_>, target: OsString, path: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.symlink(&target, &path)).py()
    }

    fn link(&self, py: Python<'_>, src: ViewPath<'_>, dst: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.link(&src, &dst)).py()
    }

    fn remove(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.remove(&path)).py()
    }

    fn rmdir(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.rmdir(&path)).py()
    }

    fn rmtree(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.rmtree(&path)).py()
    }

    fn rename(&self, py: Python<'_>, src: ViewPath<'_>, dst: ViewPath<'_>) -> PyResult<()> {
        py.detach(|| self.inner.rename(&src, &dst)).py()
    }

    #[pyo3(signature = (path, mode, follow_symlinks=true))]
    fn chmod(&self, py: Python<'_>, path: ViewPath<'_>, mode: u32, follow_symlinks: bool) -> PyResult<()> {
        py.detach(|| self.inner.chmod(&path, mode, follow_symlinks)).py()
    }

    /// `-1` keeps the current uid or gid.
    #[pyo3(signature = (path, uid, gid, follow_symlinks=true))]
    fn chown(&self, py: Python<'_>, path: ViewPath<'_>, uid: i64, gid: i64, follow_symlinks: bool) -> PyResult<()> {
        let id = |v: i64| if v < 0 { None } else { Some(v as u32) };
        py.detach(|| self.inner.chown(&path, id(uid), id(gid), follow_symlinks)).py()
    }

    /// `ns`: (atime_ns, mtime_ns), or None for now.
    #[pyo3(signature = (path, ns=None, follow_symlinks=true))]
    fn utime(&self, py: Python<'_>, path: ViewPath<'_>, ns: Option<(i128, i128)>, follow_symlinks: bool) -> PyResult<()> {
        let ts = |n: i128| rustix::fs::Timespec { tv_sec: n.div_euclid(1_000_000_000) as i64, tv_nsec: n.rem_euclid(1_000_000_000) as _ };
        let times = ns.map(|(a, m)| rustix::fs::Timestamps { last_access: ts(a), last_modification: ts(m) });
        py.detach(|| self.inner.utime(&path, times, follow_symlinks)).py()
    }

    fn truncate(&self, py: Python<'_>, path: ViewPath<'_>, size: u64) -> PyResult<()> {
        py.detach(|| self.inner.truncate(&path, size)).py()
    }

    #[pyo3(signature = (path, attribute, value, flags=0, follow_symlinks=true))]
    fn setxattr(&self, py: Python<'_>, path: ViewPath<'_>, attribute: &str, value: Vec<u8>, flags: i32, follow_symlinks: bool) -> PyResult<()> {
        let attr = CString::new(attribute).map_err(|_| PyValueError::new_err("xattr name contains NUL"))?;
        py.detach(|| self.inner.setxattr(&path, &attr, &value, flags, follow_symlinks)).py()
    }

    #[pyo3(signature = (path, attribute, follow_symlinks=true))]
    fn removexattr(&self, py: Python<'_>, path: ViewPath<'_>, attribute: &str, follow_symlinks: bool) -> PyResult<()> {
        let attr = CString::new(attribute).map_err(|_| PyValueError::new_err("xattr name contains NUL"))?;
        py.detach(|| self.inner.removexattr(&path, &attr, follow_symlinks)).py()
    }

    /// `kind`: "fifo", "char" or "block".
    #[pyo3(signature = (path, kind, mode=0o644, device=0))]
    fn mknod(&self, py: Python<'_>, path: ViewPath<'_>, kind: &str, mode: u32, device: u64) -> PyResult<()> {
        let k = match kind {
            "fifo" => Kind::Fifo,
            "char" => Kind::Char,
            "block" => Kind::Block,
            _ => return Err(PyValueError::new_err(format!("mknod kind must be fifo, char or block, not {kind:?}"))),
        };
        py.detach(|| self.inner.mknod(&path, k, mode, device)).py()
    }

    // ----- the container's changes -----

    /// `docker diff`: `(kind, path)` pairs, kind one of "A", "C", "D", parents first.
    fn diff(&self, py: Python<'_>) -> PyResult<Vec<(char, OsString)>> {
        let changes = py.detach(|| self.inner.diff()).py()?;
        Ok(changes.into_iter().map(|(k, p)| (k.letter(), p.into_os_string())).collect())
    }

    /// Build the layer holding this view's writable layer into the empty directory `dest`.
    /// Returns `(diff_id, tar_size, content_size)`; the inodes now shared are recorded (in the view's
    /// `shared` file) so that later changes copy them first.
    #[pyo3(signature = (dest, *, progress=None))]
    fn commit(&self, py: Python<'_>, dest: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<(String, u64, u64)> {
        let progress = Progress::new(progress);
        let report = py
            .detach(|| {
                let report = self.inner.commit(&dest, Some(&|n| progress.report(n)))?;
                progress.finish(report.tar_size)?;
                Ok(report)
            })
            .py()?;
        Ok((report.diff_id, report.tar_size, report.size))
    }

    /// Remove these mount points from the writable layer if they are still empty (deepest first).
    fn remove_empty_mount_points(&self, py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<()> {
        py.detach(|| self.inner.remove_empty_mount_points(&paths)).py()
    }

    /// Give every file still shared with a committed layer its own inode; returns how many.
    fn unshare_all(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.unshare_all()).py()
    }

    /// The flattened merged tree as a tar stream (`docker export`).
    #[pyo3(signature = (compression=None))]
    fn export(&self, py: Python<'_>, compression: Option<&str>) -> PyResult<TarStream> {
        let view = self.inner.clone();
        let tar = py.detach(|| LayerTar::merged(view).map(LayerTar::without_digest)).py()?;
        TarStream::new(tar, compression)
    }

    /// Bytes of content in the writable layer.
    fn upper_size(&self, py: Python<'_>) -> PyResult<u64> {
        match &self.inner.upper {
            Some(u) => py.detach(|| dir_usage(&u.path)).py(),
            None => Ok(0),
        }
    }

    // ----- copying between the container and the host -----

    /// Copy the container entry `src` to `name` inside the host directory `dst_dir`; returns bytes copied.
    /// `archive` keeps owners (for real, when root); `store_convention` keeps them the way the store keeps
    /// metadata, for a destination inside the store (volume pre-population).
    #[pyo3(signature = (src, dst_dir, name, *, follow_symlinks=false, archive=false, contents=false, store_convention=false, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_out(
        &self,
        py: Python<'_>,
        src: ViewPath<'_>,
        dst_dir: PathBuf,
        name: OsString,
        follow_symlinks: bool,
        archive: bool,
        contents: bool,
        store_convention: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let owner = match (store_convention, archive) {
            (true, _) => Owner::Keep(self.inner.privilege),
            (false, true) => Owner::Real,
            (false, false) => Owner::Caller,
        };
        let progress = Progress::new(progress);
        py.detach(|| {
            let mut report = |n: u64| progress.report(n);
            let opts = CopyOptions { follow: follow_symlinks, owner, contents, progress: Some(&mut report) };
            let copied = copy_out(&self.inner, &src, &dst_dir, &name, opts)?;
            progress.finish(copied)?;
            Ok(copied)
        })
        .py()
    }

    /// Copy the host entry `name` of the host directory `src_dir` to the container path `dst`.
    #[pyo3(signature = (src_dir, name, dst, *, follow_symlinks=false, archive=false, contents=false, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn copy_in(
        &self,
        py: Python<'_>,
        src_dir: PathBuf,
        name: OsString,
        dst: ViewPath<'_>,
        follow_symlinks: bool,
        archive: bool,
        contents: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let owner = if archive { Owner::Keep(self.inner.privilege) } else { Owner::Caller };
        let progress = Progress::new(progress);
        py.detach(|| {
            let mut report = |n: u64| progress.report(n);
            let opts = CopyOptions { follow: follow_symlinks, owner, contents, progress: Some(&mut report) };
            let copied = copy_in(&self.inner, &src_dir, &name, &dst, opts)?;
            progress.finish(copied)?;
            Ok(copied)
        })
        .py()
    }

    // ----- docker-py's archive API -----

    /// A tar of the entry at `path` and everything below it (named from its base name).
    fn get_archive(&self, py: Python<'_>, path: ViewPath<'_>) -> PyResult<TarStream> {
        let view = self.inner.clone();
        let tar = py.detach(|| LayerTar::subtree(view, &path)).py()?;
        TarStream::new(tar, None)
    }

    /// Extract a tar (path or binary file object; plain, gzip, zstd, bzip2 or xz) into the existing directory `path`.
    fn put_archive(&self, py: Python<'_>, path: ViewPath<'_>, source: Source) -> PyResult<u64> {
        let reader = source.reader()?;
        py.detach(|| put_archive(&self.inner, &path, reader)).py()
    }
}
