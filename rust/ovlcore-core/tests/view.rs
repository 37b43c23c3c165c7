//! The read-only merged view of an image: stat, listings, reads, readlink and xattrs; paths resolved
//! inside the image's root as under chroot (checked against the kernel's own resolution when root);
//! errors naming the container path (test_view.py, test_kernel_oracle.py).

mod common;

use std::path::Path;

use common::kernel::kernel_resolve;
use common::tar::mode;
use common::*;
use ovlcore_core::{ReadAhead, View};
use rustix::fs::OFlags;

const PASSWD: &str = "image:x:0:0:image passwd:/:/bin/sh\n";
const HOSTS: &str = "127.0.0.1 image\n";

fn base_layer(outside: &str) -> Vec<u8> {
    Tar::new()
        .dir_with("./", mode(0o755))
        .dir("etc")
        .file("etc/passwd", PASSWD)
        .file_with("etc/hosts", HOSTS, Attr::default().owner(0, 10).mtime(FIXED_MTIME + 1))
        .file("etc/motd", "welcome\n")
        .file_with("etc/shadow", "secret", mode(0o640).owner(0, 42).xattr("user.note", "n1").xattr("user.more", "n2"))
        .dir("bin")
        .file_with("bin/sh", b"\x7fELF-sh", mode(0o755))
        .dir("usr")
        .dir("usr/lib")
        .file_with("usr/lib/libc.so", "libc".repeat(100), mode(0o755))
        .dir("usr/share")
        .file("usr/share/old", "old")
        .symlink("lib", "usr/lib")
        .symlink("etcabs", "/etc")
        .symlink("passwdlink", "/etc/passwd")
        .symlink("usr/lib/up", "../../../../../etc/passwd")
        .symlink("usr/lib/root", "../../../..")
        .symlink("chain1", "chain2")
        .symlink("chain2", "/etcabs/hosts")
        .symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .symlink("self", "self")
        .symlink("dangling", "/nonexistent/file")
        .symlink("hostsecret", &format!("{outside}/secret"))
        .symlink("dotdot", "..")
        .fifo("pipe")
        .dir("deep")
        .dir("deep/a")
        .dir("deep/a/b")
        .file("deep/a/b/leaf", "leaf")
        .bytes()
}

fn top_layer() -> Vec<u8> {
    Tar::new()
        .dir("etc")
        .whiteout("etc/motd")
        .file("etc/issue", "top issue\n")
        .dir("usr")
        .dir_with("usr/share", mode(0o700))
        .opaque("usr/share")
        .file("usr/share/new", "new")
        .bytes()
}

/// The image's view in every convention this process can test.
fn views() -> Vec<(Stack, Fs)> {
    privileges()
        .into_iter()
        .map(|p| {
            let mut s = Stack::new(p);
            s.push(&base_layer(s.outside().to_str().unwrap()));
            s.push(&top_layer());
            let fs = s.view();
            (s, fs)
        })
        .collect()
}

#[test]
fn stat_of_a_file() {
    for (_, fs) in views() {
        let st = fs.st("/etc/hosts");
        assert_eq!((st.kind(), st.perm(), st.size), (Kind::File, 0o644, HOSTS.len() as u64));
        assert_eq!((st.uid, st.gid, st.mtime), (0, 10, (FIXED_MTIME + 1, 0)));
    }
}

#[test]
fn stat_of_directories_and_the_root() {
    for (_, fs) in views() {
        assert_eq!(fs.st("/etc").kind(), Kind::Dir);
        assert_eq!(fs.st("/").kind(), Kind::Dir);
        assert_eq!(fs.st("/usr/share").perm(), 0o700, "the top layer's metadata");
    }
}

#[test]
fn stat_follows_a_final_symlink_and_lstat_does_not() {
    for (_, fs) in views() {
        assert_eq!(fs.st("/lib").kind(), Kind::Dir);
        let l = fs.lst("/lib");
        assert_eq!((l.kind(), l.size), (Kind::Symlink, "usr/lib".len() as u64));
        assert_eq!(fs.st("/passwdlink").size, fs.st("/etc/passwd").size);
        assert_eq!(fs.lst("/pipe").kind(), Kind::Fifo);
    }
}

#[test]
fn existence_and_kinds() {
    for (_, fs) in views() {
        assert!(fs.exists("/etc/passwd") && fs.is_file("/etc/passwd") && !fs.is_dir("/etc/passwd"));
        assert!(fs.is_dir("/etc") && !fs.is_file("/etc"));
        assert!(fs.is_symlink("/lib") && fs.is_dir("/lib") && !fs.is_symlink("/usr/lib"));
        assert!(fs.is_file("/passwdlink") && fs.is_symlink("/passwdlink"));
        assert!(!fs.exists("/nope") && !fs.is_file("/nope") && !fs.is_dir("/nope"));
        assert!(!fs.exists("/etc/passwd/sub"));
        assert!(fs.is_symlink("/dangling") && !fs.exists("/dangling"));
        assert!(fs.is_symlink("/loop1") && !fs.exists("/loop1") && !fs.is_dir("/loop1"));
    }
}

#[test]
fn every_spelling_of_a_path_names_the_same_entry() {
    for (_, fs) in views() {
        let want = fs.st("/etc/passwd").ino;
        for p in ["etc/passwd", "//etc//passwd", "/etc/./passwd", "/usr/../etc/passwd", "/../../etc/passwd", "/etc/../../etc/passwd"] {
            assert_eq!(fs.st(p).ino, want, "{p}");
        }
        assert!(fs.is_dir("/etc/"));
        assert_errno_at(fs.stat("/etc/passwd/"), libc::ENOTDIR, "/etc/passwd/");
    }
}

#[test]
fn listings_are_sorted_and_merged() {
    for (_, fs) in views() {
        let root = [
            "bin", "chain1", "chain2", "dangling", "deep", "dotdot", "etc", "etcabs", "hostsecret", "lib", "loop1", "loop2", "passwdlink", "pipe", "self",
            "usr",
        ];
        assert_eq!(fs.ls("/"), root);
        assert_eq!(fs.ls("/etc"), ["hosts", "issue", "passwd", "shadow"], "motd whited out");
        assert_eq!(fs.ls("/usr/share"), ["new"], "opaque");
        let kinds = fs.entries("/");
        assert!(kinds.contains(&("etcabs".into(), Kind::Symlink)) && kinds.contains(&("pipe".into(), Kind::Fifo)));
    }
}

#[test]
fn listings_with_metadata_agree_with_lstat() {
    for (s, fs) in views() {
        // A view of its own, whose entries are each read on their own (not by the listing's one pass).
        let single = s.view();
        for dir in ["/", "/etc", "/usr/share", "/lib", "/deep/a"] {
            let entries = fs.view.list_meta(Path::new(dir)).unwrap();
            let names: Vec<String> = entries.iter().map(|(n, _)| n.to_str().unwrap().to_owned()).collect();
            assert_eq!(names, single.ls(dir), "{dir}");
            for (name, meta) in &entries {
                let path = Path::new(dir).join(name);
                assert_eq!(*meta, single.lst(path.to_str().unwrap()), "{}", path.display());
            }
        }
        assert_errno_at(fs.view.list_meta(Path::new("/etc/passwd")), libc::ENOTDIR, "/etc/passwd");
        assert_errno(fs.view.list_meta(Path::new("/nope")), libc::ENOENT);
    }
}

#[test]
fn a_listed_directory_has_its_subdirectories_read_ahead_one_level_down() {
    for (s, _) in views() {
        let lower = s.lower();
        let ahead = ReadAhead::start(lower.clone()).unwrap();
        ahead.listed(lower.root());
        let subdirs = lower.subdirs(lower.root()).unwrap();
        let names: Vec<_> = subdirs.iter().map(|n| n.rel.to_str().unwrap().to_owned()).collect();
        assert!(names.contains(&"deep".to_owned()) && names.contains(&"etc".to_owned()), "{names:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !subdirs.iter().all(|n| n.is_read()) {
            assert!(std::time::Instant::now() < deadline, "not read ahead: {names:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(ahead);
        assert!(!lower.root().is_read(), "the listed directory is its listing's own work");
        let deep = lower.dir_node(Path::new("deep/a")).unwrap().unwrap();
        assert!(!deep.is_read(), "only one level down");
        // What was read ahead is what each entry's own lookup reads.
        let view = View::new(lower, None, Vec::new()).unwrap();
        let single = s.view();
        for dir in ["/etc", "/deep", "/usr"] {
            for (name, meta) in view.list_meta(Path::new(dir)).unwrap() {
                let path = Path::new(dir).join(&name);
                assert_eq!(meta, single.lst(path.to_str().unwrap()), "{}", path.display());
            }
        }
    }
}

#[test]
fn listings_follow_symlinks() {
    for (_, fs) in views() {
        assert_eq!(fs.ls("/lib"), fs.ls("/usr/lib"));
        assert_eq!(fs.ls("/etcabs"), fs.ls("/etc"));
        assert_eq!(fs.ls("/usr/lib/root"), fs.ls("/"));
    }
}

#[test]
fn reads_through_relative_absolute_and_chained_links() {
    for (_, fs) in views() {
        assert_eq!(fs.read("/usr/lib/libc.so").unwrap(), "libc".repeat(100).as_bytes());
        assert_eq!(fs.text("/lib/libc.so"), "libc".repeat(100));
        assert_eq!(fs.text("/etcabs/hosts"), HOSTS);
        assert_eq!(fs.text("/chain1"), HOSTS);
        assert_eq!(fs.text("/dotdot/etc/hosts"), HOSTS);
        assert_eq!(fs.text("/etc/issue"), "top issue\n");
        assert_eq!(fs.text("/deep/a/b/leaf"), "leaf");
    }
}

#[test]
fn an_absolute_link_reads_the_images_file_and_dotdot_stops_at_the_root() {
    for (_, fs) in views() {
        assert_eq!(fs.text("/passwdlink"), PASSWD);
        assert_eq!(fs.text("/usr/lib/up"), PASSWD);
        assert_eq!(fs.text("/usr/lib/root/etc/hosts"), HOSTS);
    }
}

#[test]
fn a_link_to_a_host_path_names_a_container_path() {
    for (_, fs) in views() {
        assert!(!fs.exists("/hostsecret"));
        assert_errno_at(fs.read("/hostsecret"), libc::ENOENT, "/hostsecret");
    }
}

#[test]
fn loops_give_eloop() {
    for (_, fs) in views() {
        for p in ["/loop1", "/self", "/loop1/x"] {
            assert_errno_at(fs.stat(p), libc::ELOOP, p);
        }
        assert_errno_at(fs.read("/self"), libc::ELOOP, "/self");
        assert_eq!(fs.lst("/self").kind(), Kind::Symlink, "not followed: fine");
    }
}

#[test]
fn readlink_follows_every_component_but_the_last() {
    for (_, fs) in views() {
        assert_eq!(fs.readlink("/lib").unwrap(), "usr/lib");
        assert_eq!(fs.readlink("/passwdlink").unwrap(), "/etc/passwd");
        assert_eq!(fs.readlink("/usr/lib/up").unwrap(), "../../../../../etc/passwd");
        assert_eq!(fs.readlink("/self").unwrap(), "self");
        assert_eq!(fs.readlink("/lib/up").unwrap(), "../../../../../etc/passwd");
        assert_errno_at(fs.readlink("/etc"), libc::EINVAL, "/etc");
        assert_errno_at(fs.readlink("/nope"), libc::ENOENT, "/nope");
    }
}

#[test]
fn content_xattrs_are_shown_and_storage_xattrs_are_not() {
    for (_, fs) in views() {
        assert_eq!(fs.getxattr("/etc/shadow", "user.note").unwrap().as_deref(), Some(&b"n1"[..]));
        assert_eq!(fs.listxattr("/etc/shadow").unwrap(), ["user.more", "user.note"]);
        assert!(fs.listxattr("/etc/hosts").unwrap().is_empty());
        assert_eq!(fs.getxattr("/etc/hosts", "user.none").unwrap(), None);
        // /usr/share is opaque in the top layer: a storage detail, not content.
        assert!(fs.listxattr("/usr/share").unwrap().is_empty());
        for name in ["trusted.overlay.opaque", "user.overlay.opaque", "user.containers.override_stat"] {
            assert_eq!(fs.getxattr("/usr/share", name).unwrap(), None, "{name}");
        }
    }
}

#[test]
fn missing_paths_are_enoent_naming_the_path() {
    for (_, fs) in views() {
        assert_errno_at(fs.stat("/nope"), libc::ENOENT, "/nope");
        assert_errno_at(fs.lstat("/nope"), libc::ENOENT, "/nope");
        assert_errno_at(fs.read("/etc/nope"), libc::ENOENT, "/etc/nope");
        assert_errno_at(fs.read("/etc/motd"), libc::ENOENT, "/etc/motd");
        assert_errno_at(fs.stat("/usr/share/old"), libc::ENOENT, "/usr/share/old");
        assert_errno_at(fs.list("/nope/deeper"), libc::ENOENT, "/nope/deeper");
        assert_errno_at(fs.stat("/dangling"), libc::ENOENT, "/dangling");
    }
}

#[test]
fn non_directories_are_enotdir_and_directories_eisdir() {
    for (_, fs) in views() {
        assert_errno_at(fs.stat("/etc/passwd/x"), libc::ENOTDIR, "/etc/passwd/x");
        assert_errno_at(fs.list("/etc/passwd"), libc::ENOTDIR, "/etc/passwd");
        assert_errno_at(fs.list("/passwdlink"), libc::ENOTDIR, "/passwdlink");
        assert_errno_at(fs.read("/etc"), libc::EISDIR, "/etc");
    }
}

#[test]
fn an_image_view_refuses_every_write() {
    for (s, fs) in views() {
        let before = s.snapshot();
        assert_errno_at(fs.open_write("/etc/hosts", OFlags::WRONLY), libc::EROFS, "/etc/hosts");
        assert_errno_at(fs.open_write("/brand-new", OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL), libc::EROFS, "/brand-new");
        assert_errno(fs.mkdir("/d", 0o755), libc::EROFS);
        assert_errno(fs.remove("/etc/hosts"), libc::EROFS);
        assert_errno(fs.chmod("/etc/hosts", 0o600), libc::EROFS);
        assert_errno(fs.rename("/etc/hosts", "/etc/h"), libc::EROFS);
        assert!(!fs.exists("/brand-new"));
        assert_eq!(fs.text("/etc/hosts"), HOSTS);
        assert!(s.snapshot() == before);
    }
}

#[test]
fn canonical_paths_resolve_links_inside_the_root_and_keep_the_missing_rest() {
    for (_, fs) in views() {
        let canon = |p: &str| fs.view.canonical(Path::new(p)).map(|c| c.to_str().unwrap().to_string());
        assert_eq!(canon("/lib/libc.so").unwrap(), "/usr/lib/libc.so");
        assert_eq!(canon("/lib/new/x").unwrap(), "/usr/lib/new/x");
        assert_eq!(canon("/etcabs/../bin").unwrap(), "/bin");
        assert_eq!(canon("/dotdot/../../etc").unwrap(), "/etc");
        assert_eq!(canon("/dangling").unwrap(), "/nonexistent/file");
        assert_eq!(canon("/hostsecret").unwrap().trim_end_matches("/secret"), fs.readlink("/hostsecret").unwrap().trim_end_matches("/secret"));
        assert_errno(canon("/loop1"), libc::ELOOP);
    }
}

#[test]
fn views_of_two_images_are_independent_and_an_empty_image_is_empty() {
    for p in privileges() {
        let a = Stack::of(p, &[&Tar::new().file("f", "a").bytes()]).view();
        let b = Stack::of(p, &[&Tar::new().file("f", "b").bytes()]).view();
        assert_eq!((a.text("/f"), b.text("/f")), ("a".into(), "b".into()));
        let empty = Stack::new(p).view();
        assert_eq!(empty.ls("/"), Vec::<String>::new());
        assert!(!empty.exists("/etc"));
    }
}

/// Remove layer `dir` and import `tar` again at the same path, as a store does after `rmi` and a new pull.
fn reimport(dir: &Path, tar: &[u8], p: Privilege) {
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::create_dir(dir).unwrap();
    import_layer(tar, dir, None, ImportOptions { privilege: p, ..ImportOptions::default() }).unwrap();
}

#[test]
fn a_shared_stack_of_a_layer_imported_again_is_the_new_one() {
    // Views share stacks by the identity of the layer directories: one removed and imported again at
    // the same path is a new directory, even while a view of the old one is alive.
    let t = Tar::new().dir("d").file("d/x", "hello").file("d/y", "y").bytes();
    for p in privileges() {
        let s = Stack::of(p, &[&t]);
        let paths = s.top_first();
        let old = View::new(Lower::shared(&paths, p).unwrap(), None, Vec::new()).unwrap();
        assert_eq!(old.list(Path::new("/d")).unwrap().len(), 2);
        reimport(s.top(), &Tar::new().dir("d").file("d/x", "again").bytes(), p);
        let new = View::new(Lower::shared(&paths, p).unwrap(), None, Vec::new()).unwrap();
        assert_eq!(new.list(Path::new("/d")).unwrap().len(), 1);
        let x = new.open_read(Path::new("/d/x"), OFlags::empty()).unwrap();
        assert_eq!(common::stack::read_all(std::fs::File::from(x)), b"again");
        drop(old);
    }
}

// ----- path resolution, compared with the kernel's -----

#[test]
fn link_targets_with_trailing_slashes_must_be_directories() {
    // As in the kernel: `l -> f/` with f a regular file does not resolve (ENOTDIR).
    let only = Tar::new()
        .file("f", "file")
        .dir("d")
        .file("d/x", "x")
        .symlink("lf", "f/")
        .symlink("ld", "d/")
        .symlink("labs", "/f/")
        .symlink("ldot", "f/.")
        .symlink("lchain", "lf")
        .symlink("ldd", "/d//")
        .bytes();
    let second = Tar::new().file("g", "g").bytes();
    let table: &[(&str, bool, Outcome)] = &[
        ("/ld", true, Ok(Kind::Dir)),
        ("/ldd", true, Ok(Kind::Dir)),
        ("/ld/x", true, Ok(Kind::File)),
        ("/lf", true, Err(libc::ENOTDIR)),
        ("/labs", true, Err(libc::ENOTDIR)),
        ("/ldot", true, Err(libc::ENOTDIR)),
        ("/lchain", true, Err(libc::ENOTDIR)),
        ("/lf", false, Ok(Kind::Symlink)),
        ("/lf/", false, Err(libc::ENOTDIR)),
        ("/ld/", false, Ok(Kind::Dir)),
        ("/f/", true, Err(libc::ENOTDIR)),
    ];
    for p in privileges() {
        let s = Stack::of(p, &[&only, &second]);
        let fs = s.view();
        let got: Vec<_> = table.iter().map(|(path, follow, _)| resolved(&fs, path, *follow)).collect();
        let want: Vec<_> = table.iter().map(|(_, _, w)| *w).collect();
        assert_eq!(got, want, "{p:?}");
        let probes: Vec<(&str, bool)> = table.iter().map(|(path, follow, _)| (*path, *follow)).collect();
        if let Some(kernel) = kernel_resolve(&s.top_first(), p, &probes) {
            assert_eq!(kernel, want, "the kernel ({p:?})");
        }
    }
}

/// What a path resolves to: its type, or the errno.
type Outcome = std::result::Result<Kind, i32>;

fn resolved(fs: &Fs, path: &str, follow: bool) -> Outcome {
    match fs.view.resolve(Path::new(path), follow).and_then(|r| r.require()) {
        Ok(r) => Ok(r.kind().unwrap()),
        Err(e) => Err(e.raw_errno().expect("an OS error")),
    }
}

#[test]
fn paths_resolve_as_the_kernel_resolves_them_under_chroot() {
    let bottom = Tar::new().dir("a").file("a/x", "ax").file("b", "b").dir("c").symlink("c/a", "/a/x").dir("c/b").file("c/b/c", "deep").bytes();
    let top = Tar::new()
        .dir("a")
        .symlink("a/b", "../c")
        .symlink("a/c", "/c/b")
        .symlink("up", "../../..")
        .symlink("dot", ".")
        .symlink("ab", "/b/../c")
        .symlink("loop", "loop")
        .whiteout("b")
        .bytes();
    let table: &[(&str, Outcome, Outcome)] = &[
        // (path, followed, not followed)
        ("/a/x", Ok(Kind::File), Ok(Kind::File)),
        ("/a/b", Ok(Kind::Dir), Ok(Kind::Symlink)),
        ("/a/b/a", Ok(Kind::File), Ok(Kind::Symlink)),
        ("/a/b/b/c", Ok(Kind::File), Ok(Kind::File)),
        ("/a/c/c", Ok(Kind::File), Ok(Kind::File)),
        ("/up/a/x", Ok(Kind::File), Ok(Kind::File)),
        ("/dot/dot/a", Ok(Kind::Dir), Ok(Kind::Dir)),
        ("/ab", Err(libc::ENOENT), Ok(Kind::Symlink)),
        ("/b", Err(libc::ENOENT), Err(libc::ENOENT)),
        ("/a/x/y", Err(libc::ENOTDIR), Err(libc::ENOTDIR)),
        ("/loop", Err(libc::ELOOP), Ok(Kind::Symlink)),
        ("/loop/x", Err(libc::ELOOP), Err(libc::ELOOP)),
        ("/a/../../c/b/../a", Ok(Kind::File), Ok(Kind::Symlink)),
        ("/", Ok(Kind::Dir), Ok(Kind::Dir)),
    ];
    for p in privileges() {
        let s = Stack::of(p, &[&bottom, &top]);
        let fs = s.view();
        let mut probes = Vec::new();
        let mut want = Vec::new();
        for (path, followed, not_followed) in table {
            probes.extend([(*path, true), (*path, false)]);
            want.extend([*followed, *not_followed]);
        }
        let got: Vec<_> = probes.iter().map(|(path, follow)| resolved(&fs, path, *follow)).collect();
        assert_eq!(got, want, "the view ({p:?})");
        if let Some(kernel) = kernel_resolve(&s.top_first(), p, &probes) {
            assert_eq!(kernel, want, "the kernel ({p:?})");
        }
    }
}
