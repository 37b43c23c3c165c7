//! sha256 digests in OCI form (`sha256:<hex>`), computed while bytes stream through a reader or writer.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

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

/// Check that `d` is `sha256:` + 64 lowercase hex digits and return the hex part.
pub fn hex_of(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(h),
        _ => Err(Error::Invalid(format!("not a sha256 digest: {d:?}"))),
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

/// Hashes everything written through it.
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Hasher::default() }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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
        assert!(hex_of(d).is_ok());
        assert!(hex_of("sha256:XYZ").is_err());
    }

    #[test]
    fn reader_and_writer_agree() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        assert_eq!(r.hasher.digest(), w.hasher.digest());
        assert_eq!(r.hasher.count, 100_000);
    }
}
