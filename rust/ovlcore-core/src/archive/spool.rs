//! Spooling: an archive that cannot be read in place (compressed, or a stream that cannot seek) is first
//! written, decompressed, into a plain file, whose members can then be found by offset.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::compress;
use crate::error::{Context, Result};
use crate::overlap;

/// Write `input` (plain, gzip, zstd, bzip2 or xz, detected by content) decompressed into the new file `dest`, and
/// return that file.
pub fn spool(input: impl Read, dest: &Path) -> Result<File> {
    let mut plain = compress::decompressed(input)?;
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(dest).at(dest)?;
    let (_, file) = overlap::copy(&mut plain, file, &mut |_| Ok(())).map_err(|e| e.at(dest))?;
    Ok(file)
}
