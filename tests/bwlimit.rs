//! The bandwidth limit, measured outside the program: two daemons in two network
//! namespaces joined by a veth pair (as scripts/bench-sync.sh does), bytes read from
//! the veth's counters. Under `--bwlimit 512` (and `bwlimit = 512` in the receiver's
//! config) a large transfer averages within 5% of 512 KiB/s over 10 s; without it the
//! same transfer runs far faster (so the check can fail). Needs root and iproute2.

mod common;

use common::netns::{pair, Net};
use common::{set_config, syncfs, wait_until, Node};
use std::time::{Duration, Instant};

const CAP_KIB: u64 = 512;
const FILE_MIB: usize = 12;

fn random_file(path: &std::path::Path, mib: usize, seed: u64) {
    std::fs::write(path, common::random_bytes(mib << 20, seed)).unwrap();
}

/// Writes a random file through A and returns (A -> B bytes per second over `window`
/// from 1 s after the transfer starts, seconds until B has the whole file).
fn transfer(net: &Net, a: &Node, b: &Node, name: &str, window: Duration) -> (f64, f64) {
    let before = net.tx_a();
    let t0 = Instant::now();
    random_file(&a.m(name), FILE_MIB, name.len() as u64 * 7919);
    let want = common::hash_of(&a.m(name));
    assert!(
        wait_until(30, || net.tx_a() > before + (64 << 10)),
        "no transfer started"
    );
    std::thread::sleep(Duration::from_secs(1).min(window));
    let (s1, b1) = (Instant::now(), net.tx_a());
    let arrived = || common::hash_of(&b.m(name)) == want;
    let mut done = None;
    while s1.elapsed() < window {
        if done.is_none() && arrived() {
            done = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = (net.tx_a() - b1) as f64 / s1.elapsed().as_secs_f64();
    let deadline = (FILE_MIB as u64 * 1024 / CAP_KIB) * 2 + 30;
    assert!(
        done.is_some() || wait_until(deadline, arrived),
        "B did not get {name} (A->B {} bytes so far): A: {}\nB: {}",
        net.tx_a() - before,
        common::tail(&a.log(), 15),
        common::tail(&b.log(), 15)
    );
    let secs = done.unwrap_or_else(|| t0.elapsed()).as_secs_f64();
    (rate, secs)
}

#[test]
fn a_transfer_holds_the_cap_and_runs_free_without_it() {
    let net = Net::new("bw", 0);
    let (mut a, mut b) = pair(&net);
    set_config(&b.store, "bwlimit", &CAP_KIB.to_string());
    let cap = CAP_KIB.to_string();
    a.mount_wrapped(&["nsenter", &net.enter(0)], &["--bwlimit", &cap], &[]);
    b.mount_wrapped(&["nsenter", &net.enter(1)], &[], &[]);
    let status = syncfs(&["status", a.store.to_str().unwrap()]);
    assert!(
        status.contains("bwlimit:     512 KiB/s each way"),
        "{status}"
    );

    let (rate, secs) = transfer(&net, &a, &b, "capped.bin", Duration::from_secs(10));
    eprintln!("measured {rate:.0} B/s");
    let kib = rate / 1024.0;
    eprintln!("capped: {kib:.1} KiB/s on the veth over 10 s; whole file in {secs:.1} s");
    let cap = CAP_KIB as f64;
    assert!(
        (kib - cap).abs() <= cap * 0.05,
        "average {kib:.1} KiB/s, cap {cap} KiB/s"
    );

    a.unmount();
    b.unmount();
    set_config(&b.store, "bwlimit", "0");
    a.mount_wrapped(&["nsenter", &net.enter(0)], &[], &[]);
    b.mount_wrapped(&["nsenter", &net.enter(1)], &[], &[]);
    let (_, free_secs) = transfer(&net, &a, &b, "free.bin", Duration::ZERO);
    let free_kib = (FILE_MIB << 10) as f64 / free_secs;
    eprintln!("unlimited: whole file in {free_secs:.1} s ({free_kib:.0} KiB/s)");
    assert!(
        free_kib > 4.0 * cap,
        "without the limit: only {free_kib:.0} KiB/s"
    );
    a.unmount();
    b.unmount();
}
