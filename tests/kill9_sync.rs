//! kill -9 during a multi-file sync, in seeded rounds: each round makes changes through
//! A's mount (a big file, small files, a rename, a delete), fsyncs them, then kills the
//! sending daemon, the receiving one or both at a random point of the sync. After the
//! killed ones mount again, both trees are byte-identical, and every write an fsync
//! confirmed is there. `KILL_ROUNDS` sets the number of rounds (20 by default).

mod common;

use common::{random_bytes, tail, wait_until, Pair};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every regular file under `dir` (relative name) with its BLAKE3.
fn tree(dir: &Path) -> BTreeMap<String, [u8; 32]> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if let Ok(b) = std::fs::read(&p) {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                *blake3::hash(&b).as_bytes(),
            );
        }
    }
    out
}

fn write_synced(path: &Path, body: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body).unwrap();
    f.sync_all().unwrap();
}

/// One round of changes on A, all fsynced; updates `model` (name -> content hash).
fn changes(p: &Pair, rng: &mut StdRng, round: u64, model: &mut BTreeMap<String, [u8; 32]>) {
    let mut put = |name: String, body: Vec<u8>| {
        write_synced(&p.a.m(&name), &body);
        model.insert(name, *blake3::hash(&body).as_bytes());
    };
    let big = rng.gen_range(2..10usize) << 20;
    put(format!("big{}", round % 3), random_bytes(big, round * 1000));
    for i in 0..rng.gen_range(5..30u64) {
        let len = rng.gen_range(1..20_000usize);
        put(
            format!("s{}", rng.gen_range(0..40u64)),
            random_bytes(len, round * 1000 + i + 1),
        );
    }
    let names: Vec<String> = model.keys().cloned().collect();
    let from = &names[rng.gen_range(0..names.len())];
    let to = format!("r{}", rng.gen_range(0..10u64));
    if *from != to {
        std::fs::rename(p.a.m(from), p.a.m(&to)).unwrap();
        let h = model.remove(from).unwrap();
        model.insert(to, h);
    }
    let names: Vec<String> = model.keys().cloned().collect();
    let gone = &names[rng.gen_range(0..names.len())];
    std::fs::remove_file(p.a.m(gone)).unwrap();
    model.remove(gone);
    let dir = std::fs::File::open(&p.a.mnt).unwrap();
    dir.sync_all().unwrap(); // the renames and deletes, confirmed
}

/// Before the receiver held each metadata batch and committed its index entries before
/// "applied up to" (`sync::meta`), round 5 failed here: a receiver killed between
/// applying a peer's op and flushing its index entry took the result for a local change
/// at its next scan, and the peer's next write of that file became a conflict copy.
#[test]
fn kill9_at_random_points_of_a_sync_loses_nothing_confirmed() {
    let rounds: u64 = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut p = Pair::new(false);
    p.a.mount();
    p.b.mount();
    let mut model = BTreeMap::new();
    let t0 = Instant::now();
    for round in 0..rounds {
        let mut rng = StdRng::seed_from_u64(round);
        changes(&p, &mut rng, round, &mut model);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        let who = rng.gen_range(0..3);
        if who != 1 {
            p.a.kill9();
        }
        if who != 0 {
            p.b.kill9();
        }
        if who != 1 {
            p.a.mount();
        }
        if who != 0 {
            p.b.mount();
        }
        let (da, db) = (p.a.data(), p.b.data());
        let on_a = tree(&da);
        let diff: Vec<_> = model
            .keys()
            .chain(on_a.keys())
            .filter(|k| model.get(*k) != on_a.get(*k))
            .map(|k| (k, model.contains_key(k), on_a.contains_key(k)))
            .collect();
        assert!(
            diff.is_empty(),
            "round {round} (killed {}): A lost a confirmed change (name, in model, on A): {diff:?}\nA: {}\nB: {}",
            ["A", "B", "both"][who],
            tail(&p.a.log(), 30),
            tail(&p.b.log(), 30)
        );
        let same = wait_until(120, || tree(&da) == tree(&db));
        assert!(
            same,
            "round {round} (killed {}): the trees differ\nA: {}\nB: {}",
            ["A", "B", "both"][who],
            tail(&p.a.log(), 15),
            tail(&p.b.log(), 15)
        );
        eprintln!(
            "round {round}: killed {}, converged at {:.1?}",
            ["A", "B", "both"][who],
            t0.elapsed()
        );
    }
    p.a.unmount();
    p.b.unmount();
}
