//! Whiteouts in the writable layer, all hard links to one shared whiteout in the scratch directory, as
//! the kernel's overlayfs shares one since Linux 5.8: a new inode per deleted name costs the file system
//! an inode allocation each (on ext4 a scan for recently deleted inodes), and `rm -rf` of an image
//! directory makes one whiteout per entry. Any whiteout (char device 0/0) reads the same, whatever its
//! link count; the shared one is only a cache, and the scratch directory's recovery may remove it.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::Result;
use crate::rw::copyup::scratch_name;
use crate::sys;

const SHARED: &str = "whiteout";

/// Make a whiteout named `name` in `dir`, linked to the shared one in `scratch` (on the same file system)
/// where it can be, else a whiteout of its own.
pub fn make(scratch: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    for _ in 0..2 {
        match rustix::fs::linkat(scratch, SHARED, dir, name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            // None yet (or the recovery took it): make one. At the link limit: a new one replaces it.
            Err(e @ (Errno::NOENT | Errno::MLINK)) => {
                let tmp = scratch_name();
                if sys::make_whiteout(scratch, &tmp).is_err() {
                    break;
                }
                let flags = if e == Errno::NOENT { RenameFlags::NOREPLACE } else { RenameFlags::empty() };
                if rustix::fs::renameat_with(scratch, &tmp, scratch, SHARED, flags).is_err() {
                    // Another thread made it first.
                    let _ = rustix::fs::unlinkat(scratch, &tmp, AtFlags::empty());
                }
            }
            // Not linkable here (another file system, a file system without hard links): one of its own.
            Err(Errno::XDEV | Errno::PERM | Errno::OPNOTSUPP) => break,
            Err(e) => return Err(e.into()),
        }
    }
    sys::make_whiteout(dir, name)
}
