//! Layer stacks in a temporary directory, the read-only view of an image, and containers (a writable
//! layer over the stack) with a path-based file API like `ContainerFS`, as the binding builds them.
//!
//! The temporary directory holds `outside/secret` (a host file nothing may ever read or write) next to
//! `store/`, where layers and containers live.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::fs::{OFlags, Timespec, Timestamps};

use super::tree::{self, host_snapshot, Tree};
use super::{import_layer, CommitReport, Error, ImportOptions, ImportReport, Kind, LayerTar, Lower, Meta, MountPoint, Privilege, Result, Upper, View};

pub const SECRET: &str = "host secret\n";

/// A stack of layers (bottom first), each imported on the ones below it. A clone shares the directory
/// (an image built on this one).
#[derive(Clone)]
pub struct Stack {
    /// Shared with every view made, so that a view outlives the stack value.
    tmp: Arc<tempfile::TempDir>,
    pub privilege: Privilege,
    layers: Vec<PathBuf>,
    /// Directories made so far (layers, failed imports, containers), for unique names.
    made: Arc<AtomicUsize>,
}

impl Stack {
    pub fn new(privilege: Privilege) -> Stack {
        let tmp = tempfile::Builder::new().prefix("ovlcore-test-").tempdir().expect("temporary directory");
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), SECRET).unwrap();
        std::fs::create_dir(tmp.path().join("store")).unwrap();
        Stack { tmp: Arc::new(tmp), privilege, layers: Vec::new(), made: Arc::new(AtomicUsize::new(0)) }
    }

    /// A stack of these layer tars (bottom first).
    pub fn of(privilege: Privilege, tars: &[&[u8]]) -> Stack {
        let mut s = Stack::new(privilege);
        for t in tars {
            s.push(t);
        }
        s
    }

    /// The host directory next to the store that nothing may touch.
    pub fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    pub fn base(&self) -> &Path {
        self.tmp.path()
    }

    /// A fresh directory in the store.
    pub fn new_dir(&self, what: &str) -> PathBuf {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp.path().join("store").join(format!("{what}{n}"));
        std::fs::create_dir(&p).unwrap();
        p
    }

    /// Import a layer tar on top; panics when it is refused.
    pub fn push(&mut self, tar: &[u8]) -> PathBuf {
        self.try_push(tar).unwrap_or_else(|e| panic!("import failed: {e}"));
        self.top().to_path_buf()
    }

    /// Import a layer tar on top (kept only when the import works).
    pub fn try_push(&mut self, tar: &[u8]) -> Result<ImportReport> {
        self.import(tar, None)
    }

    /// Import from any reader (plain, gzip or zstd), with an optional uncompressed-size limit.
    pub fn import(&mut self, input: impl Read + Send, max_size: Option<u64>) -> Result<ImportReport> {
        let dest = self.new_dir("layer");
        self.import_into(&dest, input, max_size)
    }

    /// Import into the empty directory `dest` (mode 0755, as a store makes it), with the tar-split next
    /// to it; `dest` joins the stack when the import works.
    fn import_into(&mut self, dest: &Path, input: impl Read + Send, max_size: Option<u64>) -> Result<ImportReport> {
        std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let split = std::fs::File::create(dest.with_extension("split")).unwrap();
        let lower = self.lower();
        let opts = ImportOptions { privilege: self.privilege, lower: Some(&lower), max_size, progress: None };
        let report = import_layer(input, dest, Some(split), opts)?;
        self.layers.push(dest.to_path_buf());
        Ok(report)
    }

    /// Put a layer directory made elsewhere (a commit) on top.
    pub fn push_dir(&mut self, dir: PathBuf) {
        self.layers.push(dir);
    }

    /// The layer directories, bottom first.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    pub fn top(&self) -> &Path {
        self.layers.last().expect("a layer")
    }

    pub fn top_first(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().cloned().collect()
    }

    /// The merged stack (freshly opened, never shared with another test).
    pub fn lower(&self) -> Arc<Lower> {
        Arc::new(Lower::open(&self.top_first(), self.privilege).expect("open the layers"))
    }

    /// The stack below layer `i`.
    fn lower_of(&self, i: usize) -> Option<Arc<Lower>> {
        let below: Vec<PathBuf> = self.layers[..i].iter().rev().cloned().collect();
        (!below.is_empty()).then(|| Arc::new(Lower::open(&below, self.privilege).unwrap()))
    }

    /// The image's read-only view.
    pub fn view(&self) -> Fs {
        Fs { view: Arc::new(View::new(self.lower(), None, Vec::new()).unwrap()), keep: self.tmp.clone() }
    }

    /// A new container: an empty writable layer over the stack.
    pub fn container(&self) -> Ctr {
        self.container_with(&[])
    }

    /// A container with mounts: (target, host source, read-only).
    pub fn container_with(&self, mounts: &[(&str, &Path, bool)]) -> Ctr {
        let dir = self.new_dir("container");
        for d in ["diff", "scratch"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        let mounts = owned(mounts);
        let lower = self.lower();
        let fs = container_view(&dir, &lower, &mounts, &self.tmp);
        Ctr { dir, lower, privilege: self.privilege, mounts, fs }
    }

    /// Layer `i`'s tar as the store re-exports it: replayed from its tar-split, or walked when it has none.
    pub fn layer_tar(&self, i: usize) -> Vec<u8> {
        let dir = &self.layers[i];
        let split = dir.with_extension("split");
        let tar = match std::fs::File::open(&split) {
            Ok(f) => LayerTar::from_split(dir, f),
            Err(_) => LayerTar::walk(dir, self.privilege, self.lower_of(i)),
        };
        read_all(tar.unwrap())
    }

    /// Layer `i` walked in the deterministic format (whiteouts as `.wh.` where they mean something).
    pub fn walked_tar(&self, i: usize) -> Vec<u8> {
        read_all(LayerTar::walk(&self.layers[i], self.privilege, self.lower_of(i)).unwrap())
    }

    /// Everything about every layer that must never change.
    pub fn snapshot(&self) -> Vec<BTreeMap<String, tree::RawEntry>> {
        self.layers.iter().map(|l| host_snapshot(l)).collect()
    }

    /// Import `tar` and check the refusal: an invalid-archive error naming `entry` (when given), no layer
    /// added, and nothing changed anywhere (the other layers, the store, the outside directory) but in the
    /// directory the import was given. Returns the message.
    pub fn refuse(&mut self, tar: &[u8], entry: Option<&str>) -> String {
        let before = self.snapshot_all();
        let dest = self.new_dir("layer");
        let layers = self.layers.len();
        let msg = super::assert_invalid_archive(self.import_into(&dest, tar, None));
        if let Some(entry) = entry {
            assert!(msg.contains(entry), "message {msg:?} does not name the entry {entry:?}");
        }
        assert_eq!(self.layers.len(), layers);
        let given = format!("/store/{}", dest.file_name().unwrap().to_str().unwrap());
        let mut after = self.snapshot_all();
        after.retain(|p, _| p != &format!("{given}.split") && p != &given && !p.starts_with(&format!("{given}/")));
        assert!(after == before, "something was written outside the layer directory: {:?}", changed(&before, &after));
        assert_eq!(std::fs::read_to_string(self.outside().join("secret")).unwrap(), SECRET);
        msg
    }

    /// Everything under the temporary directory but the directories above the store's own (their times
    /// change whenever a layer is made; what appears in them is still seen).
    fn snapshot_all(&self) -> BTreeMap<String, tree::RawEntry> {
        let mut snap = host_snapshot(self.tmp.path());
        snap.retain(|p, _| p != "/" && p != "/store");
        snap
    }
}

/// The paths that differ between two snapshots.
fn changed<'a>(a: &'a BTreeMap<String, tree::RawEntry>, b: &'a BTreeMap<String, tree::RawEntry>) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).filter(|p| a.get(*p) != b.get(*p)).collect()
}

/// Mounts as (target, host source, read-only).
type Mounts = Vec<(PathBuf, PathBuf, bool)>;

fn owned(mounts: &[(&str, &Path, bool)]) -> Mounts {
    mounts.iter().map(|(t, s, ro)| (PathBuf::from(t), s.to_path_buf(), *ro)).collect()
}

/// A view of the writable layer in the container directory `dir` over `lower`, as the binding opens it.
fn container_view(dir: &Path, lower: &Arc<Lower>, mounts: &Mounts, keep: &Arc<tempfile::TempDir>) -> Fs {
    let upper = Upper::open(&dir.join("diff"), &dir.join("scratch"), Some(&dir.join("shared-inodes"))).unwrap();
    let mounts = mounts.iter().map(|(t, s, ro)| MountPoint::new(t, s, *ro).unwrap()).collect();
    Fs { view: Arc::new(View::new(lower.clone(), Some(upper), mounts).unwrap()), keep: keep.clone() }
}

pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read the stream");
    v
}

/// A container: its writable layer, scratch directory and shared-inode file, and a view over them.
pub struct Ctr {
    pub dir: PathBuf,
    lower: Arc<Lower>,
    privilege: Privilege,
    mounts: Mounts,
    pub fs: Fs,
}

impl std::ops::Deref for Ctr {
    type Target = Fs;
    fn deref(&self) -> &Fs {
        &self.fs
    }
}

impl Ctr {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("diff")
    }

    /// The host path of a container path in the writable layer.
    pub fn up(&self, path: &str) -> PathBuf {
        self.upper().join(path.trim_start_matches('/'))
    }

    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// Another handle on the same container (as another process opens it).
    pub fn reopen(&self) -> Fs {
        container_view(&self.dir, &self.lower, &self.mounts, &self.fs.keep)
    }

    /// Another handle on the same writable layer with other mounts: (target, host source, read-only).
    pub fn reopen_with(&self, mounts: &[(&str, &Path, bool)]) -> Fs {
        container_view(&self.dir, &self.lower, &owned(mounts), &self.fs.keep)
    }

    /// Commit the writable layer into the empty directory `dest`, as the binding does: the inodes now
    /// shared are recorded, so that the container's next change to them copies them first.
    pub fn commit(&self, dest: &Path) -> CommitReport {
        self.fs.view.commit(dest, None).expect("commit")
    }

    /// `docker diff`: (letter, path), in the core's order.
    pub fn diff(&self) -> Vec<(char, String)> {
        self.fs.view.diff().unwrap().into_iter().map(|(k, p)| (k.letter(), p.to_str().unwrap().to_string())).collect()
    }

    /// The writable layer's own entries: `whiteout`, `opaque` (an opaque directory), `dir`, or the kind.
    pub fn markers(&self) -> BTreeMap<String, &'static str> {
        tree::markers(&self.upper(), self.privilege)
    }
}

/// A merged view with a path-based API (the operations `ContainerFS` maps onto the core).
#[derive(Clone)]
pub struct Fs {
    pub view: Arc<View>,
    /// The stack's directory, kept as long as the view lives.
    keep: Arc<tempfile::TempDir>,
}

fn p(path: &str) -> &Path {
    Path::new(path)
}

fn ts(ns: i128) -> Timespec {
    Timespec { tv_sec: ns.div_euclid(1_000_000_000) as i64, tv_nsec: ns.rem_euclid(1_000_000_000) as _ }
}

impl Fs {
    // ----- reading -----

    pub fn stat(&self, path: &str) -> Result<Meta> {
        self.view.stat(p(path), true)
    }

    pub fn lstat(&self, path: &str) -> Result<Meta> {
        self.view.stat(p(path), false)
    }

    /// `stat`, which must work.
    pub fn st(&self, path: &str) -> Meta {
        self.stat(path).unwrap_or_else(|e| panic!("stat {path}: {e}"))
    }

    /// `lstat`, which must work.
    pub fn lst(&self, path: &str) -> Meta {
        self.lstat(path).unwrap_or_else(|e| panic!("lstat {path}: {e}"))
    }

    /// What a path names (`None` when it does not resolve), as the binding's `kind`.
    pub fn kind(&self, path: &str, follow: bool) -> Option<Kind> {
        match self.view.resolve(p(path), follow) {
            Ok(r) => r.kind(),
            Err(e) if [libc::ENOENT, libc::ENOTDIR, libc::ELOOP].contains(&e.raw_errno().unwrap_or(0)) => None,
            Err(e) => panic!("resolve {path}: {e}"),
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.kind(path, true).is_some()
    }

    pub fn lexists(&self, path: &str) -> bool {
        self.kind(path, false).is_some()
    }

    pub fn is_file(&self, path: &str) -> bool {
        self.kind(path, true) == Some(Kind::File)
    }

    pub fn is_dir(&self, path: &str) -> bool {
        self.kind(path, true) == Some(Kind::Dir)
    }

    pub fn is_symlink(&self, path: &str) -> bool {
        self.kind(path, false) == Some(Kind::Symlink)
    }

    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        Ok(self.view.list(p(path))?.into_iter().map(|(n, _)| n.into_string().expect("UTF-8 name")).collect())
    }

    /// The listing, which must work.
    pub fn ls(&self, path: &str) -> Vec<String> {
        self.list(path).unwrap_or_else(|e| panic!("list {path}: {e}"))
    }

    /// (name, kind) pairs of a directory.
    pub fn entries(&self, path: &str) -> Vec<(String, Kind)> {
        self.view.list(p(path)).unwrap().into_iter().map(|(n, k)| (n.into_string().unwrap(), k)).collect()
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let fd = self.view.open_read(p(path), OFlags::empty())?;
        let mut v = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut v).map_err(|e| Error::from(e).at(path))?;
        Ok(v)
    }

    /// The content as text, which must be readable.
    pub fn text(&self, path: &str) -> String {
        String::from_utf8(self.read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))).unwrap()
    }

    pub fn readlink(&self, path: &str) -> Result<String> {
        Ok(self.view.readlink(p(path))?.into_string().expect("UTF-8 target"))
    }

    pub fn getxattr(&self, path: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.view.getxattr(p(path), &CString::new(name).unwrap(), true)
    }

    pub fn listxattr(&self, path: &str) -> Result<Vec<String>> {
        Ok(self.view.listxattr(p(path), true)?.into_iter().map(|n| String::from_utf8(n).unwrap()).collect())
    }

    /// Every path below `top` described (symlinks not followed).
    pub fn tree(&self, top: &str) -> Tree {
        tree::fs_tree(self, top)
    }

    // ----- writing -----

    /// Open for writing with `os.open` flags, as `ContainerFS.open` does.
    pub fn open_write(&self, path: &str, flags: OFlags) -> Result<std::fs::File> {
        Ok(std::fs::File::from(self.view.open_write(p(path), flags, 0o666)?))
    }

    pub fn write(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        let mut f = self.open_write(path, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)?;
        f.write_all(data.as_ref()).map_err(|e| Error::from(e).at(path))
    }

    pub fn append(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        let mut f = self.open_write(path, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)?;
        f.write_all(data.as_ref()).map_err(|e| Error::from(e).at(path))
    }

    /// Write `data` at `offset` of an existing file (`r+b`, seek, write).
    pub fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let f = self.open_write(path, OFlags::RDWR)?;
        std::os::unix::fs::FileExt::write_all_at(&f, data, offset).map_err(|e| Error::from(e).at(path))
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        self.view.mkdir(p(path), mode)
    }

    /// `mkdir(parents=True)`: the missing parents first.
    pub fn makedirs(&self, path: &str) -> Result<()> {
        match self.mkdir(path, 0o755) {
            Err(e) if e.is_errno(libc::ENOENT) && path != "/" => {
                self.makedirs(Path::new(path).parent().unwrap().to_str().unwrap())?;
                self.mkdir(path, 0o755)
            }
            Err(e) if e.is_errno(libc::EEXIST) && self.is_dir(path) => Ok(()),
            other => other,
        }
    }

    pub fn remove(&self, path: &str) -> Result<()> {
        self.view.remove(p(path))
    }

    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.view.rmdir(p(path))
    }

    pub fn rmtree(&self, path: &str) -> Result<()> {
        self.view.rmtree(p(path))
    }

    pub fn rename(&self, src: &str, dst: &str) -> Result<()> {
        self.view.rename(p(src), p(dst))
    }

    pub fn symlink(&self, target: &str, path: &str) -> Result<()> {
        self.view.symlink(OsStr::new(target), p(path))
    }

    pub fn link(&self, src: &str, dst: &str) -> Result<()> {
        self.view.link(p(src), p(dst))
    }

    pub fn chmod(&self, path: &str, mode: u32) -> Result<()> {
        self.view.chmod(p(path), mode, true)
    }

    /// `chown`; `None` keeps that id (`-1`).
    pub fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        self.view.chown(p(path), uid, gid, true)
    }

    pub fn lchown(&self, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.view.chown(p(path), Some(uid), Some(gid), false)
    }

    /// Set (atime, mtime) in nanoseconds, following a final symlink.
    pub fn utime(&self, path: &str, atime_ns: i128, mtime_ns: i128) -> Result<()> {
        self.view.utime(p(path), Some(Timestamps { last_access: ts(atime_ns), last_modification: ts(mtime_ns) }), true)
    }

    /// Set a symlink's own times.
    pub fn lutime(&self, path: &str, atime_ns: i128, mtime_ns: i128) -> Result<()> {
        self.view.utime(p(path), Some(Timestamps { last_access: ts(atime_ns), last_modification: ts(mtime_ns) }), false)
    }

    pub fn truncate(&self, path: &str, size: u64) -> Result<()> {
        self.view.truncate(p(path), size)
    }

    pub fn setxattr(&self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        self.view.setxattr(p(path), &CString::new(name).unwrap(), value, 0, true)
    }

    pub fn removexattr(&self, path: &str, name: &str) -> Result<()> {
        self.view.removexattr(p(path), &CString::new(name).unwrap(), true)
    }

    pub fn mkfifo(&self, path: &str, mode: u32) -> Result<()> {
        self.view.mknod(p(path), Kind::Fifo, mode, 0)
    }

    pub fn mknod(&self, path: &str, kind: Kind, mode: u32, rdev: u64) -> Result<()> {
        self.view.mknod(p(path), kind, mode, rdev)
    }
}

/// Open a host directory for the copy calls.
pub fn host_dir(path: &Path) -> std::os::fd::OwnedFd {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, rustix::fs::Mode::empty()).unwrap()
}

