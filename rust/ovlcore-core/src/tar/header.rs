//! Writing tar headers: one fixed, deterministic encoding for every tar the core produces (layer
//! exports, image archives). ustar where the values fit, a PAX extended header before it where they do
//! not (long names and link targets, big sizes and ids, times before 1970, xattrs).

use tar::EntryType;

use crate::attrs::{self, Meta};
use crate::error::{Error, Result};

/// Tar's unit: headers and content are written in blocks of this many bytes.
const BLOCK: u64 = 512;

/// Zero bytes that pad content of `size` bytes to a whole block.
pub fn padding(size: u64) -> usize {
    ((BLOCK - (size % BLOCK)) % BLOCK) as usize
}

/// The end of an archive: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];

const USTAR_MAX_ID: u64 = 0o7777777;
const USTAR_MAX_SIZE: u64 = 0o77777777777;

/// Header blocks for one entry: a PAX extended header when a value does not fit ustar, then the ustar
/// header. Always the same bytes for the same input.
pub fn entry_header(
    name: &[u8],
    meta: &Meta,
    ty: EntryType,
    size: u64,
    link: Option<&[u8]>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut pax: Vec<(&[u8], Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_ustar();
    let (prefix, short) = split_ustar_name(name);
    {
        let u = h.as_ustar_mut().expect("ustar header");
        match short {
            Some(short) => {
                u.name[..short.len()].copy_from_slice(short);
                u.prefix[..prefix.len()].copy_from_slice(prefix);
            }
            None => {
                let cut = name.len().min(100);
                u.name[..cut].copy_from_slice(&name[..cut]);
                pax.push((b"path", name.to_vec()));
            }
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                u.linkname[..link.len()].copy_from_slice(link);
            } else {
                u.linkname.copy_from_slice(&link[..100]);
                pax.push((b"linkpath", link.to_vec()));
            }
        }
    }
    h.set_entry_type(ty);
    h.set_mode(meta.perm());
    if size > USTAR_MAX_SIZE {
        pax.push((b"size", size.to_string().into_bytes()));
        h.set_size(0);
    } else {
        h.set_size(size);
    }
    for (key, id, set) in [(&b"uid"[..], meta.uid, 0), (&b"gid"[..], meta.gid, 1)] {
        let id = id as u64;
        let stored = if id > USTAR_MAX_ID {
            pax.push((key, id.to_string().into_bytes()));
            0
        } else {
            id
        };
        if set == 0 {
            h.set_uid(stored);
        } else {
            h.set_gid(stored);
        }
    }
    let secs = meta.mtime.0;
    if !(0..=USTAR_MAX_SIZE as i64).contains(&secs) {
        pax.push((b"mtime", secs.to_string().into_bytes()));
        h.set_mtime(0);
    } else {
        h.set_mtime(secs as u64);
    }
    if matches!(ty, EntryType::Char | EntryType::Block) {
        h.set_device_major(attrs::major(meta.rdev)).map_err(Error::from)?;
        h.set_device_minor(attrs::minor(meta.rdev)).map_err(Error::from)?;
    }
    let mut xkeys: Vec<Vec<u8>> = Vec::new();
    for (k, _) in xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        xkeys.push(key);
    }
    for (key, (_, v)) in xkeys.iter().zip(xattrs) {
        pax.push((key, v.clone()));
    }
    h.set_cksum();

    let mut out = Vec::with_capacity(if pax.is_empty() { 512 } else { 2048 });
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (k, v) in &pax {
            pax_record(&mut records, k, v);
        }
        let mut ph = tar::Header::new_ustar();
        {
            let u = ph.as_ustar_mut().expect("ustar header");
            let n = b"././@PaxHeader";
            u.name[..n.len()].copy_from_slice(n);
        }
        ph.set_entry_type(EntryType::XHeader);
        ph.set_mode(0o644);
        ph.set_uid(0);
        ph.set_gid(0);
        ph.set_size(records.len() as u64);
        ph.set_cksum();
        out.extend_from_slice(ph.as_bytes());
        out.extend_from_slice(&records);
        out.resize(out.len() + padding(records.len() as u64), 0);
    }
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// `"%d %s=%s\n"` where the length counts itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() + base != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Split a name into ustar (prefix, name) fields, or `None` when it needs a PAX path.
fn split_ustar_name(name: &[u8]) -> (&[u8], Option<&[u8]>) {
    if name.len() <= 100 {
        return (&[], Some(name));
    }
    // Split at a '/' so that the prefix fits 155 bytes and the rest 100 (a trailing '/' stays in name).
    let search_end = name.len().saturating_sub(1);
    for i in (0..search_end).rev() {
        if name[i] == b'/' && i <= 155 && name.len() - i - 1 <= 100 && name.len() - i - 1 > 0 {
            return (&name[..i], Some(&name[i + 1..]));
        }
    }
    (&[], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"x");
        assert_eq!(v, b"9 path=x\n");
        let mut w = Vec::new();
        pax_record(&mut w, b"path", &[b'a'; 93]);
        let s = String::from_utf8(w.clone()).unwrap();
        let n: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, w.len());
    }

    #[test]
    fn long_names_split_or_go_pax() {
        let long = [b"d".repeat(120), b"/".to_vec(), b"f".repeat(50)].concat();
        let (p, n) = split_ustar_name(&long);
        assert_eq!(p.len(), 120);
        assert_eq!(n.unwrap().len(), 50);
        assert!(split_ustar_name(&b"x".repeat(300)).1.is_none());
    }
}

