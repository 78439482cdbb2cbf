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
