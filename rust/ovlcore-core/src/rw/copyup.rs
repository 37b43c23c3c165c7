//! Copy-up: bringing an entry of the image layers into the writable layer before its first change.
//!
//! As in the kernel, the copy is built in a scratch directory on the same file system (data through
//! `FICLONE` where the file system shares extents, else `copy_file_range`, else read/write; then owner,
//! mode, xattrs and times) and renamed into place with `RENAME_NOREPLACE`: a crash never leaves a partial
//! file visible, and a concurrent copy-up of the same entry simply wins.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::attrs::{apply_attrs, Attrs, Kind, Meta, Privilege};
use crate::error::Result;
use crate::sys;

/// Copy `len` bytes of `src` into the empty file `dst`, with the fastest means the file system offers.
pub fn copy_data(src: &File, dst: &File, len: u64) -> Result<()> {
    copy_data_with(src, dst, len, true).map(|_| ())
}

/// [`copy_data`], trying `FICLONE` only when `clone`. Returns whether `FICLONE` is still worth trying for
/// files like these: false once the file system refused it (not supported, or not between these two
/// files), so that a caller copying many files stops paying for the refusal.
pub fn copy_data_with(src: &File, dst: &File, len: u64, clone: bool) -> Result<bool> {
    if len == 0 {
        return Ok(clone);
    }
    let mut cloning = clone;
    if clone {
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(true),
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY) => cloning = false,
            Err(_) => {}
        }
    }
    // A file that shrinks meanwhile (someone else is writing it) is copied as far as it goes, as cp does.
    if sys::copy_range(src.as_fd(), dst.as_fd(), len)?.is_none() {
        copy_by_reading(src, dst, len)?;
    }
    Ok(cloning)
}

/// Copy `src` (`len` bytes expected, more or fewer taken as they come) by reading and writing.
fn copy_by_reading(mut src: &File, mut dst: &File, len: u64) -> Result<()> {
    // Sized to the file: a cleared megabyte for each small file cost more than copying it.
    let mut buf = vec![0u8; len.clamp(4 << 10, 1 << 20) as usize];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        dst.write_all(&buf[..n])?;
    }
}

/// A temporary name in the scratch directory.
pub fn scratch_name() -> OsString {
    OsString::from(format!("tmp-{}-{}", std::process::id(), sys::unique_suffix()))
}

fn times_of(m: &Meta) -> Timestamps {
    let ts = |t: (i64, u32)| Timespec { tv_sec: t.0, tv_nsec: t.1 as _ };
    Timestamps { last_access: ts(m.atime), last_modification: ts(m.mtime) }
}

/// Recreate the entry `src_name` of `src_dir` (whose logical metadata is `meta`) as `name` in `dir`:
/// content (with `data`), owner, mode, xattrs and times. Used for copy-up, for breaking an inode shared
/// with a committed layer, and for building committed layers.
pub fn clone_entry(
    src_dir: BorrowedFd<'_>,
    src_name: &OsStr,
    meta: &Meta,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: bool,
    privilege: Privilege,
) -> Result<()> {
    let attrs = meta.attrs();
    let xattrs = if meta.kind() == Kind::Symlink { Vec::new() } else { sys::content_xattrs(src_dir, src_name)? };
    match meta.kind() {
        Kind::File => {
            let fd = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
            let out = File::from(fd);
            if data && meta.size > 0 {
                let src = File::from(rustix::fs::openat(src_dir, src_name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?);
                copy_data(&src, &out, meta.size)?;
            }
            finish_attrs(out.as_fd(), dir, name, &attrs, &xattrs, meta, privilege)
        }
        Kind::Dir => {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
            finish_attrs(fd.as_fd(), dir, name, &attrs, &xattrs, meta, privilege)
        }
        Kind::Symlink => {
            let target = sys::readlink_at(src_dir, src_name)?;
            rustix::fs::symlinkat(target.as_os_str(), dir, name)?;
            if privilege == Privilege::Root && (meta.uid != 0 || meta.gid != 0) {
                sys::chown_at(dir, name, Some(meta.uid), Some(meta.gid))?;
            }
            rustix::fs::utimensat(dir, name, &times_of(meta), AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(())
        }
        Kind::Fifo | Kind::Char | Kind::Block | Kind::Socket => {
            // A rootless store keeps FIFOs and devices as regular files carrying their override.
            if privilege == Privilege::Root {
                let ft = match meta.kind() {
                    Kind::Fifo => FileType::Fifo,
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Socket,
                };
                rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), meta.rdev)?;
                sys::chown_at(dir, name, Some(meta.uid), Some(meta.gid))?;
                rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.perm()), AtFlags::empty())?;
                rustix::fs::utimensat(dir, name, &times_of(meta), AtFlags::SYMLINK_NOFOLLOW)?;
                Ok(())
            } else {
                // Rootless FIFO or device: an empty file with its override.
                let fd = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
                finish_attrs(fd.as_fd(), dir, name, &attrs, &xattrs, meta, privilege)
            }
        }
    }
}

fn finish_attrs(
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attrs: &Attrs,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    meta: &Meta,
    privilege: Privilege,
) -> Result<()> {
    apply_attrs(dir, name, Some(fd), attrs, privilege)?;
    for (k, v) in xattrs {
        let k = std::ffi::CString::new(k.clone()).expect("xattr names have no NUL");
        match rustix::fs::fsetxattr(fd, &k, v, rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(Errno::PERM) | Err(Errno::OPNOTSUPP) | Err(Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::futimens(fd, &times_of(meta))?;
    Ok(())
}

/// Rename a finished scratch entry into place. With `replace`, whatever is at the destination (a whiteout,
/// a shared file) is atomically replaced; without, an existing destination wins and the copy is dropped.
/// Returns whether our copy was placed.
pub fn place(scratch: BorrowedFd<'_>, tmp: &OsStr, dir: BorrowedFd<'_>, name: &OsStr, replace: bool) -> Result<bool> {
    let flags = if replace { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
    match rustix::fs::renameat_with(scratch, tmp, dir, name, flags) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) if !replace => {
            sys::remove_all_at(scratch, tmp)?;
            Ok(false)
        }
        Err(e) => {
            let _ = sys::remove_all_at(scratch, tmp);
            Err(e.into())
        }
    }
}

/// Copy the entry `src_name` of `src_dir` into the writable directory `dir` as `name`, atomically.
#[allow(clippy::too_many_arguments)]
pub fn copy_up_entry(
    src_dir: BorrowedFd<'_>,
    src_name: &OsStr,
    meta: &Meta,
    scratch: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: bool,
    privilege: Privilege,
) -> Result<()> {
    let tmp = scratch_name();
    if let Err(e) = clone_entry(src_dir, src_name, meta, scratch, &tmp, data, privilege) {
        let _ = sys::remove_all_at(scratch, &tmp);
        return Err(e);
    }
    place(scratch, &tmp, dir, name, false).map(|_| ())
}

/// Open a file descriptor of a directory for `*at` calls (O_PATH is enough).
pub fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}
