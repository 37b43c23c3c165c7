//! The outer tar of an image archive, written member by member: metadata from bytes, layers streamed
//! from the store (their size must be known up front and must then be exact), directories once. Writing
//! happens on a helper thread, overlapped with producing the next bytes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};

use tar::EntryType;

use crate::attrs::Meta;
use crate::error::{Error, Result};
use crate::overlap::OverlappedWriter;
use crate::tar::{entry_header, padding, END_OF_ARCHIVE};

/// Called with the number of bytes written so far; an error it returns stops the writing.
pub type WriteProgress = Box<dyn FnMut(u64) -> Result<()> + Send>;

/// Bytes copied between progress reports.
const STEP: u64 = 4 << 20;

pub struct ArchiveWriter<W: Write + Send + 'static> {
    out: OverlappedWriter<W>,
    written: u64,
    dirs: HashSet<String>,
    progress: Option<WriteProgress>,
}

impl<W: Write + Send + 'static> ArchiveWriter<W> {
    pub fn new(sink: W, progress: Option<WriteProgress>) -> Result<Self> {
        Ok(ArchiveWriter { out: OverlappedWriter::new(sink)?, written: 0, dirs: HashSet::new(), progress })
    }

    /// Bytes of archive written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        self.advanced(data.len() as u64)
    }

    fn advanced(&mut self, n: u64) -> Result<()> {
        self.written += n;
        match self.progress.as_mut() {
            Some(p) => p(self.written),
            None => Ok(()),
        }
    }

    fn header(&mut self, name: &str, ty: EntryType, mode: u32, size: u64, mtime: i64) -> Result<()> {
        let mut meta = Meta::synthetic(mode);
        meta.mtime = (mtime, 0);
        let header = entry_header(name.as_bytes(), &meta, ty, size, None, &[])?;
        self.write(&header)
    }

    /// The directory `name` (written once, however often it is asked for).
    pub fn add_dir(&mut self, name: &str, mtime: i64) -> Result<()> {
        if !self.dirs.insert(name.to_owned()) {
            return Ok(());
        }
        self.header(&format!("{}/", name.trim_end_matches('/')), EntryType::Directory, libc::S_IFDIR | 0o755, 0, mtime)
    }

    /// A regular member holding `data`.
    pub fn add_bytes(&mut self, name: &str, data: &[u8], mtime: i64) -> Result<()> {
        self.header(name, EntryType::Regular, libc::S_IFREG | 0o644, data.len() as u64, mtime)?;
        self.write(data)?;
        self.write(&[0; 512][..padding(data.len() as u64)])
    }

    /// A regular member of exactly `size` bytes read from `input`, which must then be at its end: a
    /// stream that is shorter or longer than the size recorded for it means the store is damaged.
    pub fn add_stream(&mut self, name: &str, size: u64, input: &mut dyn Read, mtime: i64) -> Result<()> {
        self.header(name, EntryType::Regular, libc::S_IFREG | 0o644, size, mtime)?;
        let mut copied = 0;
        while copied < size {
            let n = self.out.write_from(input, (size - copied).min(STEP))?;
            if n == 0 {
                return Err(Error::corrupt(format!("{name}: its stream ended after {copied} of its recorded {size} bytes")));
            }
            copied += n;
            self.advanced(n)?;
        }
        let mut more = [0u8; 1];
        if input.read(&mut more)? > 0 {
            return Err(Error::corrupt(format!("{name}: its stream is longer than its recorded {size} bytes")));
        }
        self.write(&[0; 512][..padding(size)])
    }

    /// A regular member with the content of `file` (from its start).
    pub fn add_file(&mut self, name: &str, mut file: File, mtime: i64) -> Result<()> {
        let size = file.metadata()?.len();
        self.add_stream(name, size, &mut file, mtime)
    }

    /// Give up on an unfinished archive: nothing more is written once this returns.
    pub fn abort(self) {
        self.out.abort()
    }

    /// Write the end-of-archive blocks, wait for every write and return the sink.
    pub fn finish(mut self) -> Result<W> {
        self.write(&END_OF_ARCHIVE)?;
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_tar_that_reads_back() {
        let long = format!("{}/layer.tar", "d".repeat(150));
        let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_by_progress = reported.clone();
        let progress: WriteProgress = Box::new(move |n| {
            seen_by_progress.lock().unwrap().push(n);
            Ok(())
        });
        let mut w = ArchiveWriter::new(Vec::new(), Some(progress)).unwrap();
        w.add_dir("blobs", 1_700_000_000).unwrap();
        w.add_dir("blobs", 1_700_000_000).unwrap();
        w.add_bytes("blobs/manifest.json", b"{}", 1_700_000_000).unwrap();
        let body = vec![9u8; 1_000_000];
        w.add_stream(&long, body.len() as u64, &mut &body[..], 0).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 512, 0);
        let reported = reported.lock().unwrap();
        assert!(reported.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(reported.last(), Some(&(out.len() as u64)), "the end of the archive is reported");
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((String::from_utf8(e.path_bytes().into_owned()).unwrap(), e.header().mtime().unwrap(), data.len()));
        }
        assert_eq!(
            seen,
            [("blobs/".to_string(), 1_700_000_000, 0), ("blobs/manifest.json".into(), 1_700_000_000, 2), (long.clone(), 0, 1_000_000)]
        );
    }

    #[test]
    fn a_stream_of_the_wrong_size_is_damage() {
        let mut w = ArchiveWriter::new(Vec::new(), None).unwrap();
        let e = w.add_stream("short", 10, &mut &[1u8; 4][..], 0).unwrap_err();
        assert!(matches!(e, Error::Corrupt(m) if m.contains("after 4 of its recorded 10")));
        let mut w = ArchiveWriter::new(Vec::new(), None).unwrap();
        let e = w.add_stream("long", 2, &mut &[1u8; 4][..], 0).unwrap_err();
        assert!(matches!(e, Error::Corrupt(m) if m.contains("longer")));
    }

    #[test]
    fn a_progress_error_stops_the_writer() {
        let progress: WriteProgress = Box::new(|n| if n > 1000 { Err(Error::Invalid("stop".into())) } else { Ok(()) });
        let mut w = ArchiveWriter::new(Vec::new(), Some(progress)).unwrap();
        let e = w.add_bytes("big", &[0u8; 4096], 0).unwrap_err();
        assert!(matches!(e, Error::Invalid(m) if m == "stop"));
    }
}
