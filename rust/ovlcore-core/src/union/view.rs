//! A container's (or an image's) merged file system: an optional writable layer over an immutable stack,
//! with volumes and bind mounts routed at their targets.
//!
//! Paths resolve as under `chroot`: absolute symlink targets start at the container's `/`, `..` stops there,
//! and a walk into the writable layer or a mount goes one component at a time with `O_NOFOLLOW`, so nothing
//! outside the layers and mount sources is ever reached.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::attrs::{Kind, Meta, Privilege};
use crate::error::{Error, Result};
use crate::sys;
use crate::rw::SharedInodes;
use crate::union::{Child, Lower, Node};

const MAX_SYMLINKS: u32 = 40;

/// A volume or bind mount as the view sees it. The source is opened when a path reaches it, so a
/// vanished source only affects paths below its target.
pub struct MountPoint {
    /// Absolute, normalized container path.
    pub target: PathBuf,
    pub source: PathBuf,
    pub read_only: bool,
    opened: OnceLock<OpenedSource>,
}

/// An opened mount source: the directory holding it and its name there ("." for a directory source),
/// the source itself when it is a directory, and its type.
#[derive(Clone)]
pub struct OpenedSource {
    pub parent: Arc<OwnedFd>,
    pub name: OsString,
    pub dir: Option<Arc<OwnedFd>>,
    pub kind: Kind,
}

impl MountPoint {
    pub fn new(target: &Path, source: &Path, read_only: bool) -> Result<MountPoint> {
        Ok(MountPoint { target: normalize(target), source: source.into(), read_only, opened: OnceLock::new() })
    }

    /// The source, opened on first use (a source that has vanished fails only the paths below the target).
    pub fn open(&self) -> Result<OpenedSource> {
        if let Some(o) = self.opened.get() {
            return Ok(o.clone());
        }
        let at = |e: rustix::io::Errno| Error::from(e).at(self.source.as_os_str());
        let meta = Meta::from_stat(&rustix::fs::stat(&self.source).map_err(at)?);
        let opened = if meta.is_dir() {
            let fd = Arc::new(open_path_dir(&self.source)?);
            OpenedSource { parent: fd.clone(), name: ".".into(), dir: Some(fd), kind: Kind::Dir }
        } else {
            let (parent, name) = match (self.source.parent(), self.source.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => return Err(Error::os(libc::EINVAL, self.source.as_os_str())),
            };
            OpenedSource { parent: Arc::new(open_path_dir(parent)?), name: name.into(), dir: None, kind: meta.kind() }
        };
        Ok(self.opened.get_or_init(|| opened).clone())
    }
}

/// The writable layer of a container.
pub struct Upper {
    pub path: PathBuf,
    pub fd: Arc<OwnedFd>,
    /// Where copy-ups and replacements are built before one rename puts them in place (same file system).
    pub scratch: OwnedFd,
    /// Inodes this layer shares with layers committed from it (hard links): copied before any change.
    pub shared: SharedInodes,
}

impl Upper {
    /// Open a writable layer `dir`, its scratch directory, and the file listing the inodes it shares
    /// with committed layers (see [`SharedInodes`]).
    pub fn open(dir: &Path, scratch: &Path, shared: Option<&Path>) -> Result<Upper> {
        Ok(Upper { path: dir.into(), fd: Arc::new(open_path_dir(dir)?), scratch: sys::open_dir(scratch)?, shared: SharedInodes::open(shared)? })
    }
}

/// The merged view.
pub struct View {
    pub lower: Arc<Lower>,
    pub upper: Option<Upper>,
    pub mounts: Vec<MountPoint>,
    mount_at: HashMap<PathBuf, usize>,
    pub privilege: Privilege,
}

/// A directory reached during a walk.
#[derive(Clone)]
pub enum Dir {
    Union { upper: Option<Arc<OwnedFd>>, lower: Option<Arc<Node>> },
    Mount { idx: usize, fd: Arc<OwnedFd> },
    /// A directory that exists only because a mount target lies below it.
    Virtual,
}

/// What a path names.
#[derive(Clone)]
pub enum Found {
    /// Nothing there; `whiteout` when the writable layer hides a lower entry by that name.
    Missing { whiteout: bool },
    /// The container's `/`.
    Root,
    /// An entry of the writable layer (it may merge with a lower directory).
    Upper { kind: Kind },
    /// An entry of the image layers, not (yet) in the writable layer.
    Lower { node: Arc<Node>, child: Arc<Child> },
    /// An entry inside a mount source.
    InMount { idx: usize, kind: Kind },
    /// A mount target itself.
    MountRoot { idx: usize, kind: Kind },
    /// A directory the layers do not have, standing only because a mount target lies below it (Docker
    /// creates such mount points when the container starts).
    Virtual,
}

impl Found {
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Found::Missing { .. } => None,
            Found::Root | Found::Virtual => Some(Kind::Dir),
            Found::Upper { kind } | Found::InMount { kind, .. } | Found::MountRoot { kind, .. } => Some(*kind),
            Found::Lower { child, .. } => Some(child.kind),
        }
    }

    pub fn exists(&self) -> bool {
        !matches!(self, Found::Missing { .. })
    }
}

/// A resolved path: its canonical container path, its parent directory and what it names.
#[derive(Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub parent: Option<Dir>,
    pub name: OsString,
    pub found: Found,
}

impl Resolved {
    /// The mount the entry lives in (or is the root of), if any.
    pub fn mount(&self) -> Option<usize> {
        match &self.found {
            Found::InMount { idx, .. } | Found::MountRoot { idx, .. } => Some(*idx),
            _ => match &self.parent {
                Some(Dir::Mount { idx, .. }) => Some(*idx),
                _ => None,
            },
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        self.found.kind()
    }

    /// The error for a path that names nothing.
    pub fn require(self) -> Result<Resolved> {
        if self.found.exists() {
            Ok(self)
        } else {
            Err(Error::os(libc::ENOENT, self.path.as_os_str()))
        }
    }
}

/// A normalized absolute container path (lexically: `.` and `..` folded, never above `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.as_os_str().as_bytes().split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    out
}

pub(crate) fn open_path_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::from(e).at(path.as_os_str()))
}

/// Open a subdirectory as an `O_PATH` handle without following a symlink.
pub(crate) fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat(dir, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

impl View {
    pub fn new(lower: Arc<Lower>, upper: Option<Upper>, mounts: Vec<MountPoint>) -> Result<View> {
        let privilege = lower.privilege;
        let mount_at = mounts.iter().enumerate().map(|(i, m)| (m.target.clone(), i)).collect();
        Ok(View { lower, upper, mounts, mount_at, privilege })
    }

    pub fn root_dir(&self) -> Dir {
        Dir::Union { upper: self.upper.as_ref().map(|u| u.fd.clone()), lower: Some(self.lower.root().clone()) }
    }

    /// Resolve `path` inside the container. Every component but the last must exist and be a directory
    /// (after symlinks); the last is followed when `follow` and may be missing.
    pub fn resolve(&self, path: &Path, follow: bool) -> Result<Resolved> {
        let raw = path.as_os_str().as_bytes();
        let must_be_dir = raw.len() > 1 && raw.ends_with(b"/");
        let follow = follow || must_be_dir;
        // Components still to walk: a symlink target's (owned) first, then the rest of the path's own.
        let mut todo: VecDeque<Cow<'_, OsStr>> = VecDeque::new();
        let mut rest = components(raw).peekable();
        // The directories entered so far (root first) and, alongside, their canonical container path.
        let mut stack: Vec<Dir> = Vec::with_capacity(8);
        stack.push(self.root_dir());
        let mut here = PathBuf::with_capacity(raw.len() + 1);
        here.push("/");
        let mut links = 0;
        let err = |errno: i32| Error::os(errno, path.as_os_str());

        while let Some(name) = todo.pop_front().or_else(|| rest.next().map(Cow::Borrowed)) {
            if *name == *"." {
                continue;
            }
            if *name == *".." {
                if stack.len() > 1 {
                    stack.pop();
                    here.pop();
                }
                continue;
            }
            let last = todo.is_empty() && rest.peek().is_none();
            let cur = stack.last().expect("root stays");
            here.push(&name);
            if !last {
                if let Some(entered) = self.enter_lower_dir(cur, &name)? {
                    stack.push(entered);
                    continue;
                }
            }
            let found = self.lookup(cur, &here, &name)?;
            if found.kind() == Some(Kind::Symlink) && (follow || !last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(err(libc::ELOOP));
                }
                here.pop();
                let target = self.readlink_found(cur, &name, &found)?;
                let tb = target.as_bytes();
                if tb.starts_with(b"/") {
                    stack.truncate(1);
                    here = PathBuf::from("/");
                }
                // `link -> dir/`: what the link names must be a directory.
                if tb.len() > 1 && tb.ends_with(b"/") {
                    todo.push_front(Cow::Borrowed(OsStr::new(".")));
                }
                let from_link: Vec<Cow<'_, OsStr>> = components(tb).map(|c| Cow::Owned(c.to_os_string())).collect();
                for c in from_link.into_iter().rev() {
                    todo.push_front(c);
                }
                continue;
            }
            if last {
                if must_be_dir && found.exists() && found.kind() != Some(Kind::Dir) {
                    return Err(err(libc::ENOTDIR));
                }
                return Ok(Resolved { path: here, parent: Some(cur.clone()), name: name.into_owned(), found });
            }
            match found.kind() {
                None => return Err(err(libc::ENOENT)),
                Some(Kind::Dir) => {
                    let d = self.descend(cur, &name, &found).map_err(|e| e.at(path.as_os_str()))?;
                    stack.push(d);
                }
                Some(_) => return Err(err(libc::ENOTDIR)),
            }
        }
        // The path ended on a directory already entered (`/`, `x/.`, `x/..`): describe it from its parent.
        if stack.len() == 1 {
            return Ok(Resolved { path: here, parent: None, name: OsString::new(), found: Found::Root });
        }
        stack.pop();
        let name = here.file_name().expect("below the root").to_os_string();
        let cur = stack.last().expect("root stays").clone();
        let found = self.lookup(&cur, &here, &name)?;
        Ok(Resolved { path: here, parent: Some(cur), name, found })
    }

    /// The directory `name` of `dir` entered straight from the image layers, when `dir` is only in them
    /// and `name` is a directory there (no mount anywhere): the common step of a walk, made without the
    /// reference counting of a [`Found`]. `None`: anything else, for [`View::lookup`] to tell.
    fn enter_lower_dir(&self, dir: &Dir, name: &OsStr) -> Result<Option<Dir>> {
        let Dir::Union { upper: None, lower: Some(node) } = dir else { return Ok(None) };
        if !self.mounts.is_empty() {
            return Ok(None);
        }
        Ok(match self.lower.children(node)?.get(name) {
            Some(child) if child.kind == Kind::Dir => Some(Dir::Union { upper: None, lower: Some(self.lower.node(node, name, child)) }),
            _ => None,
        })
    }

    /// What `name` is in the directory `dir` (whose container path plus name is `here`).
    fn lookup(&self, dir: &Dir, here: &Path, name: &OsStr) -> Result<Found> {
        let mount = if self.mounts.is_empty() { None } else { self.mount_at.get(here) };
        if let Some(&idx) = mount {
            return Ok(Found::MountRoot { idx, kind: self.mounts[idx].open()?.kind });
        }
        let found = self.lookup_layers(dir, here, name)?;
        if let Found::Missing { .. } = found {
            if self.holds_mount(here) {
                return Ok(Found::Virtual);
            }
        }
        Ok(found)
    }

    /// What `name` is in the entered directory `dir`, whose canonical container path is `dir_path`
    /// (a final symlink is not followed): one lookup instead of a walk from the root.
    pub fn resolve_child(&self, dir: &Dir, dir_path: &Path, name: &OsStr) -> Result<Resolved> {
        let path = dir_path.join(name);
        let found = self.lookup(dir, &path, name)?;
        Ok(Resolved { path, parent: Some(dir.clone()), name: name.to_os_string(), found })
    }

    /// Whether a mount target lies strictly below `path`.
    pub fn holds_mount(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.target != path && m.target.starts_with(path))
    }

    fn lookup_layers(&self, dir: &Dir, here: &Path, name: &OsStr) -> Result<Found> {
        match dir {
            Dir::Virtual => Ok(Found::Missing { whiteout: false }),
            Dir::Mount { idx, fd } => match sys::lstat_at(fd.as_fd(), name) {
                Ok(st) => Ok(Found::InMount { idx: *idx, kind: self.stored_kind(fd.as_fd(), name, Meta::from_stat(&st).kind()) }),
                Err(e) if e.is_errno(libc::ENOENT) => Ok(Found::Missing { whiteout: false }),
                Err(e) => Err(e.at(here.as_os_str())),
            },
            Dir::Union { upper, lower } => {
                if let Some(ufd) = upper {
                    match sys::lstat_at(ufd.as_fd(), name) {
                        Ok(st) => {
                            let meta = Meta::from_stat(&st);
                            if meta.is_whiteout() {
                                return Ok(Found::Missing { whiteout: true });
                            }
                            return Ok(Found::Upper { kind: self.stored_kind(ufd.as_fd(), name, meta.kind()) });
                        }
                        Err(e) if e.is_errno(libc::ENOENT) => {}
                        Err(e) => return Err(e.at(here.as_os_str())),
                    }
                }
                if let Some(node) = lower {
                    if let Some(child) = self.lower.child(node, name)? {
                        return Ok(Found::Lower { node: node.clone(), child });
                    }
                }
                Ok(Found::Missing { whiteout: false })
            }
        }
    }

    /// The type of an entry of the writable layer or a mount: as on disk, except that a rootless store
    /// keeps devices and FIFOs as regular files whose override names the real type.
    fn stored_kind(&self, dir: BorrowedFd<'_>, name: &OsStr, on_disk: Kind) -> Kind {
        if on_disk == Kind::File && self.privilege == Privilege::Rootless {
            sys::override_kind(dir, name).unwrap_or(on_disk)
        } else {
            on_disk
        }
    }

    /// Enter a directory found in `parent`.
    pub fn descend(&self, parent: &Dir, name: &OsStr, found: &Found) -> Result<Dir> {
        Ok(match (parent, found) {
            (_, Found::Root) => self.root_dir(),
            (_, Found::MountRoot { idx, .. }) => {
                Dir::Mount { idx: *idx, fd: self.mounts[*idx].open()?.dir.ok_or(Error::errno(libc::ENOTDIR))? }
            }
            (_, Found::Virtual) => Dir::Virtual,
            (Dir::Mount { idx, fd }, Found::InMount { .. }) => {
                Dir::Mount { idx: *idx, fd: Arc::new(open_subdir(fd.as_fd(), name)?) }
            }
            (Dir::Union { upper: Some(ufd), lower }, Found::Upper { .. }) => {
                let sub = Arc::new(open_subdir(ufd.as_fd(), name)?);
                let lower_dir = match lower {
                    Some(node) if !sys::is_opaque(ufd.as_fd(), name, self.privilege) => match self.lower.child(node, name)? {
                        Some(c) if c.kind == Kind::Dir => Some(self.lower.node(node, name, &c)),
                        _ => None,
                    },
                    _ => None,
                };
                Dir::Union { upper: Some(sub), lower: lower_dir }
            }
            (Dir::Union { .. }, Found::Lower { node, child }) => {
                Dir::Union { upper: None, lower: Some(self.lower.node(node, name, child)) }
            }
            _ => return Err(Error::errno(libc::ENOTDIR)),
        })
    }

    /// The directory a resolved path names.
    pub fn enter(&self, r: &Resolved) -> Result<Dir> {
        match (&r.parent, r.kind()) {
            (None, _) => Ok(self.root_dir()),
            (Some(p), Some(Kind::Dir)) => self.descend(p, &r.name, &r.found).map_err(|e| e.at(r.path.as_os_str())),
            (Some(_), None) => Err(Error::os(libc::ENOENT, r.path.as_os_str())),
            (Some(_), Some(_)) => Err(Error::os(libc::ENOTDIR, r.path.as_os_str())),
        }
    }

    /// The real directory and name holding a found entry (for *at calls), or `None` for the image layers.
    pub fn host_parent(&self, r: &Resolved) -> Option<(Arc<OwnedFd>, OsString)> {
        match (&r.found, &r.parent) {
            (Found::Lower { .. }, _) => None,
            (Found::MountRoot { idx, .. }, _) => self.mounts[*idx].open().ok().map(|o| (o.parent, o.name)),
            (Found::Virtual, _) => None,
            (Found::Root, _) => self.upper.as_ref().map(|u| (u.fd.clone(), OsString::from("."))),
            (_, Some(Dir::Mount { fd, .. })) => Some((fd.clone(), r.name.clone())),
            (_, Some(Dir::Union { upper: Some(fd), .. })) => Some((fd.clone(), r.name.clone())),
            _ => None,
        }
    }

    fn readlink_found(&self, dir: &Dir, name: &OsStr, found: &Found) -> Result<OsString> {
        match (found, dir) {
            (Found::Lower { node, child }, _) => self.lower.readlink(node, name, child),
            (Found::MountRoot { idx, .. }, _) => {
                let o = self.mounts[*idx].open()?;
                sys::readlink_at(o.parent.as_fd(), &o.name)
            }
            (_, Dir::Mount { fd, .. }) | (_, Dir::Union { upper: Some(fd), .. }) => sys::readlink_at(fd.as_fd(), name),
            _ => Err(Error::errno(libc::EINVAL)),
        }
    }

    // ----- reading -----

    /// Metadata of a resolved entry (with the store's override convention applied).
    pub fn meta(&self, r: &Resolved) -> Result<Meta> {
        let at = |e: Error| e.at(r.path.as_os_str());
        match &r.found {
            Found::Missing { .. } => Err(Error::os(libc::ENOENT, r.path.as_os_str())),
            Found::Lower { node, child } => self.lower.meta(node, &r.name, child).map_err(at),
            Found::Root if self.upper.is_none() => match self.lower.root_meta().map_err(at)? {
                Some(m) => Ok(m),
                None => Err(Error::os(libc::ENOENT, r.path.as_os_str())),
            },
            Found::Virtual => Ok(Meta::synthetic(libc::S_IFDIR | 0o755)),
            _ => {
                let (fd, name) = self.host_parent(r).ok_or_else(|| Error::os(libc::ENOENT, r.path.as_os_str()))?;
                sys::read_meta(fd.as_fd(), &name, self.privilege).map_err(at)
            }
        }
    }

    pub fn stat(&self, path: &Path, follow: bool) -> Result<Meta> {
        let r = self.resolve(path, follow)?;
        self.meta(&r)
    }

    /// The canonical form of a container path: symlinks resolved inside the root (as Docker's
    /// FollowSymlinkInScope), also where the path does not exist yet: the missing rest is kept as written.
    pub fn canonical(&self, path: &Path) -> Result<PathBuf> {
        self.canonical_in(path, &mut 0)
    }

    fn canonical_in(&self, path: &Path, links: &mut u32) -> Result<PathBuf> {
        match self.resolve(path, true) {
            Ok(r) => return Ok(r.path),
            Err(e) if !e.is_errno(libc::ENOENT) => return Err(e),
            Err(_) => {}
        }
        // Something on the way is missing: settle the parent first, then this last component.
        let norm = normalize(path);
        let (parent, name) = match (norm.parent(), norm.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Ok(norm),
        };
        let base = self.canonical_in(parent, links)?.join(name);
        match self.resolve(&base, false) {
            Ok(r) if r.kind() == Some(Kind::Symlink) => {
                *links += 1;
                if *links > MAX_SYMLINKS {
                    return Err(Error::os(libc::ELOOP, path.as_os_str()));
                }
                let target = self.readlink(&r.path)?;
                let next = r.path.parent().unwrap_or(Path::new("/")).join(target);
                self.canonical_in(&next, links)
            }
            _ => Ok(base),
        }
    }

    pub fn readlink(&self, path: &Path) -> Result<OsString> {
        let r = self.resolve(path, false)?.require()?;
        if r.kind() != Some(Kind::Symlink) {
            return Err(Error::os(libc::EINVAL, r.path.as_os_str()));
        }
        let parent = r.parent.clone().expect("a symlink has a parent");
        self.readlink_found(&parent, &r.name, &r.found).map_err(|e| e.at(r.path.as_os_str()))
    }

    /// The entries of a resolved directory, each resolved (without following a final symlink), sorted by
    /// name. One walk to the directory instead of one from the root per entry.
    pub fn children(&self, r: &Resolved) -> Result<Vec<Resolved>> {
        self.children_in(&self.enter(r)?, &r.path)
    }

    fn children_in(&self, dir: &Dir, here: &Path) -> Result<Vec<Resolved>> {
        let mut out = Vec::new();
        for (name, _) in self.list_dir(dir, here).map_err(|e| e.at(here.as_os_str()))? {
            let path = here.join(&name);
            let found = self.lookup(dir, &path, &name)?;
            if found.exists() {
                out.push(Resolved { path, parent: Some(dir.clone()), name, found });
            }
        }
        Ok(out)
    }

    /// The entries of a directory with their metadata (a final symlink not followed), sorted by name: for
    /// listings with details (fsspec's `ls`, `walk`) without one walk from the root per entry.
    pub fn list_meta(&self, path: &Path) -> Result<Vec<(OsString, Meta)>> {
        let r = self.resolve(path, true)?;
        let dir = self.enter(&r)?;
        self.read_ahead(&dir);
        let mut out = Vec::new();
        for c in self.children_in(&dir, &r.path)? {
            let meta = self.meta(&c)?;
            out.push((c.name, meta));
        }
        Ok(out)
    }

    /// Read the image layers' part of an entered directory in one pass (one open directory per layer
    /// instead of a walk per entry), for listings that go on to read every entry's metadata. An entry
    /// it cannot read is left to the caller's own lookup to report.
    pub fn read_ahead(&self, dir: &Dir) {
        if let Dir::Union { lower: Some(node), .. } = dir {
            let _ = self.lower.read_ahead(node);
        }
    }

    /// The merged listing of a directory: (name, kind), sorted by name.
    pub fn list(&self, path: &Path) -> Result<Vec<(OsString, Kind)>> {
        let r = self.resolve(path, true)?;
        // Errors name the path as given, as os.listdir does.
        let dir = self.enter(&r).map_err(|e| match e {
            Error::Os { errno, .. } => Error::os(errno, path.as_os_str()),
            other => other,
        })?;
        self.list_dir(&dir, &r.path).map_err(|e| e.at(path.as_os_str()))
    }

    pub fn list_dir(&self, dir: &Dir, here: &Path) -> Result<Vec<(OsString, Kind)>> {
        let mut out: Vec<(OsString, Kind)> = Vec::new();
        match dir {
            Dir::Virtual => {}
            Dir::Mount { fd, .. } => {
                let d = rustix::fs::openat(fd.as_fd(), ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
                for (name, kind) in sys::read_dir(d.as_fd())? {
                    let kind = match kind {
                        Some(k) => k,
                        None => Meta::from_stat(&sys::lstat_at(d.as_fd(), &name)?).kind(),
                    };
                    let kind = self.stored_kind(d.as_fd(), &name, kind);
                    out.push((name, kind));
                }
            }
            Dir::Union { upper, lower } => {
                let mut merged: HashMap<OsString, Kind> = HashMap::new();
                if let Some(node) = lower {
                    for (name, child) in self.lower.children(node)? {
                        merged.insert(name.clone(), child.kind);
                    }
                }
                if let Some(ufd) = upper {
                    let d = rustix::fs::openat(ufd.as_fd(), ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
                    for (name, kind) in sys::read_dir(d.as_fd())? {
                        let kind = match kind {
                            Some(Kind::Char) | None => {
                                let m = Meta::from_stat(&sys::lstat_at(d.as_fd(), &name)?);
                                if m.is_whiteout() {
                                    merged.remove(&name);
                                    continue;
                                }
                                m.kind()
                            }
                            Some(k) => k,
                        };
                        let kind = self.stored_kind(d.as_fd(), &name, kind);
                        merged.insert(name, kind);
                    }
                }
                out.extend(merged);
            }
        }
        // Mount targets (and the directories leading to them) show up even where the image has nothing.
        let mut extra = BTreeSet::new();
        for m in &self.mounts {
            if let Ok(rest) = m.target.strip_prefix(here) {
                if let Some(first) = rest.iter().next() {
                    extra.insert(first.to_os_string());
                }
            }
        }
        for n in extra {
            if !out.iter().any(|(name, _)| *name == n) {
                out.push((n, Kind::Dir));
            }
        }
        out.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(out)
    }

    /// Open an existing entry read-only (`O_RDONLY` plus the given extra flags); symlinks followed.
    pub fn open_read(&self, path: &Path, extra: OFlags) -> Result<OwnedFd> {
        let r = self.resolve(path, !extra.contains(OFlags::NOFOLLOW))?.require()?;
        self.open_found(&r, OFlags::RDONLY | extra)
    }

    /// Open what a resolved path names, with `flags`, where it lives (no copy-up).
    pub fn open_found(&self, r: &Resolved, flags: OFlags) -> Result<OwnedFd> {
        let at = |e: Errno| Error::from(e).at(r.path.as_os_str());
        match &r.found {
            Found::Lower { node, child } => self.lower.open_child(node, &r.name, child, flags).map_err(|e| match e {
                Error::Os { errno, .. } => Error::os(errno, r.path.as_os_str()),
                other => other,
            }),
            Found::Root if self.upper.is_none() => {
                let top = self.lower.root().layers.first().copied().ok_or(Error::os(libc::ENOENT, "/"))?;
                rustix::fs::openat(self.lower.layer_fd(top), ".", flags | OFlags::CLOEXEC, Mode::empty()).map_err(at)
            }
            _ => {
                let (fd, name) = self.host_parent(r).ok_or_else(|| Error::os(libc::ENOENT, r.path.as_os_str()))?;
                let name: &OsStr = if name.is_empty() { OsStr::new(".") } else { &name };
                rustix::fs::openat(fd.as_fd(), name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(at)
            }
        }
    }

    /// An extended attribute of an entry (`None` when absent).
    pub fn getxattr(&self, path: &Path, attr: &std::ffi::CStr, follow: bool) -> Result<Option<Vec<u8>>> {
        if crate::format::is_internal_xattr(attr.to_bytes()) {
            return Ok(None);
        }
        self.getxattr_of(self.resolve(path, follow)?, attr)
    }

    /// An extended attribute of a resolved entry.
    pub fn getxattr_of(&self, r: Resolved, attr: &std::ffi::CStr) -> Result<Option<Vec<u8>>> {
        if crate::format::is_internal_xattr(attr.to_bytes()) {
            return Ok(None);
        }
        let r = r.require()?;
        let (fd, name) = self.entry_location(&r)?;
        sys::xattr_get(fd.as_fd(), &name, attr).map_err(|e| e.at(r.path.as_os_str()))
    }

    /// The content xattr names of an entry, sorted.
    pub fn listxattr(&self, path: &Path, follow: bool) -> Result<Vec<Vec<u8>>> {
        self.listxattr_of(self.resolve(path, follow)?)
    }

    /// The extended attribute names of a resolved entry, sorted.
    pub fn listxattr_of(&self, r: Resolved) -> Result<Vec<Vec<u8>>> {
        let r = r.require()?;
        let (fd, name) = self.entry_location(&r)?;
        let mut names: Vec<Vec<u8>> = sys::xattr_list(fd.as_fd(), &name)
            .map_err(|e| e.at(r.path.as_os_str()))?
            .into_iter()
            .filter(|n| !crate::format::is_internal_xattr(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The open directory and name where an existing entry's bytes live, in whatever layer or mount.
    pub fn entry_location(&self, r: &Resolved) -> Result<(Arc<OwnedFd>, OsString)> {
        match &r.found {
            Found::Lower { node, child } => {
                let rel = node.rel.join(&r.name);
                let parent = self.lower.open_parent(child.layer, &rel)?;
                Ok((Arc::new(parent), r.name.clone()))
            }
            Found::Root if self.upper.is_none() => {
                let top = self.lower.root().layers.first().copied().ok_or(Error::os(libc::ENOENT, "/"))?;
                let fd = rustix::fs::openat(self.lower.layer_fd(top), ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
                Ok((Arc::new(fd), OsString::from(".")))
            }
            _ => self.host_parent(r).ok_or_else(|| Error::os(libc::ENOENT, r.path.as_os_str())),
        }
    }
}


fn components(raw: &[u8]) -> impl Iterator<Item = &OsStr> {
    raw.split(|b| *b == b'/').filter(|c| !c.is_empty()).map(OsStr::from_bytes)
}
