//! Counters the syncer keeps for `syncfs status`: lock-free, shared by both directions.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Keepalive pings received from the peer.
    pub pings: AtomicU64,
    /// When each peer was last heard from and written to, over all its streams.
    pub clocks: super::alive::PeerClocks,
    /// File bytes the sent updates carried (their dirty ranges), before compression.
    pub raw_sent: AtomicU64,
    /// Bytes this node's sync sessions wrote to and read from the link (shared with
    /// the sessions' streams, which count as bytes pass).
    pub wire_out: Arc<AtomicU64>,
    /// See [`Stats::wire_out`].
    pub wire_in: Arc<AtomicU64>,
    /// Dirty bytes in the files queued at the last look.
    pub queued_bytes: AtomicU64,
    /// Metadata ops queued at the last look.
    pub queued_ops: AtomicU64,
    /// Round-trip time of the last keepalive or handshake, in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
    /// Measured throughput to the peer, bytes per second (0: not measured yet).
    pub throughput: AtomicU64,
    /// When the queue last became empty with the link up (Unix seconds; 0: never).
    pub last_sync: AtomicU64,
    /// When a peer's change was last applied (Unix milliseconds).
    pub last_applied_ms: AtomicU64,
    /// The session is exchanging indexes (reconciling) right now.
    pub exchanging: AtomicBool,
    /// The peer's address as configured.
    pub peer: Mutex<String>,
    /// Recent errors, oldest first.
    pub errors: Mutex<VecDeque<ErrorView>>,
    /// Updates in flight, by update id.
    pub flights: Mutex<BTreeMap<u64, FlightView>>,
    /// A sending session to the peer is up.
    pub linked: AtomicBool,
    /// The last error, if any.
    pub last_error: Mutex<String>,
    /// What the peer said it has queued for us (files and ops; bytes): see
    /// `wire::Message::Queue`. Zero while no session from the peer is up.
    pub incoming_files: AtomicU64,
    /// See [`Stats::incoming_files`].
    pub incoming_bytes: AtomicU64,
    /// File bytes the peer's applied updates carried (their ranges), decoded.
    pub raw_received: AtomicU64,
    /// File bytes sent as deltas against what the peer holds (joint deltas).
    pub delta_raw: AtomicU64,
    /// What those deltas took (their encoded size, before stream compression).
    pub delta_payload: AtomicU64,
    /// Pending files that could not be sent, with why (path: reason).
    pub stuck: Mutex<BTreeMap<u64, String>>,
    /// Sessions the peer opened to this node (its `Hello`s accepted).
    pub peer_sessions: AtomicU64,
    /// Wakes the sender when the peer opens a session (see `sender::recv_reply`).
    pub peer_session_started: tokio::sync::Notify,
}

/// One recent error.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorView {
    /// When it happened (Unix seconds).
    pub at: u64,
    /// What happened.
    pub message: String,
    /// The condition is gone (e.g. the link came back up).
    pub resolved: bool,
}

/// One update in flight.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlightView {
    /// The file's path.
    pub path: String,
    /// File bytes the update carries (dirty ranges).
    pub bytes: u64,
    /// Bytes it takes on the wire (compressed payload).
    pub payload: u64,
    /// When it was sent (Unix milliseconds).
    pub since_ms: u64,
    /// Bytes of it written to the link so far (measured: link bytes written since it
    /// was queued, less what was queued ahead of it; at most `payload`).
    #[serde(default)]
    pub sent: u64,
    /// The link's written-bytes count at which this update starts (not shown).
    #[serde(skip)]
    pub start_mark: u64,
}

/// Errors kept for status.
const ERRORS_KEPT: usize = 10;

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    /// See [`Stats::raw_sent`].
    #[serde(default)]
    pub raw_sent: u64,
    /// See [`Stats::wire_out`].
    #[serde(default)]
    pub wire_out: u64,
    /// See [`Stats::wire_in`].
    #[serde(default)]
    pub wire_in: u64,
    /// See [`Stats::queued_bytes`].
    #[serde(default)]
    pub queued_bytes: u64,
    /// See [`Stats::queued_ops`].
    #[serde(default)]
    pub queued_ops: u64,
    /// See [`Stats::rtt_us`].
    #[serde(default)]
    pub rtt_us: u64,
    /// See [`Stats::throughput`].
    #[serde(default)]
    pub throughput: u64,
    /// See [`Stats::last_sync`].
    #[serde(default)]
    pub last_sync: u64,
    /// See [`Stats::last_applied_ms`].
    #[serde(default)]
    pub last_applied_ms: u64,
    /// See [`Stats::exchanging`].
    #[serde(default)]
    pub exchanging: bool,
    /// See [`Stats::peer`].
    #[serde(default)]
    pub peer: String,
    /// See [`Stats::errors`].
    #[serde(default)]
    pub errors: Vec<ErrorView>,
    /// See [`Stats::flights`].
    #[serde(default)]
    pub flights: Vec<FlightView>,
    /// See [`Stats::incoming_files`].
    #[serde(default)]
    pub incoming_files: u64,
    /// See [`Stats::incoming_bytes`].
    #[serde(default)]
    pub incoming_bytes: u64,
    /// See [`Stats::raw_received`].
    #[serde(default)]
    pub raw_received: u64,
    /// See [`Stats::delta_raw`].
    #[serde(default)]
    pub delta_raw: u64,
    /// See [`Stats::delta_payload`].
    #[serde(default)]
    pub delta_payload: u64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Remembers an error for status.
    pub fn error(&self, e: impl std::fmt::Display) {
        let message = e.to_string();
        *self.last_error.lock().unwrap() = message.clone();
        let mut errs = self.errors.lock().unwrap();
        if errs
            .back()
            .is_some_and(|b| b.message == message && !b.resolved)
        {
            return; // the same error again (a retry loop): once is enough
        }
        errs.push_back(ErrorView {
            at: now_ms() / 1000,
            message,
            resolved: false,
        });
        while errs.len() > ERRORS_KEPT {
            errs.pop_front();
        }
    }

    /// The link is up again: its errors (and the last error) are resolved.
    pub fn link_up(&self) {
        self.linked.store(true, Ordering::Relaxed);
        self.last_error.lock().unwrap().clear();
        for e in self.errors.lock().unwrap().iter_mut() {
            e.resolved = true;
        }
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
            raw_sent: g(&self.raw_sent),
            wire_out: g(&self.wire_out),
            wire_in: g(&self.wire_in),
            queued_bytes: g(&self.queued_bytes),
            queued_ops: g(&self.queued_ops),
            rtt_us: g(&self.rtt_us),
            throughput: g(&self.throughput),
            last_sync: g(&self.last_sync),
            last_applied_ms: g(&self.last_applied_ms),
            exchanging: self.exchanging.load(Ordering::Relaxed),
            peer: self.peer.lock().unwrap().clone(),
            errors: self.errors.lock().unwrap().iter().cloned().collect(),
            flights: self.flights_now(),
            incoming_files: g(&self.incoming_files),
            incoming_bytes: g(&self.incoming_bytes),
            raw_received: g(&self.raw_received),
            delta_raw: g(&self.delta_raw),
            delta_payload: g(&self.delta_payload),
        }
    }

    /// The updates in flight, with how much of each the link has carried.
    fn flights_now(&self) -> Vec<FlightView> {
        let written = self.wire_out.load(Ordering::Relaxed);
        let mut v: Vec<FlightView> = self.flights.lock().unwrap().values().cloned().collect();
        for f in &mut v {
            f.sent = written.saturating_sub(f.start_mark).min(f.payload);
        }
        v
    }
}
