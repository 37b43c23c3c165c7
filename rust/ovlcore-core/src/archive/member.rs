//! One member of an archive as a reader: positional reads of its span of the archive file, so that any
//! number of members can be open at once.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::Error;

pub struct Member {
    file: Arc<File>,
    name: String,
    start: u64,
    pos: u64,
    end: u64,
}

impl Member {
    pub(crate) fn new(file: Arc<File>, name: &str, offset: u64, size: u64) -> Member {
        Member { file, name: name.to_owned(), start: offset, pos: offset, end: offset + size }
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// The first bytes of the member (fewer if it is shorter), without moving the read position.
    pub fn head(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n.min(self.size() as usize)];
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read_at(&mut buf[filled..], self.start + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

impl Read for Member {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            let what = format!("member {:?}", self.name);
            return Err(io::Error::other(Error::truncated(what, self.size(), self.pos - self.start)));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
