//! The merged tree of a stack of immutable layer directories, built lazily and cached.
//!
//! Image layers never change, so each merged directory is read once: its children from every contributing
//! layer are merged into one hash map (whiteouts hide lower names, an opaque directory stops the merge, the
//! topmost entry wins). A lookup in a 40-layer stack then costs what it costs in a 1-layer stack.
//! Stacks are shared (by their top chain id) between every image view and container that uses them.

// Names are looked up once per path component: a fast hasher, seeded per process (an image's names
// cannot be chosen to collide).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{Mode, OFlags};

use crate::attrs::{Kind, Meta, Privilege};
use crate::error::{Context, Result};
use crate::sys;

/// A name found in the stack: its merged parent directory, the name, and what it is.
pub type Entry = (Arc<Node>, OsString, Arc<Child>);

/// One layer's content directory, open.
pub struct LayerDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// An immutable stack of layers (index 0 = top) with its merged tree.
pub struct Lower {
    pub layers: Vec<LayerDir>,
    pub privilege: Privilege,
    root: Arc<Node>,
}

/// A merged directory: the layers that contribute to it (top first) and, once read, its children.
pub struct Node {
    pub rel: PathBuf,
    pub layers: Vec<u16>,
    children: OnceLock<HashMap<OsString, Arc<Child>>>,
    sorted: OnceLock<Vec<OsString>>,
    /// Its children's metadata has all been read (`read_ahead`).
    read: std::sync::atomic::AtomicBool,
}

/// One name in a merged directory: where it comes from and, lazily, what it is.
pub struct Child {
    /// The topmost layer holding this name.
    pub layer: u16,
    pub kind: Kind,
    /// For directories: the layers (top first) where this name is a directory, before any layer where it
    /// is something else or whited out. Opaque markers are applied when the node is built.
    dir_layers: Vec<u16>,
    node: OnceLock<Arc<Node>>,
    meta: OnceLock<Meta>,
    target: OnceLock<OsString>,
}

impl Lower {
    /// Open a stack of layer content directories, top first.
    pub fn open(paths: &[PathBuf], privilege: Privilege) -> Result<Lower> {
        let mut layers = Vec::with_capacity(paths.len());
        for p in paths {
            layers.push(LayerDir { path: p.clone(), fd: sys::open_dir(p)? });
        }
        // The kernel merges the roots of all layers; opaqueness only applies below the root.
        let all: Vec<u16> = (0..layers.len() as u16).collect();
        Ok(Lower { layers, privilege, root: Arc::new(Node::new(PathBuf::new(), all)) })
    }

    /// A process-wide shared stack for these layers (immutable, so any holder may reuse it). Stacks are
    /// found by the identity (device, inode) of their directories, so a layer removed and imported again
    /// at the same path is never served from a stale stack. The most recently used few stay open even
    /// when no view holds them, so short-lived views (one call each) stay cheap.
    pub fn shared(paths: &[PathBuf], privilege: Privilege) -> Result<Arc<Lower>> {
        type Key = (Vec<(u64, u64)>, Privilege);
        struct Cache {
            all: HashMap<Key, Weak<Lower>>,
            recent: std::collections::VecDeque<(Key, Arc<Lower>)>,
        }
        const RECENT: usize = 8;
        static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(Cache { all: HashMap::new(), recent: Default::default() }));
        let mut ids = Vec::with_capacity(paths.len());
        for p in paths {
            let st = rustix::fs::stat(p).map_err(|e| crate::Error::from(e).at(p.as_os_str()))?;
            ids.push((st.st_dev, st.st_ino));
        }
        let key = (ids, privilege);
        let remember = |c: &mut Cache, l: &Arc<Lower>| {
            c.recent.retain(|(k, _)| *k != key);
            c.recent.push_front((key.clone(), l.clone()));
            c.recent.truncate(RECENT);
        };
        {
            let mut c = cache.lock().unwrap();
            if let Some(l) = c.all.get(&key).and_then(Weak::upgrade) {
                remember(&mut c, &l);
                return Ok(l);
            }
        }
        let l = Arc::new(Lower::open(paths, privilege)?);
        let mut c = cache.lock().unwrap();
        c.all.retain(|_, w| w.strong_count() > 0);
        c.all.insert(key.clone(), Arc::downgrade(&l));
        remember(&mut c, &l);
        Ok(l)
    }

    pub fn root(&self) -> &Arc<Node> {
        &self.root
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    fn fd(&self, layer: u16) -> BorrowedFd<'_> {
        self.layers[layer as usize].fd.as_fd()
    }

    /// Keep the layers of a directory down to (and including) the first one where it is opaque.
    fn cut_at_opaque(&self, rel: &Path, layers: &[u16]) -> Vec<u16> {
        let mut out = Vec::with_capacity(layers.len());
        for (i, &l) in layers.iter().enumerate() {
            out.push(l);
            if i + 1 < layers.len() && sys::is_opaque(self.fd(l), rel_os(rel), self.privilege) {
                break;
            }
        }
        out
    }

    /// The children of a merged directory, reading the layers on first use.
    pub fn children<'n>(&self, node: &'n Node) -> Result<&'n HashMap<OsString, Arc<Child>>> {
        if let Some(c) = node.children.get() {
            return Ok(c);
        }
        let built = self.read_children(node)?;
        let _ = node.children.set(built);
        Ok(node.children.get().expect("just set"))
    }

    fn read_children(&self, node: &Node) -> Result<HashMap<OsString, Arc<Child>>> {
        struct Building {
            layer: u16,
            kind: Kind,
            dir_layers: Vec<u16>,
            sealed: bool,
        }
        let mut map: HashMap<OsString, Building> = HashMap::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        for &l in &node.layers {
            let dir = open_rel_dir(self.fd(l), &node.rel).at(self.layers[l as usize].path.join(&node.rel))?;
            let mut whiteouts = Vec::new();
            for (name, dtype) in sys::read_dir(dir.as_fd())? {
                let kind = match dtype {
                    Some(Kind::Char) | None => {
                        let meta = Meta::from_stat(&sys::lstat_at(dir.as_fd(), &name)?);
                        if meta.is_whiteout() {
                            whiteouts.push(name);
                            continue;
                        }
                        meta.kind()
                    }
                    Some(k) => k,
                };
                // A rootless store keeps devices and FIFOs as regular files: their override says so.
                let kind = if kind == Kind::File && self.privilege == Privilege::Rootless {
                    sys::override_kind(dir.as_fd(), &name).unwrap_or(kind)
                } else {
                    kind
                };
                if let Some(b) = map.get_mut(&name) {
                    if !b.sealed {
                        if kind == Kind::Dir && b.kind == Kind::Dir {
                            b.dir_layers.push(l);
                        } else {
                            b.sealed = true;
                        }
                    }
                } else if !hidden.contains(&name) {
                    let dir_layers = if kind == Kind::Dir { vec![l] } else { Vec::new() };
                    map.insert(name, Building { layer: l, kind, dir_layers, sealed: kind != Kind::Dir });
                }
            }
            // A whiteout hides the name in the layers below only; it also ends a directory's merge.
            for name in whiteouts {
                if let Some(b) = map.get_mut(&name) {
                    b.sealed = true;
                } else {
                    hidden.insert(name);
                }
            }
        }
        Ok(map
            .into_iter()
            .map(|(name, b)| {
                let child = Child {
                    layer: b.layer,
                    kind: b.kind,
                    dir_layers: b.dir_layers,
                    node: OnceLock::new(),
                    meta: OnceLock::new(),
                    target: OnceLock::new(),
                };
                (name, Arc::new(child))
            })
            .collect())
    }

    /// Look up one name in a merged directory.
    pub fn child(&self, node: &Node, name: &OsStr) -> Result<Option<Arc<Child>>> {
        Ok(self.children(node)?.get(name).cloned())
    }

    /// The sorted names of a merged directory.
    pub fn names<'n>(&self, node: &'n Node) -> Result<&'n [OsString]> {
        if let Some(s) = node.sorted.get() {
            return Ok(s);
        }
        let mut names: Vec<OsString> = self.children(node)?.keys().cloned().collect();
        names.sort_unstable_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        let _ = node.sorted.set(names);
        Ok(node.sorted.get().expect("just set"))
    }

    /// The merged directory node of a child directory.
    pub fn node(&self, parent: &Node, name: &OsStr, child: &Child) -> Arc<Node> {
        child
            .node
            .get_or_init(|| {
                let rel = parent.rel.join(name);
                let layers = self.cut_at_opaque(&rel, &child.dir_layers);
                Arc::new(Node::new(rel, layers))
            })
            .clone()
    }

    /// The logical metadata of a child (cached: layers are immutable).
    pub fn meta(&self, parent: &Node, name: &OsStr, child: &Child) -> Result<Meta> {
        if let Some(m) = child.meta.get() {
            return Ok(*m);
        }
        let rel = parent.rel.join(name);
        let m = sys::read_meta(self.fd(child.layer), rel.as_os_str(), self.privilege).at(self.host_path(child.layer, &rel))?;
        let _ = child.meta.set(m);
        Ok(m)
    }

    /// Read a directory before it is needed: its children and each one's metadata, through one open
    /// descriptor per layer rather than a path walk per entry.
    pub fn read_ahead(&self, node: &Node) -> Result<()> {
        if node.is_read() {
            return Ok(());
        }
        let mut dirs: Vec<Option<OwnedFd>> = (0..self.layers.len()).map(|_| None).collect();
        for (name, child) in self.children(node)? {
            if child.meta.get().is_some() {
                continue;
            }
            let dir = match &mut dirs[child.layer as usize] {
                Some(fd) => fd,
                slot => slot.insert(open_rel_dir(self.fd(child.layer), &node.rel)?),
            };
            let _ = child.meta.set(sys::read_meta(dir.as_fd(), name, self.privilege)?);
        }
        node.read.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The merged directories below `node`, in name order (as a walk enters them).
    pub fn subdirs(&self, node: &Node) -> Result<Vec<Arc<Node>>> {
        let children = self.children(node)?;
        let mut out = Vec::new();
        for name in self.names(node)? {
            let child = &children[name];
            if child.kind == Kind::Dir {
                out.push(self.node(node, name, child));
            }
        }
        Ok(out)
    }

    /// The metadata of the merged root directory (from the top layer).
    pub fn root_meta(&self) -> Result<Option<Meta>> {
        match self.root.layers.first() {
            None => Ok(None),
            Some(&l) => Ok(Some(sys::read_meta(self.fd(l), OsStr::new("."), self.privilege)?)),
        }
    }

    pub fn readlink(&self, parent: &Node, name: &OsStr, child: &Child) -> Result<OsString> {
        if let Some(t) = child.target.get() {
            return Ok(t.clone());
        }
        let rel = parent.rel.join(name);
        let t = sys::readlink_at(self.fd(child.layer), rel.as_os_str()).at(self.host_path(child.layer, &rel))?;
        let _ = child.target.set(t.clone());
        Ok(t)
    }

    /// Open a child (regular file or directory) of the stack read-only.
    pub fn open_child(&self, parent: &Node, name: &OsStr, child: &Child, flags: OFlags) -> Result<OwnedFd> {
        let rel = parent.rel.join(name);
        rustix::fs::openat(self.fd(child.layer), rel.as_os_str(), flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .at(self.host_path(child.layer, &rel))
    }

    /// The directory holding `rel` in layer `layer`, opened (for xattr and link calls on one entry).
    pub fn open_parent(&self, layer: u16, rel: &Path) -> Result<OwnedFd> {
        let (parent, _) = sys::split_parent(rel);
        open_rel_dir(self.fd(layer), parent)
    }

    pub fn host_path(&self, layer: u16, rel: &Path) -> PathBuf {
        self.layers[layer as usize].path.join(rel)
    }

    pub fn layer_fd(&self, layer: u16) -> BorrowedFd<'_> {
        self.fd(layer)
    }

    /// Walk a relative path (no symlink resolution) to its child entry, if every parent is a directory.
    pub fn lookup(&self, rel: &Path) -> Result<Option<Entry>> {
        let mut node = self.root.clone();
        let mut comps = rel.iter().peekable();
        while let Some(name) = comps.next() {
            let child = match self.child(&node, name)? {
                Some(c) => c,
                None => return Ok(None),
            };
            if comps.peek().is_none() {
                return Ok(Some((node, name.to_owned(), child)));
            }
            if child.kind != Kind::Dir {
                return Ok(None);
            }
            node = self.node(&node, name, &child);
        }
        Ok(None)
    }

    /// The merged directory node at a relative path (`None` unless it is a directory in the stack).
    pub fn dir_node(&self, rel: &Path) -> Result<Option<Arc<Node>>> {
        if rel.as_os_str().is_empty() {
            return Ok(Some(self.root.clone()));
        }
        Ok(match self.lookup(rel)? {
            Some((parent, name, child)) if child.kind == Kind::Dir => Some(self.node(&parent, &name, &child)),
            _ => None,
        })
    }
}

impl Node {
    fn new(rel: PathBuf, layers: Vec<u16>) -> Node {
        Node { rel, layers, children: OnceLock::new(), sorted: OnceLock::new(), read: Default::default() }
    }

    /// Whether `read_ahead` has read every child's metadata.
    pub fn is_read(&self) -> bool {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn rel_os(rel: &Path) -> &OsStr {
    if rel.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        rel.as_os_str()
    }
}

/// Open a directory at a relative path inside an immutable layer. Its parents were all seen as real
/// directories of the stack, so a plain no-follow open is enough.
fn open_rel_dir(layer: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd> {
    Ok(rustix::fs::openat(
        layer,
        rel_os(rel),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
