//! A daemon killed in mid-batch: the ops it applied before its index entries were
//! flushed are finished by `meta::recover`, so the scan after it finds no local change.
//! And a peer's directory whose entries changed is no local change of its own.

use super::meta::recover;
use crate::apply::{HeldOp, OpState};
use crate::journal::op::MetaOp;
use crate::path::RelPath;
use crate::vv::VersionVector;

fn rp(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

/// A scan of the test folder, as the daemon runs before mounting.
fn scan(e: &super::hostile_tests::Env) {
    let check = &e.receiver.check;
    crate::scan::Scan {
        data: &e.data,
        journal: &check.journal,
        node: check.cfg.node,
        progress: &Default::default(),
    }
    .run()
    .unwrap();
}

/// Applies the first op of a held three-op batch as a killed daemon would have (no
/// index entry, nothing committed; killed before or after marking it applied), then optionally recovers, then scans. Returns the
/// version of `a` in the index afterwards, and the peer's.
fn kill_mid_batch(recovering: bool, marked_applied: bool) -> (VersionVector, VersionVector) {
    let e = super::hostile_tests::env();
    let check = &e.receiver.check;
    scan(&e); // the first scan adopts the (empty) folder
    let peer = crate::net::PeerId::random();
    let vv = |n| VersionVector::from_pairs([(crate::vv::node_id(&peer.to_bytes()), n)]);
    let ops: Vec<HeldOp> = vec![
        (
            1,
            MetaOp::Create {
                path: rp("a"),
                file: 7,
                mode: 0o644,
            },
            vv(1),
        ),
        (
            2,
            MetaOp::Mkdir {
                path: rp("d"),
                mode: 0o755,
            },
            vv(2),
        ),
        (
            3,
            MetaOp::Create {
                path: rp("d/x"),
                file: 8,
                mode: 0o644,
            },
            vv(3),
        ),
    ];
    let peer = peer.to_string();
    let marks = check.applier.hold_batch(&peer, &ops).unwrap();
    marks.set(0, OpState::Started).unwrap(); // as the receiver does
    check.applier.apply_meta(&ops[0].1).unwrap();
    if marked_applied {
        marks.set(0, OpState::Applied).unwrap();
    } // then killed
    if recovering {
        recover(check).unwrap();
        assert_eq!(check.applier.applied(&peer).unwrap().upto, 3);
        assert!(check.applier.held_batches().unwrap().is_empty());
        assert!(
            e.data.join("d/x").exists(),
            "the rest of the batch is applied"
        );
    }
    scan(&e);
    let entry = check.journal.index().get(&rp("a")).unwrap().unwrap();
    (entry.vv, vv(1))
}

#[test]
fn a_batch_cut_by_a_kill_is_finished_before_the_scan() {
    for marked in [true, false] {
        let (found, peers) = kill_mid_batch(true, marked);
        assert_eq!(found, peers, "the peer's create, not a local change");
    }
}

#[test]
fn without_recovery_the_scan_takes_the_peers_op_for_a_local_change() {
    let (found, peers) = kill_mid_batch(false, true);
    assert_ne!(found, peers, "the test's premise: the scan does see it");
}

#[test]
fn a_peers_directory_whose_entries_changed_is_not_changed_here() {
    let e = super::hostile_tests::env();
    let check = &e.receiver.check;
    scan(&e);
    let peer = crate::net::PeerId::random();
    let vv = VersionVector::from_pairs([(crate::vv::node_id(&peer.to_bytes()), 1)]);
    let mkdir = MetaOp::Mkdir {
        path: rp("d"),
        mode: 0o755,
    };
    check.applier.apply_meta(&mkdir).unwrap();
    check.after_op(&mkdir, &vv).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(e.data.join("d/new"), b"x").unwrap(); // the directory's stamp moves
    scan(&e);
    let d = check.journal.index().get(&rp("d")).unwrap().unwrap();
    assert_eq!(d.vv, vv, "still the peer's version");
    let ops = check.journal.snapshot().meta;
    assert!(
        ops.iter()
            .all(|(_, op)| !matches!(op, MetaOp::Chmod { .. })),
        "no chmod journaled: {ops:?}"
    );
    assert!(check.journal.index().get(&rp("d/new")).unwrap().is_some());
}
