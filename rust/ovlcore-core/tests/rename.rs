//! Rename with overlayfs rules, except that directories of the image can be renamed too (the kernel says
//! EXDEV; the core copies them up whole, opaque): what the new name holds, what the old one leaves, the
//! errnos of Linux's rules, and mounts (test_containers_copyup.py).

mod common;

use common::images::{check_diff, check_kernel, each_container};
use common::tree::{is_opaque, is_whiteout, markers, rebase, without_times};
use common::*;

/// No whiteout below `dir` of the writable layer (it would show in a directory that no longer merges).
fn no_whiteouts_below(c: &Ctr, dir: &str) {
    let m = markers(&c.up(dir), Privilege::Root);
    assert!(m.values().all(|k| *k != "whiteout"), "whiteouts below {dir}: {m:?}");
}

#[test]
fn renaming_an_image_directory_moves_what_it_showed() {
    each_container(|s, c| {
        c.write("/etc/motd", "changed\n").unwrap();
        c.remove("/etc/passwd").unwrap();
        c.write("/etc/new", "new\n").unwrap();
        c.mkdir("/etc/sub", 0o755).unwrap();
        c.write("/etc/sub/f", "f\n").unwrap();
        let before = without_times(&c.tree("/etc"), true);
        c.rename("/etc", "/etc2").unwrap();
        assert_same(&rebase(&without_times(&c.tree("/etc2"), true), "/etc2", "/etc"), &before);
        assert!(!c.exists("/etc"));
        assert!(is_whiteout(&c.up("/etc")));
        assert!(is_opaque(&c.up("/etc2"), s.privilege));
        no_whiteouts_below(c, "/etc2");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_a_whole_image_tree_and_back() {
    each_container(|s, c| {
        let tree = without_times(&c.tree("/usr"), true);
        c.rename("/usr", "/usr2").unwrap();
        assert_same(&rebase(&without_times(&c.tree("/usr2"), true), "/usr2", "/usr"), &tree);
        assert_eq!(c.text("/usr2/share/doc/c.txt"), "doc c (child)\n");
        assert!(!c.exists("/usr2/share/doc/a.txt"), "still hidden (opaque in layer 2)");
        assert!(!c.exists("/lib/libx.so"));
        no_whiteouts_below(c, "/usr2");
        check_kernel(s, c);
        c.rename("/usr2", "/usr").unwrap();
        assert_same(&without_times(&c.tree("/usr"), true), &tree);
        assert!(!c.lexists("/usr2"));
        assert!(std::fs::symlink_metadata(c.up("/usr2")).is_err());
        assert_eq!(c.read("/lib/libx.so").unwrap(), b"\0libx".repeat(100));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_keeps_the_directories_own_metadata_and_times() {
    // rename(2) changes nothing about the moved directory: copying it up whole must not either, nor
    // the times of the directories inside it.
    each_container(|_, c| {
        let before = c.tree("/usr");
        c.rename("/usr", "/usr2").unwrap();
        assert_same(&rebase(&c.tree("/usr2"), "/usr2", "/usr"), &before);
    });
}

#[test]
fn renaming_a_directory_onto_a_deleted_image_directory_makes_it_opaque() {
    each_container(|s, c| {
        let app = without_times(&c.tree("/app"), true);
        c.rmtree("/opt").unwrap();
        c.rename("/app", "/opt").unwrap();
        assert_same(&rebase(&without_times(&c.tree("/opt"), true), "/opt", "/app"), &app);
        assert!(!c.exists("/opt/tool"));
        assert!(is_opaque(&c.up("/opt"), s.privilege));
        assert!(is_whiteout(&c.up("/app")));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_a_directory_over_an_empty_image_directory_makes_it_opaque() {
    each_container(|s, c| {
        let data = without_times(&c.tree("/app/data"), true);
        c.rename("/app/data", "/var/log").unwrap();
        assert_same(&rebase(&without_times(&c.tree("/var/log"), true), "/var/log", "/app/data"), &data);
        assert!(is_opaque(&c.up("/var/log"), s.privilege));
        assert!(!c.exists("/app/data"));
        assert!(is_whiteout(&c.up("/app/data")));
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_a_directory_made_in_the_container_leaves_nothing_behind() {
    each_container(|s, c| {
        c.mkdir("/nd", 0o755).unwrap();
        c.write("/nd/f", "f").unwrap();
        c.rename("/nd", "/nd2").unwrap();
        assert!(std::fs::symlink_metadata(c.up("/nd")).is_err());
        assert!(!is_opaque(&c.up("/nd2"), s.privilege), "nothing below to hide");
        assert_eq!(c.text("/nd2/f"), "f");
        // ...and over a deleted image directory it becomes opaque.
        c.rmtree("/bin").unwrap();
        c.rename("/nd2", "/bin").unwrap();
        assert_eq!(c.ls("/bin"), ["f"]);
        assert!(is_opaque(&c.up("/bin"), s.privilege));
        assert!(std::fs::symlink_metadata(c.up("/nd2")).is_err());
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_an_image_file_keeps_its_metadata_and_leaves_a_whiteout() {
    each_container(|s, c| {
        let before = c.st("/etc/secret");
        c.rename("/etc/secret", "/etc/secret.bak").unwrap();
        assert!(is_whiteout(&c.up("/etc/secret")));
        let st = c.st("/etc/secret.bak");
        assert_eq!((st.perm(), st.uid, st.gid, st.mtime, st.size), (before.perm(), before.uid, before.gid, before.mtime, before.size));
        assert_eq!(c.text("/etc/secret.bak"), "s3cr3t\n");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_a_file_over_an_image_file_replaces_it() {
    each_container(|s, c| {
        c.rename("/etc/secret", "/etc/motd").unwrap();
        assert_eq!(c.text("/etc/motd"), "s3cr3t\n");
        assert!(!c.exists("/etc/secret"));
        assert!(is_whiteout(&c.up("/etc/secret")));
        check_diff(s, c);
    });
}

#[test]
fn renaming_a_file_into_another_directory_over_a_whiteout() {
    each_container(|s, c| {
        c.remove("/opt/tool").unwrap();
        c.rename("/bin/sh", "/opt/tool").unwrap();
        assert_eq!(c.text("/opt/tool"), "#!/fake/shell\n".repeat(20));
        assert!(is_whiteout(&c.up("/bin/sh")));
        assert_eq!(c.markers()["/opt/tool"], "file");
        check_diff(s, c);
        check_kernel(s, c);
    });
}

#[test]
fn renaming_an_image_symlink_moves_the_link_itself() {
    each_container(|s, c| {
        c.rename("/lib", "/lib64").unwrap();
        assert_eq!(c.readlink("/lib64").unwrap(), "usr/lib");
        assert!(c.is_dir("/lib64"));
        assert!(is_whiteout(&c.up("/lib")));
        assert!(c.exists("/usr/lib/libx.so"));
        check_diff(s, c);
    });
}

#[test]
fn renaming_a_path_to_itself_changes_nothing() {
    each_container(|_, c| {
        c.rename("/etc/motd", "/etc/motd").unwrap();
        c.rename("/usr", "/usr/").unwrap();
        assert!(c.markers().is_empty());
    });
}

/// A rename that fails with Linux's errno, naming `path`, and changes nothing.
fn refused(src: &str, dst: &str, errno: i32, path: &str) {
    each_container(|_, c| {
        assert_errno_at(c.rename(src, dst), errno, path);
        assert!(c.diff().is_empty());
        assert!(c.markers().is_empty());
    });
}

macro_rules! refused_renames {
    ($($name:ident: $src:literal -> $dst:literal, $errno:expr, $path:literal;)*) => {
        $(
            #[test]
            fn $name() {
                refused($src, $dst, $errno, $path);
            }
        )*
    };
}

refused_renames! {
    a_directory_over_a_directory_with_content_is_enotempty: "/etc" -> "/usr", libc::ENOTEMPTY, "/usr";
    a_directory_over_a_file_is_enotdir: "/etc" -> "/bin/sh", libc::ENOTDIR, "/bin/sh";
    a_file_over_a_directory_is_eisdir: "/etc/motd" -> "/var/log", libc::EISDIR, "/var/log";
    a_directory_into_itself_is_einval: "/etc" -> "/etc/sub", libc::EINVAL, "/etc";
    a_missing_source_is_enoent: "/nope" -> "/x", libc::ENOENT, "/nope";
    a_whited_out_source_is_enoent: "/etc/hostname" -> "/x", libc::ENOENT, "/etc/hostname";
    a_destination_in_a_missing_directory_is_enoent: "/etc/motd" -> "/nope/x", libc::ENOENT, "/nope/x";
    a_file_over_its_own_ancestor_is_enotempty: "/app/data/x.bin" -> "/app/data", libc::ENOTEMPTY, "/app/data";
    a_file_over_its_parent_is_enotempty: "/app/main.py" -> "/app", libc::ENOTEMPTY, "/app";
    both_parents_are_resolved_before_the_source: "/nope" -> "/etc/passwd/x", libc::ENOTDIR, "/etc/passwd/x";
    the_root_is_busy: "/" -> "/x", libc::EBUSY, "/";
}

/// A container of the child image with a volume at /vol and a read-only one at /ro.
fn with_volumes(p: Privilege) -> (Stack, Ctr) {
    let s = common::images::child(p);
    let (vol, ro) = (s.new_dir("volume"), s.new_dir("volume"));
    std::fs::write(vol.join("f"), "in the volume").unwrap();
    std::fs::create_dir(vol.join("d")).unwrap();
    std::fs::write(ro.join("f"), "read-only").unwrap();
    let c = s.container_with(&[("/vol", &vol, false), ("/ro", &ro, true)]);
    (s, c)
}

#[test]
fn renames_inside_a_mount_happen_in_its_source() {
    for p in privileges() {
        let (_s, c) = with_volumes(p);
        c.rename("/vol/f", "/vol/d/g").unwrap();
        assert_eq!(c.text("/vol/d/g"), "in the volume");
        assert!(c.markers().is_empty(), "the writable layer is not involved");
        assert!(c.diff().is_empty());
    }
}

#[test]
fn renames_between_a_mount_and_the_layers_are_exdev() {
    for p in privileges() {
        let (_s, c) = with_volumes(p);
        assert_errno(c.rename("/vol/f", "/etc/f"), libc::EXDEV);
        assert_errno(c.rename("/etc/motd", "/vol/motd"), libc::EXDEV);
        assert_errno(c.rename("/vol/f", "/ro/f"), libc::EXDEV);
        assert!(c.markers().is_empty());
    }
}

#[test]
fn renaming_a_mount_target_or_what_holds_one_is_ebusy() {
    for p in privileges() {
        let (_s, c) = with_volumes(p);
        assert_errno_at(c.rename("/vol", "/vol2"), libc::EBUSY, "/vol");
        assert_errno(c.rename("/etc", "/vol"), libc::EBUSY);
        c.mkdir("/mnt", 0o755).unwrap();
        let src = c.dir.join("nested-source");
        std::fs::create_dir(&src).unwrap();
        let nested = c.reopen_with(&[("/mnt/inner", &src, false)]);
        assert_errno(nested.rename("/mnt", "/mnt2"), libc::EBUSY);
        assert_errno(nested.rename("/mnt/inner", "/mnt/other"), libc::EBUSY);
    }
}

#[test]
fn renames_in_a_read_only_mount_are_erofs() {
    for p in privileges() {
        let (_s, c) = with_volumes(p);
        assert_errno_at(c.rename("/ro/f", "/ro/g"), libc::EROFS, "/ro/f");
        assert_eq!(c.text("/ro/f"), "read-only");
    }
}
