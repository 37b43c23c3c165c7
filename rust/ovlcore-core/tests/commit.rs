//! `docker commit`: the committed layer holds exactly the container's changes in the layer format (its tar
//! applied with the OCI rules onto the image's layers gives the container's merged tree), its diff_id is
//! the sha256 of its tar and deterministic, and it stays immutable while the container goes on, although
//! it shares the container's inodes (test_containers_commit.py).

mod common;

use common::images::{check_diff, each_container, T0};
use common::kernel::kernel_tree;
use common::stack::read_all;
use common::tree::{host_snapshot, Tree};
use common::*;

const NS: i128 = 1_000_000_000;

/// A bit of everything a container does.
fn rich_changes(c: &Fs) {
    c.write("/etc/motd", "motd of the container\n").unwrap();
    c.append("/data/big.bin", "appended").unwrap();
    c.remove("/etc/passwd").unwrap();
    c.rmtree("/usr/share").unwrap();
    c.mkdir("/usr/share", 0o755).unwrap(); // opaque: hides the image's /usr/share/doc
    c.write("/usr/share/readme", "fresh share\n").unwrap();
    c.rename("/app", "/srv").unwrap();
    c.makedirs("/newdir/sub").unwrap();
    c.write("/newdir/sub/file", "new file").unwrap();
    c.link("/newdir/sub/file", "/newdir/hardlink").unwrap();
    c.symlink("/etc/motd", "/newdir/abs-link").unwrap();
    c.symlink("../etc", "/newdir/rel-link").unwrap();
    c.chmod("/bin/sh", 0o700).unwrap();
    c.chown("/etc/group", Some(1000), Some(1000)).unwrap();
    c.setxattr("/etc/secret", "user.tag", b"value").unwrap();
    c.mkfifo("/newdir/fifo", 0o640).unwrap();
    c.utime("/opt/tool", T0 as i128 * NS, (T0 as i128 + 42) * NS).unwrap();
    c.remove("/etc/motd").unwrap();
    c.mkdir("/etc/motd", 0o711).unwrap(); // a type change
    c.write("/etc/motd/inside", "i").unwrap();
}

/// Commit the container; the image made of the stack and the new layer.
fn commit(s: &Stack, c: &Ctr) -> (Stack, CommitReport) {
    let dest = s.new_dir("layer");
    let report = c.commit(&dest);
    let mut image = s.clone();
    image.push_dir(dest);
    (image, report)
}

fn layer_tars(image: &Stack) -> Vec<Vec<u8>> {
    (0..image.layers().len()).map(|i| image.layer_tar(i)).collect()
}

fn member_names(tar: &[u8]) -> Vec<String> {
    let mut a = ::tar::Archive::new(tar);
    a.entries().unwrap().map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap()).collect()
}

/// Two trees equal but for the root's times (those of the writable layer's or the layer's directory).
fn same_tree(a: &Tree, b: &Tree) {
    let strip = |t: &Tree| {
        let mut t = t.clone();
        t.get_mut("/").unwrap().mtime_ns = 0;
        t
    };
    assert_same(&strip(a), &strip(b));
}

#[test]
fn the_committed_layer_applied_on_the_image_gives_the_containers_tree() {
    each_container(|s, c| {
        rich_changes(c);
        let (image, report) = commit(s, c);
        let tars = layer_tars(&image);
        let top = tars.last().unwrap();
        assert_eq!(report.diff_id, sha256(top));
        assert_eq!(report.tar_size, top.len() as u64);
        let (model, _) = common::model::apply(&tars);
        assert_eq!(model, common::model::of_view(c));
        // Only the changes: whiteouts for deletions, an opaque marker for the directory made again,
        // nothing for untouched image files, no name twice.
        let names: Vec<String> = member_names(top).into_iter().map(|n| n.trim_end_matches('/').to_string()).collect();
        for n in ["etc/.wh.passwd", "usr/share/.wh..wh..opq", ".wh.app", "srv/data/x.bin", "newdir/fifo"] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        for n in ["usr/lib/libx.so", "home/user/.profile", "usr/share/doc"] {
            assert!(!names.contains(&n.to_string()), "{n} in {names:?}");
        }
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    });
}

#[test]
fn an_image_of_the_commit_shows_what_the_container_showed() {
    each_container(|s, c| {
        rich_changes(c);
        let seen = c.tree("/");
        let (image, _) = commit(s, c);
        same_tree(&image.view().tree("/"), &seen);
        let c2 = image.container();
        same_tree(&c2.tree("/"), &seen);
        assert_eq!(c2.diff(), []);
        // The committing container is unaffected: the same view, the same diff against its own image.
        assert_same(&c.tree("/"), &seen);
        check_diff(s, c);
        if let Some(kernel) = kernel_tree(&image.top_first(), s.privilege) {
            let names = |t: &Tree| t.keys().cloned().collect::<Vec<_>>();
            assert_eq!(names(&kernel), names(&seen), "the kernel mounts the committed layer");
        }
    });
}

#[test]
fn a_fresh_container_commits_an_empty_layer() {
    each_container(|s, c| {
        let (image, report) = commit(s, c);
        let tar = image.layer_tar(3);
        assert_eq!(tar, [0u8; 1024], "only the end-of-archive blocks");
        assert_eq!(report.diff_id, sha256(&tar));
        assert_eq!((report.size, report.shared.len()), (0, 0));
        same_tree(&image.view().tree("/"), &s.view().tree("/"));
    });
}

#[test]
fn the_layer_tar_hashes_to_the_diff_id_every_time() {
    each_container(|s, c| {
        rich_changes(c);
        let (image, report) = commit(s, c);
        for _ in 0..2 {
            assert_eq!(sha256(&image.layer_tar(3)), report.diff_id);
        }
    });
}

#[test]
fn the_same_content_committed_twice_gives_the_same_diff_id() {
    each_container(|s, c| {
        rich_changes(c);
        let (_, first) = commit(s, c);
        let (_, second) = commit(s, c);
        assert_eq!(first.diff_id, second.diff_id);
        assert_eq!(first.size, second.size);
    });
}

/// Give every entry of the writable layer the same times (children first).
fn normalize_times(c: &Ctr, ns: i128) {
    let mut paths: Vec<String> = c.markers().into_iter().filter(|(_, k)| *k != "whiteout").map(|(p, _)| p).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for p in paths {
        c.lutime(&p, ns, ns).unwrap();
    }
}

#[test]
fn the_diff_id_is_deterministic_across_containers() {
    for p in privileges() {
        let s = common::images::child(p);
        let ids: Vec<String> = (0..2)
            .map(|_| {
                let c = s.container();
                rich_changes(&c);
                normalize_times(&c, (T0 as i128 + 1000) * NS);
                commit(&s, &c).1.diff_id
            })
            .collect();
        assert_eq!(ids[0], ids[1], "{p:?}");
    }
}

#[test]
fn the_commit_reports_its_content_size_and_the_inodes_it_shares() {
    each_container(|s, c| {
        c.write("/hello", "hello world").unwrap();
        let (image, report) = commit(s, c);
        assert_eq!(report.size, 11);
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::symlink_metadata(image.top().join("hello")).unwrap().ino();
        assert_eq!(report.shared, [ino], "the layer took the file over by a hard link");
        assert_eq!(std::fs::symlink_metadata(c.up("/hello")).unwrap().ino(), ino);
    });
}

type Write = fn(&Fs, &str);

/// After a commit, a change of `how` to every file the layer shares leaves the layer as it was.
fn writes_after_commit(how: Write) {
    each_container(|s, c| {
        rich_changes(c);
        let seen = c.tree("/");
        let (image, report) = commit(s, c);
        let layer = image.top().to_path_buf();
        let snap = host_snapshot(&layer);
        let files: Vec<String> =
            common::tree::markers(&layer, s.privilege).into_iter().filter(|(_, k)| *k == "file").map(|(p, _)| p).collect();
        assert!(!report.shared.is_empty());
        for p in &files {
            if c.is_file(p) {
                how(c, p);
            }
        }
        assert_ne!(c.tree("/"), seen, "the container sees its new changes");
        assert!(host_snapshot(&layer) == snap, "the committed layer changed");
        assert_eq!(sha256(&image.layer_tar(3)), report.diff_id);
        same_tree(&image.container().tree("/"), &seen);
    });
}

macro_rules! writes_after_commit_cases {
    ($($name:ident: $how:expr;)*) => {
        $(
            #[test]
            fn $name() {
                writes_after_commit($how);
            }
        )*
    };
}

writes_after_commit_cases! {
    rewriting_after_commit_leaves_the_layer_alone: |fs, p| fs.write(p, "rewritten after commit").unwrap();
    appending_after_commit_leaves_the_layer_alone: |fs, p| fs.append(p, "+").unwrap();
    writing_in_place_after_commit_leaves_the_layer_alone: |fs, p| fs.write_at(p, 0, b"ZZ").unwrap();
    truncating_after_commit_leaves_the_layer_alone: |fs, p| fs.truncate(p, 1).unwrap();
    chmod_after_commit_leaves_the_layer_alone: |fs, p| fs.chmod(p, 0o600).unwrap();
    chown_after_commit_leaves_the_layer_alone: |fs, p| fs.chown(p, Some(4321), Some(4321)).unwrap();
    utime_after_commit_leaves_the_layer_alone: |fs, p| fs.utime(p, 1, 1).unwrap();
    setxattr_after_commit_leaves_the_layer_alone: |fs, p| fs.setxattr(p, "user.after", b"commit").unwrap();
}

#[test]
fn hard_links_made_in_the_container_stay_linked_after_a_commit() {
    each_container(|s, c| {
        c.write("/one", "one").unwrap();
        c.link("/one", "/two").unwrap();
        let (image, _) = commit(s, c);
        c.write("/two", "written through two").unwrap();
        assert_eq!(c.text("/one"), "written through two");
        assert_eq!(c.st("/one").ino, c.st("/two").ino);
        assert_eq!(image.view().text("/one"), "one");
        assert_eq!(image.view().st("/one").ino, image.view().st("/two").ino, "linked in the layer too");
    });
}

#[test]
fn a_hard_link_made_after_a_commit_links_the_containers_own_copy() {
    each_container(|s, c| {
        c.write("/one", "one").unwrap();
        let (image, _) = commit(s, c);
        c.link("/one", "/two").unwrap();
        c.write("/two", "written through two").unwrap();
        assert_eq!(c.text("/one"), "written through two");
        assert_eq!(image.view().text("/one"), "one");
        assert!(!image.view().exists("/two"));
    });
}

#[test]
fn another_handle_loaded_before_the_commit_leaves_the_layer_alone_too() {
    each_container(|s, c| {
        let other = c.reopen();
        c.write("/shared", "before commit").unwrap();
        assert_eq!(other.text("/shared"), "before commit");
        let (image, _) = commit(s, c);
        let snap = host_snapshot(image.top());
        other.write("/shared", "after").unwrap();
        other.append("/shared", "!").unwrap();
        other.chmod("/shared", 0o600).unwrap();
        assert!(host_snapshot(image.top()) == snap, "the committed layer changed");
        assert_eq!(image.view().text("/shared"), "before commit");
        assert_eq!(c.text("/shared"), "after!");
    });
}

#[test]
fn unshare_all_gives_every_shared_file_its_own_inode() {
    each_container(|s, c| {
        c.write("/a", "a").unwrap();
        c.write("/b", "b").unwrap();
        let (image, _) = commit(s, c);
        assert_eq!(c.view.unshare_all().unwrap(), 2);
        use std::os::unix::fs::MetadataExt;
        for p in ["/a", "/b"] {
            let mine = std::fs::symlink_metadata(c.up(p)).unwrap();
            let layer = std::fs::symlink_metadata(image.top().join(&p[1..])).unwrap();
            assert_ne!(mine.ino(), layer.ino(), "{p}");
            assert_eq!((mine.nlink(), layer.nlink()), (1, 1), "{p}");
        }
        // Written in place now (as through a kernel mount), the layer stays as it was.
        let f = std::fs::OpenOptions::new().write(true).open(c.up("/a")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"A", 0).unwrap();
        assert_eq!(image.view().text("/a"), "a");
        assert_eq!(c.view.unshare_all().unwrap(), 0);
    });
}

#[test]
fn long_names_big_ids_and_binary_xattrs_commit_and_export() {
    each_container(|s, c| {
        let deep = format!("/{}", vec!["d".repeat(40); 5].join("/"));
        c.makedirs(&deep).unwrap();
        let long = format!("{deep}/{}", "f".repeat(120));
        c.write(&long, "long").unwrap();
        c.symlink(&"t".repeat(150), "/longlink").unwrap();
        c.write("/bigid", "x").unwrap();
        c.chown("/bigid", Some(3_000_000), Some(4_000_000)).unwrap();
        let binary: Vec<u8> = (0..=255).collect();
        c.setxattr("/bigid", "user.bin", &binary).unwrap();
        c.write("/name with spaces & ünï", "u").unwrap();
        let (image, _) = commit(s, c);
        let (model, _) = common::model::apply(&layer_tars(&image));
        assert_eq!(model, common::model::of_view(c));
        let export = read_all(LayerTar::merged(c.view.clone()).unwrap());
        let (exported, _) = common::model::apply(&[export]);
        assert_eq!(exported, common::model::of_view(c));
        let diff = c.diff();
        assert!(diff.contains(&('A', long.clone())) && diff.contains(&('A', "/name with spaces & ünï".into())));
        check_diff(s, c);
    });
}

#[test]
fn a_committed_layer_with_newlines_in_xattr_values_reimports() {
    each_container(|s, c| {
        let binary: Vec<u8> = (0..=255).collect();
        c.write("/caps", "x").unwrap();
        c.setxattr("/caps", "user.bin", &binary).unwrap();
        c.setxattr("/caps", "user.nl", b"a\nb").unwrap();
        let (image, _) = commit(s, c);
        let layer = image.layer_tar(image.layers().len() - 1);
        let mut again = Stack::new(s.privilege);
        again.push(&layer);
        let fs = again.view();
        assert_eq!(fs.getxattr("/caps", "user.bin").unwrap(), Some(binary));
        assert_eq!(fs.getxattr("/caps", "user.nl").unwrap().as_deref(), Some(&b"a\nb"[..]));
        assert!(again.layer_tar(0) == layer, "and re-exports the very same bytes");
    });
}

#[test]
fn a_committed_container_removed_leaves_a_working_image() {
    each_container(|s, c| {
        rich_changes(c);
        let seen = c.tree("/");
        let (image, report) = commit(s, c);
        std::fs::remove_dir_all(&c.dir).unwrap();
        same_tree(&image.view().tree("/"), &seen);
        assert_eq!(sha256(&image.layer_tar(3)), report.diff_id);
    });
}

#[test]
fn the_committed_layer_keeps_the_opaque_marker_only_where_something_is_below() {
    each_container(|s, c| {
        c.rmtree("/usr/share").unwrap();
        c.mkdir("/usr/share", 0o755).unwrap();
        c.makedirs("/fresh/sub").unwrap();
        let (image, _) = commit(s, c);
        assert!(image.top().join("usr/share").is_dir());
        assert!(common::tree::is_opaque(&image.top().join("usr/share"), s.privilege));
        assert!(!common::tree::is_opaque(&image.top().join("fresh"), s.privilege));
        let names = member_names(&image.layer_tar(3));
        assert!(names.contains(&"usr/share/.wh..wh..opq".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("fresh/.wh.")));
    });
}
