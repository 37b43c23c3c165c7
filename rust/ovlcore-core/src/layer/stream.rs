//! A layer tar as it leaves the store: compressed on the way when asked, with its two digests known once
//! it has been read to its end — the diff_id (sha256 of the plain tar, hashed on a helper thread while the
//! tar is produced) and the digest of the bytes handed out (the blob digest, the same for a plain tar).

use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use crate::compress::{self, Compression, Compressor};
use crate::digest::{BackgroundHasher, Hasher};
use crate::error::Result;
use crate::layer::LayerTar;
use crate::overlap::{self, OverlappedWriter};

enum Out {
    Plain(Box<DigestOnEnd>),
    Compressed(Box<Compressor<DigestOnEnd>>),
}

pub struct LayerStream {
    /// The plain tar, or the compressor reading it.
    out: Out,
    /// The bytes handed out: hashed when compressed (plain, their digest is the diff_id).
    blob: Hasher,
    compressed: bool,
    diff_id: Arc<Mutex<Option<String>>>,
    ended: bool,
}

impl LayerStream {
    /// `tar` as it is (`Compression::None`) or compressed. Unless `tar` was made without a digest, its
    /// sha256 is computed on a helper thread.
    pub fn new(tar: LayerTar, compression: Compression) -> Result<LayerStream> {
        Self::one_of(tar, compression, 1)
    }

    /// As [`LayerStream::new`], for one of `streams` layers compressed at the same time (a push): it
    /// compresses on its share of the cores, in its share of the memory.
    pub fn one_of(tar: LayerTar, compression: Compression, streams: usize) -> Result<LayerStream> {
        let diff_id = Arc::new(Mutex::new(None));
        let hasher = if tar.has_digest() { BackgroundHasher::start() } else { None };
        let tar = if hasher.is_some() { tar.without_digest() } else { tar };
        let plain = DigestOnEnd { tar, slot: diff_id.clone(), hasher };
        let out = match compression {
            Compression::None => Out::Plain(Box::new(plain)),
            c => Out::Compressed(Box::new(Compressor::with_threads(plain, c, compress::threads_per_stream(streams))?)),
        };
        Ok(LayerStream { out, blob: Hasher::default(), compressed: compression != Compression::None, diff_id, ended: false })
    }

    /// The diff_id, once the stream has ended (never for a tar made without a digest).
    pub fn diff_id(&self) -> Option<String> {
        self.diff_id.lock().unwrap().clone()
    }

    /// The digest of the bytes handed out, once the stream has ended.
    pub fn digest(&self) -> Option<String> {
        match (self.ended, self.compressed) {
            (false, _) => None,
            (true, true) => Some(self.blob.digest()),
            (true, false) => self.diff_id(),
        }
    }

    /// Bytes handed out so far.
    pub fn bytes_out(&self) -> u64 {
        self.blob.count
    }

    /// Write the rest of the stream into `sink` (on a helper thread, overlapped with producing it);
    /// `progress` gets the running count. A plain tar nobody hashes has its bigger files' content copied
    /// from file to file by the kernel, never read into memory. Returns the count.
    pub fn copy_to_file(&mut self, sink: File, progress: &mut dyn FnMut(u64) -> Result<()>) -> Result<u64> {
        match &mut self.out {
            Out::Plain(plain) if plain.hasher.is_none() && !plain.tar.has_digest() => {
                let mut out = OverlappedWriter::to_file(sink)?;
                let n = plain.tar.copy_into(&mut out, progress)?;
                out.finish()?;
                self.blob.count += n;
                self.ended = true;
                Ok(n)
            }
            _ => Ok(overlap::copy(self, sink, progress)?.0),
        }
    }

    /// Read the rest of the stream only for its digests and size (what a commit wants): a plain tar is
    /// read straight into the hashing thread's batches, with no copy on the way. `progress` gets the
    /// running count. Returns the count.
    pub fn drain(&mut self, progress: &mut dyn FnMut(u64) -> Result<()>) -> Result<u64> {
        if let Out::Plain(plain) = &mut self.out {
            if let Some(hasher) = plain.hasher.as_mut() {
                loop {
                    let n = hasher.read_from(&mut plain.tar)?;
                    if n == 0 {
                        break;
                    }
                    self.blob.count += n as u64;
                    progress(self.blob.count)?;
                }
                plain.end();
                self.ended = true;
                return Ok(self.blob.count);
            }
        }
        let mut buf = vec![0u8; 1 << 20];
        while self.read(&mut buf)? > 0 {
            progress(self.blob.count)?;
        }
        Ok(self.blob.count)
    }
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.out {
            Out::Plain(p) => p.read(buf)?,
            Out::Compressed(c) => c.read(buf)?,
        };
        if self.compressed {
            self.blob.update(&buf[..n]);
        } else {
            self.blob.count += n as u64;
        }
        if n == 0 && !buf.is_empty() {
            self.ended = true;
        }
        Ok(n)
    }
}

/// The plain tar, recording its digest when it ends.
struct DigestOnEnd {
    tar: LayerTar,
    slot: Arc<Mutex<Option<String>>>,
    hasher: Option<BackgroundHasher>,
}

impl Read for DigestOnEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tar.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if n == 0 && !buf.is_empty() {
            self.end();
        }
        Ok(n)
    }
}

impl DigestOnEnd {
    /// The tar has ended: record its digest.
    fn end(&mut self) {
        if let Some(h) = self.hasher.take() {
            *self.slot.lock().unwrap() = Some(h.finish());
        } else if self.tar.has_digest() {
            *self.slot.lock().unwrap() = Some(self.tar.digest());
        }
    }
}
