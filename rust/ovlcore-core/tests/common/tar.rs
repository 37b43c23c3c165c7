//! Layer tars built in memory, byte for byte under the test's control: ordinary entries as Python's
//! `tarfile` writes them (ustar headers, PAX records or GNU extensions only where a value needs them), and
//! raw headers with any field content for hostile or malformed input.

pub const FIXED_MTIME: i64 = 1_600_000_000;
pub const EOF_BLOCKS: [u8; 1024] = [0; 1024];

const MAX_OCTAL_ID: u64 = 0o7777777;
const MAX_OCTAL_TIME: i64 = 0o77777777777;

/// How long names, links and big numbers are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// PAX records (`path`, `linkpath`, `uid`, `mtime`, ...) where ustar fields do not suffice.
    Pax,
    /// GNU long-name/long-link entries and base-256 numbers.
    Gnu,
    /// Plain ustar: long names split into prefix and name.
    Ustar,
}

/// An entry's metadata; the mode defaults to the kind's usual one.
#[derive(Clone, Debug)]
pub struct Attr {
    pub mode: Option<u32>,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub pax: Vec<(String, Vec<u8>)>,
    pub uname: String,
    pub gname: String,
}

impl Default for Attr {
    fn default() -> Self {
        Attr { mode: None, uid: 0, gid: 0, mtime: FIXED_MTIME, xattrs: Vec::new(), pax: Vec::new(), uname: String::new(), gname: String::new() }
    }
}

impl Attr {
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: i64) -> Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// A PAX record written as given (`mtime` = `"1600000000.5"`, `uid`, or anything malformed).
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax.push((key.into(), value.as_ref().to_vec()));
        self
    }

    pub fn names(mut self, uname: &str, gname: &str) -> Self {
        self.uname = uname.into();
        self.gname = gname.into();
        self
    }
}

/// `Attr` with a mode.
pub fn mode(mode: u32) -> Attr {
    Attr::default().mode(mode)
}

/// `Attr` with an owner.
pub fn owner(uid: u64, gid: u64) -> Attr {
    Attr::default().owner(uid, gid)
}

/// A tar archive, entries appended in call order.
#[derive(Clone)]
pub struct Tar {
    format: Format,
    out: Vec<u8>,
}

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    pub fn new() -> Tar {
        Tar::with_format(Format::Pax)
    }

    pub fn with_format(format: Format) -> Tar {
        Tar { format, out: Vec::new() }
    }

    pub fn dir(self, name: &str) -> Tar {
        self.dir_with(name, Attr::default())
    }

    pub fn dir_with(self, name: &str, a: Attr) -> Tar {
        let name = if name == "." || name == "./" { name.to_string() } else { format!("{}/", name.trim_end_matches('/')) };
        self.entry(&name, b'5', 0o755, &a, b"", "", (0, 0))
    }

    pub fn file(self, name: &str, data: impl AsRef<[u8]>) -> Tar {
        self.file_with(name, data, Attr::default())
    }

    pub fn file_with(self, name: &str, data: impl AsRef<[u8]>, a: Attr) -> Tar {
        self.entry(name, b'0', 0o644, &a, data.as_ref(), "", (0, 0))
    }

    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.symlink_with(name, target, Attr::default())
    }

    pub fn symlink_with(self, name: &str, target: &str, a: Attr) -> Tar {
        self.entry(name, b'2', 0o777, &a, b"", target, (0, 0))
    }

    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.entry(name, b'1', 0o644, &Attr::default(), b"", target, (0, 0))
    }

    pub fn fifo(self, name: &str) -> Tar {
        self.fifo_with(name, Attr::default())
    }

    pub fn fifo_with(self, name: &str, a: Attr) -> Tar {
        self.entry(name, b'6', 0o644, &a, b"", "", (0, 0))
    }

    pub fn chardev(self, name: &str, major: u32, minor: u32) -> Tar {
        self.chardev_with(name, major, minor, Attr::default())
    }

    pub fn chardev_with(self, name: &str, major: u32, minor: u32, a: Attr) -> Tar {
        self.entry(name, b'3', 0o666, &a, b"", "", (major, minor))
    }

    pub fn blockdev_with(self, name: &str, major: u32, minor: u32, a: Attr) -> Tar {
        self.entry(name, b'4', 0o660, &a, b"", "", (major, minor))
    }

    /// `dir/.wh.NAME`, deleting `path` in the layers below.
    pub fn whiteout(self, path: &str) -> Tar {
        let path = path.trim_matches('/');
        let name = match path.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.wh.{n}"),
            None => format!(".wh.{path}"),
        };
        self.file_with(&name, b"", mode(0o600).mtime(0))
    }

    /// `dir/.wh..wh..opq`, making `dir` opaque.
    pub fn opaque(self, dir: &str) -> Tar {
        let dir = dir.trim_matches('/');
        let name = if dir.is_empty() { ".wh..wh..opq".to_string() } else { format!("{dir}/.wh..wh..opq") };
        self.file_with(&name, b"", mode(0o600).mtime(0))
    }

    /// Bytes appended as they are (headers from [`raw_header`], padded content).
    pub fn raw(mut self, bytes: &[u8]) -> Tar {
        self.out.extend_from_slice(bytes);
        self
    }

    /// The archive with its two end-of-archive blocks.
    pub fn bytes(self) -> Vec<u8> {
        let mut out = self.out;
        out.extend_from_slice(&EOF_BLOCKS);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(mut self, name: &str, typeflag: u8, default_mode: u32, a: &Attr, data: &[u8], link: &str, dev: (u32, u32)) -> Tar {
        let gnu = self.format == Format::Gnu;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (mut name_field, mut prefix) = (name.as_bytes(), &b""[..]);
        if name.len() > 100 {
            match self.format {
                Format::Pax => pax.push(("path".into(), name.into())),
                Format::Gnu => self.out.extend(long_entry(b'L', name.as_bytes())),
                Format::Ustar => {
                    let (p, n) = ustar_split(name.as_bytes()).expect("the name fits no ustar prefix split");
                    (prefix, name_field) = (p, n);
                }
            }
        }
        if link.len() > 100 {
            match self.format {
                Format::Pax => pax.push(("linkpath".into(), link.into())),
                Format::Gnu => self.out.extend(long_entry(b'K', link.as_bytes())),
                Format::Ustar => panic!("a ustar link target has at most 100 bytes"),
            }
        }
        let (mut uid, mut gid, mut mtime) = (a.uid, a.gid, a.mtime);
        if !gnu {
            if uid > MAX_OCTAL_ID {
                pax.push(("uid".into(), uid.to_string().into_bytes()));
                uid = 0;
            }
            if gid > MAX_OCTAL_ID {
                pax.push(("gid".into(), gid.to_string().into_bytes()));
                gid = 0;
            }
            if !(0..=MAX_OCTAL_TIME).contains(&mtime) {
                pax.push(("mtime".into(), mtime.to_string().into_bytes()));
                mtime = 0;
            }
        }
        for (k, v) in &a.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        pax.extend(a.pax.iter().cloned());
        if !pax.is_empty() {
            self.out.extend(pax_header(&pax));
        }
        let h = RawHeader {
            typeflag,
            size: data.len() as u64,
            mode: a.mode.unwrap_or(default_mode),
            uid,
            gid,
            mtime,
            linkname: &link.as_bytes()[..link.len().min(100)],
            uname: a.uname.as_bytes(),
            gname: a.gname.as_bytes(),
            dev,
            prefix,
            gnu,
            ..RawHeader::default()
        };
        self.out.extend(raw_header(&name_field[..name_field.len().min(100)], &h));
        self.out.extend(pad(data));
        self
    }
}

/// The fields of one header block; `fields` replaces a numeric field's bytes (`"mode"`, `"uid"`, `"gid"`,
/// `"size"`, `"mtime"`) for malformed values, `checksum` forces the checksum.
#[derive(Clone, Debug)]
pub struct RawHeader<'a> {
    pub typeflag: u8,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub linkname: &'a [u8],
    pub uname: &'a [u8],
    pub gname: &'a [u8],
    pub dev: (u32, u32),
    pub prefix: &'a [u8],
    /// The GNU magic (and base-256 numbers) instead of POSIX ustar.
    pub gnu: bool,
    pub fields: &'a [(&'a str, &'a [u8])],
    pub checksum: Option<u32>,
}

impl Default for RawHeader<'_> {
    fn default() -> Self {
        RawHeader {
            typeflag: b'0',
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: FIXED_MTIME,
            linkname: b"",
            uname: b"",
            gname: b"",
            dev: (0, 0),
            prefix: b"",
            gnu: false,
            fields: &[],
            checksum: None,
        }
    }
}

/// One 512-byte header block with any content (names up to 100 bytes, prefixes up to 155).
pub fn raw_header(name: &[u8], h: &RawHeader<'_>) -> Vec<u8> {
    assert!(name.len() <= 100 && h.linkname.len() <= 100 && h.prefix.len() <= 155);
    let mut b = vec![0u8; 512];
    let put = |b: &mut Vec<u8>, at: usize, width: usize, v: &[u8]| {
        let n = v.len().min(width);
        b[at..at + n].copy_from_slice(&v[..n]);
    };
    let field = |key: &str, value: i128, width: usize| -> Vec<u8> {
        match h.fields.iter().find(|(k, _)| *k == key) {
            Some((_, raw)) => raw.to_vec(),
            None => number(value, width, h.gnu),
        }
    };
    put(&mut b, 0, 100, name);
    put(&mut b, 100, 8, &field("mode", h.mode as i128, 8));
    put(&mut b, 108, 8, &field("uid", h.uid as i128, 8));
    put(&mut b, 116, 8, &field("gid", h.gid as i128, 8));
    put(&mut b, 124, 12, &field("size", h.size as i128, 12));
    put(&mut b, 136, 12, &field("mtime", h.mtime as i128, 12));
    b[156] = h.typeflag;
    put(&mut b, 157, 100, h.linkname);
    put(&mut b, 257, 8, if h.gnu { b"ustar  \0" } else { b"ustar\x0000" });
    put(&mut b, 265, 32, h.uname);
    put(&mut b, 297, 32, h.gname);
    put(&mut b, 329, 8, &number(h.dev.0 as i128, 8, false));
    put(&mut b, 337, 8, &number(h.dev.1 as i128, 8, false));
    put(&mut b, 345, 155, h.prefix);
    b[148..156].copy_from_slice(b"        ");
    let sum = h.checksum.unwrap_or_else(|| b.iter().map(|x| *x as u32).sum());
    put(&mut b, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    b
}

/// A numeric field as tarfile writes it: octal with a NUL, else (GNU) base-256, two's complement.
fn number(value: i128, width: usize, gnu: bool) -> Vec<u8> {
    let digits = width as u32 - 1;
    if (0..8i128.pow(digits)).contains(&value) {
        let mut v = format!("{value:0w$o}", w = digits as usize).into_bytes();
        v.push(0);
        return v;
    }
    assert!(gnu, "{value} does not fit a ustar field of {width} bytes");
    let mut v = vec![if value < 0 { 0xff } else { 0x80 }];
    let mut n = if value < 0 { 256i128.pow(width as u32) + value } else { value };
    let mut tail = vec![0u8; width - 1];
    for byte in tail.iter_mut().rev() {
        *byte = (n & 0xff) as u8;
        n >>= 8;
    }
    v.extend(tail);
    v
}

/// A PAX extended header (type `x`) with exactly these records.
pub fn pax_header(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    pax_block(b'x', records)
}

/// A PAX global header (type `g`).
pub fn global_pax_header(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    pax_block(b'g', records)
}

/// One PAX record, `"%d %s=%s\n"`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut n = rest.len() + 1;
    while n != rest.len() + n.to_string().len() {
        n = rest.len() + n.to_string().len();
    }
    [n.to_string().into_bytes(), rest].concat()
}

fn pax_block(typeflag: u8, records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let h = RawHeader { typeflag, size: body.len() as u64, ..RawHeader::default() };
    let mut out = raw_header(b"././@PaxHeader", &h);
    out.extend(pad(&body));
    out
}

/// A GNU long name (`L`) or long link (`K`) entry.
fn long_entry(typeflag: u8, value: &[u8]) -> Vec<u8> {
    let mut data = value.to_vec();
    data.push(0);
    let h = RawHeader { typeflag, size: data.len() as u64, mode: 0, mtime: 0, gnu: true, ..RawHeader::default() };
    let mut out = raw_header(b"././@LongLink", &h);
    out.extend(pad(&data));
    out
}

/// `data` padded with NULs to a whole number of blocks.
pub fn pad(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// Split a name into ustar (prefix, name) at a `/`, the name as long as possible (as tarfile does; a
/// directory's name may be left empty, its trailing `/` ending the prefix).
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    (0..name.len()).filter(|&i| name[i] == b'/').find_map(|i| {
        let (p, n) = (&name[..i], &name[i + 1..]);
        (p.len() <= 155 && n.len() <= 100).then_some((p, n))
    })
}
