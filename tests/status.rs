//! `syncfs status --json` against a real pair: a stale link error is marked resolved
//! once the link is up, a large transfer's progress moves forward and its counts add
//! up, and a conflict shows once one is made.

mod common;
use common::{wait_until, Pair};
use serde_json::Value;
use std::fs;
use std::time::Duration;

fn status(store: &std::path::Path) -> Value {
    let out = common::syncfs(&["status", "--json", store.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

#[test]
fn status_json_follows_errors_progress_and_conflicts() {
    let mut p = Pair::new(true);
    // the big transfer below lasts a few seconds (B hears of a queue that lasts)
    common::set_config(&p.a.store, "bwlimit", "32768");
    p.proxies.iter().for_each(|x| x.cut());
    p.a.mount();
    p.b.mount();
    fs::write(p.a.m("hello.txt"), b"hello\n").unwrap();
    // the link is down: an error shows, unresolved
    let errs = |v: &Value| v["stats"]["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        wait_until(30, || errs(&status(&p.a.store))
            .iter()
            .any(|e| e["resolved"] == false)),
        "no link error while the link is down: {}",
        status(&p.a.store)
    );
    let down = status(&p.a.store);
    assert_eq!(down["mounted"], true);
    let via_mount = status(&p.a.mnt);
    assert_eq!(
        via_mount["pid"], down["pid"],
        "the mount point names its store"
    );
    assert_eq!(down["phase"], "connecting", "{down}");
    p.proxies.iter().for_each(|x| x.heal());
    assert!(
        wait_until(30, || {
            let v = status(&p.a.store);
            v["stats"]["linked"] == true
                && v["stats"]["last_error"] == ""
                && errs(&v).iter().all(|e| e["resolved"] == true)
        }),
        "the stale error is not marked resolved once the link is up: {}",
        status(&p.a.store)
    );

    // a large transfer: progress moves forward and the counts add up
    let size: u64 = 96 << 20;
    let data = common::random_bytes(size as usize, 0x9E37_79B9_7F4A_7C15);
    fs::write(p.a.m("big.bin"), &data).unwrap();
    let (mut seen, mut seen_b) = (Vec::new(), Vec::new());
    let done = wait_until(120, || {
        let v = status(&p.a.store);
        seen.push(v.clone());
        seen_b.push(status(&p.b.store));
        fs::metadata(p.b.m("big.bin")).is_ok_and(|m| m.len() == size)
            && u(&v, &["stats", "queued"]) == 0
            && u(&v, &["stats", "in_flight"]) == 0
    });
    assert!(done, "the big file did not arrive");
    let raw: Vec<u64> = seen.iter().map(|v| u(v, &["stats", "raw_sent"])).collect();
    assert!(
        raw.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {raw:?}"
    );
    let wire: Vec<u64> = seen.iter().map(|v| u(v, &["stats", "wire_out"])).collect();
    assert!(
        wire.windows(2).all(|w| w[0] <= w[1]),
        "wire bytes went back: {wire:?}"
    );
    // each update in flight shows how much of it the link carried: measured, moving on
    let sent: Vec<(u64, u64)> = seen
        .iter()
        .filter_map(|v| v["stats"]["flights"].as_array()?.first().cloned())
        .map(|f| (u(&f, &["sent"]), u(&f, &["payload"])))
        .collect();
    assert!(
        sent.iter().any(|(s, p)| *s > 0 && s < p),
        "no partial progress of the update in flight: {sent:?}"
    );
    assert!(
        sent.iter().all(|(s, p)| s <= p),
        "progress past the payload: {sent:?}"
    );
    // B hears what A has queued for it while the transfer runs, and that it emptied
    assert!(
        seen_b
            .iter()
            .any(|v| u(v, &["stats", "incoming_bytes"]) >= size / 2),
        "B never saw A's queue: {:?}",
        seen_b
            .iter()
            .map(|v| u(v, &["stats", "incoming_bytes"]))
            .collect::<Vec<_>>()
    );
    assert!(
        wait_until(10, || u(&status(&p.b.store), &["stats", "incoming_files"])
            == 0),
        "B still sees a queue on A: {}",
        status(&p.b.store)
    );
    let steps = wire.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(
        steps >= 3,
        "the link's progress did not move in steps: {wire:?}"
    );
    assert!(
        seen.iter().any(|v| v["phase"] == "sending"),
        "never in the sending phase"
    );
    let last = status(&p.a.store);
    assert!(u(&last, &["stats", "raw_sent"]) >= size, "{last}");
    assert!(
        u(&last, &["stats", "wire_out"]) >= u(&last, &["stats", "sent_bytes"]),
        "the wire carries at least the range data: {last}"
    );
    assert!(u(&last, &["stats", "acked"]) >= 1);
    assert_eq!(u(&last, &["stats", "queued_bytes"]), 0, "{last}");
    assert!(u(&last, &["stats", "last_sync"]) > 0, "{last}");
    let on_b = status(&p.b.store);
    assert!(u(&on_b, &["stats", "applied"]) >= 2, "{on_b}");
    assert!(u(&on_b, &["stats", "raw_received"]) >= size, "{on_b}");
    assert!(
        u(&on_b, &["stats", "wire_in"]) >= u(&last, &["stats", "sent_bytes"]),
        "B read what A sent: {on_b}"
    );

    // an edit of bytes the peer holds goes as a delta: the dedupe counters show it
    let mut edited = data.clone();
    edited[(1 << 20) + 100..(1 << 20) + 120].copy_from_slice(&[0x5a; 20]); // a page rewrite
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p.a.m("big.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &edited[1 << 20..(1 << 20) + 4096], 1 << 20)
        .unwrap();
    drop(f);
    let want = *blake3::hash(&edited).as_bytes();
    assert!(
        wait_until(60, || common::hash_of(&p.b.m("big.bin")) == Some(want)),
        "the edit did not arrive"
    );
    let after = status(&p.a.store);
    let (raw, enc) = (
        u(&after, &["stats", "delta_raw"]),
        u(&after, &["stats", "delta_payload"]),
    );
    assert!(
        raw >= 4096 && enc > 0 && enc < raw,
        "dedupe counters: {after}"
    );

    // a conflict shows once made
    p.proxies.iter().for_each(|x| x.cut());
    std::thread::sleep(Duration::from_millis(500));
    fs::write(p.a.m("hello.txt"), b"from A\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(p.b.m("hello.txt"), b"from B\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    p.proxies.iter().for_each(|x| x.heal());
    let copies = |v: &Value| v["conflict_copies"].as_array().map_or(0, |a| a.len());
    assert!(
        wait_until(60, || copies(&status(&p.a.store)) == 1
            && copies(&status(&p.b.store)) == 1),
        "the conflict does not show: {} / {}",
        status(&p.a.store),
        status(&p.b.store)
    );
    // a deleted file is kept in B's archive, which status counts
    fs::remove_file(p.a.m("big.bin")).unwrap();
    assert!(
        wait_until(60, || !p.b.m("big.bin").exists()),
        "the delete did not arrive"
    );
    let kept = status(&p.b.store);
    assert!(u(&kept, &["overhead", "versions"]) >= size, "{kept}");
    p.a.unmount();
    p.b.unmount();
    let off = status(&p.a.store);
    assert_eq!(off["mounted"], false, "{off}");
}
