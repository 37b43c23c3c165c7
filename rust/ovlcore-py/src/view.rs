//! `View`: the merged (union) file system of an image or container, read side.

use std::ffi::{CString, OsString};
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use ovlcore_core::union::{Lower, MountPoint, View as CoreView};
use ovlcore_core::{Kind, Meta, Privilege};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple, PyType};
use rustix::fs::OFlags;

use crate::errors::IntoPy;

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
    let t = |s: (i64, u32)| (s.0, s.0 as f64 + s.1 as f64 * 1e-9, s.0 as i128 * 1_000_000_000 + s.1 as i128);
    let (a, m_, c) = (t(m.atime), t(m.mtime), t(m.ctime));
    let fields = PyTuple::new(
        py,
        [
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
            a.2.into_pyobject(py)?.into_any(),
            m_.2.into_pyobject(py)?.into_any(),
            c.2.into_pyobject(py)?.into_any(),
            m.blksize.into_pyobject(py)?.into_any(),
            m.blocks.into_pyobject(py)?.into_any(),
            m.rdev.into_pyobject(py)?.into_any(),
        ],
    )?;
    cls.call1((fields,))
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
    #[new]
    #[pyo3(signature = (lower, upper=None, *, privilege="root", mounts=Vec::new()))]
    fn new(
        py: Python<'_>,
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
        privilege: &str,
        mounts: Vec<(PathBuf, PathBuf, bool)>,
    ) -> PyResult<Self> {
        let privilege = parse_privilege(privilege)?;
        py.detach(|| {
            let lower = Lower::shared(&lower, privilege)?;
            let mut points = Vec::with_capacity(mounts.len());
            for (target, source, ro) in &mounts {
                points.push(MountPoint::new(target, source, *ro)?);
            }
            Ok(View { inner: Arc::new(CoreView::new(lower, upper.as_deref(), points)?) })
        })
        .py()
    }

    #[pyo3(signature = (path, follow_symlinks=true))]
    fn stat<'py>(&self, py: Python<'py>, path: PathBuf, follow_symlinks: bool) -> PyResult<Bound<'py, PyAny>> {
        let m = py.detach(|| self.inner.stat(&path, follow_symlinks)).py()?;
        stat_result(py, &m)
    }

    /// The kind of entry at `path` (`"file"`, `"dir"`, ...) or `None` when nothing is there.
    #[pyo3(signature = (path, follow_symlinks=true))]
    fn kind(&self, py: Python<'_>, path: PathBuf, follow_symlinks: bool) -> PyResult<Option<&'static str>> {
        py.detach(|| match self.inner.resolve(&path, follow_symlinks) {
            Ok(r) => Ok(r.kind().map(kind_name)),
            Err(e) if e.is_errno(libc::ENOENT) || e.is_errno(libc::ENOTDIR) || e.is_errno(libc::ELOOP) => Ok(None),
            Err(e) => Err(e),
        })
        .py()
    }

    fn listdir(&self, py: Python<'_>, path: PathBuf) -> PyResult<Vec<OsString>> {
        let entries = py.detach(|| self.inner.list(&path)).py()?;
        Ok(entries.into_iter().map(|(n, _)| n).collect())
    }

    /// `(name, kind)` pairs of a directory, sorted by name.
    fn scandir(&self, py: Python<'_>, path: PathBuf) -> PyResult<Vec<(OsString, &'static str)>> {
        let entries = py.detach(|| self.inner.list(&path)).py()?;
        Ok(entries.into_iter().map(|(n, k)| (n, kind_name(k))).collect())
    }

    fn readlink(&self, py: Python<'_>, path: PathBuf) -> PyResult<OsString> {
        py.detach(|| self.inner.readlink(&path)).py()
    }

    /// Open an existing entry read-only; returns a file descriptor the caller owns.
    #[pyo3(signature = (path, follow_symlinks=true))]
    fn open_read(&self, py: Python<'_>, path: PathBuf, follow_symlinks: bool) -> PyResult<i32> {
        let extra = if follow_symlinks { OFlags::empty() } else { OFlags::NOFOLLOW };
        let fd = py.detach(|| self.inner.open_read(&path, extra)).py()?;
        Ok(fd.into_raw_fd())
    }

    #[pyo3(signature = (path, attribute, follow_symlinks=true))]
    fn getxattr<'py>(&self, py: Python<'py>, path: PathBuf, attribute: &str, follow_symlinks: bool) -> PyResult<Bound<'py, PyBytes>> {
        let attr = CString::new(attribute).map_err(|_| PyValueError::new_err("xattr name contains NUL"))?;
        let v = py.detach(|| self.inner.getxattr(&path, &attr, follow_symlinks)).py()?;
        match v {
            Some(v) => Ok(PyBytes::new(py, &v)),
            None => Err(pyo3::exceptions::PyOSError::new_err((libc::ENODATA, "No data available", path))),
        }
    }

    #[pyo3(signature = (path, follow_symlinks=true))]
    fn listxattr(&self, py: Python<'_>, path: PathBuf, follow_symlinks: bool) -> PyResult<Vec<String>> {
        let names = py.detach(|| self.inner.listxattr(&path, follow_symlinks)).py()?;
        Ok(names.into_iter().map(|n| String::from_utf8_lossy(&n).into_owned()).collect())
    }
}
