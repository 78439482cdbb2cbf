//! Randomized model test: seeded sequences of write/truncate/rename/unlink/mkdir/rmdir/
//! link applied through the mount and to an in-memory model. Contents and metadata must
//! match, and the journal's dirty ranges must cover every changed byte without covering
//! whole files for small writes.

mod common;
use common::{journal_snapshot, Node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};

/// A file in the model: its content, and its content when the mount started (if any).
struct MFile {
    content: Vec<u8>,
    initial: Option<Vec<u8>>,
    written: u64,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum MNode {
    Dir,
    File(usize),
}

struct Model {
    tree: BTreeMap<String, MNode>,
    files: Vec<MFile>,
}

const DIRS: [&str; 3] = ["", "d1", "d1/d2"];
const NAMES: [&str; 6] = ["a", "b", "c", "d1", "d2", "e"];

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Model {
    fn parent_is_dir(&self, p: &str) -> bool {
        match p.rsplit_once('/') {
            None => true,
            Some((d, _)) => self.tree.get(d) == Some(&MNode::Dir),
        }
    }
    fn children(&self, p: &str) -> usize {
        let pre = format!("{p}/");
        self.tree.keys().filter(|k| k.starts_with(&pre)).count()
    }
    fn pick_path(&self, rng: &mut StdRng) -> String {
        join(
            DIRS[rng.gen_range(0..DIRS.len())],
            NAMES[rng.gen_range(0..NAMES.len())],
        )
    }
    fn pick_file(&self, rng: &mut StdRng) -> Option<(String, usize)> {
        let files: Vec<_> = self
            .tree
            .iter()
            .filter_map(|(k, v)| match v {
                MNode::File(i) => Some((k.clone(), *i)),
                MNode::Dir => None,
            })
            .collect();
        (!files.is_empty()).then(|| files[rng.gen_range(0..files.len())].clone())
    }
}

fn step(m: &mut Model, n: &Node, rng: &mut StdRng, log: &mut Vec<String>) {
    match rng.gen_range(0..100) {
        0..=39 => {
            let Some((p, i)) = m.pick_file(rng) else {
                return;
            };
            let len = rng.gen_range(1..3000usize);
            let cur = m.files[i].content.len();
            let off = rng.gen_range(0..cur + 2000) as u64;
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            log.push(format!("write {p} {off}+{len}"));
            let f = OpenOptions::new().write(true).open(n.m(&p)).unwrap();
            f.write_all_at(&data, off).unwrap();
            let c = &mut m.files[i].content;
            let end = off as usize + len;
            if c.len() < end {
                c.resize(end, 0);
            }
            c[off as usize..end].copy_from_slice(&data);
            m.files[i].written += len as u64;
        }
        40..=49 => {
            let Some((p, i)) = m.pick_file(rng) else {
                return;
            };
            let size = rng.gen_range(0..m.files[i].content.len() + 5000);
            log.push(format!("truncate {p} {size}"));
            OpenOptions::new()
                .write(true)
                .open(n.m(&p))
                .unwrap()
                .set_len(size as u64)
                .unwrap();
            m.files[i].content.resize(size, 0);
        }
        50..=59 => {
            let p = m.pick_path(rng);
            let ok = !m.tree.contains_key(&p) && m.parent_is_dir(&p);
            log.push(format!("create {p} ok={ok}"));
            let r = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(n.m(&p));
            assert_eq!(r.is_ok(), ok, "{log:?}");
            if ok {
                m.files.push(MFile {
                    content: Vec::new(),
                    initial: None,
                    written: 0,
                });
                m.tree.insert(p, MNode::File(m.files.len() - 1));
            }
        }
        60..=69 => {
            let Some((from, i)) = m.pick_file(rng) else {
                return;
            };
            let to = m.pick_path(rng);
            let ok = m.parent_is_dir(&to) && m.tree.get(&to) != Some(&MNode::Dir);
            log.push(format!("rename {from} {to} ok={ok}"));
            assert_eq!(fs::rename(n.m(&from), n.m(&to)).is_ok(), ok, "{log:?}");
            // POSIX: renaming onto another link of the same inode does nothing
            if ok && from != to && m.tree.get(&to) != Some(&MNode::File(i)) {
                m.tree.remove(&from);
                m.tree.insert(to, MNode::File(i));
            }
        }
        70..=77 => {
            let Some((p, _)) = m.pick_file(rng) else {
                return;
            };
            log.push(format!("unlink {p}"));
            fs::remove_file(n.m(&p)).unwrap();
            m.tree.remove(&p);
        }
        78..=85 => {
            let p = DIRS[rng.gen_range(1..DIRS.len())].to_string();
            let ok = !m.tree.contains_key(&p) && m.parent_is_dir(&p);
            log.push(format!("mkdir {p} ok={ok}"));
            assert_eq!(fs::create_dir(n.m(&p)).is_ok(), ok, "{log:?}");
            if ok {
                m.tree.insert(p, MNode::Dir);
            }
        }
        86..=92 => {
            let p = DIRS[rng.gen_range(1..DIRS.len())].to_string();
            let ok = m.tree.get(&p) == Some(&MNode::Dir) && m.children(&p) == 0;
            log.push(format!("rmdir {p} ok={ok}"));
            let r = fs::remove_dir(n.m(&p));
            let left: Vec<_> = fs::read_dir(n.data().join(&p))
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            assert_eq!(r.is_ok(), ok, "{r:?} backing has {left:?}; {log:?}");
            if ok {
                m.tree.remove(&p);
            }
        }
        _ => {
            let Some((from, i)) = m.pick_file(rng) else {
                return;
            };
            let to = m.pick_path(rng);
            let ok = !m.tree.contains_key(&to) && m.parent_is_dir(&to);
            log.push(format!("link {from} {to} ok={ok}"));
            assert_eq!(fs::hard_link(n.m(&from), n.m(&to)).is_ok(), ok, "{log:?}");
            if ok {
                m.tree.insert(to, MNode::File(i));
            }
        }
    }
}

fn check_tree(m: &Model, n: &Node, log: &[String]) {
    let mut inos: BTreeMap<usize, u64> = BTreeMap::new();
    for (p, node) in &m.tree {
        let md = fs::symlink_metadata(n.m(p)).unwrap_or_else(|e| panic!("{p}: {e} after {log:?}"));
        match node {
            MNode::Dir => assert!(md.is_dir(), "{p}"),
            MNode::File(i) => {
                assert_eq!(
                    fs::read(n.m(p)).unwrap(),
                    m.files[*i].content,
                    "{p} after {log:?}"
                );
                let links = m.tree.values().filter(|v| **v == MNode::File(*i)).count();
                assert_eq!(md.nlink() as usize, links, "nlink of {p}");
                assert_eq!(
                    *inos.entry(*i).or_insert(md.ino()),
                    md.ino(),
                    "links share an inode"
                );
            }
        }
    }
    let on_disk = walk(&n.mnt, "");
    let model: Vec<_> = m.tree.keys().cloned().collect();
    assert_eq!(on_disk, model, "same names");
}

fn walk(root: &std::path::Path, rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let p = join(rel, &e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(root, &p));
        }
        out.push(p);
    }
    out.sort();
    out
}

/// Every byte that differs from the file's content at mount time is in a dirty range,
/// or lies past a logged truncate of that file (the peer replays truncates in order).
fn check_journal(m: &Model, n: &Node) {
    let snap = journal_snapshot(&n.store);
    for (p, node) in &m.tree {
        let MNode::File(i) = node else { continue };
        let f = &m.files[*i];
        let ino = fs::metadata(n.data().join(p)).unwrap().ino();
        let cut = snap
            .meta
            .iter()
            .filter_map(|(_, op)| match op {
                syncfs::journal::MetaOp::Truncate { file, size, .. } if *file == ino => Some(*size),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX);
        let initial = f.initial.as_deref().unwrap_or(&[]);
        let changed: Vec<usize> = (0..f.content.len())
            .filter(|&b| initial.get(b) != Some(&f.content[b]))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let e = snap
            .files
            .get(&ino)
            .unwrap_or_else(|| panic!("{p} changed but has no journal entry"));
        for b in changed {
            assert!(
                e.ranges.covers(b as u64, b as u64 + 1) || b as u64 >= cut,
                "{p}: byte {b} changed, not covered: {:?}",
                e.ranges.iter().collect::<Vec<_>>()
            );
        }
        if f.initial.as_ref().is_some_and(|c| c.len() > 200_000)
            && f.written < 20_000
            && cut == u64::MAX
        {
            assert!(
                e.ranges.len_bytes() < f.content.len() as u64 / 2,
                "{p}: small writes dirtied most of the file"
            );
        }
    }
}

fn run_seed(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = Node::new();
    let mut m = Model {
        tree: BTreeMap::new(),
        files: Vec::new(),
    };
    for (k, size) in [("a", 300_000usize), ("b", 5_000), ("e", 250_000)] {
        let data: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
        fs::write(n.data().join(k), &data).unwrap();
        m.files.push(MFile {
            content: data.clone(),
            initial: Some(data),
            written: 0,
        });
        m.tree.insert(k.to_string(), MNode::File(m.files.len() - 1));
    }
    n.mount();
    let mut log = Vec::new();
    for _ in 0..250 {
        step(&mut m, &n, &mut rng, &mut log);
    }
    check_tree(&m, &n, &log);
    n.unmount();
    check_journal(&m, &n);
}

#[test]
fn model_seed_1() {
    run_seed(1);
}

#[test]
fn model_seed_2() {
    run_seed(2);
}

#[test]
fn model_seed_3() {
    run_seed(3);
}

#[test]
fn model_seed_4() {
    run_seed(4);
}
