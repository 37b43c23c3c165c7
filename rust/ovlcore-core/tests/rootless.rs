//! The rootless metadata convention (`Privilege::Rootless`, usable by any user): owner, mode and type in
//! the `user.containers.override_stat` xattr (`UID:GID:MODE:TYPE`), devices and FIFOs as empty regular
//! files, opaque directories marked `user.overlay.opaque`; the view and the re-exported tar still show the
//! archive's metadata exactly (test_rootless.py, test_hostile.py).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::tar::{mode, owner};
use common::tree::{is_whiteout, xattr};
use common::*;

const R: Privilege = Privilege::Rootless;

fn rootfs() -> Vec<u8> {
    Tar::new()
        .dir_with("./", mode(0o755))
        .dir("bin")
        .file_with("bin/su", b"\x7fELF su", mode(0o4755))
        .file_with("bin/wall", b"\x7fELF wall", mode(0o2755).owner(0, 5))
        .file_with("bin/plain", "plain", mode(0o755))
        .dir("home")
        .dir_with("home/user", mode(0o750).owner(1000, 1000))
        .file_with("home/user/notes", "mine", mode(0o640).owner(1000, 1000))
        .file_with("home/user/locked", "none", mode(0o000).owner(1000, 1000))
        .dir_with("tmp", mode(0o1777))
        .dir("dev")
        .chardev_with("dev/null", 1, 3, mode(0o666))
        .chardev_with("dev/tty", 5, 0, mode(0o620).owner(0, 5))
        .blockdev_with("dev/sda", 8, 0, mode(0o660).owner(0, 6))
        .symlink("bin/sh", "plain")
        .bytes()
}

fn over(path: &Path) -> Option<String> {
    xattr(path, "user.containers.override_stat").map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn the_override_records_what_the_disk_cannot() {
    let s = Stack::of(R, &[&rootfs()]);
    let d = s.top();
    for (path, want) in [
        ("bin/su", Some("0:0:4755:file")),
        ("bin/wall", Some("0:5:2755:file")),
        ("home/user/notes", Some("1000:1000:0640:file")),
        ("home/user", Some("1000:1000:0750:dir")),
        ("tmp", Some("0:0:1777:dir")),
        ("dev/null", Some("0:0:0666:char-1-3")),
        ("dev/tty", Some("0:5:0620:char-5-0")),
        ("dev/sda", Some("0:6:0660:block-8-0")),
        ("bin/plain", None),
        ("home", None),
    ] {
        assert_eq!(over(&d.join(path)).as_deref(), want, "{path}");
    }
}

#[test]
fn stored_files_are_plain_and_accessible_to_the_stores_owner() {
    let s = Stack::of(R, &[&rootfs()]);
    let d = s.top();
    let me = rustix::process::geteuid().as_raw();
    let su = std::fs::symlink_metadata(d.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o6000, 0, "no setuid or setgid bits on disk");
    assert_eq!(su.uid(), me, "never chowned, even when the process could");
    let null = std::fs::symlink_metadata(d.join("dev/null")).unwrap();
    assert!(null.is_file() && null.len() == 0, "a device is an empty regular file");
    let locked = std::fs::symlink_metadata(d.join("home/user/locked")).unwrap();
    assert_eq!(locked.mode() & 0o600, 0o600, "readable by the store's owner");
    assert_eq!(std::fs::symlink_metadata(d.join("home/user")).unwrap().uid(), me);
    assert!(std::fs::symlink_metadata(d.join("bin/sh")).unwrap().is_symlink(), "a symlink stays a symlink");
}

#[test]
fn the_view_reports_the_archives_metadata() {
    let fs = Stack::of(R, &[&rootfs()]).view();
    let meta = |p: &str| {
        let m = fs.lst(p);
        (m.kind(), m.uid, m.gid, m.perm())
    };
    assert_eq!(meta("/bin/su"), (Kind::File, 0, 0, 0o4755));
    assert_eq!(meta("/bin/wall"), (Kind::File, 0, 5, 0o2755));
    assert_eq!(meta("/home/user/notes"), (Kind::File, 1000, 1000, 0o640));
    assert_eq!(meta("/home/user"), (Kind::Dir, 1000, 1000, 0o750));
    assert_eq!(meta("/home/user/locked"), (Kind::File, 1000, 1000, 0o000));
    assert_eq!(meta("/tmp"), (Kind::Dir, 0, 0, 0o1777));
    assert_eq!(meta("/dev/null"), (Kind::Char, 0, 0, 0o666));
    assert_eq!(meta("/dev/tty"), (Kind::Char, 0, 5, 0o620));
    assert_eq!(meta("/dev/sda"), (Kind::Block, 0, 6, 0o660));
    assert_eq!(meta("/bin/plain"), (Kind::File, 0, 0, 0o755), "the store owner's ids read as root's");
    assert_eq!((fs.st("/").uid, fs.st("/").gid), (0, 0));
    assert_eq!((fs.lst("/dev/null").rdev, fs.lst("/dev/null").size), (makedev(1, 3), 0));
    assert_eq!(fs.lst("/dev/tty").rdev, makedev(5, 0));
    assert_eq!(fs.lst("/dev/sda").rdev, makedev(8, 0));
}

#[test]
fn devices_are_devices_to_every_call_of_the_view() {
    let fs = Stack::of(R, &[&rootfs()]).view();
    assert!(!fs.is_file("/dev/null") && !fs.is_file("/dev/sda"));
    assert!(fs.exists("/dev/null") && !fs.is_dir("/dev/null"));
    assert_eq!(fs.entries("/dev"), [("null".into(), Kind::Char), ("sda".into(), Kind::Block), ("tty".into(), Kind::Char)]);
    assert_eq!(fs.read("/dev/null").unwrap(), b"", "reading the stand-in never reads a device");
}

#[test]
fn the_override_is_not_content() {
    let fs = Stack::of(R, &[&rootfs()]).view();
    assert!(!fs.listxattr("/bin/su").unwrap().iter().any(|x| x.contains("override")));
    assert_eq!(fs.getxattr("/bin/su", "user.containers.override_stat").unwrap(), None);
}

#[test]
fn a_rootless_layer_reexports_byte_for_byte() {
    let t = rootfs();
    let mut s = Stack::new(R);
    assert_eq!(s.try_push(&t).unwrap().diff_id, sha256(&t));
    assert!(s.layer_tar(0) == t);
}

#[test]
fn opaque_directories_and_whiteouts_use_the_user_namespace() {
    let base = Tar::new().dir("etc").file("etc/a", "a").file("etc/b", "b").dir("usr").file("usr/x", "x").bytes();
    let top = Tar::new().dir("etc").whiteout("etc/a").dir("usr").opaque("usr").file("usr/y", "y").bytes();
    let s = Stack::of(R, &[&base, &top]);
    assert_eq!(xattr(&s.top().join("usr"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&s.top().join("usr"), "trusted.overlay.opaque"), None);
    assert!(is_whiteout(&s.top().join("etc/a")));
    let fs = s.view();
    assert_eq!(fs.ls("/etc"), ["b"]);
    assert_eq!(fs.ls("/usr"), ["y"]);
    assert!(fs.listxattr("/usr").unwrap().is_empty());
    assert!(s.layer_tar(1) == top);
}

#[test]
fn a_forged_override_in_an_archive_is_ignored() {
    // An archive may not grant itself ownership or setuid through the storage xattr.
    let t = Tar::new()
        .file_with("evil", "x", mode(0o755).owner(1000, 1000).xattr("user.containers.override_stat", "0:0:4755:file"))
        .file_with("evil2", "y", mode(0o644).xattr("user.containers.override_stat", "0:0:0644:char-1-3"))
        .bytes();
    let s = Stack::of(R, &[&t]);
    assert_eq!(over(&s.top().join("evil")).as_deref(), Some("1000:1000:0755:file"));
    assert_eq!(over(&s.top().join("evil2")), None);
    let fs = s.view();
    let st = fs.st("/evil");
    assert_eq!((st.uid, st.gid, st.perm()), (1000, 1000, 0o755));
    assert_eq!(fs.lst("/evil2").kind(), Kind::File);
}

#[test]
fn forged_storage_xattrs_are_dropped_by_a_root_store() {
    if skip_unless_root() {
        return;
    }
    let t = Tar::new()
        .file_with("f", "x", Attr::default().xattr("user.containers.override_stat", "0:0:4755:file").xattr("user.ok", "kept"))
        .dir_with("d", Attr::default().xattr("trusted.overlay.opaque", "y"))
        .bytes();
    let s = Stack::of(Privilege::Root, &[&t]);
    assert_eq!(xattr(&s.top().join("f"), "user.ok").as_deref(), Some(&b"kept"[..]));
    assert_eq!(over(&s.top().join("f")), None);
    assert_eq!(xattr(&s.top().join("d"), "trusted.overlay.opaque"), None);
}

#[test]
fn devices_and_setuid_bits_are_never_real_in_a_rootless_store() {
    let t = Tar::new()
        .chardev_with("dev/mem", 1, 1, mode(0o666))
        .blockdev_with("dev/sda", 8, 0, mode(0o660))
        .file_with("bin/su", "#!", mode(0o4755))
        .file_with("bin/wall", "#!", mode(0o2755).owner(0, 5))
        .bytes();
    let s = Stack::of(R, &[&t]);
    for name in ["dev/mem", "dev/sda", "bin/su", "bin/wall"] {
        let m = std::fs::symlink_metadata(s.top().join(name)).unwrap();
        assert!(m.is_file(), "{name}");
        assert_eq!(m.mode() & 0o6000, 0, "{name}");
    }
    let fs = s.view();
    assert_eq!((fs.lst("/dev/mem").kind(), fs.lst("/dev/mem").rdev), (Kind::Char, makedev(1, 1)));
    assert_eq!(fs.lst("/dev/sda").kind(), Kind::Block);
    assert_eq!(fs.st("/bin/su").perm(), 0o4755);
    assert!(s.layer_tar(0) == t);
}

#[test]
fn implied_parents_carry_no_override() {
    // Metadata of one entry never leaks to another: implied parents are root's, 0755.
    let s = Stack::of(R, &[&Tar::new().file_with("a/b/c", "x", mode(0o4711).owner(7, 0)).bytes()]);
    let fs = s.view();
    assert_eq!((fs.st("/a").uid, fs.st("/a").perm()), (0, 0o755));
    assert_eq!((fs.st("/a/b/c").uid, fs.st("/a/b/c").perm()), (7, 0o4711));
    assert_eq!(over(&s.top().join("a")), None);
}

#[test]
fn a_fifo_is_kept_like_a_device() {
    // user.* xattrs cannot be set on a real FIFO: it is an empty regular file whose override (type
    // `pipe`) records its owner and mode.
    let t = Tar::new().fifo_with("entry", mode(0o440).owner(1000, 1001)).bytes();
    let s = Stack::of(R, &[&t]);
    assert!(std::fs::symlink_metadata(s.top().join("entry")).unwrap().is_file());
    assert_eq!(over(&s.top().join("entry")).as_deref(), Some("1000:1001:0440:pipe"));
    let st = s.view().lst("/entry");
    assert_eq!((st.kind(), st.uid, st.gid, st.perm()), (Kind::Fifo, 1000, 1001, 0o440));
    assert!(s.layer_tar(0) == t);
}

#[test]
fn a_symlinks_owner_reads_as_the_containers_root() {
    // A symlink stays a real symlink (the layer stays usable by the kernel); it cannot carry the
    // override, so its owner reads as the store owner's, i.e. the container's root.
    let t = Tar::new().symlink_with("entry", "target", owner(1000, 1001)).bytes();
    let s = Stack::of(R, &[&t]);
    let st = s.view().lst("/entry");
    assert_eq!((st.kind(), st.uid, st.gid), (Kind::Symlink, 0, 0));
    assert_eq!(s.view().readlink("/entry").unwrap(), "target");
    assert!(std::fs::symlink_metadata(s.top().join("entry")).unwrap().is_symlink());
    assert!(s.layer_tar(0) == t, "the re-export keeps the archive's owner");
}

#[test]
fn a_malformed_override_is_ignored() {
    let s = Stack::of(R, &[&Tar::new().file_with("f", "x", mode(0o640)).bytes()]);
    let c = std::ffi::CString::new(s.top().join("f").to_str().unwrap()).unwrap();
    rustix::fs::lsetxattr(c.as_c_str(), c"user.containers.override_stat", b"x:0:0755:file", rustix::fs::XattrFlags::empty()).unwrap();
    let st = s.view().lst("/f");
    assert_eq!((st.kind(), st.uid, st.perm()), (Kind::File, 0, 0o640), "the stored metadata, own ids as root's");
}

#[test]
fn override_strings_round_trip() {
    let cases = [
        (Attrs { kind: Kind::Char, perm: 0o620, uid: 0, gid: 5, rdev: makedev(4, 1) }, "0:5:0620:char-4-1"),
        (Attrs { kind: Kind::Block, perm: 0o660, uid: 0, gid: 6, rdev: makedev(8, 0) }, "0:6:0660:block-8-0"),
        (Attrs { kind: Kind::Fifo, perm: 0o644, uid: 1, gid: 2, rdev: 0 }, "1:2:0644:pipe"),
        (Attrs { kind: Kind::Dir, perm: 0o1777, uid: 0, gid: 0, rdev: 0 }, "0:0:1777:dir"),
        (Attrs { kind: Kind::File, perm: 0o4755, uid: 3_000_000, gid: 0, rdev: 0 }, "3000000:0:4755:file"),
        (Attrs { kind: Kind::Symlink, perm: 0o777, uid: 0, gid: 0, rdev: 0 }, "0:0:0777:symlink"),
        (Attrs { kind: Kind::Socket, perm: 0o755, uid: 0, gid: 0, rdev: 0 }, "0:0:0755:socket"),
    ];
    for (a, s) in cases {
        assert_eq!(a.to_override(), s);
        assert_eq!(Attrs::from_override(s.as_bytes(), Kind::File), Some(a), "{s}");
    }
    // Older writers leave the type out; a trailing NUL is tolerated; garbage is no override.
    let old = Attrs::from_override(b"0:0:4755", Kind::Dir).unwrap();
    assert_eq!((old.kind, old.perm), (Kind::Dir, 0o4755));
    assert_eq!(Attrs::from_override(b"1:2:0644:file\0", Kind::File).map(|a| (a.uid, a.gid)), Some((1, 2)));
    for bad in [&b"x:0:0755:file"[..], b"0:0", b"0:0:0755:tape", b"0:0:9999:file", b"0:0:0644:char-1"] {
        assert_eq!(Attrs::from_override(bad, Kind::File), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn what_a_rootless_store_keeps_on_disk() {
    let a = |kind, perm, uid| Attrs { kind, perm, uid, gid: 0, rdev: 0 };
    for (attrs, real, needs) in [
        (a(Kind::File, 0o644, 0), 0o644, false),
        (a(Kind::File, 0o4755, 0), 0o755, true),
        (a(Kind::File, 0o000, 0), 0o600, true),
        (a(Kind::File, 0o644, 1000), 0o644, true),
        (a(Kind::Dir, 0o755, 0), 0o755, false),
        (a(Kind::Dir, 0o500, 0), 0o700, true),
        (a(Kind::Dir, 0o1777, 0), 0o777, true),
        (a(Kind::Fifo, 0o644, 0), 0o644, true),
        (a(Kind::Char, 0o666, 0), 0o666, true),
        (a(Kind::Symlink, 0o777, 0), 0o777, false),
    ] {
        assert_eq!(rootless_storage(&attrs), (real, needs), "{attrs:?}");
    }
}

// ----- changes in a rootless container -----

#[test]
fn chmod_and_chown_in_a_rootless_container_go_to_the_override() {
    let s = common::images::child(R);
    let c = s.container();
    c.chmod("/etc/motd", 0o4750).unwrap();
    c.chown("/etc/group", Some(33), Some(44)).unwrap();
    assert_eq!(over(&c.up("/etc/motd")).as_deref(), Some("0:0:4750:file"));
    assert_eq!(std::fs::symlink_metadata(c.up("/etc/motd")).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(over(&c.up("/etc/group")).as_deref(), Some("33:44:0644:file"));
    assert_eq!((c.st("/etc/group").uid, c.st("/etc/group").gid), (33, 44));
    c.chmod("/etc/motd", 0o644).unwrap();
    assert_eq!(over(&c.up("/etc/motd")), None, "back to what the disk can say alone");
}

#[test]
fn a_device_made_in_a_rootless_container_is_an_empty_file_with_its_override() {
    let s = common::images::child(R);
    let c = s.container();
    c.mknod("/dev/tty0", Kind::Char, 0o620, makedev(4, 0)).unwrap();
    let m = std::fs::symlink_metadata(c.up("/dev/tty0")).unwrap();
    assert!(m.is_file() && m.len() == 0);
    assert_eq!(over(&c.up("/dev/tty0")).as_deref(), Some("0:0:0620:char-4-0"));
    let st = c.lst("/dev/tty0");
    assert_eq!((st.kind(), st.rdev, st.perm()), (Kind::Char, makedev(4, 0), 0o620));
    assert_errno(c.mknod("/dev/wh", Kind::Char, 0o600, 0), libc::EPERM);
}
