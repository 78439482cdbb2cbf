//! A link cut mid-transfer (two daemons in two network namespaces, the veth taken
//! down while a 256 MiB file is halfway across, then brought back): the sender notices
//! the silent link within 30 s, the transfer resumes, and the parts the receiver
//! already had are not sent again: the veth carries (both ways, TCP/IP included) under
//! 1.1x the file's compressed size. The same transfer uncut runs first, as the
//! baseline printed beside it. Needs root, iproute2 and tc.

mod common;

use common::netns::{pair, Net};
use common::{hash_of, random_bytes, tail, wait_until, Node};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const FILE: usize = 256 * MIB;
/// Slow enough that half the file takes seconds, fast enough for CI.
const RATE: &str = "200mbit";

/// Bytes on the veth, both ways.
fn wire(net: &Net) -> u64 {
    net.tx(0) + net.tx(1)
}

/// Writes `name` through A and waits until B has it; returns (wire bytes, seconds).
fn transfer(net: &Net, a: &Node, b: &Node, name: &str, seed: u64, cut: bool) -> (u64, f64) {
    let body = random_bytes(FILE, seed);
    let want = *blake3::hash(&body).as_bytes();
    let (w0, t0) = (wire(net), Instant::now());
    std::fs::write(a.m(name), &body).unwrap();
    drop(body);
    if cut {
        assert!(
            wait_until(120, || wire(net) > w0 + (FILE / 2) as u64),
            "half the file never crossed"
        );
        let silent = || a.log().matches("the peer was silent").count();
        let before = silent();
        net.set_up(0, false);
        let cut_at = Instant::now();
        let noticed = wait_until(40, || silent() > before);
        let took = cut_at.elapsed();
        eprintln!(
            "cut after {} bytes; A noticed in {took:.1?}",
            wire(net) - w0
        );
        assert!(
            noticed && took <= Duration::from_secs(30),
            "A noticed: {noticed} after {took:?}:\n{}",
            tail(&a.log(), 20)
        );
        net.set_up(0, true);
    }
    let arrived = wait_until(300, || hash_of(&b.m(name)) == Some(want));
    assert!(
        arrived,
        "B did not get {name}\nA: {}\nB: {}",
        tail(&a.log(), 20),
        tail(&b.log(), 20)
    );
    (wire(net) - w0, t0.elapsed().as_secs_f64())
}

#[test]
fn a_transfer_cut_halfway_resumes_without_sending_the_first_half_again() {
    let net = Net::new("cut", 1);
    net.shape(0, RATE);
    let (mut a, mut b) = pair(&net);
    a.mount_wrapped(&["nsenter", &net.enter(0)], &[], &[]);
    b.mount_wrapped(&["nsenter", &net.enter(1)], &[], &[]);
    let compressed = zstd::bulk::compress(&random_bytes(FILE, 2), 3)
        .unwrap()
        .len() as u64;
    let (plain, plain_secs) = transfer(&net, &a, &b, "uncut.bin", 1, false);
    let (cut, cut_secs) = transfer(&net, &a, &b, "cut.bin", 2, true);
    let ratio = |x: u64| x as f64 / compressed as f64;
    eprintln!(
        "256 MiB at {RATE}: uncut {plain} bytes ({:.3}x compressed) in {plain_secs:.1} s; \
         cut at half {cut} bytes ({:.3}x) in {cut_secs:.1} s",
        ratio(plain),
        ratio(cut)
    );
    assert!(
        ratio(cut) < 1.1,
        "{cut} bytes on the wire for {compressed} compressed: the first half went again\nB: {}",
        tail(&b.log(), 20)
    );
    a.unmount();
    b.unmount();
}
