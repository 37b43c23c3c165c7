//! Opaque directories (`.wh..wh..opq` in a layer, a directory made again in a container) and type changes
//! between layers (test_layers.py TestOpaque and TestTypeChanges, test_containers_copyup.py).

mod common;

use common::images::{check_diff, check_kernel, each_container};
use common::tar::mode;
use common::tree::{is_opaque, xattr};
use common::*;

fn base() -> Vec<u8> {
    Tar::new()
        .dir("etc")
        .file("etc/passwd", "root\n")
        .file("etc/hosts", "127.0.0.1\n")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/libc.so", "elf")
        .dir("var")
        .file("var/log", "log\n")
        .bytes()
}

fn views(tops: &[&[u8]]) -> Vec<Fs> {
    let base = base();
    privileges()
        .into_iter()
        .map(|p| {
            let mut tars: Vec<&[u8]> = vec![&base];
            tars.extend(tops);
            Stack::of(p, &tars).view()
        })
        .collect()
}

fn other_opaque_xattr(p: Privilege) -> &'static str {
    match p {
        Privilege::Root => "user.overlay.opaque",
        Privilege::Rootless => "trusted.overlay.opaque",
    }
}

#[test]
fn an_opaque_directory_hides_the_lower_children() {
    for fs in views(&[&Tar::new().dir("etc").opaque("etc").file("etc/new", "n").bytes()]) {
        assert_eq!(fs.ls("/etc"), ["new"]);
        assert_errno_at(fs.stat("/etc/passwd"), libc::ENOENT, "/etc/passwd");
    }
}

#[test]
fn the_opaque_marker_is_stored_as_the_conventions_xattr() {
    for p in privileges() {
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&Tar::new().dir("etc").opaque("etc").bytes());
        assert!(is_opaque(&top.join("etc"), p));
        assert_eq!(xattr(&top.join("etc"), other_opaque_xattr(p)), None);
        assert_eq!(std::fs::read_dir(top.join("etc")).unwrap().count(), 0, "no marker file");
    }
}

#[test]
fn the_opaque_marker_applies_wherever_it_stands_in_the_tar() {
    for position in ["first", "middle", "last", "before the directory"] {
        let mut t = Tar::new();
        if position == "before the directory" {
            t = t.opaque("etc");
        }
        t = t.dir_with("etc", mode(0o700));
        if position == "first" {
            t = t.opaque("etc");
        }
        t = t.file("etc/a", "a");
        if position == "middle" {
            t = t.opaque("etc");
        }
        t = t.file("etc/b", "b");
        if position == "last" {
            t = t.opaque("etc");
        }
        for fs in views(&[&t.clone().file("top", "t").bytes()]) {
            assert_eq!(fs.ls("/etc"), ["a", "b"], "{position}");
            assert_eq!(fs.st("/etc").perm(), 0o700, "{position}");
            assert_eq!(fs.ls("/"), ["etc", "top", "usr", "var"], "{position}");
        }
    }
}

#[test]
fn an_opaque_directory_keeps_itself_and_its_siblings() {
    for fs in views(&[&Tar::new().dir("usr").opaque("usr").bytes()]) {
        assert!(fs.is_dir("/usr"));
        assert_eq!(fs.ls("/usr"), Vec::<String>::new());
        assert_eq!(fs.ls("/"), ["etc", "usr", "var"]);
    }
}

#[test]
fn an_opaque_directory_hides_every_lower_layer() {
    let mid = Tar::new().dir("etc").file("etc/mid", "m").bytes();
    let top = Tar::new().dir("etc").opaque("etc").file("etc/top", "t").bytes();
    for fs in views(&[&mid, &top]) {
        assert_eq!(fs.ls("/etc"), ["top"]);
    }
}

#[test]
fn a_directory_over_a_lower_opaque_directory_merges_with_that_one_only() {
    let one = Tar::new().dir("etc").opaque("etc").file("etc/one", "1").bytes();
    let two = Tar::new().dir("etc").file("etc/two", "2").bytes();
    for fs in views(&[&one, &two]) {
        assert_eq!(fs.ls("/etc"), ["one", "two"]);
    }
}

#[test]
fn whiteouts_inside_an_opaque_directory_are_not_stored() {
    for p in privileges() {
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&Tar::new().dir("etc").whiteout("etc/hosts").opaque("etc").file("etc/x", "x").bytes());
        let names: Vec<_> = std::fs::read_dir(top.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x"]);
    }
}

#[test]
fn opaque_xattrs_in_an_archive_are_not_honoured() {
    // Storage-format xattrs come from markers only, never from the archive's own xattrs.
    let t = Tar::new().dir_with("etc", Attr::default().xattr("trusted.overlay.opaque", "y").xattr("user.overlay.opaque", "y")).bytes();
    for p in privileges() {
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&t);
        assert_eq!(s.view().ls("/etc"), ["hosts", "passwd"]);
        assert!(!is_opaque(&top.join("etc"), p));
        assert_eq!(xattr(&top.join("etc"), other_opaque_xattr(p)), None);
    }
}

// ----- type changes between layers -----

#[test]
fn a_file_above_hides_a_directory_below() {
    for fs in views(&[&Tar::new().file("usr", "file now").bytes()]) {
        assert!(fs.is_file("/usr"));
        assert_eq!(fs.text("/usr"), "file now");
        assert_errno_at(fs.list("/usr"), libc::ENOTDIR, "/usr");
        assert_errno(fs.stat("/usr/lib"), libc::ENOTDIR);
    }
}

#[test]
fn a_directory_above_replaces_a_file_below() {
    for fs in views(&[&Tar::new().dir("var").dir("var/log").file("var/log/syslog", "s").bytes()]) {
        assert!(fs.is_dir("/var/log"));
        assert_eq!(fs.ls("/var/log"), ["syslog"]);
    }
}

#[test]
fn a_symlink_above_hides_a_directory_below() {
    for fs in views(&[&Tar::new().symlink("usr", "etc").bytes()]) {
        assert!(fs.is_symlink("/usr"));
        assert_eq!(fs.ls("/usr"), ["hosts", "passwd"], "followed: /etc");
        assert!(!fs.exists("/usr/lib"));
    }
}

#[test]
fn a_directory_above_a_directory_merges_and_takes_the_upper_metadata() {
    let t = Tar::new().dir_with("etc", mode(0o750).owner(0, 42).mtime(FIXED_MTIME + 5)).file("etc/new", "n").bytes();
    for fs in views(&[&t]) {
        assert_eq!(fs.ls("/etc"), ["hosts", "new", "passwd"]);
        let st = fs.st("/etc");
        assert_eq!((st.perm(), st.gid, st.mtime.0), (0o750, 42, FIXED_MTIME + 5));
    }
}

// ----- opaque directories made in a container -----

#[test]
fn mkdir_where_an_image_directory_was_deleted_makes_it_opaque() {
    each_container(|s, c| {
        c.rmtree("/usr/share/doc").unwrap();
        c.mkdir("/usr/share/doc", 0o755).unwrap();
        let host = c.up("/usr/share/doc");
        assert!(std::fs::symlink_metadata(&host).unwrap().is_dir());
        assert!(is_opaque(&host, s.privilege));
        assert_eq!(xattr(&host, other_opaque_xattr(s.privilege)), None);
        assert_eq!(c.ls("/usr/share/doc"), Vec::<String>::new());
        c.write("/usr/share/doc/c.txt", "again").unwrap();
        assert_eq!(c.ls("/usr/share/doc"), ["c.txt"]);
        assert_eq!(c.text("/usr/share/doc/c.txt"), "again");
        // The marker is the storage format's, not content.
        assert!(c.listxattr("/usr/share/doc").unwrap().is_empty());
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn mkdir_where_nothing_was_makes_a_plain_directory() {
    each_container(|s, c| {
        c.mkdir("/brand-new", 0o755).unwrap();
        assert!(!is_opaque(&c.up("/brand-new"), s.privilege));
        c.chmod("/etc", 0o700).unwrap();
        assert!(!is_opaque(&c.up("/etc"), s.privilege), "a copied-up directory keeps merging");
        check_diff(s, c);
    });
}

#[test]
fn makedirs_over_a_deleted_tree_makes_its_top_opaque() {
    each_container(|s, c| {
        c.rmtree("/app").unwrap();
        c.makedirs("/app/data/deeper").unwrap();
        assert_eq!(c.ls("/app"), ["data"]);
        assert_eq!(c.ls("/app/data"), ["deeper"]);
        assert!(is_opaque(&c.up("/app"), s.privilege));
        assert!(!is_opaque(&c.up("/app/data"), s.privilege), "nothing below /app merges any more");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn a_file_made_where_an_image_directory_was_deleted_replaces_it() {
    each_container(|s, c| {
        c.rmtree("/usr/share").unwrap();
        c.write("/usr/share", "a file now").unwrap();
        assert!(c.is_file("/usr/share"));
        assert_eq!(c.markers().get("/usr/share"), Some(&"file"));
        assert_errno(c.list("/usr/share"), libc::ENOTDIR);
        check_diff(s, c);
        check_kernel(s, c);
    });
}
