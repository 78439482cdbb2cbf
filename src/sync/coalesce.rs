//! Coalescing metadata operations before they are sent (as Coda's log optimisations
//! do): work whose effect is void or carried by something else costs nothing.
//!
//! - Not here: a file created and removed before it was sent. The journal drops such
//!   pairs as they are recorded (`journal::cancel`), and only while the `Create` is
//!   known unsent. What reaches a snapshot may have reached the peer: a batch whose ack
//!   was lost to a cut link or a kill -9 comes again, and dropping its `Create` with a
//!   later `Unlink` left the peer holding a file deleted here (random_two_node, seed 22).
//! - An mtime-only `Utimens` (the kernel's writeback flush) on a file with a pending
//!   data update goes: the update carries the file's mtime.
//! - A `Truncate` of a file with a pending data update goes: the update carries the
//!   size, and the peer keeps the bytes the truncate cut until then, so the update can
//!   go as a delta against them (a file rewritten from scratch).
//!
//! The caller still acknowledges every dropped op in the journal.

use crate::journal::MetaOp;
use crate::path::RelPath;
use std::collections::HashSet;

/// The ops worth sending, in order.
pub fn coalesce(ops: &[(u64, MetaOp)], pending: &HashSet<RelPath>) -> Vec<(u64, MetaOp)> {
    ops.iter()
        .filter(|(_, op)| !carried_by_update(op, pending))
        .cloned()
        .collect()
}

/// True for an op whose effect the pending data update of its file carries.
pub fn carried_by_update(op: &MetaOp, pending: &HashSet<RelPath>) -> bool {
    match op {
        MetaOp::Utimens {
            path,
            atime: None,
            mtime: Some(_),
        }
        | MetaOp::Truncate { path, .. } => pending.contains(path),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::op::{SetTime, Timestamp};

    fn rp(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }
    fn mtime(p: &str) -> MetaOp {
        MetaOp::Utimens {
            path: rp(p),
            atime: None,
            mtime: Some(SetTime::At(Timestamp { secs: 1, nanos: 0 })),
        }
    }
    fn seqs(v: &[(u64, MetaOp)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn created_then_deleted_goes_whole_the_create_may_have_reached_the_peer() {
        let ops = vec![
            (
                1,
                MetaOp::Mkdir {
                    path: rp("d"),
                    mode: 0o755,
                },
            ),
            (
                2,
                MetaOp::Create {
                    path: rp("d/tmp"),
                    file: 9,
                    mode: 0o644,
                },
            ),
            (
                3,
                MetaOp::Chmod {
                    path: rp("d/tmp"),
                    mode: 0o600,
                },
            ),
            (4, mtime("d/tmp")),
            (
                5,
                MetaOp::Unlink {
                    path: rp("d/tmp"),
                    file: 9,
                    last_link: true,
                },
            ),
            (
                6,
                MetaOp::Create {
                    path: rp("d/keep"),
                    file: 10,
                    mode: 0o644,
                },
            ),
        ];
        assert_eq!(seqs(&coalesce(&ops, &HashSet::new())), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn renamed_or_linked_files_are_kept() {
        let ops = vec![
            (
                1,
                MetaOp::Create {
                    path: rp("a"),
                    file: 9,
                    mode: 0o644,
                },
            ),
            (
                2,
                MetaOp::Link {
                    from: rp("a"),
                    to: rp("b"),
                },
            ),
            (
                3,
                MetaOp::Unlink {
                    path: rp("a"),
                    file: 9,
                    last_link: true,
                },
            ),
            (
                4,
                MetaOp::Create {
                    path: rp("c"),
                    file: 11,
                    mode: 0o644,
                },
            ),
            (
                5,
                MetaOp::Rename {
                    from: rp("c"),
                    to: rp("e"),
                    flags: 0,
                },
            ),
            (
                6,
                MetaOp::Unlink {
                    path: rp("c"),
                    file: 11,
                    last_link: true,
                },
            ),
        ];
        assert_eq!(seqs(&coalesce(&ops, &HashSet::new())), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn mtime_flushes_of_files_with_pending_data_go() {
        let ops = vec![(1, mtime("f")), (2, mtime("g"))];
        let atime = MetaOp::Utimens {
            path: rp("f"),
            atime: Some(SetTime::Now),
            mtime: None,
        };
        let mut with_atime = ops.clone();
        with_atime.push((3, atime));
        let pending: HashSet<RelPath> = [rp("f")].into();
        assert_eq!(seqs(&coalesce(&with_atime, &pending)), [2, 3]);
    }
}
