//! The one reader of untrusted tar streams: entries come out validated, or the stream is refused.
//!
//! Every archive the core reads (a layer being imported, a `put_archive` upload, an image archive being
//! indexed) goes through [`read_entries`] or [`index_entries`]. An entry's name is cleaned (relative, no NUL, no `..`), its type is
//! one the layer format knows, its header fields and PAX records parse (times, ids in range, sizes),
//! link targets are checked, and inputs that would mean something else on disk (sparse files, a 0/0
//! character device, which is a whiteout) are refused. Callers only decide what an entry does.
//!
//! The stream is framed here, not by the `tar` crate (used for header fields only): the crate splits
//! PAX records on newlines, refusing values that hold one and reading the tail of such a value as a
//! record (a `path`, `linkpath` or `size` that other readers do not see).

use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use rustix::fs::Timespec;
use tar::EntryType;

use super::pax::{self, Record};
use crate::error::{Error, Result};
use crate::format::{clean_name, is_internal_xattr};

/// What an entry is, with what it points to for links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link and its target (non-empty, as written: it is resolved only inside the tree).
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry, by its clean name (never the root).
    HardLink(PathBuf),
    Fifo,
    Char,
    Block,
}

/// Everything the header says about an entry besides its name and kind.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    pub atime: Option<Timespec>,
    /// Device numbers (major, minor) of character and block devices.
    pub dev: (u32, u32),
    /// Content xattrs (the storage format's own are dropped).
    pub xattrs: Vec<(CString, Vec<u8>)>,
}

impl EntryMeta {
    pub fn times(&self) -> rustix::fs::Timestamps {
        rustix::fs::Timestamps { last_access: self.atime.unwrap_or(self.mtime), last_modification: self.mtime }
    }
}

/// One validated entry; reading it reads its content.
pub struct Entry<'a, R> {
    /// The clean relative name; empty for the archive's root (`./`), which is always a directory.
    pub name: PathBuf,
    pub kind: EntryKind,
    pub meta: EntryMeta,
    /// Bytes of content (regular files).
    pub size: u64,
    shown: String,
    offset: u64,
    /// Where the next header starts.
    end: u64,
    content: io::Take<&'a mut Source<R>>,
}

impl<R> Entry<'_, R> {
    /// An error about this entry, naming it as the archive does.
    pub fn bad(&self, why: &str) -> Error {
        Error::archive(format!("entry {:?}: {why}", self.shown))
    }

    /// The name as written in the archive (for messages and error paths).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Where the content starts in the stream.
    pub fn content_offset(&self) -> u64 {
        self.offset
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.content.read(buf)
    }
}

/// Read the tar stream `input`, handing each entry, validated, to `visit`. Returns the reader, positioned
/// just after the end-of-archive marker.
pub fn read_entries<R: Read>(input: R, visit: impl FnMut(&mut Entry<'_, R>) -> Result<()>) -> Result<R> {
    let mut source = Source { inner: input, pos: 0, skip: skip_by_reading::<R> };
    walk(&mut source, visit)?;
    Ok(source.inner)
}

/// [`read_entries`] for a seekable input, skipping over content by seeking instead of reading it.
pub fn index_entries<R: Read + Seek>(input: R, visit: impl FnMut(&mut Entry<'_, R>) -> Result<()>) -> Result<()> {
    walk(&mut Source { inner: input, pos: 0, skip: skip_by_seeking::<R> }, visit)
}

/// The input under the parser: where it is, and how it passes over bytes nobody reads.
struct Source<R> {
    inner: R,
    pos: u64,
    /// Pass over `n` bytes; returns how many there were (fewer only where the input ends).
    skip: fn(&mut R, u64) -> io::Result<u64>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Source<R> {
    /// Pass over `n` bytes that must be there.
    fn pass(&mut self, n: u64) -> Result<()> {
        let passed = (self.skip)(&mut self.inner, n)?;
        self.pos += passed;
        if passed < n {
            return Err(cut_short());
        }
        Ok(())
    }

    /// `n` bytes, or fewer where the input ends.
    fn up_to(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut data = Vec::with_capacity(n as usize);
        self.take(n).read_to_end(&mut data)?;
        Ok(data)
    }
}

fn skip_by_reading<R: Read>(input: &mut R, n: u64) -> io::Result<u64> {
    io::copy(&mut input.take(n), &mut io::sink())
}

fn skip_by_seeking<R: Seek>(input: &mut R, n: u64) -> io::Result<u64> {
    let by = i64::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "size overflow"))?;
    input.seek(SeekFrom::Current(by))?;
    Ok(n)
}

fn cut_short() -> Error {
    Error::Truncated { what: "the tar stream".into(), expected: None, got: None }
}

/// Tar's unit: a header is one block, content is padded to whole blocks.
const BLOCK: u64 = 512;

/// The bytes `size` bytes of content take in the stream.
fn in_blocks(size: u64) -> Result<u64> {
    size.checked_next_multiple_of(BLOCK).ok_or_else(size_overflow)
}

fn size_overflow() -> Error {
    Error::archive("size overflow")
}

/// The most data a PAX or GNU long-name header may hold (as Go's archive/tar): they are held in memory.
const MAX_EXTENSION: u64 = 1 << 20;

/// The headers that describe the entry after them, as read so far.
#[derive(Default)]
struct Extensions {
    pax: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Extensions {
    fn pending(&self) -> bool {
        self.pax.is_some() || self.long_name.is_some() || self.long_link.is_some()
    }
}

/// Frame the stream into entries: extension headers are read and applied to the entry they describe,
/// global headers skipped, and whatever of an entry's content `visit` leaves unread is passed over.
fn walk<R: Read>(source: &mut Source<R>, mut visit: impl FnMut(&mut Entry<'_, R>) -> Result<()>) -> Result<()> {
    let mut ext = Extensions::default();
    while let Some(header) = next_header(source, ext.pending())? {
        let slot = match header.entry_type() {
            EntryType::XHeader => &mut ext.pax,
            EntryType::GNULongName => &mut ext.long_name,
            EntryType::GNULongLink => &mut ext.long_link,
            EntryType::XGlobalHeader => {
                // Records for the whole archive, none of which the layer format uses. Extension
                // headers before it describe it, not the entry after it.
                let size = numeric(header.entry_size(), &header.as_old().size, "size")?;
                source.pass(in_blocks(size)?)?;
                ext = Extensions::default();
                continue;
            }
            _ => {
                let mut entry = validated(&header, &std::mem::take(&mut ext), source)?;
                let end = entry.end;
                visit(&mut entry)?;
                source.pass(end - source.pos)?;
                continue;
            }
        };
        if slot.is_some() {
            return Err(Error::archive("two extension headers of one kind for one entry"));
        }
        *slot = Some(extension(source, &header)?);
    }
    Ok(())
}

/// The next header block, `None` at the end of the archive (its marker, or the end of the input).
/// `pending`: extension headers were read, so the archive cannot end here.
fn next_header<R: Read>(source: &mut Source<R>, pending: bool) -> Result<Option<tar::Header>> {
    let block = source.up_to(BLOCK)?;
    if block.is_empty() && !pending {
        return Ok(None);
    }
    if block.len() as u64 != BLOCK {
        return Err(cut_short());
    }
    if block.iter().all(|b| *b == 0) {
        return match pending {
            true => Err(Error::archive("extension headers with no entry after them")),
            false => Ok(None),
        };
    }
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&block);
    // The checksum counts its own field as spaces.
    let sum: u32 = block[..148].iter().chain(&block[156..]).map(|b| *b as u32).sum::<u32>() + 8 * b' ' as u32;
    if header.cksum().ok() != Some(sum) {
        return Err(Error::archive("archive header checksum mismatch"));
    }
    Ok(Some(header))
}

/// The data of a PAX or GNU long-name header.
fn extension<R: Read>(source: &mut Source<R>, header: &tar::Header) -> Result<Vec<u8>> {
    let size = numeric(header.entry_size(), &header.as_old().size, "size")?;
    if size > MAX_EXTENSION {
        return Err(Error::archive(format!("an extension header of {size} bytes is too large")));
    }
    let data = source.up_to(size)?;
    if data.len() as u64 != size {
        return Err(cut_short());
    }
    source.pass(in_blocks(size)? - size)?;
    Ok(data)
}

/// The entry `header` describes, with the extension headers before it, validated.
fn validated<'a, R: Read>(header: &tar::Header, ext: &Extensions, source: &'a mut Source<R>) -> Result<Entry<'a, R>> {
    let records = pax::records(ext.pax.as_deref().unwrap_or_default());
    // A GNU long name wins over a PAX path, which wins over the header's (as in Go's archive/tar).
    let header_path = header.path_bytes();
    let pax_path = records.as_ref().ok().and_then(|r| pax::last(r, b"path"));
    let path = ext.long_name.as_deref().map(gnu_string).or(pax_path).unwrap_or(&header_path);
    let shown = String::from_utf8_lossy(path).into_owned();
    let about = |e: Error| e.about(&format!("entry {shown:?}"));
    let records = records.map_err(|why| about(Error::archive(format!("malformed PAX header: {why}"))))?;
    let header_link = header.link_name_bytes().unwrap_or_default();
    let link = ext.long_link.as_deref().map(gnu_string).or_else(|| pax::last(&records, b"linkpath")).unwrap_or(&header_link);
    let (name, kind, meta, size) = validate(header, path, link, &records).map_err(about)?;
    let offset = source.pos;
    let end = in_blocks(size).ok().and_then(|n| offset.checked_add(n)).ok_or_else(|| about(size_overflow()))?;
    Ok(Entry { name, kind, meta, size, shown, offset, end, content: source.take(size) })
}

/// A GNU long name or link: the data up to its terminating NUL.
fn gnu_string(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\0").unwrap_or(data)
}

fn validate(header: &tar::Header, path: &[u8], link: &[u8], records: &[Record<'_>]) -> Result<(PathBuf, EntryKind, EntryMeta, u64)> {
    let name = clean_name(path).map_err(Error::archive)?;
    let kind = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => {
            if link.is_empty() || link.contains(&0) {
                return Err(Error::archive("invalid symlink target"));
            }
            EntryKind::Symlink(link.to_vec())
        }
        EntryType::Link => {
            let target = clean_name(link).map_err(|why| Error::archive(format!("hard link target: {why}")))?;
            if target.as_os_str().is_empty() {
                return Err(Error::archive("hard link to the root"));
            }
            EntryKind::HardLink(target)
        }
        EntryType::Fifo => EntryKind::Fifo,
        EntryType::Char => EntryKind::Char,
        EntryType::Block => EntryKind::Block,
        EntryType::GNUSparse => return Err(Error::archive("sparse files are not supported")),
        other => return Err(Error::archive(format!("unsupported entry type {:?}", other.as_byte() as char))),
    };
    if name.as_os_str().is_empty() && kind != EntryKind::Dir {
        return Err(Error::archive("the root entry must be a directory"));
    }
    let meta = read_meta(header, records, &kind)?;
    if kind == EntryKind::Char && meta.dev == (0, 0) {
        return Err(Error::archive("a 0/0 character device is a whiteout in the layer format; use .wh. names"));
    }
    let size = match pax::last(records, b"size") {
        Some(v) => pax_number(v)?,
        None => numeric(header.entry_size(), &header.as_old().size, "size")?,
    };
    Ok((name, kind, meta, size))
}

/// The header fields and PAX records of an entry, every value checked.
fn read_meta(h: &tar::Header, records: &[Record<'_>], kind: &EntryKind) -> Result<EntryMeta> {
    let old = h.as_old();
    let perm = numeric(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let uid = numeric(h.uid(), &old.uid, "uid")?;
    let gid = numeric(h.gid(), &old.gid, "gid")?;
    let mtime = numeric(h.mtime(), &old.mtime, "mtime")?;
    let dev = if matches!(kind, EntryKind::Char | EntryKind::Block) {
        (h.device_major().ok().flatten().unwrap_or(0), h.device_minor().ok().flatten().unwrap_or(0))
    } else {
        (0, 0)
    };
    let mut meta = EntryMeta {
        perm,
        uid: u32::try_from(uid).map_err(|_| Error::archive("uid out of range"))?,
        gid: u32::try_from(gid).map_err(|_| Error::archive("gid out of range"))?,
        // GNU base-256 fields hold negative times in two's complement.
        mtime: Timespec { tv_sec: mtime as i64, tv_nsec: 0 },
        atime: None,
        dev,
        xattrs: Vec::new(),
    };
    for &(key, value) in records {
        let text = || std::str::from_utf8(value).map_err(|_| Error::archive("malformed PAX value"));
        match key {
            b"mtime" => meta.mtime = parse_time(text()?).ok_or_else(|| Error::archive("bad PAX mtime"))?,
            b"atime" => meta.atime = Some(parse_time(text()?).ok_or_else(|| Error::archive("bad PAX atime"))?),
            b"uid" | b"gid" => {
                let n = u32::try_from(pax_number(value)?).map_err(|_| Error::archive("PAX id out of range"))?;
                if key == b"uid" {
                    meta.uid = n;
                } else {
                    meta.gid = n;
                }
            }
            k if k.starts_with(b"GNU.sparse.") => return Err(Error::archive("sparse files are not supported")),
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = &k[b"SCHILY.xattr.".len()..];
                if !name.is_empty() && !is_internal_xattr(name) {
                    let cname = CString::new(name).map_err(|_| Error::archive("bad xattr name"))?;
                    meta.xattrs.push((cname, value.to_vec()));
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// A numeric header field; like Go's archive/tar, an empty one reads as 0, anything else must parse.
fn numeric(parsed: io::Result<u64>, raw: &[u8], what: &str) -> Result<u64> {
    match parsed {
        Ok(n) => Ok(n),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(Error::archive(format!("bad {what} field"))),
    }
}

/// A PAX decimal number (`size`, `uid`, `gid`).
fn pax_number(value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).ok_or_else(|| Error::archive("bad PAX number"))
}

/// A PAX time (`-1.5`, `1700000000.123456789`) as a normalised timespec (nanoseconds in 0..1e9).
fn parse_time(v: &str) -> Option<Timespec> {
    let (negative, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = secs.parse().ok()?;
    let mut nanos: i128 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += (b - b'0') as i128 * 10i128.pow(8 - i as u32);
    }
    let mut total = secs * 1_000_000_000 + nanos;
    if negative {
        total = -total;
    }
    let sec = i64::try_from(total.div_euclid(1_000_000_000)).ok()?;
    Some(Timespec { tv_sec: sec, tv_nsec: total.rem_euclid(1_000_000_000) as _ })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An extended header with these records (when there are any), a ustar header block for `name` of
    /// type `ty`, and the end marker.
    fn tar(name: &[u8], ty: u8, link: &[u8], pax: &[(&str, &[u8])]) -> Vec<u8> {
        archive(&records(pax), block(name, ty, link, 0), b"")
    }

    /// PAX records, each `"%d %s=%s\n"` with its length right.
    fn records(pax: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in pax {
            let rec = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
            let mut n = rec.len() + 1;
            while n != rec.len() + n.to_string().len() {
                n = rec.len() + n.to_string().len();
            }
            body.extend_from_slice(n.to_string().as_bytes());
            body.extend_from_slice(&rec);
        }
        body
    }

    /// An extended header holding `pax` (when not empty), `header` with `content`, and the end marker.
    fn archive(pax: &[u8], header: [u8; 512], content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !pax.is_empty() {
            out.extend_from_slice(&block(b"pax", b'x', b"", pax.len() as u64));
            out.extend_from_slice(pax);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    fn block(name: &[u8], ty: u8, link: &[u8], size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(EntryType::new(ty));
        h.set_mode(0o644);
        h.set_size(size);
        if ty == b'3' {
            h.set_device_major(0).unwrap();
            h.set_device_minor(0).unwrap();
        }
        h.set_cksum();
        *h.as_bytes()
    }

    fn first_error(data: &[u8]) -> String {
        match read_entries(data, |_| Ok(())) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_entries_are_refused_with_their_name() {
        let cases: &[(Vec<u8>, &str)] = &[
            (tar(b"../x", b'0', b"", &[]), "`..`"),
            (tar(b"/etc/x", b'0', b"", &[]), "absolute"),
            (tar(b"ok", b'0', b"", &[("path", b"a/../../x")]), "`..`"),
            (tar(b"s", b'S', b"", &[]), "sparse"),
            (tar(b"s", b'0', b"", &[("GNU.sparse.major", b"1")]), "sparse"),
            (tar(b"w", b'Z', b"", &[]), "unsupported entry type"),
            (tar(b"l", b'2', b"", &[]), "invalid symlink target"),
            (tar(b"h", b'1', b"/etc/shadow", &[]), "hard link target: absolute"),
            (tar(b"h", b'1', b"./", &[]), "hard link to the root"),
            (tar(b"c", b'3', b"", &[]), "0/0 character device"),
            (tar(b"./", b'0', b"", &[]), "root entry must be a directory"),
            (tar(b"u", b'0', b"", &[("uid", b"-1")]), "bad PAX number"),
            (tar(b"u", b'0', b"", &[("gid", b"99999999999")]), "out of range"),
            (tar(b"t", b'0', b"", &[("mtime", b"yesterday")]), "bad PAX mtime"),
            (tar(b"n", b'0', b"", &[("size", b"12abc")]), "bad PAX number"),
        ];
        for (data, why) in cases {
            let msg = first_error(data);
            assert!(msg.contains(why) && msg.contains("entry"), "{msg:?} should say {why:?}");
        }
    }

    #[test]
    fn valid_entries_come_out_clean() {
        let mut data = tar(b"./a//b/", b'5', b"", &[("mtime", b"1.5"), ("SCHILY.xattr.user.x", b"1"), ("SCHILY.xattr.trusted.overlay.opaque", b"y")]);
        data.truncate(data.len() - 1024);
        data.extend_from_slice(&tar(b"a/b/l", b'1', b"./a//b", &[]));
        let mut seen = Vec::new();
        read_entries(&data[..], |e| {
            seen.push((e.name.clone(), e.kind.clone(), e.meta.mtime.tv_nsec, e.meta.xattrs.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [(PathBuf::from("a/b"), EntryKind::Dir, 500_000_000, 1), (PathBuf::from("a/b/l"), EntryKind::HardLink(PathBuf::from("a/b")), 0, 0)]
        );
    }

    #[test]
    fn a_stream_cut_short_is_truncated() {
        let data = tar(b"f", b'0', b"", &[("path", b"long-name")]);
        for cut in [300, 700] {
            assert!(matches!(read_entries(&data[..cut], |_| Ok(())), Err(Error::Truncated { .. })), "cut at {cut}");
        }
        let garbage = [b"not a tar header ".repeat(40), vec![0; 1024]].concat();
        assert!(matches!(read_entries(&garbage[..], |_| Ok(())), Err(Error::InvalidArchive(_))));
    }

    /// What both readers make of `data`: per entry, name, kind, size, content offset, content, xattrs.
    type Seen = (PathBuf, EntryKind, u64, u64, Vec<u8>, Vec<(CString, Vec<u8>)>);

    fn entries(data: &[u8]) -> Vec<Seen> {
        let mut streamed = Vec::new();
        read_entries(data, |e| {
            let mut content = Vec::new();
            e.read_to_end(&mut content)?;
            streamed.push((e.name.clone(), e.kind.clone(), e.size, e.content_offset(), content, e.meta.xattrs.clone()));
            Ok(())
        })
        .unwrap();
        let mut indexed = Vec::new();
        index_entries(io::Cursor::new(data), |e| {
            indexed.push((e.name.clone(), e.kind.clone(), e.size, e.content_offset()));
            Ok(())
        })
        .unwrap();
        let summary: Vec<_> = streamed.iter().map(|(n, k, s, o, _, _)| (n.clone(), k.clone(), *s, *o)).collect();
        assert_eq!(summary, indexed, "reading and seeking frame the stream alike");
        streamed
    }

    fn xattr(name: &str, value: &[u8]) -> (CString, Vec<u8>) {
        (CString::new(name).unwrap(), value.to_vec())
    }

    #[test]
    fn pax_values_hold_newlines_and_any_byte() {
        let binary: Vec<u8> = (0..=255).collect();
        let long = [b"d/".repeat(60), b"f".to_vec()].concat();
        // The long path before and after the records with newlines.
        let before = records(&[("path", &long), ("SCHILY.xattr.user.nl", b"a\nb"), ("SCHILY.xattr.user.bin", &binary)]);
        let after = records(&[("SCHILY.xattr.user.nl", b"a\nb"), ("SCHILY.xattr.user.bin", &binary), ("path", &long)]);
        for body in [before, after] {
            let seen = entries(&archive(&body, block(b"short", b'0', b"", 0), b""));
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].0, PathBuf::from(std::str::from_utf8(&long).unwrap()));
            assert_eq!(seen[0].5, [xattr("user.nl", b"a\nb"), xattr("user.bin", &binary)]);
        }
    }

    #[test]
    fn a_pax_value_hides_no_record() {
        // Split on newlines, this value would read as `path`, `linkpath` and `size` records.
        let value = b"x\n17 path=../../up\n21 linkpath=/etc/evil\n12 size=1024\n";
        let body = records(&[("SCHILY.xattr.user.v", value)]);
        let mut data = archive(&body, block(b"l", b'2', b"harmless", 0), b"");
        data.truncate(data.len() - 1024);
        data.extend_from_slice(&archive(b"", block(b"next", b'0', b"", 2), b"hi"));
        let seen = entries(&data);
        let names: Vec<_> = seen.iter().map(|e| (e.0.clone(), e.1.clone(), e.4.clone())).collect();
        assert_eq!(names, [(PathBuf::from("l"), EntryKind::Symlink(b"harmless".to_vec()), vec![]), (PathBuf::from("next"), EntryKind::File, b"hi".to_vec())]);
        assert_eq!(seen[0].5, [xattr("user.v", value)]);
    }

    #[test]
    fn a_pax_size_after_a_value_with_newlines_frames_the_content() {
        // The header says 0 bytes (as for content beyond the octal field); the PAX size is the truth.
        let body = records(&[("SCHILY.xattr.user.nl", b"1\n2"), ("size", b"600")]);
        let content: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let mut data = archive(&body, block(b"f", b'0', b"", 0), &content);
        data.truncate(data.len() - 1024);
        data.extend_from_slice(&tar(b"g", b'0', b"", &[]));
        let seen = entries(&data);
        assert_eq!((seen[0].2, seen[0].3, &seen[0].4), (600, 1024 + 512, &content));
        assert_eq!((&seen[1].0, seen[1].3), (&PathBuf::from("g"), 1024 + 512 + 1024 + 512));
    }

    #[test]
    fn malformed_pax_records_are_refused_naming_the_entry() {
        // Every reason is tested with the parser (pax.rs); here, how a refusal reaches the caller.
        let cases: &[(&[u8], &str)] = &[
            (b"x9 path=a\n", "not a decimal number"),
            (b"99 path=a\n", "runs past the end"),
            (b"23 SCHILY.xattr.u.x=a\nb\n", "does not end with a newline"),
        ];
        for (body, why) in cases {
            let data = archive(body, block(b"f", b'0', b"", 0), b"");
            let err = read_entries(&data[..], |_| Ok(())).expect_err("accepted");
            let msg = err.to_string();
            assert!(matches!(err, Error::InvalidArchive(_)), "{msg}");
            assert!(msg.contains("entry \"f\": malformed PAX header: ") && msg.contains(why), "{msg:?} should say {why:?}");
        }
    }

    #[test]
    fn extension_headers_are_bounded_and_describe_an_entry() {
        let huge = block(b"pax", b'x', b"", (1 << 20) + 1);
        assert!(first_error(&[&huge[..], &[0; 1024]].concat()).contains("too large"));
        let twice = [archive(&records(&[("path", b"a")]), block(b"pax", b'x', b"", 9), b"9 path=b\n"), tar(b"f", b'0', b"", &[])].concat();
        assert!(first_error(&twice).contains("two extension headers"));
        let dangling = archive(b"", block(b"pax", b'x', b"", 9), b"9 path=b\n");
        assert!(first_error(&dangling).contains("no entry after them"));
        let cut = &dangling[..1024];
        assert!(matches!(read_entries(cut, |_| Ok(())), Err(Error::Truncated { .. })));
    }

    #[test]
    fn pax_times_normalise() {
        let t = parse_time("-1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 500_000_000));
        let t = parse_time("1700000000.123456789123").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 123_456_789));
        for bad in ["", "yesterday", "1.2.3", "-", ".5", "1e9"] {
            assert!(parse_time(bad).is_none(), "{bad:?}");
        }
    }
}
