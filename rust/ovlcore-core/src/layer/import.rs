//! OCI layer tar (plain, gzip, zstd, bzip2 or xz) → layer directory, hashing the stream in the same pass.
//!
//! Two threads: one reads, decompresses and hashes (the diff_id is the sha256 of the plain tar) and
//! enforces the size limit; the other builds the layer from the validated entries (`extract.rs`). A third
//! flushes the new layer to disk while it is written, so that the final sync has little left to do.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;

use crate::attrs::Privilege;
use crate::compress;
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::layer::extract::extract;
use crate::overlap::{chunk_channel, ChunkSender};
use crate::sys;
use crate::union::Lower;

/// Called with the number of input bytes consumed so far; an error it returns stops the import.
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

/// The reading half of an import, on its own thread: decompress, hash, enforce the size limit, and hand
/// the plain bytes over in chunks. Extraction (system calls) and hashing (CPU) then overlap.
fn produce(mut plain: impl Read, limit: Option<u64>, tx: ChunkSender) -> Hasher {
    let mut hasher = Hasher::default();
    loop {
        let msg = tx.next_chunk(&mut plain);
        if let Ok(buf) = &msg {
            hasher.update(buf);
        }
        if let Some(limit) = limit {
            if hasher.count > limit {
                let e = Error::archive(format!("uncompressed size exceeds the limit of {limit} bytes"));
                tx.send(Err(io::Error::other(e)));
                return hasher;
            }
        }
        let stop = msg.as_ref().map_or(true, |b| b.is_empty());
        if !tx.send(msg) || stop {
            return hasher;
        }
    }
}

/// Import the OCI layer tar read from `input` (plain, gzip, zstd, bzip2 or xz) into the empty directory `dest`.
/// With `split`, the tar-split records for byte-identical re-export are written there.
pub fn import_layer(input: impl Read + Send, dest: &Path, split: Option<File>, opts: ImportOptions<'_>) -> Result<ImportReport> {
    let counting = Counting { inner: input, count: 0, reported: 0, progress: opts.progress };
    let (tx, chunks) = chunk_channel(4, || io::Error::other(Error::archive("the layer stream ended early")));
    let limit = opts.max_size;
    let extracting = Flag::default();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || match compress::decompressed(counting) {
            Ok(plain) => produce(plain, limit, tx),
            Err(e) => {
                tx.send(Err(io::Error::other(e)));
                Hasher::default()
            }
        });
        // The layer must be on disk before it is published: flush it while it is being written, so the
        // final sync only waits for the tail (as a background writeback of the whole tree would).
        scope.spawn(|| flush_while(dest, &extracting));
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
