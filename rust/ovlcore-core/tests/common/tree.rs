//! Describing file trees as plain maps, so that two can be compared: a merged view, a host directory
//! (a kernel mount), a layer's raw on-disk state; and `docker diff` computed from two described trees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::stack::Fs;
use super::{Kind, Privilege};

/// One entry as the container sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files and symlinks only.
    pub size: Option<u64>,
    pub mtime_ns: i128,
    /// Devices only.
    pub rdev: u64,
    /// Files: the content; symlinks: the target.
    pub content: Option<Vec<u8>>,
    /// Directories: the sorted names.
    pub children: Option<Vec<String>>,
    /// Content xattrs (files and directories), sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Absolute container path → entry.
pub type Tree = BTreeMap<String, Node>;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:04o} {}:{} mtime {}", self.kind, self.perm, self.uid, self.gid, self.mtime_ns)?;
        if let Some(c) = &self.content {
            let text = String::from_utf8_lossy(&c[..c.len().min(40)]).into_owned();
            write!(f, " {} bytes {text:?}", c.len())?;
        }
        if let Some(ch) = &self.children {
            write!(f, " {ch:?}")?;
        }
        if self.rdev != 0 {
            write!(f, " rdev {}", self.rdev)?;
        }
        if !self.xattrs.is_empty() {
            write!(f, " xattrs {:?}", self.xattrs.iter().map(|(k, _)| k).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

/// Two trees are equal; on failure, only the paths that differ are shown.
#[track_caller]
pub fn assert_same(got: &Tree, want: &Tree) {
    let mut problems = Vec::new();
    for p in got.keys().chain(want.keys()).collect::<BTreeSet<_>>() {
        match (got.get(p), want.get(p)) {
            (Some(g), Some(w)) if g != w => problems.push(format!("{p}:\n   got {g:?}\n  want {w:?}")),
            (Some(g), None) => problems.push(format!("{p}: unexpected {g:?}")),
            (None, Some(w)) => problems.push(format!("{p}: missing {w:?}")),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "trees differ:\n{}", problems.join("\n"));
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Every path below `top` of a view (symlinks not followed), `top` included.
pub fn fs_tree(fs: &Fs, top: &str) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![top.to_string()];
    while let Some(path) = todo.pop() {
        let m = fs.lst(&path);
        let kind = m.kind();
        let (mut content, mut children, mut xattrs) = (None, None, Vec::new());
        match kind {
            Kind::File => content = Some(fs.read(&path).unwrap()),
            Kind::Symlink => content = Some(fs.readlink(&path).unwrap().into_bytes()),
            Kind::Dir => {
                let names = fs.ls(&path);
                todo.extend(names.iter().map(|n| join(&path, n)));
                children = Some(names);
            }
            _ => {}
        }
        if matches!(kind, Kind::File | Kind::Dir) {
            for name in fs.listxattr(&path).unwrap() {
                let v = fs.getxattr(&path, &name).unwrap().expect("a listed xattr");
                xattrs.push((name, v));
            }
        }
        let node = Node {
            kind,
            perm: m.perm(),
            uid: m.uid,
            gid: m.gid,
            size: matches!(kind, Kind::File | Kind::Symlink).then_some(m.size),
            mtime_ns: m.mtime.0 as i128 * 1_000_000_000 + m.mtime.1 as i128,
            rdev: if matches!(kind, Kind::Char | Kind::Block) { m.rdev } else { 0 },
            content,
            children,
            xattrs,
        };
        out.insert(path, node);
    }
    out
}

/// xattrs that belong to storage formats and security modules, not to content.
fn internal_xattr(name: &[u8]) -> bool {
    [&b"trusted.overlay."[..], b"user.overlay.", b"user.containers.override_stat", b"security."].iter().any(|p| name.starts_with(p))
}

fn xattrs_of(path: &Path, all: bool) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(c.as_c_str(), &mut buf[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        if !all && internal_xattr(name) {
            continue;
        }
        let cname = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(c.as_c_str(), cname.as_c_str(), &mut v[..]).unwrap();
        v.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), v));
    }
    out.sort();
    out
}

/// The same description of a host directory: paths relative to `root`, written `/...`.
pub fn host_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec!["/".to_string()];
    while let Some(path) = todo.pop() {
        let host = root.join(path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&host).unwrap();
        let kind = Kind::from_mode(m.mode());
        let (mut content, mut children) = (None, None);
        match kind {
            Kind::File => content = Some(std::fs::read(&host).unwrap()),
            Kind::Symlink => content = Some(std::fs::read_link(&host).unwrap().as_os_str().as_bytes().to_vec()),
            Kind::Dir => {
                let mut names: Vec<String> =
                    std::fs::read_dir(&host).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                names.sort();
                todo.extend(names.iter().map(|n| join(&path, n)));
                children = Some(names);
            }
            _ => {}
        }
        let node = Node {
            kind,
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: matches!(kind, Kind::File | Kind::Symlink).then_some(m.size()),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            rdev: if matches!(kind, Kind::Char | Kind::Block) { m.rdev() } else { 0 },
            content,
            children,
            xattrs: if matches!(kind, Kind::File | Kind::Dir) { xattrs_of(&host, false) } else { Vec::new() },
        };
        out.insert(path, node);
    }
    out
}

/// The tree without modification times (all of them, or only those of directories).
pub fn without_times(t: &Tree, dirs_only: bool) -> Tree {
    t.iter()
        .map(|(p, n)| {
            let mut n = n.clone();
            if !dirs_only || n.kind == Kind::Dir {
                n.mtime_ns = 0;
            }
            (p.clone(), n)
        })
        .collect()
}

/// A subtree described under `from`, with its paths rewritten to start with `to` instead.
pub fn rebase(t: &Tree, from: &str, to: &str) -> Tree {
    t.iter().map(|(p, n)| (format!("{to}{}", p.strip_prefix(from).expect("below the base")), n.clone())).collect()
}

/// Names, types, contents, link targets and listings only (what every metadata convention shows alike).
pub type Shape = BTreeMap<String, (Kind, Option<Vec<u8>>, Option<Vec<String>>)>;

pub fn shape(t: &Tree) -> Shape {
    t.iter().map(|(p, n)| (p.clone(), (n.kind, n.content.clone(), n.children.clone()))).collect()
}

/// (path, type, file content or link target) of every path but the root, sorted.
pub type Listing = Vec<(String, Kind, Option<Vec<u8>>)>;

pub fn listing(t: &Tree) -> Listing {
    t.iter().filter(|(p, _)| *p != "/").map(|(p, n)| (p.clone(), n.kind, n.content.clone())).collect()
}

/// A raw entry of a host directory, everything that must never change in an image layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub rdev: u64,
    /// Files: content; symlinks: target.
    pub content: Option<Vec<u8>>,
    /// All xattrs (none read from symlinks).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Every entry below `root` (and `root` itself, as `/`), raw.
pub fn host_snapshot(root: &Path) -> BTreeMap<String, RawEntry> {
    let mut out = BTreeMap::new();
    let mut todo = vec!["/".to_string()];
    while let Some(path) = todo.pop() {
        let host = root.join(path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&host).unwrap();
        let kind = Kind::from_mode(m.mode());
        let content = match kind {
            Kind::File => Some(std::fs::read(&host).unwrap()),
            Kind::Symlink => Some(std::fs::read_link(&host).unwrap().as_os_str().as_bytes().to_vec()),
            _ => None,
        };
        if kind == Kind::Dir {
            for e in std::fs::read_dir(&host).unwrap() {
                let name = e.unwrap().file_name();
                todo.push(join(&path, &String::from_utf8_lossy(name.as_bytes())));
            }
        }
        let entry = RawEntry {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
            rdev: m.rdev(),
            content,
            xattrs: if kind == Kind::Symlink { Vec::new() } else { xattrs_of(&host, true) },
        };
        out.insert(path, entry);
    }
    out
}

pub fn is_whiteout(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| Kind::from_mode(m.mode()) == Kind::Char && m.rdev() == 0)
}

/// Whether the directory is marked opaque with the xattr of this convention.
pub fn is_opaque(path: &Path, privilege: Privilege) -> bool {
    xattr(path, privilege.opaque_xattr().to_str().unwrap()).as_deref() == Some(b"y")
}

/// One xattr of a host path, `None` when absent.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs_of(path, true).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Every entry of a writable (or layer) directory: `whiteout`, `opaque` (an opaque directory), `dir`,
/// `symlink`, `file` or `other`.
pub fn markers(root: &Path, privilege: Privilege) -> BTreeMap<String, &'static str> {
    host_snapshot(root)
        .into_iter()
        .filter(|(p, _)| p != "/")
        .map(|(p, e)| {
            let host = root.join(p.trim_start_matches('/'));
            let what = match Kind::from_mode(e.mode) {
                Kind::Char if e.rdev == 0 => "whiteout",
                Kind::Dir if is_opaque(&host, privilege) => "opaque",
                Kind::Dir => "dir",
                Kind::Symlink => "symlink",
                Kind::File => "file",
                _ => "other",
            };
            (p, what)
        })
        .collect()
}

// ----- docker diff of two merged trees (moby's ChangesDirs) -----

fn stat_differs(old: &Node, new: &Node) -> bool {
    (old.kind, old.perm, old.uid, old.gid, old.rdev) != (new.kind, new.perm, new.uid, new.gid, new.rdev)
        || (new.kind != Kind::Dir && (old.mtime_ns != new.mtime_ns || old.size != new.size))
}

/// `docker diff` of a container's merged tree against its image's (both rooted at `/`), sorted by path:
/// new paths `A` (everything below too), gone paths `D` (not their descendants), changed metadata `C`,
/// and `C` for every directory with a change below it.
pub fn expected_diff(image: &Tree, container: &Tree) -> Vec<(char, String)> {
    fn add(path: &str, old: Option<&Node>, mut added: bool, image: &Tree, container: &Tree, out: &mut Vec<(char, String)>) {
        let new = &container[path];
        let start = out.len();
        if old.is_none() {
            out.push(('A', path.to_string()));
            added = true;
        }
        let mut old_children: BTreeSet<String> = match old {
            Some(o) if new.kind == Kind::Dir => o.children.clone().unwrap_or_default().into_iter().collect(),
            _ => BTreeSet::new(),
        };
        for name in new.children.iter().flatten() {
            let cp = join(path, name);
            let oc = old_children.remove(name).then(|| &image[&cp]);
            let mut child_added = false;
            if let Some(oc) = oc {
                if stat_differs(oc, &container[&cp]) {
                    out.push(('C', cp.clone()));
                    child_added = true;
                }
            }
            add(&cp, oc, child_added, image, container, out);
        }
        for name in old_children {
            out.push(('D', join(path, &name)));
        }
        if out.len() > start && new.kind == Kind::Dir && !added && path != "/" {
            out.insert(start, ('C', path.to_string()));
        }
    }
    let mut out = Vec::new();
    add("/", Some(&image["/"]), false, image, container, &mut out);
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Each directory before its descendants, and no path twice.
pub fn assert_parents_first(changes: &[(char, String)]) {
    let index: BTreeMap<&str, usize> = changes.iter().enumerate().map(|(i, (_, p))| (p.as_str(), i)).collect();
    assert_eq!(index.len(), changes.len(), "a path is listed twice: {changes:?}");
    for (i, (_, p)) in changes.iter().enumerate() {
        let mut anc = Path::new(p).parent();
        while let Some(a) = anc.filter(|a| *a != Path::new("/")) {
            if let Some(&j) = index.get(a.to_str().unwrap()) {
                assert!(j < i, "{} listed after its descendant {p}", a.display());
            }
            anc = a.parent();
        }
    }
}
