//! The one reader of untrusted tar streams: entries come out validated, or the stream is refused.
//!
//! Every archive the core reads (a layer being imported, a `put_archive` upload, an image archive being
//! indexed) goes through [`read_entries`] or [`index_entries`]. An entry's name is cleaned (relative, no NUL, no `..`), its type is
//! one the layer format knows, its header fields and PAX records parse (times, ids in range, sizes),
//! link targets are checked, and inputs that would mean something else on disk (sparse files, a 0/0
//! character device, which is a whiteout) are refused. Callers only decide what an entry does.

use std::cell::Cell;
use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::rc::Rc;

use rustix::fs::Timespec;
use tar::EntryType;

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
pub struct Entry<'a, R: Read> {
    /// The clean relative name; empty for the archive's root (`./`), which is always a directory.
    pub name: PathBuf,
    pub kind: EntryKind,
    pub meta: EntryMeta,
    /// Bytes of content (regular files).
    pub size: u64,
    shown: String,
    data: tar::Entry<'a, R>,
}

impl<R: Read> Entry<'_, R> {
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
        self.data.raw_file_position()
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

/// Read the tar stream `input`, handing each entry, validated, to `visit`. Returns the reader, positioned
/// just after the end-of-archive marker.
pub fn read_entries<R: Read>(input: R, mut visit: impl FnMut(&mut Entry<'_, Watched<R>>) -> Result<()>) -> Result<R> {
    let (reader, ended) = Watched::new(input);
    let mut archive = tar::Archive::new(reader);
    for raw in archive.entries()? {
        if let Some(mut entry) = validated(raw, &ended)? {
            visit(&mut entry)?;
        }
    }
    Ok(archive.into_inner().inner)
}

/// [`read_entries`] for a seekable input, skipping over content by seeking instead of reading it.
pub fn index_entries<R: Read + Seek>(input: R, mut visit: impl FnMut(&mut Entry<'_, Watched<R>>) -> Result<()>) -> Result<()> {
    let (reader, ended) = Watched::new(input);
    let mut archive = tar::Archive::new(reader);
    for raw in archive.entries_with_seek()? {
        if let Some(mut entry) = validated(raw, &ended)? {
            visit(&mut entry)?;
        }
    }
    Ok(())
}

/// One entry from the tar parser, validated; `None` for extension headers (already applied by the
/// parser to the entry that follows them).
fn validated<'a, R: Read>(raw: io::Result<tar::Entry<'a, R>>, ended: &Cell<bool>) -> Result<Option<Entry<'a, R>>> {
    let mut data = match raw {
        Ok(e) => e,
        // A header cut short, or extension headers with no entry after them.
        Err(_) if ended.get() => return Err(Error::Truncated { what: "the tar stream".into(), expected: None, got: None }),
        Err(e) => return Err(e.into()),
    };
    if matches!(
        data.header().entry_type(),
        EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
    ) {
        return Ok(None);
    }
    let shown = String::from_utf8_lossy(&data.path_bytes()).into_owned();
    let (name, kind, meta) = validate(&mut data).map_err(|e| e.about(&format!("entry {shown:?}")))?;
    Ok(Some(Entry { name, kind, meta, size: data.size(), shown, data }))
}

/// The reader under the tar parser, noting when its input has ended: a parse error after that is a
/// stream cut short.
pub struct Watched<R> {
    inner: R,
    ended: Rc<Cell<bool>>,
}

impl<R> Watched<R> {
    fn new(inner: R) -> (Self, Rc<Cell<bool>>) {
        let ended = Rc::new(Cell::new(false));
        (Watched { inner, ended: ended.clone() }, ended)
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.set(true);
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for Watched<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn validate<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(PathBuf, EntryKind, EntryMeta)> {
    let name = clean_name(&entry.path_bytes()).map_err(Error::archive)?;
    let link = || entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
    let kind = match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => {
            let target = link();
            if target.is_empty() || target.contains(&0) {
                return Err(Error::archive("invalid symlink target"));
            }
            EntryKind::Symlink(target)
        }
        EntryType::Link => {
            let target = clean_name(&link()).map_err(|why| Error::archive(format!("hard link target: {why}")))?;
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
    let meta = read_meta(entry, &kind)?;
    if kind == EntryKind::Char && meta.dev == (0, 0) {
        return Err(Error::archive("a 0/0 character device is a whiteout in the layer format; use .wh. names"));
    }
    Ok((name, kind, meta))
}

/// The header fields and PAX records of an entry, every value checked.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, kind: &EntryKind) -> Result<EntryMeta> {
    let h = entry.header();
    // Like Go's archive/tar, an empty numeric field reads as 0; anything else must parse.
    let old = h.as_old();
    let field = |v: io::Result<u64>, raw: &[u8], what: &str| match v {
        Ok(n) => Ok(n),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(Error::archive(format!("bad {what} field"))),
    };
    let perm = field(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let uid = field(h.uid(), &old.uid, "uid")?;
    let gid = field(h.gid(), &old.gid, "gid")?;
    let mtime = field(h.mtime(), &old.mtime, "mtime")?;
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
    let Some(exts) = entry.pax_extensions()? else { return Ok(meta) };
    for ext in exts {
        let ext = ext.map_err(|_| Error::archive("malformed PAX header"))?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        let text = || std::str::from_utf8(value).map_err(|_| Error::archive("malformed PAX value"));
        match key {
            b"mtime" => meta.mtime = parse_time(text()?).ok_or_else(|| Error::archive("bad PAX mtime"))?,
            b"atime" => meta.atime = Some(parse_time(text()?).ok_or_else(|| Error::archive("bad PAX atime"))?),
            // The tar reader already applies the size (refused here when it does not parse).
            b"size" => {
                text()?.parse::<u64>().map_err(|_| Error::archive("bad PAX number"))?;
            }
            b"uid" | b"gid" => {
                let n: u64 = text()?.parse().map_err(|_| Error::archive("bad PAX number"))?;
                let n = u32::try_from(n).map_err(|_| Error::archive("PAX id out of range"))?;
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

    /// A ustar header block for `name` of type `ty`, then the given extra blocks and the end marker.
    fn tar(name: &[u8], ty: u8, link: &[u8], pax: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in pax {
                let rec = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
                let mut n = rec.len() + 1;
                n = rec.len() + n.to_string().len();
                body.extend_from_slice(n.to_string().as_bytes());
                body.extend_from_slice(&rec);
            }
            out.extend_from_slice(&block(b"pax", b'x', b"", body.len() as u64));
            out.extend_from_slice(&body);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&block(name, ty, link, 0));
        out.extend_from_slice(&[0; 1024]);
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
