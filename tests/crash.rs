//! kill -9 of the mount daemon: after a fresh mount the journal still covers every byte
//! that reached the backing file, and everything fsync confirmed.

mod common;
use common::{journal_snapshot, syncfs, Node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SIZE: usize = 8 << 20;

fn assert_covered(n: &Node, initial: &[u8], fsynced: &[(u64, u64)]) {
    let now = fs::read(n.data().join("big")).unwrap();
    let ino = fs::metadata(n.data().join("big")).unwrap().ino();
    let snap = journal_snapshot(&n.store);
    let e = snap
        .files
        .get(&ino)
        .expect("journal entry for the written file");
    let mut changed = 0;
    for (i, (a, b)) in initial.iter().zip(&now).enumerate() {
        if a != b {
            changed += 1;
            assert!(
                e.ranges.covers(i as u64, i as u64 + 1),
                "byte {i} reached the backing file but is not journaled"
            );
        }
    }
    for &(s, t) in fsynced {
        assert!(e.ranges.covers(s, t), "fsynced range {s}..{t} lost");
    }
    assert!(changed > 0 || !fsynced.is_empty(), "the test wrote nothing");
}

#[test]
fn kill9_after_fsync_keeps_ranges() {
    let mut n = Node::new();
    let initial: Vec<u8> = vec![0xAA; SIZE];
    fs::write(n.data().join("big"), &initial).unwrap();
    n.mount();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(n.m("big"))
        .unwrap();
    let ranges = [
        (4096u64, 4196u64),
        (1 << 20, (1 << 20) + 10),
        (5_000_000, 5_065_536),
    ];
    for &(s, t) in &ranges {
        f.write_all_at(&vec![0x55; (t - s) as usize], s).unwrap();
    }
    f.sync_all().unwrap();
    n.kill9(); // within the checkpoint interval: recovery must come from the intent log
    drop(f);
    let out = syncfs(&["journal", n.store.to_str().unwrap()]);
    assert!(out.contains("big"), "journal listing shows the file: {out}");
    assert_covered(&n, &initial, &ranges);
    n.mount(); // the stale mount is cleared and the store mounts again
    assert_eq!(fs::read(n.m("big")).unwrap()[4096], 0x55);
}

#[test]
fn kill9_during_random_writes_loses_no_range() {
    for seed in 0..3u64 {
        let mut n = Node::new();
        let initial: Vec<u8> = vec![0; SIZE];
        fs::write(n.data().join("big"), &initial).unwrap();
        n.mount();
        let stop = Arc::new(AtomicBool::new(false));
        let path = n.m("big");
        let s2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let mut synced = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                let off = rng.gen_range(0..SIZE as u64 - 70_000);
                let len = rng.gen_range(1..65_536u64);
                if f.write_all_at(&vec![rng.gen_range(1..=255u8); len as usize], off)
                    .is_err()
                {
                    break;
                }
                if rng.gen_ratio(1, 8) {
                    if f.sync_data().is_err() {
                        break;
                    }
                    synced.push((off, off + len));
                }
            }
            synced
        });
        std::thread::sleep(Duration::from_millis(150 + 100 * seed));
        n.kill9();
        stop.store(true, Ordering::Relaxed);
        // writes synced before the kill are certain; the last one may have raced it
        let mut synced = writer.join().unwrap();
        synced.pop();
        assert_covered(&n, &initial, &synced);
    }
}
