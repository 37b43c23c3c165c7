//! sha256 digests in OCI form (`sha256:<hex>`), computed while bytes stream through: inline, or on a
//! helper thread so that hashing overlaps with producing the bytes.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};


/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The OCI chain id of a layer: its diff id alone at the bottom, else `sha256(parent_chain + " " + diff_id)`.
pub fn chain_id(parent_chain: Option<&str>, diff_id: &str) -> String {
    match parent_chain {
        None => diff_id.to_string(),
        Some(p) => sha256(format!("{p} {diff_id}").as_bytes()),
    }
}

/// A running sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    pub count: u64,
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.count += data.len() as u64;
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.inner.clone().finalize()))
    }
}

/// Hashes everything read through it.
pub struct HashingReader<R> {
    pub inner: R,
    pub hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Hasher::default() }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Bytes handed to the hashing thread at a time (up to four batches live per hasher: one per layer
/// being pushed, so a larger batch costs memory for no speed).
const BATCH: usize = 1 << 20;

/// A sha256 computed on its own thread from batches of bytes (at most a few batches in flight).
/// sha256 is the slowest part of producing a plain layer tar: this way it costs one copy into a batch,
/// or none when the bytes are read straight into it ([`BackgroundHasher::read_from`]).
pub struct BackgroundHasher {
    /// The batch being filled (always `BATCH` long) and how much of it is.
    batch: Vec<u8>,
    filled: usize,
    full: Option<mpsc::SyncSender<(Vec<u8>, usize)>>,
    empty: mpsc::Receiver<Vec<u8>>,
    worker: JoinHandle<Hasher>,
}

impl BackgroundHasher {
    /// `None` when no thread can be started (the caller then hashes inline).
    pub fn start() -> Option<BackgroundHasher> {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("ovlcore-sha256".into())
            .spawn(move || {
                let mut h = Hasher::default();
                for (buf, len) in full_rx {
                    h.update(&buf[..len]);
                    // The producer may be gone already: then nobody needs the buffer back.
                    let _ = empty_tx.send(buf);
                }
                h
            })
            .ok()?;
        Some(BackgroundHasher { batch: vec![0; BATCH], filled: 0, full: Some(full_tx), empty: empty_rx, worker })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(BATCH - self.filled);
            self.batch[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BATCH {
                self.flush();
            }
        }
    }

    /// One `read` of `r` straight into the batch being filled; how many bytes it gave (0: its end).
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        let n = r.read(&mut self.batch[self.filled..])?;
        self.filled += n;
        if self.filled == BATCH {
            self.flush();
        }
        Ok(n)
    }

    fn flush(&mut self) {
        if self.filled == 0 {
            return;
        }
        let next = self.empty.try_recv().unwrap_or_else(|_| vec![0; BATCH]);
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.full {
            // Fails only if the worker died (it cannot, short of a panic, reported by join below).
            let _ = tx.send((full, self.filled));
        }
        self.filled = 0;
    }

    /// `sha256:<hex>` of everything given.
    pub fn finish(mut self) -> String {
        self.flush();
        drop(self.full.take());
        self.worker.join().expect("hashing thread panicked").digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(sha256(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(chain_id(None, d), d);
        assert_eq!(chain_id(Some(d), d), sha256(format!("{d} {d}").as_bytes()));
    }

    #[test]
    fn inline_reader_and_background_thread_agree() {
        let data: Vec<u8> = (0..(9 << 20) as u32).map(|i| (i % 251) as u8).collect();
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let mut bg = BackgroundHasher::start().unwrap();
        for chunk in data.chunks(777_777) {
            bg.update(chunk);
        }
        assert_eq!(bg.finish(), r.hasher.digest());
        // read straight into the batches, in reads of every size, mixed with copied bytes
        let mut bg = BackgroundHasher::start().unwrap();
        let (mut rest, mut turn) = (&data[..], 0usize);
        while !rest.is_empty() {
            turn += 1;
            let take = rest.len().min(1 + turn * 40_961 % 900_001);
            if turn % 3 == 0 {
                bg.update(&rest[..take]);
            } else {
                let mut part = &rest[..take];
                while bg.read_from(&mut part).unwrap() > 0 {}
            }
            rest = &rest[take..];
        }
        assert_eq!(bg.finish(), r.hasher.digest());
        assert_eq!(r.hasher.digest(), sha256(&data));
        assert_eq!(r.hasher.count, data.len() as u64);
    }
}
