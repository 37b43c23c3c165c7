//! Import → union view → export, on small archives built in the test.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ovlcore_core::{Kind, Privilege};
use ovlcore_core::sha256;
use ovlcore_core::{import_layer, ImportOptions, LayerTar};
use ovlcore_core::{Lower, View};

fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn import(tar: &[u8], dir: &Path, lower: Option<&Lower>) -> ovlcore_core::Result<String> {
    std::fs::create_dir_all(dir).unwrap();
    let split = std::fs::File::create(dir.with_extension("split")).unwrap();
    let opts = ImportOptions { lower, ..ImportOptions::default() };
    Ok(import_layer(tar, dir, Some(split), opts)?.diff_id)
}

#[test]
fn import_view_and_exact_reexport() {
    let t = tempfile::tempdir().unwrap();
    let base = tar_of(&[("etc/", None), ("etc/passwd", Some(b"root:x:0:0")), ("etc/hosts", Some(b"127.0.0.1")), ("usr/bin/tool", Some(b"#!"))]);
    let top = tar_of(&[("etc/.wh.hosts", Some(b"")), ("etc/motd", Some(b"hi")), ("usr/.wh..wh..opq", Some(b"")), ("usr/new", Some(b"n"))]);
    let l0 = t.path().join("l0");
    let l1 = t.path().join("l1");
    let d0 = import(&base, &l0, None).unwrap();
    assert_eq!(d0, sha256(&base));
    let lower0 = Lower::open(std::slice::from_ref(&l0), Privilege::current()).unwrap();
    let d1 = import(&top, &l1, Some(&lower0)).unwrap();
    assert_eq!(d1, sha256(&top));

    let lower = Arc::new(Lower::open(&[l1.clone(), l0.clone()], Privilege::current()).unwrap());
    let view = View::new(lower, None, Vec::new()).unwrap();
    let names = |p: &str| view.list(Path::new(p)).unwrap().into_iter().map(|(n, _)| n.into_string().unwrap()).collect::<Vec<_>>();
    assert_eq!(names("/etc"), ["motd", "passwd"]);
    assert_eq!(names("/usr"), ["new"]);
    assert!(view.stat(Path::new("/etc/hosts"), true).unwrap_err().is_errno(libc::ENOENT));
    assert_eq!(view.stat(Path::new("/etc/passwd"), true).unwrap().size, 10);
    assert_eq!(view.stat(Path::new("/etc"), true).unwrap().kind(), Kind::Dir);

    // Replaying the tar-split gives back the very same bytes.
    let mut out = Vec::new();
    LayerTar::from_split(&l1, std::fs::File::open(l1.with_extension("split")).unwrap()).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, top);
}

#[test]
fn walked_export_is_deterministic_and_reimports() {
    let t = tempfile::tempdir().unwrap();
    let base = tar_of(&[("a/", None), ("a/x", Some(b"xx")), ("b", Some(&[7u8; 3000]))]);
    let l0 = t.path().join("l0");
    import(&base, &l0, None).unwrap();
    let read = |p: &PathBuf| {
        let mut v = Vec::new();
        LayerTar::walk(p, Privilege::current(), None).unwrap().read_to_end(&mut v).unwrap();
        v
    };
    let first = read(&l0);
    assert_eq!(first, read(&l0));
    let l2 = t.path().join("l2");
    import(&first, &l2, None).unwrap();
    assert_eq!(read(&l2), first);
    let mut names = Vec::new();
    for e in tar::Archive::new(&first[..]).entries().unwrap() {
        names.push(String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap());
    }
    assert_eq!(names, ["a/", "a/x", "b"]);
}

#[test]
fn hostile_names_are_refused() {
    let t = tempfile::tempdir().unwrap();
    for (i, name) in ["../x", "a/../../x", "/etc/x"].iter().enumerate() {
        // tar::Builder refuses such names, so write the header bytes by hand.
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(b"x");
        data.resize(512 * 4, 0);
        let dir = t.path().join(format!("h{i}"));
        let err = import(&data, &dir, None).unwrap_err();
        assert!(err.to_string().contains("invalid archive"), "{name}: {err}");
    }
    assert!(!t.path().join("x").exists());
}
