//! Keepalive per peer, not per stream: when each peer was last heard from and last
//! written to, over both sync streams between us (ours and theirs). A side pings only
//! when it has written nothing to the peer for a while, and a receiving stream ends
//! only when nothing was heard from the peer on any stream, so an idle link costs one
//! ping and pong per [`PING_EVERY`] (plus one per [`OWN_SILENCE_MAX`] on the other
//! side's silent stream), and a busy one (in either direction) next to none.

use super::PING_EVERY;
use crate::wire::{FramedStream, Progress};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Every peer's clocks, shared by the node's sender and receiver.
#[derive(Debug, Default)]
pub struct PeerClocks(Mutex<HashMap<String, Arc<PeerClock>>>);

impl PeerClocks {
    /// The clocks of `peer` (its id as text).
    pub fn of(&self, peer: &str) -> Arc<PeerClock> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(peer.to_owned()).or_default().clone()
    }
}

/// One peer's clocks.
#[derive(Debug, Default)]
pub struct PeerClock {
    /// A byte was last read from the peer (any stream).
    heard: Progress,
    /// A byte was last written to the peer (any stream).
    wrote: Progress,
    /// Streams the peer opened to us so far.
    streams: AtomicU64,
}

impl PeerClock {
    /// Makes `fs`, a stream to or from this peer, move these clocks.
    pub fn attach<S: futures::io::AsyncRead + Unpin>(&self, fs: &mut FramedStream<S>) {
        fs.share_clocks(self.heard.clone(), self.wrote.clone());
    }

    /// Counts a stream the peer opened; returns its number.
    pub fn opened(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last sign of life for the peer's stream number `me`, whose own bytes last
    /// moved at `own`: the later of `own` and the last byte heard from the peer, but
    /// only `own` once the peer has opened a newer stream (this one is then left over
    /// from a connection the peer gave up, and must not live on the new one's traffic).
    pub fn alive(&self, own: Instant, me: u64) -> Instant {
        if self.streams.load(Ordering::Relaxed) > me {
            own
        } else {
            own.max(self.heard.last())
        }
    }

    /// True when a sender to this peer whose own stream last moved a byte at `own`
    /// should ping: its stream has been silent for [`PING_EVERY`] and nothing was
    /// written to the peer on either stream for `every`, or its stream has been silent
    /// for [`OWN_SILENCE_MAX`] (the two streams may ride different connections, and
    /// one may die unheard while the other carries the pings).
    pub fn ping_due(&self, own: Instant, every: Duration) -> bool {
        let silent = own.elapsed();
        silent >= PING_EVERY && (self.wrote.last().elapsed() >= every || silent >= OWN_SILENCE_MAX)
    }
}

/// A sender's stream silent this long pings whatever the other stream carries.
pub const OWN_SILENCE_MAX: Duration = Duration::from_secs(120);

/// How long a sender waits without writing to `peer` before it pings, for a node
/// whose id is `me` (both as text): one side waits [`PING_EVERY`], the other half as
/// long again, so that the first side's ping and its pong keep both quiet.
pub fn ping_every(me: &str, peer: &str) -> Duration {
    if me < peer {
        PING_EVERY
    } else {
        PING_EVERY * 3 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_lives_on_what_is_heard_until_a_newer_one_opens() {
        let c = PeerClocks::default().of("p");
        let first = c.opened();
        let own = Instant::now();
        tokio::time::advance(Duration::from_secs(60)).await;
        c.heard.mark();
        assert_eq!(
            c.alive(own, first),
            Instant::now(),
            "heard on another stream"
        );
        let second = c.opened();
        assert_eq!(c.alive(own, first), own, "superseded: its own bytes only");
        assert_eq!(c.alive(own, second), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_is_due_only_after_nothing_was_written() {
        let c = PeerClock::default();
        let own = Instant::now();
        tokio::time::advance(PING_EVERY).await;
        assert!(c.ping_due(own, PING_EVERY));
        assert!(!c.ping_due(Instant::now(), PING_EVERY), "its stream moved");
        c.wrote.mark();
        assert!(!c.ping_due(own, PING_EVERY), "written on the other stream");
        c.heard.mark(); // hearing is not writing
        tokio::time::advance(PING_EVERY).await;
        assert!(c.ping_due(own, PING_EVERY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_silent_long_enough_pings_whatever_the_other_carries() {
        let c = PeerClock::default();
        let own = Instant::now();
        tokio::time::advance(OWN_SILENCE_MAX - Duration::from_secs(1)).await;
        c.wrote.mark();
        assert!(!c.ping_due(own, PING_EVERY));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(c.ping_due(own, PING_EVERY));
    }

    #[test]
    fn exactly_one_side_of_a_pair_pings_first() {
        let (a, b) = ("12D3KooWA", "12D3KooWB");
        assert_eq!(ping_every(a, b), PING_EVERY);
        assert!(ping_every(b, a) > PING_EVERY);
    }
}
