//! Files past what one update may carry ([`crate::wire::MAX_UPDATE_SPAN`] of ranges),
//! end to end over in-memory links: they go as several updates, each a prefix.

use super::sim_tests::{connect, node_with, Node};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 1,200 MiB: more than one update carries.
const SIZE: u64 = 1200 << 20;

/// BLAKE3 of a file, streamed.
fn hash_of(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

/// Waits (real time) until `nodes` hold the same `big` and nothing is pending.
async fn same_big(nodes: &[Arc<Node>; 2], limit: Duration) {
    let t0 = Instant::now();
    let [a, b] = [0, 1].map(|i| nodes[i].data.join("big"));
    loop {
        let idle = nodes.iter().all(|n| n.journal.snapshot().files.is_empty());
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        if idle && len(&a) == len(&b) && hash_of(&a) == hash_of(&b) {
            return;
        }
        assert!(t0.elapsed() < limit, "big differs after {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes `bytes` at `off` of node `n`'s `big`, journalled as the mount would.
fn write_at(n: &Node, off: u64, bytes: &[u8]) {
    let path = n.data.join("big");
    let ino = std::fs::metadata(&path).unwrap().ino();
    n.journal
        .record_write(ino, off, off + bytes.len() as u64)
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(bytes, off).unwrap();
    n.journal.write_done(ino);
}

#[test]
fn files_over_one_update_go_in_several() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // a new file of 1,200 MiB: all of it is dirty (whole)
        let big = |data: &Path| {
            let f = std::fs::File::create(data.join("big")).unwrap();
            f.set_len(SIZE).unwrap();
            f.write_all_at(b"the end", SIZE - 7).unwrap();
        };
        let nodes = [node_with(&big), node_with(&|_| {})];
        let up = Arc::new(AtomicBool::new(true));
        let _links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        same_big(&nodes, Duration::from_secs(120)).await;
        // 1,120 MiB written in two runs, with clean bytes between them and after the
        // first update's cut (at 1,064 MiB): the peer's must be sent again
        let run: Vec<u8> = (0..(560u32 << 20)).map(|i| (i % 253) as u8).collect();
        write_at(&nodes[0], 0, &run);
        write_at(&nodes[0], 600 << 20, &run);
        same_big(&nodes, Duration::from_secs(120)).await;
    });
}
