//! `docker diff`: what a container changed relative to its image, read from the writable layer alone.
//!
//! Like Docker's comparison of the two trees: a path that is new is `A` (and so is everything below it),
//! a path that is gone is `D` (its descendants are not listed), a path whose type, mode, owner or device
//! changed (or, for non-directories, size or mtime) is `C`, and a directory with any change below it is
//! `C` too. Only the writable layer is walked, so the cost follows the changes, not the image's size;
//! an opaque directory also lists the image entries it hides, as deleted.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::attrs::{Kind, Meta};
use crate::error::Result;
use crate::sys;
use crate::union::Node;
use crate::union::{open_subdir, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// Docker's `statDifferent`: type and mode, owner, device; size and mtime for non-directories.
pub fn stat_differs(a: &Meta, b: &Meta) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.rdev != b.rdev
        || (!a.is_dir() && (a.size != b.size || a.mtime != b.mtime))
}

impl View {
    /// The container's changes, parents before children.
    pub fn diff(&self) -> Result<Vec<(ChangeKind, PathBuf)>> {
        let up = match &self.upper {
            Some(u) => u,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let root_image = if self.lower.is_empty() { None } else { Some(self.lower.root().clone()) };
        self.diff_dir(up.fd.as_fd(), Path::new("/"), root_image, false, &mut out)?;
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    fn excluded(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| path.starts_with(&m.target))
    }

    /// Changes below one directory of the writable layer; returns how many were added.
    fn diff_dir(
        &self,
        dir: BorrowedFd<'_>,
        path: &Path,
        image: Option<Arc<Node>>,
        opaque: bool,
        out: &mut Vec<(ChangeKind, PathBuf)>,
    ) -> Result<usize> {
        let start = out.len();
        let d = rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let mut present: HashSet<OsString> = HashSet::new();
        for (name, _) in sys::read_dir(d.as_fd())? {
            let child_path = path.join(&name);
            if self.excluded(&child_path) {
                continue;
            }
            let raw = Meta::from_stat(&sys::lstat_at(d.as_fd(), &name)?);
            let image_child = match &image {
                Some(node) => self.lower.child(node, &name)?,
                None => None,
            };
            if raw.is_whiteout() {
                if !opaque && image_child.is_some() {
                    out.push((ChangeKind::Deleted, child_path));
                }
                continue;
            }
            present.insert(name.clone());
            let meta = sys::logical_meta(d.as_fd(), &name, raw, self.privilege);
            let (node, ic) = match (&image, image_child) {
                (Some(node), Some(ic)) => (node, ic),
                _ => {
                    out.push((ChangeKind::Added, child_path.clone()));
                    if meta.is_dir() {
                        let sub = open_subdir(d.as_fd(), &name)?;
                        self.diff_dir(sub.as_fd(), &child_path, None, true, out)?;
                    }
                    continue;
                }
            };
            let lmeta = self.lower.meta(node, &name, &ic)?;
            if meta.is_dir() {
                let changed = stat_differs(&meta, &lmeta);
                if changed {
                    out.push((ChangeKind::Changed, child_path.clone()));
                }
                let below = if ic.kind == Kind::Dir { Some(self.lower.node(node, &name, &ic)) } else { None };
                // Below an opaque (recreated) directory nothing merges: the image's entries are deleted.
                let sub_opaque = opaque || below.is_none() || sys::is_opaque(d.as_fd(), &name, self.privilege);
                let sub = open_subdir(d.as_fd(), &name)?;
                let n = self.diff_dir(sub.as_fd(), &child_path, below, sub_opaque, out)?;
                if n > 0 && !changed {
                    out.push((ChangeKind::Changed, child_path));
                }
            } else if stat_differs(&meta, &lmeta) {
                out.push((ChangeKind::Changed, child_path));
            }
        }
        // An opaque directory hides every image entry it does not itself hold.
        if opaque {
            if let Some(node) = &image {
                for name in self.lower.names(node)? {
                    let child_path = path.join(name);
                    if !present.contains(name) && !self.excluded(&child_path) {
                        out.push((ChangeKind::Deleted, child_path));
                    }
                }
            }
        }
        Ok(out.len() - start)
    }
}
