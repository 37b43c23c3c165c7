//! The kernel's overlayfs as an oracle (root only): layer directories mounted read-only, top first, and
//! the merged tree read back or paths resolved in it as under chroot. Every mount is undone before the
//! call returns.

use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use super::tree::{host_tree, Tree};
use super::{Kind, Privilege};

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if rustix::mount::unmount(self.0, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(self.0, UnmountFlags::DETACH);
        }
    }
}

/// Run `f` on the kernel's read-only overlay of `lowers` (top first; a writable layer may be the first).
/// `None` (saying why on stderr) when not root or when the kernel refuses the mount.
fn with_mount<T>(lowers: &[PathBuf], privilege: Privilege, f: impl FnOnce(&Path) -> T) -> Option<T> {
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
    Some(f(&target))
}

/// The tree the kernel shows for `lowers`.
pub fn kernel_tree(lowers: &[PathBuf], privilege: Privilege) -> Option<Tree> {
    with_mount(lowers, privilege, host_tree)
}

/// What each path resolves to in the kernel's overlay of `lowers`, symlinks resolved inside its root as
/// under chroot (`RESOLVE_IN_ROOT`), the last one followed when asked: the type, or the errno.
pub fn kernel_resolve(lowers: &[PathBuf], privilege: Privilege, probes: &[(&str, bool)]) -> Option<Vec<Result<Kind, i32>>> {
    with_mount(lowers, privilege, |root| {
        let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        probes
            .iter()
            .map(|(path, follow)| {
                let rel = path.trim_start_matches('/');
                let rel = if rel.is_empty() { "." } else { rel };
                let nofollow = if *follow { OFlags::empty() } else { OFlags::NOFOLLOW };
                // `..` under RESOLVE_IN_ROOT answers EAGAIN when any rename or mount happened on the
                // system meanwhile: ask again.
                let open = || rustix::fs::openat2(&dir, rel, OFlags::PATH | OFlags::CLOEXEC | nofollow, Mode::empty(), ResolveFlags::IN_ROOT);
                std::iter::repeat_with(open)
                    .take(100)
                    .find(|r| !matches!(r, Err(rustix::io::Errno::AGAIN)))
                    .expect("openat2 gave EAGAIN 100 times")
                    .and_then(|fd| rustix::fs::fstat(&fd))
                    .map(|st| Kind::from_mode(st.st_mode))
                    .map_err(|e| e.raw_os_error())
            })
            .collect()
    })
}
