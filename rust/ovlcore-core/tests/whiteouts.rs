//! Whiteouts in layer tars (`.wh.NAME`): what they hide, what they never hide, how they are stored, and
//! the stacks the kernel must show the same way (test_layers.py TestWhiteouts, test_kernel_oracle.py);
//! and the whiteouts a container's deletions leave (test_containers_copyup.py).

mod common;

use common::images::{check_diff, check_kernel, each_container};
use common::kernel::kernel_tree;
use common::tree::{is_whiteout, listing, shape, Listing};
use common::*;
use rustix::fs::OFlags;

fn base() -> Vec<u8> {
    Tar::new()
        .dir("etc")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/hosts", "127.0.0.1 localhost\n")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/libc.so", b"\x7fELF")
        .dir("var")
        .file("var/log", "log\n")
        .bytes()
}

/// The view of BASE with `top` over it, in every convention this process can test.
fn views(top: &[u8]) -> Vec<Fs> {
    privileges().into_iter().map(|p| Stack::of(p, &[&base(), top]).view()).collect()
}

#[test]
fn a_whiteout_hides_a_file_below() {
    for fs in views(&Tar::new().dir("etc").whiteout("etc/hosts").bytes()) {
        assert_eq!(fs.ls("/etc"), ["passwd"]);
        assert!(!fs.exists("/etc/hosts"));
        assert_errno_at(fs.stat("/etc/hosts"), libc::ENOENT, "/etc/hosts");
    }
}

#[test]
fn a_whiteout_is_stored_as_a_0_0_character_device() {
    for p in privileges() {
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&Tar::new().dir("etc").whiteout("etc/hosts").bytes());
        assert!(is_whiteout(&top.join("etc/hosts")));
        assert!(!top.join("etc/.wh.hosts").exists());
    }
}

#[test]
fn a_whiteout_hides_a_directory_and_everything_below() {
    for fs in views(&Tar::new().whiteout("usr").bytes()) {
        assert_eq!(fs.ls("/"), ["etc", "var"]);
        assert!(!fs.exists("/usr/lib/libc.so"));
        assert_errno(fs.list("/usr"), libc::ENOENT);
    }
}

#[test]
fn a_whiteout_never_deletes_a_file_the_same_layer_adds() {
    for whiteout_first in [true, false] {
        let mut t = Tar::new().dir("etc");
        if whiteout_first {
            t = t.whiteout("etc/hosts");
        }
        t = t.file("etc/hosts", "new hosts\n");
        if !whiteout_first {
            t = t.whiteout("etc/hosts");
        }
        for fs in views(&t.bytes()) {
            assert_eq!(fs.text("/etc/hosts"), "new hosts\n", "whiteout first: {whiteout_first}");
            assert_eq!(fs.ls("/etc"), ["hosts", "passwd"]);
        }
    }
}

#[test]
fn a_whiteout_never_deletes_a_directory_the_same_layer_adds_but_hides_what_is_below_it() {
    for whiteout_first in [true, false] {
        let mut t = Tar::new();
        if whiteout_first {
            t = t.whiteout("usr");
        }
        t = t.dir("usr").dir("usr/new").file("usr/new/f", "f");
        if !whiteout_first {
            t = t.whiteout("usr");
        }
        for fs in views(&t.bytes()) {
            assert_eq!(fs.ls("/usr"), ["new"], "whiteout first: {whiteout_first}");
            assert_eq!(fs.text("/usr/new/f"), "f");
            assert!(!fs.exists("/usr/lib"));
        }
    }
}

#[test]
fn a_whiteout_then_an_implied_parent_directory_adds_a_new_directory() {
    // `.wh.usr` then `usr/new` without an entry for `usr/`: the layer adds `usr` (implied by its child).
    for fs in views(&Tar::new().whiteout("usr").file("usr/new", "n").bytes()) {
        assert_eq!(fs.ls("/usr"), ["new"]);
        assert!(!fs.exists("/usr/lib"));
    }
}

#[test]
fn a_whiteout_after_an_implied_parent_directory_hides_only_below() {
    for fs in views(&Tar::new().file("usr/new", "n").whiteout("usr").bytes()) {
        assert_eq!(fs.ls("/usr"), ["new"]);
        assert!(!fs.exists("/usr/lib"));
    }
}

#[test]
fn a_whiteout_then_an_opaque_marker_then_the_directory() {
    for fs in views(&Tar::new().whiteout("usr").opaque("usr").dir("usr").file("usr/new", "n").bytes()) {
        assert_eq!(fs.ls("/usr"), ["new"]);
    }
}

#[test]
fn a_whiteout_then_the_name_as_another_type() {
    // The lower directory /usr becomes a file; the lower file /var/log becomes a directory.
    let t = Tar::new().whiteout("usr").file("usr", "now a file").dir("var").whiteout("var/log").dir("var/log").file("var/log/x", "x");
    for fs in views(&t.bytes()) {
        assert!(fs.is_file("/usr"));
        assert_eq!(fs.text("/usr"), "now a file");
        assert_eq!(fs.ls("/var/log"), ["x"]);
    }
}

#[test]
fn a_whiteout_of_a_missing_name_is_harmless() {
    for fs in views(&Tar::new().dir("etc").whiteout("etc/nonexistent").bytes()) {
        assert_eq!(fs.ls("/etc"), ["hosts", "passwd"]);
    }
}

#[test]
fn whiteouts_that_hide_nothing_are_not_stored() {
    // In a directory no lower layer has, the kernel would list a whiteout device: the importer drops it.
    for p in privileges() {
        let mut s = Stack::new(p);
        let bottom = s.push(&Tar::new().dir("d").whiteout("d/x").whiteout("y").bytes());
        assert_eq!(std::fs::read_dir(bottom.join("d")).unwrap().count(), 0);
        assert!(std::fs::symlink_metadata(bottom.join("y")).is_err());
        assert_eq!(s.view().ls("/d"), Vec::<String>::new());
        // Above other layers: only where the directory exists below.
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&Tar::new().dir("new").whiteout("new/x").dir("etc").whiteout("etc/hosts").bytes());
        assert!(std::fs::symlink_metadata(top.join("new/x")).is_err());
        assert!(is_whiteout(&top.join("etc/hosts")));
    }
}

#[test]
fn whiteout_and_opaque_markers_are_never_visible() {
    for fs in views(&Tar::new().dir("etc").whiteout("etc/hosts").opaque("usr").bytes()) {
        for d in ["/", "/etc", "/usr"] {
            assert!(fs.ls(d).iter().all(|n| !n.starts_with(".wh.")), "{d}");
        }
    }
}

#[test]
fn other_wh_wh_names_are_aufs_metadata_and_skipped() {
    for p in privileges() {
        let mut s = Stack::of(p, &[&base()]);
        let top = s.push(&Tar::new().dir("etc").file("etc/.wh..wh.plnk", "").file(".wh..wh.aufs", "").bytes());
        let fs = s.view();
        assert_eq!(fs.ls("/etc"), ["hosts", "passwd"]);
        assert_eq!(fs.ls("/"), ["etc", "usr", "var"]);
        assert!(std::fs::symlink_metadata(top.join("etc/.wh..wh.plnk")).is_err());
    }
}

#[test]
fn the_aufs_metadata_directory_and_its_content_are_skipped() {
    let t = Tar::new().dir(".wh..wh.plnk").file(".wh..wh.plnk/123.456", "aufs").file("keep", "k").bytes();
    for p in privileges() {
        assert_eq!(Stack::of(p, &[&t]).view().ls("/"), ["keep"]);
    }
}

#[test]
fn a_whiteout_hides_the_name_in_every_layer_below() {
    let mid = Tar::new().dir("etc").file("etc/hosts", "mid hosts\n").file("etc/mid", "m").bytes();
    let top = Tar::new().dir("etc").whiteout("etc/hosts").bytes();
    for p in privileges() {
        let fs = Stack::of(p, &[&base(), &mid, &top]).view();
        assert_eq!(fs.ls("/etc"), ["mid", "passwd"]);
        assert!(!fs.exists("/etc/hosts"));
    }
}

#[test]
fn a_name_added_again_above_a_whiteout_is_visible_and_new() {
    let mid = Tar::new().whiteout("usr").bytes();
    let top = Tar::new().dir("usr").file("usr/again", "a").bytes();
    for p in privileges() {
        let fs = Stack::of(p, &[&base(), &mid, &top]).view();
        assert_eq!(fs.ls("/usr"), ["again"], "the directory below the whiteout stays hidden");
    }
}

// ----- fixed stacks, compared with the kernel when running as root -----

/// The listing of a table of (path, kind, file content or link target).
fn expect(entries: &[(&str, Kind, &str)]) -> Listing {
    let mut v: Listing = entries
        .iter()
        .map(|(p, k, c)| (p.to_string(), *k, matches!(k, Kind::File | Kind::Symlink).then(|| c.as_bytes().to_vec())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The view of `tars` shows `want`; so does the kernel's overlayfs of the same layer directories.
fn check_stack(p: Privilege, tars: &[&[u8]], want: &[(&str, Kind, &str)]) {
    let s = Stack::of(p, tars);
    let view = s.view().tree("/");
    assert_eq!(listing(&view), expect(want), "the view ({p:?})");
    if let Some(k) = kernel_tree(&s.top_first(), p) {
        assert_eq!(shape(&k), shape(&view), "the kernel ({p:?})");
    }
}

#[test]
fn a_fixed_stack_of_whiteouts_opaque_directories_and_type_changes() {
    let d = |m: u32| Attr::default().mode(m);
    let bottom = Tar::new()
        .dir("a")
        .file("a/x", "ax")
        .file("a/y", "ay")
        .file("b", "b")
        .dir("c")
        .symlink("c/a", "/a/x")
        .dir("c/b")
        .file("c/b/c", "deep")
        .bytes();
    let mid = Tar::new().dir_with("a", d(0o700)).file("a/z", "az").dir("b").file("b/a", "ba").dir("c").whiteout("a/x").whiteout("c/b").bytes();
    let top = Tar::new().dir("a").dir("c").symlink("c/b", "../a").opaque("a").whiteout("b").bytes();
    for p in privileges() {
        check_stack(p, &[&bottom, &mid, &top], &[("/a", Kind::Dir, ""), ("/c", Kind::Dir, ""), ("/c/a", Kind::Symlink, "/a/x"), ("/c/b", Kind::Symlink, "../a")]);
    }
}

#[test]
fn a_whiteout_and_the_name_added_again_in_one_layer() {
    let bottom = Tar::new().dir("a").file("a/old", "old").file("b", "b").bytes();
    let mid = Tar::new().file("c", "c").bytes();
    // `.wh.a` then `a/` + `a/new`; `b` then `.wh.b`: the lower entries are hidden, this layer's kept.
    let top = Tar::new().whiteout("a").dir("a").file("a/new", "new").file("b", "new b").whiteout("b").bytes();
    for p in privileges() {
        check_stack(
            p,
            &[&bottom, &mid, &top],
            &[("/a", Kind::Dir, ""), ("/a/new", Kind::File, "new"), ("/b", Kind::File, "new b"), ("/c", Kind::File, "c")],
        );
    }
}

#[test]
fn a_single_layer_with_links() {
    let only = Tar::new().dir("a").file("a/b", "x").symlink("l", "a/b").symlink("m", "/a").bytes();
    for p in privileges() {
        check_stack(p, &[&only], &[("/a", Kind::Dir, ""), ("/a/b", Kind::File, "x"), ("/l", Kind::Symlink, "a/b"), ("/m", Kind::Symlink, "/a")]);
    }
}

// ----- deletions in a container -----

#[test]
fn deleting_an_image_file_leaves_a_whiteout() {
    each_container(|s, c| {
        c.remove("/etc/motd").unwrap(); // in two layers: one whiteout hides both
        assert!(is_whiteout(&c.up("/etc/motd")));
        assert!(!c.exists("/etc/motd"));
        assert!(!c.ls("/etc").contains(&"motd".to_string()));
        assert_errno_at(c.stat("/etc/motd"), libc::ENOENT, "/etc/motd");
        // A symlink of the image is removed, not its target.
        c.remove("/lib").unwrap();
        assert!(is_whiteout(&c.up("/lib")));
        assert!(c.exists("/usr/lib/libx.so"));
        // A copied-up file removed: a whiteout replaces the copy.
        c.chmod("/etc/group", 0o600).unwrap();
        c.remove("/etc/group").unwrap();
        assert!(is_whiteout(&c.up("/etc/group")));
        // A file only in the writable layer is simply gone.
        c.write("/etc/fresh", "x").unwrap();
        c.remove("/etc/fresh").unwrap();
        assert!(std::fs::symlink_metadata(c.up("/etc/fresh")).is_err());
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn deletions_share_one_whiteout_inode_as_the_kernels_do() {
    use std::os::unix::fs::MetadataExt;
    each_container(|s, c| {
        let ino = |p: &str| std::fs::symlink_metadata(c.up(p)).unwrap().ino();
        c.remove("/etc/motd").unwrap();
        c.remove("/etc/passwd").unwrap();
        c.remove("/usr/share/doc/c.txt").unwrap();
        assert_eq!(ino("/etc/motd"), ino("/etc/passwd"));
        assert_eq!(ino("/etc/motd"), ino("/usr/share/doc/c.txt"));
        // The scratch directory holds the shared one and nothing else.
        let names: Vec<_> = std::fs::read_dir(c.scratch()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["whiteout"]);
        // Gone (the scratch directory's recovery may take it): the next deletion makes another.
        std::fs::remove_file(c.scratch().join("whiteout")).unwrap();
        c.remove("/etc/secret").unwrap();
        c.remove("/etc/group").unwrap();
        assert!(is_whiteout(&c.up("/etc/secret")));
        assert_eq!(ino("/etc/secret"), ino("/etc/group"));
        assert_ne!(ino("/etc/secret"), ino("/etc/motd"));
        // Removing one name of a shared whiteout (a name made again) leaves the others whiteouts.
        c.write("/etc/motd", "again\n").unwrap();
        assert!(is_whiteout(&c.up("/etc/passwd")));
        assert_eq!(c.text("/etc/motd"), "again\n");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn rmtree_of_an_image_directory_is_one_whiteout() {
    each_container(|s, c| {
        c.write("/usr/share/doc/new.txt", "n").unwrap();
        c.chmod("/usr/lib/libx.so", 0o700).unwrap();
        c.rmtree("/usr").unwrap();
        assert_eq!(c.markers().into_iter().collect::<Vec<_>>(), [("/usr".to_string(), "whiteout")]);
        assert!(!c.exists("/usr"));
        assert!(!c.exists("/lib/libx.so"), "/lib -> usr/lib dangles now");
        assert!(c.is_symlink("/lib"));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn rmtree_of_a_directory_made_in_the_container_leaves_nothing() {
    each_container(|s, c| {
        c.makedirs("/new/a/b").unwrap();
        c.write("/new/a/b/f", "f").unwrap();
        c.rmtree("/new").unwrap();
        assert!(c.markers().is_empty());
        assert!(c.diff().is_empty());
        check_diff(s, c);
    });
}

#[test]
fn new_entries_where_a_whiteout_was() {
    each_container(|s, c| {
        for p in ["/etc/motd", "/etc/passwd", "/etc/group", "/opt/tool", "/bin/sh", "/etc/secret"] {
            c.remove(p).unwrap();
        }
        c.write("/etc/motd", "new motd\n").unwrap();
        c.symlink("motd", "/etc/passwd").unwrap();
        c.mkfifo("/etc/group", 0o644).unwrap();
        c.write("/app/x", "x").unwrap();
        c.link("/app/x", "/opt/tool").unwrap();
        c.mkdir("/bin/sh", 0o755).unwrap();
        let f = c.open_write("/etc/secret", OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL).unwrap();
        std::io::Write::write_all(&mut &f, b"exclusive").unwrap();
        let m = c.markers();
        assert_eq!(m["/etc/motd"], "file");
        assert_eq!(m["/etc/passwd"], "symlink");
        assert_eq!(m["/etc/group"], if s.privilege == Privilege::Root { "other" } else { "file" }, "a FIFO, or its stand-in");
        assert_eq!(m["/opt/tool"], "file");
        assert_eq!(m["/bin/sh"], "opaque", "a directory over a whiteout hides what was below");
        assert_eq!(m["/etc/secret"], "file");
        assert_eq!(c.lst("/etc/group").kind(), Kind::Fifo);
        assert_eq!(c.text("/etc/motd"), "new motd\n");
        assert_eq!(c.text("/etc/passwd"), "new motd\n");
        assert_eq!(c.text("/opt/tool"), "x");
        assert_eq!(c.ls("/bin/sh"), Vec::<String>::new());
        assert_eq!(c.text("/etc/secret"), "exclusive");
        assert_errno(c.open_write("/etc/secret", OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL), libc::EEXIST);
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn rmdir_of_merged_directories() {
    each_container(|s, c| {
        c.rmdir("/var/log").unwrap(); // an empty image directory
        assert!(is_whiteout(&c.up("/var/log")));
        assert_errno_at(c.rmdir("/usr/bin"), libc::ENOTEMPTY, "/usr/bin");
        c.remove("/usr/bin/a").unwrap();
        c.write("/usr/bin/tmp", "t").unwrap();
        c.remove("/usr/bin/b").unwrap();
        assert_errno(c.rmdir("/usr/bin"), libc::ENOTEMPTY);
        c.remove("/usr/bin/tmp").unwrap();
        assert_eq!(c.ls("/usr/bin"), Vec::<String>::new(), "emptied through the view");
        c.rmdir("/usr/bin").unwrap();
        assert!(!c.exists("/usr/bin"));
        assert!(is_whiteout(&c.up("/usr/bin")));
        // Opaque in layer 2: only c.txt is visible, so removing it empties the directory.
        c.remove("/usr/share/doc/c.txt").unwrap();
        c.rmdir("/usr/share/doc").unwrap();
        assert!(is_whiteout(&c.up("/usr/share/doc")));
        assert_errno(c.rmdir("/etc/passwd"), libc::ENOTDIR);
        assert_errno(c.rmdir("/var/log"), libc::ENOENT);
        assert_errno(c.rmdir("/lib"), libc::ENOTDIR);
        // A directory can be made again where one was removed.
        c.mkdir("/usr/bin", 0o755).unwrap();
        assert_eq!(c.ls("/usr/bin"), Vec::<String>::new());
        check_diff(s, c);
        check_kernel(s, c);
    });
}
