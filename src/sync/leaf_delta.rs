//! Small files the receiver holds another version of (first pairing, a file edited on
//! both sides while apart): in its `IndexAck` the receiver describes its version by the
//! short hashes of its leaves; the sender answers with one `LeafDelta`, the new content
//! as a delta against the leaves both hold ([`crate::chunks::leaves`]). No rounds, and
//! the sender writes a batch of them before reading their acks ([`send_batch`]): a
//! batch of files costs one round trip whatever their number. The receiver applies
//! each as an ordinary whole-file update through the checker.

use super::chunked::{Offered, Read, Ready, DESCRIBED};
use super::link::Duplex;
use super::sender::recv_reply;
use super::{Stats, SyncError, REPLY_TIMEOUT};
use crate::chunks::leaves;
use crate::path::RelPath;
use crate::wire::{AckKind, FileUpdate, FramedStream, Message};
use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// zstd level of a leaf delta (small inputs: the strongest level costs little).
const LEVEL: i32 = 19;

/// Our version at `path` if it is a regular file of a size described by leaves.
fn read_small(root: &impl AsRawFd, path: &RelPath) -> Option<Vec<u8>> {
    let (file, st) = super::chunked::open_file(root, path, DESCRIBED)?;
    let mut buf = Vec::with_capacity(st.st_size as usize);
    let limit = *DESCRIBED.end() + 1;
    file.take(limit).read_to_end(&mut buf).ok()?;
    DESCRIBED.contains(&(buf.len() as u64)).then_some(buf)
}

/// The receiver: the leaves of our version at `path` (empty: none worth describing).
pub fn describe(root: &impl AsRawFd, path: &RelPath) -> Vec<u32> {
    read_small(root, path).map_or_else(Vec::new, |b| leaves::describe(&b))
}

/// The receiver: the `size` bytes a `LeafDelta` makes from our version at `path`.
pub fn rebuild(
    root: &impl AsRawFd,
    path: &RelPath,
    used: &[u8],
    delta: &[u8],
    size: u64,
) -> Result<Vec<u8>, String> {
    let old = read_small(root, path).ok_or("no small file here to build on")?;
    let base = leaves::base_of(&old, used).ok_or("the leaves marked are not ours")?;
    crate::delta::decode(delta, &base, size as usize).map_err(|e| e.to_string())
}

/// The sender: `update` (a whole-file header) as a `LeafDelta` against the leaves the
/// peer `described`; waits for its ack.
pub async fn send(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    stats: &Stats,
    update: FileUpdate,
    read: &Read,
    described: &[u32],
) -> Result<Offered, SyncError> {
    let (id, n) = (update.id, described.len());
    let (msg, sent) = message(update, read, described).await?;
    fs.send(msg).await?;
    outcome(id, n, sent, recv_reply(stats, fs, REPLY_TIMEOUT).await?)
}

/// Leaf deltas written before their acks are read: at most this many files...
pub const BATCH_FILES: usize = 256;
/// ...of at most this many bytes in all.
pub const BATCH_BYTES: u64 = 4 << 20;

/// The sender: each file of `batch` (all `described`) as a `LeafDelta`, all written
/// before the first ack is read: one round trip for the batch, and the deltas share
/// compressed blocks. Returns each file's outcome and delta bytes, in order.
pub async fn send_batch(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    stats: &Stats,
    batch: &[Ready],
) -> Result<Vec<(Offered, u64)>, SyncError> {
    let mut sent = Vec::with_capacity(batch.len());
    for r in batch {
        let described = r.described.as_deref().unwrap_or_default();
        let (msg, len) = message(r.update.clone(), &r.read, described).await?;
        fs.queue(msg)?;
        sent.push((r.update.id, described.len(), len));
    }
    fs.flush().await?;
    let mut out = Vec::with_capacity(sent.len());
    for (id, n, len) in sent {
        let reply = recv_reply(stats, fs, REPLY_TIMEOUT).await?;
        out.push((outcome(id, n, len, reply)?, len));
    }
    Ok(out)
}

/// The `LeafDelta` of `update` (the file as `read`) against the leaves the peer
/// `described`, and its delta's length (encoded off the async threads).
async fn message(
    update: FileUpdate,
    read: &Read,
    described: &[u32],
) -> Result<(Message, u64), SyncError> {
    let mut new = vec![0u8; update.size as usize];
    read.file.read_exact_at(&mut new, 0)?;
    let described = described.to_vec();
    let (used, delta) = tokio::task::spawn_blocking(move || {
        let (used, base) = leaves::shared_base(&new, &described);
        crate::delta::encode(&new, &base, LEVEL).map(|d| (used, d))
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("leaf delta task: {e}")))?
    .map_err(|e| SyncError::Protocol(format!("leaf delta: {e}")))?;
    let sent = delta.len() as u64;
    let msg = Message::LeafDelta {
        update,
        used,
        delta,
    };
    Ok((msg, sent))
}

/// How the peer answered the leaf delta of update `id` (`n` leaves described,
/// `sent` delta bytes).
fn outcome(id: u64, n: usize, sent: u64, reply: Message) -> Result<Offered, SyncError> {
    match reply {
        Message::Ack(AckKind::Update(i)) if i == id => Ok(Offered::Acked(1, n, sent)),
        Message::Nack {
            of: AckKind::Update(i),
            reason,
        } if i == id => {
            tracing::debug!(id, ?reason, "the peer refused a leaf delta");
            Ok(Offered::Declined)
        }
        other => Err(SyncError::Protocol(format!(
            "expected the ack of a leaf delta, got {}",
            other.kind()
        ))),
    }
}
