//! The inode table of a FUSE mount: the view is path based, the kernel speaks inode numbers.
//!
//! A path keeps its number for the mount's life (so a copy-up, which changes the real inode, changes
//! nothing the kernel sees); a rename moves the numbers of the entry and everything below it; an entry
//! unlinked while open keeps its number, detached from any path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const ROOT: u64 = 1;

struct Node {
    path: Option<PathBuf>,
}

struct Table {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

pub struct Inodes {
    t: Mutex<Table>,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { path: Some(PathBuf::from("/")) });
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::from("/"), ROOT);
        Inodes { t: Mutex::new(Table { nodes, by_path, next: ROOT + 1 }) }
    }

    /// The path of an inode; `None` once it was unlinked (or never known).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        self.t.lock().unwrap().nodes.get(&ino).and_then(|n| n.path.clone())
    }

    /// Whether the inode was known and has lost its path (unlinked while the kernel still holds it).
    pub fn unlinked(&self, ino: u64) -> bool {
        matches!(self.t.lock().unwrap().nodes.get(&ino), Some(Node { path: None }))
    }

    /// The number of a path, assigned on first sight.
    pub fn ino(&self, path: &Path) -> u64 {
        let mut t = self.t.lock().unwrap();
        if let Some(&i) = t.by_path.get(path) {
            return i;
        }
        let i = t.next;
        t.next += 1;
        t.nodes.insert(i, Node { path: Some(path.to_path_buf()) });
        t.by_path.insert(path.to_path_buf(), i);
        i
    }

    /// The path (and everything below it) is gone: its numbers keep serving open files only.
    pub fn detach(&self, path: &Path) {
        let mut t = self.t.lock().unwrap();
        let gone: Vec<PathBuf> = t.by_path.keys().filter(|p| p.starts_with(path)).cloned().collect();
        for p in gone {
            if let Some(i) = t.by_path.remove(&p) {
                if let Some(n) = t.nodes.get_mut(&i) {
                    n.path = None;
                }
            }
        }
    }

    /// `src` was renamed to `dst` (whatever was at `dst` is gone).
    pub fn rename(&self, src: &Path, dst: &Path) {
        self.detach(dst);
        let mut t = self.t.lock().unwrap();
        let moved: Vec<(PathBuf, u64)> =
            t.by_path.iter().filter(|(p, _)| p.starts_with(src)).map(|(p, i)| (p.clone(), *i)).collect();
        for (p, _) in &moved {
            t.by_path.remove(p);
        }
        for (p, i) in moved {
            let rest = p.strip_prefix(src).expect("filtered by prefix");
            let np = if rest.as_os_str().is_empty() { dst.to_path_buf() } else { dst.join(rest) };
            if let Some(n) = t.nodes.get_mut(&i) {
                n.path = Some(np.clone());
            }
            t.by_path.insert(np, i);
        }
    }

    /// The kernel dropped an inode that no longer has a path: forget it.
    pub fn forget(&self, ino: u64) {
        let mut t = self.t.lock().unwrap();
        if matches!(t.nodes.get(&ino), Some(Node { path: None })) {
            t.nodes.remove(&ino);
        }
    }
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
}
