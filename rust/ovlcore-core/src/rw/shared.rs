//! The inodes a writable layer shares with layers committed from it, and the file listing them.
//!
//! A commit hard-links the container's files into the new layer instead of copying them; each such file
//! must get its own copy before the container changes it. The list lives in a file (the container's
//! `shared-inodes`): little-endian u64 inode numbers, appended by every commit. Any process may commit
//! the container, so readers re-read the file whenever it has grown.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::error::{Context, Error, Result};

const RECORD: usize = 8;

pub struct SharedInodes {
    file: Option<PathBuf>,
    set: RwLock<HashSet<u64>>,
    /// The file's length when last read: a longer file has new records.
    len: AtomicU64,
}

impl SharedInodes {
    /// The list kept in `file` (none yet when it does not exist); `None`: kept in memory only.
    pub fn open(file: Option<&Path>) -> Result<SharedInodes> {
        let s = SharedInodes { file: file.map(Path::to_path_buf), set: RwLock::new(HashSet::new()), len: AtomicU64::new(0) };
        s.refresh()?;
        Ok(s)
    }

    /// Re-read the file if another commit made it grow.
    fn refresh(&self) -> Result<()> {
        let Some(p) = &self.file else { return Ok(()) };
        let len = match std::fs::metadata(p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::from(e).at(p.as_os_str())),
        };
        if len == self.len.load(Ordering::Acquire) {
            return Ok(());
        }
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::from(e).at(p.as_os_str())),
        };
        // A record cut short by a crash mid-append is ignored: its commit never published its layer.
        let mut set = self.set.write().unwrap();
        set.clear();
        set.extend(bytes.chunks_exact(RECORD).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))));
        self.len.store(bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    /// Whether inode `ino` is shared (as of the latest commit by any process).
    pub fn contains(&self, ino: u64) -> Result<bool> {
        self.refresh()?;
        Ok(self.set.read().unwrap().contains(&ino))
    }

    pub fn is_empty(&self) -> Result<bool> {
        self.refresh()?;
        Ok(self.set.read().unwrap().is_empty())
    }

    /// Add the inodes a commit now shares, durably (before the commit's layer is published).
    pub fn record(&self, inodes: &[u64]) -> Result<()> {
        if let Some(p) = &self.file {
            let bytes: Vec<u8> = inodes.iter().flat_map(|i| i.to_le_bytes()).collect();
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).at(p.as_os_str())?;
            f.write_all(&bytes).at(p.as_os_str())?;
            f.sync_all().at(p.as_os_str())?;
        }
        self.set.write().unwrap().extend(inodes.iter().copied());
        // Read the file again next time: another process may have appended records before ours.
        self.len.store(u64::MAX, Ordering::Release);
        Ok(())
    }

    /// Forget every inode: the writable layer no longer shares any (each file got its own copy).
    pub fn clear(&self) -> Result<()> {
        if let Some(p) = &self.file {
            match std::fs::OpenOptions::new().write(true).truncate(true).open(p) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::from(e).at(p.as_os_str())),
            }
        }
        self.set.write().unwrap().clear();
        self.len.store(0, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_shared_between_readers_of_the_file() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("shared-inodes");
        let a = SharedInodes::open(Some(&file)).unwrap();
        let b = SharedInodes::open(Some(&file)).unwrap();
        assert!(a.is_empty().unwrap());
        a.record(&[7, 1 << 40]).unwrap();
        assert!(b.contains(7).unwrap() && b.contains(1 << 40).unwrap() && !b.contains(8).unwrap());
        assert_eq!(std::fs::read(&file).unwrap().len(), 16);
        // A torn last record (a crash mid-append) is ignored.
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(&[1, 2, 3]).unwrap();
        assert!(b.contains(7).unwrap());
        b.clear().unwrap();
        assert!(a.is_empty().unwrap() && b.is_empty().unwrap());
        let memory = SharedInodes::open(None).unwrap();
        memory.record(&[3]).unwrap();
        assert!(memory.contains(3).unwrap());
    }
}
