//! Layer tars out of the store: an imported layer re-exports byte for byte from its tar-split (whatever
//! the format and compression it came in), compressed streams decompress to the same tar, walked layers
//! are deterministic, and `docker export` / `get_archive` stream the merged tree (test_layer_export.py,
//! test_containers_commit.py, test_hostile.py).

mod common;

use std::io::{Read, Write};

use common::images::{child, each_container};
use common::model;
use common::stack::read_all;
use common::tar::{global_pax_header, mode, owner};
use common::*;

/// Every entry kind, odd sizes (padding), xattrs, PAX times, a long name, whiteouts and markers.
fn rich_tar(format: Format) -> Vec<u8> {
    Tar::with_format(format)
        .dir_with("./", mode(0o755))
        .dir("etc")
        .file("etc/a", "a")
        .file("etc/b", "b".repeat(511))
        .file("etc/c", "c".repeat(512))
        .file_with("etc/d", "d".repeat(513), owner(1000, 1000))
        .file_with("etc/big", (0..300).flat_map(|_| 0..=255u8).collect::<Vec<u8>>(), mode(0o600))
        .file("etc/empty", "")
        .file_with("etc/ns", "ns", Attr::default().pax("mtime", "1600000000.987654321"))
        .file_with("etc/xattr", "x", Attr::default().xattr("user.k", "value"))
        .symlink("etc/link", "../usr/bin/tool")
        .hardlink("etc/hard", "etc/d")
        .fifo("etc/fifo")
        .dir("usr")
        .dir("usr/bin")
        .file_with("usr/bin/tool", "#!/bin/sh\necho hi\n", mode(0o4755))
        .file(&format!("usr/{}", "L".repeat(150)), "long name")
        .whiteout("usr/gone")
        .opaque("etc")
        .bytes()
}

fn ustar_tar() -> Vec<u8> {
    Tar::with_format(Format::Ustar).dir("d").file("d/f", "hello".repeat(200)).symlink("d/l", "f").hardlink("d/h", "d/f").bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    read_all(flate2::read::MultiGzDecoder::new(data))
}

/// Import `tar` (however compressed: `input`) and check that the layer re-exports the very same bytes.
fn reexports(tar: &[u8], input: &[u8]) {
    for p in privileges() {
        let mut s = Stack::new(p);
        let report = s.import(input, None).unwrap();
        assert_eq!(report.diff_id, sha256(tar), "{p:?}");
        assert_eq!(report.tar_size, tar.len() as u64);
        assert!(s.layer_tar(0) == tar, "re-export differs ({p:?})");
    }
}

#[test]
fn a_pax_layer_reexports_byte_for_byte() {
    let t = rich_tar(Format::Pax);
    reexports(&t, &t);
}

#[test]
fn a_gnu_layer_reexports_byte_for_byte() {
    let t = rich_tar(Format::Gnu);
    reexports(&t, &t);
}

#[test]
fn a_ustar_layer_reexports_byte_for_byte() {
    let t = ustar_tar();
    reexports(&t, &t);
}

#[test]
fn bytes_a_parser_would_normalise_are_kept() {
    // User and group names, and a trailer longer than two zero blocks.
    let mut t = Tar::with_format(Format::Gnu).file_with("f", "data", owner(7, 8).names("someone", "somegroup")).bytes();
    t.extend([0u8; 9216]);
    reexports(&t, &t);
}

#[test]
fn a_gzip_layer_reexports_the_uncompressed_tar() {
    let t = rich_tar(Format::Pax);
    reexports(&t, &gzip(&t));
}

#[test]
fn a_multi_member_gzip_layer_is_one_stream() {
    let t = rich_tar(Format::Pax);
    let half = t.len() / 2;
    reexports(&t, &[gzip(&t[..half]), gzip(&t[half..])].concat());
}

#[test]
fn a_zstd_layer_reexports_the_uncompressed_tar() {
    let t = rich_tar(Format::Pax);
    reexports(&t, &zstd::encode_all(&t[..], 3).unwrap());
}

#[test]
fn the_diff_id_covers_bytes_after_the_end_of_archive() {
    let mut t = Tar::new().file("a", "x").bytes();
    t.extend([0u8; 8192]);
    reexports(&t, &t);
}

#[test]
fn a_pax_global_header_is_ignored_and_kept() {
    let t = Tar::new()
        .raw(&global_pax_header(&[("comment".into(), b"global".to_vec()), ("mtime".into(), b"1".to_vec())]))
        .file("f", "hi")
        .bytes();
    reexports(&t, &t);
    for p in privileges() {
        let fs = Stack::of(p, &[&t]).view();
        assert_eq!(fs.ls("/"), ["f"]);
        assert_eq!(fs.st("/f").mtime, (FIXED_MTIME, 0), "the global mtime is not the entry's");
    }
}

#[test]
fn pax_values_with_newlines_reexport_byte_for_byte_and_walk_to_a_layer_that_reimports() {
    let binary: Vec<u8> = (0..=255).collect();
    let longer = "p".repeat(150);
    let t = Tar::new()
        .file_with("f", "x", Attr::default().xattr("user.bin", &binary).xattr("user.nl", "a\nb"))
        .file_with("short", "moved", Attr::default().xattr("user.nl", "1\n2").pax("path", &longer))
        .bytes();
    reexports(&t, &t);
    for p in privileges() {
        let walked = Stack::of(p, &[&t]).walked_tar(0);
        let again = Stack::of(p, &[&walked]);
        assert!(again.layer_tar(0) == walked, "{p:?}");
        let fs = again.view();
        assert_eq!(fs.getxattr("/f", "user.bin").unwrap(), Some(binary.clone()));
        assert_eq!(fs.getxattr(&format!("/{longer}"), "user.nl").unwrap().as_deref(), Some(&b"1\n2"[..]));
    }
}

#[test]
fn gnu_base_256_numbers_round_trip() {
    let t = Tar::with_format(Format::Gnu).file_with("f", "x", owner(3_000_000, 4_000_000).mtime(-86400)).bytes();
    reexports(&t, &t);
    for p in privileges() {
        let st = Stack::of(p, &[&t]).view().st("/f");
        assert_eq!((st.uid, st.gid, st.mtime), (3_000_000, 4_000_000, (-86400, 0)));
    }
}

#[test]
fn a_layer_with_a_parent_reexports_its_own_bytes() {
    let base = Tar::new().dir("usr").file("usr/gone", "g").dir("etc").file("etc/x", "x").bytes();
    let top = rich_tar(Format::Pax);
    for p in privileges() {
        let s = Stack::of(p, &[&base, &top]);
        assert!(s.layer_tar(1) == top);
        assert!(s.layer_tar(0) == base);
    }
}

#[test]
fn the_stream_reads_the_same_in_any_chunk_size() {
    let t = rich_tar(Format::Pax);
    let s = Stack::of(Privilege::Rootless, &[&t]);
    for chunk in [1usize, 100, 511, 4096] {
        let split = std::fs::File::open(s.top().with_extension("split")).unwrap();
        let mut tar = LayerTar::from_split(s.top(), split).unwrap();
        let (mut out, mut buf) = (Vec::new(), vec![0u8; chunk]);
        loop {
            let n = tar.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out == t, "chunks of {chunk}");
        assert_eq!(tar.digest(), sha256(&t));
        assert_eq!(tar.bytes_read(), t.len() as u64);
    }
}

#[test]
fn a_layer_changed_under_its_tar_split_is_refused() {
    let t = Tar::new().file("f", "12345").bytes();
    let s = Stack::of(Privilege::Rootless, &[&t]);
    std::fs::write(s.top().join("f"), "123").unwrap();
    let split = std::fs::File::open(s.top().with_extension("split")).unwrap();
    let mut out = Vec::new();
    let r = LayerTar::from_split(s.top(), split).unwrap().read_to_end(&mut out).map_err(Error::from);
    assert!(assert_corrupt_store(r).contains("changed"));
}

// ----- compression of the output -----

fn compressed(tar: &[u8], c: Compression) -> Vec<u8> {
    read_all(Compressor::new(tar, c).unwrap())
}

#[test]
fn gzip_output_decompresses_to_the_same_tar_and_reimports_as_the_same_layer() {
    let t = rich_tar(Format::Pax);
    let s = Stack::of(Privilege::Rootless, &[&t]);
    let gz = compressed(&s.layer_tar(0), Compression::Gzip);
    assert_eq!(&gz[..2], b"\x1f\x8b");
    assert!(gunzip(&gz) == t);
    assert_ne!(sha256(&gz), sha256(&t), "the blob digest is not the diff id");
    assert_eq!(gz, compressed(&t, Compression::Gzip), "deterministic");
    let mut again = Stack::new(Privilege::Rootless);
    assert_eq!(again.import(&gz[..], None).unwrap().diff_id, sha256(&t));
}

#[test]
fn zstd_output_decompresses_to_the_same_tar() {
    let t = rich_tar(Format::Pax);
    let z = compressed(&t, Compression::Zstd);
    assert_eq!(&z[..4], b"\x28\xb5\x2f\xfd");
    assert!(zstd::decode_all(&z[..]).unwrap() == t);
}

#[test]
fn compression_names() {
    assert_eq!(Compression::parse(None).unwrap(), Compression::None);
    assert_eq!(Compression::parse(Some("gzip")).unwrap(), Compression::Gzip);
    assert_eq!(Compression::parse(Some("zstd")).unwrap(), Compression::Zstd);
    assert!(Compression::parse(Some("lz4")).is_err());
}

// ----- walked layers -----

#[test]
fn a_walked_layer_is_deterministic_and_reimports_to_the_same_bytes() {
    let base = Tar::new().dir("a").file("a/x", "xx").file("b", [7u8; 3000]).symlink("l", "a/x").hardlink("h", "b").bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&base]);
        let first = s.walked_tar(0);
        assert!(first == s.walked_tar(0));
        let again = Stack::of(p, &[&first]);
        assert!(again.walked_tar(0) == first);
        assert!(again.layer_tar(0) == first, "and replays exactly");
        let names: Vec<String> =
            ::tar::Archive::new(&first[..]).entries().unwrap().map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap()).collect();
        assert_eq!(names, ["a/", "a/x", "b", "h", "l"], "sorted, directories with a slash");
        let (m, links) = model::apply(&[&first]);
        assert_eq!(links.get("/h").map(String::as_str), Some("/b"), "a hard link by inode");
        assert_eq!(model::apply(&[&base]).0, m, "the same content as the original");
    }
}

#[test]
fn a_walked_layer_writes_whiteouts_only_where_they_hide_something() {
    let base = Tar::new().dir("etc").file("etc/hosts", "h").bytes();
    let top = Tar::new().dir("etc").whiteout("etc/hosts").dir("new").opaque("etc").bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&base, &top]);
        let walked = s.walked_tar(1);
        let names: Vec<String> = ::tar::Archive::new(&walked[..])
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(names, ["etc/", "etc/.wh..wh..opq", "new/"], "{p:?}");
    }
}

// ----- docker export and get_archive -----

fn export(fs: &Fs) -> Vec<u8> {
    read_all(LayerTar::merged(fs.view.clone()).unwrap())
}

#[test]
fn export_holds_the_merged_tree() {
    each_container(|_, c| {
        c.write("/etc/motd", "changed\n").unwrap();
        c.remove("/etc/passwd").unwrap();
        c.rmtree("/usr/share").unwrap();
        c.link("/opt/tool", "/opt/tool2").unwrap();
        c.mkfifo("/fifo", 0o640).unwrap();
        c.rename("/app", "/srv").unwrap();
        let blob = export(c);
        assert!(blob == export(c), "deterministic");
        let (m, links) = model::apply(&[&blob]);
        assert_eq!(m, model::of_view(c));
        for (link, target) in &links {
            assert_eq!(c.st(link).ino, c.st(target).ino, "{link} -> {target}");
        }
        let names: Vec<String> = ::tar::Archive::new(&blob[..])
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.trim_end_matches('/').rsplit('/').next().unwrap().starts_with(".wh.")));
        assert_eq!(names.iter().collect::<std::collections::BTreeSet<_>>().len(), names.len());
    });
}

#[test]
fn export_of_a_fresh_container_is_the_image() {
    each_container(|s, c| {
        assert_eq!(model::apply(&[export(c)]).0, model::of_view(&s.view()));
    });
}

#[test]
fn export_leaves_mount_contents_out_and_get_archive_takes_them() {
    for p in privileges() {
        let s = child(p);
        let vol = s.new_dir("volume");
        std::fs::write(vol.join("inside"), "volume data").unwrap();
        let c = s.container_with(&[("/vol", &vol, false)]);
        let (m, _) = model::apply(&[export(&c)]);
        assert!(!m.keys().any(|k| k.starts_with("/vol")), "{:?}", m.keys().filter(|k| k.starts_with("/vol")).collect::<Vec<_>>());
        let sub = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/vol")).unwrap());
        let (m, _) = model::apply(&[sub]);
        assert_eq!(m["/vol/inside"].data.as_deref(), Some(&b"volume data"[..]));
    }
}

#[test]
fn get_archive_names_entries_from_the_base_name_and_keeps_a_final_symlink() {
    each_container(|_, c| {
        let sub = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/usr/share")).unwrap());
        let (m, _) = model::apply(&[sub]);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["/share", "/share/doc", "/share/doc/c.txt"]);
        let link = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/lib")).unwrap());
        let (m, _) = model::apply(&[link]);
        assert_eq!(m["/lib"].link.as_deref(), Some("usr/lib"));
        assert_eq!(m.len(), 1);
        // Symlinks before the last component are followed inside the container.
        let through = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/lib/libx.so")).unwrap());
        assert_eq!(model::apply(&[through]).0["/libx.so"].data.as_deref(), Some(&b"\0libx".repeat(100)[..]));
    });
}

#[test]
fn export_keeps_hostile_links_as_links_and_never_reads_the_host() {
    for p in privileges() {
        let mut s = Stack::new(p);
        let secret = s.outside().join("secret");
        let t = Tar::new()
            .dir("etc")
            .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
            .symlink("to_secret", secret.to_str().unwrap())
            .symlink("to_root", "/")
            .symlink("climb", "../../../../../../..")
            .symlink("loop_a", "loop_b")
            .symlink("loop_b", "loop_a")
            .bytes();
        s.push(&t);
        let c = s.container();
        let blob = export(&c);
        let (m, _) = model::apply(&[&blob]);
        assert_eq!(m["/to_secret"].link.as_deref(), secret.to_str());
        assert_eq!(m["/loop_a"].kind, Kind::Symlink);
        assert!(!blob.windows(11).any(|w| w == b"host secret"), "no host content in the export");
        let sub = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/to_secret")).unwrap());
        assert!(!sub.windows(11).any(|w| w == b"host secret"));
        let etc = read_all(LayerTar::subtree(c.view.clone(), std::path::Path::new("/to_root/etc")).unwrap());
        assert!(model::apply(&[etc]).0["/etc/passwd"].data.as_deref().unwrap().starts_with(b"root:x"));
    }
}

#[test]
fn export_into_a_file_copies_big_files_by_the_kernel_into_the_same_bytes() {
    each_container(|_, c| {
        // Big enough to be handed to the writer as files, odd sizes for the padding, and a hard link.
        let big: Vec<u8> = (0..(700u32 << 10) + 77).map(|i| (i % 251) as u8).collect();
        c.write("/big", &big).unwrap();
        c.write("/usr/bigger", [&big[..], b"tail"].concat()).unwrap();
        c.link("/big", "/big-link").unwrap();
        let expected = export(c);
        let dir = tempfile::tempdir().unwrap();
        // An output that already holds bytes: the tar goes after them.
        let path = dir.path().join("out.tar");
        std::fs::write(&path, b"before").unwrap();
        let mut out = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        out.flush().unwrap();
        let tar = LayerTar::merged(c.view.clone()).unwrap().without_digest();
        let mut stream = LayerStream::new(tar, Compression::None).unwrap();
        let mut seen = Vec::new();
        let n = stream
            .copy_to_file(out, &mut |n| {
                seen.push(n);
                Ok(())
            })
            .unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written[6..] == expected[..], "the same bytes as read");
        assert_eq!((n, stream.bytes_out()), (expected.len() as u64, expected.len() as u64));
        assert_eq!(seen.last(), Some(&n), "progress up to the end");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        // Into a pipe (no copy_file_range there): the same bytes again.
        let (rx, tx) = pipe();
        let reader = std::thread::spawn(move || read_all(rx));
        let tar = LayerTar::merged(c.view.clone()).unwrap().without_digest();
        let mut stream = LayerStream::new(tar, Compression::None).unwrap();
        stream.copy_to_file(tx, &mut |_| Ok(())).unwrap();
        assert!(reader.join().unwrap() == expected, "the same bytes through a pipe");
    });
}

#[test]
fn a_hashed_stream_into_a_file_still_has_its_digest() {
    each_container(|_, c| {
        c.write("/big", vec![3u8; 600 << 10]).unwrap();
        let expected = read_all(LayerTar::merged(c.view.clone()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        let mut stream = LayerStream::new(LayerTar::merged(c.view.clone()).unwrap(), Compression::None).unwrap();
        stream.copy_to_file(std::fs::File::create(&path).unwrap(), &mut |_| Ok(())).unwrap();
        assert!(std::fs::read(&path).unwrap() == expected);
        assert_eq!(stream.diff_id(), Some(sha256(&expected)));
    });
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and belong to nobody else.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}

/// A walk read ahead (what commit hashes) is the same stream byte for byte: small files read in
/// advance, bigger ones left to the reader, more of them than its memory budget holds at once; a stream
/// dropped half-way stops its helper thread.
#[test]
fn a_walk_read_ahead_is_the_same_tar() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 511, 512, 513, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 300 << 10];
    for (i, size) in sizes.iter().cycle().take(9 * 70).enumerate() {
        let sub = dir.path().join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i:04}")), vec![(i % 251) as u8; *size]).unwrap();
    }
    for p in privileges() {
        let plain = read_all(LayerTar::walk(dir.path(), p, None).unwrap());
        assert!(plain.len() > 32 << 20, "more than the read-ahead budget: {}", plain.len());
        let ahead = read_all(LayerTar::walk(dir.path(), p, None).unwrap().read_ahead().unwrap());
        assert!(plain == ahead, "{p:?}: the read-ahead stream differs");

        // (only this test of this binary reads ahead)
        let helpers = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).is_ok_and(|c| c.starts_with("ovlcore-tar-ahe")))
                .count()
        };
        let mut half = LayerTar::walk(dir.path(), p, None).unwrap().read_ahead().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..3 {
            half.read_exact(&mut buf).unwrap();
        }
        assert_eq!(helpers(), 1, "the helper waits for the reader");
        drop(half);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while helpers() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(helpers(), 0, "the helper of a dropped stream goes on");
    }
}

#[test]
fn a_compressed_stream_has_the_digest_of_its_bytes() {
    // The blob digest (hashed on a helper thread) is the sha256 of exactly the bytes handed out, read in
    // pieces of any size, and the diff_id that of the plain tar.
    each_container(|_, c| {
        let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        c.write("/big", big).unwrap();
        let plain = read_all(LayerTar::merged(c.view.clone()).unwrap());
        for compression in [Compression::Gzip, Compression::Zstd] {
            let mut stream = LayerStream::new(LayerTar::merged(c.view.clone()).unwrap(), compression).unwrap();
            let (mut out, mut turn) = (Vec::new(), 0usize);
            loop {
                turn += 1;
                let mut buf = vec![0u8; 1 + turn * 7919 % 300_001];
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                assert_eq!(stream.digest(), None, "no digest before the end");
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(stream.digest(), Some(sha256(&out)), "{compression:?}");
            assert_eq!(stream.read(&mut [0u8; 64]).unwrap(), 0);
            assert_eq!(stream.digest(), Some(sha256(&out)), "{compression:?}: a read after the end keeps it");
            assert_eq!(stream.diff_id(), Some(sha256(&plain)), "{compression:?}");
            assert_eq!(stream.bytes_out(), out.len() as u64);
        }
    });
}
