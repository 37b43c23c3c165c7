//! Layer import: the stream (compressions, short reads, failing sources, identity) and the metadata the
//! layer format keeps (modes with setuid/setgid/sticky, numeric owners, times to the nanosecond, xattrs,
//! link targets, hard links, FIFOs, devices, implied parents, long and odd names) (test_layers.py).

mod common;

use std::io::{self, Read};

use common::tar::{mode, owner};
use common::*;

#[test]
fn import_view_and_exact_reexport() {
    let base = Tar::new().dir("etc").file("etc/passwd", "root:x:0:0").file("etc/hosts", "127.0.0.1").file("usr/bin/tool", "#!").bytes();
    let top = Tar::new().whiteout("etc/hosts").file("etc/motd", "hi").opaque("usr").file("usr/new", "n").bytes();
    for p in privileges() {
        let mut s = Stack::new(p);
        assert_eq!(s.try_push(&base).unwrap().diff_id, sha256(&base));
        assert_eq!(s.try_push(&top).unwrap().diff_id, sha256(&top));
        let fs = s.view();
        assert_eq!(fs.ls("/etc"), ["motd", "passwd"]);
        assert_eq!(fs.ls("/usr"), ["new"]);
        assert_errno(fs.stat("/etc/hosts"), libc::ENOENT);
        assert_eq!(fs.st("/etc/passwd").size, 10);
        assert_eq!(fs.st("/etc").kind(), Kind::Dir);
        assert!(s.layer_tar(1) == top, "replaying the tar-split gives back the very same bytes");
    }
}

#[test]
fn hostile_names_are_refused() {
    for name in ["../x", "a/../../x", "/etc/x"] {
        let t = Tar::new().raw(&raw_header(name.as_bytes(), &RawHeader { size: 1, ..RawHeader::default() })).raw(&common::tar::pad(b"x")).bytes();
        let mut s = Stack::new(Privilege::Rootless);
        assert!(s.refuse(&t, Some(name)).contains("invalid archive"));
        assert!(!s.base().join("store/x").exists());
    }
}

// ----- the stream -----

/// A reader handing out at most `n` bytes per read, as pipes and sockets may.
struct Trickle<'a> {
    data: &'a [u8],
    n: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = buf.len().min(self.n).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

fn base() -> Vec<u8> {
    Tar::new()
        .dir("etc")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/hosts", "127.0.0.1 localhost\n")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/libc.so", [b"\x7fELF".to_vec(), vec![0; 100]].concat())
        .bytes()
}

#[test]
fn short_reads_of_every_compression_give_the_same_layer() {
    let t = base();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    io::Write::write_all(&mut gz, &t).unwrap();
    let inputs = [t.clone(), gz.finish().unwrap(), zstd::encode_all(&t[..], 3).unwrap()];
    for input in &inputs {
        for n in [1, 3, 1000] {
            let mut s = Stack::new(Privilege::Rootless);
            let report = s.import(Trickle { data: input, n }, None).unwrap();
            assert_eq!(report.diff_id, sha256(&t), "reads of {n}");
            assert_eq!(s.view().text("/etc/hosts"), "127.0.0.1 localhost\n");
        }
    }
}

/// A source that fails after some bytes, as a dropped connection does.
struct Failing<'a>(&'a [u8]);

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ECONNRESET));
        }
        let k = buf.len().min(self.0.len());
        buf[..k].copy_from_slice(&self.0[..k]);
        self.0 = &self.0[k..];
        Ok(k)
    }
}

#[test]
fn a_failing_source_is_not_a_malformed_archive() {
    let t = base();
    let mut s = Stack::new(Privilege::Rootless);
    assert_errno(s.import(Failing(&t[..1024]), None), libc::ECONNRESET);
    assert!(s.layers().is_empty());
}

#[test]
fn the_report_counts_content_once_per_inode_and_link_targets() {
    let t = Tar::new().dir("d").file("d/a", "12345").file("d/b", "x".repeat(1000)).hardlink("d/c", "d/b").symlink("d/l", "a").file("d/empty", "").bytes();
    for p in privileges() {
        let r = Stack::new(p).try_push(&t).unwrap();
        assert_eq!(r.size, 5 + 1000 + 1);
        assert_eq!(r.entries, 6);
        assert_eq!(r.tar_size, t.len() as u64);
    }
}

// ----- metadata -----

fn views(t: &[u8]) -> Vec<Fs> {
    privileges().into_iter().map(|p| Stack::of(p, &[t]).view()).collect()
}

#[test]
fn modes_with_setuid_setgid_and_sticky_bits() {
    let t = Tar::new()
        .dir_with("d", mode(0o1777))
        .file_with("d/suid", "s", mode(0o4755))
        .file_with("d/sgid", "s", mode(0o2711))
        .file_with("d/private", "p", mode(0o600))
        .file_with("d/none", "n", mode(0o000))
        .dir_with("d/sub", mode(0o500))
        .bytes();
    for fs in views(&t) {
        let modes: Vec<(String, u32)> = fs.ls("/d").into_iter().map(|n| (n.clone(), fs.lst(&format!("/d/{n}")).perm())).collect();
        let want = [("none", 0o000), ("private", 0o600), ("sgid", 0o2711), ("sub", 0o500), ("suid", 0o4755)];
        assert_eq!(modes, want.map(|(n, m)| (n.to_string(), m)));
        assert_eq!(fs.st("/d").perm(), 0o1777);
    }
}

#[test]
fn owners_are_numbers_and_names_are_ignored() {
    let t = Tar::new()
        .file_with("f", "x", owner(1000, 2000).names("root", "root"))
        .dir_with("d", owner(33, 33))
        .file_with("big", "b", Attr::default().pax("uid", "3000000").pax("gid", "3000001"))
        .bytes();
    for fs in views(&t) {
        assert_eq!((fs.st("/f").uid, fs.st("/f").gid), (1000, 2000));
        assert_eq!((fs.st("/d").uid, fs.st("/d").gid), (33, 33));
        assert_eq!((fs.st("/big").uid, fs.st("/big").gid), (3_000_000, 3_000_001));
    }
}

#[test]
fn a_root_store_keeps_owners_and_modes_natively() {
    if skip_unless_root() {
        return;
    }
    let s = Stack::of(Privilege::Root, &[&Tar::new().file_with("x", "x", mode(0o4755).owner(1000, 2000)).chardev("null", 1, 3).bytes()]);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(s.top().join("x")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 2000, 0o4755));
    let null = std::fs::symlink_metadata(s.top().join("null")).unwrap();
    assert_eq!((Kind::from_mode(null.mode()), null.rdev()), (Kind::Char, makedev(1, 3)), "a real device node");
}

#[test]
fn whole_second_times_and_directory_times_after_their_children() {
    let t = Tar::new()
        .dir_with("d", Attr::default().mtime(1_000_000_000))
        .file_with("d/f", "x", Attr::default().mtime(1_234_567_890))
        .symlink_with("d/l", "f", Attr::default().mtime(1_111_111_111))
        .bytes();
    for fs in views(&t) {
        assert_eq!(fs.lst("/d/f").mtime, (1_234_567_890, 0));
        assert_eq!(fs.lst("/d/l").mtime, (1_111_111_111, 0));
        assert_eq!(fs.st("/d").mtime, (1_000_000_000, 0), "restored after the children were written");
    }
}

#[test]
fn pax_times_to_the_nanosecond_and_before_1970() {
    for (value, want) in [
        ("1600000000.123456789", (1_600_000_000, 123_456_789)),
        ("1500000000.5", (1_500_000_000, 500_000_000)),
        ("1.000000001", (1, 1)),
        ("1600000000.1", (1_600_000_000, 100_000_000)),
        ("-86400", (-86_400, 0)),
        ("-1.5", (-2, 500_000_000)),
        ("-0.25", (-1, 750_000_000)),
    ] {
        let t = Tar::new().file_with("f", "x", Attr::default().pax("mtime", value)).dir_with("d", Attr::default().pax("mtime", value)).bytes();
        for fs in views(&t) {
            assert_eq!(fs.st("/f").mtime, want, "{value}");
            assert_eq!(fs.st("/d").mtime, want, "{value} on a directory");
        }
    }
}

#[test]
fn pax_access_times_are_kept() {
    let t = Tar::new().file_with("f", "x", Attr::default().pax("atime", "1500000000.25")).bytes();
    for fs in views(&t) {
        assert_eq!(fs.st("/f").atime, (1_500_000_000, 250_000_000));
        assert_eq!(fs.st("/f").mtime, (FIXED_MTIME, 0));
    }
}

#[test]
fn xattrs_from_pax_schily_records() {
    let t = Tar::new()
        .file_with("f", "x", Attr::default().xattr("user.comment", "hello").xattr("user.other", "v2"))
        .dir_with("d", Attr::default().xattr("user.d", "dir"))
        .bytes();
    for fs in views(&t) {
        assert_eq!(fs.getxattr("/f", "user.comment").unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(fs.getxattr("/d", "user.d").unwrap().as_deref(), Some(&b"dir"[..]));
        assert_eq!(fs.listxattr("/f").unwrap(), ["user.comment", "user.other"]);
    }
}

#[test]
fn xattr_values_with_newlines_and_any_byte() {
    let binary: Vec<u8> = (0..=255).collect();
    let (long, longer) = ("l".repeat(150), "m".repeat(160));
    let t = Tar::new()
        .file_with("f", "x", Attr::default().xattr("user.nl", "a\nb").xattr("user.bin", &binary).xattr("user.nul", "a\nb\0c"))
        // Names beyond the ustar field as PAX records: one before a value with a newline, one after.
        .file_with(&long, "long", Attr::default().xattr("user.nl", "1\n2"))
        .file_with("short", "moved", Attr::default().xattr("user.nl", "3\n4").pax("path", &longer))
        .bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        let fs = s.view();
        assert_eq!(fs.getxattr("/f", "user.nl").unwrap().as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(fs.getxattr("/f", "user.bin").unwrap(), Some(binary.clone()));
        assert_eq!(fs.getxattr("/f", "user.nul").unwrap().as_deref(), Some(&b"a\nb\0c"[..]));
        assert_eq!(fs.ls("/"), ["f", long.as_str(), longer.as_str()]);
        assert_eq!(fs.text(&format!("/{long}")), "long");
        assert_eq!(fs.text(&format!("/{longer}")), "moved");
        assert_eq!(fs.getxattr(&format!("/{long}"), "user.nl").unwrap().as_deref(), Some(&b"1\n2"[..]));
        assert_eq!(fs.getxattr(&format!("/{longer}"), "user.nl").unwrap().as_deref(), Some(&b"3\n4"[..]));
        // On disk too (rootless keeps user xattrs as they are as well).
        assert_eq!(common::tree::xattr(&s.layers()[0].join("f"), "user.bin"), Some(binary.clone()), "{p:?}");
    }
}

#[test]
fn symlink_targets_are_kept_verbatim() {
    let long = format!("/{}", vec!["component"; 40].join("/"));
    let targets = [("rel", "../x/./y"), ("abs", "/etc/passwd"), ("dangling", "nowhere"), ("dot", "."), ("long", long.as_str())];
    let t = targets.iter().fold(Tar::new(), |t, (n, target)| t.symlink(n, target)).bytes();
    for fs in views(&t) {
        for (name, target) in targets {
            assert_eq!(fs.readlink(&format!("/{name}")).unwrap(), target);
            assert!(fs.is_symlink(&format!("/{name}")));
        }
    }
}

#[test]
fn hard_links_share_content_and_inode() {
    let t = Tar::new().dir("d").file_with("d/orig", "shared", mode(0o640)).hardlink("d/link", "d/orig").hardlink("top", "d/orig").symlink("s", "target").hardlink("h", "s").bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        use std::os::unix::fs::MetadataExt;
        let m = |n: &str| std::fs::symlink_metadata(s.top().join(n)).unwrap();
        assert_eq!(m("d/orig").ino(), m("d/link").ino());
        assert_eq!(m("d/orig").ino(), m("top").ino());
        assert_eq!(m("d/orig").nlink(), 3);
        let fs = s.view();
        assert_eq!(fs.text("/top"), "shared");
        assert_eq!(fs.st("/d/link").perm(), 0o640);
        assert_eq!(fs.readlink("/h").unwrap(), "target", "a hard link to a symlink");
    }
}

#[test]
fn fifos_and_devices() {
    let t = Tar::new()
        .fifo_with("pipe", mode(0o640))
        .dir("dev")
        .chardev_with("dev/null", 1, 3, mode(0o666))
        .blockdev_with("dev/sda", 8, 0, mode(0o660).owner(0, 6))
        .chardev_with("dev/big", 511, 1_000_000, mode(0o600))
        .bytes();
    for fs in views(&t) {
        assert_eq!((fs.lst("/pipe").kind(), fs.lst("/pipe").perm()), (Kind::Fifo, 0o640));
        let null = fs.lst("/dev/null");
        assert_eq!((null.kind(), major(null.rdev), minor(null.rdev), null.perm()), (Kind::Char, 1, 3, 0o666));
        let sda = fs.lst("/dev/sda");
        assert_eq!((sda.kind(), sda.rdev, sda.perm(), sda.gid), (Kind::Block, makedev(8, 0), 0o660, 6));
        assert_eq!(fs.lst("/dev/big").rdev, makedev(511, 1_000_000));
    }
}

#[test]
fn implied_parents_are_root_owned_0755() {
    for fs in views(&Tar::new().file_with("a/b/c", "x", mode(0o600).owner(5, 5)).bytes()) {
        for d in ["/a", "/a/b"] {
            let st = fs.st(d);
            assert_eq!((st.kind(), st.perm(), st.uid, st.gid), (Kind::Dir, 0o755, 0, 0), "{d}");
        }
    }
}

#[test]
fn the_root_entry_sets_the_roots_metadata() {
    let t = Tar::new().dir_with("./", mode(0o750).mtime(1_300_000_000)).file("f", "x").bytes();
    for fs in views(&t) {
        let st = fs.st("/");
        assert_eq!((st.perm(), st.mtime.0), (0o750, 1_300_000_000));
    }
}

#[test]
fn names_with_a_leading_dot_slash() {
    for fs in views(&Tar::new().dir("./").dir("./etc").file("./etc/x", "x").bytes()) {
        assert_eq!(fs.ls("/"), ["etc"]);
        assert_eq!(fs.text("/etc/x"), "x");
    }
}

fn long_names(format: Format) {
    let long_dir = vec!["d".repeat(60); 3].join("/");
    let path = format!("{long_dir}/{}", "f".repeat(120));
    let link = format!("{long_dir}/{}", "s".repeat(110));
    let target = format!("{}{}", "../".repeat(5), "t".repeat(150));
    let hard = "h".repeat(130);
    let parts: Vec<&str> = long_dir.split('/').collect();
    let t = Tar::with_format(format)
        .dir(parts[0])
        .dir(&parts[..2].join("/"))
        .dir(&long_dir)
        .file(&path, "long")
        .symlink(&link, &target)
        .hardlink(&hard, &path)
        .bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        let fs = s.view();
        assert_eq!(fs.text(&format!("/{path}")), "long");
        assert_eq!(fs.readlink(&format!("/{link}")).unwrap(), target);
        assert_eq!(fs.text(&format!("/{hard}")), "long");
        assert_eq!(fs.ls(&format!("/{long_dir}")), ["f".repeat(120), "s".repeat(110)]);
        assert!(s.layer_tar(0) == t, "and the exact bytes come back");
    }
}

#[test]
fn long_names_and_link_targets_in_pax_records() {
    long_names(Format::Pax);
}

#[test]
fn long_names_and_link_targets_in_gnu_entries() {
    long_names(Format::Gnu);
}

#[test]
fn a_ustar_name_split_into_prefix_and_name() {
    let prefix = "p".repeat(120);
    let t = Tar::with_format(Format::Ustar).dir(&prefix).file(&format!("{prefix}/file"), "x").bytes();
    for fs in views(&t) {
        assert_eq!(fs.text(&format!("/{prefix}/file")), "x");
        assert!(fs.is_dir(&format!("/{prefix}")));
    }
}

#[test]
fn non_ascii_names() {
    for fs in views(&Tar::new().dir("ünïcödé").file("ünïcödé/日本語.txt", "text").bytes()) {
        assert_eq!(fs.ls("/ünïcödé"), ["日本語.txt"]);
        assert_eq!(fs.text("/ünïcödé/日本語.txt"), "text");
    }
}

#[test]
fn the_import_reports_progress_and_can_be_cancelled() {
    let t = Tar::new().file("big", vec![1u8; 3 << 20]).bytes();
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    let mut progress = |n: u64| {
        seen.push(n);
        Ok(())
    };
    let opts = ImportOptions { privilege: Privilege::Rootless, lower: None, max_size: None, progress: Some(&mut progress) };
    import_layer(&t[..], dir.path(), None, opts).unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*seen.last().unwrap(), t.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    let mut cancel = |_: u64| Err(Error::External(Box::new(std::io::Error::other("stop"))));
    let opts = ImportOptions { privilege: Privilege::Rootless, lower: None, max_size: None, progress: Some(&mut cancel) };
    assert_cancelled(import_layer(&t[..], dir.path(), None, opts));
}
