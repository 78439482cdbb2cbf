//! Counters the syncer keeps for `syncfs status`: lock-free, shared by both directions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters.
#[derive(Default, Debug)]
pub struct Stats {
    /// Files with pending changes at the last look.
    pub queued: AtomicU64,
    /// Updates sent and not yet acknowledged.
    pub in_flight: AtomicU64,
    /// Updates acknowledged by the peer.
    pub acked: AtomicU64,
    /// Updates the peer refused (nack).
    pub nacked: AtomicU64,
    /// Compressed range bytes sent.
    pub sent_bytes: AtomicU64,
    /// Metadata operations acknowledged.
    pub meta_acked: AtomicU64,
    /// Updates and operations applied from the peer.
    pub applied: AtomicU64,
    /// Metadata operations the peer could not apply (kept as conflicts).
    pub conflicts: AtomicU64,
    /// Messages received from the peer, keepalives not counted.
    pub received: AtomicU64,
    /// A sending session to the peer is up.
    pub linked: AtomicBool,
    /// The last error, if any.
    pub last_error: Mutex<String>,
    /// Pending files that could not be sent, with why (path: reason).
    pub stuck: Mutex<BTreeMap<u64, String>>,
}

/// A point-in-time copy of [`Stats`], for printing and the control socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsView {
    /// See [`Stats::queued`].
    pub queued: u64,
    /// See [`Stats::in_flight`].
    pub in_flight: u64,
    /// See [`Stats::acked`].
    pub acked: u64,
    /// See [`Stats::nacked`].
    pub nacked: u64,
    /// See [`Stats::sent_bytes`].
    pub sent_bytes: u64,
    /// See [`Stats::meta_acked`].
    pub meta_acked: u64,
    /// See [`Stats::applied`].
    pub applied: u64,
    /// See [`Stats::conflicts`].
    pub conflicts: u64,
    /// See [`Stats::received`].
    #[serde(default)]
    pub received: u64,
    /// See [`Stats::linked`].
    pub linked: bool,
    /// See [`Stats::last_error`].
    pub last_error: String,
    /// Pending files that cannot be sent now, each as "path: reason".
    #[serde(default)]
    pub stuck: Vec<String>,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Remembers an error for status.
    pub fn error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().unwrap() = e.to_string();
    }

    /// Marks `file` as stuck for `why` (shown by status), or clears it (`None`);
    /// true when that changed whether it is stuck.
    pub fn set_stuck(&self, file: u64, why: Option<String>) -> bool {
        let mut m = self.stuck.lock().unwrap();
        match why {
            Some(w) => m.insert(file, w).is_none(),
            None => m.remove(&file).is_some(),
        }
    }

    /// Forgets stuck files that are no longer pending.
    pub fn keep_stuck(&self, pending: impl Fn(u64) -> bool) {
        self.stuck.lock().unwrap().retain(|f, _| pending(*f));
    }

    /// A consistent-enough copy of every counter.
    pub fn view(&self) -> StatsView {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsView {
            queued: g(&self.queued),
            in_flight: g(&self.in_flight),
            acked: g(&self.acked),
            nacked: g(&self.nacked),
            sent_bytes: g(&self.sent_bytes),
            meta_acked: g(&self.meta_acked),
            applied: g(&self.applied),
            conflicts: g(&self.conflicts),
            received: g(&self.received),
            linked: self.linked.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap().clone(),
            stuck: self.stuck.lock().unwrap().values().cloned().collect(),
        }
    }
}
