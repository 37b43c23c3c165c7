//! Real mounts of a container's merged tree: the kernel's overlayfs over the very layer directories the
//! store keeps (no conversion), plus bind mounts of volumes and bind sources at their targets.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags};

use crate::error::{Error, Result};

/// Keep the writable layer in the plain on-disk format the userspace view reads: no redirect xattrs for
/// renamed directories, no metadata-only copy-ups, no inode index.
const FORMAT_OPTIONS: &[(&str, &str)] = &[("redirect_dir", "off"), ("metacopy", "off"), ("index", "off")];

/// Mount an overlay at `target`: `lowers` top first (at least one), `upper` and `work` on one file
/// system. `userxattr` for stores that mark opaque directories with `user.overlay.opaque`.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path, userxattr: bool) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::Invalid("an overlay mount needs at least one lower directory".into()));
    }
    // The new mount API takes each lower directory on its own (no length limit, no escaping)...
    let new_api = || -> rustix::io::Result<()> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for l in lowers {
            rustix::mount::fsconfig_set_string(fs.as_fd(), "lowerdir+", l.as_os_str())?;
        }
        rustix::mount::fsconfig_set_string(fs.as_fd(), "upperdir", upper.as_os_str())?;
        rustix::mount::fsconfig_set_string(fs.as_fd(), "workdir", work.as_os_str())?;
        for (key, value) in FORMAT_OPTIONS {
            rustix::mount::fsconfig_set_string(fs.as_fd(), *key, *value)?;
        }
        if userxattr {
            rustix::mount::fsconfig_set_flag(fs.as_fd(), "userxattr")?;
        }
        rustix::mount::fsconfig_create(fs.as_fd())?;
        let mnt = rustix::mount::fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        rustix::mount::move_mount(mnt.as_fd(), "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
    };
    match new_api() {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::PERM) | Err(rustix::io::Errno::ACCESS) => {
            return Err(Error::os(libc::EPERM, target.as_os_str()))
        }
        Err(_) => {}
    }
    // ...older kernels get the classic option string.
    let esc = |p: &Path| p.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,");
    let lower = lowers.iter().map(|p| esc(p)).collect::<Vec<_>>().join(":");
    let mut opts = format!("lowerdir={lower},upperdir={},workdir={}", esc(upper), esc(work));
    for (key, value) in FORMAT_OPTIONS {
        opts.push_str(&format!(",{key}={value}"));
    }
    if userxattr {
        opts.push_str(",userxattr");
    }
    let opts = std::ffi::CString::new(opts).map_err(|_| Error::Invalid("NUL in a layer path".into()))?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), Some(opts.as_c_str()))
        .map_err(|e| Error::from(e).at(target.as_os_str()))
}

/// Bind-mount `source` on `target`, read-only when asked.
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    rustix::mount::mount_bind(source, target).map_err(|e| Error::from(e).at(target.as_os_str()))?;
    if read_only {
        let flags = MountFlags::BIND | MountFlags::RDONLY;
        if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(Error::from(e).at(target.as_os_str()));
        }
    }
    Ok(())
}

pub fn unmount(target: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
    rustix::mount::unmount(target, flags).map_err(|e| Error::from(e).at(target.as_os_str()))
}
