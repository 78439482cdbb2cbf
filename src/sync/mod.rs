//! The syncer: sends the journal's metadata operations and quiet files' dirty ranges to
//! the peer ([`sender`]), and serves the peer's updates to the applier ([`receiver`]).
//!
//! Each direction has its own libp2p stream: a node opens one stream to each peer for
//! what it sends and answers the streams its peers open. Both start with `Hello`
//! (protocol version and folder id); a mismatch gets `Refused` and nothing else.
//! The journal clears a range only after the peer's ack for exactly that range and
//! version ([`crate::journal::Journal::ack_file`]).

pub mod alive;
pub mod budget;
pub mod build;
pub mod check;
pub mod chunked;
pub mod coalesce;
pub mod digests;
pub mod exchanges;
pub mod fold;
pub mod follow;
pub mod ignored;
pub mod joined;
pub mod leaf_delta;
pub mod link;
pub mod local_copy;
pub mod meta;
pub mod receiver;
pub mod resume;
pub mod sender;
pub mod sources;
pub mod stats;
pub mod verdict;
pub mod warm;

#[cfg(test)]
mod archive_tests;
#[cfg(test)]
mod big_tests;
#[cfg(test)]
mod follow_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod in_place_tests;
#[cfg(test)]
mod keepalive_tests;
#[cfg(test)]
mod latency_tests;
#[cfg(test)]
mod meta_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod sketch_tests;

use crate::wire::WireError;
pub use stats::Stats;
use std::time::Duration;

/// What both directions need to know.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The folder id; peers with another one are refused.
    pub folder_id: [u8; 16],
    /// This node's name, sent in `Hello`.
    pub node_name: String,
    /// A file is sent once unchanged for this long (or at once when closed).
    pub settle: Duration,
    /// zstd level for range data.
    pub level: i32,
    /// This node's id in version vectors.
    pub node: crate::vv::NodeId,
    /// This node's PeerId, as bytes (the tie-break between concurrent edits).
    pub peer_bytes: Vec<u8>,
    /// This node's PeerId, as text (in conflict copies' names).
    pub peer_text: String,
}

/// Why a sync session ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The stream failed or carried a bad frame.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The peer closed the stream.
    #[error("peer closed the stream")]
    Closed,
    /// The peer sent something out of place.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Opening the stream failed.
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// Local I/O failed.
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// Nothing came from the peer for this long (a dead or half-open link).
    #[error("link: the peer was silent for {0:?}")]
    Silent(Duration),
    /// The peer opened a new session while this one waited on a silent stream: it
    /// restarted, and this session's connection may be dead without a word.
    #[error("link: the peer started anew while this session waited on a silent stream")]
    PeerRestarted,
}

impl SyncError {
    /// True if the link itself is in doubt: it is dropped and redialed, not reused.
    pub fn link_dead(&self) -> bool {
        matches!(self, SyncError::Silent(_) | SyncError::PeerRestarted)
    }
}

/// A receiving stream ends when nothing moved on it and nothing was heard from its
/// peer on any stream for this long (see [`alive`]): an idle peer pings within
/// 1.5 x [`PING_EVERY`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(90);
/// A sender whose writes move no byte for this long (plus time for the receiver to
/// apply what it already has) takes the link for dead.
pub const WRITE_STALL: Duration = Duration::from_secs(20);
/// The slowest apply rate assumed of a receiver (bytes per second): while it applies
/// it reads nothing, so the sender's writes may stall that long.
pub const MIN_APPLY_RATE: u64 = 32 << 20;
/// A sender pings once its stream has been silent both ways this long and nothing
/// was written to the peer on any stream for this long (one side of a pair; the other
/// waits 1.5 x as long: see [`alive::ping_every`]), or once its stream has been silent
/// for [`alive::OWN_SILENCE_MAX`] whatever the other carries. A link that carries
/// updates and acks either way needs a keepalive only on its idle stream, every
/// `OWN_SILENCE_MAX`; an idle one costs one ping and pong (a small frame each way)
/// this often, plus that one.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// A reply (ack, pong, hello) is due within this long, plus the time the bytes in
/// flight take at [`MIN_RATE`].
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// The slowest link rate assumed when waiting for acks, in bytes per second.
pub const MIN_RATE: u64 = 16 << 10;

/// Runs `fut` (a read or write on a stream) unless no sign of life comes for `limit`,
/// counted from the later of `last()` (e.g. the stream's last byte: see
/// [`crate::wire::FramedStream::progress`]) and the call: a dead or half-open link is
/// noticed however slowly a healthy one would move.
pub async fn unless_stalled<T>(
    last: impl Fn() -> tokio::time::Instant,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    let start = tokio::time::Instant::now();
    tokio::pin!(fut);
    loop {
        let deadline = last().max(start) + limit;
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep_until(deadline) => {
                if last().max(start) + limit <= tokio::time::Instant::now() {
                    return Err(SyncError::Silent(limit));
                }
            }
        }
    }
}

/// Waits for the next message, at most `limit`.
pub async fn recv_within<S>(
    fs: &mut crate::wire::FramedStream<S>,
    limit: Duration,
) -> Result<crate::wire::Message, SyncError>
where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, fs.recv()).await {
        Ok(r) => r?.ok_or(SyncError::Closed),
        Err(_) => Err(SyncError::Silent(limit)),
    }
}

/// An index entry's digest as a `SummaryAck` lists it (`same`): the receiver lists its
/// entries' and the sender leaves out its entries whose digest is listed.
pub(crate) fn same_digest(p: &crate::path::RelPath, e: &crate::journal::index::Entry) -> u64 {
    crate::wire::short48(crate::journal::index::entry_digest(p, e))
}
