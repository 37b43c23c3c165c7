//! Thin, safe wrappers over the `*at` system calls the engine is built on.
//!
//! Everything is relative to a directory file descriptor, and every walk into a directory that someone else
//! might change (a writable layer, a volume, a bind source) goes through `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`: a symlink swapped in mid-operation makes the call fail instead of leading outside.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat, XattrFlags};
use rustix::io::Errno;

use crate::attrs::{Attrs, Kind, Meta, Privilege};
use crate::format::{is_internal_xattr, OVERRIDE_XATTR};
use crate::error::{Error, Result};

const SAFE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// `rel` as a path for the kernel: the empty path means the directory itself.
fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Open `rel` below `root` without following any symlink and without leaving `root`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
    // openat2 insists on a zero mode unless a file may be created.
    let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o600) } else { Mode::empty() };
    loop {
        match rustix::fs::openat2(root, rel_or_dot(rel), flags | OFlags::CLOEXEC, mode, SAFE) {
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other.map_err(Error::from),
        }
    }
}

/// Open the directory `rel` below `root` (see [`open_beneath`]).
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd> {
    open_beneath(root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Open a host directory by absolute path (store directories, bind sources).
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::from(e).at(path.as_os_str()))
}

pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// `/proc/self/fd/N/NAME`: lets path-only calls (xattrs on any file type) act on `name` inside an open
/// directory without resolving anything but that one final component.
pub fn fd_path(dir: BorrowedFd<'_>, name: &OsStr) -> CString {
    // Always one component after the magic link: the `l*xattr` calls must not act on the link itself.
    let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    v.extend_from_slice(if name.is_empty() { b"." } else { name.as_bytes() });
    CString::new(v).expect("file names never contain NUL")
}

/// Read one xattr; `None` when absent or unsupported there.
pub fn xattr_get(dir: BorrowedFd<'_>, name: &OsStr, attr: &CStr) -> Result<Option<Vec<u8>>> {
    let path = fd_path(dir, name);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path.as_c_str(), attr, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) | Err(Errno::PERM) => return Ok(None),
            Err(Errno::RANGE) => {
                let n = rustix::fs::lgetxattr(path.as_c_str(), attr, &mut [0u8; 0][..])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn xattr_set(dir: BorrowedFd<'_>, name: &OsStr, attr: &CStr, value: &[u8]) -> Result<()> {
    let path = fd_path(dir, name);
    Ok(rustix::fs::lsetxattr(path.as_c_str(), attr, value, XattrFlags::empty())?)
}

/// All xattr names of `name` (in `dir`), in the order the file system gives.
pub fn xattr_list(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<Vec<u8>>> {
    let path = fd_path(dir, name);
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path.as_c_str(), &mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(Errno::RANGE) => {
                let n = rustix::fs::llistxattr(path.as_c_str(), &mut [0u8; 0][..])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| s.to_vec()).collect())
}

/// All content xattrs (name, value) of an entry, sorted by name, without the storage format's own.
pub fn content_xattrs(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for attr in xattr_list(dir, name)? {
        if is_internal_xattr(&attr) {
            continue;
        }
        let cattr = CString::new(attr.clone()).expect("xattr names have no NUL");
        if let Some(v) = xattr_get(dir, name, &cattr)? {
            out.push((attr, v));
        }
    }
    out.sort();
    Ok(out)
}

/// The logical metadata of `name` in `dir`: the raw stat with the store's override convention applied.
pub fn read_meta(dir: BorrowedFd<'_>, name: &OsStr, privilege: Privilege) -> Result<Meta> {
    let st = lstat_at(dir, name)?;
    let raw = Meta::from_stat(&st);
    Ok(logical_meta(dir, name, raw, privilege))
}

/// Apply the override (rootless stores) to raw metadata already read.
pub fn logical_meta(dir: BorrowedFd<'_>, name: &OsStr, raw: Meta, privilege: Privilege) -> Meta {
    let over = match (privilege, raw.kind()) {
        (Privilege::Rootless, Kind::File | Kind::Dir) => xattr_get(dir, name, OVERRIDE_XATTR)
            .ok()
            .flatten()
            .and_then(|v| Attrs::from_override(&v, raw.kind())),
        _ => None,
    };
    raw.logical(privilege, over)
}

/// The type a rootless override gives a regular file (`None` without one).
pub fn override_kind(dir: BorrowedFd<'_>, name: &OsStr) -> Option<Kind> {
    let v = xattr_get(dir, name, OVERRIDE_XATTR).ok()??;
    Attrs::from_override(&v, Kind::File).map(|a| a.kind)
}

/// Whether directory `name` in `dir` is marked opaque (either xattr flavour).
pub fn is_opaque(dir: BorrowedFd<'_>, name: &OsStr, privilege: Privilege) -> bool {
    matches!(xattr_get(dir, name, privilege.opaque_xattr()), Ok(Some(v)) if v == b"y")
}

pub fn set_opaque(dir: BorrowedFd<'_>, name: &OsStr, privilege: Privilege) -> Result<()> {
    xattr_set(dir, name, privilege.opaque_xattr(), b"y")
}

/// Make a kernel overlayfs whiteout (char device 0/0) named `name`.
pub fn make_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    Ok(rustix::fs::mknodat(dir, name, rustix::fs::FileType::CharacterDevice, Mode::empty(), 0)?)
}

/// Set the owner of `name` in `dir` (a symlink itself, not its target); `None` keeps that id.
pub fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    Ok(rustix::fs::chownat(
        dir,
        name,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OsString> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(OsString::from_vec(target.into_bytes()))
}

/// The names in an open directory (without `.` and `..`) with their `d_type` where the file system gives it.
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<(OsString, Option<Kind>)>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsString::from_vec(name.to_vec()), Kind::from_file_type(entry.file_type())));
    }
    Ok(out)
}

/// Remove `name` from `dir` whatever it is (a directory with all its content).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // A rootless store may hold directories without write permission for the owner (from an image).
    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    for (child, _) in read_dir(sub.as_fd())? {
        remove_all_at(sub.as_fd(), &child)?;
    }
    drop(sub);
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remove a host path and everything below it (no-op when it does not exist).
pub fn remove_tree(path: &Path) -> Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(Error::Invalid(format!("refusing to remove {path:?}"))),
    };
    let dir = match open_dir(parent) {
        Ok(d) => d,
        Err(e) if e.is_errno(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_all_at(dir.as_fd(), name).map_err(|e| e.at(path.as_os_str()))
}

/// Make directory `name` in `dir`; `Ok(false)` if a directory is already there.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<bool> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => {
            if lstat_at(dir, name).map(|s| Meta::from_stat(&s).is_dir()).unwrap_or(false) {
                Ok(false)
            } else {
                Err(Error::errno(libc::EEXIST))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Flush the whole file system holding `fd` (one call instead of one fsync per file of a new layer).
/// Copy up to `len` bytes from `src` to `dst` (both at their offsets) in the kernel, with
/// `copy_file_range`. Returns the bytes copied (fewer when `src` ends first), or `None` when the kernel
/// refused these two files before any byte (another file system, a pipe, an `O_APPEND` output): the
/// caller then reads and writes.
pub fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> std::io::Result<Option<u64>> {
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::BADF) if done == 0 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(done))
}

pub fn syncfs(fd: BorrowedFd<'_>) -> Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

/// Flush the file system holding the directory `path` to stable storage.
pub fn sync_fs(path: &Path) -> Result<()> {
    syncfs(open_dir(path)?.as_fd()).map_err(|e| e.at(path.as_os_str()))
}

/// Raise the calling thread's nice value by `by` (at most to 19), so that it runs on what CPU the
/// process's other threads leave idle. Best effort: a failure leaves the priority as it was.
pub fn yield_cpu_to_siblings(by: i32) {
    if let Ok(now) = rustix::process::getpriority_process(None) {
        let _ = rustix::process::setpriority_process(None, (now + by).min(19));
    }
}

/// A process-unique counter mixed with the time, for temporary names.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", t as u64, N.fetch_add(1, Ordering::Relaxed))
}

/// Split a relative path into its parent and final name (`("", name)` for a single component).
pub fn split_parent(rel: &Path) -> (&Path, &OsStr) {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => (Path::new(""), rel.as_os_str()),
    }
}
