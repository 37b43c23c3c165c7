//! Real mounts of a container's merged tree: the kernel's overlayfs over the very layer directories the
//! store keeps (no conversion), plus bind mounts of volumes and bind sources at their targets.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags};

use crate::error::{Error, Result};

/// Keep the writable layer in the plain on-disk format the userspace view reads: no redirect xattrs for
/// renamed directories, no metadata-only copy-ups, no inode index.
/// (`nofollow`: `off` would still follow redirects, which `userxattr` mounts refuse.)
const FORMAT_OPTIONS: &[(&str, &str)] = &[("redirect_dir", "nofollow"), ("metacopy", "off"), ("index", "off")];

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

pub fn unmount(target: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
    rustix::mount::unmount(target, flags).map_err(|e| Error::from(e).at(target.as_os_str()))
}

/// Bind-mount `source` at the container path `target` inside a mounted container tree `root`.
///
/// The target is walked one component at a time below `root` without following any symlink (a process
/// in the container may have planted one), missing mount points are created, and the mount is attached
/// to the opened target itself (`open_tree` + `move_mount`), never through a path the container could
/// redirect to the host. Returns the mount points it created, outermost first.
pub fn bind_mount_in(root: &Path, target: &Path, source: &Path, read_only: bool) -> Result<Vec<PathBuf>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::{OpenTreeFlags, MoveMountFlags};

    let src_is_dir = rustix::fs::stat(source).map_err(|e| Error::from(e).at(source.as_os_str()))?.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let comps: Vec<&std::ffi::OsStr> = target.iter().filter(|c| *c != "/").collect();
    let (last, parents) = comps.split_last().ok_or_else(|| Error::os(libc::EBUSY, target.as_os_str()))?;
    let mut created = Vec::new();
    let mut here = PathBuf::from("/");
    let mut cur = crate::sys::open_dir(root)?;
    let err = |e: crate::Error| match e {
        crate::Error::Os { errno: libc::ELOOP, .. } | crate::Error::Os { errno: libc::EXDEV, .. } => {
            Error::Invalid(format!("mount target {} goes through a symlink in the container", target.display()))
        }
        other => other.at(target.as_os_str()),
    };
    for comp in parents {
        here.push(comp);
        match rustix::fs::mkdirat(&cur, *comp, Mode::from_raw_mode(0o755)) {
            Ok(()) => created.push(here.clone()),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(e.into())),
        }
        cur = crate::sys::open_beneath(cur.as_fd(), Path::new(comp), OFlags::RDONLY | OFlags::DIRECTORY).map_err(err)?;
    }
    here.push(last);
    let made = if src_is_dir {
        rustix::fs::mkdirat(&cur, *last, Mode::from_raw_mode(0o755))
    } else {
        rustix::fs::openat(&cur, *last, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, Mode::from_raw_mode(0o644)).map(drop)
    };
    match made {
        Ok(()) => created.push(here.clone()),
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(err(e.into())),
    }
    let flags = if src_is_dir { OFlags::PATH | OFlags::DIRECTORY } else { OFlags::PATH };
    let at = crate::sys::open_beneath(cur.as_fd(), Path::new(last), flags).map_err(err)?;
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC)
        .map_err(|e| Error::from(e).at(source.as_os_str()))?;
    if read_only {
        set_read_only(tree.as_fd()).map_err(|e| e.at(source.as_os_str()))?;
    }
    rustix::mount::move_mount(tree.as_fd(), "", at.as_fd(), "", MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH)
        .map_err(|e| Error::from(e).at(target.as_os_str()))?;
    Ok(created)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set: MOUNT_ATTR_RDONLY})` on a detached mount.
fn set_read_only(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: the syscall reads `attr` (of the size passed) and an empty, NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Error::errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)));
    }
    Ok(())
}
