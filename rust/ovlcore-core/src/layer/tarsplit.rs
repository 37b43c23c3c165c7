//! Tar-split records: the exact bytes of an imported tar minus the file contents, so that exporting the
//! layer later reproduces the original stream (and its diff_id) byte for byte, as containers/storage does.
//!
//! A zstd-compressed sequence of records: `S len bytes` (raw tar bytes: headers, padding, trailer) and
//! `F size pathlen path` (the next `size` bytes are the content of `path` in the layer directory).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::error::{Error, Result};

const SEGMENT: u8 = b'S';
const FILE: u8 = b'F';

/// One record of a tar-split stream.
pub enum Record {
    Segment(Vec<u8>),
    File { path: Vec<u8>, size: u64 },
}

pub struct SplitWriter {
    out: zstd::stream::write::Encoder<'static, BufWriter<File>>,
}

impl SplitWriter {
    pub fn new(file: File) -> Result<Self> {
        Ok(SplitWriter { out: zstd::stream::write::Encoder::new(BufWriter::new(file), 3)? })
    }

    pub fn segment(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.out.write_all(&[SEGMENT])?;
        self.out.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn file(&mut self, path: &[u8], size: u64) -> Result<()> {
        self.out.write_all(&[FILE])?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&(path.len() as u64).to_le_bytes())?;
        self.out.write_all(path)?;
        Ok(())
    }

    /// Flush everything and sync the file.
    pub fn finish(self) -> Result<()> {
        let buf = self.out.finish()?;
        let file = buf.into_inner().map_err(|e| Error::from(e.into_error()))?;
        file.sync_all()?;
        Ok(())
    }
}

pub struct SplitReader {
    input: zstd::stream::read::Decoder<'static, BufReader<File>>,
}

impl SplitReader {
    pub fn open(file: File) -> Result<Self> {
        Ok(SplitReader { input: zstd::stream::read::Decoder::new(file)? })
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.input.read_exact(&mut b).map_err(damaged)?;
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > 1 << 30 {
            return Err(Error::corrupt("a tar-split record is implausibly large"));
        }
        let mut v = vec![0u8; n as usize];
        self.input.read_exact(&mut v).map_err(damaged)?;
        Ok(v)
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let mut tag = [0u8; 1];
        match self.input.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.next_record(),
            Err(e) => return Err(damaged(e)),
        }
        match tag[0] {
            SEGMENT => {
                let n = self.u64()?;
                Ok(Some(Record::Segment(self.bytes(n)?)))
            }
            FILE => {
                let size = self.u64()?;
                let n = self.u64()?;
                Ok(Some(Record::File { path: self.bytes(n)?, size }))
            }
            _ => Err(Error::corrupt("a tar-split record of unknown type")),
        }
    }
}

/// A tar-split file that cannot be read back is store damage (unless the OS failed to read it).
fn damaged(e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(_) => e.into(),
        None => Error::corrupt(format!("the tar-split records cannot be read: {e}")),
    }
}
