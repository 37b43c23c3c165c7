//! `docker diff` read from the writable layer alone, checked against the table of Docker's rules and
//! against the diff computed from the image's and the container's merged trees, for fixed changes and
//! for seeded random operation sequences, whose writable layers the kernel must mount showing the same
//! tree (test_containers_commit.py, test_containers_kernel.py).

mod common;

use common::images::{check_diff, check_kernel, child, each_container, T0};
use common::tree::{assert_parents_first, expected_diff};
use common::*;
use rustix::fs::OFlags;

const NS: i128 = 1_000_000_000;

fn sorted(mut d: Vec<(char, String)>) -> Vec<(char, String)> {
    assert_parents_first(&d);
    d.sort_by(|a, b| a.1.cmp(&b.1));
    d
}

fn changes(list: &[(char, &str)]) -> Vec<(char, String)> {
    list.iter().map(|(k, p)| (*k, p.to_string())).collect()
}

#[test]
fn the_rules_of_docker_diff() {
    each_container(|s, c| {
        // A rewrite of the same size with the same mtime is invisible: contents are not compared.
        let st = c.st("/opt/tool");
        c.write("/opt/tool", "tool v2\n").unwrap();
        let t = |(s, n): (i64, u32)| s as i128 * NS + n as i128;
        c.utime("/opt/tool", t(st.atime), t(st.mtime)).unwrap();
        // A copy-up without a change: invisible.
        drop(c.open_write("/etc/secret", OFlags::RDWR).unwrap());
        // Metadata changes: C.
        c.chmod("/bin/sh", 0o700).unwrap();
        c.chown("/etc/group", Some(0), Some(1000)).unwrap();
        c.utime("/etc/suid", T0 as i128 * NS, (T0 as i128 + 1) * NS).unwrap();
        // A directory's own mode change and a change below it: C once.
        c.chmod("/var/log", 0o700).unwrap();
        c.write("/var/log/new.log", "log").unwrap();
        // A new tree: A for every new path.
        c.makedirs("/srv/www/html").unwrap();
        c.write("/srv/www/html/index.html", "<html/>").unwrap();
        // A deleted tree: D, its descendants not listed.
        c.rmtree("/usr/share").unwrap();
        c.remove("/usr/bin/b").unwrap();
        // Type changes: C; the new directory's children A; the old directory's children not listed.
        c.remove("/etc/motd").unwrap();
        c.mkdir("/etc/motd", 0o755).unwrap();
        c.write("/etc/motd/x", "x").unwrap();
        c.rmtree("/app/data").unwrap();
        c.write("/app/data", "now a file").unwrap();
        c.symlink("sh", "/bin/shell").unwrap();
        let want = changes(&[
            ('C', "/app"),
            ('C', "/app/data"),
            ('C', "/bin"),
            ('C', "/bin/sh"),
            ('A', "/bin/shell"),
            ('C', "/etc"),
            ('C', "/etc/group"),
            ('C', "/etc/motd"),
            ('A', "/etc/motd/x"),
            ('C', "/etc/suid"),
            ('A', "/srv"),
            ('A', "/srv/www"),
            ('A', "/srv/www/html"),
            ('A', "/srv/www/html/index.html"),
            ('C', "/usr"),
            ('C', "/usr/bin"),
            ('D', "/usr/bin/b"),
            ('D', "/usr/share"),
            ('C', "/var"),
            ('C', "/var/log"),
            ('A', "/var/log/new.log"),
        ]);
        assert_eq!(sorted(c.diff()), want);
        check_diff(s, c);
    });
}

#[test]
fn a_recreated_directory_hides_the_images_entries_at_any_depth() {
    // Deleted and made again, a directory hides all of the image's entries below it: those gone are
    // deleted, names made again are changes, not additions.
    each_container(|s, c| {
        c.rmtree("/app").unwrap();
        c.makedirs("/app/data/deeper").unwrap();
        c.write("/app/main.py", "again").unwrap();
        let want = changes(&[('C', "/app"), ('C', "/app/data"), ('A', "/app/data/deeper"), ('D', "/app/data/x.bin"), ('C', "/app/main.py")]);
        assert_eq!(sorted(c.diff()), want);
        check_diff(s, c);
    });
}

#[test]
fn a_renamed_directory_is_deleted_and_added_and_renamed_back_is_no_change() {
    each_container(|s, c| {
        c.rename("/usr", "/usr2").unwrap();
        let got = sorted(c.diff());
        for change in [('D', "/usr"), ('A', "/usr2"), ('A', "/usr2/share/doc/c.txt")] {
            assert!(got.contains(&(change.0, change.1.to_string())), "{change:?} in {got:?}");
        }
        check_diff(s, c);
        c.rename("/usr2", "/usr").unwrap();
        // The merged tree is the image's again but for directory times, which diff does not compare.
        assert_eq!(c.diff(), []);
        check_diff(s, c);
    });
}

#[test]
fn a_fresh_container_and_an_image_have_no_changes() {
    each_container(|s, c| {
        assert_eq!(c.diff(), []);
        assert!(s.view().view.diff().unwrap().is_empty(), "no writable layer, no changes");
    });
}

#[test]
fn a_whiteout_of_a_name_the_image_never_had_is_not_a_deletion() {
    each_container(|s, c| {
        c.write("/etc/fresh", "x").unwrap();
        c.remove("/etc/fresh").unwrap();
        c.write("/etc/fresh2", "x").unwrap();
        assert_eq!(sorted(c.diff()), changes(&[('C', "/etc"), ('A', "/etc/fresh2")]));
        check_diff(s, c);
    });
}

#[test]
fn mounts_are_not_part_of_the_diff() {
    for p in privileges() {
        let s = child(p);
        let vol = s.new_dir("volume");
        let c = s.container_with(&[("/vol", &vol, false), ("/etc/conf", &vol, false)]);
        c.write("/vol/in-volume", "v").unwrap();
        c.write("/etc/conf/also", "v").unwrap();
        assert!(vol.join("in-volume").exists() && vol.join("also").exists());
        assert_eq!(c.diff(), []);
        c.write("/etc/other", "o").unwrap();
        assert_eq!(sorted(c.diff()), changes(&[('C', "/etc"), ('A', "/etc/other")]));
    }
}

#[test]
fn change_letters() {
    assert_eq!([ChangeKind::Added, ChangeKind::Changed, ChangeKind::Deleted].map(|k| k.letter()), ['A', 'C', 'D']);
}

// ----- seeded random operation sequences -----

/// xorshift64*: the same sequences on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

// Paths of the child image (files, directories, the /lib symlink, deleted and hidden names) and new ones.
const PATHS: &[&str] = &[
    "/bin", "/bin/sh", "/etc", "/etc/passwd", "/etc/motd", "/etc/hostname", "/etc/secret", "/etc/suid", "/etc/new", "/etc/sub",
    "/etc/sub/f", "/usr", "/usr/bin", "/usr/bin/a", "/usr/bin/b", "/usr/lib", "/usr/lib/libx.so", "/usr/share", "/usr/share/doc",
    "/usr/share/doc/c.txt", "/usr/share/doc/a.txt", "/usr/share/doc/new", "/lib", "/lib/libx.so", "/lib/new", "/var", "/var/log",
    "/var/log/x", "/home/user", "/home/user/.profile", "/app", "/app/main.py", "/app/data", "/app/data/x.bin", "/app/data/y", "/opt",
    "/opt/tool", "/opt/d", "/new", "/newdir", "/newdir/f", "/newdir/sub", "/data/big.bin",
];
const DIR_PATHS: &[&str] = &["/app", "/app/data", "/app/data/x.bin", "/app/main.py", "/usr/share", "/usr/share/doc", "/z"];
const TARGETS: &[&str] = &["motd", "passwd", "data", "x.bin", "sub", "doc", "f", "nowhere", "tool", "."];
const MODES: &[u32] = &[0o600, 0o644, 0o755, 0o700, 0o4755, 0o2711, 0o1777];
const IDS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (7, 0), (0, 9)];
const TIMES: &[i128] = &[T0 as i128 * NS, (T0 as i128 + 3600) * NS + 5];

/// One random operation through the view; failures (any errno) are part of the game.
fn random_op(rng: &mut Rng, fs: &Fs, paths: &[&str]) {
    let path = rng.pick(paths);
    let other = rng.pick(paths);
    let data = vec![b'x'; (rng.next() % 24) as usize];
    let _ = match rng.next() % 15 {
        0 => fs.write(path, &data),
        1 => fs.append(path, &data[..data.len().min(8)]),
        2 => fs.open_write(path, OFlags::RDWR).map(drop),
        3 => fs.truncate(path, rng.next() % 41),
        4 => fs.chmod(path, rng.pick(MODES)),
        5 => {
            let (u, g) = rng.pick(IDS);
            fs.chown(path, Some(u), Some(g))
        }
        6 => {
            let t = rng.pick(TIMES);
            fs.utime(path, t, t)
        }
        7 => fs.mkdir(path, 0o755),
        8 => fs.makedirs(path),
        9 => fs.rmdir(path),
        10 => fs.remove(path),
        11 => fs.rmtree(path),
        12 => fs.rename(path, other),
        13 => fs.symlink(rng.pick(TARGETS), path),
        _ => fs.link(path, other),
    };
}

#[test]
fn random_operation_sequences_diff_like_the_merged_trees_and_mount_in_the_kernel() {
    for p in privileges() {
        let s = child(p);
        let image = s.view().tree("/");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..60 {
            let c = s.container();
            let (paths, n) = if round % 3 == 2 { (DIR_PATHS, 10) } else { (PATHS, 14) };
            for _ in 0..2 + rng.next() % n {
                random_op(&mut rng, &c, paths);
            }
            let got = sorted(c.diff());
            assert_eq!(got, expected_diff(&image, &c.tree("/")), "round {round} ({p:?})");
            check_kernel(&s, &c);
        }
    }
}
