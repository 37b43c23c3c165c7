//! Copy-up: what triggers it, what it keeps (data, mode, owner, times, xattrs, the parents' metadata),
//! read-after-write, the errors of writes, and the owner of new entries (test_containers_copyup.py).
//! Every case runs in both metadata conventions and ends with the image layers unchanged.

mod common;

use common::images::{big, check_diff, check_kernel, each_container, T0};
use common::tree::{is_opaque, without_times};
use common::*;
use rustix::fs::OFlags;

const PROFILE: &str = "/home/user/.profile";
const PROFILE_DATA: &[u8] = b"export PS1='$ '\n";
const NS: i128 = 1_000_000_000;

/// The first change of PROFILE through `op`: the file is copied up with its data, mode, owner, times and
/// xattrs, and only what the operation changes (`changes`: mode, owner, mtime, size, xattr, nlink) differs.
fn copy_up_case(op: fn(&Fs), content: &[u8], changes: &[&str]) {
    each_container(|s, c| {
        let image = s.view();
        let before = c.st(PROFILE);
        assert!(std::fs::symlink_metadata(c.up(PROFILE)).is_err(), "not copied up before");
        op(c);
        let raw = std::fs::symlink_metadata(c.up(PROFILE)).expect("copied up");
        assert!(raw.is_file());
        assert_eq!(c.read(PROFILE).unwrap(), content);
        let after = c.st(PROFILE);
        assert_eq!(after.kind(), Kind::File);
        assert_eq!(after.perm(), if changes.contains(&"mode") { 0o604 } else { 0o640 });
        assert_eq!((after.uid, after.gid), if changes.contains(&"owner") { (1234, 5678) } else { (1000, 1000) });
        if changes.contains(&"mtime") {
            assert!(after.mtime > before.mtime, "the change moved mtime");
        } else {
            assert_eq!(after.mtime, (T0, 0), "copy-up keeps the mtime");
        }
        assert_eq!(after.size, content.len() as u64);
        let mut xattrs = c.listxattr(PROFILE).unwrap();
        xattrs.sort();
        let want: &[&str] = match changes {
            ["xattr added"] => &["user.added", "user.note", "user.other"],
            ["xattr removed"] => &["user.note"],
            _ => &["user.note", "user.other"],
        };
        assert_eq!(xattrs, want);
        assert_eq!(c.getxattr(PROFILE, "user.note").unwrap().as_deref(), Some(&b"hello"[..]));
        // The parents were copied up with the image's mode and owner, and still merge.
        for d in ["/home", "/home/user"] {
            assert!(std::fs::symlink_metadata(c.up(d)).unwrap().is_dir());
            let (mine, theirs) = (c.st(d), image.st(d));
            assert_eq!((mine.perm(), mine.uid, mine.gid), (theirs.perm(), theirs.uid, theirs.gid), "{d}");
            assert!(!is_opaque(&c.up(d), s.privilege), "{d}");
        }
        if s.privilege == Privilege::Root {
            use std::os::unix::fs::MetadataExt;
            assert_eq!((raw.uid(), raw.gid(), raw.mode() & 0o7777), (after.uid, after.gid, after.perm()), "stored natively");
        }
        assert_eq!(c.ls("/home/user"), [".profile"]);
        check_diff(s, c);
        check_kernel(s, c);
    });
}

macro_rules! copy_up_cases {
    ($($name:ident: $op:expr, $content:expr, [$($change:literal),*];)*) => {
        $(
            #[test]
            fn $name() {
                copy_up_case($op, $content, &[$($change),*]);
            }
        )*
    };
}

copy_up_cases! {
    copy_up_by_opening_read_write_without_writing: |fs| drop(fs.open_write(PROFILE, OFlags::RDWR).unwrap()), PROFILE_DATA, [];
    copy_up_by_opening_for_append_without_writing: |fs| drop(fs.open_write(PROFILE, OFlags::WRONLY | OFlags::APPEND).unwrap()), PROFILE_DATA, [];
    copy_up_by_rewriting: |fs| fs.write(PROFILE, "replaced\n").unwrap(), b"replaced\n", ["mtime"];
    copy_up_by_writing_in_the_middle: |fs| fs.write_at(PROFILE, 2, b"XX").unwrap(), b"exXXrt PS1='$ '\n", ["mtime"];
    copy_up_by_appending: |fs| fs.append(PROFILE, "more\n").unwrap(), b"export PS1='$ '\nmore\n", ["mtime"];
    copy_up_by_chmod: |fs| fs.chmod(PROFILE, 0o604).unwrap(), PROFILE_DATA, ["mode"];
    copy_up_by_chown: |fs| fs.chown(PROFILE, Some(1234), Some(5678)).unwrap(), PROFILE_DATA, ["owner"];
    copy_up_by_chown_keeping_both_ids: |fs| fs.chown(PROFILE, None, None).unwrap(), PROFILE_DATA, [];
    copy_up_by_setxattr: |fs| fs.setxattr(PROFILE, "user.added", b"v").unwrap(), PROFILE_DATA, ["xattr added"];
    copy_up_by_removexattr: |fs| fs.removexattr(PROFILE, "user.other").unwrap(), PROFILE_DATA, ["xattr removed"];
    copy_up_by_truncating_longer: |fs| fs.truncate(PROFILE, 40).unwrap(), b"export PS1='$ '\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", ["mtime"];
    copy_up_by_truncating_shorter: |fs| fs.truncate(PROFILE, 6).unwrap(), b"export", ["mtime"];
    copy_up_by_truncating_to_zero: |fs| fs.truncate(PROFILE, 0).unwrap(), b"", ["mtime"];
    copy_up_by_truncating_to_the_same_size: |fs| fs.truncate(PROFILE, 16).unwrap(), PROFILE_DATA, ["mtime"];
}

#[test]
fn copy_up_by_utime_sets_exactly_the_given_times() {
    each_container(|s, c| {
        c.utime(PROFILE, (T0 as i128 + 50) * NS, T0 as i128 * NS + 77).unwrap();
        let st = c.st(PROFILE);
        assert_eq!(st.atime, (T0 + 50, 0));
        assert_eq!(st.mtime, (T0, 77));
        assert_eq!(c.read(PROFILE).unwrap(), PROFILE_DATA);
        assert_eq!((st.perm(), st.uid, st.gid), (0o640, 1000, 1000));
        assert!(std::fs::symlink_metadata(c.up(PROFILE)).unwrap().is_file());
        check_diff(s, c);
    });
}

#[test]
fn copy_up_by_hard_link_makes_one_file_with_two_names() {
    each_container(|s, c| {
        c.link(PROFILE, "/home/user/.profile.lnk").unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::symlink_metadata(c.up(PROFILE)).unwrap();
        let b = std::fs::symlink_metadata(c.up("/home/user/.profile.lnk")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(c.st("/home/user/.profile.lnk").nlink, 2);
        assert_eq!(c.ls("/home/user"), [".profile", ".profile.lnk"]);
        c.write("/home/user/.profile.lnk", "through the link").unwrap();
        assert_eq!(c.text(PROFILE), "through the link");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn reading_never_copies_up() {
    each_container(|_, c| {
        assert_eq!(c.read("/data/big.bin").unwrap(), big());
        assert_eq!(c.text("/etc/motd"), "welcome to the child image\n");
        assert_eq!(c.read("/lib/libx.so").unwrap(), b"\0libx".repeat(100), "through the image's symlink");
        assert_eq!(c.st("/home/user/.profile").uid, 1000);
        assert_eq!(c.readlink("/lib").unwrap(), "usr/lib");
        assert!(c.is_dir("/etc") && c.is_file("/etc/motd") && c.is_symlink("/lib"));
        assert_eq!(c.ls("/usr"), ["bin", "lib", "share"]);
        assert_eq!(c.getxattr(PROFILE, "user.note").unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(c.listxattr(PROFILE).unwrap(), ["user.note", "user.other"]);
        drop(c.view.open_read(std::path::Path::new("/usr/lib/libx.so"), OFlags::empty()).unwrap());
        assert!(!c.exists("/etc/hostname"));
        assert_errno_at(c.read("/etc/hostname"), libc::ENOENT, "/etc/hostname");
        assert_eq!(std::fs::read_dir(c.upper()).unwrap().count(), 0);
        assert!(c.diff().is_empty());
    });
}

#[test]
fn a_copy_up_without_a_change_is_not_in_the_diff() {
    each_container(|_, c| {
        drop(c.open_write(PROFILE, OFlags::RDWR).unwrap());
        c.chown(PROFILE, None, None).unwrap();
        c.chmod("/etc/motd", 0o644).unwrap();
        assert!(c.up(PROFILE).exists() && c.up("/etc/motd").exists());
        assert!(c.diff().is_empty());
    });
}

#[test]
fn copy_up_keeps_the_parents_metadata_and_times() {
    // As the kernel does (ovl_set_timestamps): copying a file up changes nothing visible about its
    // directories, times included.
    each_container(|s, c| {
        let image = s.view().tree("/");
        c.chmod("/usr/share/doc/c.txt", 0o600).unwrap();
        c.setxattr("/app/data/x.bin", "user.k", b"1").unwrap();
        let after = c.tree("/");
        for d in ["/usr", "/usr/share", "/usr/share/doc", "/app", "/app/data"] {
            assert!(c.up(d).is_dir(), "{d}");
            assert_eq!(after[d], image[d], "{d}");
        }
    });
}

#[test]
fn copy_up_keeps_setuid_bits_devices_and_symlinks() {
    each_container(|s, c| {
        let t = T0 as i128 * NS;
        c.utime("/etc/suid", t, t).unwrap();
        assert_eq!(c.st("/etc/suid").perm(), 0o4755);
        assert_eq!(c.read("/etc/suid").unwrap(), b"\x7fELF-ish");
        // A device node copied up stays a device with its numbers.
        c.utime("/dev/null", t, t + NS).unwrap();
        let null = c.lst("/dev/null");
        assert_eq!((null.kind(), major(null.rdev), minor(null.rdev), null.perm()), (Kind::Char, 1, 3, 0o666));
        assert!(std::fs::symlink_metadata(c.up("/dev/null")).is_ok());
        // A symlink copied up (a change of the link itself) keeps its target.
        c.lutime("/lib", t, t + 3 * NS).unwrap();
        assert_eq!(c.readlink("/lib").unwrap(), "usr/lib");
        assert!(std::fs::symlink_metadata(c.up("/lib")).unwrap().is_symlink());
        assert_eq!(c.lst("/lib").mtime, (T0 + 3, 0));
        assert_eq!(c.read("/lib/libx.so").unwrap(), b"\0libx".repeat(100));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn copy_up_breaks_the_images_hard_links() {
    // Without the kernel's index feature, one name of a multiply-linked file copied up is a new file.
    each_container(|_, c| {
        assert_eq!(c.st("/usr/bin/a").ino, c.st("/usr/bin/b").ino);
        c.write("/usr/bin/a", "changed a").unwrap();
        assert_eq!(c.text("/usr/bin/b"), "hard linked\n");
        assert_eq!(c.text("/usr/bin/a"), "changed a");
    });
}

#[test]
fn a_copied_up_directory_keeps_merging() {
    each_container(|s, c| {
        c.chmod("/etc", 0o700).unwrap();
        c.chown("/usr/share/doc", Some(7), Some(8)).unwrap();
        assert_eq!(std::fs::read_dir(c.up("/etc")).unwrap().count(), 0, "only the directory itself");
        assert!(!is_opaque(&c.up("/etc"), s.privilege));
        assert!(!is_opaque(&c.up("/usr/share/doc"), s.privilege));
        assert_eq!(c.ls("/etc"), s.view().ls("/etc"));
        assert_eq!(c.ls("/usr/share/doc"), ["c.txt"]);
        assert_eq!(c.st("/etc").perm(), 0o700);
        assert_eq!((c.st("/usr/share/doc").uid, c.st("/usr/share/doc").gid), (7, 8));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn reads_see_every_write_at_once() {
    each_container(|s, c| {
        let f = c.open_write("/etc/motd", OFlags::RDWR).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"WELCOME", 0).unwrap();
        assert_eq!(c.text("/etc/motd"), "WELCOME to the child image\n");
        assert_eq!(c.st("/etc/motd").size, 27);
        std::os::unix::fs::FileExt::write_all_at(&f, b"tail", 27).unwrap();
        assert!(c.text("/etc/motd").ends_with("image\ntail"));
        drop(f);
        c.append("/data/big.bin", "!").unwrap();
        assert_eq!(c.st("/data/big.bin").size, big().len() as u64 + 1);
        assert_eq!(c.read("/data/big.bin").unwrap(), [big(), b"!".to_vec()].concat());
        c.write("/app/main.py", "x = 1\n").unwrap();
        c.truncate("/app/main.py", 2).unwrap();
        assert_eq!(c.text("/app/main.py"), "x ");
        c.write("/home/user/ünïcode.txt", "grüße\n").unwrap();
        assert_eq!(c.text("/home/user/ünïcode.txt"), "grüße\n");
        for i in 0..20 {
            c.write("/tmp/counter", i.to_string()).unwrap();
            assert_eq!(c.text("/tmp/counter"), i.to_string());
        }
        c.chmod("/tmp/counter", 0o600).unwrap();
        assert_eq!(c.st("/tmp/counter").perm(), 0o600);
        c.chown("/tmp/counter", Some(33), Some(44)).unwrap();
        assert_eq!((c.st("/tmp/counter").uid, c.st("/tmp/counter").gid), (33, 44));
        c.utime("/tmp/counter", 1000 * NS, 2000 * NS).unwrap();
        assert_eq!(c.st("/tmp/counter").mtime, (2000, 0));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

/// A write that must fail with `errno` naming `path`, and change nothing.
fn refused(op: fn(&Fs) -> Result<()>, errno: i32, path: &str) {
    each_container(|_, c| {
        assert_errno_at(op(c), errno, path);
        assert!(c.diff().is_empty());
        assert_eq!(std::fs::read_dir(c.upper()).unwrap().count(), 0, "nothing in the writable layer");
    });
}

macro_rules! refused_cases {
    ($($name:ident: $op:expr, $errno:expr, $path:literal;)*) => {
        $(
            #[test]
            fn $name() {
                refused($op, $errno, $path);
            }
        )*
    };
}

refused_cases! {
    reading_below_a_missing_directory_is_enoent: |fs| fs.read("/nope/x").map(drop), libc::ENOENT, "/nope/x";
    writing_below_a_missing_directory_is_enoent: |fs| fs.write("/nope/x", ""), libc::ENOENT, "/nope/x";
    mkdir_over_a_directory_is_eexist: |fs| fs.mkdir("/etc", 0o755), libc::EEXIST, "/etc";
    mkdir_over_a_symlink_is_eexist: |fs| fs.mkdir("/lib", 0o755), libc::EEXIST, "/lib";
    opening_a_directory_for_writing_is_eisdir: |fs| fs.open_write("/etc", OFlags::WRONLY).map(drop), libc::EISDIR, "/etc";
    removing_a_directory_is_eisdir: |fs| fs.remove("/etc"), libc::EISDIR, "/etc";
    listing_a_file_is_enotdir: |fs| fs.list("/etc/passwd").map(drop), libc::ENOTDIR, "/etc/passwd";
    reading_below_a_file_is_enotdir: |fs| fs.read("/etc/passwd/x").map(drop), libc::ENOTDIR, "/etc/passwd/x";
    a_symlink_over_a_file_is_eexist: |fs| fs.symlink("x", "/etc/motd"), libc::EEXIST, "/etc/motd";
    a_hard_link_over_a_file_is_eexist: |fs| fs.link("/etc/motd", "/etc/passwd"), libc::EEXIST, "/etc/passwd";
    a_hard_link_to_a_directory_is_eperm: |fs| fs.link("/etc", "/etc3"), libc::EPERM, "/etc";
    a_hard_link_to_a_directory_over_a_directory_is_eexist_first: |fs| fs.link("/etc", "/usr"), libc::EEXIST, "/usr";
    chmod_of_a_whited_out_file_is_enoent: |fs| fs.chmod("/etc/hostname", 0o600), libc::ENOENT, "/etc/hostname";
    truncating_a_directory_is_eisdir: |fs| fs.truncate("/etc", 0), libc::EISDIR, "/etc";
    rmtree_of_a_file_is_enotdir: |fs| fs.rmtree("/etc/motd"), libc::ENOTDIR, "/etc/motd";
    readlink_of_a_file_is_einval: |fs| fs.readlink("/etc/motd").map(drop), libc::EINVAL, "/etc/motd";
    rmdir_of_a_merged_directory_with_content_is_enotempty: |fs| fs.rmdir("/usr/bin"), libc::ENOTEMPTY, "/usr/bin";
    an_exclusive_create_over_an_image_file_is_eexist: |fs| fs.open_write("/etc/motd", OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL).map(drop), libc::EEXIST, "/etc/motd";
    a_symlinks_own_mode_cannot_change: |fs| fs.view.chmod(std::path::Path::new("/lib"), 0o700, false), libc::EOPNOTSUPP, "/lib";
    storage_xattrs_cannot_be_set: |fs| fs.setxattr("/etc", "trusted.overlay.opaque", b"y"), libc::EPERM, "/etc";
}

#[test]
fn a_missing_xattr_is_none() {
    each_container(|_, c| {
        assert_eq!(c.getxattr("/etc/motd", "user.none").unwrap(), None);
        assert_errno_at(c.getxattr("/nope", "user.none"), libc::ENOENT, "/nope");
        assert!(c.diff().is_empty());
    });
}

#[test]
fn new_entries_in_a_setgid_directory_take_its_group() {
    // As on Linux (and through the kernel's overlay): a new file gets the directory's group, a new
    // subdirectory its group and the setgid bit, also where the new entry replaces a whiteout (it is
    // built elsewhere first).
    each_container(|_, c| {
        c.mkdir("/shared", 0o755).unwrap();
        c.chown("/shared", Some(0), Some(50)).unwrap();
        c.chmod("/shared", 0o2775).unwrap();
        c.write("/shared/file", "f").unwrap();
        c.mkdir("/shared/sub", 0o755).unwrap();
        c.chown("/etc", Some(0), Some(60)).unwrap();
        c.chmod("/etc", 0o2755).unwrap();
        c.remove("/etc/motd").unwrap();
        c.write("/etc/motd", "new").unwrap();
        c.remove("/etc/passwd").unwrap();
        c.mkdir("/etc/passwd", 0o755).unwrap();
        c.write("/etc/brand-new", "n").unwrap();
        let got: Vec<(u32, bool)> = ["/shared/file", "/shared/sub", "/etc/motd", "/etc/passwd", "/etc/brand-new"]
            .iter()
            .map(|p| (c.st(p).gid, c.st(p).mode & libc::S_ISGID != 0))
            .collect();
        assert_eq!(got, [(50, false), (50, true), (60, false), (60, true), (60, false)]);
    });
}

#[test]
fn a_symlinks_own_owner_changes_natively_and_is_refused_rootless() {
    // A rootless store keeps owners in an xattr, which a symlink cannot carry (as with containers/storage):
    // the change is refused with EPERM rather than silently lost.
    each_container(|s, c| {
        c.symlink("target", "/mylink").unwrap();
        match s.privilege {
            Privilege::Rootless => {
                assert_errno(c.lchown("/mylink", 5, 6), libc::EPERM);
                assert_errno(c.lchown("/lib", 7, 8), libc::EPERM);
            }
            Privilege::Root => {
                c.lchown("/mylink", 5, 6).unwrap();
                assert_eq!((c.lst("/mylink").uid, c.lst("/mylink").gid), (5, 6));
                c.lchown("/lib", 7, 8).unwrap();
                assert_eq!((c.lst("/lib").uid, c.lst("/lib").gid), (7, 8));
            }
        }
        assert_eq!(c.readlink("/lib").unwrap(), "usr/lib");
    });
}

#[test]
fn chown_clears_setuid_as_the_kernel_does() {
    each_container(|_, c| {
        c.chown("/etc/suid", Some(5), Some(6)).unwrap();
        let st = c.st("/etc/suid");
        assert_eq!((st.uid, st.gid), (5, 6));
        assert_eq!(st.perm() & 0o6000, 0, "setuid cleared by chown");
    });
}

#[test]
fn concurrent_first_writes_to_one_image_file_share_one_copy() {
    // Eight handles of the container open the same image file for writing at once: one copy-up wins,
    // and every write lands in that copy.
    each_container(|s, c| {
        for path in ["/data/big.bin", "/usr/share/doc/c.txt"] {
            let handles: Vec<Fs> = (0..8).map(|_| c.reopen()).collect();
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                for (i, fs) in handles.iter().enumerate() {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        fs.write_at(path, i as u64, b"Z").unwrap();
                    });
                }
            });
            let original = s.view().read(path).unwrap();
            let data = c.read(path).unwrap();
            assert_eq!(&data[..8], b"ZZZZZZZZ", "{path}");
            assert_eq!(&data[8..], &original[8..], "{path}");
            assert_eq!(std::fs::read_dir(c.scratch()).unwrap().count(), 0, "leftovers in scratch");
        }
    });
}

#[test]
fn another_handle_sees_the_copy_up() {
    each_container(|s, c| {
        let other = c.reopen();
        c.write("/etc/motd", "from the first handle\n").unwrap();
        assert_eq!(other.text("/etc/motd"), "from the first handle\n");
        other.append("/etc/motd", "and the second\n").unwrap();
        assert_eq!(c.text("/etc/motd"), "from the first handle\nand the second\n");
        assert_same(&without_times(&other.tree("/"), true), &without_times(&c.tree("/"), true));
        check_diff(s, c);
    });
}
