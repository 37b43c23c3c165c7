//! The kernel's overlayfs as an oracle (root only): layer directories mounted read-only, top first, and
//! the merged tree read back. Every mount is undone before the call returns.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::tree::{host_tree, Tree};
use super::Privilege;

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if rustix::mount::unmount(self.0, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(self.0, UnmountFlags::DETACH);
        }
    }
}

/// The tree the kernel shows for `lowers` (top first; a writable layer may be the first), read-only.
/// `None` (saying why on stderr) when not root or when the kernel refuses the mount.
pub fn kernel_tree(lowers: &[PathBuf], privilege: Privilege) -> Option<Tree> {
    if !super::is_root() {
        eprintln!("kernel comparison skipped: mounts need root");
        return None;
    }
    let tmp = tempfile::Builder::new().prefix("ovlcore-kernel-").tempdir().unwrap();
    let target = tmp.path().join("merged");
    std::fs::create_dir(&target).unwrap();
    let mut dirs: Vec<String> = lowers.iter().map(|p| p.to_str().unwrap().to_string()).collect();
    if dirs.len() == 1 {
        // The kernel wants at least two layers for a read-only mount.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        dirs.push(empty.to_str().unwrap().to_string());
    }
    let mut opts = format!("lowerdir={}", dirs.join(":"));
    if privilege == Privilege::Rootless {
        opts.push_str(",userxattr");
    }
    let data = std::ffi::CString::new(opts).unwrap();
    if let Err(e) = rustix::mount::mount("overlay", &target, "overlay", MountFlags::RDONLY, Some(data.as_c_str())) {
        eprintln!("kernel comparison skipped: mount -t overlay refused ({e})");
        return None;
    }
    let _mounted = Mounted(&target);
    Some(host_tree(&target))
}
