//! docker-py's `put_archive`: a tar (plain, gzip, zstd, bzip2 or xz) extracted into a directory of a container,
//! through the view's write operations (copy-up, whiteouts, mounts, read-only mounts, confinement).
//! Entries come from the validated tar reader, so names and links are checked as for a layer.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{OFlags, Timestamps};

use crate::attrs::{makedev, Kind};
use crate::compress;
use crate::error::{Error, Result};
use crate::tar::{read_entries, EntryKind};
use crate::union::View;

/// Whether `ADD` extracts a local file, as Docker's `IsArchivePath` decides: its content, decompressed,
/// starts with a tar header whose checksum holds. A file that only looks compressed (a bad bzip2 stream,
/// a gzipped text) or an empty archive is copied as it is instead. zstd is read as Docker 23+ reads it
/// (Docker 20.10 copies a `.tar.zst` unextracted).
pub fn is_tar_archive(input: impl Read) -> bool {
    let Ok(mut plain) = compress::decompressed(input) else { return false };
    let mut block = [0u8; 512];
    if plain.read_exact(&mut block).is_err() || block.iter().all(|&b| b == 0) {
        return false;
    }
    let Ok(stored) = tar::Header::from_byte_slice(&block).cksum() else { return false };
    // The sum with the checksum field as spaces, unsigned or (as old tars wrote it) signed.
    let field = 148..156;
    let unsigned: i64 = block.iter().enumerate().map(|(i, &b)| if field.contains(&i) { 32 } else { b as i64 }).sum();
    let signed: i64 = block.iter().enumerate().map(|(i, &b)| if field.contains(&i) { 32 } else { b as i8 as i64 }).sum();
    stored as i64 == unsigned || stored as i64 == signed
}

/// Extract `input` into the existing container directory `dir`; returns the bytes of file content
/// written. The archive's root entry (`./`) is not applied: `dir` keeps its own metadata.
pub fn put_archive(view: &View, dir: &Path, input: impl Read) -> Result<u64> {
    let target = view.resolve(dir, true)?.require()?;
    if target.kind() != Some(Kind::Dir) {
        return Err(Error::os(libc::ENOTDIR, target.path.as_os_str()));
    }
    let base = target.path.clone();
    let mut written = 0u64;
    let mut dir_times: Vec<(PathBuf, Timestamps)> = Vec::new();
    read_entries(compress::decompressed(input)?, |entry| {
        if entry.name.as_os_str().is_empty() {
            return Ok(());
        }
        let dst = base.join(&entry.name);
        // Implied parent directories, as tar creates them.
        let mut p = base.clone();
        for comp in entry.name.parent().unwrap_or(Path::new("")).iter() {
            p.push(comp);
            match view.resolve(&p, true)?.kind() {
                None => view.mkdir(&p, 0o755)?,
                Some(Kind::Dir) => {}
                Some(_) => return Err(entry.bad("a parent is not a directory")),
            }
        }
        let existing = view.resolve(&dst, false)?.kind();
        let replace_non_dir = |view: &View| -> Result<()> {
            match existing {
                Some(Kind::Dir) => Err(Error::os(libc::EISDIR, dst.as_os_str())),
                Some(_) => view.remove(&dst),
                None => Ok(()),
            }
        };
        let meta = entry.meta.clone();
        match &entry.kind {
            EntryKind::Dir => {
                match existing {
                    None => view.mkdir(&dst, 0o700)?,
                    Some(Kind::Dir) => {}
                    Some(_) => return Err(entry.bad("a directory would replace a file")),
                }
                dir_times.push((dst.clone(), meta.times()));
            }
            EntryKind::File => {
                if existing == Some(Kind::Dir) {
                    return Err(Error::os(libc::EISDIR, dst.as_os_str()));
                }
                if existing == Some(Kind::Symlink) {
                    view.remove(&dst)?;
                }
                let mut out = File::from(view.open_write(&dst, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW, 0o600)?);
                let copied = std::io::copy(entry, &mut out)?;
                if copied != entry.size {
                    return Err(Error::truncated(format!("entry {:?}", entry.shown()), entry.size, copied));
                }
                written += copied;
            }
            EntryKind::Symlink(target) => {
                replace_non_dir(view)?;
                view.symlink(OsStr::from_bytes(target), &dst)?;
            }
            EntryKind::HardLink(target) => {
                replace_non_dir(view)?;
                return view.link(&base.join(target), &dst);
            }
            EntryKind::Fifo | EntryKind::Char | EntryKind::Block => {
                replace_non_dir(view)?;
                let k = match entry.kind {
                    EntryKind::Fifo => Kind::Fifo,
                    EntryKind::Char => Kind::Char,
                    _ => Kind::Block,
                };
                view.mknod(&dst, k, meta.perm, makedev(meta.dev.0, meta.dev.1))?;
            }
        }
        let symlink = matches!(entry.kind, EntryKind::Symlink(_));
        if !symlink {
            view.chmod(&dst, meta.perm, false)?;
        }
        if let Err(e) = view.chown(&dst, Some(meta.uid), Some(meta.gid), false) {
            // A symlink in a rootless store cannot record an owner; everything else must work.
            if !(symlink && e.is_errno(libc::EPERM)) {
                return Err(e);
            }
        }
        if entry.kind != EntryKind::Dir {
            view.utime(&dst, Some(meta.times()), false)?;
        }
        Ok(())
    })?;
    // Directory times last, deepest first: creating their children changed them.
    dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, ts) in dir_times {
        view.utime(&p, Some(ts), false)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn archives_are_told_from_files_that_only_look_like_one() {
        let t = tar_of("a", b"x");
        assert!(is_tar_archive(&t[..]));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        assert!(is_tar_archive(&gz.finish().unwrap()[..]));
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        std::io::Write::write_all(&mut bz, &t).unwrap();
        assert!(is_tar_archive(&bz.finish().unwrap()[..]));
        // Copied as they are by Docker: a compressed text, a bad stream, a bad checksum, an empty archive.
        let mut text = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut text, &[b'x'; 2000]).unwrap();
        assert!(!is_tar_archive(&text.finish().unwrap()[..]));
        assert!(!is_tar_archive(&[b"BZh91AY&SY".as_slice(), &[0; 600]].concat()[..]));
        let mut bad = t.clone();
        bad[0] ^= 1;
        assert!(!is_tar_archive(&bad[..]));
        assert!(!is_tar_archive(&[0u8; 1024][..]));
        assert!(!is_tar_archive(&b"short"[..]));
    }
}
