//! Round trips, counted on paused time: links of the simulation (`sim_tests`) given a
//! one-way delay, so that what a protocol step waits for shows up as elapsed time.

use super::sim_tests::{connect, node_holding, paused_runtime, settled, MemLink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// `end` with every byte it reads and writes held back `delay` (none: `end` itself).
/// Bytes keep their order and are not held back one behind another: a burst arrives
/// `delay` after it was sent, whatever its length.
pub(super) fn delayed(end: DuplexStream, delay: Duration) -> DuplexStream {
    if delay.is_zero() {
        return end;
    }
    let (near, far) = tokio::io::duplex(1 << 20);
    let (end_r, end_w) = tokio::io::split(end);
    let (far_r, far_w) = tokio::io::split(far);
    tokio::spawn(pump(end_r, far_w, delay));
    tokio::spawn(pump(far_r, end_w, delay));
    near
}

/// Copies `from` to `to`, each read delivered `delay` after it was read.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let at = tokio::time::Instant::now() + delay;
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One-way delay of the links below: a round trip is twice this.
const DELAY: Duration = Duration::from_millis(100);

#[test]
fn small_files_edited_apart_cost_one_round_trip_per_batch_not_per_file() {
    const N: usize = 40;
    // the same 40 small files on both sides, each edited on one of them, adopted with
    // no shared history: at first contact the receiver describes its version by
    // leaves, and each file goes as a leaf delta
    let text: String = (0..60)
        .map(|i| format!("line {i} of some text\n"))
        .collect();
    let mut held = [Vec::new(), Vec::new()];
    for f in 0..N {
        let edited = text.replace("line 30 ", &format!("line 30 (edit {f}) "));
        held[f % 2].push((f, edited));
        held[1 - f % 2].push((f, text.clone()));
    }
    let trips = round_trips(&held);
    println!("{N} files edited apart converged in {trips:.1} round trips");
    assert!(
        trips < (N / 4) as f64,
        "{trips:.1} round trips for {N} files (one per file: about {} each way)",
        N / 2
    );
}

#[test]
fn files_exchanged_by_chunks_share_their_round_trips() {
    const N: usize = 8;
    // the same 8 files of about 260 KiB on both sides, each edited on one of them,
    // adopted with no shared history: each goes by chunk exchange, several rounds each
    let text: String = (0..9_000)
        .map(|i| format!("line {i} of some longer text\n"))
        .collect();
    let mut held = [Vec::new(), Vec::new()];
    for f in 0..N {
        let edited = text.replace("line 4500 ", &format!("line 4500 (edit {f}) "));
        held[f % 2].push((f, edited));
        held[1 - f % 2].push((f, text.clone()));
    }
    let trips = round_trips(&held);
    println!("{N} files exchanged by chunks converged in {trips:.1} round trips");
    // one exchange at a time took 22.5: four files each way, about five rounds each
    assert!(
        trips < 12.0,
        "{trips:.1} round trips for {N} files: their exchanges did not share rounds"
    );
}

#[test]
fn a_big_file_edited_apart_skips_the_tree_by_its_sketch() {
    // 4 MiB of text on both sides, 20 bytes changed on one, adopted with no shared
    // history: the offer's sketch names the changed leaf at once, instead of a round
    // trip per two levels of the chunk tree
    let text: String = (0..120_000)
        .map(|i| format!("line {i} of a big file\n"))
        .collect();
    let edited = text.replace("line 60000 of a", "line 60000 OF A");
    let held = [vec![(0, edited)], vec![(0, text)]];
    let trips = round_trips(&held);
    println!("a big file edited apart converged in {trips:.1} round trips");
    // 4.5 with the sketch and the changed gap matched in the pick (5.5 when the
    // leaf was described by its blocks, a round trip more); down the tree 7.5
    assert!(trips <= 5.0, "{trips:.1} round trips");
}

/// Round trips two nodes holding `held` take to converge over delayed links.
pub(super) fn round_trips(held: &[Vec<(usize, String)>; 2]) -> f64 {
    let delay = |l: &MemLink| {
        l.latency_ms
            .store(DELAY.as_millis() as u64, Ordering::SeqCst)
    };
    let (elapsed, _) = converge(held, delay, |_| ());
    elapsed.as_secs_f64() / (2.0 * DELAY.as_secs_f64())
}

/// Runs two nodes holding `held`, linked both ways (each link `set` first), until they
/// converge: the paused time it took, and what `read` finds of each link then.
pub(super) fn converge<T>(
    held: &[Vec<(usize, String)>; 2],
    set: impl Fn(&MemLink),
    read: impl Fn(&MemLink) -> T,
) -> (Duration, Vec<T>) {
    paused_runtime().block_on(async {
        let nodes = [node_holding(&held[0]), node_holding(&held[1])];
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        links.iter().for_each(|(l, _)| set(l));
        let t0 = tokio::time::Instant::now();
        assert!(settled(&nodes, 600).await, "the pair converges");
        let elapsed = t0.elapsed();
        let found = links.iter().map(|(l, _)| read(l)).collect();
        for (l, t) in links {
            t.abort();
            l.cut();
        }
        (elapsed, found)
    })
}
