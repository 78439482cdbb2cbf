//! What one peer may hold on this node at once, across all the streams it opens: a few
//! concurrent streams (a semaphore), and one memory budget for the update parts they
//! assemble (each range's data plus a fixed cost per range).

use crate::net::PeerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Streams one peer may have open to us at once (a sender needs one).
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// Bytes of update parts one peer may hold in memory, over all its streams.
pub const MAX_PEER_MEMORY: usize = 2 << 30;

/// One peer's share.
#[derive(Debug)]
pub struct PeerBudget {
    streams: Arc<Semaphore>,
    bytes: AtomicUsize,
}

impl Default for PeerBudget {
    fn default() -> Self {
        PeerBudget {
            streams: Arc::new(Semaphore::new(MAX_STREAMS_PER_PEER)),
            bytes: AtomicUsize::new(0),
        }
    }
}

impl PeerBudget {
    /// Takes `n` bytes; false (and nothing taken) if that would pass the budget.
    pub fn take(&self, n: usize) -> bool {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|v| *v <= MAX_PEER_MEMORY) else {
                return false;
            };
            match self
                .bytes
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` bytes.
    pub fn give(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Every peer's budget.
#[derive(Debug, Default)]
pub struct Budgets(Mutex<HashMap<PeerId, Arc<PeerBudget>>>);

impl Budgets {
    /// The budget of `peer`.
    pub fn of(&self, peer: PeerId) -> Arc<PeerBudget> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(peer).or_default().clone()
    }

    /// A stream slot of `peer`, or `None` when it has [`MAX_STREAMS_PER_PEER`] open.
    pub fn stream(&self, peer: PeerId) -> Option<OwnedSemaphorePermit> {
        self.of(peer).streams.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_bytes_are_capped_per_peer() {
        let b = Budgets::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        let permits: Vec<_> = (0..MAX_STREAMS_PER_PEER)
            .map(|_| b.stream(p).unwrap())
            .collect();
        assert!(b.stream(p).is_none(), "one stream too many");
        assert!(b.stream(q).is_some(), "another peer has its own");
        drop(permits);
        assert!(b.stream(p).is_some(), "slots come back");
        let budget = b.of(p);
        assert!(budget.take(MAX_PEER_MEMORY - 10));
        assert!(!budget.take(11), "past the budget");
        assert!(b.of(p).take(10), "shared by every stream of the peer");
        budget.give(MAX_PEER_MEMORY);
        assert_eq!(budget.held(), 0);
    }
}
