//! A transfer cut halfway resumes: the parts that arrived before the cut are not sent
//! again (in-process, over the simulation's in-memory link).

use super::sim_tests::{connect, node};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

async fn wait(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_halfway_resumes_without_resending_what_arrived() {
    super::sim_tests::debug_logs();
    let (a, b) = (node(), node());
    let up = Arc::new(AtomicBool::new(true));
    let (link, task) = connect(&a, &b, &up);
    let size = 48 * MIB;
    let mut body = vec![0u8; size as usize];
    rand::RngCore::fill_bytes(
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
        &mut body,
    );
    link.cut_after.store(size / 2, Ordering::SeqCst);
    a.write_bytes(0, &body);
    assert!(
        wait(60, || !up.load(Ordering::SeqCst)).await,
        "the link was cut"
    );
    let first = b.receiver.stats.wire_in.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    link.cut_after.store(u64::MAX, Ordering::SeqCst);
    up.store(true, Ordering::SeqCst);
    let want = blake3::hash(&body);
    let path = b.data.join("f0");
    let arrived = wait(120, || {
        std::fs::read(&path).is_ok_and(|got| blake3::hash(&got) == want)
    })
    .await;
    task.abort();
    assert!(arrived, "the file arrived whole after the heal");
    let total = b.receiver.stats.wire_in.load(Ordering::Relaxed);
    eprintln!("cut after {first} bytes; {total} bytes in all for a {size}-byte file");
    assert!(
        first > size / 3,
        "the cut came mid-transfer ({first} bytes)"
    );
    assert!(
        (total as f64) < size as f64 * 1.1,
        "{total} bytes on the wire for a {size}-byte file: parts were sent again"
    );
}

/// Chunk exchanges under way, several at once, cut midway again and again: the pair
/// still converges, and no version of any file is lost (each edit is in a folder or an
/// archive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_exchanges_cut_midway_converge_and_lose_nothing() {
    use super::sim_tests::{node_holding, settled};
    let text: String = (0..9_000)
        .map(|i| format!("line {i} of some longer text\n"))
        .collect();
    let (mut held, mut edits) = ([Vec::new(), Vec::new()], Vec::new());
    for f in 0..16 {
        let mut edited = text.clone();
        for l in (0..9_000).step_by(300) {
            let line = format!("line {l} of");
            edited = edited.replace(&line, &format!("line {l} (edit {f}) of"));
        }
        held[f % 2].push((f, edited.clone()));
        held[1 - f % 2].push((f, text.clone()));
        edits.push(edited);
    }
    let nodes = [node_holding(&held[0]), node_holding(&held[1])];
    // down until the first budget is set: the senders start on it
    let up = Arc::new(AtomicBool::new(false));
    let links: Vec<_> = [(0, 1), (1, 0)]
        .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
        .into();
    let budget = |n: u64| {
        for (l, _) in &links {
            l.cut_after.store(n, Ordering::SeqCst);
        }
    };
    let mut cuts = 0;
    for n in [2_000, 8_000, 16_000, 32_000] {
        budget(n);
        up.store(true, Ordering::SeqCst);
        let same = || {
            let idle = |n: &Arc<super::sim_tests::Node>| n.journal.snapshot().files.is_empty();
            nodes.iter().all(idle) && nodes[0].tree() == nodes[1].tree()
        };
        if !wait(20, || !up.load(Ordering::SeqCst) || same()).await || up.load(Ordering::SeqCst) {
            break; // all went before the budget ran out
        }
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    budget(u64::MAX);
    up.store(true, Ordering::SeqCst);
    let wire: Vec<u64> = (nodes.iter())
        .map(|n| n.receiver.stats.wire_in.load(Ordering::Relaxed))
        .collect();
    eprintln!("{cuts} cuts; bytes in so far {wire:?}");
    assert!(cuts >= 2, "only {cuts} cuts came");
    assert!(
        settled(&nodes, 120).await,
        "the pair converges after {cuts} cuts"
    );
    let kept: Vec<String> = nodes.iter().flat_map(|n| n.everything()).collect();
    for (f, edit) in edits.iter().enumerate() {
        assert!(kept.contains(edit), "f{f}'s edit was lost");
    }
    assert!(kept.contains(&text), "the unedited version was lost");
}
