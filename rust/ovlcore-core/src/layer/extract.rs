//! Building a layer directory from the validated entries of an OCI layer tar.
//!
//! Every entry is created relative to a directory opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`,
//! so an entry can never go through a symlink; hard links must point at an earlier non-directory entry
//! of this layer. Whiteouts become 0/0 character devices and `.wh..wh..opq` an opaque xattr; whiteouts
//! that could hide nothing are dropped at the end (the kernel would list them). The raw bytes that are
//! not file content are recorded as tar-split segments, for byte-identical re-export.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::attrs::{self, apply_attrs, Attrs, Kind, Meta, Privilege};
use crate::error::{Error, Result};
use crate::format::{in_aufs_meta, marker, Marker, WHITEOUT_PREFIX};
use crate::layer::tarsplit::SplitWriter;
use crate::sys;
use crate::tar::{read_entries, Entry, EntryKind, EntryMeta};
use crate::union::Lower;

/// The raw bytes that are not file content, recorded (for tar-split) while `recording`. Shared between
/// the reader under the tar parser and the importer, which pauses recording around file content.
struct Tap {
    recording: bool,
    segment: Vec<u8>,
}

struct TapReader<R> {
    inner: R,
    tap: Rc<RefCell<Tap>>,
}

impl<R: Read> Read for TapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut tap = self.tap.borrow_mut();
        if tap.recording {
            tap.segment.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Parse the plain tar stream `plain` and build the layer in the empty directory `dest` (tar-split
/// records into `split`); returns (content size, entries). Reads `plain` to its very end: whatever
/// follows the end-of-archive marker is part of the stream and of its digest.
pub fn extract(plain: impl Read, dest: &Path, split: Option<File>, privilege: Privilege, lower: Option<&Lower>) -> Result<(u64, u64)> {
    let tap = Rc::new(RefCell::new(Tap { recording: true, segment: Vec::new() }));
    let reader = TapReader { inner: plain, tap: tap.clone() };
    let mut imp = Importer::new(dest, privilege, lower, split)?;
    let mut rest = read_entries(reader, |entry| imp.entry(entry, &tap))?;
    io::copy(&mut rest, &mut io::sink())?;
    let segment = std::mem::take(&mut tap.borrow_mut().segment);
    imp.finish(&segment)?;
    Ok((imp.size, imp.entries))
}

struct Importer<'a> {
    root: OwnedFd,
    privilege: Privilege,
    lower: Option<&'a Lower>,
    split: Option<SplitWriter>,
    /// The last parent directory opened, reused while entries stay in one directory.
    parent_cache: Option<(PathBuf, Rc<OwnedFd>)>,
    /// Explicit directory entries, for restoring their times once everything below them is written.
    dir_times: Vec<(PathBuf, Timestamps)>,
    whiteouts: Vec<PathBuf>,
    opaque: HashSet<PathBuf>,
    size: u64,
    entries: u64,
    /// One copy buffer for every file of the layer.
    buf: Vec<u8>,
}

impl<'a> Importer<'a> {
    fn new(dest: &Path, privilege: Privilege, lower: Option<&'a Lower>, split: Option<File>) -> Result<Self> {
        Ok(Importer {
            root: sys::open_dir(dest)?,
            privilege,
            lower: lower.filter(|l| !l.is_empty()),
            split: split.map(SplitWriter::new).transpose()?,
            parent_cache: None,
            dir_times: Vec::new(),
            whiteouts: Vec::new(),
            opaque: HashSet::new(),
            size: 0,
            entries: 0,
            buf: vec![0u8; 1 << 20],
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut Entry<'_, R>, tap: &Rc<RefCell<Tap>>) -> Result<()> {
        self.entries += 1;
        let shown = entry.shown().to_owned();
        let rel = entry.name.clone();
        let meta = entry.meta.clone();
        let (parent_rel, name) = match rel.file_name() {
            Some(n) => (rel.parent().unwrap_or(Path::new("")).to_path_buf(), n.to_os_string()),
            None => {
                // The layer's root directory itself ("./").
                self.set_attrs(self.root.as_fd(), OsStr::new("."), &meta, Kind::Dir).map_err(|e| e.at(&*shown))?;
                self.dir_times.push((PathBuf::new(), meta.times()));
                return Ok(());
            }
        };
        // aufs metadata (`.wh..wh.plnk/...`): skipped with everything below it.
        if in_aufs_meta(&parent_rel) {
            return Ok(());
        }
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            let parent = self.parent_dir(&parent_rel, &shown)?;
            return match marker(name.as_bytes()).map_err(|why| entry.bad(why))? {
                Some(Marker::Opaque) => {
                    sys::set_opaque(parent.as_fd(), OsStr::new("."), self.privilege).map_err(|e| e.at(&*shown))?;
                    self.opaque.insert(parent_rel);
                    Ok(())
                }
                Some(Marker::Whiteout(target)) => self.whiteout(parent.as_fd(), &parent_rel, target, &shown),
                Some(Marker::AufsMeta) | None => Ok(()),
            };
        }

        let parent = self.parent_dir(&parent_rel, &shown)?;
        let pfd = parent.as_fd();
        // What is already there: a whiteout from this layer is replaced, a directory merges with a
        // directory, anything else is a duplicate. Names are almost always free, so regular files and
        // directories just try to create and look only when the name is taken.
        let mut replaced_whiteout = false;
        let is_dir = entry.kind == EntryKind::Dir;
        let mut take_name = |this: &mut Self| -> Result<()> {
            let old = Meta::from_stat(&sys::lstat_at(pfd, &name).map_err(|e| e.at(&*shown))?);
            if old.is_whiteout() {
                rustix::fs::unlinkat(pfd, &name, AtFlags::empty())?;
                this.whiteouts.retain(|w| w != &rel);
                replaced_whiteout = true;
                Ok(())
            } else if old.is_dir() && is_dir {
                Ok(())
            } else {
                Err(Error::archive(format!("entry {shown:?}: duplicate entry")))
            }
        };
        if !matches!(entry.kind, EntryKind::File | EntryKind::Dir) {
            match sys::lstat_at(pfd, &name) {
                Ok(_) => take_name(self)?,
                Err(e) if e.is_errno(libc::ENOENT) => {}
                Err(e) => return Err(e.at(&*shown)),
            }
        }

        let created = match &entry.kind {
            EntryKind::Dir => {
                match sys::mkdir_at(pfd, &name, 0o700) {
                    Ok(_) => {}
                    Err(e) if e.is_errno(libc::EEXIST) => {
                        take_name(self)?;
                        sys::mkdir_at(pfd, &name, 0o700).map_err(|e| e.at(&*shown))?;
                    }
                    Err(e) => return Err(e.at(&*shown)),
                }
                if replaced_whiteout {
                    sys::set_opaque(pfd, &name, self.privilege)?;
                    self.opaque.insert(rel.clone());
                }
                self.set_attrs(pfd, &name, &meta, Kind::Dir).map_err(|e| e.at(&*shown))?;
                self.dir_times.push((rel.clone(), meta.times()));
                return Ok(());
            }
            EntryKind::File => {
                let create = || {
                    rustix::fs::openat(
                        pfd,
                        &name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                };
                let fd = match create() {
                    Ok(fd) => fd,
                    Err(Errno::EXIST) => {
                        take_name(self)?;
                        create().map_err(|e| Error::from(e).at(&*shown))?
                    }
                    Err(e) => return Err(Error::from(e).at(&*shown)),
                };
                let size = entry.size;
                if size > 0 {
                    self.flush_segment(tap)?;
                    if let Some(s) = self.split.as_mut() {
                        s.file(rel.as_os_str().as_bytes(), size)?;
                    }
                    tap.borrow_mut().recording = false;
                    let mut file = File::from(fd);
                    let copied = copy_content(entry, &mut file, &mut self.buf);
                    tap.borrow_mut().recording = true;
                    let copied = copied?;
                    if copied != size {
                        return Err(Error::truncated(format!("entry {shown:?}"), size, copied));
                    }
                    self.size += size;
                    if size >= WRITEBACK_THRESHOLD {
                        start_writeback(&file);
                    }
                    OwnedFd::from(file)
                } else {
                    fd
                }
            }
            EntryKind::Symlink(target) => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), pfd, &name).map_err(|e| Error::from(e).at(&*shown))?;
                self.size += target.len() as u64;
                self.set_link_attrs(pfd, &name, &meta).map_err(|e| e.at(&*shown))?;
                return Ok(());
            }
            EntryKind::HardLink(target) => {
                let (tparent, tname) = sys::split_parent(target);
                let tdir = sys::open_dir_beneath(self.root.as_fd(), tparent).map_err(|_| entry.bad("hard link target is not in this layer"))?;
                let tmeta = sys::lstat_at(tdir.as_fd(), tname)
                    .map(|s| Meta::from_stat(&s))
                    .map_err(|_| entry.bad("hard link target is not in this layer"))?;
                if tmeta.is_dir() || tmeta.is_whiteout() {
                    return Err(entry.bad("hard link to a directory or whiteout"));
                }
                rustix::fs::linkat(tdir.as_fd(), tname, pfd, &name, AtFlags::empty()).map_err(|e| Error::from(e).at(&*shown))?;
                return Ok(());
            }
            EntryKind::Fifo if self.privilege == Privilege::Root => {
                rustix::fs::mknodat(pfd, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0).map_err(|e| Error::from(e).at(&*shown))?;
                self.set_link_attrs(pfd, &name, &meta).map_err(|e| e.at(&*shown))?;
                return Ok(());
            }
            // Rootless FIFOs are kept like devices (below): a FIFO cannot carry the override xattr.
            EntryKind::Fifo | EntryKind::Char | EntryKind::Block => {
                let ftype = match entry.kind {
                    EntryKind::Char => FileType::CharacterDevice,
                    EntryKind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                match self.privilege {
                    Privilege::Root => {
                        rustix::fs::mknodat(pfd, &name, ftype, Mode::from_raw_mode(0o600), attrs::makedev(meta.dev.0, meta.dev.1))
                            .map_err(|e| Error::from(e).at(&*shown))?;
                        self.set_link_attrs(pfd, &name, &meta).map_err(|e| e.at(&*shown))?;
                        return Ok(());
                    }
                    // Rootless: an empty regular file whose override says what it really is.
                    Privilege::Rootless => rustix::fs::openat(
                        pfd,
                        &name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| Error::from(e).at(&*shown))?,
                }
            }
        };
        let k = match entry.kind {
            EntryKind::Char => Kind::Char,
            EntryKind::Block => Kind::Block,
            EntryKind::Fifo => Kind::Fifo,
            _ => Kind::File,
        };
        self.set_file_attrs(created.as_fd(), pfd, &name, &meta, k).map_err(|e| e.at(&*shown))
    }

    /// `.wh.TARGET` in directory `parent`: a whiteout device, unless this layer adds TARGET itself (the
    /// whiteout never deletes that, but a directory must then hide what lies below it).
    fn whiteout(&mut self, parent: BorrowedFd<'_>, parent_rel: &Path, target: &OsStr, shown: &str) -> Result<()> {
        match sys::lstat_at(parent, target) {
            Ok(st) => {
                if Meta::from_stat(&st).is_dir() {
                    sys::set_opaque(parent, target, self.privilege).map_err(|e| e.at(shown))?;
                    self.opaque.insert(parent_rel.join(target));
                }
            }
            Err(e) if e.is_errno(libc::ENOENT) => {
                sys::make_whiteout(parent, target).map_err(|e| e.at(shown))?;
                self.whiteouts.push(parent_rel.join(target));
            }
            Err(e) => return Err(e.at(shown)),
        }
        Ok(())
    }

    fn flush_segment(&mut self, tap: &Rc<RefCell<Tap>>) -> Result<()> {
        let seg = std::mem::take(&mut tap.borrow_mut().segment);
        if let Some(s) = self.split.as_mut() {
            s.segment(&seg)?;
        }
        Ok(())
    }

    /// Open (creating as needed) the directory `rel` of the new layer; refuses paths through symlinks.
    fn parent_dir(&mut self, rel: &Path, shown: &str) -> Result<Rc<OwnedFd>> {
        let hit = matches!(&self.parent_cache, Some((p, _)) if p == rel);
        if !hit {
            let fd = match sys::open_dir_beneath(self.root.as_fd(), rel) {
                Ok(fd) => fd,
                Err(e) if e.is_errno(libc::ENOENT) => self.make_parents(rel, shown)?,
                Err(e) if e.is_errno(libc::ELOOP) || e.is_errno(libc::EXDEV) => {
                    return Err(Error::archive(format!("entry {shown:?}: path goes through a symlink")))
                }
                // Maybe a whiteout this layer made: make_parents replaces it, or names the problem.
                Err(e) if e.is_errno(libc::ENOTDIR) => self.make_parents(rel, shown)?,
                Err(e) => return Err(e.at(shown)),
            };
            self.parent_cache = Some((rel.to_path_buf(), Rc::new(fd)));
        }
        Ok(self.parent_cache.as_ref().expect("set above").1.clone())
    }

    /// Create the missing directories of `rel` (root-owned 0755, as Docker does for implied parents). A
    /// whiteout this layer made where a directory is needed gives way to an opaque directory: the layer
    /// deletes what was below and adds a new directory there.
    fn make_parents(&mut self, rel: &Path, shown: &str) -> Result<OwnedFd> {
        let mut cur = rustix::io::dup(&self.root)?;
        let mut here = PathBuf::new();
        for comp in rel.iter() {
            here.push(comp);
            let implied = Attrs { kind: Kind::Dir, perm: 0o755, uid: 0, gid: 0, rdev: 0 };
            match sys::mkdir_at(cur.as_fd(), comp, 0o755) {
                Ok(true) => self.store_attrs(cur.as_fd(), comp, None, &implied)?,
                Ok(false) => {}
                Err(e) if e.is_errno(libc::EEXIST) => {
                    let was_whiteout = sys::lstat_at(cur.as_fd(), comp).map(|st| Meta::from_stat(&st).is_whiteout()).unwrap_or(false);
                    if !was_whiteout {
                        return Err(Error::archive(format!("entry {shown:?}: a parent is not a directory")));
                    }
                    rustix::fs::unlinkat(&cur, comp, AtFlags::empty())?;
                    self.whiteouts.retain(|w| w != &here);
                    rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755))?;
                    self.store_attrs(cur.as_fd(), comp, None, &implied)?;
                    sys::set_opaque(cur.as_fd(), comp, self.privilege)?;
                    self.opaque.insert(here.clone());
                }
                Err(e) => return Err(e.at(shown)),
            }
            cur = match sys::open_beneath(cur.as_fd(), Path::new(comp), OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if e.is_errno(libc::ELOOP) || e.is_errno(libc::ENOTDIR) => {
                    return Err(Error::archive(format!("entry {shown:?}: path goes through a symlink")))
                }
                Err(e) => return Err(e.at(shown)),
            };
        }
        Ok(cur)
    }

    fn set_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, h: &EntryMeta, kind: Kind) -> Result<()> {
        let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::DIRECTORY, Mode::empty())?;
        self.set_file_attrs(fd.as_fd(), dir, name, h, kind)
    }

    /// Owner, mode, xattrs and times of a regular file, device stand-in or directory, through its fd.
    fn set_file_attrs(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr, h: &EntryMeta, kind: Kind) -> Result<()> {
        let want = Attrs { kind, perm: h.perm, uid: h.uid, gid: h.gid, rdev: attrs::makedev(h.dev.0, h.dev.1) };
        self.store_attrs(dir, name, Some(fd), &want)?;
        for (attr, value) in &h.xattrs {
            match rustix::fs::fsetxattr(fd, attr.as_c_str(), value, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                // An xattr this process may not set (security.*, trusted.* when unprivileged): skipped.
                Err(Errno::PERM) | Err(Errno::OPNOTSUPP) | Err(Errno::ACCESS) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if kind != Kind::Dir {
            rustix::fs::futimens(fd, &h.times())?;
        }
        Ok(())
    }

    /// Owner and mode as the store keeps them (natively, or through the rootless override).
    fn store_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, fd: Option<BorrowedFd<'_>>, want: &Attrs) -> Result<()> {
        apply_attrs(dir, name, fd, want, self.privilege)
    }

    /// Symlinks, FIFOs and (root) devices: no fd to work through; the xattr override cannot be set on them.
    fn set_link_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, h: &EntryMeta) -> Result<()> {
        if self.privilege == Privilege::Root {
            if h.uid != 0 || h.gid != 0 {
                sys::chown_at(dir, name, Some(h.uid), Some(h.gid))?;
            }
            let st = Meta::from_stat(&sys::lstat_at(dir, name)?);
            if st.kind() != Kind::Symlink {
                rustix::fs::chmodat(dir, name, Mode::from_raw_mode(h.perm), AtFlags::empty())?;
            }
            for (attr, value) in &h.xattrs {
                let path = sys::fd_path(dir, name);
                let _ = rustix::fs::lsetxattr(path.as_c_str(), attr.as_c_str(), value, rustix::fs::XattrFlags::empty());
            }
        } else if Meta::from_stat(&sys::lstat_at(dir, name)?).kind() == Kind::Fifo {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(h.perm & 0o777 | 0o600), AtFlags::empty())?;
        }
        rustix::fs::utimensat(dir, name, &h.times(), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Drop whiteouts that hide nothing (kernel overlayfs would list them), restore directory times,
    /// write the last tar-split segment and sync the new layer.
    fn finish(&mut self, trailer: &[u8]) -> Result<()> {
        for w in std::mem::take(&mut self.whiteouts) {
            let parent = w.parent().unwrap_or(Path::new(""));
            if !self.hides_something(parent)? {
                let (p, n) = sys::split_parent(&w);
                let dir = sys::open_dir_beneath(self.root.as_fd(), p)?;
                rustix::fs::unlinkat(&dir, n, AtFlags::empty())?;
            }
        }
        self.parent_cache = None;
        // Deepest first, so restoring a child's times does not disturb its parent's.
        self.dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, t) in &self.dir_times {
            let fd = sys::open_dir_beneath(self.root.as_fd(), rel)?;
            rustix::fs::futimens(&fd, t)?;
        }
        if let Some(mut s) = self.split.take() {
            s.segment(trailer)?;
            s.finish()?;
        }
        sys::syncfs(self.root.as_fd())?;
        Ok(())
    }

    /// Whether a whiteout in directory `parent` can hide anything: the directory must be merged with a
    /// lower one (it exists below as a directory, and neither it nor a parent is opaque in this layer).
    fn hides_something(&self, parent: &Path) -> Result<bool> {
        let lower = match self.lower {
            Some(l) => l,
            None => return Ok(false),
        };
        let mut p = Some(parent);
        while let Some(cur) = p {
            if self.opaque.contains(cur) {
                return Ok(false);
            }
            p = cur.parent();
        }
        Ok(lower.dir_node(parent)?.is_some())
    }
}

fn copy_content(src: &mut impl Read, dst: &mut File, buf: &mut [u8]) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}

/// Files at least this big start their writeback as soon as they are written, so that the final sync
/// of the layer has little left to wait for.
const WRITEBACK_THRESHOLD: u64 = 256 << 10;

fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; failure only means no early writeback.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}
