//! OCI layer tar → layer directory in the kernel overlayfs format, hashing the stream in the same pass.
//!
//! The archive is untrusted. Every entry is created relative to a directory opened with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, names are checked before use (absolute, `..`, bad whiteouts),
//! hard links must point at an earlier non-directory entry of this layer, and an entry may not go through a
//! symlink. Whiteouts become char 0/0 devices and `.wh..wh..opq` an opaque xattr (image-spec `layer.md`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use crate::attrs::{self, Attrs, Kind, Meta, Privilege, OVERRIDE_XATTR};
use crate::compress;
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::layer::tarsplit::SplitWriter;
use crate::sys;
use crate::union::Lower;

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
pub const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// Called with the number of input bytes consumed so far; an error (e.g. [`Error::Cancelled`]) stops.
pub type Progress<'a> = &'a mut (dyn FnMut(u64) -> Result<()> + Send);

pub struct ImportOptions<'a> {
    pub privilege: Privilege,
    /// The layers this one is applied on (for dropping whiteouts that could hide nothing).
    pub lower: Option<&'a Lower>,
    /// Refuse archives whose uncompressed size exceeds this many bytes (decompression bombs).
    pub max_size: Option<u64>,
    pub progress: Option<Progress<'a>>,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        ImportOptions { privilege: Privilege::current(), lower: None, max_size: None, progress: None }
    }
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of content (regular files, counted once per inode, and symlink targets).
    pub size: u64,
    pub entries: u64,
    /// Uncompressed bytes read.
    pub tar_size: u64,
}

/// Shared between the reader handed to the tar parser and the importer: the raw bytes that are not file
/// content (for tar-split), recorded while `recording`.
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

/// Counts compressed input for progress reports.
struct Counting<'a, R> {
    inner: R,
    count: u64,
    reported: u64,
    progress: Option<Progress<'a>>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(p) = self.progress.as_mut() {
            if self.count - self.reported >= 1 << 20 || n == 0 {
                self.reported = self.count;
                p(self.count).map_err(io::Error::other)?;
            }
        }
        Ok(n)
    }
}

const CHUNK: usize = 1 << 20;

/// The reading half of an import, on its own thread: decompress, hash, enforce the size limit, and hand
/// the plain bytes over in chunks. Extraction (system calls) and hashing (CPU) then overlap.
fn produce(mut plain: impl Read, limit: Option<u64>, tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) -> Hasher {
    let mut hasher = Hasher::default();
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        let res = loop {
            match plain.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        hasher.update(&buf);
        if let Some(limit) = limit {
            if hasher.count > limit {
                let e = Error::archive(format!("uncompressed size exceeds the limit of {limit} bytes"));
                let _ = tx.send(Err(io::Error::other(e)));
                return hasher;
            }
        }
        let end = buf.is_empty();
        let msg = match res {
            Ok(()) => Ok(buf),
            Err(e) => Err(e),
        };
        let failed = msg.is_err();
        if tx.send(msg).is_err() || end || failed {
            return hasher;
        }
    }
}

/// The consuming half: a `Read` over the chunks the producer sends.
struct Chunks {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other(Error::archive("the layer stream ended early"))),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Import the OCI layer tar read from `input` (plain, gzip or zstd) into the empty directory `dest`.
/// With `split`, the tar-split records for byte-identical re-export are written there.
pub fn import_layer(input: impl Read + Send, dest: &Path, split: Option<File>, opts: ImportOptions<'_>) -> Result<ImportReport> {
    let counting = Counting { inner: input, count: 0, reported: 0, progress: opts.progress };
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let limit = opts.max_size;
    let extracting = Flag::default();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || match compress::decompressed(counting) {
            Ok(plain) => produce(plain, limit, tx),
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e)));
                Hasher::default()
            }
        });
        // The layer must be on disk before it is published: flush it while it is being written, so the
        // final sync only waits for the tail (as a background writeback of the whole tree would).
        scope.spawn(|| flush_while(dest, &extracting));
        let chunks = Chunks { rx, cur: Vec::new(), pos: 0, done: false };
        let extracted = extract(chunks, dest, split, opts.privilege, opts.lower);
        extracting.lower();
        let hasher = producer.join().expect("the reading thread panicked");
        let (size, entries) = extracted?;
        Ok(ImportReport { diff_id: hasher.digest(), size, entries, tar_size: hasher.count })
    })
}

/// Raised while extraction runs; lowering it wakes the flusher at once.
#[derive(Default)]
struct Flag {
    done: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Flag {
    fn lower(&self) {
        *self.done.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

/// Sync the file system holding `dir` every 100 ms until extraction ends.
fn flush_while(dir: &Path, extracting: &Flag) {
    let Ok(fd) = sys::open_dir(dir) else { return };
    let mut done = extracting.done.lock().unwrap();
    while !*done {
        let (guard, timeout) = extracting.changed.wait_timeout(done, std::time::Duration::from_millis(100)).unwrap();
        done = guard;
        if timeout.timed_out() && !*done {
            drop(done);
            let _ = sys::syncfs(fd.as_fd());
            done = extracting.done.lock().unwrap();
        }
    }
}

/// Parse the plain tar stream and build the layer; returns (content size, entries).
fn extract(plain: Chunks, dest: &Path, split: Option<File>, privilege: Privilege, lower: Option<&Lower>) -> Result<(u64, u64)> {
    let tap = Rc::new(RefCell::new(Tap { recording: true, segment: Vec::new() }));
    let reader = TapReader { inner: plain, tap: tap.clone() };
    let mut imp = Importer::new(dest, privilege, lower, split)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        imp.entry(&mut entry, &tap)?;
    }
    // Whatever follows the end-of-archive marker is part of the stream and of its digest.
    let mut rest = archive.into_inner();
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

/// Everything the tar says about one entry, read before its content.
pub(crate) struct Header {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    pub atime: Option<Timespec>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(CString, Vec<u8>)>,
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

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, tap: &Rc<RefCell<Tap>>) -> Result<()> {
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let bad = |why: &str| Error::archive(format!("entry {shown:?}: {why}"));
        let kind = entry.header().entry_type();
        match kind {
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {
                return Ok(());
            }
            EntryType::GNUSparse => return Err(bad("sparse files are not supported")),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            other => return Err(bad(&format!("unsupported entry type {:?}", other.as_byte() as char))),
        }
        let rel = clean_name(&raw_name).map_err(bad)?;
        let header = read_header(entry).map_err(|e| match e {
            Error::InvalidArchive(m) => bad(&m),
            other => other,
        })?;
        self.entries += 1;

        let (parent_rel, name) = match rel.file_name() {
            Some(n) => (rel.parent().unwrap_or(Path::new("")).to_path_buf(), n.to_os_string()),
            None => {
                // The layer's root directory itself ("./").
                if kind != EntryType::Directory {
                    return Err(bad("the root entry must be a directory"));
                }
                self.set_attrs(self.root.as_fd(), OsStr::new("."), &header, Kind::Dir).map_err(|e| e.at(&*shown))?;
                self.dir_times.push((PathBuf::new(), times(&header)));
                return Ok(());
            }
        };
        let name_b = name.as_bytes();
        // aufs metadata (`.wh..wh.plnk/...`, `.wh..wh.aufs`): skipped with everything below it.
        if parent_rel.iter().any(|c| c.as_bytes().starts_with(WHITEOUT_META_PREFIX)) {
            return Ok(());
        }

        // Whiteouts: `.wh..wh..opq` makes the parent opaque, `.wh.NAME` deletes NAME below, other
        // `.wh..wh.*` names are aufs metadata and skipped.
        if name_b.starts_with(WHITEOUT_PREFIX) {
            let parent = self.parent_dir(&parent_rel, &shown)?;
            if name_b == OPAQUE_MARKER {
                sys::set_opaque(parent.as_fd(), OsStr::new("."), self.privilege).map_err(|e| e.at(&*shown))?;
                self.opaque.insert(parent_rel);
                return Ok(());
            }
            if name_b.starts_with(WHITEOUT_META_PREFIX) {
                return Ok(());
            }
            let target = &name_b[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad("invalid whiteout name"));
            }
            let target = OsStr::from_bytes(target);
            match sys::lstat_at(parent.as_fd(), target) {
                // This layer adds the name itself: the whiteout never deletes that, but a directory must
                // then hide what lies below it.
                Ok(st) => {
                    if Meta::from_stat(&st).is_dir() {
                        sys::set_opaque(parent.as_fd(), target, self.privilege).map_err(|e| e.at(&*shown))?;
                        self.opaque.insert(parent_rel.join(target));
                    }
                }
                Err(e) if e.is_errno(libc::ENOENT) => {
                    sys::make_whiteout(parent.as_fd(), target).map_err(|e| e.at(&*shown))?;
                    self.whiteouts.push(parent_rel.join(target));
                }
                Err(e) => return Err(e.at(&*shown)),
            }
            return Ok(());
        }

        let parent = self.parent_dir(&parent_rel, &shown)?;
        let pfd = parent.as_fd();
        // What is already there: a whiteout from this layer is replaced, a directory merges with a
        // directory, anything else is a duplicate. Names are almost always free, so regular files and
        // directories just try to create and look only when the name is taken.
        let mut replaced_whiteout = false;
        let mut take_name = |this: &mut Self| -> Result<()> {
            let old = Meta::from_stat(&sys::lstat_at(pfd, &name).map_err(|e| e.at(&*shown))?);
            if old.is_whiteout() {
                rustix::fs::unlinkat(pfd, &name, AtFlags::empty())?;
                this.whiteouts.retain(|w| w != &rel);
                replaced_whiteout = true;
                Ok(())
            } else if old.is_dir() && kind == EntryType::Directory {
                Ok(())
            } else {
                Err(bad("duplicate entry"))
            }
        };
        if !matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::Directory) {
            match sys::lstat_at(pfd, &name) {
                Ok(_) => take_name(self)?,
                Err(e) if e.is_errno(libc::ENOENT) => {}
                Err(e) => return Err(e.at(&*shown)),
            }
        }

        let created = match kind {
            EntryType::Directory => {
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
                self.set_attrs(pfd, &name, &header, Kind::Dir).map_err(|e| e.at(&*shown))?;
                self.dir_times.push((rel.clone(), times(&header)));
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous => {
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
                let size = entry.size();
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
                        return Err(Error::archive(format!("entry {shown:?}: truncated content")));
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
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| bad("symlink without target"))?.into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(bad("invalid symlink target"));
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&target), pfd, &name).map_err(|e| Error::from(e).at(&*shown))?;
                self.size += target.len() as u64;
                self.set_link_attrs(pfd, &name, &header).map_err(|e| e.at(&*shown))?;
                return Ok(());
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| bad("hard link without target"))?.into_owned();
                let target_rel = clean_name(&target).map_err(|why| bad(&format!("hard link target: {why}")))?;
                let (tparent, tname) = sys::split_parent(&target_rel);
                if tname.is_empty() {
                    return Err(bad("hard link to the root"));
                }
                let tdir = sys::open_dir_beneath(self.root.as_fd(), tparent)
                    .map_err(|_| bad("hard link target is not in this layer"))?;
                let tmeta = sys::lstat_at(tdir.as_fd(), tname)
                    .map(|s| Meta::from_stat(&s))
                    .map_err(|_| bad("hard link target is not in this layer"))?;
                if tmeta.is_dir() || tmeta.is_whiteout() {
                    return Err(bad("hard link to a directory or whiteout"));
                }
                rustix::fs::linkat(tdir.as_fd(), tname, pfd, &name, AtFlags::empty()).map_err(|e| Error::from(e).at(&*shown))?;
                return Ok(());
            }
            EntryType::Fifo if self.privilege == Privilege::Root => {
                rustix::fs::mknodat(pfd, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| Error::from(e).at(&*shown))?;
                self.set_link_attrs(pfd, &name, &header).map_err(|e| e.at(&*shown))?;
                return Ok(());
            }
            // Rootless FIFOs are kept like devices (below): a FIFO cannot carry the override xattr.
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                let (ma, mi) = header.dev;
                let ftype = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ftype == FileType::CharacterDevice && ma == 0 && mi == 0 {
                    return Err(bad("a 0/0 character device is a whiteout in the layer format; use .wh. names"));
                }
                match self.privilege {
                    Privilege::Root => {
                        rustix::fs::mknodat(pfd, &name, ftype, Mode::from_raw_mode(0o600), attrs::makedev(ma, mi))
                            .map_err(|e| Error::from(e).at(&*shown))?;
                        self.set_link_attrs(pfd, &name, &header).map_err(|e| e.at(&*shown))?;
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
            _ => unreachable!("filtered above"),
        };
        let k = match kind {
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            _ => Kind::File,
        };
        self.set_file_attrs(created.as_fd(), pfd, &name, &header, k).map_err(|e| e.at(&*shown))
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

    fn set_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, h: &Header, kind: Kind) -> Result<()> {
        let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::DIRECTORY, Mode::empty())?;
        self.set_file_attrs(fd.as_fd(), dir, name, h, kind)
    }

    /// Owner, mode, xattrs and times of a regular file, device stand-in or directory, through its fd.
    fn set_file_attrs(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr, h: &Header, kind: Kind) -> Result<()> {
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
            rustix::fs::futimens(fd, &times(h))?;
        }
        Ok(())
    }

    /// Owner and mode as the store keeps them (natively, or through the rootless override).
    fn store_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, fd: Option<BorrowedFd<'_>>, want: &Attrs) -> Result<()> {
        apply_attrs(dir, name, fd, want, self.privilege)
    }

    /// Symlinks, FIFOs and (root) devices: no fd to work through; the xattr override cannot be set on them.
    fn set_link_attrs(&self, dir: BorrowedFd<'_>, name: &OsStr, h: &Header) -> Result<()> {
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
        rustix::fs::utimensat(dir, name, &times(h), AtFlags::SYMLINK_NOFOLLOW)?;
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

/// Store `want` on `name` (in `dir`, or through `fd` when given) the way the store keeps metadata.
pub fn apply_attrs(dir: BorrowedFd<'_>, name: &OsStr, fd: Option<BorrowedFd<'_>>, want: &Attrs, privilege: Privilege) -> Result<()> {
    let owned;
    let fd = match fd {
        Some(fd) => fd,
        None => {
            owned = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty())?;
            owned.as_fd()
        }
    };
    match privilege {
        Privilege::Root => {
            // Not assumed from who created it: a setgid parent directory passes its group on.
            let st = rustix::fs::fstat(fd)?;
            if (st.st_uid, st.st_gid) != (want.uid, want.gid) {
                rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(want.uid)), Some(rustix::fs::Gid::from_raw(want.gid)))?;
            }
            // After chown, which clears setuid/setgid.
            rustix::fs::fchmod(fd, Mode::from_raw_mode(want.perm))?;
        }
        Privilege::Rootless => {
            let (real, needs_override) = attrs::rootless_storage(want);
            rustix::fs::fchmod(fd, Mode::from_raw_mode(real))?;
            if needs_override {
                rustix::fs::fsetxattr(fd, OVERRIDE_XATTR, want.to_override().as_bytes(), rustix::fs::XattrFlags::empty())?;
            } else {
                match rustix::fs::fremovexattr(fd, OVERRIDE_XATTR) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

fn times(h: &Header) -> Timestamps {
    Timestamps { last_access: h.atime.unwrap_or(h.mtime), last_modification: h.mtime }
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

/// Check and normalize an archive name: relative, no `..`, `.` and empty components dropped.
pub fn clean_name(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains `..`"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// A PAX time (`-1.5`, `1700000000.123456789`) as a normalized timespec (nanoseconds in 0..1e9).
fn parse_time(v: &str) -> Option<Timespec> {
    let (negative, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = secs.parse().ok()?;
    let mut nanos: i128 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += (b - b'0') as i128 * 10i128.pow(8 - i as u32);
    }
    let mut total = secs * 1_000_000_000 + nanos;
    if negative {
        total = -total;
    }
    let sec = i64::try_from(total.div_euclid(1_000_000_000)).ok()?;
    Some(Timespec { tv_sec: sec, tv_nsec: total.rem_euclid(1_000_000_000) as _ })
}

pub(crate) fn read_header<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Header> {
    let h = entry.header();
    let kind = h.entry_type();
    // Like Go's archive/tar, an empty numeric field reads as 0; anything else must parse.
    let old = h.as_old();
    let field = |v: io::Result<u64>, raw: &[u8], what: &str| match v {
        Ok(n) => Ok(n),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(Error::archive(format!("bad {what} field"))),
    };
    let perm = field(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let uid = field(h.uid(), &old.uid, "uid")?;
    let gid = field(h.gid(), &old.gid, "gid")?;
    let mtime = field(h.mtime(), &old.mtime, "mtime")?;
    let dev = if matches!(kind, EntryType::Char | EntryType::Block) {
        (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let mut out = Header {
        perm,
        uid: u32::try_from(uid).map_err(|_| Error::archive("uid out of range"))?,
        gid: u32::try_from(gid).map_err(|_| Error::archive("gid out of range"))?,
        mtime: Timespec { tv_sec: mtime as i64, tv_nsec: 0 },
        atime: None,
        dev,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext.map_err(|_| Error::archive("malformed PAX header"))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let text = || std::str::from_utf8(value).map_err(|_| Error::archive("malformed PAX value"));
            match key {
                b"mtime" => out.mtime = parse_time(text()?).ok_or_else(|| Error::archive("bad PAX mtime"))?,
                b"atime" => out.atime = Some(parse_time(text()?).ok_or_else(|| Error::archive("bad PAX atime"))?),
                b"size" | b"uid" | b"gid" => {
                    let n: u64 = text()?.parse().map_err(|_| Error::archive("bad PAX number"))?;
                    if key != b"size" {
                        let n = u32::try_from(n).map_err(|_| Error::archive("PAX id out of range"))?;
                        if key == b"uid" {
                            out.uid = n;
                        } else {
                            out.gid = n;
                        }
                    }
                }
                k if k.starts_with(b"GNU.sparse.") => return Err(Error::archive("sparse files are not supported")),
                k if k.starts_with(b"SCHILY.xattr.") => {
                    let name = &k[b"SCHILY.xattr.".len()..];
                    if !attrs::is_internal_xattr(name) && !name.is_empty() {
                        let cname = CString::new(name).map_err(|_| Error::archive("bad xattr name"))?;
                        out.xattrs.push((cname, value.to_vec()));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}
