//! An archive's regular members by name, with where each one's bytes are: a plain tar file indexed once
//! (headers read, content skipped by seeking), or an OCI layout directory on the host.
//!
//! Names are normalised (`./` and trailing `/` dropped) and checked like every tar name. A symlink or
//! hard link member stands for the file it names, as long as that stays inside the archive (Docker
//! writes a layer that appears twice as a symlink to its first copy). A member whose bytes would run past
//! the end of the file is refused as truncated.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;

use crate::archive::member::Member;
use crate::archive::spool::spool;
use crate::compress::Format;
use crate::error::{Context, Error, Result};
use crate::format::clean_name;
use crate::sys;
use crate::tar::{index_entries, EntryKind};

/// Where a member's bytes are in the tar file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    offset: u64,
    size: u64,
}

enum Backing {
    Tar { file: Arc<File>, members: HashMap<Vec<u8>, Span> },
    Dir(OwnedFd),
}

/// The members of an image archive.
pub struct Archive {
    backing: Backing,
}

impl Archive {
    /// The archive at `path`: an OCI layout directory, or a tar file (plain, gzip, zstd, bzip2 or xz). A compressed
    /// archive, or a path that is no regular file (a pipe), is spooled to the new file `spool` first.
    pub fn open(path: &Path, spool: &Path) -> Result<Archive> {
        let file = File::open(path).at(path.as_os_str())?;
        let meta = file.metadata().at(path.as_os_str())?;
        if meta.is_dir() {
            return Ok(Archive { backing: Backing::Dir(OwnedFd::from(file)) });
        }
        if meta.is_file() {
            Archive::from_file(file, spool)
        } else {
            Archive::from_stream(file, spool)
        }
    }

    /// The tar archive in `file`, from its start: indexed in place when plain, else spooled to `spool`.
    pub fn from_file(file: File, spool: &Path) -> Result<Archive> {
        let mut head = [0u8; 6];
        let n = file.read_at(&mut head, 0)?;
        if Format::detect(&head[..n]) == Format::Plain {
            Archive::index(file)
        } else {
            Archive::from_stream(file, spool)
        }
    }

    /// The tar archive (plain, gzip, zstd, bzip2 or xz) read from `input`, spooled to the new file `spool`.
    pub fn from_stream(input: impl Read, spool_to: &Path) -> Result<Archive> {
        Archive::index(spool(input, spool_to)?)
    }

    fn index(file: File) -> Result<Archive> {
        let len = file.metadata()?.len();
        let mut files = HashMap::new();
        let mut links: HashMap<Vec<u8>, (Vec<u8>, bool)> = HashMap::new();
        index_entries(Positional { file: &file, pos: 0 }, |entry| {
            let name = entry.name.as_os_str().as_bytes().to_vec();
            match &entry.kind {
                EntryKind::File => {
                    let offset = entry.content_offset();
                    if offset + entry.size > len {
                        return Err(Error::truncated(format!("member {:?}", entry.shown()), entry.size, len.saturating_sub(offset)));
                    }
                    links.remove(&name);
                    files.insert(name, Span { offset, size: entry.size });
                }
                EntryKind::Symlink(target) => {
                    files.remove(&name);
                    links.insert(name, (target.clone(), true));
                }
                EntryKind::HardLink(target) => {
                    files.remove(&name);
                    links.insert(name, (target.as_os_str().as_bytes().to_vec(), false));
                }
                EntryKind::Dir | EntryKind::Fifo | EntryKind::Char | EntryKind::Block => {}
            }
            Ok(())
        })
        .map_err(not_a_tar)?;
        resolve_links(&mut files, &links);
        Ok(Archive { backing: Backing::Tar { file: Arc::new(file), members: files } })
    }

    /// The size of the regular member `name`, if the archive has it.
    pub fn size(&self, name: &str) -> Option<u64> {
        match &self.backing {
            Backing::Tar { members, .. } => members.get(name.as_bytes()).map(|s| s.size),
            Backing::Dir(root) => dir_file(root, name).and_then(|f| f.metadata().ok()).map(|m| m.len()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.size(name).is_some()
    }

    /// The member `name` as a reader.
    pub fn member(&self, name: &str) -> Result<Member> {
        let missing = || Error::archive(format!("{name:?} is not in the archive"));
        match &self.backing {
            Backing::Tar { file, members } => {
                let span = members.get(name.as_bytes()).ok_or_else(missing)?;
                Ok(Member::new(file.clone(), name, span.offset, span.size))
            }
            Backing::Dir(root) => {
                let file = dir_file(root, name).ok_or_else(missing)?;
                let size = file.metadata()?.len();
                Ok(Member::new(Arc::new(file), name, 0, size))
            }
        }
    }

    /// The whole member `name`, refused when it is larger than `limit` bytes (metadata is read into
    /// memory; layers never are).
    pub fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let mut member = self.member(name)?;
        if member.size() > limit {
            return Err(Error::archive(format!("{name:?} is {} bytes: more than the {limit} a metadata file may have", member.size())));
        }
        let mut out = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Reads and seeks by position, leaving the descriptor's own offset alone (it may be shared with the
/// caller's file object).
struct Positional<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Positional<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

fn not_a_tar(e: Error) -> Error {
    match e {
        Error::InvalidArchive(m) => Error::archive(format!("not a valid tar archive ({m})")),
        other => other,
    }
}

/// A regular file of an OCI layout directory, by its exact clean name (no symlinks followed).
fn dir_file(root: &OwnedFd, name: &str) -> Option<File> {
    let rel = clean_name(name.as_bytes()).ok()?;
    if rel.as_os_str().as_bytes() != name.as_bytes() || name.is_empty() {
        return None;
    }
    let file = File::from(sys::open_beneath(root.as_fd(), &rel, OFlags::RDONLY).ok()?);
    file.metadata().ok()?.is_file().then_some(file)
}

/// Let each link member stand for the regular member it names, following chains of links. A symlink is
/// relative to its directory, a hard link to the archive's root; neither may leave the archive.
fn resolve_links(files: &mut HashMap<Vec<u8>, Span>, links: &HashMap<Vec<u8>, (Vec<u8>, bool)>) {
    for (name, first) in links {
        let mut seen = HashSet::from([name.clone()]);
        let (mut cur, (mut target, mut symbolic)) = (name.clone(), first.clone());
        loop {
            let base = if symbolic { Path::new(OsStr::from_bytes(&cur)).parent().unwrap_or(Path::new("")) } else { Path::new("") };
            let Some(resolved) = inside(base, &target) else { break };
            if let Some(span) = files.get(&resolved).copied() {
                files.insert(name.clone(), span);
                break;
            }
            match links.get(&resolved) {
                Some(next) if seen.insert(resolved.clone()) => {
                    cur = resolved;
                    (target, symbolic) = next.clone();
                }
                _ => break,
            }
        }
    }
}

/// `target` taken relative to `base`, normalised lexically; `None` if absolute or above the root.
fn inside(base: &Path, target: &[u8]) -> Option<Vec<u8>> {
    let target = Path::new(OsStr::from_bytes(target));
    if target.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in base.join(target).components() {
        match c {
            Component::Normal(n) => out.push(n),
            // Above the root: outside the archive.
            Component::ParentDir => out.pop().then_some(())?,
            _ => {}
        }
    }
    Some(out.as_os_str().as_bytes().to_vec())
}


#[cfg(test)]
mod tests {
    use super::*;

    fn tar_file(dir: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let path = dir.join("a.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        path
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str, kind: tar::EntryType) {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        b.append_link(&mut h, name, target).unwrap();
    }

    #[test]
    fn members_and_links_resolve_inside_the_archive() {
        let t = tempfile::tempdir().unwrap();
        let path = tar_file(t.path(), |b| {
            file(b, "./abc/layer.tar", b"layer bytes");
            link(b, "def/layer.tar", "../abc/layer.tar", tar::EntryType::Symlink);
            link(b, "hard", "abc/layer.tar", tar::EntryType::Link);
            link(b, "chain", "def/layer.tar", tar::EntryType::Symlink);
            link(b, "escape", "../../etc/passwd", tar::EntryType::Symlink);
            link(b, "absolute", "/etc/passwd", tar::EntryType::Symlink);
            link(b, "loop1", "loop2", tar::EntryType::Symlink);
            link(b, "loop2", "loop1", tar::EntryType::Symlink);
            file(b, "manifest.json", b"[]");
        });
        let arc = Archive::open(&path, &t.path().join("spool")).unwrap();
        for name in ["abc/layer.tar", "def/layer.tar", "hard", "chain"] {
            assert_eq!(arc.read(name, 100).unwrap(), b"layer bytes", "{name}");
        }
        for name in ["escape", "absolute", "loop1", "./abc/layer.tar", "abc"] {
            assert!(!arc.has(name), "{name}");
        }
        assert_eq!(arc.size("manifest.json"), Some(2));
        assert!(arc.read("abc/layer.tar", 5).unwrap_err().to_string().contains("metadata file"));
        assert!(!t.path().join("spool").exists(), "a plain tar file is read in place");
    }

    #[test]
    fn truncated_and_garbage_archives_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = tar_file(t.path(), |b| {
            file(b, "first", b"1");
            file(b, "big", &vec![7u8; 10_000]);
        });
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..3000]).unwrap();
        match Archive::open(&path, &t.path().join("s1")) {
            Err(Error::Truncated { what, expected: Some(10_000), got: Some(got) }) => {
                assert!(what.contains("big") && got < 10_000, "{what} {got}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a truncated archive was accepted"),
        }
        std::fs::write(&path, &data[..512 + 512 + 100]).unwrap();
        assert!(matches!(Archive::open(&path, &t.path().join("s2")), Err(Error::Truncated { .. })));
        std::fs::write(&path, b"not a tar at all".repeat(100)).unwrap();
        let e = Archive::open(&path, &t.path().join("s3")).err().unwrap();
        assert!(e.to_string().contains("not a valid tar archive"), "{e}");
    }

    #[test]
    fn compressed_archives_and_streams_are_spooled() {
        let t = tempfile::tempdir().unwrap();
        let path = tar_file(t.path(), |b| file(b, "index.json", b"{}"));
        let plain = std::fs::read(&path).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let packed = t.path().join("a.tar.gz");
        std::fs::write(&packed, gz.finish().unwrap()).unwrap();
        let spool = t.path().join("spool");
        let arc = Archive::open(&packed, &spool).unwrap();
        assert_eq!(arc.read("index.json", 10).unwrap(), b"{}");
        assert_eq!(std::fs::read(&spool).unwrap(), plain);
        let arc = Archive::from_stream(&plain[..], &t.path().join("spool2")).unwrap();
        assert!(arc.has("index.json"));
    }

    #[test]
    fn a_layout_directory_has_its_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("layout");
        std::fs::create_dir_all(d.join("blobs/sha256")).unwrap();
        std::fs::write(d.join("index.json"), b"{}").unwrap();
        std::fs::write(d.join("blobs/sha256/aa"), b"blob").unwrap();
        std::fs::write(t.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), d.join("blobs/sha256/bb")).unwrap();
        let arc = Archive::open(&d, &t.path().join("spool")).unwrap();
        assert_eq!(arc.read("blobs/sha256/aa", 10).unwrap(), b"blob");
        assert_eq!(arc.size("index.json"), Some(2));
        for name in ["blobs/sha256/bb", "blobs", "./index.json", "../secret", ""] {
            assert!(!arc.has(name), "{name}");
        }
    }
}
