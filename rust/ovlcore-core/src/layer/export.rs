//! Layer directory → OCI layer tar, produced as it is read (bounded memory whatever the layer's size).
//!
//! A layer imported from an archive is replayed from its tar-split records: the same bytes, the same
//! diff_id. Any other directory (a committed layer, a writable layer) is walked in sorted order and written
//! in one fixed format (PAX where needed, numeric ids, empty user/group names, whole-second mtimes, `dir/`
//! names, hard links by inode), so the same content always gives the same bytes. Whiteout devices become
//! `.wh.NAME`; an opaque directory that exists below gets `dir/.wh..wh..opq` after its own entry.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use tar::EntryType;

use crate::attrs::{Kind, Meta, Privilege};
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::format::{opaque_entry, whiteout_entry};
use crate::layer::ahead::Ahead;
use crate::layer::tarsplit::{Record, SplitReader};
use crate::overlap::OverlappedWriter;
use crate::sys;
use crate::tar::{entry_header, padding, END_OF_ARCHIVE};
use crate::union::{Lower, Node, Resolved, View};

/// One tar entry about to be written: its header blocks and, for regular files, the content to follow.
pub(super) struct Item {
    pub(super) header: Vec<u8>,
    pub(super) body: Option<(File, u64)>,
}

enum Source {
    Split { records: SplitReader, root: OwnedFd },
    Walk(Box<Walker>),
    Ahead(Ahead),
    Merged(Box<MergedWalker>),
}

/// A readable OCI layer tar stream. The sha256 of everything read so far is kept, so the diff_id is known
/// once the stream ends.
pub struct LayerTar {
    source: Source,
    buf: Vec<u8>,
    pos: usize,
    body: Option<(File, u64, u64)>,
    hasher: Hasher,
    /// False for streams nobody needs the digest of (`docker export`): bytes are only counted.
    hashing: bool,
    done: bool,
}

impl LayerTar {
    /// Replay an imported layer from its tar-split file.
    pub fn from_split(layer_dir: &Path, split: File) -> Result<LayerTar> {
        let source = Source::Split { records: SplitReader::open(split)?, root: sys::open_dir(layer_dir)? };
        Ok(LayerTar::new(source))
    }

    /// Walk a layer (or writable layer) directory; `lower` is the stack below it, which decides where
    /// whiteouts and opaque markers mean something.
    pub fn walk(dir: &Path, privilege: Privilege, lower: Option<Arc<Lower>>) -> Result<LayerTar> {
        Ok(LayerTar::new(Source::Walk(Box::new(Walker::new(dir, privilege, lower)?))))
    }

    /// The same walk with its entries made ahead on a helper thread (see `ahead.rs`): for a stream read
    /// as fast as it is hashed, at the cost of up to a few tens of MB.
    pub fn read_ahead(mut self) -> Result<LayerTar> {
        if let Source::Walk(w) = self.source {
            self.source = Source::Ahead(Ahead::start(w)?);
        }
        Ok(self)
    }

    /// The flattened merged file system of a view (`docker export`): mount contents left out.
    pub fn merged(view: Arc<View>) -> Result<LayerTar> {
        let root = view.resolve(Path::new("/"), false)?;
        let mut entries = view.children(&root)?;
        entries.reverse();
        let walker = MergedWalker { view, base: PathBuf::from("/"), exclude_mounts: true, stack: vec![entries], links: HashMap::new() };
        Ok(LayerTar::new(Source::Merged(Box::new(walker))))
    }

    /// The entry at `path` of a view and everything below it, named from its base name (docker's
    /// `get_archive`); mount contents included. A final symlink is archived as the link.
    pub fn subtree(view: Arc<View>, path: &Path) -> Result<LayerTar> {
        let r = view.resolve(path, false)?.require()?;
        if r.path == Path::new("/") {
            let mut t = LayerTar::merged(view)?;
            if let Source::Merged(w) = &mut t.source {
                w.exclude_mounts = false;
            }
            return Ok(t);
        }
        let base = r.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let walker = MergedWalker { view, base, exclude_mounts: false, stack: vec![vec![r]], links: HashMap::new() };
        Ok(LayerTar::new(Source::Merged(Box::new(walker))))
    }

    fn new(source: Source) -> LayerTar {
        LayerTar { source, buf: Vec::new(), pos: 0, body: None, hasher: Hasher::default(), hashing: true, done: false }
    }

    /// The same stream without computing its sha256 (for streams whose digest nobody needs).
    pub fn without_digest(mut self) -> LayerTar {
        self.hashing = false;
        self
    }

    /// Whether [`LayerTar::digest`] means anything (see [`LayerTar::without_digest`]).
    pub fn has_digest(&self) -> bool {
        self.hashing
    }

    /// `sha256:<hex>` of the bytes read so far (the diff_id once the stream is exhausted).
    pub fn digest(&self) -> String {
        self.hasher.digest()
    }

    pub fn bytes_read(&self) -> u64 {
        self.hasher.count
    }

    fn next_item(&mut self) -> Result<Option<Item>> {
        match &mut self.source {
            Source::Walk(w) => w.next_item(),
            Source::Ahead(a) => a.next_item(),
            Source::Merged(w) => w.next_item(),
            Source::Split { records, root } => match records.next_record()? {
                None => Ok(None),
                Some(Record::Segment(bytes)) => Ok(Some(Item { header: bytes, body: None })),
                Some(Record::File { path, size }) => {
                    let rel = Path::new(OsStr::from_bytes(&path));
                    let fd = sys::open_beneath(root.as_fd(), rel, OFlags::RDONLY)?;
                    let file = File::from(fd);
                    let actual = file.metadata()?.len();
                    if actual != size {
                        return Err(Error::corrupt(format!(
                            "layer content changed: {} is {actual} bytes, its tar-split records {size}",
                            rel.display()
                        )));
                    }
                    // Segments carry the padding themselves.
                    Ok(Some(Item { header: Vec::new(), body: Some((file, size)) }))
                }
            },
        }
    }

    fn padded(&self) -> bool {
        !matches!(self.source, Source::Split { .. })
    }

    /// Write the rest of the stream into `out`; `progress` gets the running count of bytes. Unless the
    /// stream is being hashed, the content of every file of [`HANDED_OVER`] bytes or more is handed to
    /// the writer as the file itself (copied by the kernel when `out` writes into a file), not read.
    pub fn copy_into<W: Write + Send + 'static>(&mut self, out: &mut OverlappedWriter<W>, progress: &mut dyn FnMut(u64) -> Result<()>) -> Result<u64> {
        let start = self.hasher.count;
        loop {
            if let Some((file, size)) = self.take_whole_body() {
                out.send_file(file, size)?;
                self.hasher.count += size;
                progress(self.hasher.count - start)?;
                continue;
            }
            let n = out.write_from(&mut UpToWholeBody(self), 1 << 20)?;
            if n == 0 && !self.at_whole_body() {
                return Ok(self.hasher.count - start);
            }
            progress(self.hasher.count - start)?;
        }
    }

    /// Whether the next bytes of the stream are the whole content of a file big enough to hand over.
    fn at_whole_body(&self) -> bool {
        !self.hashing && self.pos == self.buf.len() && matches!(&self.body, Some((_, remaining, total)) if remaining == total && *total >= HANDED_OVER)
    }

    /// The file whose whole content comes next, with its size, the stream moved past that content.
    fn take_whole_body(&mut self) -> Option<(File, u64)> {
        if !self.at_whole_body() {
            return None;
        }
        let (file, _, total) = self.body.take()?;
        self.buf.clear();
        self.pos = 0;
        if self.padded() {
            self.buf.resize(padding(total), 0);
        }
        Some((file, total))
    }
}

/// Files from this size on are copied by the writer from the file (below, reading them into the chunk
/// costs less than a separate copy call and a partly filled write).
const HANDED_OVER: u64 = 256 << 10;

/// The stream up to the next content [`LayerTar::take_whole_body`] takes (reads 0 there).
struct UpToWholeBody<'a>(&'a mut LayerTar);

impl Read for UpToWholeBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.0.at_whole_body() {
            return Ok(0);
        }
        self.0.read(out)
    }
}

impl Read for LayerTar {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                if self.hashing {
                    self.hasher.update(&out[..n]);
                } else {
                    self.hasher.count += n as u64;
                }
                return Ok(n);
            }
            if let Some((file, remaining, total)) = self.body.as_mut() {
                if *remaining > 0 {
                    let want = out.len().min(*remaining as usize);
                    let n = file.read(&mut out[..want])?;
                    if n == 0 {
                        return Err(io::Error::other(Error::corrupt("a layer file shrank while being read")));
                    }
                    *remaining -= n as u64;
                    if self.hashing {
                        self.hasher.update(&out[..n]);
                    } else {
                        self.hasher.count += n as u64;
                    }
                    return Ok(n);
                }
                let pad = padding(*total);
                self.body = None;
                self.buf.clear();
                self.pos = 0;
                if self.padded() {
                    self.buf.resize(pad, 0);
                }
                continue;
            }
            if self.done {
                return Ok(0);
            }
            self.buf.clear();
            self.pos = 0;
            match self.next_item().map_err(io::Error::from)? {
                Some(item) => {
                    self.buf = item.header;
                    self.body = item.body.map(|(f, n)| (f, n, n));
                }
                None => {
                    self.done = true;
                    if self.padded() {
                        self.buf = END_OF_ARCHIVE.to_vec();
                    }
                }
            }
        }
    }
}

struct Frame {
    rel: PathBuf,
    fd: OwnedFd,
    /// Remaining names, sorted descending so `pop` yields them in order.
    names: Vec<OsString>,
    /// The merged lower directory this one overlays (None: nothing below, or hidden by opacity).
    below: Option<Arc<Node>>,
}

pub(super) struct Walker {
    privilege: Privilege,
    lower: Option<Arc<Lower>>,
    stack: Vec<Frame>,
    links: HashMap<(u64, u64), Vec<u8>>,
    pending: Vec<Item>,
}

impl Walker {
    fn new(dir: &Path, privilege: Privilege, lower: Option<Arc<Lower>>) -> Result<Walker> {
        let fd = sys::open_dir(dir)?;
        let below = lower.as_ref().filter(|l| !l.is_empty()).map(|l| l.root().clone());
        let names = sorted_names(&fd)?;
        Ok(Walker { privilege, lower, stack: vec![Frame { rel: PathBuf::new(), fd, names, below }], links: HashMap::new(), pending: Vec::new() })
    }

    pub(super) fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(item) = self.pending.pop() {
                return Ok(Some(item));
            }
            let frame = match self.stack.last_mut() {
                Some(f) => f,
                None => return Ok(None),
            };
            let name = match frame.names.pop() {
                Some(n) => n,
                None => {
                    self.stack.pop();
                    continue;
                }
            };
            if let Some(item) = self.entry(name)? {
                return Ok(Some(item));
            }
        }
    }

    fn entry(&mut self, name: OsString) -> Result<Option<Item>> {
        let frame = self.stack.last().expect("called with a frame");
        let dfd = frame.fd.as_fd();
        let rel = frame.rel.join(&name);
        let raw = Meta::from_stat(&sys::lstat_at(dfd, &name)?);
        if raw.is_whiteout() {
            // A whiteout only means something where the directory merges with a lower one.
            if frame.below.is_none() {
                return Ok(None);
            }
            return Ok(Some(Item { header: marker_header(&whiteout_entry(&frame.rel, &name))?, body: None }));
        }
        let meta = sys::logical_meta(dfd, &name, raw, self.privilege);
        let kind = meta.kind();
        if kind == Kind::Socket {
            return Ok(None);
        }
        let xattrs = if kind == Kind::Symlink && self.privilege == Privilege::Rootless {
            Vec::new()
        } else {
            sys::content_xattrs(dfd, &name)?
        };
        let rel_bytes = rel.as_os_str().as_bytes().to_vec();
        match kind {
            Kind::Dir => {
                let mut tar_name = rel_bytes.clone();
                tar_name.push(b'/');
                let header = entry_header(&tar_name, &meta, EntryType::Directory, 0, None, &xattrs)?;
                let sub = rustix::fs::openat(dfd, &name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                let opaque = sys::is_opaque(dfd, &name, self.privilege);
                let lower_child = match (&frame.below, &self.lower) {
                    (Some(node), Some(lower)) => match lower.child(node, &name)? {
                        Some(c) if c.kind == Kind::Dir => Some(lower.node(node, &name, &c)),
                        _ => None,
                    },
                    _ => None,
                };
                let names = sorted_names(&sub)?;
                if opaque && lower_child.is_some() {
                    self.pending.push(Item { header: marker_header(&opaque_entry(&rel))?, body: None });
                }
                let below = if opaque { None } else { lower_child };
                self.stack.push(Frame { rel, fd: sub, names, below });
                Ok(Some(Item { header, body: None }))
            }
            Kind::Symlink => {
                let target = sys::readlink_at(dfd, &name)?;
                let header = entry_header(&rel_bytes, &meta, EntryType::Symlink, 0, Some(target.as_bytes()), &xattrs)?;
                Ok(Some(Item { header, body: None }))
            }
            Kind::File => {
                if raw.nlink > 1 {
                    if let Some(first) = self.links.get(&(raw.dev, raw.ino)) {
                        let first = first.clone();
                        let header = entry_header(&rel_bytes, &meta, EntryType::Link, 0, Some(&first), &xattrs)?;
                        return Ok(Some(Item { header, body: None }));
                    }
                    self.links.insert((raw.dev, raw.ino), rel_bytes.clone());
                }
                let fd = rustix::fs::openat(dfd, &name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                let header = entry_header(&rel_bytes, &meta, EntryType::Regular, meta.size, None, &xattrs)?;
                let body = if meta.size > 0 { Some((File::from(fd), meta.size)) } else { None };
                Ok(Some(Item { header, body }))
            }
            Kind::Fifo => Ok(Some(Item { header: entry_header(&rel_bytes, &meta, EntryType::Fifo, 0, None, &xattrs)?, body: None })),
            Kind::Char => Ok(Some(Item { header: entry_header(&rel_bytes, &meta, EntryType::Char, 0, None, &xattrs)?, body: None })),
            Kind::Block => Ok(Some(Item { header: entry_header(&rel_bytes, &meta, EntryType::Block, 0, None, &xattrs)?, body: None })),
            Kind::Socket => Ok(None),
        }
    }
}

/// Walks a merged view for `docker export`.
struct MergedWalker {
    view: Arc<View>,
    /// Entry names are paths relative to this directory.
    base: PathBuf,
    exclude_mounts: bool,
    /// Entries still to write, per directory entered (reversed, so `pop` gives them in order).
    stack: Vec<Vec<Resolved>>,
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl MergedWalker {
    fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            let r = match self.stack.last_mut() {
                Some(entries) => match entries.pop() {
                    Some(r) => r,
                    None => {
                        self.stack.pop();
                        continue;
                    }
                },
                None => return Ok(None),
            };
            if self.exclude_mounts && self.view.mounts.iter().any(|m| r.path.starts_with(&m.target)) {
                continue;
            }
            let view = self.view.clone();
            let meta = view.meta(&r)?;
            let rel = r.path.strip_prefix(&self.base).expect("below the base").as_os_str().as_bytes().to_vec();
            let xattrs = match (meta.kind(), view.entry_location(&r)) {
                (Kind::Symlink, _) | (_, Err(_)) => Vec::new(),
                (_, Ok((dir, name))) => sys::content_xattrs(dir.as_fd(), &name)?,
            };
            let path = r.path.clone();
            let item = match meta.kind() {
                Kind::Dir => {
                    let mut n = rel;
                    n.push(b'/');
                    let header = entry_header(&n, &meta, EntryType::Directory, 0, None, &xattrs)?;
                    let mut children = view.children(&r)?;
                    children.reverse();
                    self.stack.push(children);
                    Item { header, body: None }
                }
                Kind::Symlink => {
                    let target = view.readlink(&path)?;
                    Item { header: entry_header(&rel, &meta, EntryType::Symlink, 0, Some(target.as_bytes()), &xattrs)?, body: None }
                }
                Kind::File => {
                    if meta.nlink > 1 {
                        if let Some(first) = self.links.get(&(meta.dev, meta.ino)) {
                            let header = entry_header(&rel, &meta, EntryType::Link, 0, Some(&first.clone()), &xattrs)?;
                            return Ok(Some(Item { header, body: None }));
                        }
                        self.links.insert((meta.dev, meta.ino), rel.clone());
                    }
                    let header = entry_header(&rel, &meta, EntryType::Regular, meta.size, None, &xattrs)?;
                    let body = if meta.size > 0 {
                        Some((File::from(view.open_found(&r, OFlags::RDONLY)?), meta.size))
                    } else {
                        None
                    };
                    Item { header, body }
                }
                Kind::Fifo => Item { header: entry_header(&rel, &meta, EntryType::Fifo, 0, None, &xattrs)?, body: None },
                Kind::Char => Item { header: entry_header(&rel, &meta, EntryType::Char, 0, None, &xattrs)?, body: None },
                Kind::Block => Item { header: entry_header(&rel, &meta, EntryType::Block, 0, None, &xattrs)?, body: None },
                Kind::Socket => continue,
            };
            return Ok(Some(item));
        }
    }
}

fn sorted_names(fd: &OwnedFd) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = sys::read_dir(fd.as_fd())?.into_iter().map(|(n, _)| n).collect();
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

/// The header of a `.wh.` marker: an empty regular file, mode 0600, root-owned, time 0.
fn marker_header(name: &[u8]) -> Result<Vec<u8>> {
    entry_header(name, &Meta::synthetic(libc::S_IFREG | 0o600), EntryType::Regular, 0, None, &[])
}
