//! Small files the receiver holds another version of (first pairing, a file edited on
//! both sides while apart): in its `IndexAck` the receiver describes its version by the
//! short hashes of its leaves; the sender answers with one `LeafDelta`, the new content
//! as a delta against the leaves both hold ([`crate::chunks::leaves`]). No rounds, and
//! the sender writes a batch of them before reading their acks ([`write_batch`]): a
//! batch of files costs one round trip whatever their number. The receiver applies
//! each as an ordinary whole-file update through the checker.

use super::chunked::{Offered, Read, Ready, DESCRIBED};
use super::link::Duplex;
use super::sender::recv_reply;
use super::{
    unless_stalled, Stats, SyncError, MIN_APPLY_RATE, MIN_RATE, REPLY_TIMEOUT, WRITE_STALL,
};
use crate::chunks::leaves;
use crate::path::RelPath;
use crate::wire::{AckKind, FileUpdate, FramedStream, Message};
use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

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

/// Leaf deltas written before their acks are read: at most this many files...
pub const BATCH_FILES: usize = 256;
/// ...of at most this many bytes in all.
pub const BATCH_BYTES: u64 = 4 << 20;
/// Time allowed per file for the receiver to stage, sync and index it.
const APPLY_EACH: Duration = Duration::from_millis(100);

/// A leaf delta written: which file of the batch, and what its answer will name.
pub struct Sent {
    /// Its place in the batch.
    pub at: usize,
    id: u64,
    leaves: usize,
    /// Delta bytes.
    pub len: u64,
}

/// The sender: writes each file of `batch` (all `described`) as a `LeafDelta`, all
/// before the first ack is read ([`answer`]): one round trip for the batch, and the
/// deltas share compressed blocks. A file that can no longer be read whole (changed
/// since) is left out. Returns what was written, in order, and how long the first
/// answer may take: the receiver holds its answers while more input waits, so they
/// may come only once it has applied them all.
pub async fn write_batch(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    batch: &[Ready],
) -> Result<(Vec<Sent>, Duration), SyncError> {
    let mut sent = Vec::with_capacity(batch.len());
    let (mut bytes, mut sizes) = (0, 0);
    for (at, r) in batch.iter().enumerate() {
        let described = r.described.as_deref().unwrap_or_default();
        let Some((msg, len)) = message(r.update.clone(), &r.read, described).await? else {
            continue;
        };
        fs.queue(msg)?;
        (bytes, sizes) = (bytes + len, sizes + r.update.size);
        let (id, leaves) = (r.update.id, described.len());
        sent.push(Sent {
            at,
            id,
            leaves,
            len,
        });
    }
    let progress = fs.progress();
    unless_stalled(|| progress.last(), WRITE_STALL, async {
        Ok(fs.flush().await?)
    })
    .await?;
    let files = APPLY_EACH * sent.len() as u32;
    let first =
        REPLY_TIMEOUT + files + Duration::from_secs(bytes / MIN_RATE + sizes / MIN_APPLY_RATE);
    Ok((sent, first))
}

/// The sender: the peer's answer to the leaf delta `s`, within `limit`.
pub async fn answer(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    stats: &Stats,
    s: &Sent,
    limit: Duration,
) -> Result<Offered, SyncError> {
    outcome(s.id, s.leaves, s.len, recv_reply(stats, fs, limit).await?)
}

/// The `LeafDelta` of `update` (the file as `read`) against the leaves the peer
/// `described`, and its delta's length (encoded off the async threads); none if the
/// file can no longer be read whole.
async fn message(
    update: FileUpdate,
    read: &Read,
    described: &[u32],
) -> Result<Option<(Message, u64)>, SyncError> {
    let mut new = vec![0u8; update.size as usize];
    if let Err(e) = read.file.read_exact_at(&mut new, 0) {
        tracing::debug!(path = %update.path, "not sent as a leaf delta: {e}");
        return Ok(None); // truncated since it was read: it goes as an ordinary update
    }
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
    Ok(Some((msg, sent)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NackReason, WireTime};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// File `name` of `dir` holding `text`, read for a leaf delta as update `id`.
    fn ready(dir: &std::path::Path, name: &str, text: &str, id: u64) -> Ready {
        std::fs::write(dir.join(name), text).unwrap();
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let root = crate::sys::openat(&crate::sys::AtCwd, dir.as_os_str(), flags, 0).unwrap();
        let path = RelPath::from_bytes(name.as_bytes()).unwrap();
        let read = super::super::chunked::read_for_offer(&root, &path, DESCRIBED);
        let read = read.unwrap().unwrap();
        let update = FileUpdate {
            id,
            file: id,
            path: path.clone(),
            base: None,
            size: text.len() as u64,
            mode: 0o644,
            mtime: WireTime { secs: 0, nanos: 0 },
            ranges: vec![],
            hash: read.hash,
            vv: vec![],
        };
        let described = Some(leaves::describe(text.as_bytes()));
        Ready {
            version: 1,
            update,
            read,
            described,
            from: vec![],
        }
    }

    #[tokio::test]
    async fn a_batch_is_answered_in_order_and_skips_a_file_cut_since_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = |i: usize| "some text to describe\n".repeat(20 + i);
        let batch: Vec<Ready> = (0..4)
            .map(|i| ready(dir.path(), &format!("f{i}"), &text(i), 10 + i as u64))
            .collect();
        std::fs::write(dir.path().join("f1"), "cut").unwrap(); // after it was read
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut ours = FramedStream::new(Box::new(a.compat()) as Box<dyn Duplex>);
        let mut peer = FramedStream::new(b.compat());
        let (sent, _) = write_batch(&mut ours, &batch).await.unwrap();
        let at: Vec<usize> = sent.iter().map(|s| s.at).collect();
        assert_eq!(at, [0, 2, 3], "f1 left out");
        // every delta arrives before any answer is read
        let mut ids = Vec::new();
        for _ in 0..3 {
            match peer.recv().await.unwrap().unwrap() {
                Message::LeafDelta { update, .. } => ids.push(update.id),
                m => panic!("expected a leaf delta, got {}", m.kind()),
            }
        }
        assert_eq!(ids, [10, 12, 13]);
        let refused = Message::Nack {
            of: AckKind::Update(12),
            reason: NackReason::UnknownBase,
        };
        for m in [Message::Ack(AckKind::Update(10)), refused] {
            peer.queue(m).unwrap();
        }
        peer.queue(Message::Ack(AckKind::Update(10))).unwrap(); // not f3's
        peer.flush().await.unwrap();
        let stats = Stats::default();
        let mut got = Vec::new();
        for s in &sent[..2] {
            got.push(answer(&mut ours, &stats, s, REPLY_TIMEOUT).await.unwrap());
        }
        assert!(matches!(got[0], Offered::Acked(..)), "f0 acked");
        assert_eq!(got[1], Offered::Declined, "f2 refused: it goes whole");
        let wrong = answer(&mut ours, &stats, &sent[2], REPLY_TIMEOUT).await;
        assert!(
            matches!(wrong, Err(SyncError::Protocol(_))),
            "an ack of another update"
        );
    }
}
