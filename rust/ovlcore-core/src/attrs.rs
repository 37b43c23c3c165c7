//! How an entry's metadata (type, mode, owner, device numbers) is kept on disk, and read back.
//!
//! A store made by root keeps everything natively, like Docker. A store made by an unprivileged user
//! cannot own files as root, set setuid bits or make devices, so it follows rootless containers/storage and
//! fuse-overlayfs: the real metadata lives in the `user.containers.override_stat` xattr
//! (`UID:GID:MODE:TYPE`), a device is an empty regular file carrying it, and the user's own uid/gid stand
//! for the container's root (as a rootless user namespace maps them).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::Result;
use crate::format::{OPAQUE_XATTR_ROOT, OPAQUE_XATTR_USER, OVERRIDE_XATTR};

/// Whether the store keeps metadata natively (root) or through overrides (rootless).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privilege {
    Root,
    Rootless,
}

impl Privilege {
    /// The privilege of the running process.
    pub fn current() -> Self {
        if rustix::process::geteuid().is_root() {
            Privilege::Root
        } else {
            Privilege::Rootless
        }
    }

    /// The xattr that marks an opaque directory for this kind of store (and of kernel mount).
    pub fn opaque_xattr(self) -> &'static CStr {
        match self {
            Privilege::Root => OPAQUE_XATTR_ROOT,
            Privilege::Rootless => OPAQUE_XATTR_USER,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Privilege::Root => "root",
            Privilege::Rootless => "rootless",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => Kind::File,
        }
    }

    pub fn from_file_type(t: FileType) -> Option<Kind> {
        Some(match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::Unknown => return None,
        })
    }

    pub fn ifmt(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
        }
    }
}

/// What `stat` reports for an entry: the on-disk values with any override applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Meta {
    pub fn from_stat(st: &Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blksize: st.st_blksize as u64,
            blocks: st.st_blocks as u64,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }

    /// Metadata for an entry no file stands for (a `.wh.` marker, a virtual mount point): root's, time 0.
    pub fn synthetic(mode: u32) -> Meta {
        Meta {
            mode,
            ino: 0,
            dev: 0,
            nlink: if Kind::from_mode(mode) == Kind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blksize: 4096,
            blocks: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode)
    }

    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }

    /// The kernel overlayfs whiteout: a character device 0/0.
    pub fn is_whiteout(&self) -> bool {
        self.kind() == Kind::Char && self.rdev == 0
    }

    pub fn attrs(&self) -> Attrs {
        Attrs { kind: self.kind(), perm: self.perm(), uid: self.uid, gid: self.gid, rdev: self.rdev }
    }

    /// Translate the raw on-disk values into what the container sees.
    pub fn logical(mut self, privilege: Privilege, over: Option<Attrs>) -> Meta {
        if let Some(a) = over {
            self.mode = a.kind.ifmt() | a.perm;
            self.uid = a.uid;
            self.gid = a.gid;
            self.rdev = a.rdev;
            if matches!(a.kind, Kind::Char | Kind::Block) {
                self.size = 0;
            }
        } else if privilege == Privilege::Rootless {
            let (uid, gid) = own_ids();
            if self.uid == uid {
                self.uid = 0;
            }
            if self.gid == gid {
                self.gid = 0;
            }
        }
        self
    }
}

/// The process's effective uid/gid: in a rootless store they stand for the container's root.
pub fn own_ids() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

/// The metadata an entry should have, independent of how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

impl Attrs {
    /// `UID:GID:MODE:TYPE` as containers/storage writes it.
    pub fn to_override(self) -> String {
        let kind = match self.kind {
            Kind::File => "file".to_string(),
            Kind::Dir => "dir".to_string(),
            Kind::Symlink => "symlink".to_string(),
            Kind::Fifo => "pipe".to_string(),
            Kind::Socket => "socket".to_string(),
            Kind::Char => format!("char-{}-{}", major(self.rdev), minor(self.rdev)),
            Kind::Block => format!("block-{}-{}", major(self.rdev), minor(self.rdev)),
        };
        format!("{}:{}:{:04o}:{}", self.uid, self.gid, self.perm, kind)
    }

    /// Parse an override; the type is optional (older writers leave it out) and then `fallback` is used.
    pub fn from_override(value: &[u8], fallback: Kind) -> Option<Attrs> {
        let s = std::str::from_utf8(value).ok()?;
        let mut parts = s.trim_end_matches('\0').splitn(4, ':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let perm = u32::from_str_radix(parts.next()?, 8).ok()? & 0o7777;
        let (kind, rdev) = match parts.next() {
            None => (fallback, 0),
            Some(t) => parse_override_type(t)?,
        };
        Some(Attrs { kind, perm, uid, gid, rdev })
    }
}

fn parse_override_type(t: &str) -> Option<(Kind, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (ma, mi) = rest.split_once('-')?;
        Some(makedev(ma.parse().ok()?, mi.parse().ok()?))
    };
    Some(match t {
        "file" => (Kind::File, 0),
        "dir" => (Kind::Dir, 0),
        "symlink" => (Kind::Symlink, 0),
        "pipe" => (Kind::Fifo, 0),
        "socket" => (Kind::Socket, 0),
        _ => {
            if let Some(rest) = t.strip_prefix("char-") {
                (Kind::Char, dev(rest)?)
            } else if let Some(rest) = t.strip_prefix("block-") {
                (Kind::Block, dev(rest)?)
            } else {
                return None;
            }
        }
    })
}

pub fn major(dev: u64) -> u32 {
    rustix::fs::major(dev)
}

pub fn minor(dev: u64) -> u32 {
    rustix::fs::minor(dev)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    rustix::fs::makedev(major, minor)
}

/// How `attrs` is stored by a rootless store: the real mode and whether an override xattr is needed.
/// The real mode always lets the owner read and write (and enter directories), and never carries
/// setuid/setgid/sticky bits; devices become regular files.
pub fn rootless_storage(attrs: &Attrs) -> (u32, bool) {
    let real = match attrs.kind {
        Kind::Dir => (attrs.perm & 0o777) | 0o700,
        Kind::File | Kind::Char | Kind::Block | Kind::Fifo => (attrs.perm & 0o777) | 0o600,
        _ => attrs.perm & 0o777,
    };
    // Devices and FIFOs are regular files on disk: only the override says what they are.
    let needs = attrs.uid != 0
        || attrs.gid != 0
        || real != attrs.perm
        || matches!(attrs.kind, Kind::Char | Kind::Block | Kind::Fifo);
    (real, needs)
}

/// Store `want` on `name` (in `dir`, or through `fd` when given) the way the store keeps metadata:
/// natively for root, through the override xattr (and an always-accessible real mode) rootless.
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
            let (real, needs_override) = rootless_storage(want);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_round_trip() {
        let a = Attrs { kind: Kind::Char, perm: 0o620, uid: 0, gid: 5, rdev: makedev(4, 1) };
        assert_eq!(a.to_override(), "0:5:0620:char-4-1");
        assert_eq!(Attrs::from_override(a.to_override().as_bytes(), Kind::File), Some(a));
        let s = Attrs::from_override(b"0:0:4755", Kind::File).unwrap();
        assert_eq!((s.kind, s.perm), (Kind::File, 0o4755));
        assert!(Attrs::from_override(b"x:0:0755:file", Kind::File).is_none());
    }

    #[test]
    fn rootless_keeps_owner_access() {
        let a = Attrs { kind: Kind::File, perm: 0o4755, uid: 0, gid: 0, rdev: 0 };
        assert_eq!(rootless_storage(&a), (0o755, true));
        let b = Attrs { kind: Kind::Dir, perm: 0o755, uid: 0, gid: 0, rdev: 0 };
        assert_eq!(rootless_storage(&b), (0o755, false));
        let c = Attrs { kind: Kind::File, perm: 0o644, uid: 1000, gid: 0, rdev: 0 };
        assert_eq!(rootless_storage(&c), (0o644, true));
    }
}
