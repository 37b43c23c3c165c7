//! OCI layer tars applied in memory, as image-spec `layer.md` says (opaque markers and whiteouts delete
//! from the layers below, a directory over a directory merges, anything else replaces), independently of
//! the core's importer; and the same description read from a merged view, to compare the two.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use super::stack::Fs;
use super::{makedev, Kind};

/// One path as a layer tar describes it; times in whole seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Files only.
    pub data: Option<Vec<u8>>,
    /// Symlinks only.
    pub link: Option<String>,
    /// Devices only.
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Path (`/a/b`, the root left out) → entry.
pub type Model = BTreeMap<String, Entry>;

/// What one tar member says, read before applying it.
struct Member {
    path: String,
    kind: tar::EntryType,
    link: String,
    entry: Entry,
}

fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8(raw.to_vec()).expect("UTF-8 name");
    let s = s.trim_start_matches("./").trim_matches('/');
    format!("/{s}")
}

/// PAX records by their length prefix (values may hold any byte, newlines included).
fn pax_records(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(space) = data.iter().position(|b| *b == b' ') {
        let len: usize = std::str::from_utf8(&data[..space]).unwrap().parse().unwrap();
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').unwrap();
        out.push((String::from_utf8(record[..eq].to_vec()).unwrap(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    out
}

/// The members of a tar, read raw: PAX records and GNU long names applied here, so that the model
/// shares no parsing with the core.
fn members(blob: &[u8]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(blob);
    let (mut pax, mut long_name, mut long_link) = (Vec::new(), None, None);
    for e in archive.entries().expect("a tar").raw(true) {
        let mut e = e.expect("a tar entry");
        let h = e.header().clone();
        let kind = h.entry_type();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        match kind {
            tar::EntryType::XHeader => {
                pax = pax_records(&data);
                continue;
            }
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::GNULongName => {
                long_name = Some(text(data.strip_suffix(b"\0").unwrap_or(&data)));
                continue;
            }
            tar::EntryType::GNULongLink => {
                long_link = Some(text(data.strip_suffix(b"\0").unwrap_or(&data)));
                continue;
            }
            _ => {}
        }
        let record = |key: &str| pax.iter().find(|(k, _)| k == key).map(|(_, v)| text(v));
        let path = record("path").or(long_name.take()).unwrap_or_else(|| text(&h.path_bytes()));
        let link = record("linkpath").or(long_link.take()).unwrap_or_else(|| h.link_name_bytes().map(|l| text(&l)).unwrap_or_default());
        let uid = record("uid").map_or_else(|| h.uid().unwrap(), |v| v.parse().unwrap());
        let gid = record("gid").map_or_else(|| h.gid().unwrap(), |v| v.parse().unwrap());
        let mtime = record("mtime").map_or_else(|| h.mtime().unwrap() as i64, |v| v.split('.').next().unwrap().parse().unwrap());
        let mut xattrs: Vec<(String, Vec<u8>)> =
            pax.iter().filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.clone()))).collect();
        xattrs.sort();
        pax.clear();
        let (ek, rdev) = match kind {
            tar::EntryType::Directory => (Kind::Dir, 0),
            tar::EntryType::Symlink => (Kind::Symlink, 0),
            tar::EntryType::Char => (Kind::Char, device(&h)),
            tar::EntryType::Block => (Kind::Block, device(&h)),
            tar::EntryType::Fifo => (Kind::Fifo, 0),
            _ => (Kind::File, 0),
        };
        let entry = Entry {
            kind: ek,
            mode: h.mode().unwrap() & 0o7777,
            uid,
            gid,
            mtime,
            data: (ek == Kind::File).then_some(data),
            link: (ek == Kind::Symlink).then(|| link.clone()),
            rdev,
            xattrs,
        };
        out.push(Member { path: clean(path.as_bytes()), kind, link, entry });
    }
    out
}

fn device(h: &tar::Header) -> u64 {
    makedev(h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap())
}

fn parent_and_base(path: &str) -> (&str, &str) {
    let (d, b) = path.rsplit_once('/').unwrap();
    (if d.is_empty() { "/" } else { d }, b)
}

fn drop_tree(model: &mut Model, path: &str) {
    let below = format!("{}/", path.trim_end_matches('/'));
    model.retain(|k, _| k != path && !k.starts_with(&below));
}

/// The metadata of a directory a layer implies (a parent with no entry of its own): root's, 0755, made
/// at import time (`mtime` unknown).
fn implied_dir() -> Entry {
    Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: i64::MIN, data: None, link: None, rdev: 0, xattrs: Vec::new() }
}

/// Apply layer tars (bottom first). Per layer, deletions act first and on the layers below only (an
/// opaque marker empties its directory, a whiteout removes its name); then entries in tar order: parents
/// without an entry are made, a directory over a directory merges, anything else replaces. Hard links become copies of their target's entry; the map of which path was a hard
/// link to which is returned too.
pub fn apply<T: AsRef<[u8]>>(layers: &[T]) -> (Model, BTreeMap<String, String>) {
    let mut model = Model::new();
    let mut hard = BTreeMap::new();
    for blob in layers {
        let ms: Vec<Member> = members(blob.as_ref()).into_iter().filter(|m| m.path != "/").collect();
        for m in &ms {
            let (dir, base) = parent_and_base(&m.path);
            if base == ".wh..wh..opq" {
                let below = format!("{}/", dir.trim_end_matches('/'));
                model.retain(|k, _| !k.starts_with(&below));
            } else if let Some(name) = base.strip_prefix(".wh.") {
                drop_tree(&mut model, &format!("{}/{name}", dir.trim_end_matches('/')));
            }
        }
        let mut made = BTreeSet::new();
        for m in ms {
            let (dir, base) = parent_and_base(&m.path);
            let mut implied = ancestors(&m.path);
            if base == ".wh..wh..opq" {
                implied.push(dir.to_string());
            }
            // An implied directory replaces a lower non-directory, and tops a lower directory with its
            // own metadata (the layer's directory is what the merge shows).
            for a in implied {
                if made.insert(a.clone()) {
                    if model.get(&a).is_none_or(|o| o.kind != Kind::Dir) {
                        drop_tree(&mut model, &a);
                    }
                    model.insert(a, implied_dir());
                }
            }
            if base.starts_with(".wh.") {
                continue;
            }
            let merge = m.kind == tar::EntryType::Directory && model.get(&m.path).is_some_and(|o| o.kind == Kind::Dir);
            if !merge {
                drop_tree(&mut model, &m.path);
            }
            let entry = if m.kind == tar::EntryType::Link {
                let target = clean(m.link.as_bytes());
                hard.insert(m.path.clone(), target.clone());
                model[&target].clone()
            } else {
                m.entry
            };
            made.insert(m.path.clone());
            model.insert(m.path, entry);
        }
    }
    (model, hard)
}

/// `/a`, `/a/b` for `/a/b/c`.
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (1..parts.len()).map(|i| format!("/{}", parts[..i].join("/"))).collect()
}

/// The same description read from a merged view (the root left out).
pub fn of_view(fs: &Fs) -> Model {
    fs.tree("/")
        .into_iter()
        .filter(|(p, _)| p != "/")
        .map(|(p, n)| {
            let e = Entry {
                kind: n.kind,
                mode: n.perm,
                uid: n.uid as u64,
                gid: n.gid as u64,
                mtime: n.mtime_ns.div_euclid(1_000_000_000) as i64,
                data: if n.kind == Kind::File { n.content.clone() } else { None },
                link: if n.kind == Kind::Symlink { Some(String::from_utf8(n.content.clone().unwrap()).unwrap()) } else { None },
                rdev: n.rdev,
                xattrs: n.xattrs,
            };
            (p, e)
        })
        .collect()
}
