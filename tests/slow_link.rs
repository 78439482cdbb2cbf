//! A slow link under continuous edits: two daemons in two network namespaces, A's end of
//! the veth shaped to 256 kbit/s with tc tbf, while A rewrites the same three files
//! five times a second for 30 s (far more than the link carries). A's queue stays
//! bounded (the three files' data, and a few ops each), every content B shows is one A wrote (nothing torn or
//! corrupted), intermediate versions are skipped, and once the edits stop B ends with
//! A's latest version of each file. Needs root, iproute2 and tc.

mod common;

use common::netns::{pair, Net};
use common::{random_bytes, tail, wait_until};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const FILES: usize = 3;
const SIZE: usize = 16 << 10;

fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

#[test]
fn a_slow_link_under_continuous_edits_stays_bounded_and_ends_with_the_latest() {
    let net = Net::new("slow", 2);
    net.shape(0, "256kbit");
    let (mut a, mut b) = pair(&net);
    a.mount_wrapped(&["nsenter", &net.enter(0)], &[], &[]);
    b.mount_wrapped(&["nsenter", &net.enter(1)], &[], &[]);
    let status = |n: &common::Node| -> serde_json::Value {
        let out = common::syncfs(&["status", "--json", n.store.to_str().unwrap()]);
        serde_json::from_str(&out).unwrap()
    };
    let mut written: Vec<HashSet<[u8; 32]>> = vec![HashSet::new(); FILES];
    let (mut rounds, mut max_queued, mut seen_on_b) = (0u64, 0u64, vec![HashSet::new(); FILES]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        for (f, set) in written.iter_mut().enumerate() {
            let body = random_bytes(SIZE, rounds * 10 + f as u64);
            std::fs::write(a.m(&format!("f{f}")), &body).unwrap();
            set.insert(hash(&body));
        }
        rounds += 1;
        for (f, seen) in seen_on_b.iter_mut().enumerate() {
            if let Ok(got) = std::fs::read(b.m(&format!("f{f}"))) {
                if !got.is_empty() {
                    assert!(
                        written[f].contains(&hash(&got)),
                        "B shows a content of f{f} A never wrote"
                    );
                    seen.insert(hash(&got));
                }
            }
        }
        if rounds % 10 == 0 {
            let v = status(&a);
            let q = v["stats"]["queued"].as_u64().unwrap_or(0);
            let bytes = v["stats"]["queued_bytes"].as_u64().unwrap_or(0);
            assert!(
                bytes <= (FILES * SIZE) as u64,
                "A queues {bytes} bytes of data"
            );
            max_queued = max_queued.max(q);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let last: Vec<[u8; 32]> = (0..FILES)
        .map(|f| hash(&std::fs::read(a.m(&format!("f{f}"))).unwrap()))
        .collect();
    let latest = || {
        (0..FILES).all(|f| std::fs::read(b.m(&format!("f{f}"))).is_ok_and(|g| hash(&g) == last[f]))
    };
    assert!(
        wait_until(120, latest),
        "B did not end with A's latest versions\nA: {}\nB: {}",
        tail(&a.log(), 20),
        tail(&b.log(), 20)
    );
    let shown: usize = seen_on_b.iter().map(HashSet::len).sum();
    eprintln!(
        "{rounds} rounds of {FILES} rewrites in 30 s over 256 kbit/s; A queued at most \
         {max_queued}; B showed {shown} of {} versions; latest {:.1?} after the edits",
        rounds * FILES as u64,
        t0.elapsed() - Duration::from_secs(30)
    );
    // three files, and the few truncate and mtime ops of each that wait for them
    assert!(max_queued <= 64, "A's queue grew to {max_queued}");
    assert!(
        (shown as u64) < rounds * FILES as u64 / 2,
        "intermediate versions were not skipped"
    );
    a.unmount();
    b.unmount();
}
