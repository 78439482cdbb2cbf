//! Keepalive per peer (`sync::alive`), on the simulation's nodes and paused time: how
//! many pings an idle or one-way busy pair costs, that no live stream times out, and
//! that a stream left over from a dead connection still ends.

use super::receiver::serve;
use super::sim_tests::{connect, node, paused_runtime, settled, Node};
use super::{SyncError, READ_TIMEOUT};
use crate::wire::{FramedStream, Message};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::compat::TokioAsyncReadCompatExt;

/// Two linked nodes on paused time, `f0` synced; runs `during` (given the nodes) for
/// `secs` seconds, then returns the pings each node received, whether any receiving
/// stream ended or session started anew meanwhile, and each node's round-trip time.
fn keepalives(secs: u64, during: fn(&[Arc<Node>], u64)) -> (Vec<u64>, bool, Vec<u64>) {
    let rt = paused_runtime();
    rt.block_on(async move {
        let nodes: Vec<Arc<Node>> = (0..2).map(|_| node()).collect();
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        nodes[0].write(0, "start\n");
        assert!(settled(&nodes, 30).await, "the start converges");
        let count = |f: fn(&super::Stats) -> u64| -> Vec<u64> {
            nodes.iter().map(|n| f(&n.receiver.stats)).collect()
        };
        let pings = |s: &super::Stats| s.pings.load(Ordering::Relaxed);
        let sessions = |s: &super::Stats| s.peer_sessions.load(Ordering::Relaxed);
        let (p0, s0) = (count(pings), count(sessions));
        for t in 0..secs {
            during(&nodes, t);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (p1, s1) = (count(pings), count(sessions));
        let rtt = |s: &super::Stats| s.rtt_us.load(Ordering::Relaxed);
        let rtts = count(rtt);
        let ended = links.iter().any(|(l, _)| {
            let serving = l.serving.lock().unwrap();
            serving.iter().any(|t| t.is_finished())
        });
        for (l, t) in links {
            t.abort();
            l.cut();
        }
        let got = p1.iter().zip(&p0).map(|(a, b)| a - b).collect();
        (got, ended || s1 != s0, rtts)
    })
}

#[test]
fn an_idle_pair_pings_once_per_interval_not_once_per_stream() {
    let (mut pings, restarted, rtts) = keepalives(600, |_, _| {});
    assert!(
        rtts.iter().all(|&r| r > 0),
        "both know a round trip: {rtts:?}"
    );
    pings.sort();
    // one side every 30 s, the other's silent stream only every OWN_SILENCE_MAX
    // (before: both every 30 s, 40 in all)
    let (every, backstop) = (
        super::PING_EVERY.as_secs(),
        super::alive::OWN_SILENCE_MAX.as_secs(),
    );
    let (few, many) = (600 / backstop, 600 / every);
    assert!(
        (few - 1..=few + 1).contains(&pings[0]) && (many - 1..=many + 1).contains(&pings[1]),
        "pings received by the nodes over 600 s idle: {pings:?}"
    );
    assert!(!restarted, "no stream timed out");
}

#[test]
fn traffic_one_way_keeps_both_streams_alive_with_few_pings() {
    // node 0 writes every 10 s for 10 minutes: its stream carries updates and node 1's
    // acks; node 1's own stream carries nothing, and must not time out, nor ping more
    // than once per OWN_SILENCE_MAX (before: every 30 s, 20 in all)
    let (pings, restarted, _) = keepalives(600, |n, t| {
        if t % 10 == 0 {
            n[0].write(1, &format!("edit {t}\n"));
        }
    });
    let most = 600 / super::alive::OWN_SILENCE_MAX.as_secs() + 1;
    assert!(
        pings[0] <= most && pings[1] == 0,
        "pings received by each node: {pings:?}"
    );
    assert!(!restarted, "no stream timed out");
}

#[test]
fn a_stream_left_from_a_dead_connection_ends_though_the_new_one_is_busy() {
    paused_runtime().block_on(async {
        let nodes = [node(), node()];
        // a stream from node 0 that went silent (its connection died unheard): the far
        // end is held and never written
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let r = nodes[1].receiver.clone();
        let from = nodes[0].id;
        let stale = tokio::spawn(async move { serve(from, theirs.compat(), &r).await });
        let mut held = FramedStream::new(ours.compat());
        let hello = Message::hello(nodes[1].receiver.cfg.folder_id, String::from("stale"));
        held.send(hello).await.unwrap();
        assert!(matches!(held.recv().await, Ok(Some(Message::Hello { .. }))));
        // then the real sender (a newer stream) talks all the time
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        for t in 0..150 {
            nodes[0].write(0, &format!("edit {t}\n"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(settled(&nodes, 30).await, "the pair converges");
        let ended = tokio::time::timeout(Duration::from_secs(1), stale).await;
        let result = ended.expect("the stale stream ended").unwrap();
        assert!(
            matches!(result, Err(SyncError::Silent(d)) if d == READ_TIMEOUT),
            "{result:?}"
        );
        for (l, t) in links {
            t.abort();
            l.cut();
        }
    });
}
