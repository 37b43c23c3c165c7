//! The inode table of a FUSE mount: the view is path based, the kernel speaks inode numbers.
//!
//! A path keeps its number for the mount's life (so a copy-up, which changes the real inode, changes
//! nothing the kernel sees); a rename moves the numbers of the entry and everything below it; an entry
//! unlinked while open keeps its number, detached from any path.
//!
//! Names of one underlying file (hard links) share one number, as on the kernel's overlay: a
//! non-directory with more than one link is also known by its backing `(dev, ino)`, and a new name
//! resolving to a known backing inode joins that number.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

// Paths and numbers hash several times per listed entry: a fast hasher (seeded per process, so names
// cannot be chosen to collide).
use foldhash::HashMap;

pub const ROOT: u64 = 1;

/// A backing file: `(st_dev, st_ino)` in the layer a name resolves to.
pub type Key = (u64, u64);

struct Node {
    /// Every name of the inode, the first one serving its attributes; empty once all are unlinked.
    paths: Vec<PathBuf>,
    key: Option<Key>,
}

struct Table {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

impl Table {
    fn new_node(&mut self, path: &Path, key: Option<Key>) -> u64 {
        let i = self.next;
        self.next += 1;
        self.nodes.insert(i, Node { paths: vec![path.to_path_buf()], key });
        self.by_path.insert(path.to_path_buf(), i);
        if let Some(k) = key {
            self.by_key.insert(k, i);
        }
        i
    }

    /// Add `path` as another name of `ino` (whatever `path` named before is gone).
    fn alias(&mut self, ino: u64, path: &Path) {
        self.unname(path);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.paths.push(path.to_path_buf());
            self.by_path.insert(path.to_path_buf(), ino);
        }
    }

    fn unname(&mut self, path: &Path) {
        if let Some(i) = self.by_path.remove(path) {
            if let Some(n) = self.nodes.get_mut(&i) {
                n.paths.retain(|p| p != path);
            }
        }
    }

    /// The live node a backing file is known by (a node whose names are all gone and that no open
    /// file holds may have had its backing inode number reused).
    fn keyed(&self, key: Key) -> Option<u64> {
        let i = *self.by_key.get(&key)?;
        self.nodes.get(&i).filter(|n| !n.paths.is_empty()).map(|_| i)
    }
}

pub struct Inodes {
    t: Mutex<Table>,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut nodes = HashMap::default();
        nodes.insert(ROOT, Node { paths: vec![PathBuf::from("/")], key: None });
        let mut by_path = HashMap::default();
        by_path.insert(PathBuf::from("/"), ROOT);
        Inodes { t: Mutex::new(Table { nodes, by_path, by_key: HashMap::default(), next: ROOT + 1 }) }
    }

    /// The path of an inode; `None` once it was unlinked (or never known).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        self.t.lock().unwrap().nodes.get(&ino).and_then(|n| n.paths.first().cloned())
    }

    /// Whether the inode was known and has lost its path (unlinked while the kernel still holds it).
    pub fn unlinked(&self, ino: u64) -> bool {
        self.t.lock().unwrap().nodes.get(&ino).is_some_and(|n| n.paths.is_empty())
    }

    /// The number of a path, assigned on first sight.
    pub fn ino(&self, path: &Path) -> u64 {
        self.ino_keyed(path, None)
    }

    /// The number of a path already seen, if any.
    pub fn known(&self, path: &Path) -> Option<u64> {
        self.t.lock().unwrap().by_path.get(path).copied()
    }

    /// The number of a path whose backing file is `key` (a hard-linked non-directory): a path keeps
    /// the number it has (stable across copy-up), a new one joins the number of its backing file.
    pub fn ino_keyed(&self, path: &Path, key: Option<Key>) -> u64 {
        let mut t = self.t.lock().unwrap();
        if let Some(&i) = t.by_path.get(path) {
            // The kernel looks a name of a shared inode up before each use (its entries are not
            // cached), and an operation on the inode (open, link) names no path: serve the name
            // looked up last.
            if let Some(n) = t.nodes.get_mut(&i) {
                if let Some(at) = n.paths.iter().position(|p| p == path).filter(|&at| at > 0) {
                    let p = n.paths.remove(at);
                    n.paths.insert(0, p);
                }
            }
            if let Some(k) = key {
                if t.keyed(k).is_none() {
                    t.by_key.insert(k, i);
                    if let Some(n) = t.nodes.get_mut(&i) {
                        n.key = Some(k);
                    }
                }
            }
            return i;
        }
        if let Some(i) = key.and_then(|k| t.keyed(k)) {
            t.alias(i, path);
            return i;
        }
        t.new_node(path, key)
    }

    /// `path` is a new hard link to `ino` (backing file `key`).
    pub fn link(&self, ino: u64, path: &Path, key: Key) {
        let mut t = self.t.lock().unwrap();
        if !t.nodes.contains_key(&ino) {
            return;
        }
        t.alias(ino, path);
        t.by_key.insert(key, ino);
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.key = Some(key);
        }
    }

    /// Whether an inode has more than one name.
    pub fn shared(&self, ino: u64) -> bool {
        self.t.lock().unwrap().nodes.get(&ino).is_some_and(|n| n.paths.len() > 1)
    }

    /// Every name of an inode, the first one serving it.
    pub fn names(&self, ino: u64) -> Vec<PathBuf> {
        self.t.lock().unwrap().nodes.get(&ino).map(|n| n.paths.clone()).unwrap_or_default()
    }

    /// The names of `ino` now resolve to `key` but for `apart`, which no longer share its file (a
    /// copy-up broke the hard link): they leave the inode and get a number of their own on their next
    /// lookup, shared by the names still on their old backing file.
    pub fn split(&self, ino: u64, key: Key, apart: &[PathBuf]) {
        let mut t = self.t.lock().unwrap();
        for p in apart {
            t.unname(p);
        }
        t.by_key.retain(|k, i| *i != ino || *k == key);
        t.by_key.insert(key, ino);
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.key = Some(key);
        }
    }

    /// The path (and everything below it) is gone: its numbers keep serving open files only.
    pub fn detach(&self, path: &Path) {
        let mut t = self.t.lock().unwrap();
        let gone: Vec<PathBuf> = t.by_path.keys().filter(|p| below(p, path)).cloned().collect();
        for p in gone {
            t.unname(&p);
        }
    }

    /// `detach` of a non-directory, which has nothing below it (no walk over every known path).
    pub fn detach_one(&self, path: &Path) {
        self.t.lock().unwrap().unname(path);
    }

    /// `src` was renamed to `dst` (whatever was at `dst` is gone).
    pub fn rename(&self, src: &Path, dst: &Path) {
        self.detach(dst);
        let mut t = self.t.lock().unwrap();
        let moved: Vec<(PathBuf, u64)> =
            t.by_path.iter().filter(|(p, _)| below(p, src)).map(|(p, i)| (p.clone(), *i)).collect();
        for (p, _) in &moved {
            t.by_path.remove(p);
        }
        for (p, i) in moved {
            let rest = p.strip_prefix(src).expect("filtered by prefix");
            let np = if rest.as_os_str().is_empty() { dst.to_path_buf() } else { dst.join(rest) };
            if let Some(n) = t.nodes.get_mut(&i) {
                for q in n.paths.iter_mut().filter(|q| **q == p) {
                    *q = np.clone();
                }
            }
            t.by_path.insert(np, i);
        }
    }

    /// The kernel dropped an inode that no longer has a path: forget it.
    pub fn forget(&self, ino: u64) {
        let mut t = self.t.lock().unwrap();
        if t.nodes.get(&ino).is_some_and(|n| n.paths.is_empty()) {
            if let Some(k) = t.nodes.remove(&ino).and_then(|n| n.key) {
                if t.by_key.get(&k) == Some(&ino) {
                    t.by_key.remove(&k);
                }
            }
        }
    }
}

/// `path.starts_with(root)` for the table's paths (absolute, normalised: joined from names), on bytes:
/// it runs over every known path on each directory removal or rename.
fn below(path: &Path, root: &Path) -> bool {
    let (p, r) = (path.as_os_str().as_bytes(), root.as_os_str().as_bytes());
    p.starts_with(r) && (p.len() == r.len() || r.ends_with(b"/") || p[r.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_renames_and_survive_unlink() {
        let t = Inodes::new();
        let a = t.ino(Path::new("/a"));
        let ab = t.ino(Path::new("/a/b"));
        let ax = t.ino(Path::new("/ax"));
        t.rename(Path::new("/a"), Path::new("/c"));
        assert_eq!(t.ino(Path::new("/c")), a);
        assert_eq!(t.ino(Path::new("/c/b")), ab);
        assert_eq!(t.path(ax).unwrap(), Path::new("/ax"));
        assert_ne!(t.ino(Path::new("/a")), a);
        t.detach(Path::new("/c"));
        assert!(t.unlinked(ab));
        assert_eq!(t.path(ab), None);
    }

    #[test]
    fn below_is_starts_with_on_normalised_paths() {
        for (p, r) in [("/a/b", "/a"), ("/a", "/a"), ("/ab", "/a"), ("/a", "/"), ("/", "/"), ("/a b/c", "/a"), ("/b", "/a/b")] {
            assert_eq!(below(Path::new(p), Path::new(r)), Path::new(p).starts_with(r), "{p} below {r}");
        }
    }

    #[test]
    fn hard_links_share_a_number_until_every_name_is_gone() {
        let t = Inodes::new();
        let k = (7, 42);
        let a = t.ino_keyed(Path::new("/a"), Some(k));
        let b = t.ino_keyed(Path::new("/d/b"), Some(k));
        assert_eq!(a, b);
        assert!(t.shared(a));
        let c = t.ino_keyed(Path::new("/c"), Some((7, 43)));
        assert_ne!(c, a);
        assert!(!t.shared(c));
        // A name keeps its number when its backing file changes (copy-up).
        assert_eq!(t.ino_keyed(Path::new("/a"), Some((8, 1))), a);
        t.rename(Path::new("/d"), Path::new("/e"));
        assert_eq!(t.known(Path::new("/e/b")), Some(a));
        assert_eq!(t.ino_keyed(Path::new("/e/b"), None), a);
        assert_eq!(t.path(a).unwrap(), Path::new("/e/b"));
        assert_eq!(t.ino_keyed(Path::new("/a"), None), a);
        t.detach(Path::new("/a"));
        assert!(!t.unlinked(a));
        assert_eq!(t.path(a).unwrap(), Path::new("/e/b"));
        let l = t.ino(Path::new("/l"));
        t.link(a, Path::new("/f"), (8, 2));
        assert_eq!(t.ino_keyed(Path::new("/g"), Some((8, 2))), a);
        assert_ne!(l, a);
        t.split(a, (8, 2), &[PathBuf::from("/e/b")]);
        assert_eq!(t.known(Path::new("/e/b")), None);
        let b2 = t.ino_keyed(Path::new("/e/b"), Some(k));
        assert_ne!(b2, a);
        assert_eq!(t.ino_keyed(Path::new("/e/b2"), Some(k)), b2);
        t.detach(Path::new("/e"));
        t.detach(Path::new("/f"));
        t.detach(Path::new("/g"));
        assert!(t.unlinked(a));
        // A number nothing names any more is not handed to a reused backing inode.
        assert_ne!(t.ino_keyed(Path::new("/h"), Some(k)), a);
        t.forget(a);
        assert_eq!(t.path(a), None);
    }
}
