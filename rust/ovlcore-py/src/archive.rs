//! Helpers for image archives (`images.save` / `images.load`): spooling a compressed archive into a plain
//! file so that its members can be found by seeking, and writing tar streams to a file descriptor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;

use ovlcore_core::compress;
use ovlcore_core::Error;
use pyo3::prelude::*;

use crate::io::Progress;
use crate::layers::{source_result, Source};

/// Write `source` (plain, gzip or zstd, detected by content) decompressed into the new file `dest`.
/// Returns the number of bytes written; `progress` is called with that count as it grows.
#[pyfunction]
#[pyo3(signature = (source, dest, *, progress=None))]
pub fn decompress_to(py: Python<'_>, source: Source, dest: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<u64> {
    let (reader, failure) = source.reader()?;
    let progress = Progress::new(progress);
    let result = py.detach(|| -> ovlcore_core::Result<u64> {
        let mut input = compress::decompressed(reader)?;
        let mut out = File::create_new(&dest).map_err(|e| Error::from(e).at(dest.as_os_str()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            out.write_all(&buf[..n]).map_err(|e| Error::from(e).at(dest.as_os_str()))?;
            total += n as u64;
            progress.report(total)?;
        }
        Ok(total)
    });
    source_result(result, &failure)
}

/// Bytes moved per step by [`copy_to_fd`].
const CHUNK: usize = 4 << 20;

/// Copy what `read` produces to the file descriptor `fd` until the end, or exactly `size` bytes: a writer
/// thread writes one chunk while `read` fills the next. `read` fills its buffer completely unless the
/// stream ends. Returns the byte count and whether the end of the stream was reached.
pub fn copy_to_fd(
    read: &mut dyn FnMut(&mut [u8]) -> ovlcore_core::Result<usize>,
    fd: RawFd,
    size: Option<u64>,
    progress: &Progress,
) -> ovlcore_core::Result<(u64, bool)> {
    // SAFETY: the caller passes the descriptor of an open Python file object, which outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(1);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = s.spawn(move || -> ovlcore_core::Result<()> {
            for buf in full_rx {
                write_all(fd, &buf)?;
                // The reader may be gone already: then nobody needs the buffer back.
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let mut total = 0u64;
        let mut end = false;
        let produced = (|| -> ovlcore_core::Result<()> {
            loop {
                let want = match size {
                    Some(s) => (s - total).min(CHUNK as u64) as usize,
                    None => CHUNK,
                };
                if want == 0 {
                    return Ok(());
                }
                let mut buf = empty_rx.try_recv().unwrap_or_default();
                buf.resize(want, 0);
                let n = read(&mut buf)?;
                buf.truncate(n);
                total += n as u64;
                end = n < want;
                // A send fails only when the writer stopped on an error, reported below.
                if n > 0 && full_tx.send(buf).is_err() {
                    return Ok(());
                }
                progress.report(total)?;
                if end {
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let written = writer.join().expect("writer thread panicked");
        produced?;
        written?;
        match size {
            Some(s) if total < s => Err(Error::archive(format!("stream ended after {total} of {s} bytes"))),
            _ => Ok((total, end)),
        }
    })
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> ovlcore_core::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(Error::errno(libc::EIO)),
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
