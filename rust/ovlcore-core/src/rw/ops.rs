//! Writes through the merged view, with overlayfs semantics.
//!
//! Every change lands in the writable layer: an entry of the image layers is copied up before its first
//! change, deleting something that exists below leaves a whiteout, a directory made where a lower one was
//! deleted is opaque, and renaming a directory that exists below copies it up whole (marked opaque) instead
//! of failing with `EXDEV` as the kernel does, so the layer stays mountable. Paths under a mount target go
//! to the volume or bind source instead and never touch the writable layer.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::attrs::{apply_attrs, Kind, Meta, Privilege};
use crate::error::{Error, Result};
use crate::rw::copyup::{clone_entry, copy_up_entry, place, scratch_name};
use crate::rw::whiteout;
use crate::sys;
use crate::union::{open_subdir, Dir, Found, Resolved, Upper, View};

/// Run `f` (which adds an entry to `dir` without changing the directory's content as the container sees
/// it: a copy-up), then put the directory's times back, as the kernel does.
fn keeping_times<T>(dir: BorrowedFd<'_>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = Meta::from_stat(&rustix::fs::fstat(dir)?);
    let out = f()?;
    let ts = |t: (i64, u32)| Timespec { tv_sec: t.0, tv_nsec: t.1 as _ };
    let times = Timestamps { last_access: ts(before.atime), last_modification: ts(before.mtime) };
    rustix::fs::utimensat(dir, ".", &times, AtFlags::empty())?;
    Ok(out)
}

/// Where an existing entry can be changed: its real directory and name.
struct Target {
    dir: Arc<OwnedFd>,
    name: OsString,
}

impl View {
    fn upper_or_rofs(&self, path: &Path) -> Result<&Upper> {
        self.upper.as_ref().ok_or_else(|| Error::os(libc::EROFS, path.as_os_str()))
    }

    fn check_mount_writable(&self, r: &Resolved) -> Result<()> {
        match r.mount() {
            Some(idx) if self.mounts[idx].read_only => Err(Error::os(libc::EROFS, r.path.as_os_str())),
            _ => Ok(()),
        }
    }

    /// The directory at canonical container path `dir` in the writable layer, copying it (and its
    /// parents) up from the image layers when it is not there yet.
    pub fn upper_dir(&self, dir: &Path) -> Result<Arc<OwnedFd>> {
        let up = self.upper_or_rofs(dir)?;
        let mut cur = up.fd.clone();
        let mut rel = PathBuf::new();
        for comp in dir.iter().skip(1) {
            rel.push(comp);
            match open_subdir(cur.as_fd(), comp) {
                Ok(fd) => {
                    cur = Arc::new(fd);
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Err(Error::os(libc::ENOTDIR, dir.as_os_str())),
                Err(e) => return Err(Error::from(e).at(dir.as_os_str())),
            }
            let (parent, name, child) = match self.lower.lookup(&rel)? {
                Some(found) if found.2.kind == Kind::Dir => found,
                _ => {
                    // A mount point no layer has: it becomes a plain directory once written into.
                    let mount_point = Path::new("/").join(&rel);
                    if !self.holds_mount(&mount_point) {
                        return Err(Error::os(libc::ENOENT, dir.as_os_str()));
                    }
                    match rustix::fs::mkdirat(cur.as_fd(), comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Error::from(e).at(dir.as_os_str())),
                    }
                    cur = Arc::new(open_subdir(cur.as_fd(), comp).map_err(|e| Error::from(e).at(dir.as_os_str()))?);
                    continue;
                }
            };
            let meta = self.lower.meta(&parent, &name, &child)?;
            let src = self.lower.open_parent(child.layer, &rel)?;
            keeping_times(cur.as_fd(), || {
                copy_up_entry(src.as_fd(), &name, &meta, up.scratch.as_fd(), cur.as_fd(), comp, false, self.privilege)
            })
            .map_err(|e| e.at(dir.as_os_str()))?;
            cur = Arc::new(open_subdir(cur.as_fd(), comp).map_err(|e| Error::from(e).at(dir.as_os_str()))?);
        }
        Ok(cur)
    }

    /// Whether the image layers have something visible at a resolved path (so removing it needs a whiteout).
    fn lower_has(&self, r: &Resolved) -> Result<bool> {
        match &r.parent {
            Some(Dir::Union { lower: Some(node), .. }) => Ok(self.lower.child(node, &r.name)?.is_some()),
            _ => Ok(false),
        }
    }

    /// Copy an entry of the image layers up (with its data when `data`).
    fn copy_up(&self, r: &Resolved, data: bool) -> Result<Target> {
        let up = self.upper_or_rofs(&r.path)?;
        let (node, child) = match &r.found {
            Found::Lower { node, child } => (node, child),
            _ => unreachable!("copy_up of a lower entry"),
        };
        let parent_path = r.path.parent().unwrap_or(Path::new("/"));
        let dir = self.upper_dir(parent_path)?;
        let meta = self.lower.meta(node, &r.name, child)?;
        let rel = node.rel.join(&r.name);
        let src = self.lower.open_parent(child.layer, &rel)?;
        keeping_times(dir.as_fd(), || copy_up_entry(src.as_fd(), &r.name, &meta, up.scratch.as_fd(), dir.as_fd(), &r.name, data, self.privilege))
            .map_err(|e| e.at(r.path.as_os_str()))?;
        Ok(Target { dir, name: r.name.clone() })
    }

    /// Make an existing entry changeable where it lives: copy it up from the image layers, or give it its
    /// own inode if it is shared with a committed layer.
    fn prepare(&self, r: &Resolved, data: bool) -> Result<Target> {
        self.check_mount_writable(r)?;
        match &r.found {
            Found::Missing { .. } => Err(Error::os(libc::ENOENT, r.path.as_os_str())),
            Found::Virtual => Err(Error::os(libc::EBUSY, r.path.as_os_str())),
            Found::Lower { .. } => self.copy_up(r, data),
            Found::Root => {
                let up = self.upper_or_rofs(&r.path)?;
                Ok(Target { dir: up.fd.clone(), name: OsString::from(".") })
            }
            _ => {
                let (dir, name) = self.host_parent(r).ok_or_else(|| Error::os(libc::ENOENT, r.path.as_os_str()))?;
                if matches!(r.found, Found::Upper { kind: Kind::File }) {
                    self.ensure_private(dir.as_fd(), &name).map_err(|e| e.at(r.path.as_os_str()))?;
                }
                Ok(Target { dir, name })
            }
        }
    }

    /// A file of the writable layer that is hard-linked into a committed layer gets its own copy before
    /// it changes, so committed layers stay immutable.
    fn ensure_private(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let up = match &self.upper {
            Some(u) => u,
            None => return Ok(()),
        };
        let raw = Meta::from_stat(&sys::lstat_at(dir, name)?);
        if raw.kind() != Kind::File || raw.nlink < 2 {
            return Ok(());
        }
        if !up.shared.contains(raw.ino)? {
            return Ok(());
        }
        let meta = sys::logical_meta(dir, name, raw, self.privilege);
        let tmp = scratch_name();
        if let Err(e) = clone_entry(dir, name, &meta, up.scratch.as_fd(), &tmp, true, self.privilege) {
            let _ = sys::remove_all_at(up.scratch.as_fd(), &tmp);
            return Err(e);
        }
        place(up.scratch.as_fd(), &tmp, dir, name, true)?;
        Ok(())
    }

    /// Put a new entry at a free resolved path, built by `build(dir, name)`. Over a whiteout the entry is
    /// built in scratch and swapped in atomically (a directory there becomes opaque).
    fn create_at(&self, r: &Resolved, build: &dyn Fn(BorrowedFd<'_>, &OsStr) -> Result<()>) -> Result<Target> {
        self.check_mount_writable(r)?;
        let whiteout = match &r.found {
            Found::Missing { whiteout } => *whiteout,
            _ => return Err(Error::os(libc::EEXIST, r.path.as_os_str())),
        };
        let at = |e: Error| e.at(r.path.as_os_str());
        if let Some(Dir::Mount { fd, .. }) = &r.parent {
            build(fd.as_fd(), &r.name).map_err(at)?;
            return Ok(Target { dir: fd.clone(), name: r.name.clone() });
        }
        let up = self.upper_or_rofs(&r.path)?;
        let dir = self.upper_dir(r.path.parent().unwrap_or(Path::new("/")))?;
        if !whiteout {
            build(dir.as_fd(), &r.name).map_err(at)?;
            self.inherit_setgid(dir.as_fd(), &r.name, false).map_err(at)?;
            return Ok(Target { dir, name: r.name.clone() });
        }
        let tmp = scratch_name();
        let built = build(up.scratch.as_fd(), &tmp).and_then(|_| {
            let m = Meta::from_stat(&sys::lstat_at(up.scratch.as_fd(), &tmp)?);
            if m.is_dir() {
                sys::set_opaque(up.scratch.as_fd(), &tmp, self.privilege)?;
                // rename() cannot put a directory over a device: exchange, then drop the whiteout.
                rustix::fs::renameat_with(up.scratch.as_fd(), &tmp, dir.as_fd(), &r.name, RenameFlags::EXCHANGE)?;
            } else {
                rustix::fs::renameat(up.scratch.as_fd(), &tmp, dir.as_fd(), &r.name)?;
            }
            Ok(())
        });
        let _ = sys::remove_all_at(up.scratch.as_fd(), &tmp);
        built.map_err(at)?;
        self.inherit_setgid(dir.as_fd(), &r.name, true).map_err(at)?;
        Ok(Target { dir, name: r.name.clone() })
    }

    /// A new entry in a setgid directory takes the directory's group (and a new directory its setgid
    /// bit), as the kernel does. Needed where the kernel could not see it: an entry built in scratch, or
    /// a rootless store, whose directories keep their setgid bit in the override only.
    fn inherit_setgid(&self, dir: BorrowedFd<'_>, name: &OsStr, built_elsewhere: bool) -> Result<()> {
        if self.privilege == Privilege::Root && !built_elsewhere {
            return Ok(());
        }
        let parent = sys::read_meta(dir, OsStr::new("."), self.privilege)?;
        if parent.mode & libc::S_ISGID == 0 {
            return Ok(());
        }
        let m = sys::read_meta(dir, name, self.privilege)?;
        let mut want = m.attrs();
        want.gid = parent.gid;
        if want.kind == Kind::Dir {
            want.perm |= libc::S_ISGID;
        }
        if want == m.attrs() {
            return Ok(());
        }
        match (self.privilege, want.kind) {
            (Privilege::Rootless, Kind::Symlink) => Ok(()),
            (Privilege::Rootless, _) => apply_attrs(dir, name, None, &want, self.privilege),
            (Privilege::Root, kind) => {
                sys::chown_at(dir, name, None, Some(want.gid))?;
                if kind == Kind::Dir {
                    rustix::fs::chmodat(dir, name, Mode::from_raw_mode(want.perm), AtFlags::empty())?;
                }
                Ok(())
            }
        }
    }

    /// Remove a resolved entry: a whiteout where the image layers have something there, else unlink.
    fn delete(&self, r: &Resolved) -> Result<()> {
        self.check_mount_writable(r)?;
        let at = |e: Error| e.at(r.path.as_os_str());
        match (&r.found, &r.parent) {
            (Found::Root, _) | (Found::MountRoot { .. }, _) | (Found::Virtual, _) => Err(Error::os(libc::EBUSY, r.path.as_os_str())),
            (Found::Missing { .. }, _) => Err(Error::os(libc::ENOENT, r.path.as_os_str())),
            (_, Some(Dir::Mount { fd, .. })) => sys::remove_all_at(fd.as_fd(), &r.name).map_err(at),
            // The whiteout goes into the parent's writable directory, copied up first if need be.
            (Found::Lower { .. }, parent) => {
                let up = self.upper_or_rofs(&r.path)?;
                let dir = match parent {
                    Some(Dir::Union { upper: Some(dir), .. }) => dir.clone(),
                    _ => self.upper_dir(r.path.parent().unwrap_or(Path::new("/")))?,
                };
                whiteout::make(up.scratch.as_fd(), dir.as_fd(), &r.name).map_err(at)
            }
            (Found::Upper { kind }, Some(Dir::Union { upper: Some(dir), .. })) => {
                let up = self.upper_or_rofs(&r.path)?;
                if self.lower_has(r)? {
                    let tmp = scratch_name();
                    whiteout::make(up.scratch.as_fd(), up.scratch.as_fd(), &tmp).map_err(at)?;
                    let flags = if *kind == Kind::Dir { RenameFlags::EXCHANGE } else { RenameFlags::empty() };
                    let res = rustix::fs::renameat_with(up.scratch.as_fd(), &tmp, dir.as_fd(), &r.name, flags);
                    let cleanup = sys::remove_all_at(up.scratch.as_fd(), &tmp);
                    res.map_err(|e| at(e.into()))?;
                    cleanup
                } else if *kind == Kind::Dir {
                    // Move it out of sight first, so a crash never leaves a half-deleted directory visible.
                    let tmp = scratch_name();
                    rustix::fs::renameat(dir.as_fd(), &r.name, up.scratch.as_fd(), &tmp).map_err(|e| at(e.into()))?;
                    sys::remove_all_at(up.scratch.as_fd(), &tmp)
                } else {
                    rustix::fs::unlinkat(dir.as_fd(), &r.name, AtFlags::empty()).map_err(|e| at(e.into()))
                }
            }
            _ => Err(Error::os(libc::EINVAL, r.path.as_os_str())),
        }
    }

    fn is_empty_dir(&self, r: &Resolved) -> Result<bool> {
        let d = self.enter(r)?;
        Ok(self.list_dir(&d, &r.path)?.is_empty())
    }

    fn mounts_below(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.target != path && m.target.starts_with(path))
    }

    // ----- the public write operations -----

    /// Open (and maybe create) a file for writing; returns the descriptor. Copies an image file up first
    /// (without its data when truncating).
    pub fn open_write(&self, path: &Path, flags: OFlags, mode: u32) -> Result<OwnedFd> {
        // O_CREAT|O_EXCL never follows a final symlink (POSIX), O_NOFOLLOW never does.
        let exclusive = flags.contains(OFlags::CREATE | OFlags::EXCL);
        let follow = !(flags.contains(OFlags::NOFOLLOW) || exclusive);
        self.open_write_resolved(self.resolve(path, follow)?, flags, mode)
    }

    /// `open_write` of a path resolved already (a final symlink followed as `flags` say).
    pub fn open_write_resolved(&self, r: Resolved, flags: OFlags, mode: u32) -> Result<OwnedFd> {
        let exclusive = flags.contains(OFlags::CREATE | OFlags::EXCL);
        let at = |e: Errno| Error::from(e).at(r.path.as_os_str());
        let open_flags = (flags - OFlags::CREATE - OFlags::EXCL) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match &r.found {
            Found::Missing { .. } => {
                if !flags.contains(OFlags::CREATE) {
                    return Err(Error::os(libc::ENOENT, r.path.as_os_str()));
                }
                let fd_slot = std::sync::Mutex::new(None);
                let create_flags = (flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC) - OFlags::TRUNC;
                self.create_at(&r, &|dir, name| {
                    let fd = rustix::fs::openat(dir, name, create_flags, Mode::from_raw_mode(mode))?;
                    *fd_slot.lock().unwrap() = Some(fd);
                    Ok(())
                })?;
                Ok(fd_slot.into_inner().unwrap().expect("created"))
            }
            _ => {
                if exclusive {
                    return Err(Error::os(libc::EEXIST, r.path.as_os_str()));
                }
                match r.kind() {
                    Some(Kind::Dir) => return Err(Error::os(libc::EISDIR, r.path.as_os_str())),
                    Some(Kind::Symlink) => return Err(Error::os(libc::ELOOP, r.path.as_os_str())),
                    _ => {}
                }
                let t = self.prepare(&r, !flags.contains(OFlags::TRUNC))?;
                rustix::fs::openat(t.dir.as_fd(), &t.name, open_flags, Mode::empty()).map_err(at)
            }
        }
    }

    pub fn mkdir(&self, path: &Path, mode: u32) -> Result<()> {
        let r = self.resolve(path, false)?;
        self.create_at(&r, &|dir, name| Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?))?;
        Ok(())
    }

    pub fn symlink(&self, target: &OsStr, path: &Path) -> Result<()> {
        let r = self.resolve(path, false)?;
        self.create_at(&r, &|dir, name| Ok(rustix::fs::symlinkat(target, dir, name)?))?;
        Ok(())
    }

    /// A hard link `dst` to the existing non-directory `src` (copied up first, as the kernel does).
    pub fn link(&self, src: &Path, dst: &Path) -> Result<()> {
        // In the kernel's order: the old entry looked up, the new name checked, then the old one's type.
        let rs = self.resolve(src, false)?.require()?;
        let rd = self.resolve(dst, false)?;
        if rd.found.exists() {
            return Err(Error::os(libc::EEXIST, rd.path.as_os_str()));
        }
        if rs.kind() == Some(Kind::Dir) {
            return Err(Error::os(libc::EPERM, rs.path.as_os_str()));
        }
        if rs.mount() != rd.mount() {
            return Err(Error::Os { errno: libc::EXDEV, path: Some(rs.path.into()), path2: Some(rd.path.into()) });
        }
        self.check_mount_writable(&rs)?;
        // Copied up from the image, or given its own inode if shared with a committed layer: the two
        // names must stay one file whatever is written through either.
        let t = self.prepare(&rs, true)?;
        self.create_at(&rd, &|dir, name| Ok(rustix::fs::linkat(t.dir.as_fd(), &t.name, dir, name, AtFlags::empty())?))?;
        Ok(())
    }

    /// Remove a non-directory.
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.remove_resolved(self.resolve(path, false)?)
    }

    /// `remove` of a path resolved already (not following a final symlink).
    pub fn remove_resolved(&self, r: Resolved) -> Result<()> {
        let r = r.require()?;
        if r.kind() == Some(Kind::Dir) {
            return Err(Error::os(libc::EISDIR, r.path.as_os_str()));
        }
        self.delete(&r)
    }

    /// Remove an empty directory (empty in the merged view).
    pub fn rmdir(&self, path: &Path) -> Result<()> {
        self.rmdir_resolved(self.resolve(path, false)?)
    }

    /// `rmdir` of a path resolved already.
    pub fn rmdir_resolved(&self, r: Resolved) -> Result<()> {
        let r = r.require()?;
        if r.kind() != Some(Kind::Dir) {
            return Err(Error::os(libc::ENOTDIR, r.path.as_os_str()));
        }
        if !self.is_empty_dir(&r)? {
            return Err(Error::os(libc::ENOTEMPTY, r.path.as_os_str()));
        }
        self.delete(&r)
    }

    /// Remove a directory and everything below it: one whiteout where the image layers have it, whatever
    /// its size. Contents of mounts below it are removed one by one.
    pub fn rmtree(&self, path: &Path) -> Result<()> {
        let r = self.resolve(path, false)?.require()?;
        match r.kind() {
            Some(Kind::Dir) => {}
            Some(Kind::Symlink) => return Err(Error::os(libc::ENOTDIR, r.path.as_os_str())),
            _ => return Err(Error::os(libc::ENOTDIR, r.path.as_os_str())),
        }
        if matches!(r.found, Found::MountRoot { .. } | Found::Root) || self.mounts_below(&r.path) {
            let d = self.enter(&r)?;
            for (name, kind) in self.list_dir(&d, &r.path)? {
                let child = r.path.join(&name);
                if kind == Kind::Dir {
                    self.rmtree(&child)?;
                } else {
                    self.remove(&child)?;
                }
            }
            return if matches!(r.found, Found::MountRoot { .. } | Found::Root) || self.mounts_below(&r.path) {
                Err(Error::os(libc::EBUSY, r.path.as_os_str()))
            } else {
                self.delete(&r)
            };
        }
        self.delete(&r)
    }

    /// Rename (overlayfs rules, except that directories from the image layers can be renamed too).
    pub fn rename(&self, src: &Path, dst: &Path) -> Result<()> {
        // In the kernel's order: both parents resolved first, then the source looked up.
        let rs = self.resolve(src, false)?;
        let rd = self.resolve(dst, false)?;
        let rs = rs.require()?;
        let both = |errno: i32| Error::Os { errno, path: Some(rs.path.clone().into()), path2: Some(rd.path.clone().into()) };
        if matches!(rs.found, Found::Root | Found::MountRoot { .. }) || matches!(rd.found, Found::Root | Found::MountRoot { .. }) {
            return Err(both(libc::EBUSY));
        }
        if rs.path == rd.path {
            return Ok(());
        }
        if rd.path.starts_with(&rs.path) {
            return Err(both(libc::EINVAL));
        }
        // The destination is an ancestor of the source: it cannot be empty.
        if rs.path.starts_with(&rd.path) {
            return Err(both(libc::ENOTEMPTY));
        }
        if rs.mount() != rd.mount() {
            return Err(both(libc::EXDEV));
        }
        self.check_mount_writable(&rs)?;
        let src_dir = rs.kind() == Some(Kind::Dir);
        if let Some(k) = rd.kind() {
            if src_dir && k != Kind::Dir {
                return Err(both(libc::ENOTDIR));
            }
            if !src_dir && k == Kind::Dir {
                return Err(both(libc::EISDIR));
            }
            if k == Kind::Dir && !self.is_empty_dir(&rd)? {
                return Err(both(libc::ENOTEMPTY));
            }
        }
        if src_dir && (self.mounts_below(&rs.path) || self.mounts_below(&rd.path)) {
            return Err(both(libc::EBUSY));
        }
        if let (Some(Dir::Mount { fd: sfd, .. }), Some(Dir::Mount { fd: dfd, .. })) = (&rs.parent, &rd.parent) {
            return rustix::fs::renameat(sfd.as_fd(), &rs.name, dfd.as_fd(), &rd.name)
                .map_err(|e| Error::from(e).at2(rs.path.as_os_str(), rd.path.as_os_str()));
        }
        let up = self.upper_or_rofs(&rs.path)?;
        let src_has_lower = self.lower_has(&rs)?;
        let dst_has_lower = self.lower_has(&rd)?;
        let src_t = if src_dir {
            if src_has_lower {
                // Make the directory self-contained in the writable layer before moving it.
                self.copy_up_tree(&rs)?;
            }
            let (dir, name) = match self.host_parent(&self.resolve(&rs.path, false)?) {
                Some(x) => x,
                None => return Err(both(libc::EIO)),
            };
            if src_has_lower || dst_has_lower {
                sys::set_opaque(dir.as_fd(), &name, self.privilege)?;
            }
            Target { dir, name }
        } else {
            self.prepare(&rs, true)?
        };
        let dst_dir = self.upper_dir(rd.path.parent().unwrap_or(Path::new("/")))?;
        // An existing (empty) destination directory in the writable layer goes away first.
        if src_dir && matches!(rd.found, Found::Upper { kind: Kind::Dir }) {
            let tmp = scratch_name();
            rustix::fs::renameat(dst_dir.as_fd(), &rd.name, up.scratch.as_fd(), &tmp)?;
            sys::remove_all_at(up.scratch.as_fd(), &tmp)?;
        }
        let dst_is_whiteout = matches!(rd.found, Found::Missing { whiteout: true });
        let err2 = |e: Errno| Error::from(e).at2(rs.path.as_os_str(), rd.path.as_os_str());
        if src_dir && dst_is_whiteout {
            rustix::fs::renameat_with(src_t.dir.as_fd(), &src_t.name, dst_dir.as_fd(), &rd.name, RenameFlags::EXCHANGE).map_err(err2)?;
            // The whiteout now sits where the source was: exactly right if the source exists below.
            if !src_has_lower {
                rustix::fs::unlinkat(src_t.dir.as_fd(), &src_t.name, AtFlags::empty()).map_err(err2)?;
            }
            return Ok(());
        }
        if src_has_lower {
            match rustix::fs::renameat_with(src_t.dir.as_fd(), &src_t.name, dst_dir.as_fd(), &rd.name, RenameFlags::WHITEOUT) {
                Ok(()) => return Ok(()),
                Err(Errno::INVAL) | Err(Errno::PERM) => {}
                Err(e) => return Err(err2(e)),
            }
            rustix::fs::renameat(src_t.dir.as_fd(), &src_t.name, dst_dir.as_fd(), &rd.name).map_err(err2)?;
            return whiteout::make(up.scratch.as_fd(), src_t.dir.as_fd(), &src_t.name);
        }
        rustix::fs::renameat(src_t.dir.as_fd(), &src_t.name, dst_dir.as_fd(), &rd.name).map_err(err2)
    }

    /// Copy a whole directory (and everything visible below it) into the writable layer, dropping the
    /// whiteouts inside it: afterwards it can be marked opaque and moved without depending on the layers.
    fn copy_up_tree(&self, r: &Resolved) -> Result<()> {
        if matches!(r.found, Found::Lower { .. }) {
            self.copy_up(r, true)?;
        }
        let r = self.resolve(&r.path, false)?;
        let d = self.enter(&r)?;
        for (name, kind) in self.list_dir(&d, &r.path)? {
            let child = self.resolve(&r.path.join(&name), false)?;
            match (&child.found, kind) {
                (_, Kind::Dir) => self.copy_up_tree(&child)?,
                (Found::Lower { .. }, _) => {
                    self.copy_up(&child, true)?;
                }
                _ => {}
            }
        }
        // Whiteouts mean nothing once the directory stops merging with the layers below.
        if let Some((dir, name)) = self.host_parent(&r) {
            let sub = rustix::fs::openat(dir.as_fd(), &name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
            keeping_times(sub.as_fd(), || {
                for (n, k) in sys::read_dir(sub.as_fd())? {
                    if matches!(k, Some(Kind::Char) | None) && Meta::from_stat(&sys::lstat_at(sub.as_fd(), &n)?).is_whiteout() {
                        rustix::fs::unlinkat(&sub, &n, AtFlags::empty())?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    pub fn chmod(&self, path: &Path, mode: u32, follow: bool) -> Result<()> {
        let r = self.resolve(path, follow)?.require()?;
        if r.kind() == Some(Kind::Symlink) {
            return Err(Error::os(libc::EOPNOTSUPP, r.path.as_os_str()));
        }
        let t = self.prepare(&r, true)?;
        let at = |e: Error| e.at(r.path.as_os_str());
        match self.privilege {
            Privilege::Root => rustix::fs::chmodat(t.dir.as_fd(), &t.name, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty())
                .map_err(|e| at(e.into())),
            Privilege::Rootless => {
                let mut a = sys::read_meta(t.dir.as_fd(), &t.name, self.privilege).map_err(at)?.attrs();
                a.perm = mode & 0o7777;
                apply_attrs(t.dir.as_fd(), &t.name, None, &a, self.privilege).map_err(at)
            }
        }
    }

    /// Change owner (`None` keeps the current value).
    pub fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>, follow: bool) -> Result<()> {
        let r = self.resolve(path, follow)?.require()?;
        let t = self.prepare(&r, true)?;
        let at = |e: Error| e.at(r.path.as_os_str());
        match self.privilege {
            Privilege::Root => sys::chown_at(t.dir.as_fd(), &t.name, uid, gid).map_err(at),
            Privilege::Rootless => {
                let m = sys::read_meta(t.dir.as_fd(), &t.name, self.privilege).map_err(at)?;
                if m.kind() == Kind::Symlink {
                    // A symlink cannot carry the override xattr.
                    return Err(Error::os(libc::EPERM, r.path.as_os_str()));
                }
                let mut a = m.attrs();
                a.uid = uid.unwrap_or(a.uid);
                a.gid = gid.unwrap_or(a.gid);
                // As chown(2) does for regular files: setuid, and setgid with group-execute, are cleared.
                if a.kind == Kind::File && (uid.is_some() || gid.is_some()) {
                    a.perm &= !0o4000;
                    if a.perm & 0o010 != 0 {
                        a.perm &= !0o2000;
                    }
                }
                apply_attrs(t.dir.as_fd(), &t.name, None, &a, self.privilege).map_err(at)
            }
        }
    }

    /// Set access and modification times (`None`: now).
    pub fn utime(&self, path: &Path, times: Option<Timestamps>, follow: bool) -> Result<()> {
        let r = self.resolve(path, follow)?.require()?;
        let t = self.prepare(&r, true)?;
        let ts = times.unwrap_or_else(|| {
            let now = Timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW as _ };
            Timestamps { last_access: now, last_modification: now }
        });
        rustix::fs::utimensat(t.dir.as_fd(), &t.name, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| Error::from(e).at(r.path.as_os_str()))
    }

    pub fn truncate(&self, path: &Path, size: u64) -> Result<()> {
        let r = self.resolve(path, true)?.require()?;
        if r.kind() == Some(Kind::Dir) {
            return Err(Error::os(libc::EISDIR, r.path.as_os_str()));
        }
        let t = self.prepare(&r, size > 0)?;
        let fd = rustix::fs::openat(t.dir.as_fd(), &t.name, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::from(e).at(r.path.as_os_str()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| Error::from(e).at(r.path.as_os_str()))
    }

    pub fn setxattr(&self, path: &Path, attr: &CStr, value: &[u8], flags: i32, follow: bool) -> Result<()> {
        if crate::format::is_internal_xattr(attr.to_bytes()) {
            return Err(Error::os(libc::EPERM, path.as_os_str()));
        }
        let r = self.resolve(path, follow)?.require()?;
        let t = self.prepare(&r, true)?;
        let p = sys::fd_path(t.dir.as_fd(), &t.name);
        rustix::fs::lsetxattr(p.as_c_str(), attr, value, rustix::fs::XattrFlags::from_bits_retain(flags as u32))
            .map_err(|e| Error::from(e).at(r.path.as_os_str()))
    }

    pub fn removexattr(&self, path: &Path, attr: &CStr, follow: bool) -> Result<()> {
        if crate::format::is_internal_xattr(attr.to_bytes()) {
            return Err(Error::os(libc::ENODATA, path.as_os_str()));
        }
        let r = self.resolve(path, follow)?.require()?;
        let t = self.prepare(&r, true)?;
        let p = sys::fd_path(t.dir.as_fd(), &t.name);
        rustix::fs::lremovexattr(p.as_c_str(), attr).map_err(|e| Error::from(e).at(r.path.as_os_str()))
    }

    /// Give every file of the writable layer still shared with a committed layer its own inode (before a
    /// kernel mount, which would write to them in place). Returns how many were copied.
    pub fn unshare_all(&self) -> Result<u64> {
        let up = match &self.upper {
            Some(u) => u,
            None => return Ok(0),
        };
        if up.shared.is_empty()? {
            return Ok(0);
        }
        let mut count = 0;
        let mut stack = vec![crate::rw::copyup::dup(&up.fd)?];
        while let Some(dir) = stack.pop() {
            let d = rustix::fs::openat(&dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            for (name, kind) in sys::read_dir(d.as_fd())? {
                match kind {
                    Some(Kind::Dir) => stack.push(open_subdir(d.as_fd(), &name)?),
                    Some(Kind::File) | None => {
                        let raw = Meta::from_stat(&sys::lstat_at(d.as_fd(), &name)?);
                        if raw.kind() == Kind::File && raw.nlink > 1 && up.shared.contains(raw.ino)? {
                            self.ensure_private(d.as_fd(), &name)?;
                            count += 1;
                        } else if raw.kind() == Kind::Dir {
                            stack.push(open_subdir(d.as_fd(), &name)?);
                        }
                    }
                    _ => {}
                }
            }
        }
        up.shared.clear()?;
        Ok(count)
    }

    /// Remove, from the writable layer itself, the given entries if they are empty directories or empty
    /// files: the mount points a kernel mount had to create (deepest first). Anything else stays.
    pub fn remove_empty_mount_points(&self, paths: &[PathBuf]) -> Result<()> {
        let up = match &self.upper {
            Some(u) => u,
            None => return Ok(()),
        };
        for path in paths {
            let comps: Vec<&OsStr> = path.iter().skip(1).collect();
            let Some((last, parents)) = comps.split_last() else { continue };
            let mut dir = up.fd.clone();
            let mut ok = true;
            for c in parents {
                match open_subdir(dir.as_fd(), c) {
                    Ok(fd) => dir = Arc::new(fd),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            if let Ok(st) = sys::lstat_at(dir.as_fd(), last) {
                let m = Meta::from_stat(&st);
                let _ = match m.kind() {
                    Kind::Dir => rustix::fs::unlinkat(dir.as_fd(), *last, AtFlags::REMOVEDIR),
                    Kind::File if m.size == 0 => rustix::fs::unlinkat(dir.as_fd(), *last, AtFlags::empty()),
                    _ => Ok(()),
                };
            }
        }
        Ok(())
    }

    /// Make a FIFO or socket (and, as root, a device node) at a free path.
    pub fn mknod(&self, path: &Path, kind: Kind, mode: u32, rdev: u64) -> Result<()> {
        let r = self.resolve(path, false)?;
        let ft = match kind {
            Kind::Fifo => FileType::Fifo,
            Kind::Char => FileType::CharacterDevice,
            Kind::Block => FileType::BlockDevice,
            // A socket bound by a program on a mount of the view.
            Kind::Socket => FileType::Socket,
            _ => return Err(Error::os(libc::EINVAL, path.as_os_str())),
        };
        if ft == FileType::CharacterDevice && rdev == 0 {
            return Err(Error::os(libc::EPERM, path.as_os_str()));
        }
        // Anyone may make a socket node: it stays one, also in a rootless store.
        let rootless = self.privilege == Privilege::Rootless && r.mount().is_none() && kind != Kind::Socket;
        self.create_at(&r, &|dir, name| {
            if rootless {
                // Kept as the convention says: an empty file whose override names the real type.
                let fd = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
                let a = crate::attrs::Attrs { kind, perm: mode & 0o7777, uid: 0, gid: 0, rdev };
                apply_attrs(dir, name, Some(fd.as_fd()), &a, self.privilege)
            } else {
                Ok(rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(mode), rdev)?)
            }
        })?;
        Ok(())
    }
}
