//! Disk usage of a directory tree, counted the way Docker reports layer and container sizes.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::Path;

use crate::attrs::{Kind, Meta};
use crate::error::Result;
use crate::sys;

/// Bytes of content below a directory: regular files (each inode once) and symlink targets, like the
/// sizes `docker ps -s` and `docker system df` show.
pub fn dir_usage(path: &Path) -> Result<u64> {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![sys::open_dir(path)?];
    while let Some(dir) = stack.pop() {
        for (name, _) in sys::read_dir(dir.as_fd())? {
            let m = Meta::from_stat(&sys::lstat_at(dir.as_fd(), &name)?);
            match m.kind() {
                Kind::Dir => stack.push(rustix::fs::openat(
                    &dir,
                    &name,
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?),
                Kind::File if seen.insert(m.ino) => total += m.size,
                Kind::Symlink => total += m.size,
                _ => {}
            }
        }
    }
    Ok(total)
}
