//! Seeded random layer stacks (files, directories, symlinks, hard links, whiteouts, opaque markers,
//! implied parents, any tar order a tar may have): the view shows what the OCI layer rules say (an
//! in-memory model of the tars), and so does the kernel's overlayfs of the same layer directories
//! (test_kernel_oracle.py).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::kernel::kernel_tree;
use common::model::{self, Model};
use common::tree::{listing, shape, without_times, Listing};
use common::*;

const NAMES: [&str; 3] = ["a", "b", "c"];
const FILE_MODES: [u32; 6] = [0o644, 0o755, 0o600, 0o4755, 0o2711, 0o444];
const DIR_MODES: [u32; 5] = [0o755, 0o700, 0o555, 0o1777, 0o2750];
const IDS: [u64; 2] = [0, 1000];
const MTIMES: [i64; 3] = [1_400_000_000, 1_500_000_000, 1_600_000_000];
const TARGETS: [&str; 15] = ["a", "b", "a/b", "../a", "/a", "/a/b", "/", ".", "..", "../../..", "/b/../c", "nonexistent", "a/b/c", "c/../a", "/c/a"];
const CONTENTS: [&str; 4] = ["", "x", "hello\n", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"];

/// xorshift64*: the same stacks on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// Every path of up to three components over NAMES.
fn all_paths() -> Vec<String> {
    let mut out = Vec::new();
    let mut frontier = vec![String::new()];
    for _ in 0..3 {
        frontier = frontier.iter().flat_map(|p| NAMES.map(|n| if p.is_empty() { n.to_string() } else { format!("{p}/{n}") })).collect();
        out.extend(frontier.iter().cloned());
    }
    out
}

fn parents(p: &str) -> Vec<String> {
    let parts: Vec<&str> = p.split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

#[derive(Clone)]
enum What {
    Dir { implied: bool },
    File(String),
    Symlink(&'static str),
    Hardlink(String),
}

struct Entry {
    what: What,
    attr: Attr,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Entry(String),
    Whiteout(String),
    Opaque(String),
}

/// One random layer, as a tar in a random order that any tar may have: a directory's entry before what
/// is below it, a hard link's target before the link.
fn random_layer(rng: &mut Rng, index: usize) -> Vec<u8> {
    let paths = all_paths();
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let (mut whiteouts, mut opaques) = (BTreeSet::new(), BTreeSet::new());
    let mut meta = |rng: &mut Rng, dir: bool| {
        let m = if dir { rng.pick(&DIR_MODES) } else { rng.pick(&FILE_MODES) };
        Attr::default().mode(m).owner(rng.pick(&IDS), rng.pick(&IDS)).mtime(rng.pick(&MTIMES))
    };
    // Make the missing directories of `dirs` (some of them implied: no entry of their own).
    let make_dirs = |rng: &mut Rng, entries: &mut BTreeMap<String, Entry>, dirs: &[String], meta: &mut dyn FnMut(&mut Rng, bool) -> Attr| {
        if dirs.iter().any(|d| entries.get(d).is_some_and(|e| !matches!(e.what, What::Dir { .. }))) {
            return false;
        }
        for d in dirs {
            if !entries.contains_key(d) {
                let attr = meta(rng, true);
                entries.insert(d.clone(), Entry { what: What::Dir { implied: rng.below(2) == 0 }, attr });
            }
        }
        true
    };
    for _ in 0..rng.below(10) {
        let p = paths[rng.below(paths.len())].clone();
        match rng.below(11) {
            0..=6 if entries.contains_key(&p) => {}
            7 | 8 => {
                if !whiteouts.contains(&p) && make_dirs(rng, &mut entries, &parents(&p), &mut meta) {
                    whiteouts.insert(p);
                }
            }
            9 => {
                let mut dirs = parents(&p);
                dirs.push(p.clone());
                if make_dirs(rng, &mut entries, &dirs, &mut meta) {
                    opaques.insert(p);
                }
            }
            10 => {
                let files: Vec<String> = entries.iter().filter(|(_, e)| matches!(e.what, What::File(_))).map(|(k, _)| k.clone()).collect();
                if !files.is_empty() && !entries.contains_key(&p) && make_dirs(rng, &mut entries, &parents(&p), &mut meta) {
                    let target = files[rng.below(files.len())].clone();
                    entries.insert(p, Entry { what: What::Hardlink(target), attr: Attr::default() });
                }
            }
            op => {
                if !make_dirs(rng, &mut entries, &parents(&p), &mut meta) {
                    continue;
                }
                let what = match op {
                    0..=2 => What::File(format!("{}<{index}:{p}>", rng.pick(&CONTENTS))),
                    3 | 4 => What::Dir { implied: false },
                    _ => What::Symlink(rng.pick(&TARGETS)),
                };
                let attr = meta(rng, matches!(what, What::Dir { .. }));
                entries.insert(p, Entry { what, attr });
            }
        }
    }
    // A random permutation, then emitted with what each item needs before it.
    let mut items: Vec<Item> = entries.iter().filter(|(_, e)| !matches!(e.what, What::Dir { implied: true })).map(|(p, _)| Item::Entry(p.clone())).collect();
    items.extend(whiteouts.iter().cloned().map(Item::Whiteout));
    items.extend(opaques.iter().cloned().map(Item::Opaque));
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    fn emit(item: &Item, entries: &BTreeMap<String, Entry>, whiteouts: &BTreeSet<String>, done: &mut BTreeSet<Item>, order: &mut Vec<Item>) {
        if done.contains(item) {
            return;
        }
        let (p, opaque) = match item {
            Item::Entry(p) | Item::Whiteout(p) => (p, false),
            Item::Opaque(p) => (p, true),
        };
        let mut needs = parents(p);
        if opaque && whiteouts.contains(p) {
            needs.push(p.clone());
        }
        for a in needs {
            if !matches!(entries[&a].what, What::Dir { implied: true }) {
                emit(&Item::Entry(a), entries, whiteouts, done, order);
            }
        }
        if let Item::Entry(p) = item {
            if let What::Hardlink(target) = &entries[p].what {
                emit(&Item::Entry(target.clone()), entries, whiteouts, done, order);
            }
        }
        done.insert(item.clone());
        order.push(item.clone());
    }
    for item in &items {
        emit(item, &entries, &whiteouts, &mut done, &mut order);
    }
    order
        .into_iter()
        .fold(Tar::new(), |t, item| match item {
            Item::Whiteout(p) => t.whiteout(&p),
            Item::Opaque(p) => t.opaque(&p),
            Item::Entry(p) => {
                let e = &entries[&p];
                match &e.what {
                    What::Dir { .. } => t.dir_with(&p, e.attr.clone()),
                    What::File(data) => t.file_with(&p, data, e.attr.clone()),
                    What::Symlink(target) => t.symlink_with(&p, target, e.attr.clone()),
                    What::Hardlink(target) => t.hardlink(&p, target),
                }
            }
        })
        .bytes()
}

/// The model's listing (hard links show as their target's entry).
fn model_listing(m: &Model) -> Listing {
    m.iter().map(|(p, e)| (p.clone(), e.kind, e.data.clone().or_else(|| e.link.clone().map(String::into_bytes)))).collect()
}

fn check_stack(p: Privilege, tars: &[Vec<u8>], case: usize) {
    let refs: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let s = Stack::of(p, &refs);
    let view = s.view().tree("/");
    let (model, _) = model::apply(tars);
    assert_eq!(listing(&view), model_listing(&model), "case {case} ({p:?}): the view differs from the OCI rules");
    // The view reports the archive's metadata (the rootless one from its overrides).
    for (path, e) in &model {
        if e.kind == Kind::Symlink {
            continue;
        }
        let n = &view[path];
        assert_eq!((n.perm, n.uid as u64, n.gid as u64), (e.mode, e.uid, e.gid), "case {case} ({p:?}): {path}");
        if e.mtime != i64::MIN {
            assert_eq!(n.mtime_ns, e.mtime as i128 * 1_000_000_000, "case {case} ({p:?}): {path}");
        }
    }
    if let Some(kernel) = kernel_tree(&s.top_first(), p) {
        match p {
            Privilege::Root => assert_same(&without_times(&kernel, false), &without_times(&view, false)),
            Privilege::Rootless => assert_eq!(shape(&kernel), shape(&view), "case {case}: the kernel"),
        }
    }
}

#[test]
fn random_stacks_show_what_the_layer_rules_say_in_the_view_and_the_kernel() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..40 {
        let tars: Vec<Vec<u8>> = (0..3 + rng.below(4)).map(|i| random_layer(&mut rng, i)).collect();
        for p in privileges() {
            check_stack(p, &tars, case);
        }
    }
}
