//! Helpers for image archives (`images.save` / `images.load`): spooling a compressed archive into a plain
//! file so that its members can be found by seeking.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use ovlcore_core::compress;
use ovlcore_core::Error;
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::io::Progress;
use crate::layers::Source;

/// Write `source` (plain, gzip or zstd, detected by content) decompressed into the new file `dest`.
/// Returns the number of bytes written; `progress` is called with that count as it grows.
#[pyfunction]
#[pyo3(signature = (source, dest, *, progress=None))]
pub fn decompress_to(py: Python<'_>, source: Source, dest: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<u64> {
    let reader = source.reader()?;
    let progress = Progress::new(progress);
    py.detach(|| -> ovlcore_core::Result<u64> {
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
    })
    .py()
}
