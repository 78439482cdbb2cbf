//! Randomized two-node test through real mounts: a writer on each mount makes random
//! changes at once (in-place writes, rewrites, appends, deletes and renames of its own
//! files; temp-file saves and deletes of files both sides share), while the link
//! between the two network namespaces is partitioned (silently: iptables drops) at
//! random, and each daemon is restarted (unmounted, or killed with SIGKILL) at random.
//! Every change is fsynced before the next. Then quiet. What must hold:
//! - both trees are equal (names, kinds and contents, conflict copies included);
//! - each side's own files hold exactly what its writer last wrote (and fsynced), on
//!   both sides;
//! - every version of a shared file that no writer saw and replaced is present
//!   somewhere: in either tree (at any name: a conflict copy) or either version archive;
//! - the daemons go idle: the trees agree within 10 s of the changes stopping, and
//!   from then (or from when the checks above end, if later) a 20 s window carries
//!   only keepalives (at most `IDLE_BYTES`).
//!
//! `RANDOM_SEED` (1) and `RANDOM_SECS` (40) set the seed and the length of the random
//! phase. Needs root, iproute2, iptables. A lost version's report prints every line
//! of both logs that names its path (`RUST_LOG=info,syncfs::sync=debug` adds the
//! verdicts and ops). On 2026-11-30 CI lost a version twice in three runs: an update
//! applied in place did not archive the version it replaced (DESIGN.md, "Known limits").

mod common;

use common::netns::{pair, Net};
use common::{tail, wait_until, Node};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Files each side owns, and files both write.
const OWN: u64 = 12;
const SHARED: u64 = 8;
/// Bytes both ways in the 20 s idle window: keepalives only (a ping and its pong per
/// 30 s, and one per 120 s on the other stream, of a silent link is well under this).
const IDLE_BYTES: u64 = 12_000;

/// The trees agree, and the link carries only keepalives, this soon after the changes stop.
const QUIET_WITHIN: Duration = Duration::from_secs(10);

type Hash = [u8; 32];

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hash(b: &[u8]) -> Hash {
    *blake3::hash(b).as_bytes()
}

/// What the writers did, for the checks at the end.
#[derive(Default)]
struct Model {
    /// Per side: own file name -> what that side's writer last wrote there.
    own: [BTreeMap<String, Hash>; 2],
    /// Versions of shared files that no writer has seen and replaced (hash -> which).
    unseen: HashMap<Hash, String>,
    /// What the writers did to shared files, in order (for a failure's report).
    history: Vec<String>,
}

/// Wall-clock time of day (UTC), as the daemons' logs print it.
fn stamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let s = d.as_secs() % 86_400;
    let us = d.subsec_micros();
    format!("{:02}:{:02}:{:02}.{us:06}", s / 3600, s / 60 % 60, s % 60)
}

fn short(h: &Hash) -> String {
    h[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// One side's writer.
struct Writer {
    side: usize,
    mnt: PathBuf,
    /// Held (read) for each change; the restarter takes it (write) to remount.
    up: Arc<RwLock<()>>,
    model: Arc<Mutex<Model>>,
    rng: StdRng,
    n: u64,
}

impl Writer {
    fn tag(&self) -> &'static str {
        ["a", "b"][self.side]
    }

    fn body(&mut self, len: usize) -> Vec<u8> {
        self.n += 1;
        let mut b = format!("{} #{} ", self.tag(), self.n).into_bytes();
        b.extend((0..len).map(|_| self.rng.gen_range(b'a'..=b'z')));
        b
    }

    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.mnt.join(rel)).ok()
    }

    /// One random change.
    fn step(&mut self) {
        let up = self.up.clone();
        let _up = up.read().unwrap();
        let own = format!("{}/{}", self.tag(), self.rng.gen_range(0..OWN));
        match self.rng.gen_range(0..10) {
            0 | 1 => self.write_in_place(&own),
            2 => {
                let len = self.rng.gen_range(0..200_000);
                let body = self.body(len);
                write_synced(&self.mnt.join(&own), &body);
                self.record_own(&own, Some(hash(&body)));
            }
            3 => {
                let more = self.body(5000);
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(self.mnt.join(&own))
                    .unwrap();
                f.write_all(&more).unwrap();
                f.sync_all().unwrap();
                drop(f);
                let now = self.read(&own).unwrap();
                self.record_own(&own, Some(hash(&now)));
            }
            4 => {
                if std::fs::remove_file(self.mnt.join(&own)).is_ok() {
                    self.sync_dir(self.tag());
                    self.record_own(&own, None);
                }
            }
            5 => {
                let to = format!("{}/{}", self.tag(), self.rng.gen_range(0..OWN));
                if to != own && std::fs::rename(self.mnt.join(&own), self.mnt.join(&to)).is_ok() {
                    self.sync_dir(self.tag());
                    let mut m = self.model.lock().unwrap();
                    let h = m.own[self.side].remove(&own);
                    m.own[self.side].insert(to, h.expect("renamed an unknown file"));
                }
            }
            6..=8 => self.save_shared(),
            _ => self.delete_shared(),
        }
    }

    fn sync_dir(&self, rel: &str) {
        std::fs::File::open(self.mnt.join(rel))
            .and_then(|d| d.sync_all())
            .unwrap();
    }

    fn record_own(&self, rel: &str, h: Option<Hash>) {
        let mut m = self.model.lock().unwrap();
        match h {
            Some(h) => m.own[self.side].insert(rel.to_string(), h),
            None => m.own[self.side].remove(rel),
        };
    }

    fn write_in_place(&mut self, rel: &str) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.mnt.join(rel))
            .unwrap();
        let size = f.metadata().unwrap().len();
        let len = self.rng.gen_range(1..8192);
        let at = self.rng.gen_range(0..=size);
        let patch = self.body(len);
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&patch).unwrap();
        f.sync_all().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut now = Vec::new();
        f.read_to_end(&mut now).unwrap();
        self.record_own(rel, Some(hash(&now)));
    }

    /// A whole-file save of a shared file: temp file in our own directory, then rename.
    fn save_shared(&mut self) {
        let k = self.rng.gen_range(0..SHARED);
        let (rel, tmp) = (format!("s/{k}"), format!("{}/.save{k}", self.tag()));
        let len = self.rng.gen_range(0..50_000);
        let body = self.body(len);
        write_synced(&self.mnt.join(&tmp), &body);
        let t_read = stamp();
        let seen = self.read(&rel).map(|b| hash(&b));
        std::fs::rename(self.mnt.join(&tmp), self.mnt.join(&rel)).unwrap();
        let t_renamed = stamp();
        self.sync_dir("s");
        self.sync_dir(self.tag());
        let mut m = self.model.lock().unwrap();
        if let Some(h) = seen {
            m.unseen.remove(&h);
        }
        m.history.push(format!(
            "{t_read}..{t_renamed} {} saved {rel} = {} ({len} B), replacing {:?}",
            self.tag(),
            short(&hash(&body)),
            seen.as_ref().map(short)
        ));
        m.unseen
            .insert(hash(&body), format!("{rel} as saved by {}", self.tag()));
    }

    fn delete_shared(&mut self) {
        let rel = format!("s/{}", self.rng.gen_range(0..SHARED));
        let seen = self.read(&rel).map(|b| hash(&b));
        let t_read = stamp();
        if std::fs::remove_file(self.mnt.join(&rel)).is_ok() {
            let t_removed = stamp();
            self.sync_dir("s");
            let mut m = self.model.lock().unwrap();
            if let Some(h) = seen {
                m.unseen.remove(&h);
            }
            m.history.push(format!(
                "{t_read}..{t_removed} {} deleted {rel}, which held {:?}",
                self.tag(),
                seen.as_ref().map(short)
            ));
        }
    }
}

fn write_synced(path: &Path, body: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body).unwrap();
    f.sync_all().unwrap();
}

/// Every entry under `root` (relative path -> kind and content hash).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(p);
                out.insert(rel, "dir".into());
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(rel, blake3::hash(&b).to_hex().to_string());
            }
        }
    }
    out
}

/// Content hashes of every regular file under `root`.
fn contents(root: &Path) -> std::collections::HashSet<Hash> {
    tree(root)
        .into_iter()
        .filter(|(_, v)| v != "dir")
        .map(|(_, v)| {
            let mut h = [0u8; 32];
            for (i, b) in h.iter_mut().enumerate() {
                *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16).unwrap();
            }
            h
        })
        .collect()
}

fn mount_in(node: &mut Node, net: &Net, i: usize) {
    node.mount_wrapped(&["nsenter", &net.enter(i)], &[], &[]);
}

/// Every line of `log` that names one of `paths`, at most `most` (the last ones).
fn lines_naming(log: &str, paths: &[String], most: usize) -> String {
    let names = |l: &str, p: &str| {
        l.ends_with(p)
            || [" ", ":", "\"", ","]
                .iter()
                .any(|end| l.contains(&format!("{p}{end}")))
    };
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| paths.iter().any(|p| names(l, p)))
        .collect();
    hits[hits.len().saturating_sub(most)..].join("\n")
}

#[test]
fn a_lost_versions_log_lines_are_those_naming_its_path() {
    let log = "a path=s/0 b\nc s/01 d\nkept s/0: e\n\"s/0\" f\ng path=s/0\nh";
    let got = lines_naming(log, &["s/0".to_string()], 10);
    assert_eq!(got, "a path=s/0 b\nkept s/0: e\n\"s/0\" f\ng path=s/0");
    assert_eq!(lines_naming(log, &["s/0".to_string()], 1), "g path=s/0");
}

/// The random phase: writers on both mounts, partitions and restarts from here.
fn random_phase(net: &Net, nodes: &mut [Node; 2], model: &Arc<Mutex<Model>>, seed: u64, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let ups = [Arc::new(RwLock::new(())), Arc::new(RwLock::new(()))];
    let writers: Vec<_> = (0..2)
        .map(|side| {
            let mut w = Writer {
                side,
                mnt: nodes[side].mnt.clone(),
                up: ups[side].clone(),
                model: model.clone(),
                rng: StdRng::seed_from_u64(seed * 2 + side as u64),
                n: 0,
            };
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    w.step();
                    let pause = w.rng.gen_range(5..60);
                    std::thread::sleep(Duration::from_millis(pause));
                }
                w.n
            })
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let (t0, mut cuts, mut restarts, mut kills) = (Instant::now(), 0, 0, 0);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..5000)));
        if rng.gen_bool(0.6) {
            let veth = std::env::var("RANDOM_CUT").is_ok_and(|v| v == "veth");
            let cut = |on: bool| {
                if veth {
                    net.set_up(0, !on)
                } else {
                    net.partition(on)
                }
            };
            let ms = rng.gen_range(500..6000);
            eprintln!("{} link cut for {ms} ms", stamp());
            cut(true);
            std::thread::sleep(Duration::from_millis(ms));
            cut(false);
            cuts += 1;
        } else {
            let side = rng.gen_range(0..2);
            let _down = ups[side].write().unwrap();
            eprintln!("{} restarting {}", stamp(), ["A", "B"][side]);
            if rng.gen_bool(0.5) {
                nodes[side].kill9();
                kills += 1;
            } else {
                nodes[side].unmount();
                restarts += 1;
            }
            mount_in(&mut nodes[side], net, side);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let changes: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!(
        "random phase: {:.1?}, changes A {} B {}, {cuts} link cuts, {restarts} restarts, {kills} kill -9",
        t0.elapsed(),
        changes[0],
        changes[1]
    );
}

/// Runs in CI at seed 1. Three losses it found are fixed (see DESIGN.md): an ack that
/// matched a new file with a recycled inode number, a local save replaced unseen by a
/// peer's rename decided just before it, and a local unlink dropped as beaten by the
/// peer's own delete.
#[test]
fn random_changes_on_both_mounts_with_partitions_and_restarts_converge_losing_nothing() {
    let (seed, secs) = (env_or("RANDOM_SEED", 1), env_or("RANDOM_SECS", 40));
    let net = Net::new("rnd", 3);
    let (a, b) = pair(&net);
    let mut nodes = [a, b];
    for (i, n) in nodes.iter_mut().enumerate() {
        mount_in(n, &net, i);
    }
    for d in ["a", "b", "s"] {
        std::fs::create_dir(nodes[0].m(d)).unwrap();
    }
    let synced = wait_until(30, || {
        ["a", "b", "s"].iter().all(|d| nodes[1].m(d).is_dir())
    });
    assert!(synced, "the directories never reached B");
    let model = Arc::new(Mutex::new(Model::default()));
    random_phase(&net, &mut nodes, &model, seed, secs);

    let (da, db) = (nodes[0].data(), nodes[1].data());
    let t_quiet = Instant::now();
    let same = wait_until(240, || tree(&da) == tree(&db));
    for (n, node) in ["a", "b"].iter().zip(&nodes) {
        let keep = std::env::temp_dir().join(format!("random_two_node-{n}.log"));
        let _ = std::fs::write(&keep, node.log());
    }
    let logs = || {
        format!(
            "A: {}\nB: {}",
            tail(&nodes[0].log(), 25),
            tail(&nodes[1].log(), 25)
        )
    };
    if !same {
        let (ta, tb) = (tree(&da), tree(&db));
        let differ: Vec<_> = ta
            .keys()
            .chain(tb.keys())
            .filter(|k| ta.get(*k) != tb.get(*k))
            .collect();
        let mut about = String::new();
        for (n, node) in ["a", "b"].iter().zip(&nodes) {
            let log = node.log();
            for k in &differ {
                let st = std::fs::metadata(node.data().join(k)).map(|m| m.len());
                about += &format!("{n}: {k}: {st:?}, {:?}\n", ta.get(*k).or(tb.get(*k)));
                let lines = log.lines().filter(|l| l.contains(k.as_str()));
                let lines: Vec<_> = lines.collect();
                about += &lines[lines.len().saturating_sub(12)..].join("\n");
                about += "\n";
            }
        }
        panic!(
            "the trees differ at {differ:?}\n{about}\n(full logs in {})",
            std::env::temp_dir().display()
        );
    }
    let converged = t_quiet.elapsed();
    eprintln!("trees equal {converged:.1?} after the random phase");

    let model = model.lock().unwrap();
    for side in 0..2 {
        for (name, want) in &model.own[side] {
            for (n, d) in [("A", &da), ("B", &db)] {
                let got = std::fs::read(d.join(name)).ok().map(|b| hash(&b));
                assert_eq!(
                    got,
                    Some(*want),
                    "{n}'s {name}: not what its writer last wrote\n{}",
                    logs()
                );
            }
        }
        let tag = ["a", "b"][side];
        for (name, kind) in tree(&da.join(tag)) {
            let full = format!("{tag}/{name}");
            let known = model.own[side].contains_key(&full) || name.starts_with(".save");
            assert!(
                known || kind == "dir",
                "{full} was deleted by its writer, but is back"
            );
        }
    }
    let mut kept = contents(&da);
    for n in &nodes {
        kept.extend(contents(&n.store.join("versions")));
    }
    let lost: Vec<_> = model
        .unseen
        .iter()
        .filter(|(h, _)| !kept.contains(*h))
        .map(|(h, what)| format!("{what} ({})", short(h)))
        .collect();
    let lost_names: Vec<_> = lost
        .iter()
        .map(|w| w.split(' ').next().unwrap().to_string())
        .collect();
    let story: Vec<_> = model
        .history
        .iter()
        .filter(|l| lost_names.iter().any(|n| l.contains(&format!(" {n} "))))
        .cloned()
        .collect();
    let in_tree = contents(&da);
    let copies = tree(&da).keys().filter(|k| k.contains("conflict")).count();
    let archived = model
        .unseen
        .keys()
        .filter(|h| !in_tree.contains(*h))
        .count();
    eprintln!(
        "{} shared versions no writer replaced: {} in the trees ({copies} conflict copies), {archived} only in an archive",
        model.unseen.len(),
        model.unseen.len() - archived,
    );
    assert!(
        lost.is_empty(),
        "versions lost: {lost:?}\n{}\n{}\nA's lines naming them:\n{}\nB's lines naming them:\n{}",
        story.join("\n"),
        logs(),
        lines_naming(&nodes[0].log(), &lost_names, 300),
        lines_naming(&nodes[1].log(), &lost_names, 300),
    );
    drop(model);
    assert!(
        converged <= QUIET_WITHIN,
        "the trees agreed only {converged:.1?} after the changes stopped\n{}",
        logs()
    );

    let idle_from = t_quiet + QUIET_WITHIN;
    std::thread::sleep(idle_from.saturating_duration_since(Instant::now()));
    let start = t_quiet.elapsed();
    let before = net.tx(0) + net.tx(1);
    std::thread::sleep(Duration::from_secs(20));
    let idle = net.tx(0) + net.tx(1) - before;
    eprintln!(
        "idle: {idle} bytes on the link in the 20 s from {start:.1?} after the changes stopped"
    );
    assert!(
        idle <= IDLE_BYTES,
        "still busy after quiet: {idle} bytes in 20 s\n{}",
        logs()
    );
    for n in &mut nodes {
        n.unmount();
    }
}
