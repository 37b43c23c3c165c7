//! `ovlcore._ovlcore`: the PyO3 binding of ovlcore-core. Argument conversion, the GIL released around
//! every call that touches the file system, and errors mapped to Python exceptions; no logic of its own.

mod archive;
mod errors;
mod io;
mod layers;
mod registry;
mod view;

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::IntoPy;

/// Remove a host directory tree (no error when it does not exist).
#[pyfunction]
fn remove_tree(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    py.detach(|| ovlcore_core::remove_tree(&path)).py()
}

/// Flush the file system holding `path` to stable storage.
#[pyfunction]
fn sync_fs(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    py.detach(|| ovlcore_core::sync_fs(&path)).py()
}

/// Mount the kernel overlayfs at `target` over `lower` (top first), with `upper` and `work`.
#[pyfunction]
#[pyo3(signature = (lower, upper, work, target, *, userxattr=false))]
fn mount_overlay(py: Python<'_>, lower: Vec<PathBuf>, upper: PathBuf, work: PathBuf, target: PathBuf, userxattr: bool) -> PyResult<()> {
    py.detach(|| ovlcore_core::mount_overlay(&lower, &upper, &work, &target, userxattr)).py()
}

/// Bind-mount `source` at the container path `target` inside the mounted tree `root`, safely; returns the
/// mount points it had to create.
#[pyfunction]
#[pyo3(signature = (root, target, source, *, read_only=false))]
fn bind_mount_in(py: Python<'_>, root: PathBuf, target: PathBuf, source: PathBuf, read_only: bool) -> PyResult<Vec<std::ffi::OsString>> {
    let created = py.detach(|| ovlcore_core::bind_mount_in(&root, &target, &source, read_only)).py()?;
    Ok(created.into_iter().map(PathBuf::into_os_string).collect())
}

#[pyfunction]
#[pyo3(signature = (target, *, lazy=false))]
fn unmount(py: Python<'_>, target: PathBuf, lazy: bool) -> PyResult<()> {
    py.detach(|| ovlcore_core::unmount(&target, lazy)).py()
}

/// Whether `ADD` extracts the host file `path` (Docker's `IsArchivePath`): a tar, perhaps compressed.
#[pyfunction]
fn is_tar_archive(py: Python<'_>, path: PathBuf) -> PyResult<bool> {
    py.detach(|| -> ovlcore_core::Result<bool> {
        let file = std::fs::File::open(&path)?;
        Ok(ovlcore_core::is_tar_archive(std::io::BufReader::new(file)))
    })
    .py()
}

/// Bytes of content below a host directory (files once per inode, symlink targets).
#[pyfunction]
fn dir_usage(py: Python<'_>, path: PathBuf) -> PyResult<u64> {
    py.detach(|| ovlcore_core::dir_usage(&path)).py()
}

/// `sha256:` + hex digest of `data`.
#[pyfunction]
fn sha256(data: &[u8]) -> String {
    ovlcore_core::sha256(data)
}

/// The OCI chain id of a layer with diff id `diff_id` on top of the chain `parent`.
#[pyfunction]
#[pyo3(signature = (parent, diff_id))]
fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    ovlcore_core::chain_id(parent, diff_id)
}

/// Serve layer directories (top first) and an optional writable layer as a FUSE file system at
/// `mountpoint` until it is unmounted. The view is private to this call (not the shared stack cache), so
/// every layer descriptor is closed when it returns. Once the mount is live, `ready_fd` (if given, still
/// the caller's) gets one line `ok`.
#[pyfunction]
#[pyo3(signature = (lower, upper, mountpoint, *, scratch=None, shared=None, privilege="root", mounts=Vec::new(), ready_fd=None, fsname="ovlcore", subtype="ovlcore", allow_other=false, threads=4, passthrough=true, writeback=true, root_as=None))]
#[allow(clippy::too_many_arguments)]
fn fuse_serve(
    py: Python<'_>,
    lower: Vec<PathBuf>,
    upper: Option<PathBuf>,
    mountpoint: PathBuf,
    scratch: Option<PathBuf>,
    shared: Option<PathBuf>,
    privilege: &str,
    mounts: Vec<(PathBuf, PathBuf, bool)>,
    ready_fd: Option<i32>,
    fsname: &str,
    subtype: &str,
    allow_other: bool,
    threads: usize,
    passthrough: bool,
    writeback: bool,
    root_as: Option<(u32, u32)>,
) -> PyResult<()> {
    let privilege = view::parse_privilege(privilege)?;
    if upper.is_some() && scratch.is_none() {
        return Err(pyo3::exceptions::PyValueError::new_err("a writable layer needs a scratch directory"));
    }
    let opts = ovlcore_core::FuseOptions { fsname: fsname.into(), subtype: subtype.into(), allow_other, threads, passthrough, writeback, root_as };
    py.detach(|| {
        let make_view = || {
            let lower = std::sync::Arc::new(ovlcore_core::Lower::open(&lower, privilege)?);
            let mut points = Vec::with_capacity(mounts.len());
            for (target, source, ro) in &mounts {
                points.push(ovlcore_core::MountPoint::new(target, source, *ro)?);
            }
            let upper = match (&upper, &scratch) {
                (Some(u), Some(s)) => Some(ovlcore_core::Upper::open(u, s, shared.as_deref())?),
                _ => None,
            };
            ovlcore_core::View::new(lower, upper, points)
        };
        ovlcore_core::fuse_serve(make_view, &mountpoint, &opts, || {
            if let Some(fd) = ready_fd {
                // SAFETY: the caller keeps the descriptor open for the whole call.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = rustix::io::write(fd, b"ok\n");
            }
        })
    })
    .py()
}

#[pymodule]
fn _ovlcore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<view::View>()?;
    m.add_function(wrap_pyfunction!(view::container_path, m)?)?;
    m.add_class::<layers::TarStream>()?;
    m.add_function(wrap_pyfunction!(layers::import_layer, m)?)?;
    m.add_function(wrap_pyfunction!(layers::layer_tar, m)?)?;
    m.add_function(wrap_pyfunction!(remove_tree, m)?)?;
    m.add_function(wrap_pyfunction!(sync_fs, m)?)?;
    m.add_function(wrap_pyfunction!(sha256, m)?)?;
    m.add_function(wrap_pyfunction!(mount_overlay, m)?)?;
    m.add_function(wrap_pyfunction!(bind_mount_in, m)?)?;
    m.add_function(wrap_pyfunction!(unmount, m)?)?;
    m.add_function(wrap_pyfunction!(fuse_serve, m)?)?;
    m.add_function(wrap_pyfunction!(dir_usage, m)?)?;
    m.add_function(wrap_pyfunction!(is_tar_archive, m)?)?;
    m.add_function(wrap_pyfunction!(chain_id, m)?)?;
    m.add_class::<archive::Archive>()?;
    m.add_class::<archive::ArchiveWriter>()?;
    m.add_class::<registry::RegistryClient>()?;
    m.add_function(wrap_pyfunction!(registry::parse_reference, m)?)?;
    m.add_function(wrap_pyfunction!(registry::platform_matches, m)?)?;
    m.add_function(wrap_pyfunction!(registry::store_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(registry::erase_credentials, m)?)?;
    Ok(())
}
