//! Small files the receiver holds another version of (first pairing, a file edited on
//! both sides while apart): in its `IndexAck` the receiver describes its version by the
//! short hashes of its leaves; the sender answers with one `LeafDelta`, the new content
//! as a delta against the leaves both hold ([`crate::chunks::leaves`]). No rounds: a
//! batch of index entries costs one round trip whatever the number of files. The
//! receiver applies the result as an ordinary whole-file update through the checker.

use super::chunked::{Offered, Read, DESCRIBED};
use super::link::Duplex;
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
    let mut new = vec![0u8; update.size as usize];
    read.file.read_exact_at(&mut new, 0)?;
    let (used, base) = leaves::shared_base(&new, described);
    let delta = crate::delta::encode(&new, &base, LEVEL)
        .map_err(|e| SyncError::Protocol(format!("leaf delta: {e}")))?;
    let (id, sent) = (update.id, delta.len() as u64);
    fs.send(Message::LeafDelta {
        update,
        used,
        delta,
    })
    .await?;
    match super::sender::recv_reply(stats, fs, REPLY_TIMEOUT).await? {
        Message::Ack(AckKind::Update(i)) if i == id => Ok(Offered::Acked(1, described.len(), sent)),
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
