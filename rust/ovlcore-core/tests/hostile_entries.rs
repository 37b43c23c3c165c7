//! Hostile and malformed layer tars: each is refused as an invalid archive whose message names the
//! offending entry, and nothing is written outside the layer directory; hostile content that is legal
//! (links pointing out) stays inside the container when read or written (test_bad_archives.py,
//! test_hostile.py).

mod common;

use std::io::Write;

use common::stack::SECRET;
use common::tar::{pad, pax_header, pax_record};
use common::*;

/// A header of any name with `size` bytes of content.
fn raw(name: &str, size: u64) -> Vec<u8> {
    raw_header(name.as_bytes(), &RawHeader { size, ..RawHeader::default() })
}

fn raw_typed(name: &str, typeflag: u8, linkname: &str) -> Vec<u8> {
    raw_header(name.as_bytes(), &RawHeader { typeflag, linkname: linkname.as_bytes(), ..RawHeader::default() })
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    pax_header(&records.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect::<Vec<_>>())
}

/// Bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The tar made by `tar` (given the stack, for paths of its outside directory) is refused in every
/// convention, naming `entry`.
fn refused(tar: impl Fn(&Stack) -> Vec<u8>, entry: Option<&str>) -> Vec<String> {
    privileges()
        .into_iter()
        .map(|p| {
            let mut s = Stack::new(p);
            let t = tar(&s);
            s.refuse(&t, entry)
        })
        .collect()
}

macro_rules! refused_cases {
    ($($name:ident: $tar:expr, $entry:expr;)*) => {
        $(
            #[test]
            fn $name() {
                refused($tar, $entry);
            }
        )*
    };
}

fn outside(s: &Stack, rest: &str) -> String {
    format!("{}{rest}", s.outside().display())
}

fn with_content(name: &str) -> Vec<u8> {
    Tar::new().dir("a").dir("a/b").raw(&raw(name, 4)).raw(&pad(b"evil")).bytes()
}

// ----- paths escaping the root -----

refused_cases! {
    a_parent_component_is_refused: |_| with_content("../escaped"), Some("../escaped");
    a_parent_component_after_a_directory_is_refused: |_| with_content("a/../../escaped"), Some("a/../../escaped");
    a_parent_component_after_dot_is_refused: |_| with_content("./../escaped"), Some("./../escaped");
    a_parent_component_deep_down_is_refused: |_| with_content("a/b/../../../escaped"), Some("a/b/../../../escaped");
    a_bare_parent_name_is_refused: |_| with_content(".."), Some("..");
    a_bare_parent_directory_name_is_refused: |_| with_content("../"), Some("..");
    an_absolute_path_is_refused: |s| Tar::new().raw(&raw(&outside(s, "/planted"), 4)).raw(&pad(b"evil")).bytes(), Some("/planted");
    an_absolute_system_path_is_refused: |_| Tar::new().raw(&raw("/etc/ovlcore-test-planted", 4)).raw(&pad(b"evil")).bytes(), Some("/etc/ovlcore-test-planted");
    an_absolute_path_through_pax_is_refused: |s| Tar::new().file_with("x", "evil", Attr::default().pax("path", outside(s, "/pax-planted"))).bytes(), Some("pax-planted");
    a_traversal_through_a_gnu_long_name_is_refused: |_| Tar::with_format(Format::Gnu).file(&format!("a/{}/../../../escaped-long", "b".repeat(120)), "evil").bytes(), Some("escaped-long");
}

#[test]
fn nothing_escapes_to_the_paths_a_traversal_names() {
    for name in ["../escaped", "a/../../escaped", "a/b/../../../escaped"] {
        let mut s = Stack::new(Privilege::Rootless);
        s.refuse(&with_content(name), None);
        for p in [s.base().join("escaped"), s.base().join("store/escaped")] {
            assert!(std::fs::symlink_metadata(&p).is_err(), "{} exists", p.display());
        }
    }
    assert!(std::fs::symlink_metadata("/etc/ovlcore-test-planted").is_err());
}

// ----- symlinks leading out -----

refused_cases! {
    a_file_through_a_symlink_to_outside_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).file("link/file", "evil").bytes(), Some("link/file");
    a_symlink_through_a_symlink_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).symlink("link/planted", "/etc/passwd").bytes(), Some("link/planted");
    a_hard_link_through_a_symlink_is_refused: |s| Tar::new().file("real", "r").symlink("link", &outside(s, "")).hardlink("link/planted", "real").bytes(), Some("link/planted");
    a_fifo_through_a_symlink_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).fifo("link/planted").bytes(), Some("link/planted");
    a_device_through_a_symlink_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).chardev("link/planted", 1, 3).bytes(), Some("link/planted");
    a_file_through_a_relative_symlink_climbing_out_is_refused: |_| Tar::new().symlink("up", "../../../..").file("up/planted", "evil").bytes(), Some("up/planted");
    a_file_through_a_symlink_inside_the_layer_is_refused: |_| Tar::new().dir("real").symlink("alias", "real").file("alias/f", "x").bytes(), Some("alias/f");
    a_directory_through_a_symlink_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).dir("link/sub").bytes(), Some("link/sub");
    a_file_over_a_symlink_is_a_duplicate_never_written_through: |s| Tar::new().symlink("link", &outside(s, "/secret")).file("link", "overwritten").bytes(), Some("link");
    a_whiteout_through_a_symlink_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).whiteout("link/secret").bytes(), Some("link/.wh.secret");
    a_symlink_later_replaced_by_a_directory_is_refused: |s| Tar::new().symlink("a", &outside(s, "")).dir("a").file("a/planted", "x").bytes(), Some("a");
    a_symlink_chain_to_outside_is_refused: |s| Tar::new().symlink("l1", "l2").symlink("l2", "l3").symlink("l3", &outside(s, "")).file("l1/planted", "x").bytes(), Some("l1/planted");
    a_relative_symlink_chain_climbing_out_is_refused: |_| Tar::new().dir("d").symlink("d/up", "..").symlink("up2", "d/up/d/up/../..").file("up2/x", "x").bytes(), Some("up2/x");
}

#[test]
fn an_opaque_marker_through_a_symlink_is_refused_and_marks_nothing() {
    refused(|s| Tar::new().symlink("link", &outside(s, "")).opaque("link").bytes(), Some("link/.wh..wh..opq"));
    let mut s = Stack::new(Privilege::Rootless);
    let t = Tar::new().symlink("link", &outside(&s, "")).opaque("link").bytes();
    s.refuse(&t, None);
    for x in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        assert_eq!(common::tree::xattr(&s.outside(), x), None);
    }
}

#[test]
fn a_file_under_a_lower_layers_symlink_goes_into_the_new_layer() {
    // Each layer is applied into its own directory: `link/file` over a lower `link -> outside` implies
    // a directory `link` in the new layer (hiding the symlink), as Docker's overlay2 does.
    for p in privileges() {
        let mut s = Stack::new(p);
        let before = host_snapshot(&s.outside());
        s.push(&Tar::new().symlink("link", &outside(&s, "")).bytes());
        s.push(&Tar::new().file("link/file", "data").bytes());
        assert!(host_snapshot(&s.outside()) == before);
        let fs = s.view();
        assert!(fs.is_dir("/link") && !fs.is_symlink("/link"));
        assert_eq!(fs.ls("/link"), ["file"]);
    }
}

// ----- hard links leading out -----

refused_cases! {
    a_hard_link_to_an_absolute_host_path_is_refused: |s| Tar::new().hardlink("stolen", &outside(s, "/secret")).bytes(), Some("stolen");
    a_hard_link_to_a_system_file_is_refused: |_| Tar::new().hardlink("passwd", "/etc/passwd").bytes(), Some("passwd");
    a_hard_link_climbing_out_is_refused: |_| Tar::new().hardlink("stolen", "../outside/secret").bytes(), Some("stolen");
    a_hard_link_through_a_symlink_to_outside_is_refused: |s| Tar::new().symlink("link", &outside(s, "")).hardlink("stolen", "link/secret").bytes(), Some("stolen");
    a_hard_link_to_a_missing_entry_is_refused: |_| Tar::new().hardlink("h", "not-in-this-archive").bytes(), Some("h");
    a_hard_link_to_a_directory_is_refused: |_| Tar::new().dir("d").hardlink("h", "d").bytes(), Some("h");
}

#[test]
fn a_hard_link_to_a_lower_layers_file_is_refused() {
    // A hard link names another path in the same archive; a lower layer's file is not one.
    for p in privileges() {
        let mut s = Stack::of(p, &[&Tar::new().file("lower-file", "x").bytes()]);
        s.refuse(&Tar::new().hardlink("h", "lower-file").bytes(), Some("h"));
    }
}

#[test]
fn a_hard_link_chain_stays_inside() {
    let t = Tar::new().file("f", "shared").hardlink("h1", "f").hardlink("h2", "h1").bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        assert_eq!(s.view().text("/h2"), "shared");
        use std::os::unix::fs::MetadataExt;
        let ino = |n: &str| std::fs::symlink_metadata(s.top().join(n)).unwrap().ino();
        assert_eq!(ino("h2"), ino("f"));
        assert!(s.layer_tar(0) == t);
    }
}

#[test]
fn a_hard_link_to_a_symlink_links_the_symlink_itself() {
    // Never what it points to: no host file gets a second name.
    for p in privileges() {
        let mut s = Stack::new(p);
        let t = Tar::new().symlink("s", &outside(&s, "/secret")).hardlink("h", "s").bytes();
        s.push(&t);
        assert!(std::fs::symlink_metadata(s.top().join("h")).unwrap().is_symlink());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(s.outside().join("secret")).unwrap().nlink(), 1);
        assert_eq!(s.view().readlink("/h").unwrap(), outside(&s, "/secret"));
    }
}

// ----- bad whiteouts -----

refused_cases! {
    a_whiteout_of_dot_is_refused: |_| Tar::new().dir("a").file(".wh..", "").bytes(), Some(".wh..");
    a_whiteout_of_dot_in_a_directory_is_refused: |_| Tar::new().dir("a").file("a/.wh..", "").bytes(), Some("a/.wh..");
    a_whiteout_of_dotdot_in_a_directory_is_refused: |_| Tar::new().dir("a").file("a/.wh...", "").bytes(), Some("a/.wh...");
    a_bare_whiteout_prefix_is_refused: |_| Tar::new().dir("a").file(".wh.", "").bytes(), Some(".wh.");
    a_bare_whiteout_prefix_in_a_directory_is_refused: |_| Tar::new().dir("a").file("a/.wh.", "").bytes(), Some("a/.wh.");
    a_whiteout_of_dotdot_is_refused: |_| Tar::new().dir("a").file(".wh...", "").bytes(), Some(".wh...");
}

#[test]
fn a_whiteout_of_dotdot_over_a_lower_layer_deletes_nothing() {
    for p in privileges() {
        let mut s = Stack::of(p, &[&Tar::new().dir("a").file("a/keep", "k").file("top", "t").bytes()]);
        s.refuse(&Tar::new().dir("a").file("a/.wh..", "").bytes(), Some("a/.wh.."));
        assert_eq!(s.view().ls("/"), ["a", "top"]);
        assert_eq!(s.view().ls("/a"), ["keep"]);
    }
}

// ----- malformed streams -----

fn two_files() -> Vec<u8> {
    Tar::new().file("first", "1").file("bigfile", "x".repeat(10000)).bytes()
}

refused_cases! {
    a_tar_cut_in_file_content_is_refused: |_| { let d = two_files(); let cut = d.windows(100).position(|w| w == [b'x'; 100]).unwrap() + 3000; d[..cut].to_vec() }, Some("bigfile");
    a_tar_cut_in_a_header_is_refused: |_| Tar::new().file("first", "1").file("second", "2").bytes()[..1024 + 200].to_vec(), None;
    a_tar_cut_in_a_pax_header_is_refused: |_| Tar::new().file(&"x".repeat(200), "data").bytes()[..600].to_vec(), None;
    a_cut_gzip_stream_is_refused: |_| { let g = gzip(&Tar::new().file("a", noise(50000)).file("b", "b").bytes()); g[..g.len() / 2].to_vec() }, None;
    a_gzip_stream_without_its_trailer_is_refused: |_| { let g = gzip(&Tar::new().file("a", "a".repeat(1000)).bytes()); g[..g.len() - 8].to_vec() }, None;
    gzip_magic_with_garbage_is_refused: |_| [&b"\x1f\x8b\x08\x00"[..], &noise(2000)].concat(), None;
    a_cut_zstd_stream_is_refused: |_| { let z = zstd::encode_all(&Tar::new().file("a", noise(50000)).bytes()[..], 3).unwrap(); z[..z.len() / 2].to_vec() }, None;
    garbage_is_not_a_tar: |_| b"this is not a tar archive at all\n".repeat(100), None;
    a_bad_header_checksum_is_refused: |_| Tar::new().raw(&raw_header(b"f", &RawHeader { checksum: Some(12345), ..RawHeader::default() })).bytes(), None;
    a_non_numeric_mode_is_refused: |_| Tar::new().raw(&raw_header(b"badmode", &RawHeader { fields: &[("mode", b"zzzzzzz\0")], ..RawHeader::default() })).bytes(), Some("badmode");
    a_sparse_file_is_refused: |_| Tar::new().raw(&raw_typed("sparse", b'S', "")).bytes(), Some("sparse");
    an_unknown_entry_type_is_refused: |_| Tar::new().raw(&raw_typed("weird", b'Z', "")).bytes(), Some("weird");
    an_empty_symlink_target_is_refused: |_| Tar::new().raw(&raw_typed("l", b'2', "")).bytes(), Some("l");
    a_0_0_character_device_is_refused_as_the_whiteout_encoding: |_| Tar::new().chardev("zero", 0, 0).bytes(), Some("zero");
}

#[test]
fn bzip2_and_xz_garbage_is_refused_naming_the_compression() {
    for (magic, name) in [(&b"BZh91AY&SY"[..], "bzip2"), (&b"\xfd7zXZ\x00\x00\x04"[..], "xz")] {
        let data = [magic, &noise(100)].concat();
        for msg in refused(|_| data.clone(), None) {
            assert!(msg.contains(name), "{msg}");
        }
    }
}

// ----- sizes and PAX values that lie -----

refused_cases! {
    a_huge_declared_size_with_little_data_is_refused: |_| [raw_header(b"big", &RawHeader { size: 1 << 40, gnu: true, ..RawHeader::default() }), vec![b'x'; 512], EOF_BLOCKS.to_vec()].concat(), Some("big");
    a_pax_size_beyond_any_file_is_refused: |_| [pax(&[("size", b"999999999999999999")]), raw("big", 0), EOF_BLOCKS.to_vec()].concat(), None;
    a_non_numeric_pax_size_is_refused: |_| [pax(&[("size", b"12abc")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    a_negative_pax_uid_is_refused: |_| [pax(&[("uid", b"-1")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    an_out_of_range_pax_gid_is_refused: |_| [pax(&[("gid", b"99999999999999999999")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    a_non_numeric_pax_mtime_is_refused: |_| [pax(&[("mtime", b"yesterday")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    a_malformed_pax_atime_is_refused: |_| [pax(&[("atime", b"1.2.3")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    a_pax_path_climbing_out_is_refused: |_| [pax(&[("path", b"../escaped")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    an_absolute_pax_path_is_refused: |_| [pax(&[("path", b"/etc/escaped")]), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None;
    an_absolute_pax_hard_link_target_is_refused: |_| [pax(&[("linkpath", b"/etc/shadow")]), raw_typed("entry", b'1', ""), EOF_BLOCKS.to_vec()].concat(), None;
    gnu_sparse_in_pax_form_is_refused: |_| [pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"), ("GNU.sparse.name", b"s")]), raw("s", 0), EOF_BLOCKS.to_vec()].concat(), None;
}

/// An extended header holding exactly `body`, well-formed records or not.
fn raw_pax(body: &[u8]) -> Vec<u8> {
    [raw_header(b"././@PaxHeader", &RawHeader { typeflag: b'x', size: body.len() as u64, ..RawHeader::default() }), pad(body)].concat()
}

#[test]
fn pax_records_with_malformed_lengths_are_refused_naming_the_entry() {
    let cases: [(&[u8], &str); 7] = [
        (b"x9 path=a\n", "not a decimal number"),
        (b"3 path=a\n", "does not end with a newline"),
        (b"1 path=a\n", "shorter than its own prefix"),
        (b"99 path=a\n", "runs past the end of the header"),
        (b"8 patha\n", "no `=`"),
        (b"6 =ab\n", "empty key"),
        (b"9 path=a\nnot a record", "not a decimal number"),
    ];
    for (body, why) in cases {
        for msg in refused(|_| [raw_pax(body), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), Some("entry \"entry\"")) {
            assert!(msg.contains("malformed PAX header") && msg.contains(why), "{msg:?} should say {why:?}");
        }
    }
}

#[test]
fn an_extension_header_too_big_to_hold_is_refused() {
    let huge = [raw_header(b"././@PaxHeader", &RawHeader { typeflag: b'x', size: 2 << 20, ..RawHeader::default() }), vec![b'9'; 2 << 20]].concat();
    for msg in refused(|_| [huge.clone(), raw("entry", 0), EOF_BLOCKS.to_vec()].concat(), None) {
        assert!(msg.contains("too large"), "{msg}");
    }
}

#[test]
fn a_newline_in_a_pax_value_smuggles_no_record() {
    // Split on newlines, the value's tail reads as records naming the outside: a reader that did so
    // would write the entries elsewhere, the symlink pointing elsewhere.
    for p in privileges() {
        let mut s = Stack::new(p);
        let value = [&b"x\n"[..], &pax_record("path", b"../../smuggled"), &pax_record("linkpath", outside(&s, "/secret").as_bytes())].concat();
        let xattr = Attr::default().xattr("user.v", &value);
        let t = Tar::new().symlink_with("link", "harmless", xattr.clone()).file_with("file", "f", xattr).bytes();
        s.push(&t);
        let fs = s.view();
        assert_eq!(fs.ls("/"), ["file", "link"]);
        assert_eq!(fs.readlink("/link").unwrap(), "harmless");
        assert_eq!(fs.getxattr("/file", "user.v").unwrap(), Some(value.clone()));
        assert!(s.layer_tar(0) == t);
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_size_limit() {
    // One file of 64 MiB of zeros, as gzip members (one member of zeros, repeated): a small input.
    let zeros = gzip(&vec![0u8; 1 << 20]);
    let mut bomb = gzip(&raw("zeros", 64 << 20));
    for _ in 0..64 {
        bomb.extend_from_slice(&zeros);
    }
    bomb.extend(gzip(&EOF_BLOCKS));
    assert!(bomb.len() < 200_000, "a small file expanding a lot");
    for p in privileges() {
        let mut s = Stack::new(p);
        let msg = assert_invalid_archive(s.import(&bomb[..], Some(1 << 20)));
        assert!(msg.contains("limit"), "{msg}");
        assert!(s.layers().is_empty());
    }
}

// ----- duplicates and late failures -----

refused_cases! {
    a_duplicate_file_is_refused: |_| Tar::new().file("dup", "one").file("dup", "two").bytes(), Some("dup");
    a_directory_over_a_file_of_the_same_layer_is_refused: |_| Tar::new().file("x", "one").dir("x").bytes(), Some("x");
    a_file_over_a_symlink_of_the_same_layer_is_refused: |_| Tar::new().symlink("s", "target").file("s", "x").bytes(), Some("s");
    a_failure_in_a_late_entry_writes_nothing_outside: |_| (0..50).fold(Tar::new().dir("big"), |t, i| t.file(&format!("big/f{i}"), noise(2000))).raw(&raw("../late-escape", 0)).bytes(), Some("../late-escape");
}

#[test]
fn the_end_blocks_alone_are_an_empty_layer() {
    for p in privileges() {
        let mut s = Stack::new(p);
        let report = s.try_push(&EOF_BLOCKS).unwrap();
        assert_eq!((report.entries, report.size), (0, 0));
        assert_eq!(std::fs::read_dir(s.top()).unwrap().count(), 0);
    }
}

#[test]
fn imports_work_after_refusals() {
    for p in privileges() {
        let mut s = Stack::new(p);
        s.refuse(&Tar::new().raw(&raw("../x", 0)).bytes(), Some("../x"));
        assert_invalid_archive(s.try_push(b"\x1f\x8bgarbage"));
        s.push(&Tar::new().file("ok", "fine").bytes());
        assert_eq!(s.view().text("/ok"), "fine");
    }
}

#[test]
fn non_utf8_names_are_kept_as_bytes() {
    let name = b"caf\xe9-\xff";
    let t = [raw_header(name, &RawHeader { size: 3, ..RawHeader::default() }), pad(b"abc"), EOF_BLOCKS.to_vec()].concat();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        use std::os::unix::ffi::OsStrExt;
        let listed = s.view().view.list(std::path::Path::new("/")).unwrap();
        assert_eq!(listed.iter().map(|(n, _)| n.as_bytes()).collect::<Vec<_>>(), [&name[..]]);
        let path = std::path::Path::new("/").join(std::ffi::OsStr::from_bytes(name));
        let fd = s.view().view.open_read(&path, rustix::fs::OFlags::empty()).unwrap();
        assert_eq!(common::stack::read_all(std::fs::File::from(fd)), b"abc");
        assert!(s.top().join(std::ffi::OsStr::from_bytes(name)).exists());
        assert!(s.layer_tar(0) == t);
    }
}

// ----- hostile content met by the view -----

#[test]
fn the_view_never_reaches_the_host() {
    for p in privileges() {
        let mut s = Stack::new(p);
        let t = Tar::new()
            .dir("etc")
            .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
            .symlink("to_secret", &outside(&s, "/secret"))
            .symlink("to_root", "/")
            .symlink("climb", "../../../../../../..")
            .symlink("loop_a", "loop_b")
            .symlink("loop_b", "loop_a")
            .bytes();
        s.push(&t);
        let c = s.container();
        assert_errno(c.read("/to_secret"), libc::ENOENT);
        assert_eq!(c.text("/climb/etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
        assert_eq!(c.text("/to_root/etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
        assert_errno_at(c.read("/loop_a"), libc::ELOOP, "/loop_a");
        let before = host_snapshot(&s.outside());
        c.write("/climb/tmp-planted", "x").unwrap();
        assert_eq!(c.text("/tmp-planted"), "x", "written at the container's root");
        assert_errno(c.write("/to_secret", "overwritten?"), libc::ENOENT);
        for op in [c.chmod("/to_secret", 0o777), c.truncate("/to_secret", 0), c.utime("/to_secret", 1, 1), c.chown("/to_secret", Some(9), Some(9))] {
            assert_refused(op);
        }
        assert!(host_snapshot(&s.outside()) == before, "nothing outside changed");
        assert_eq!(std::fs::read_to_string(s.outside().join("secret")).unwrap(), SECRET);
    }
}

#[test]
fn links_to_the_hosts_store_paths_resolve_inside_the_image() {
    for p in privileges() {
        let mut s = Stack::new(p);
        let base = s.push(&Tar::new().file("x", "x").bytes());
        let t = Tar::new().symlink("storelink", base.to_str().unwrap()).symlink("outlink", &outside(&s, "")).bytes();
        s.push(&t);
        let fs = s.view();
        assert!(!fs.exists("/storelink/x"));
        assert!(!fs.exists("/outlink/secret"));
        assert_errno_at(fs.list("/outlink"), libc::ENOENT, "/outlink");
    }
}
