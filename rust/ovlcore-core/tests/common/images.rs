//! The images of the container tests (a base layer and two more, as `_helpers_containers.py` builds them)
//! and the checks every container test ends with: the image layers never changed, `diff` equals the diff
//! of the two merged trees, and (as root) the kernel mounts the writable layer showing the same tree.

use super::kernel::kernel_tree;
use super::stack::{Ctr, Stack};
use super::tar::{mode, Attr, Tar};
use super::tree::{assert_parents_first, assert_same, expected_diff, shape, without_times, Shape};
use super::{privileges, Kind, Privilege};

/// The mtime of most image entries.
pub const T0: i64 = 1_600_000_000;

pub fn big() -> Vec<u8> {
    (0..20_000u32).map(|i| ((i * 7 + i / 256) % 251) as u8).collect()
}

fn at(t: i64) -> Attr {
    Attr::default().mtime(t)
}

pub fn base_tar() -> Vec<u8> {
    Tar::new()
        .dir("bin")
        .file_with("bin/sh", "#!/fake/shell\n".repeat(20), mode(0o755))
        .dir("etc")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
        .file("etc/group", "root:x:0:\nuser:x:1000:\n")
        .file("etc/hostname", "base\n")
        .file_with("etc/motd", "welcome\n", at(T0 + 5))
        .file_with("etc/secret", "s3cr3t\n", mode(0o600).mtime(T0 + 7))
        .file_with("etc/suid", b"\x7fELF-ish", mode(0o4755).mtime(T0 + 9))
        .dir("usr")
        .dir("usr/bin")
        .file_with("usr/bin/a", "hard linked\n", mode(0o755))
        .hardlink("usr/bin/b", "usr/bin/a")
        .dir("usr/lib")
        .file_with("usr/lib/libx.so", b"\0libx".repeat(100), mode(0o755))
        .dir("usr/share")
        .dir("usr/share/doc")
        .file("usr/share/doc/a.txt", "doc a\n")
        .file("usr/share/doc/b.txt", "doc b\n")
        .dir("usr/share/doc/sub")
        .file("usr/share/doc/sub/deep.txt", "deep\n")
        .symlink("lib", "usr/lib")
        .dir("var")
        .dir_with("var/log", mode(0o750).mtime(T0 + 11))
        .dir("home")
        .dir_with("home/user", mode(0o750).owner(1000, 1000))
        .file_with(
            "home/user/.profile",
            "export PS1='$ '\n",
            mode(0o640).owner(1000, 1000).xattr("user.note", "hello").xattr("user.other", "x"),
        )
        .dir("dev")
        .chardev("dev/null", 1, 3)
        .dir_with("tmp", mode(0o1777))
        .dir("data")
        .file_with("data/big.bin", big(), at(T0 + 13))
        .bytes()
}

pub fn layer2_tar() -> Vec<u8> {
    Tar::new()
        .dir_with("etc", at(T0 + 100))
        .file_with("etc/motd", "welcome to the child image\n", at(T0 + 100))
        .whiteout("etc/hostname")
        .dir("usr")
        .dir("usr/share")
        .dir_with("usr/share/doc", at(T0 + 100))
        .opaque("usr/share/doc")
        .file_with("usr/share/doc/c.txt", "doc c (child)\n", at(T0 + 100))
        .dir_with("app", at(T0 + 100))
        .file_with("app/main.py", "print('hello')\n", at(T0 + 100))
        .bytes()
}

pub fn layer3_tar() -> Vec<u8> {
    let x: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
    Tar::new()
        .dir_with("app", at(T0 + 200))
        .dir_with("app/data", at(T0 + 200))
        .file_with("app/data/x.bin", x, at(T0 + 200))
        .dir_with("opt", at(T0 + 200))
        .file_with("opt/tool", "tool v1\n", mode(0o755).mtime(T0 + 200))
        .bytes()
}

/// The child image: the base layer and two more.
pub fn child(p: Privilege) -> Stack {
    Stack::of(p, &[&base_tar(), &layer2_tar(), &layer3_tar()])
}

/// Run `f` on a fresh container of the child image in every convention this process can test, then
/// check that no image layer changed.
pub fn each_container(f: impl Fn(&Stack, &Ctr)) {
    for p in privileges() {
        eprintln!("privilege: {p:?}");
        let s = child(p);
        let before = s.snapshot();
        let c = s.container();
        f(&s, &c);
        assert!(s.snapshot() == before, "an image layer changed ({p:?})");
    }
}

/// The container's `diff` lists parents first and equals the diff of the image's and the container's
/// merged trees.
pub fn check_diff(s: &Stack, c: &Ctr) {
    let mut got = c.diff();
    assert_parents_first(&got);
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got, expected_diff(&s.view().tree("/"), &c.tree("/")));
}

/// As root, the kernel's overlayfs of the writable layer over the image layers shows the view's tree
/// (all metadata but times for the root convention; names, types and contents for the rootless one,
/// whose devices and FIFOs are regular files on disk).
pub fn check_kernel(s: &Stack, c: &Ctr) {
    let mut lowers = vec![c.upper()];
    lowers.extend(s.top_first());
    let Some(kernel) = kernel_tree(&lowers, s.privilege) else { return };
    let view = c.tree("/");
    match s.privilege {
        Privilege::Root => assert_same(&without_times(&kernel, false), &without_times(&view, false)),
        Privilege::Rootless => assert_eq!(shape(&kernel), on_disk(shape(&view))),
    }
}

/// A rootless view's shape as the disk holds it: devices and FIFOs are empty regular files.
fn on_disk(view: Shape) -> Shape {
    view.into_iter()
        .map(|(p, (k, c, ch))| match k {
            Kind::Char | Kind::Block | Kind::Fifo => (p, (Kind::File, Some(Vec::new()), None)),
            _ => (p, (k, c, ch)),
        })
        .collect()
}
