//! A FUSE file system over the union view: every operation is one of the view's own (resolve, read,
//! copy-up, whiteouts, opaque directories, rename, links, xattrs), so what a program sees through the
//! mount is what `ContainerFS` sees and the writable layer stays a kernel-format layer.
//!
//! The view is path based; [`inodes`] maps the kernel's inode numbers to paths. Open files and
//! directories live in handle tables (a file unlinked while open keeps working, with `nlink` 0).

mod inodes;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::{HashMap, HashSet};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use rustix::fs::{OFlags, Timespec, Timestamps};

use crate::attrs::{Attrs, Kind, Meta, Privilege};
use crate::error::{Error, Result};
use crate::format::OVERRIDE_XATTR;
use crate::union::{Dir, Found, ReadAhead, Resolved, View};
use inodes::{Inodes, ROOT};

const NAME_MAX: usize = 255;
/// Image layers never change: the kernel may keep what it learnt about their entries.
const LOWER_TTL: Duration = Duration::from_secs(3600);
/// Entries of the writable layer change only through this mount, but stay modest for safety.
const UPPER_TTL: Duration = Duration::from_secs(1);

/// How to serve a mount.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// Shown as the mount's source (`/proc/mounts`).
    pub fsname: String,
    /// The type after `fuse.` in `/proc/mounts`.
    pub subtype: String,
    /// Let every user in (as root: the kernel then checks permissions from the attributes shown).
    pub allow_other: bool,
    /// Worker threads (each with its own cloned `/dev/fuse` descriptor).
    pub threads: usize,
    /// Let the kernel read and write plain files itself where it can (root, Linux 6.9+). An image
    /// layer's file open for reading is then not opened for writing (`ETXTBSY`) until it is closed.
    pub passthrough: bool,
    /// Otherwise let the kernel keep written pages and send them in large writes.
    pub writeback: bool,
    /// Show the stored root (uid, gid 0) as this host user and group, and store them as root: for
    /// programs in a user namespace that maps its root to that user (a rootless OCI runtime).
    pub root_as: Option<(u32, u32)>,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            fsname: "ovlcore".into(),
            subtype: "ovlcore".into(),
            allow_other: false,
            threads: 4,
            passthrough: true,
            writeback: true,
            root_as: None,
        }
    }
}

/// Mount the view `make_view` builds at `mountpoint` and serve it until it is unmounted (`umount`,
/// `fusermount3 -u`). `ready` runs once the mount is live.
///
/// As root the mount is made first and the view (every layer directory it opens) is built in a mount
/// namespace of the daemon's own: the layers' file systems are then never busy on the host because of
/// the daemon (whoever unmounts the FUSE mount may unmount a layer's file system right after, before
/// this process has exited).
pub fn fuse_serve(make_view: impl Fn() -> Result<View>, mountpoint: &Path, opts: &FuseOptions, ready: impl FnOnce()) -> Result<()> {
    let root_daemon = rustix::process::geteuid().is_root();
    let at = |e: std::io::Error| Error::from(e).at(mountpoint.as_os_str());
    let mut config = Config::default();
    config.acl = if opts.allow_other || root_daemon { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    if root_daemon {
        // Fail before mounting: a mount left behind by a failure here could not be reached again.
        drop(make_view()?);
        if let Some(fd) = mount_isolated(mountpoint, opts)? {
            let view = Arc::new(make_view()?);
            let notifier = Arc::new(std::sync::OnceLock::new());
            let session = fuser::Session::from_fd(Fuse::new(view, true, opts, notifier.clone()), fd, config.acl, config.clone()).map_err(at)?;
            let _ = notifier.set(session.notifier());
            ready();
            return session.run().map_err(at);
        }
    }
    let view = Arc::new(make_view()?);
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        // mount(2) (as root) takes the subtype as a kernel option; fusermount3 as its own.
        if root_daemon { MountOption::CUSTOM(format!("subtype={}", opts.subtype)) } else { MountOption::Subtype(opts.subtype.clone()) },
        if view.upper.is_some() { MountOption::RW } else { MountOption::RO },
    ];
    // As root the kernel checks permissions against the owners and modes shown; unprivileged, the
    // user is the container's root (uid 0 in the mount) and may do what the layer's files allow.
    if root_daemon {
        mount_options.push(MountOption::DefaultPermissions);
        mount_options.push(MountOption::Dev);
        mount_options.push(MountOption::Suid);
    }
    config.mount_options = mount_options;
    let notifier = Arc::new(std::sync::OnceLock::new());
    let session = fuser::Session::new(Fuse::new(view, root_daemon, opts, notifier.clone()), mountpoint, &config).map_err(at)?;
    let _ = notifier.set(session.notifier());
    ready();
    session.run().map_err(at)
}

/// As root: mount FUSE at `mountpoint` with mount(2), then move this process into a mount namespace of
/// its own where that mount is detached (so only the host's copy keeps the connection alive, and its
/// unmount ends the session). Returns the `/dev/fuse` descriptor of the mount.
fn mount_isolated(mountpoint: &Path, opts: &FuseOptions) -> Result<Option<OwnedFd>> {
    use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
    use std::os::fd::AsRawFd;
    let at = |e: rustix::io::Errno| Error::from(e).at(mountpoint.as_os_str());
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty()).map_err(|e| Error::from(e).at("/dev/fuse"))?;
    let st = rustix::fs::stat(mountpoint).map_err(at)?;
    let data = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0,allow_other,default_permissions",
        fd.as_raw_fd(),
        st.st_mode & libc::S_IFMT
    );
    let data = CString::new(data).expect("no NUL");
    let fstype = format!("fuse.{}", opts.subtype);
    rustix::mount::mount(opts.fsname.as_str(), mountpoint, fstype.as_str(), MountFlags::empty(), data.as_c_str()).map_err(at)?;
    // SAFETY: only the mount namespace (and with it this thread's fs context) is unshared, before any
    // other thread of the session exists; no descriptor table changes.
    let isolated = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .and_then(|_| rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC))
        .and_then(|_| rustix::mount::unmount(mountpoint, UnmountFlags::DETACH));
    // Without a namespace the mount is served from here all the same (the layers then stay busy
    // until this process exits).
    let _ = isolated;
    Ok(Some(fd))
}

/// A directory's entries as of a pass's first `readdir`, after `.` and `..`, in name order: a pass
/// continued from a listing taken again (after a concurrent reader's pass ended) stays in step.
struct Listing {
    path: PathBuf,
    entries: Vec<(OsString, Kind)>,
}

impl Listing {
    fn len(&self) -> usize {
        self.entries.len() + 2
    }

    /// `f(index, name, kind, path)` for the entries from `offset` on, until it answers true (full).
    fn each(&self, offset: u64, mut f: impl FnMut(usize, &OsStr, Kind, &Path) -> bool) {
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        let mut path = self.path.clone();
        for i in offset as usize..self.len() {
            let full = match i {
                0 => f(i, OsStr::new("."), Kind::Dir, &self.path),
                1 => f(i, OsStr::new(".."), Kind::Dir, parent),
                _ => {
                    let (name, kind) = &self.entries[i - 2];
                    path.push(name);
                    let full = f(i, name, *kind, &path);
                    path.pop();
                    full
                }
            };
            if full {
                break;
            }
        }
    }
}

/// An open file. Directories have no handles: `opendir` answers `ENOSYS`, so the kernel opens and
/// releases them without asking (two requests fewer per directory) and keeps their listings cached.
struct Handle {
    ino: u64,
    file: Arc<File>,
    /// The kernel reads and writes this file itself (passthrough); held until release.
    backing: Option<Arc<BackingId>>,
}

struct Fuse {
    view: Arc<View>,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// The daemon runs as root: new entries take the caller's owner.
    root_daemon: bool,
    /// Entered directories by inode, valid while `generation` is unchanged: lookups, `getattr` and
    /// listings then cost one step instead of a walk from the root. Every change bumps the generation
    /// (a copy-up or an opaque marker changes what a directory is made of).
    dirs: Mutex<HashMap<u64, (u64, PathBuf, Dir)>>,
    generation: AtomicU64,
    /// Listings being read, by directory inode: taken afresh at offset 0, served from here for the
    /// further offsets of the same pass (a large directory takes several requests), dropped at its end.
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Directories removed while the kernel still holds them (an open descriptor): their last
    /// attributes, with no links, until the kernel forgets them.
    removed_dirs: Mutex<HashMap<u64, Meta>>,
    /// Set once the session exists: tells the kernel to drop attributes it caches.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// How the kernel does the I/O of open files, chosen at `init` from what is `wanted`
    /// (passthrough, writeback) and what the kernel offers.
    io: IoMode,
    wanted: (bool, bool),
    root_as: Option<(u32, u32)>,
    /// Inodes whose attributes the kernel holds from an image layer (with its long timeout).
    lower_served: Mutex<HashSet<u64>>,
    /// How the open inodes' I/O is done (with passthrough only).
    backings: Mutex<HashMap<u64, InodeIo>>,
    /// Reads the image layers' directories ahead of a walk.
    read_ahead: Option<ReadAhead>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoMode {
    /// Every read and write comes to the daemon; the kernel writes through its page cache.
    Cached,
    /// The kernel keeps written pages and sends them later, in large writes (not with passthrough).
    Writeback,
    /// As root: the kernel reads and writes the backing files directly.
    Passthrough,
}

/// How the kernel does the I/O of an open inode: one way, and one backing file, per inode.
enum InodeIo {
    /// Through the daemon, for this many open files.
    Daemon(usize),
    /// The kernel reads and writes the backing file itself.
    Passthrough(Backing),
}

/// Files smaller than this are read through the daemon: registering a backing file costs about what
/// a read of up to a megabyte through the daemon does.
const PASSTHROUGH_MIN: u64 = 1 << 20;

/// The file the kernel reads and writes for one inode, while any of its open files is open.
struct Backing {
    id: std::sync::Weak<BackingId>,
    /// (st_dev, st_ino) of the backing file.
    key: inodes::Key,
    /// It is an image layer's file: the inode may not be written (that would need another backing
    /// file, the copy-up) until its readers close it.
    lower: bool,
}

fn errno_of(e: &Error) -> Errno {
    Errno::from_i32(e.raw_errno().unwrap_or(libc::EIO))
}

fn rerr(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn to_time(t: (i64, u32)) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + Duration::from_nanos(t.1 as u64)
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
    }
}

/// The kernel's `new_encode_dev`, which FUSE attributes carry.
fn encode_dev(dev: u64) -> u32 {
    let (ma, mi) = (crate::attrs::major(dev), crate::attrs::minor(dev));
    (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)
}

fn decode_dev(dev: u32) -> u64 {
    let ma = (dev & 0xfff00) >> 8;
    let mi = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    crate::attrs::makedev(ma, mi)
}

fn attr_of(ino: u64, m: &Meta) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size,
        blocks: m.blocks,
        atime: to_time(m.atime),
        mtime: to_time(m.mtime),
        ctime: to_time(m.ctime),
        crtime: to_time(m.ctime),
        kind: file_type(m.kind()),
        perm: (m.mode & 0o7777) as u16,
        nlink: m.nlink as u32,
        uid: m.uid,
        gid: m.gid,
        rdev: encode_dev(m.rdev),
        blksize: m.blksize as u32,
        flags: 0,
    }
}

/// The backing file a name shares with other names (a hard-linked non-directory), if any.
fn link_key(m: &Meta) -> Option<inodes::Key> {
    (m.kind() != Kind::Dir && m.nlink > 1).then_some((m.dev, m.ino))
}

fn check_name(name: &OsStr) -> std::result::Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(Errno::from_i32(libc::ENAMETOOLONG))
    } else {
        Ok(())
    }
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT as _ },
        Some(TimeOrNow::Now) => Timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW as _ },
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as _ },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                Timespec { tv_sec: s, tv_nsec: n as _ }
            }
        },
    }
}

impl Fuse {
    /// The attributes the kernel is given (owners as `root_as` maps them).
    fn attr(&self, ino: u64, m: &Meta) -> FileAttr {
        let mut a = attr_of(ino, m);
        if let Some((uid, gid)) = self.root_as {
            if a.uid == 0 {
                a.uid = uid;
            }
            if a.gid == 0 {
                a.gid = gid;
            }
        }
        a
    }

    /// The owner to store for one the kernel sends (`root_as` back to root).
    fn stored_owner(&self, uid: Option<u32>, gid: Option<u32>) -> (Option<u32>, Option<u32>) {
        match self.root_as {
            Some((ru, rg)) => (uid.map(|u| if u == ru { 0 } else { u }), gid.map(|g| if g == rg { 0 } else { g })),
            None => (uid, gid),
        }
    }

    fn new(view: Arc<View>, root_daemon: bool, opts: &FuseOptions, notifier: Arc<std::sync::OnceLock<fuser::Notifier>>) -> Fuse {
        let read_ahead = if view.lower.is_empty() { None } else { ReadAhead::start(view.lower.clone()).ok() };
        Fuse {
            notifier,
            view,
            inodes: Inodes::new(),
            handles: Mutex::new(HashMap::default()),
            next_fh: AtomicU64::new(1),
            root_daemon,
            dirs: Mutex::new(HashMap::default()),
            listings: Mutex::new(HashMap::default()),
            removed_dirs: Mutex::new(HashMap::default()),
            generation: AtomicU64::new(0),
            io: IoMode::Cached,
            wanted: (opts.passthrough && root_daemon, opts.writeback),
            root_as: opts.root_as,
            backings: Mutex::new(HashMap::default()),
            lower_served: Mutex::new(HashSet::default()),
            read_ahead,
        }
    }

    /// Before a change to the data of inode `ino` (a write open, a truncate): refused while an image
    /// layer's file serves it by passthrough, as the copy-up would need a second backing file for one
    /// inode, which the kernel does not take (it answers writes to a running program the same way).
    fn check_writable(&self, ino: u64) -> std::result::Result<(), Errno> {
        match self.backings.lock().unwrap().get(&ino) {
            Some(InodeIo::Passthrough(b)) if b.lower && b.id.strong_count() > 0 => Err(Errno::from_i32(libc::ETXTBSY)),
            _ => Ok(()),
        }
    }

    /// The backing file for a new open of `ino` on `file`: the one its open files already use, else
    /// a new one registered with `register`. `None`: served by the daemon (passthrough is off, the
    /// file is small, the inode's open files are served so, or the kernel refused the file, e.g. a
    /// layer on a stacked file system).
    fn backing_for(
        &self,
        ino: u64,
        file: &File,
        lower: bool,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> std::result::Result<Option<Arc<BackingId>>, Errno> {
        if self.io != IoMode::Passthrough {
            return Ok(None);
        }
        let st = rustix::fs::fstat(file).map_err(rerr)?;
        let key = (st.st_dev, st.st_ino);
        let mut backings = self.backings.lock().unwrap();
        match backings.get_mut(&ino) {
            Some(InodeIo::Daemon(n)) => {
                *n += 1;
                return Ok(None);
            }
            Some(InodeIo::Passthrough(b)) => {
                if let Some(id) = b.id.upgrade() {
                    // A reader after a metadata-only copy-up reads the layer's file on: the same data.
                    return if b.key == key || b.lower { Ok(Some(id)) } else { Err(Errno::from_i32(libc::ETXTBSY)) };
                }
            }
            None => {}
        }
        let id = if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size as u64 >= PASSTHROUGH_MIN { register(file).ok() } else { None };
        match id {
            Some(id) => {
                let id = Arc::new(id);
                backings.insert(ino, InodeIo::Passthrough(Backing { id: Arc::downgrade(&id), key, lower }));
                Ok(Some(id))
            }
            None => {
                backings.insert(ino, InodeIo::Daemon(1));
                Ok(None)
            }
        }
    }

    /// Forget a released handle; its inode's I/O mode (and backing file) goes with its last open file.
    fn release_handle(&self, fh: u64) {
        let removed = self.handles.lock().unwrap().remove(&fh);
        let Some(Handle { ino, backing, .. }) = removed else { return };
        if self.io != IoMode::Passthrough {
            return;
        }
        drop(backing);
        let mut backings = self.backings.lock().unwrap();
        let last = match backings.get_mut(&ino) {
            Some(InodeIo::Daemon(n)) => {
                *n -= 1;
                *n == 0
            }
            Some(InodeIo::Passthrough(b)) => b.id.strong_count() == 0,
            None => false,
        };
        if last {
            backings.remove(&ino);
        }
    }

    /// Something changed at inode `ino` (an entry of a directory `ino`, or the file `ino`): every cached
    /// directory is looked up again, and the kernel drops what it holds of `ino` and its parents.
    fn changed(&self, ino: u64) {
        self.changed_in(ino, false);
    }

    /// Whether directory `dir` is (entered and) already in the writable layer, so that a change
    /// of an entry inside it that is not a directory copies no directory up: every entered directory
    /// then stays what it is made of. Asked before the change.
    fn settled(&self, dir: u64) -> bool {
        // Entered now if it is not cached: the change resolves its entry through it anyway.
        if self.dir_of(dir).is_err() {
            return false;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        matches!(self.dirs.lock().unwrap().get(&dir),
            Some((g, _, Dir::Union { upper: Some(_), .. } | Dir::Mount { .. })) if *g == generation)
    }

    /// Whether the parent directory of the file `ino` is `settled`.
    fn settled_parent(&self, ino: u64) -> bool {
        let parent = self.inodes.path(ino).and_then(|p| p.parent().and_then(|d| self.inodes.known(d)));
        parent.is_some_and(|d| self.settled(d))
    }

    /// Something changed at inode `ino` that is not a directory's make-up when `settled` held.
    fn changed_in(&self, ino: u64, settled: bool) {
        if !settled {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.stale_up(ino);
    }

    /// The file `ino` itself changed (data, metadata, xattrs): its copy-up may also have parted the
    /// names of a hard-linked file.
    fn changed_file(&self, ino: u64) {
        self.changed_file_in(ino, false);
    }

    fn changed_file_in(&self, ino: u64, settled: bool) {
        self.changed_in(ino, settled);
        self.regroup(ino);
    }

    fn reply_entry(&self, res: R<PathBuf>, reply: ReplyEntry) {
        match res {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    /// A change at inode `ino` may have copied it and its parent directories up (new attributes,
    /// whatever timeout the kernel was given for them, even an image layer's long one): the kernel
    /// drops the attributes it holds for all of them. Only attributes (offset -1): no page or
    /// directory lock is taken, so this is safe inside a request on the same inodes.
    /// Entries whose attributes were last served from an image layer are the only ones a copy-up
    /// changes (the kernel itself drops a directory's attributes when its entries change).
    fn stale_up(&self, ino: u64) {
        let Some(n) = self.notifier.get() else { return };
        let Some(mut p) = self.inodes.path(ino) else { return };
        let mut lower = self.lower_served.lock().unwrap();
        loop {
            if let Some(i) = self.inodes.known(&p) {
                if lower.remove(&i) {
                    let _ = n.inval_inode(INodeNo(i), -1, 0);
                }
            }
            if !p.pop() {
                break;
            }
        }
    }

    /// The entered directory of a directory inode (cached while nothing changes).
    fn dir_of(&self, ino: u64) -> std::result::Result<(PathBuf, Dir), Errno> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((g, p, d)) = self.dirs.lock().unwrap().get(&ino) {
            if *g == generation {
                return Ok((p.clone(), d.clone()));
            }
        }
        let path = self.inodes.path(ino).ok_or(Errno::ENOENT)?;
        let r = self.view.resolve(&path, false).map_err(|e| errno_of(&e))?;
        let d = self.view.enter(&r).map_err(|e| errno_of(&e))?;
        let mut dirs = self.dirs.lock().unwrap();
        if dirs.len() > 100_000 {
            dirs.clear();
        }
        dirs.insert(ino, (generation, r.path.clone(), d.clone()));
        Ok((r.path, d))
    }

    /// `name` in the directory inode `parent`, resolved (not following a final symlink).
    fn resolve_in(&self, parent: u64, name: &OsStr) -> std::result::Result<Resolved, Errno> {
        let (dir_path, dir) = self.dir_of(parent)?;
        self.view.resolve_child(&dir, &dir_path, name).map_err(|e| errno_of(&e))
    }

    /// An existing path, resolved through its parent's cached directory when possible.
    fn resolve_path(&self, path: &Path) -> std::result::Result<Resolved, Errno> {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let pino = self.inodes.ino(parent);
                self.resolve_in(pino, name)
            }
            _ => self.view.resolve(path, false).map_err(|e| errno_of(&e)),
        }
    }

    fn path(&self, ino: INodeNo) -> std::result::Result<PathBuf, Errno> {
        self.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> std::result::Result<PathBuf, Errno> {
        check_name(name)?;
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(Errno::from_i32(libc::EINVAL));
        }
        Ok(self.path(parent)?.join(name))
    }

    fn ttl(&self, found: &Found) -> Duration {
        match found {
            Found::Lower { .. } => LOWER_TTL,
            _ if self.view.upper.is_none() => LOWER_TTL,
            _ => UPPER_TTL,
        }
    }

    /// Metadata and cache lifetime of the entry at `path` (not following a final symlink).
    fn stat_path(&self, path: &Path) -> std::result::Result<(Meta, Duration), Errno> {
        self.stat_resolved(self.resolve_path(path)?)
    }

    /// Metadata and cache lifetime of `name` in an entered directory (a listing's entries).
    fn stat_in(&self, (dir_path, dir): &(PathBuf, Dir), name: &OsStr) -> std::result::Result<(Meta, Duration), Errno> {
        self.stat_resolved(self.view.resolve_child(dir, dir_path, name).map_err(|e| errno_of(&e))?)
    }

    fn stat_resolved(&self, r: Resolved) -> std::result::Result<(Meta, Duration), Errno> {
        if !r.found.exists() {
            return Err(Errno::ENOENT);
        }
        let m = self.view.meta(&r).map_err(|e| errno_of(&e))?;
        Ok((m, self.ttl(&r.found)))
    }

    fn entry(&self, path: &Path, reply: ReplyEntry) {
        match self.stat_path(path) {
            Ok((m, ttl)) => {
                let ino = self.inodes.ino_keyed(path, link_key(&m));
                reply.entry(&self.entry_ttl(ino, &m, ttl), &self.attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    /// Metadata from an open descriptor (for a file that may have lost its name).
    fn stat_fd(&self, ino: u64, file: &File) -> std::result::Result<Meta, Errno> {
        let raw = Meta::from_stat(&rustix::fs::fstat(file).map_err(rerr)?);
        let over = if self.view.privilege == Privilege::Rootless {
            let mut buf = vec![0u8; 256];
            match rustix::fs::fgetxattr(file, OVERRIDE_XATTR, &mut buf) {
                Ok(n) => Attrs::from_override(&buf[..n], raw.kind()),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut m = raw.logical(self.view.privilege, over);
        if self.inodes.unlinked(ino) {
            m.nlink = 0;
        }
        Ok(m)
    }

    fn file(&self, fh: FileHandle) -> std::result::Result<Arc<File>, Errno> {
        self.handles.lock().unwrap().get(&fh.0).map(|h| h.file.clone()).ok_or(Errno::from_i32(libc::EBADF))
    }

    fn any_open(&self, ino: u64) -> Option<Arc<File>> {
        self.handles.lock().unwrap().values().find(|h| h.ino == ino).map(|h| h.file.clone())
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    fn getattr_ino(&self, ino: u64, fh: Option<FileHandle>) -> std::result::Result<(FileAttr, Duration), Errno> {
        if let Some(fh) = fh {
            if let Ok(file) = self.file(fh) {
                return Ok((self.attr(ino, &self.stat_fd(ino, &file)?), UPPER_TTL));
            }
        }
        match self.inodes.path(ino) {
            Some(p) => {
                let (m, ttl) = self.stat_path(&p)?;
                Ok((self.attr(ino, &m), self.entry_ttl(ino, &m, ttl)))
            }
            None => match self.any_open(ino) {
                Some(f) => Ok((self.attr(ino, &self.stat_fd(ino, &f)?), UPPER_TTL)),
                None => match self.removed_dirs.lock().unwrap().get(&ino) {
                    Some(m) => Ok((self.attr(ino, m), UPPER_TTL)),
                    None => Err(Errno::ENOENT),
                },
            },
        }
    }

    /// As root, a new entry belongs to the caller (and to a setgid parent's group), as on any file system.
    fn own(&self, req: &Request, path: &Path) -> std::result::Result<(), Errno> {
        if !self.root_daemon || self.view.privilege != Privilege::Root || (req.uid() == 0 && req.gid() == 0) {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let pm = self.view.stat(parent, false).map_err(|e| errno_of(&e))?;
        let gid = if pm.mode & libc::S_ISGID != 0 { pm.gid } else { req.gid() };
        self.view.chown(path, Some(req.uid()), Some(gid), false).map_err(|e| errno_of(&e))
    }

    /// Open flags for the writable layer's file: with the writeback cache the kernel also reads
    /// what it writes (whole pages) and keeps the file position of appends itself.
    fn write_flags(&self, flags: OFlags) -> OFlags {
        if self.io != IoMode::Writeback {
            return flags;
        }
        let flags = flags - OFlags::APPEND;
        if flags.contains(OFlags::WRONLY) { (flags - OFlags::WRONLY) | OFlags::RDWR } else { flags }
    }

    fn open_file(
        &self,
        ino: INodeNo,
        flags: i32,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> std::result::Result<(u64, FopenFlags, Option<Arc<BackingId>>), Errno> {
        let path = self.path(ino)?;
        let oflags = OFlags::from_bits_retain(flags as u32) - OFlags::CREATE - OFlags::EXCL - OFlags::NOCTTY;
        let acc = flags & libc::O_ACCMODE;
        let (fd, lower): (OwnedFd, bool) = if acc == libc::O_RDONLY && flags & libc::O_TRUNC == 0 {
            let r = self.resolve_path(&path)?.require().map_err(|e| errno_of(&e))?;
            let lower = matches!(r.found, Found::Lower { .. });
            let f = self.view.open_found(&r, oflags - OFlags::NOFOLLOW).map_err(|e| errno_of(&e))?;
            (f, lower)
        } else {
            self.check_writable(ino.0)?;
            let settled = self.settled_parent(ino.0);
            let r = self.resolve_path(&path)?;
            let mut fd = self.view.open_write_resolved(r.clone(), self.write_flags(oflags) | OFlags::NOFOLLOW, 0);
            if matches!(fd, Err(ref e) if e.raw_errno() == Some(libc::EACCES)) && self.io == IoMode::Writeback {
                // A write-only file: the kernel then writes whole pages only.
                fd = self.view.open_write_resolved(r, (oflags - OFlags::APPEND) | OFlags::NOFOLLOW, 0);
            }
            self.changed_file_in(ino.0, settled);
            (fd.map_err(|e| errno_of(&e))?, false)
        };
        let file = File::from(fd);
        let backing = self.backing_for(ino.0, &file, lower, register)?;
        let fh = self.add_handle(Handle { ino: ino.0, file: Arc::new(file), backing: backing.clone() });
        // Page-cache flags mean nothing to the kernel for a passthrough file (it refuses them).
        let keep = lower && backing.is_none();
        Ok((fh, if keep { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() }, backing))
    }

    fn list(&self, ino: INodeNo) -> std::result::Result<Listing, Errno> {
        let (path, dir) = self.dir_of(ino.0)?;
        if let (Some(ahead), Dir::Union { lower: Some(node), .. }) = (&self.read_ahead, &dir) {
            ahead.listed(node);
        }
        let mut entries = self.view.list_dir(&dir, &path).map_err(|e| errno_of(&e))?;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Listing { path, entries })
    }

    /// After a change that may have copied up one name of a hard-linked inode: names no longer on the
    /// first name's file (the copy-up broke the link, as on the kernel's overlay) leave the inode, so
    /// they keep showing their own content and count.
    fn regroup(&self, ino: u64) {
        let names = self.inodes.names(ino);
        if names.len() < 2 {
            return;
        }
        let backing = |p: &Path| self.stat_path(p).ok().map(|(m, _)| (m.dev, m.ino));
        let Some(first) = backing(&names[0]) else { return };
        let apart: Vec<PathBuf> = names[1..].iter().filter(|p| backing(p) != Some(first)).cloned().collect();
        if !apart.is_empty() {
            self.inodes.split(ino, first, &apart);
        }
    }

    /// How long the kernel may keep an entry: not at all for a hard-linked file (a copy-up of one name
    /// may split the names apart, which the kernel must see on its next lookup; counts change through
    /// any name).
    fn entry_ttl(&self, ino: u64, m: &Meta, ttl: Duration) -> Duration {
        if link_key(m).is_some() || self.inodes.shared(ino) {
            return Duration::ZERO;
        }
        if ttl == LOWER_TTL && self.view.upper.is_some() {
            self.lower_served.lock().unwrap().insert(ino);
        }
        ttl
    }

    /// The number of a listed entry: a non-directory seen for the first time may be another name of a
    /// known file, which only its metadata tells.
    fn listed_ino(&self, kind: Kind, path: &Path) -> u64 {
        if kind == Kind::Dir {
            return self.inodes.ino(path);
        }
        if let Some(i) = self.inodes.known(path) {
            return i;
        }
        let key = self.stat_path(path).ok().and_then(|(m, _)| link_key(&m));
        self.inodes.ino_keyed(path, key)
    }

    /// The listing of a directory for a `readdir` at `offset`; `None` once the pass is over.
    fn listing(&self, ino: u64, offset: u64) -> std::result::Result<Option<Arc<Listing>>, Errno> {
        let kept = if offset == 0 { None } else { self.listings.lock().unwrap().get(&ino).cloned() };
        let listing = match kept {
            Some(l) => l,
            // A directory removed meanwhile lists as empty (as on other file systems).
            None => match self.list(INodeNo(ino)) {
                Ok(l) => Arc::new(l),
                Err(e) if e == Errno::ENOENT => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let mut listings = self.listings.lock().unwrap();
        if offset as usize >= listing.len() {
            listings.remove(&ino);
            return Ok(None);
        }
        if offset == 0 {
            // Passes a reader abandoned stay behind: bound them.
            if listings.len() > 10_000 {
                listings.clear();
            }
            listings.insert(ino, listing.clone());
        }
        Ok(Some(listing))
    }
}

type R<T> = std::result::Result<T, Errno>;

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Only what this adaptor implements; each one only if the kernel offers it. Every listing
        // carries attributes (no READDIRPLUS_AUTO, which lists the rest of a large directory without
        // them, so that statting its entries then costs a LOOKUP each).
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // Passthrough backing files must be on an unstacked file system (a layer on overlayfs is served
        // by the daemon); the mount itself may then be stacked once (a lower layer of an overlay).
        self.io = if self.wanted.0 && config.set_max_stack_depth(1).is_ok() && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            IoMode::Passthrough
        } else if self.wanted.1 && config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE).is_ok() {
            IoMode::Writeback
        } else {
            IoMode::Cached
        };
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.inodes.forget(ino.0);
        self.removed_dirs.lock().unwrap().remove(&ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_ino(ino.0, fh) {
            Ok((a, ttl)) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res: R<()> = (|| {
            let path = self.inodes.path(ino.0);
            let v = &self.view;
            let e = |e: Error| errno_of(&e);
            if let Some(size) = size {
                match (fh.and_then(|h| self.file(h).ok()), &path) {
                    (Some(f), _) if rustix::fs::fcntl_getfl(&f).map(|fl| fl.contains(OFlags::WRONLY) || fl.contains(OFlags::RDWR)).unwrap_or(false) => {
                        rustix::fs::ftruncate(&f, size).map_err(rerr)?
                    }
                    (_, Some(p)) => {
                        self.check_writable(ino.0)?;
                        v.truncate(p, size).map_err(e)?
                    }
                    (_, None) => return Err(Errno::ENOENT),
                }
            }
            let ts = Timestamps { last_access: timespec(atime), last_modification: timespec(mtime) };
            let Some(path) = path else {
                // A file whose last name went, still open: the writeback cache sets its times on close.
                if mode.is_some() || uid.is_some() || gid.is_some() {
                    return Err(Errno::ENOENT);
                }
                return match fh.and_then(|h| self.file(h).ok()).or_else(|| self.any_open(ino.0)) {
                    Some(f) if atime.is_some() || mtime.is_some() => rustix::fs::futimens(&*f, &ts).map_err(rerr),
                    _ => Ok(()),
                };
            };
            if uid.is_some() || gid.is_some() {
                let (uid, gid) = self.stored_owner(uid, gid);
                v.chown(&path, uid, gid, false).map_err(e)?;
            }
            if let Some(mode) = mode {
                v.chmod(&path, mode, false).map_err(e)?;
            }
            if atime.is_some() || mtime.is_some() {
                v.utime(&path, Some(ts), false).map_err(e)?;
            }
            Ok(())
        })();
        self.changed_file(ino.0);
        match res.and_then(|_| self.getattr_ino(ino.0, fh)) {
            Ok((a, ttl)) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|p| self.view.readlink(&p).map_err(|e| errno_of(&e))) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, rdev: u32, reply: ReplyEntry) {
        let settled = self.settled(parent.0);
        let res: R<PathBuf> = (|| {
            let p = self.child(parent, name)?;
            let kind = Kind::from_mode(mode);
            let e = |e: Error| errno_of(&e);
            if kind == Kind::File {
                drop(self.view.open_write(&p, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode & 0o7777).map_err(e)?);
            } else {
                self.view.mknod(&p, kind, mode & 0o7777, decode_dev(rdev)).map_err(e)?;
            }
            self.own(req, &p)?;
            Ok(p)
        })();
        self.changed_in(parent.0, settled);
        self.reply_entry(res, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let res: R<PathBuf> = (|| {
            let p = self.child(parent, name)?;
            self.view.mkdir(&p, mode & 0o7777).map_err(|e| errno_of(&e))?;
            self.own(req, &p)?;
            Ok(p)
        })();
        self.changed(parent.0);
        self.reply_entry(res, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let settled = self.settled(parent.0);
        let res: R<()> = (|| {
            let p = self.child(parent, name)?;
            self.view.remove_resolved(self.resolve_in(parent.0, name)?).map_err(|e| errno_of(&e))?;
            self.inodes.detach_one(&p);
            Ok(())
        })();
        self.changed_in(parent.0, settled);
        reply_empty(res, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res: R<()> = (|| {
            let p = self.child(parent, name)?;
            let r = self.resolve_in(parent.0, name)?;
            let before = self.stat_resolved(r.clone()).ok();
            self.view.rmdir_resolved(r).map_err(|e| errno_of(&e))?;
            if let (Some(ino), Some((mut m, _))) = (self.inodes.known(&p), before) {
                m.nlink = 0;
                self.removed_dirs.lock().unwrap().insert(ino, m);
            }
            self.inodes.detach(&p);
            Ok(())
        })();
        self.changed(parent.0);
        reply_empty(res, reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let settled = self.settled(parent.0);
        let res: R<PathBuf> = (|| {
            let p = self.child(parent, link_name)?;
            self.view.symlink(target.as_os_str(), &p).map_err(|e| errno_of(&e))?;
            self.own(req, &p)?;
            Ok(p)
        })();
        self.changed_in(parent.0, settled);
        self.reply_entry(res, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res: R<()> = (|| {
            let src = self.child(parent, name)?;
            let dst = self.child(newparent, newname)?;
            let bits = flags.bits();
            if bits & !(libc::RENAME_NOREPLACE) != 0 {
                return Err(Errno::from_i32(libc::EINVAL));
            }
            if bits & libc::RENAME_NOREPLACE != 0 {
                let r = self.view.resolve(&dst, false).map_err(|e| errno_of(&e))?;
                if r.found.exists() {
                    return Err(Errno::from_i32(libc::EEXIST));
                }
            }
            self.view.rename(&src, &dst).map_err(|e| errno_of(&e))?;
            self.inodes.rename(&src, &dst);
            Ok(())
        })();
        self.changed(parent.0);
        self.changed(newparent.0);
        reply_empty(res, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        // The source may be copied up (with its parent) for the new name.
        let settled = self.settled(newparent.0) && self.settled_parent(ino.0);
        let res: R<PathBuf> = (|| {
            let src = self.path(ino)?;
            let dst = self.child(newparent, newname)?;
            self.view.link(&src, &dst).map_err(|e| errno_of(&e))?;
            Ok(dst)
        })();
        self.changed_in(newparent.0, settled);
        self.changed_in(ino.0, settled);
        // The new name is the same inode: the kernel updates that inode's attributes (nlink) from
        // this reply, so no name of it shows a stale count.
        match res.and_then(|p| self.stat_path(&p).map(|(m, ttl)| (p, m, ttl))) {
            Ok((p, m, ttl)) => {
                self.inodes.link(ino.0, &p, (m.dev, m.ino));
                self.regroup(ino.0);
                reply.entry(&self.entry_ttl(ino.0, &m, ttl), &self.attr(ino.0, &m), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_file(ino, flags.0, |f| reply.open_backing(f)) {
            Ok((fh, f, Some(id))) => reply.opened_passthrough(FileHandle(fh), f, &id),
            Ok((fh, f, None)) => reply.opened(FileHandle(fh), f),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res: R<Vec<u8>> = (|| {
            let f = self.file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match rustix::io::pread(&*f, &mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(rerr(e)),
                }
            }
            buf.truncate(done);
            Ok(buf)
        })();
        match res {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res: R<usize> = (|| {
            let f = self.file(fh)?;
            let mut done = 0;
            while done < data.len() {
                match rustix::io::pwrite(&*f, &data[done..], offset + done as u64) {
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) if done == 0 => return Err(rerr(e)),
                    Err(_) => break,
                }
            }
            Ok(done)
        })();
        match res {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    /// Nothing to do on close: `ENOSYS` tells the kernel to stop asking (one request less per close).
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_handle(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let res = self.file(fh).and_then(|f| {
            if datasync { rustix::fs::fdatasync(&*f) } else { rustix::fs::fsync(&*f) }.map_err(rerr)
        });
        reply_empty(res, reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel then opens directories itself, with their listings cached (FOPEN_CACHE_DIR,
        // FOPEN_KEEP_CACHE): every change comes through this mount and drops the listing it alters.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.listing(ino.0, offset) {
            Ok(listing) => {
                if let Some(l) = listing {
                    l.each(offset, |i, name, kind, path| {
                        // `.` and `..` carry no useful number here: the kernel fills in its own.
                        let ino = if i < 2 { ROOT } else { self.listed_ino(kind, path) };
                        reply.add(INodeNo(ino), (i + 1) as u64, file_type(kind), name)
                    });
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match self.listing(ino.0, offset) {
            Ok(listing) => {
                if let Some(l) = listing {
                    // Entries are resolved in the directory entered once, not each from its path, and
                    // the image layers' part is read in one pass (unless read ahead already).
                    let dir = self.dir_of(ino.0).ok();
                    if let Some((_, d)) = &dir {
                        self.view.read_ahead(d);
                    }
                    l.each(offset, |i, name, _kind, path| {
                        let stat = match &dir {
                            Some(dir) if i >= 2 => self.stat_in(dir, name),
                            _ => self.stat_path(path),
                        };
                        let Ok((m, ttl)) = stat else { return false };
                        let ino = self.inodes.ino_keyed(path, link_key(&m));
                        let ttl = self.entry_ttl(ino, &m, ttl);
                        reply.add(INodeNo(ino), (i + 1) as u64, name, &ttl, &self.attr(ino, &m), Generation(0))
                    });
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fd = match &self.view.upper {
            Some(u) => rustix::fs::fstatvfs(&*u.fd),
            None => match self.view.lower.layers.first() {
                Some(l) => rustix::fs::fstatvfs(&l.fd),
                None => rustix::fs::statvfs("/"),
            },
        };
        match fd {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                NAME_MAX as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(rerr(e)),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let res: R<()> = (|| {
            let p = self.path(ino)?;
            let attr = CString::new(name.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))?;
            self.view.setxattr(&p, &attr, value, flags, false).map_err(|e| errno_of(&e))
        })();
        self.changed_file(ino.0);
        reply_empty(res, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let res: R<Vec<u8>> = (|| {
            let attr = CString::new(name.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))?;
            let r = self.resolve_path(&self.path(ino)?)?;
            self.view.getxattr_of(r, &attr).map_err(|e| errno_of(&e))?.ok_or(Errno::from_i32(libc::ENODATA))
        })();
        xattr_reply(res, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let res: R<Vec<u8>> = (|| {
            let names = self.view.listxattr_of(self.resolve_path(&self.path(ino)?)?).map_err(|e| errno_of(&e))?;
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        })();
        xattr_reply(res, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res: R<()> = (|| {
            let p = self.path(ino)?;
            let attr = CString::new(name.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))?;
            self.view.removexattr(&p, &attr, false).map_err(|e| errno_of(&e))
        })();
        self.changed_file(ino.0);
        reply_empty(res, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.getattr_ino(ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, flags: i32, reply: ReplyCreate) {
        let settled = self.settled(parent.0);
        let res: R<(PathBuf, u64, Option<Arc<BackingId>>)> = (|| {
            let p = self.child(parent, name)?;
            let oflags = OFlags::from_bits_retain(flags as u32) | OFlags::CREATE | OFlags::NOFOLLOW;
            let oflags = self.write_flags(oflags - OFlags::NOCTTY);
            let fd = self.view.open_write_resolved(self.resolve_in(parent.0, name)?, oflags, mode & 0o7777).map_err(|e| errno_of(&e))?;
            self.own(req, &p)?;
            let ino = self.inodes.ino(&p);
            let file = File::from(fd);
            let backing = self.backing_for(ino, &file, false, |f| reply.open_backing(f))?;
            let fh = self.add_handle(Handle { ino, file: Arc::new(file), backing: backing.clone() });
            Ok((p, fh, backing))
        })();
        self.changed_in(parent.0, settled);
        match res {
            Ok((p, fh, backing)) => match self.stat_path(&p) {
                Ok((m, ttl)) => {
                    let ino = self.inodes.ino(&p);
                    let (attr, fh) = (self.attr(ino, &m), FileHandle(fh));
                    match backing {
                        Some(id) => reply.created_passthrough(&ttl, &attr, Generation(0), fh, FopenFlags::empty(), &id),
                        None => reply.created(&ttl, &attr, Generation(0), fh, FopenFlags::empty()),
                    }
                }
                Err(e) => {
                    self.release_handle(fh);
                    reply.error(e)
                }
            },
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let res = self.file(fh).and_then(|f| {
            rustix::fs::fallocate(&*f, rustix::fs::FallocateFlags::from_bits_retain(mode as u32), offset, length).map_err(rerr)
        });
        reply_empty(res, reply);
    }
}

fn reply_empty(res: R<()>, reply: ReplyEmpty) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn xattr_reply(res: R<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match res {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

