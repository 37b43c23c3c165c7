//! Writing on a helper thread, so that producing the next chunk (walking a layer, compressing, reading an
//! archive) overlaps with writing the previous one (to a file, a pipe, or whatever the caller gives).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Bytes handed to the writing thread at a time.
const CHUNK: usize = 1 << 20;
/// A new chunk starts this small and doubles as it fills: a small copy zeroes little memory.
const FIRST: usize = 64 << 10;

/// What the writing thread is handed: a chunk (and how much of it is filled), or `len` bytes of a file
/// from its current offset (see [`OverlappedWriter::send_file`]).
enum Job {
    Chunk(Vec<u8>, usize),
    File(File, u64),
}

/// How the writing thread copies a [`Job::File`] into its sink.
type FileCopy<W> = fn(&mut W, &File, u64) -> io::Result<()>;

/// A writer whose writes happen on its own thread, one chunk behind. [`OverlappedWriter::finish`] waits
/// for the last write and gives the sink back; dropping it unfinished lets the thread finish on its own.
pub struct OverlappedWriter<W: Write + Send + 'static> {
    /// The chunk being filled (`filled` bytes of it; the rest is room, zeroed once when made).
    batch: Vec<u8>,
    filled: usize,
    full: Option<mpsc::SyncSender<Job>>,
    empty: mpsc::Receiver<Vec<u8>>,
    worker: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> OverlappedWriter<W> {
    pub fn new(sink: W) -> Result<Self> {
        Self::with_file_copy(sink, copy_file_by_reading::<W>)
    }

    fn with_file_copy(mut sink: W, file_copy: FileCopy<W>) -> Result<Self> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Job>(1);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("ovlcore-write".into())
            .spawn(move || -> io::Result<W> {
                for job in full_rx {
                    match job {
                        Job::Chunk(buf, len) => {
                            sink.write_all(&buf[..len])?;
                            // The producer may be gone already: then nobody needs the buffer back.
                            let _ = empty_tx.send(buf);
                        }
                        Job::File(file, len) => file_copy(&mut sink, &file, len)?,
                    }
                }
                sink.flush()?;
                Ok(sink)
            })?;
        Ok(OverlappedWriter { batch: Vec::new(), filled: 0, full: Some(full_tx), empty: empty_rx, worker: Some(worker) })
    }

    /// Write the next `len` bytes of `file` (from its offset) after everything written so far, on the
    /// writing thread: straight from file to file where the sink is one ([`OverlappedWriter::to_file`]).
    /// A file with fewer bytes left fails the writing (the content changed while being copied).
    pub fn send_file(&mut self, file: File, len: u64) -> Result<()> {
        if self.filled > 0 {
            self.send()?;
        }
        self.hand_over(Job::File(file, len))
    }

    /// Room left in the current chunk, growing it if it is full but smaller than `CHUNK`.
    fn room(&mut self) -> usize {
        if self.filled == self.batch.len() && self.batch.len() < CHUNK {
            self.batch.resize((self.batch.len() * 2).clamp(FIRST, CHUNK), 0);
        }
        self.batch.len() - self.filled
    }

    /// Copy at most `max` bytes from `input` (fewer only at its end); returns how many (0: the end).
    /// Reads straight into the chunk that goes to the writing thread.
    pub fn write_from(&mut self, input: &mut dyn Read, max: u64) -> Result<u64> {
        let mut copied = 0u64;
        while copied < max {
            let start = self.filled;
            let want = self.room().min((max - copied) as usize);
            let n = loop {
                match input.read(&mut self.batch[start..start + want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            };
            self.filled += n;
            copied += n as u64;
            if self.filled == CHUNK {
                self.send()?;
            }
            if n == 0 {
                break;
            }
        }
        Ok(copied)
    }

    /// Hand the current chunk to the writing thread (reporting its failure, if it stopped on one).
    fn send(&mut self) -> Result<()> {
        let next = self.empty.try_recv().unwrap_or_default();
        let chunk = Job::Chunk(std::mem::replace(&mut self.batch, next), std::mem::take(&mut self.filled));
        self.hand_over(chunk)
    }

    fn hand_over(&mut self, job: Job) -> Result<()> {
        let sent = self.full.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            // The writer stopped on an error: that error is the one to report.
            return Err(self.join().err().unwrap_or_else(|| Error::errno(libc::EPIPE)));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<W> {
        drop(self.full.take());
        match self.worker.take() {
            Some(w) => Ok(w.join().expect("writing thread panicked")?),
            None => Err(Error::errno(libc::EPIPE)),
        }
    }

    /// Stop: drop what is not written yet and wait for the write in flight (whose error, if any, no
    /// longer matters).
    pub fn abort(mut self) {
        let _ = self.join();
    }

    /// Write what is left, wait for the writing thread and return the sink.
    pub fn finish(mut self) -> Result<W> {
        if self.filled > 0 {
            self.send()?;
        }
        self.join()
    }
}

impl OverlappedWriter<File> {
    /// A writer into a file that copies [`OverlappedWriter::send_file`]'s files with `copy_file_range`
    /// (in the kernel: one copy of the bytes instead of a read and a write; shared extents where the file
    /// system can), falling back to reading them where it cannot (a pipe, another kind of file system).
    pub fn to_file(sink: File) -> Result<Self> {
        Self::with_file_copy(sink, copy_file_range_all)
    }
}

fn shrank() -> io::Error {
    io::Error::other(Error::corrupt("a file shrank while being copied"))
}

fn copy_file_by_reading<W: Write>(sink: &mut W, file: &File, len: u64) -> io::Result<()> {
    let n = io::copy(&mut file.take(len), sink)?;
    if n < len {
        return Err(shrank());
    }
    Ok(())
}

fn copy_file_range_all(sink: &mut File, file: &File, len: u64) -> io::Result<()> {
    match crate::sys::copy_range(file.as_fd(), sink.as_fd(), len)? {
        None => copy_file_by_reading(sink, file, len),
        Some(n) if n < len => Err(shrank()),
        Some(_) => Ok(()),
    }
}

impl<W: Write + Send + 'static> Write for OverlappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room());
        self.batch[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    /// Writes are flushed by [`OverlappedWriter::finish`]; a chunk in flight cannot be waited for alone.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copy `input` to `sink` until its end, writing on a helper thread; `progress` gets the running count.
/// Returns the count and the sink.
pub fn copy<W: Write + Send + 'static>(input: &mut dyn Read, sink: W, progress: &mut dyn FnMut(u64) -> Result<()>) -> Result<(u64, W)> {
    let mut out = OverlappedWriter::new(sink)?;
    let mut total = 0;
    loop {
        let n = out.write_from(input, CHUNK as u64)?;
        if n == 0 {
            break;
        }
        total += n;
        progress(total)?;
    }
    Ok((total, out.finish()?))
}

/// A read-ahead channel holding up to `depth` chunks: the producing half, for a helper thread, and the
/// reader. Chunks go back to the producer once read, so a stream of any length reuses the same few
/// buffers (allocating a fresh one per megabyte, freed on another thread, left the allocator's arenas
/// fragmented: tens of MB more at the peak of a push of several layers at once). `early` is the error
/// when the producer goes away before the end.
pub fn chunk_channel(depth: usize, early: fn() -> io::Error) -> (ChunkSender, ChunkReader) {
    let (full_tx, full_rx) = mpsc::sync_channel(depth);
    let (empty_tx, empty_rx) = mpsc::channel();
    (ChunkSender { full: full_tx, empty: empty_rx }, ChunkReader { rx: full_rx, back: empty_tx, cur: Vec::new(), pos: 0, done: false, early })
}

/// The producing half of a [`chunk_channel`].
pub struct ChunkSender {
    full: mpsc::SyncSender<io::Result<Vec<u8>>>,
    empty: mpsc::Receiver<Vec<u8>>,
}

impl ChunkSender {
    /// The next chunk of `src`, in a buffer the reader gave back where there is one: `CHUNK` bytes,
    /// fewer only at its end (empty: the end).
    pub fn next_chunk(&self, src: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut buf = self.empty.try_recv().unwrap_or_default();
        fill(src, &mut buf, CHUNK)?;
        Ok(buf)
    }

    /// Hand a chunk (an empty one ends the stream) or an error to the reader; false if it is gone.
    pub fn send(&self, msg: io::Result<Vec<u8>>) -> bool {
        self.full.send(msg).is_ok()
    }
}

/// The reading half of a [`chunk_channel`]: hands on the chunks sent. Dropping it stops a producer that
/// is still sending.
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    early: fn() -> io::Error,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    // The producer may be gone already: then nobody needs the buffer back.
                    let _ = self.back.send(std::mem::replace(&mut self.cur, chunk));
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err((self.early)()),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fill `buf` with up to `len` bytes of `r` (less only at its end), reusing its allocation.
pub fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, len: usize) -> io::Result<usize> {
    buf.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_everything_in_order() {
        let data: Vec<u8> = (0..(11 << 20) as u32).map(|i| (i % 253) as u8).collect();
        let mut seen = Vec::new();
        let (n, out) = copy(&mut &data[..], Vec::new(), &mut |n| {
            seen.push(n);
            Ok(())
        })
        .unwrap();
        assert_eq!((n, &out), (data.len() as u64, &data));
        assert_eq!(seen.last(), Some(&(data.len() as u64)));
        let mut w = OverlappedWriter::new(Vec::new()).unwrap();
        w.write_all(b"head ").unwrap();
        assert_eq!(w.write_from(&mut &b"body tail"[..], 4).unwrap(), 4);
        assert_eq!(w.finish().unwrap(), b"head body");
    }

    #[test]
    fn files_sent_go_in_order_whole_and_a_short_one_fails() {
        let dir = std::env::temp_dir().join(format!("ovlcore-overlap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let body: Vec<u8> = (0..300_001u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(&src, &body).unwrap();
        let expected = [&b"head "[..], &body, b" tail"].concat();
        // Into a file (copy_file_range) and into memory (read and written): the same bytes.
        let out = dir.join("out");
        let mut w = OverlappedWriter::to_file(File::create(&out).unwrap()).unwrap();
        w.write_all(b"head ").unwrap();
        w.send_file(File::open(&src).unwrap(), body.len() as u64).unwrap();
        w.write_all(b" tail").unwrap();
        w.finish().unwrap();
        assert!(std::fs::read(&out).unwrap() == expected);
        let mut w = OverlappedWriter::new(Vec::new()).unwrap();
        w.write_all(b"head ").unwrap();
        w.send_file(File::open(&src).unwrap(), body.len() as u64).unwrap();
        w.write_all(b" tail").unwrap();
        assert!(w.finish().unwrap() == expected);
        // A file with fewer bytes than announced (it shrank): an error, whichever the sink.
        for to_file in [true, false] {
            let err = if to_file {
                let mut w = OverlappedWriter::to_file(File::create(&out).unwrap()).unwrap();
                w.send_file(File::open(&src).unwrap(), body.len() as u64 + 1).and_then(|_| w.finish().map(|_| ()))
            } else {
                let mut w = OverlappedWriter::new(Vec::new()).unwrap();
                w.send_file(File::open(&src).unwrap(), body.len() as u64 + 1).and_then(|_| w.finish().map(|_| ()))
            };
            assert!(err.unwrap_err().to_string().contains("shrank"), "{to_file}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Debug)]
    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_sinks_error_is_the_one_reported() {
        let data = vec![0u8; 20 << 20];
        let err = copy(&mut &data[..], Failing, &mut |_| Ok(())).unwrap_err();
        assert!(err.is_errno(libc::ENOSPC), "{err}");
    }
}
