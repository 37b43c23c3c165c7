//! `docker commit`: the writable layer becomes a new immutable layer.
//!
//! Docker tars the writable layer, hashes the tar and untars it again. Here two things run side by side:
//! the deterministic layer tar is streamed into a hasher on threads of its own (its sha256 is the
//! diff_id; reading and hashing overlap), while the new layer
//! directory is built by *hard-linking* the writable layer's files instead of copying them. The container
//! keeps the same inodes; the list of shared inodes is returned so that the container's next change to
//! such a file copies it first (see `ops.rs`), keeping the committed layer immutable.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::attrs::{Kind, Meta, Privilege};
use crate::error::{Error, Result};
use crate::compress::Compression;
use crate::layer::{LayerStream, LayerTar};
use crate::rw::copyup::clone_entry;
use crate::sys;
use crate::union::{Lower, Node, View};

#[derive(Debug, Clone)]
pub struct CommitReport {
    pub diff_id: String,
    pub tar_size: u64,
    /// Bytes of content in the new layer.
    pub size: u64,
    /// Inodes now shared between the writable layer and the new layer.
    pub shared: Vec<u64>,
}

impl View {
    /// Build the layer made of this view's writable layer into the empty directory `dest`, and record
    /// the inodes it now shares with the container (so that the container's next change copies them).
    /// `progress`, if any, is told how many bytes of the layer tar have been read; an error from it
    /// stops the commit.
    pub fn commit(&self, dest: &Path, progress: Option<&(dyn Fn(u64) -> Result<()> + Sync)>) -> Result<CommitReport> {
        let up = self.upper.as_ref().ok_or_else(|| Error::os(libc::EROFS, dest.as_os_str()))?;
        let lower = if self.lower.is_empty() { None } else { Some(self.lower.clone()) };
        let report = commit_layer(&up.path, lower, self.privilege, dest, progress)?;
        up.shared.record(&report.shared)?;
        Ok(report)
    }
}

/// Build the layer made of the writable layer `upper` (over `lower`) into the empty directory `dest`.
fn commit_layer(
    upper: &Path,
    lower: Option<Arc<Lower>>,
    privilege: Privilege,
    dest: &Path,
    progress: Option<&(dyn Fn(u64) -> Result<()> + Sync)>,
) -> Result<CommitReport> {
    let lower = lower.filter(|l| !l.is_empty());
    let (hashed, mirrored) = std::thread::scope(|s| {
        let tar_lower = lower.clone();
        let hasher = s.spawn(move || -> Result<(String, u64)> {
            // The sha256 (half the work) runs on a thread of its own, overlapping the reading.
            let mut tar = LayerStream::new(LayerTar::walk(upper, privilege, tar_lower)?.read_ahead()?, Compression::None)?;
            let size = tar.drain(&mut |n| progress.map_or(Ok(()), |p| p(n)))?;
            let diff_id = tar.diff_id().ok_or_else(|| Error::corrupt("the layer tar ended without its digest"))?;
            Ok((diff_id, size))
        });
        let mirror = s.spawn(|| {
            // The hard links are the smaller half of the work: they get the CPU the tar and its hashing
            // leave idle (the hashing is the longest path), not a share of it.
            sys::yield_cpu_to_siblings(19);
            Mirror::run(upper, dest, lower.as_deref(), privilege)
        });
        (hasher.join().expect("hashing thread panicked"), mirror.join().expect("mirroring thread panicked"))
    });
    let (diff_id, tar_size) = hashed?;
    let (size, shared) = mirrored?;
    sys::syncfs(sys::open_dir(dest)?.as_fd())?;
    Ok(CommitReport { diff_id, tar_size, size, shared })
}

struct Mirror<'a> {
    lower: Option<&'a Lower>,
    privilege: Privilege,
    size: u64,
    shared: Vec<u64>,
    seen: HashSet<u64>,
    /// Multiply-linked files copied so far: inode → (directory, name) of the copy in the new layer.
    copies: std::collections::HashMap<u64, (OwnedFd, std::ffi::OsString)>,
    /// Inodes with more than one name in the writable layer itself (the container's own hard links).
    linked: HashSet<u64>,
}

/// The inodes that have several names inside the writable layer (links to committed layers don't count).
fn names_per_linked_inode(root: BorrowedFd<'_>) -> Result<HashSet<u64>> {
    let mut count: std::collections::HashMap<u64, u32> = Default::default();
    let mut stack = vec![rustix::io::fcntl_dupfd_cloexec(root, 0)?];
    while let Some(dir) = stack.pop() {
        for (name, kind) in sys::read_dir(dir.as_fd())? {
            match kind {
                Some(Kind::Dir) => stack.push(open_dir_at(dir.as_fd(), &name)?),
                Some(Kind::File) | None => {
                    let m = Meta::from_stat(&sys::lstat_at(dir.as_fd(), &name)?);
                    if m.kind() == Kind::Dir {
                        stack.push(open_dir_at(dir.as_fd(), &name)?);
                    } else if m.kind() == Kind::File && m.nlink > 1 {
                        *count.entry(m.ino).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(count.into_iter().filter(|(_, n)| *n > 1).map(|(ino, _)| ino).collect())
}

impl<'a> Mirror<'a> {
    fn run(upper: &Path, dest: &Path, lower: Option<&'a Lower>, privilege: Privilege) -> Result<(u64, Vec<u64>)> {
        let src = sys::open_dir(upper)?;
        let linked = names_per_linked_inode(src.as_fd())?;
        let mut m = Mirror { lower, privilege, size: 0, shared: Vec::new(), seen: HashSet::new(), copies: Default::default(), linked };
        let dst = sys::open_dir(dest)?;
        let below = lower.map(|l| l.root().clone());
        m.dir(src.as_fd(), dst.as_fd(), below)?;
        Ok((m.size, m.shared))
    }

    /// Mirror one directory's entries with the layer format's rules: whiteouts only where the directory
    /// merges with a lower one, opaque markers only on directories that exist below.
    fn dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, below: Option<Arc<Node>>) -> Result<()> {
        for (name, _) in sys::read_dir(src)? {
            let raw = Meta::from_stat(&sys::lstat_at(src, &name)?);
            let lower_child = match (&below, self.lower) {
                (Some(node), Some(lower)) => lower.child(node, &name)?,
                _ => None,
            };
            if raw.is_whiteout() {
                if below.is_some() {
                    sys::make_whiteout(dst, &name)?;
                }
                continue;
            }
            let meta = sys::logical_meta(src, &name, raw, self.privilege);
            match meta.kind() {
                Kind::Dir => {
                    clone_entry(src, &name, &meta, dst, &name, false, self.privilege)?;
                    let lower_dir = match (&below, lower_child, self.lower) {
                        (Some(node), Some(c), Some(lower)) if c.kind == Kind::Dir => Some(lower.node(node, &name, &c)),
                        _ => None,
                    };
                    let opaque = sys::is_opaque(src, &name, self.privilege);
                    if opaque && lower_dir.is_some() {
                        sys::set_opaque(dst, &name, self.privilege)?;
                    }
                    let s = open_dir_at(src, &name)?;
                    let d = open_dir_at(dst, &name)?;
                    self.dir(s.as_fd(), d.as_fd(), if opaque { None } else { lower_dir })?;
                    // Creating the children moved the directory's times; put them back.
                    let ts = |t: (i64, u32)| Timespec { tv_sec: t.0, tv_nsec: t.1 as _ };
                    rustix::fs::futimens(&d, &Timestamps { last_access: ts(meta.atime), last_modification: ts(meta.mtime) })?;
                }
                _ if raw.kind() == Kind::File => {
                    if self.seen.insert(raw.ino) {
                        self.size += meta.size;
                    }
                    self.file(src, dst, &name, &raw, &meta)?;
                }
                Kind::Socket => {}
                _ => {
                    if meta.kind() == Kind::Symlink {
                        self.size += meta.size;
                    }
                    clone_entry(src, &name, &meta, dst, &name, false, self.privilege)?;
                }
            }
        }
        Ok(())
    }
}

impl Mirror<'_> {
    /// A regular file (or rootless stand-in) of the writable layer into the new layer. A file with one
    /// name in the writable layer is taken over by a hard link (no data copied); the container copies it
    /// before changing it.
    /// A file the container itself hard-linked is copied once, and its names linked in the new layer,
    /// so the container's own links keep working after the commit.
    fn file(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &std::ffi::OsStr, raw: &Meta, meta: &Meta) -> Result<()> {
        if !self.linked.contains(&raw.ino) {
            match rustix::fs::linkat(src, name, dst, name, AtFlags::empty()) {
                Ok(()) => {
                    self.shared.push(raw.ino);
                    return Ok(());
                }
                // No hard link possible (link count limit, policy): copy instead.
                Err(Errno::MLINK) | Err(Errno::PERM) | Err(Errno::XDEV) => {}
                Err(e) => return Err(e.into()),
            }
        } else if let Some((dir, first)) = self.copies.get(&raw.ino) {
            return Ok(rustix::fs::linkat(dir.as_fd(), first, dst, name, AtFlags::empty())?);
        }
        clone_entry(src, name, meta, dst, name, true, self.privilege)?;
        if self.linked.contains(&raw.ino) {
            self.copies.insert(raw.ino, (rustix::io::fcntl_dupfd_cloexec(dst, 0)?, name.to_os_string()));
        }
        Ok(())
    }
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?)
}
