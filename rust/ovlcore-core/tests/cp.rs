//! `docker cp` and `put_archive` through the view: what the core's copies do with existing entries,
//! symlinks, owners, modes, times, hard links and mounts, and the security promise: nothing outside the
//! container's root and mounts is read or written on the container side, not even through a symlink
//! swapped in during the copy (test_cp.py; Docker's destination rules themselves are the Python layer's).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::stack::SECRET;
use common::tar::{mode, owner};
use common::*;

const PASSWD: &str = "root:x:0:0:container-root:/root:/bin/sh\n";

fn image_tar(extra: impl FnOnce(Tar) -> Tar) -> Vec<u8> {
    let t = Tar::new()
        .dir("bin")
        .file_with("bin/sh", "#!fake shell\n", mode(0o755))
        .dir("etc")
        .file("etc/passwd", PASSWD)
        .file("etc/hostname", "image-hostname\n")
        .dir_with("data", mode(0o750).owner(1234, 5678))
        .file_with("data/seed.txt", "seed from the image\n", mode(0o640).owner(1234, 5678))
        .dir_with("data/sub", mode(0o711).owner(1234, 5678))
        .file_with("data/sub/deep.txt", "deep\n", mode(0o600).owner(42, 43))
        .symlink("data/pw", "/etc/passwd")
        .dir("shared")
        .file("shared/image_only.txt", "only in the image\n")
        .dir_with("tmp", mode(0o1777))
        .dir("links")
        .symlink("links/to_root", "/")
        .symlink("links/to_passwd", "/etc/passwd")
        .symlink("links/dotdot", "../../../../../../..")
        .symlink("links/rel_etc", "../etc")
        .symlink("links/to_data", "/data")
        .dir("srv")
        .file("srv/a.png", b"\x89PNG a")
        .file("srv/b.png", b"\x89PNG b")
        .file("srv/notes.txt", "not a png\n")
        .dir("srv/dir")
        .file("srv/dir/one.txt", "one\n")
        .dir("srv/dir/nested")
        .file("srv/dir/nested/two.txt", "two\n");
    extra(t).bytes()
}

/// A container with a bind mount at /shared, a volume at /vol and a read-only volume at /ro, and an
/// empty host directory.
struct Env {
    s: Stack,
    c: Ctr,
    host: PathBuf,
    shared: PathBuf,
    vol: PathBuf,
    ro: PathBuf,
}

fn env(p: Privilege) -> Env {
    let s = Stack::of(p, &[&image_tar(|t| t)]);
    let (host, shared, vol, ro) = (s.new_dir("host"), s.new_dir("bind"), s.new_dir("volume"), s.new_dir("volume"));
    let c = s.container_with(&[("/shared", &shared, false), ("/vol", &vol, false), ("/ro", &ro, true)]);
    Env { s, c, host, shared, vol, ro }
}

fn each_env(f: impl Fn(&Env)) {
    for p in privileges() {
        eprintln!("privilege: {p:?}");
        f(&env(p));
    }
}

#[derive(Clone, Copy)]
struct Opts {
    follow: bool,
    owner: Owner,
    contents: bool,
}

const PLAIN: Opts = Opts { follow: false, owner: Owner::Caller, contents: false };
const FOLLOW: Opts = Opts { follow: true, ..PLAIN };
const CONTENTS: Opts = Opts { contents: true, ..PLAIN };

impl Opts {
    fn core(self) -> CopyOptions<'static> {
        CopyOptions { follow: self.follow, owner: self.owner, contents: self.contents, progress: None }
    }
}

/// Container → host: `src` to the host path `dest`.
fn out(fs: &Fs, src: &str, dest: &Path, o: Opts) -> Result<u64> {
    copy_out(&fs.view, Path::new(src), dest.parent().unwrap(), dest.file_name().unwrap(), o.core())
}

/// Host → container: the host path `src` to `dst`.
fn into(fs: &Fs, src: &Path, dst: &str, o: Opts) -> Result<u64> {
    copy_in(&fs.view, src.parent().unwrap(), src.file_name().unwrap(), Path::new(dst), o.core())
}

/// `{relative path: "dir" | "link:TARGET" | content}` of a host tree.
fn listing(root: &Path) -> BTreeMap<String, String> {
    host_snapshot(root)
        .into_iter()
        .filter(|(p, _)| p != "/")
        .map(|(p, e)| {
            let what = match Kind::from_mode(e.mode) {
                Kind::Dir => "dir".to_string(),
                Kind::Symlink => format!("link:{}", String::from_utf8(e.content.unwrap()).unwrap()),
                _ => String::from_utf8_lossy(&e.content.unwrap_or_default()).into_owned(),
            };
            (p[1..].to_string(), what)
        })
        .collect()
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn srv_dir() -> BTreeMap<String, String> {
    map(&[("one.txt", "one\n"), ("nested", "dir"), ("nested/two.txt", "two\n")])
}

/// A host tree to copy in: `file.txt` and `tree/{a.txt, sub/b.txt}`.
fn host_src(e: &Env) -> PathBuf {
    let src = e.s.new_dir("src");
    std::fs::write(src.join("file.txt"), "host file\n").unwrap();
    std::fs::create_dir_all(src.join("tree/sub")).unwrap();
    std::fs::write(src.join("tree/a.txt"), "a\n").unwrap();
    std::fs::write(src.join("tree/sub/b.txt"), "b\n").unwrap();
    src
}

/// The container-side tree below `top`: `{relative path: "dir" | "link:TARGET" | content}`.
fn ctree(fs: &Fs, top: &str) -> BTreeMap<String, String> {
    fs.tree(top)
        .into_iter()
        .filter(|(p, _)| p != top)
        .map(|(p, n)| {
            let what = match n.kind {
                Kind::Dir => "dir".to_string(),
                Kind::Symlink => format!("link:{}", String::from_utf8(n.content.unwrap()).unwrap()),
                _ => String::from_utf8_lossy(&n.content.unwrap_or_default()).into_owned(),
            };
            (p[top.len() + 1..].to_string(), what)
        })
        .collect()
}

fn upper_is_empty(c: &Ctr) -> bool {
    std::fs::read_dir(c.upper()).unwrap().count() == 0
}

// ----- container → host -----

#[test]
fn out_a_file_to_a_new_name() {
    each_env(|e| {
        assert_eq!(out(&e.c, "/etc/passwd", &e.host.join("pw"), PLAIN).unwrap(), PASSWD.len() as u64);
        assert_eq!(std::fs::read_to_string(e.host.join("pw")).unwrap(), PASSWD);
    });
}

#[test]
fn out_a_file_replaces_a_host_file_and_never_writes_through_a_host_symlink() {
    each_env(|e| {
        std::fs::write(e.host.join("pw"), "old content that is longer than the new one ".repeat(10)).unwrap();
        out(&e.c, "/etc/passwd", &e.host.join("pw"), PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("pw")).unwrap(), PASSWD);
        std::os::unix::fs::symlink(e.s.outside().join("secret"), e.host.join("link")).unwrap();
        out(&e.c, "/etc/passwd", &e.host.join("link"), PLAIN).unwrap();
        assert!(!std::fs::symlink_metadata(e.host.join("link")).unwrap().is_symlink(), "replaced");
        assert_eq!(std::fs::read_to_string(e.s.outside().join("secret")).unwrap(), SECRET);
    });
}

#[test]
fn out_a_file_over_a_host_directory_is_eisdir() {
    each_env(|e| {
        std::fs::create_dir(e.host.join("d")).unwrap();
        assert_errno(out(&e.c, "/etc/passwd", &e.host.join("d"), PLAIN), libc::EISDIR);
        assert_eq!(std::fs::read_dir(e.host.join("d")).unwrap().count(), 0);
    });
}

#[test]
fn out_a_directory_to_a_new_name() {
    each_env(|e| {
        out(&e.c, "/srv/dir", &e.host.join("copy"), PLAIN).unwrap();
        assert_eq!(listing(&e.host.join("copy")), srv_dir());
    });
}

#[test]
fn out_a_directory_merges_into_an_existing_host_directory() {
    each_env(|e| {
        std::fs::create_dir(e.host.join("exists")).unwrap();
        std::fs::write(e.host.join("exists/keep"), "k").unwrap();
        out(&e.c, "/srv/dir", &e.host.join("exists"), PLAIN).unwrap();
        let mut want = srv_dir();
        want.insert("keep".into(), "k".into());
        assert_eq!(listing(&e.host.join("exists")), want);
    });
}

#[test]
fn out_the_contents_of_a_directory() {
    each_env(|e| {
        std::fs::create_dir(e.host.join("exists")).unwrap();
        out(&e.c, "/srv/dir", &e.host.join("exists"), CONTENTS).unwrap();
        assert_eq!(listing(&e.host.join("exists")), srv_dir());
        assert_errno(out(&e.c, "/etc/passwd", &e.host.join("exists"), CONTENTS), libc::ENOTDIR);
    });
}

#[test]
fn out_a_directory_over_a_host_file_is_enotdir() {
    each_env(|e| {
        std::fs::write(e.host.join("f"), "file").unwrap();
        assert_errno(out(&e.c, "/srv/dir", &e.host.join("f"), PLAIN), libc::ENOTDIR);
        assert_eq!(std::fs::read_to_string(e.host.join("f")).unwrap(), "file");
    });
}

#[test]
fn out_of_a_missing_source_or_a_file_written_as_a_directory_fails() {
    each_env(|e| {
        assert_errno(out(&e.c, "/nope", &e.host.join("x"), PLAIN), libc::ENOENT);
        assert_errno(out(&e.c, "/etc/passwd/", &e.host.join("x"), PLAIN), libc::ENOTDIR);
        assert_eq!(std::fs::read_dir(&e.host).unwrap().count(), 0);
    });
}

#[test]
fn out_the_whole_root_keeps_links_as_links() {
    each_env(|e| {
        std::fs::create_dir(e.host.join("rootfs")).unwrap();
        out(&e.c, "/", &e.host.join("rootfs"), CONTENTS).unwrap();
        let t = listing(&e.host.join("rootfs"));
        assert_eq!(t["etc/passwd"], PASSWD);
        assert_eq!(t["links/to_root"], "link:/");
        assert_eq!(t["data/pw"], "link:/etc/passwd");
    });
}

#[test]
fn out_reads_the_containers_changes_and_relative_paths() {
    each_env(|e| {
        e.c.write("/etc/passwd", "changed in container\n").unwrap();
        e.c.remove("/srv/dir/one.txt").unwrap();
        out(&e.c, "etc/passwd", &e.host.join("pw"), PLAIN).unwrap();
        out(&e.c, "/srv/dir", &e.host.join("d"), PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("pw")).unwrap(), "changed in container\n");
        assert_eq!(listing(&e.host.join("d")), map(&[("nested", "dir"), ("nested/two.txt", "two\n")]));
    });
}

#[test]
fn out_a_symlink_is_copied_as_a_link_or_followed_inside_the_container() {
    each_env(|e| {
        out(&e.c, "/links/to_passwd", &e.host.join("l"), PLAIN).unwrap();
        assert_eq!(std::fs::read_link(e.host.join("l")).unwrap(), Path::new("/etc/passwd"));
        out(&e.c, "/links/to_passwd", &e.host.join("f"), FOLLOW).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("f")).unwrap(), PASSWD, "the container's, not the host's");
        out(&e.c, "/links/to_data", &e.host.join("d"), FOLLOW).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("d/seed.txt")).unwrap(), "seed from the image\n");
    });
}

#[test]
fn out_links_before_the_last_component_resolve_in_the_container() {
    each_env(|e| {
        for (i, path) in ["/links/to_root/etc/passwd", "/links/dotdot/etc/passwd", "/links/rel_etc/passwd", "/../../../../etc/passwd", "/srv/../../../etc/passwd"]
            .into_iter()
            .enumerate()
        {
            out(&e.c, path, &e.host.join(i.to_string()), PLAIN).unwrap();
            assert_eq!(std::fs::read_to_string(e.host.join(i.to_string())).unwrap(), PASSWD, "{path}");
        }
    });
}

#[test]
fn out_without_archive_mode_the_copier_owns_the_copy_and_modes_are_kept() {
    each_env(|e| {
        out(&e.c, "/data", &e.host.join("d"), PLAIN).unwrap();
        let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        let seed = std::fs::symlink_metadata(e.host.join("d/seed.txt")).unwrap();
        assert_eq!((seed.uid(), seed.gid(), seed.mode() & 0o7777), (me.0, me.1, 0o640));
        let sub = std::fs::symlink_metadata(e.host.join("d/sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o711 | 0o700, "a directory stays enterable by the copier");
    });
}

#[test]
fn out_in_archive_mode_root_keeps_owners_for_real() {
    if skip_unless_root() {
        return;
    }
    each_env(|e| {
        out(&e.c, "/data", &e.host.join("a"), Opts { owner: Owner::Real, ..PLAIN }).unwrap();
        for (rel, want) in [("", (1234, 5678, 0o750)), ("seed.txt", (1234, 5678, 0o640)), ("sub", (1234, 5678, 0o711)), ("sub/deep.txt", (42, 43, 0o600))] {
            let m = std::fs::symlink_metadata(e.host.join("a").join(rel)).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), want, "{rel}");
        }
    });
}

#[test]
fn times_are_kept_both_ways() {
    each_env(|e| {
        out(&e.c, "/srv/dir", &e.host.join("d"), PLAIN).unwrap();
        assert_eq!(std::fs::metadata(e.host.join("d/one.txt")).unwrap().mtime(), FIXED_MTIME);
        assert_eq!(std::fs::metadata(e.host.join("d")).unwrap().mtime(), FIXED_MTIME, "the directory's too, after its children");
        let f = e.host.join("f");
        std::fs::write(&f, "x").unwrap();
        let t = rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 0 };
        rustix::fs::utimensat(rustix::fs::CWD, &f, &rustix::fs::Timestamps { last_access: t, last_modification: t }, rustix::fs::AtFlags::empty()).unwrap();
        into(&e.c, &f, "/tmp/f", PLAIN).unwrap();
        assert_eq!(e.c.st("/tmp/f").mtime, (1_000_000_000, 0));
    });
}

#[test]
fn hard_links_are_kept_both_ways() {
    each_env(|e| {
        e.c.link("/srv/a.png", "/srv/hl.png").unwrap();
        out(&e.c, "/srv", &e.host.join("out"), PLAIN).unwrap();
        let ino = |p: &str| std::fs::symlink_metadata(e.host.join(p)).unwrap().ino();
        assert_eq!(ino("out/a.png"), ino("out/hl.png"));
        let d = e.s.new_dir("links");
        std::fs::write(d.join("one"), "same").unwrap();
        std::fs::hard_link(d.join("one"), d.join("two")).unwrap();
        into(&e.c, &d, "/tmp/h", PLAIN).unwrap();
        assert_eq!(e.c.st("/tmp/h/one").ino, e.c.st("/tmp/h/two").ino);
        e.c.write("/tmp/h/one", "changed").unwrap();
        assert_eq!(e.c.text("/tmp/h/two"), "changed");
    });
}

/// Many files (copied without a look at the destination first): every file keeps its bytes, mode, owner
/// (archive mode) and time; links, symlinks and subdirectories among them are copied as such; host
/// entries in the way are replaced (a symlink never written through) and a host directory where a file
/// goes is EISDIR.
#[test]
fn out_a_big_directory_keeps_every_entry_and_replaces_what_is_in_the_way() {
    each_env(|e| {
        e.c.mkdir("/big", 0o755).unwrap();
        for i in 0..300 {
            e.c.write(&format!("/big/f{i:03}"), format!("file {i}\n").repeat(i % 7)).unwrap();
            e.c.chmod(&format!("/big/f{i:03}"), 0o600 + (i as u32 % 0o100)).unwrap();
            if i % 50 == 0 {
                e.c.chown(&format!("/big/f{i:03}"), Some(1000 + i as u32), Some(2000 + i as u32)).unwrap();
            }
        }
        e.c.link("/big/f007", "/big/hard").unwrap();
        e.c.symlink("f001", "/big/sym").unwrap();
        e.c.mkdir("/big/sub", 0o700).unwrap();
        e.c.write("/big/sub/inner", "inner").unwrap();
        let dest = e.host.join("big");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("f010"), "old, longer than the new content").unwrap();
        std::os::unix::fs::symlink(e.s.outside().join("secret"), dest.join("f011")).unwrap();
        let owner = if rustix::process::geteuid().is_root() { Owner::Real } else { Owner::Caller };
        let copied = out(&e.c, "/big", &dest, Opts { owner, ..CONTENTS }).unwrap();
        let want: u64 = (0..300).map(|i| format!("file {i}\n").repeat(i % 7).len() as u64).sum::<u64>() + 5;
        assert_eq!(copied, want, "file bytes (a hard link's are copied once)");
        assert_eq!(std::fs::read_to_string(e.s.outside().join("secret")).unwrap(), SECRET, "never written through");
        for i in 0..300 {
            let p = dest.join(format!("f{i:03}"));
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file(), "{i}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("file {i}\n").repeat(i % 7), "{i}");
            assert_eq!(m.mode() & 0o7777, 0o600 + (i as u32 % 0o100), "{i}");
            let st = e.c.st(&format!("/big/f{i:03}"));
            assert_eq!(m.mtime(), st.mtime.0, "{i}");
            if owner == Owner::Real {
                assert_eq!((m.uid(), m.gid()), (st.uid, st.gid));
            }
        }
        let ino = |n: &str| std::fs::symlink_metadata(dest.join(n)).unwrap().ino();
        assert_eq!(ino("f007"), ino("hard"));
        assert_eq!(std::fs::read_link(dest.join("sym")).unwrap(), Path::new("f001"));
        assert_eq!(std::fs::read_to_string(dest.join("sub/inner")).unwrap(), "inner");
        // A host directory where a file of the batch goes.
        let again = e.host.join("again");
        std::fs::create_dir_all(again.join("f150")).unwrap();
        assert_errno(out(&e.c, "/big", &again, CONTENTS), libc::EISDIR);
        assert!(again.join("f150").is_dir());
    });
}

#[test]
fn out_devices_need_root_and_fifos_do_not() {
    each_env(|e| {
        e.c.mkfifo("/tmp/fifo", 0o640).unwrap();
        out(&e.c, "/tmp/fifo", &e.host.join("fifo"), PLAIN).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::symlink_metadata(e.host.join("fifo")).unwrap().file_type()));
        e.c.mknod("/tmp/null", Kind::Char, 0o666, makedev(1, 3)).unwrap();
        let r = out(&e.c, "/tmp/null", &e.host.join("null"), PLAIN);
        if is_root() {
            r.unwrap();
            assert_eq!(std::fs::symlink_metadata(e.host.join("null")).unwrap().rdev(), makedev(1, 3));
        } else {
            assert_errno(r, libc::EPERM);
        }
    });
}

// ----- host → container -----

#[test]
fn in_a_file_to_a_new_path() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("file.txt"), "/etc/new.txt", PLAIN).unwrap();
        assert_eq!(e.c.text("/etc/new.txt"), "host file\n");
        assert_eq!(e.c.diff(), [('C', "/etc".to_string()), ('A', "/etc/new.txt".to_string())]);
    });
}

#[test]
fn in_a_file_over_an_image_file_copies_up_and_leaves_the_image_alone() {
    each_env(|e| {
        let src = host_src(e);
        let before = e.s.snapshot();
        into(&e.c, &src.join("file.txt"), "/etc/passwd", PLAIN).unwrap();
        assert_eq!(e.c.text("/etc/passwd"), "host file\n");
        assert_eq!(e.s.view().text("/etc/passwd"), PASSWD);
        assert!(e.s.snapshot() == before);
        assert_eq!(e.c.diff(), [('C', "/etc".to_string()), ('C', "/etc/passwd".to_string())]);
    });
}

#[test]
fn in_a_directory_to_a_new_path_or_merged_into_an_existing_one() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("tree"), "/newtree", PLAIN).unwrap();
        assert_eq!(ctree(&e.c, "/newtree"), map(&[("a.txt", "a\n"), ("sub", "dir"), ("sub/b.txt", "b\n")]));
        into(&e.c, &src.join("tree"), "/srv/dir", PLAIN).unwrap();
        assert_eq!(
            ctree(&e.c, "/srv/dir"),
            map(&[("one.txt", "one\n"), ("nested", "dir"), ("nested/two.txt", "two\n"), ("a.txt", "a\n"), ("sub", "dir"), ("sub/b.txt", "b\n")])
        );
    });
}

#[test]
fn in_the_contents_of_a_directory() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("tree"), "/srv", CONTENTS).unwrap();
        assert_eq!(e.c.text("/srv/a.txt"), "a\n");
        assert_eq!(e.c.text("/srv/sub/b.txt"), "b\n");
        assert_eq!(e.c.read("/srv/a.png").unwrap(), b"\x89PNG a");
    });
}

#[test]
fn in_errors_change_nothing() {
    each_env(|e| {
        let src = host_src(e);
        assert_errno(into(&e.c, &src.join("tree"), "/etc/passwd", PLAIN), libc::ENOTDIR);
        assert_errno(into(&e.c, &src.join("file.txt"), "/etc", PLAIN), libc::EISDIR);
        assert_errno(into(&e.c, &src.join("file.txt"), "/no/such/x", PLAIN), libc::ENOENT);
        assert_errno(into(&e.c, &src.join("nope"), "/tmp/x", PLAIN), libc::ENOENT);
        assert_eq!(e.c.text("/etc/passwd"), PASSWD);
        assert_eq!(e.c.diff(), []);
    });
}

#[test]
fn in_a_host_symlink_is_copied_as_a_link_or_followed() {
    each_env(|e| {
        let d = e.s.new_dir("links");
        std::os::unix::fs::symlink("/etc/passwd", d.join("hl")).unwrap();
        into(&e.c, &d.join("hl"), "/tmp/hl", PLAIN).unwrap();
        assert!(e.c.is_symlink("/tmp/hl"));
        assert_eq!(e.c.readlink("/tmp/hl").unwrap(), "/etc/passwd");
        assert_eq!(e.c.text("/tmp/hl"), PASSWD, "resolved in the container");
        std::fs::write(d.join("real"), "real content").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("lnk")).unwrap();
        into(&e.c, &d.join("lnk"), "/tmp/followed", FOLLOW).unwrap();
        assert!(!e.c.is_symlink("/tmp/followed"));
        assert_eq!(e.c.text("/tmp/followed"), "real content");
    });
}

#[test]
fn in_through_a_container_symlink_component() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("file.txt"), "/links/to_data/file.txt", PLAIN).unwrap();
        assert_eq!(e.c.text("/data/file.txt"), "host file\n");
        into(&e.c, &src.join("file.txt"), "/links/to_root/tmp/via_root.txt", PLAIN).unwrap();
        assert_eq!(e.c.text("/tmp/via_root.txt"), "host file\n");
    });
}

#[test]
fn in_with_kept_owners_keeps_mode_and_owner() {
    each_env(|e| {
        let f = e.s.new_dir("src").join("m");
        std::fs::write(&f, "x").unwrap();
        let perm = if is_root() { 0o4751 } else { 0o751 };
        if is_root() {
            std::os::unix::fs::lchown(&f, Some(3001), Some(3002)).unwrap();
        }
        // After chown, which clears setuid.
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(perm)).unwrap();
        into(&e.c, &f, "/tmp/m", Opts { owner: Owner::Keep(e.s.privilege), ..PLAIN }).unwrap();
        let st = e.c.st("/tmp/m");
        assert_eq!(st.perm(), perm);
        if is_root() {
            assert_eq!((st.uid, st.gid), (3001, 3002));
        }
    });
}

#[test]
fn copies_report_their_progress_in_bytes() {
    each_env(|e| {
        let big = e.s.new_dir("src").join("big");
        std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
        let mut seen = Vec::new();
        let mut report = |n: u64| {
            seen.push(n);
            Ok(())
        };
        let opts = CopyOptions { follow: false, owner: Owner::Caller, contents: false, progress: Some(&mut report) };
        assert_eq!(copy_in(&e.c.view, big.parent().unwrap(), big.file_name().unwrap(), Path::new("/tmp/big"), opts).unwrap(), 3 << 20);
        assert!(!seen.is_empty() && seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), 3 << 20);
        assert_eq!(e.c.read("/tmp/big").unwrap(), vec![7u8; 3 << 20]);
    });
}

// ----- mounts -----

#[test]
fn copies_in_and_out_of_a_volume_go_to_its_source() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("tree"), "/vol/tree", PLAIN).unwrap();
        into(&e.c, &src.join("file.txt"), "/vol/f", PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.vol.join("tree/sub/b.txt")).unwrap(), "b\n");
        assert_eq!(std::fs::read_to_string(e.vol.join("f")).unwrap(), "host file\n");
        assert!(upper_is_empty(&e.c) && e.c.diff().is_empty());
        out(&e.c, "/vol/tree", &e.host.join("back"), PLAIN).unwrap();
        assert_eq!(listing(&e.host.join("back")), map(&[("a.txt", "a\n"), ("sub", "dir"), ("sub/b.txt", "b\n")]));
    });
}

#[test]
fn copies_in_and_out_of_a_bind_mount_go_to_its_source() {
    each_env(|e| {
        let src = host_src(e);
        into(&e.c, &src.join("file.txt"), "/shared/file.txt", PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.shared.join("file.txt")).unwrap(), "host file\n");
        assert!(upper_is_empty(&e.c) && e.c.diff().is_empty());
        assert!(!e.c.exists("/shared/image_only.txt"), "the mount hides the image's directory");
        std::fs::write(e.shared.join("from_host"), "hello").unwrap();
        out(&e.c, "/shared/from_host", &e.host.join("from_host"), PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("from_host")).unwrap(), "hello");
    });
}

#[test]
fn copies_into_a_read_only_mount_are_erofs_and_out_of_it_work() {
    each_env(|e| {
        let src = host_src(e);
        std::fs::write(e.ro.join("r.txt"), "readable").unwrap();
        let before = host_snapshot(&e.ro);
        assert_errno(into(&e.c, &src.join("file.txt"), "/ro/file.txt", PLAIN), libc::EROFS);
        assert_errno(into(&e.c, &src.join("tree"), "/ro/t", PLAIN), libc::EROFS);
        assert!(host_snapshot(&e.ro) == before);
        assert!(upper_is_empty(&e.c));
        out(&e.c, "/ro/r.txt", &e.host.join("r.txt"), PLAIN).unwrap();
        assert_eq!(std::fs::read_to_string(e.host.join("r.txt")).unwrap(), "readable");
    });
}

#[test]
fn a_tree_copied_over_a_mount_target_goes_into_the_mount_for_that_part() {
    each_env(|e| {
        let over = e.s.new_dir("src");
        std::fs::create_dir(over.join("vol")).unwrap();
        std::fs::write(over.join("vol/inside.txt"), "into the volume").unwrap();
        std::fs::write(over.join("top.txt"), "into the writable layer").unwrap();
        into(&e.c, &over, "/", CONTENTS).unwrap();
        assert_eq!(std::fs::read_to_string(e.vol.join("inside.txt")).unwrap(), "into the volume");
        assert_eq!(e.c.text("/top.txt"), "into the writable layer");
        let markers = e.c.markers();
        assert!(markers.contains_key("/top.txt"));
        assert!(!markers.keys().any(|k| k.starts_with("/vol")));
    });
}

// ----- security: nothing outside the container's root and mounts -----

/// The child of the cp image with links pointing at the host, a bind source and a volume holding
/// links to the host too. The host directory is the stack's `outside/`, the canary its `secret`.
struct Evil {
    s: Stack,
    c: Ctr,
    out: PathBuf,
}

fn evil(p: Privilege) -> Evil {
    let s0 = Stack::new(p);
    let hostdir = s0.outside();
    let canary = hostdir.join("secret");
    let (h, k) = (hostdir.to_str().unwrap().to_string(), canary.to_str().unwrap().to_string());
    let dotdot = "../../../../../../../../..";
    let tar = image_tar(|t| {
        t.dir("evil")
            .symlink("evil/abs_file", &k)
            .symlink("evil/abs_dir", &h)
            .symlink("evil/root", "/")
            .symlink("evil/dotdot", dotdot)
            .symlink("evil/dotdot_abs", &format!("{dotdot}{h}"))
            .symlink("evil/etc_passwd", "/etc/passwd")
    });
    let mut s = s0;
    s.push(&tar);
    let (bind, vol) = (s.new_dir("bind"), s.new_dir("volume"));
    std::os::unix::fs::symlink(&hostdir, bind.join("to_hostdir")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", bind.join("up")).unwrap();
    std::os::unix::fs::symlink(&hostdir, vol.join("to_hostdir")).unwrap();
    std::os::unix::fs::symlink(&canary, vol.join("to_canary")).unwrap();
    let c = s.container_with(&[("/vol", &vol, false), ("/shared", &bind, false)]);
    let out = s.new_dir("out");
    Evil { s, c, out }
}

/// `{hostdir}` and `{canary}` in a path replaced by the host paths.
fn host_paths(e: &Evil, path: &str) -> String {
    let hostdir = e.s.outside();
    path.replace("{hostdir}", hostdir.to_str().unwrap()).replace("{canary}", hostdir.join("secret").to_str().unwrap())
}

fn no_canary_under(dir: &Path) {
    for (p, entry) in host_snapshot(dir) {
        if Kind::from_mode(entry.mode) == Kind::File {
            assert!(!entry.content.unwrap().windows(11).any(|w| w == b"host secret"), "{p} holds the host's secret");
        }
    }
}

fn copy_out_never_reads_the_host(path: &str, follow: bool) {
    for p in privileges() {
        let e = evil(p);
        let path = host_paths(&e, path);
        // Failing is fine; reading the host is not.
        let _ = out(&e.c, &path, &e.out.join("x"), Opts { follow, ..PLAIN });
        no_canary_under(&e.out);
    }
}

macro_rules! copy_out_cases {
    ($($name:ident: $path:literal, $follow:expr;)*) => {
        $(
            #[test]
            fn $name() {
                copy_out_never_reads_the_host($path, $follow);
            }
        )*
    };
}

copy_out_cases! {
    out_through_an_absolute_link_to_a_host_file: "/evil/abs_file", true;
    out_through_an_absolute_link_to_a_host_directory: "/evil/abs_dir/secret", false;
    out_of_an_absolute_link_to_a_host_directory_followed: "/evil/abs_dir", true;
    out_of_an_absolute_link_to_a_host_directory_with_a_dot: "/evil/abs_dir/.", false;
    out_through_a_link_to_the_root: "/evil/root{canary}", false;
    out_through_a_link_climbing_above_the_root: "/evil/dotdot{canary}", false;
    out_through_a_climbing_link_to_the_host_directory: "/evil/dotdot_abs/secret", false;
    out_of_a_volumes_link_to_a_host_file: "/vol/to_canary", true;
    out_through_a_volumes_link_to_a_host_directory: "/vol/to_hostdir/secret", false;
    out_through_a_bind_sources_link_to_a_host_directory: "/shared/to_hostdir/secret", false;
    out_through_a_bind_sources_climbing_link: "/shared/up{canary}", false;
}

#[test]
fn links_lead_to_the_containers_own_copy_of_a_host_path() {
    for p in privileges() {
        let e = evil(p);
        let hostdir = e.s.outside();
        e.c.makedirs(hostdir.to_str().unwrap()).unwrap();
        e.c.write(hostdir.join("secret").to_str().unwrap(), "the container's own file\n").unwrap();
        for (i, path) in ["/evil/abs_file", "/vol/to_canary", "/evil/root{canary}", "/evil/dotdot_abs/secret", "/shared/to_hostdir/secret"].into_iter().enumerate() {
            out(&e.c, &host_paths(&e, path), &e.out.join(i.to_string()), FOLLOW).unwrap();
            assert_eq!(std::fs::read_to_string(e.out.join(i.to_string())).unwrap(), "the container's own file\n", "{path}");
        }
        assert_eq!(std::fs::read_to_string(hostdir.join("secret")).unwrap(), SECRET);
    }
}

/// A file, a directory and a directory's contents copied to `dst`: the host never changes.
fn copy_in_never_writes_the_host(dst: &str) {
    for p in privileges() {
        let e = evil(p);
        let payload = e.s.new_dir("payload");
        std::fs::write(payload.join("secret"), "PWNED\n").unwrap();
        std::fs::write(payload.join("new"), "PWNED\n").unwrap();
        let dst = host_paths(&e, dst);
        let before = host_snapshot(&e.s.outside());
        for (src, o) in [(payload.join("secret"), PLAIN), (payload.clone(), PLAIN), (payload.clone(), CONTENTS), (payload.join("secret"), FOLLOW)] {
            let _ = into(&e.c, &src, &dst, o);
        }
        assert!(host_snapshot(&e.s.outside()) == before, "the host directory changed");
        assert_eq!(std::fs::read_to_string(e.s.outside().join("secret")).unwrap(), SECRET);
    }
}

macro_rules! copy_in_cases {
    ($($name:ident: $dst:literal;)*) => {
        $(
            #[test]
            fn $name() {
                copy_in_never_writes_the_host($dst);
            }
        )*
    };
}

copy_in_cases! {
    in_onto_an_absolute_link_to_a_host_directory: "/evil/abs_dir";
    in_below_an_absolute_link_to_a_host_directory: "/evil/abs_dir/new";
    in_onto_an_absolute_link_to_a_host_file: "/evil/abs_file";
    in_onto_a_host_file_through_a_link: "/evil/abs_dir/secret";
    in_onto_a_climbing_path_to_the_host_directory: "/evil/dotdot{hostdir}";
    in_onto_a_climbing_path_to_the_host_file: "/evil/dotdot{canary}";
    in_below_the_host_directory_through_a_root_link: "/evil/root{hostdir}/x";
    in_onto_a_climbing_link_to_the_host_directory: "/evil/dotdot_abs";
    in_onto_a_volumes_link_to_a_host_directory: "/vol/to_hostdir";
    in_onto_a_volumes_link_to_a_host_file: "/vol/to_canary";
    in_onto_a_bind_sources_link_to_a_host_directory: "/shared/to_hostdir";
    in_onto_a_host_file_through_a_bind_sources_link: "/shared/to_hostdir/secret";
    in_below_a_bind_sources_climbing_link: "/shared/up{hostdir}/x";
}

#[test]
fn writes_through_hostile_links_never_reach_the_host() {
    for p in privileges() {
        let e = evil(p);
        let before = host_snapshot(&e.s.outside());
        let fs = &e.c;
        for path in ["/evil/abs_file", "/evil/root{canary}", "/evil/dotdot_abs/secret", "/vol/to_canary", "/shared/to_hostdir/secret"] {
            let path = host_paths(&e, path);
            assert_errno(fs.read(&path), libc::ENOENT);
            let _ = fs.write(&path, "PWNED");
            let _ = fs.chmod(&path, 0o777);
            let _ = fs.truncate(&path, 0);
            let _ = fs.utime(&path, 1, 1);
            let _ = fs.chown(&path, Some(99), Some(99));
        }
        for d in ["/evil/abs_dir", "/vol/to_hostdir", "/shared/to_hostdir"] {
            let _ = fs.mkdir(&format!("{d}/newdir"), 0o755);
            let _ = fs.symlink("/x", &format!("{d}/l"));
            let _ = fs.remove(&format!("{d}/secret"));
            let _ = fs.rmtree(d);
        }
        assert!(host_snapshot(&e.s.outside()) == before, "the host directory changed");
    }
}

#[test]
fn a_symlink_swapped_in_during_copies_never_lets_them_touch_the_host() {
    // CVE-2018-15664: another handle keeps replacing a container directory with a symlink to the host
    // while copies run in both directions.
    for p in privileges() {
        let e = evil(p);
        let payload = e.s.new_dir("payload");
        for i in 0..20 {
            std::fs::write(payload.join(format!("f{i:02}")), "PWNED\n").unwrap();
        }
        std::fs::write(payload.join("secret"), "PWNED\n").unwrap();
        e.c.mkdir("/race", 0o755).unwrap();
        let before = host_snapshot(&e.s.outside());
        let hostdir = e.s.outside().to_str().unwrap().to_string();
        let targets = [hostdir.clone(), "/".into(), format!("../../../../../../..{hostdir}"), format!("{hostdir}/secret")];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let swaps = std::sync::atomic::AtomicUsize::new(0);
        let swapper = e.c.reopen();
        let mut copies = 0;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = swapper.rmtree("/race");
                    let _ = swapper.symlink(&targets[i % targets.len()], "/race");
                    let _ = swapper.remove("/race");
                    let _ = swapper.mkdir("/race", 0o755);
                    let _ = swapper.write("/race/f00", "container data\n");
                    i += 1;
                    swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            // A while, and long enough for both sides to have run many times, however loaded the machine.
            let start = std::time::Instant::now();
            let ran = |copies: usize| start.elapsed().as_millis() > 700 && copies > 20 && swaps.load(std::sync::atomic::Ordering::Relaxed) > 20;
            while !ran(copies) && start.elapsed().as_secs() < 30 {
                let _ = into(&e.c, &payload, "/race", CONTENTS);
                let _ = into(&e.c, &payload.join("secret"), "/race/secret", PLAIN);
                let _ = into(&e.c, &payload, "/race/payload", PLAIN);
                let _ = out(&e.c, "/race", &e.out.join(format!("o{copies}")), PLAIN);
                let _ = out(&e.c, "/race/secret", &e.out.join(format!("s{copies}")), PLAIN);
                copies += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(copies > 20 && swaps.into_inner() > 20, "the race ran");
        assert!(host_snapshot(&e.s.outside()) == before, "the host directory changed");
        no_canary_under(&e.out);
    }
}

// ----- put_archive -----

fn put(fs: &Fs, dir: &str, tar: &[u8]) -> Result<u64> {
    put_archive(&fs.view, Path::new(dir), tar)
}

#[test]
fn put_archive_extracts_through_the_view() {
    each_env(|e| {
        let t = Tar::new()
            .dir_with("new", mode(0o750).mtime(1_500_000_000))
            .file_with("new/f", "data", mode(0o640).owner(7, 8).mtime(1_400_000_000))
            .symlink("new/l", "f")
            .hardlink("new/h", "new/f")
            .file("implied/parent/x", "x")
            .file("passwd", "replaced\n")
            .bytes();
        assert_eq!(put(&e.c, "/etc", &t).unwrap(), 4 + 1 + 9);
        let st = e.c.st("/etc/new/f");
        assert_eq!((st.perm(), st.uid, st.gid, st.mtime.0), (0o640, 7, 8, 1_400_000_000));
        assert_eq!(e.c.st("/etc/new").mtime.0, 1_500_000_000, "directory times restored last");
        assert_eq!(e.c.readlink("/etc/new/l").unwrap(), "f");
        assert_eq!(e.c.st("/etc/new/h").ino, st.ino);
        assert_eq!(e.c.text("/etc/implied/parent/x"), "x");
        assert_eq!(e.c.text("/etc/passwd"), "replaced\n");
        assert_eq!(e.s.view().text("/etc/passwd"), PASSWD, "copied up, the image unchanged");
        let want = [("C", "/etc"), ("A", "/etc/implied"), ("A", "/etc/implied/parent"), ("A", "/etc/implied/parent/x"), ("A", "/etc/new"), ("A", "/etc/new/f"), ("A", "/etc/new/h"), ("A", "/etc/new/l"), ("C", "/etc/passwd")];
        let got: Vec<(String, String)> = e.c.diff().into_iter().map(|(k, p)| (k.to_string(), p)).collect();
        assert_eq!(got, want.map(|(k, p)| (k.to_string(), p.to_string())));
    });
}

#[test]
fn put_archive_accepts_compressed_input_and_goes_into_mounts() {
    each_env(|e| {
        let t = Tar::new().file("v.txt", "in the volume").bytes();
        put(&e.c, "/vol", &zstd::encode_all(&t[..], 3).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(e.vol.join("v.txt")).unwrap(), "in the volume");
        assert!(upper_is_empty(&e.c));
        assert_errno(put(&e.c, "/ro", &t), libc::EROFS);
        assert_errno(put(&e.c, "/etc/passwd", &t), libc::ENOTDIR);
        assert_errno(put(&e.c, "/nope", &t), libc::ENOENT);
    });
}

#[test]
fn put_archive_refuses_hostile_names() {
    each_env(|e| {
        for name in ["../escaped", "/etc/abs", "a/../../escaped"] {
            let t = Tar::new().raw(&raw_header(name.as_bytes(), &RawHeader { size: 1, ..RawHeader::default() })).raw(&common::tar::pad(b"x")).bytes();
            assert!(assert_invalid_archive(put(&e.c, "/tmp", &t)).contains(name));
        }
        let link = Tar::new().hardlink("h", "/etc/passwd").bytes();
        assert_invalid_archive(put(&e.c, "/tmp", &link));
        assert!(!e.c.exists("/escaped") && !e.c.exists("/tmp/escaped"));
        assert!(upper_is_empty(&e.c));
    });
}

#[test]
fn put_archive_through_a_hostile_link_stays_in_the_container() {
    for p in privileges() {
        let e = evil(p);
        let before = host_snapshot(&e.s.outside());
        let t = Tar::new().file("secret", "PWNED\n").symlink("l", "/").bytes();
        let _ = put(&e.c, "/evil/abs_dir", &t);
        let _ = put(&e.c, &host_paths(&e, "/evil/dotdot{hostdir}"), &t);
        assert!(host_snapshot(&e.s.outside()) == before, "the host directory changed");
        let owned = Tar::new().file_with("f", "x", owner(5, 6)).bytes();
        put(&e.c, "/tmp", &owned).unwrap();
        assert_eq!((e.c.st("/tmp/f").uid, e.c.st("/tmp/f").gid), (5, 6));
    }
}
