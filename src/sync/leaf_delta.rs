//! Small files the receiver holds another version of (first pairing, a file edited on
//! both sides while apart): in its `IndexAck` the receiver describes its version by the
//! short hashes of its leaves; the sender answers with one `LeafDelta`, the new content
//! as a delta against the leaves both hold ([`crate::chunks::leaves`]). No rounds, and
//! the sender writes a batch of them before reading their acks ([`write_batch`]): a
//! batch of files costs one round trip whatever their number. When enough files of a
//! batch lack some of the described leaves (an edit inside one), the sender first asks
//! for the hashes of those leaves' pieces (`LeafAsk`, `LeafPieces`;
//! [`crate::chunks::pieces`]), and the pieces it finds join the base: one round trip
//! more, and the edit costs about itself instead of its leaf. The receiver applies
//! each as an ordinary whole-file update through the checker.

use super::chunked::{Offered, Ready, DESCRIBED};
use super::link::Duplex;
use super::sender::recv_reply;
use super::{
    unless_stalled, Stats, SyncError, MIN_APPLY_RATE, MIN_RATE, REPLY_TIMEOUT, WRITE_STALL,
};
use crate::chunks::{leaves, pieces};
use crate::path::RelPath;
use crate::wire::{content_id, AckKind, FileUpdate, FramedStream, IndexItem, ItemKind, Message};
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

/// The receiver: a `LeafPieces` answer to a `LeafAsk` about our version at `path`
/// (empty if it is no longer a small file with those leaves).
pub fn pieces(root: &impl AsRawFd, path: &RelPath, asked: &[u16]) -> Message {
    let described = read_small(root, path).and_then(|b| pieces::describe(&b, asked));
    Message::LeafPieces(described.unwrap_or_default())
}

/// What makes a `LeafDelta`'s base: the described leaves marked in `used`, and the
/// pieces marked in `found` of the leaves `asked` about.
#[derive(Clone, Copy, Debug)]
pub struct Marked<'a> {
    /// One bit per described leaf.
    pub used: &'a [u8],
    /// The leaves asked about.
    pub asked: &'a [u16],
    /// One bit per piece of those leaves.
    pub found: &'a [u8],
}

/// The receiver: the `size` bytes a `LeafDelta` (or, `bare`, a `LeafPatch`) makes
/// from our version at `path`.
pub fn rebuild(
    root: &impl AsRawFd,
    path: &RelPath,
    marked: Marked,
    (delta, bare): (&[u8], bool),
    size: u64,
) -> Result<Vec<u8>, String> {
    let old = read_small(root, path).ok_or("no small file here to build on")?;
    let base = pieces::base_of(&old, marked.used, marked.asked, marked.found)
        .ok_or("the leaves and pieces marked are not ours")?;
    let decode = match bare {
        true => crate::delta::decode_bare,
        false => crate::delta::decode,
    };
    decode(delta, &base, size as usize).map_err(|e| e.to_string())
}

/// True if `u` is the `Index` entry `item` we sent (same path, size, mode, mtime and
/// content; the version may be newer: an adopted entry gets one when it is sent): its
/// leaf delta goes as a `LeafPatch`, without the rest of the header.
pub fn is_indexed(item: &IndexItem, u: &FileUpdate) -> bool {
    item.path == u.path
        && item.kind == ItemKind::File
        && !item.deleted
        && (item.size, item.mode, item.mtime) == (u.size, u.mode, u.mtime)
        && item.hash == content_id(&u.hash)
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

/// Files of a batch that must ask about leaves for the round trip to pay: each saves
/// about a leaf's literals (100-150 B) less its pieces' hashes; the round trip costs
/// about 200 B of packets.
pub const ASK_MIN_FILES: usize = 4;

/// One file of a batch as read: its content, the peer's leaves of its version, and
/// the ones to ask about.
struct Plan {
    new: Vec<u8>,
    described: Vec<u32>,
    asked: Vec<u16>,
}

/// The sender: writes each file of `batch` (all `described`) as a `LeafDelta`, all
/// before the first ack is read ([`answer`]): one round trip for the batch, and the
/// deltas share compressed blocks. When enough of them lack some of the peer's leaves
/// (an edit inside one), a `LeafAsk` for each goes first, and their answers are read
/// before the deltas are written ([`ask`]): one round trip more. A file that can no
/// longer be read whole (changed since) is left out. Returns what was written, in
/// order, and how long the first answer may take: the receiver holds its answers while
/// more input waits, so they may come only once it has applied them all.
pub async fn write_batch(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    stats: &Stats,
    batch: &[Ready],
) -> Result<(Vec<Sent>, Duration), SyncError> {
    let mut plans = plan(batch).await?;
    let pieces = ask(fs, stats, batch, &mut plans).await?;
    let mut sent = Vec::with_capacity(batch.len());
    let (mut bytes, mut sizes) = (0, 0);
    for (at, (plan, pieces)) in plans.into_iter().zip(pieces).enumerate() {
        let Some(plan) = plan else {
            continue;
        };
        let (r, leaves) = (&batch[at], plan.described.len());
        let (msg, len) = message(r.update.clone(), r.patch, plan, pieces).await?;
        fs.queue(msg)?;
        (bytes, sizes) = (bytes + len, sizes + r.update.size);
        let id = r.update.id;
        sent.push(Sent {
            at,
            id,
            leaves,
            len,
        });
    }
    flush(fs).await?;
    let files = APPLY_EACH * sent.len() as u32;
    let first =
        REPLY_TIMEOUT + files + Duration::from_secs(bytes / MIN_RATE + sizes / MIN_APPLY_RATE);
    Ok((sent, first))
}

/// Writes what is queued, unless the link stalls.
async fn flush(fs: &mut FramedStream<Box<dyn Duplex>>) -> Result<(), SyncError> {
    let progress = fs.progress();
    unless_stalled(|| progress.last(), WRITE_STALL, async {
        Ok(fs.flush().await?)
    })
    .await
}

/// Reads each file of `batch` and picks the peer's leaves to ask about (off the async
/// threads); none for a file that can no longer be read whole.
async fn plan(batch: &[Ready]) -> Result<Vec<Option<Plan>>, SyncError> {
    let read: Vec<Option<(Vec<u8>, Vec<u32>)>> = batch
        .iter()
        .map(|r| {
            let mut new = vec![0u8; r.update.size as usize];
            if let Err(e) = r.read.file.read_exact_at(&mut new, 0) {
                tracing::debug!(path = %r.update.path, "not sent as a leaf delta: {e}");
                return None; // truncated since it was read: it goes as an ordinary update
            }
            Some((new, r.described.clone().unwrap_or_default()))
        })
        .collect();
    let task = tokio::task::spawn_blocking(move || {
        let plan = |(new, described): (Vec<u8>, Vec<u32>)| {
            let asked = pieces::to_ask(&leaves::held(&new, &described));
            Plan {
                new,
                described,
                asked,
            }
        };
        read.into_iter().map(|r| r.map(plan)).collect()
    });
    task.await
        .map_err(|e| SyncError::Protocol(format!("leaf delta task: {e}")))
}

/// Asks the peer about the leaves `plans` name, if at least [`ASK_MIN_FILES`] files
/// name some (otherwise asks nothing), and returns each file's piece hashes (empty:
/// none). A file whose answer is empty (its version changed) asks about nothing.
async fn ask(
    fs: &mut FramedStream<Box<dyn Duplex>>,
    stats: &Stats,
    batch: &[Ready],
    plans: &mut [Option<Plan>],
) -> Result<Vec<Vec<Vec<u32>>>, SyncError> {
    let mut answers = vec![Vec::new(); plans.len()];
    let asking = |p: &Option<Plan>| p.as_ref().is_some_and(|p| !p.asked.is_empty());
    if plans.iter().filter(|p| asking(p)).count() < ASK_MIN_FILES {
        plans.iter_mut().flatten().for_each(|p| p.asked.clear());
        return Ok(answers);
    }
    for (r, plan) in batch.iter().zip(plans.iter()).filter(|(_, p)| asking(p)) {
        let leaves = plan.as_ref().map(|p| p.asked.clone()).unwrap_or_default();
        let path = r.update.path.clone();
        fs.queue(Message::LeafAsk { path, leaves })?;
    }
    flush(fs).await?;
    for (at, plan) in plans.iter_mut().enumerate() {
        let Some(plan) = plan.as_mut().filter(|p| !p.asked.is_empty()) else {
            continue;
        };
        match recv_reply(stats, fs, REPLY_TIMEOUT).await? {
            Message::LeafPieces(lists) if lists.len() == plan.asked.len() => answers[at] = lists,
            Message::LeafPieces(lists) if lists.is_empty() => plan.asked.clear(),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected the pieces of {} leaves, got {}",
                    plan.asked.len(),
                    other.kind()
                )))
            }
        }
    }
    Ok(answers)
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

/// The `LeafDelta` of `update` (its content and the peer's description in `plan`,
/// with the hashes of the pieces of the leaves asked about), or its `LeafPatch` if
/// `patch` (`update` is the entry the peer wanted: [`is_indexed`]), and its delta's
/// length (encoded off the async threads).
async fn message(
    update: FileUpdate,
    patch: bool,
    plan: Plan,
    pieces: Vec<Vec<u32>>,
) -> Result<(Message, u64), SyncError> {
    let task = tokio::task::spawn_blocking(move || {
        let Plan {
            new,
            described,
            asked,
        } = plan;
        let (used, found, base) = pieces::shared_base(&new, &described, &asked, &pieces);
        let encode = match patch {
            true => crate::delta::encode_bare,
            false => crate::delta::encode,
        };
        encode(&new, &base, LEVEL).map(|d| (used, asked, found, d))
    });
    let (used, asked, found, delta) = task
        .await
        .map_err(|e| SyncError::Protocol(format!("leaf delta task: {e}")))?
        .map_err(|e| SyncError::Protocol(format!("leaf delta: {e}")))?;
    let sent = delta.len() as u64;
    let msg = match patch {
        true => Message::LeafPatch {
            id: update.id,
            path: update.path,
            used,
            delta,
            asked,
            found,
            vv: update.vv,
        },
        false => Message::LeafDelta {
            update,
            used,
            delta,
            asked,
            found,
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NackReason, WireTime};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// File `name` of `dir` holding `text`, read for a leaf delta as update `id`, the
    /// peer's version described as `text` too.
    fn ready(dir: &std::path::Path, name: &str, text: &str, id: u64) -> Ready {
        ready_against(dir, name, text, text, id)
    }

    /// [`ready`], the peer's version described as `theirs`.
    fn ready_against(
        dir: &std::path::Path,
        name: &str,
        text: &str,
        theirs: &str,
        id: u64,
    ) -> Ready {
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
        let described = Some(leaves::describe(theirs.as_bytes()));
        Ready {
            version: 1,
            update,
            read,
            described,
            from: vec![],
            patch: false,
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
        let (sent, _) = write_batch(&mut ours, &Stats::default(), &batch)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_file_as_indexed_goes_as_a_patch_without_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = "some text to describe\n".repeat(60);
        let text = theirs.replacen("describe", "describe, edited", 30);
        let mut r = ready_against(dir.path(), "f", &text, &theirs, 5);
        let item = IndexItem {
            path: r.update.path.clone(),
            kind: ItemKind::File,
            size: r.update.size,
            mtime: r.update.mtime,
            mode: r.update.mode,
            hash: content_id(&r.update.hash),
            target: vec![],
            vv: vec![],
            deleted: false,
        };
        assert!(is_indexed(&item, &r.update), "the version may be newer");
        let touched = IndexItem {
            mtime: WireTime { secs: 1, nanos: 0 },
            ..item.clone()
        };
        assert!(!is_indexed(&touched, &r.update), "another mtime");
        r.patch = true;
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut ours = FramedStream::new(Box::new(a.compat()) as Box<dyn Duplex>);
        let mut peer = FramedStream::new(b.compat());
        write_batch(&mut ours, &Stats::default(), &[r])
            .await
            .unwrap();
        let Message::LeafPatch {
            id,
            path,
            used,
            delta,
            asked,
            found,
            ..
        } = peer.recv().await.unwrap().unwrap()
        else {
            panic!("expected a leaf patch")
        };
        assert_eq!((id, path.to_string()), (5, "f".to_string()));
        let base = pieces::base_of(theirs.as_bytes(), &used, &asked, &found).unwrap();
        let got = crate::delta::decode_bare(&delta, &base, text.len()).unwrap();
        assert_eq!(got, text.as_bytes());
    }

    /// Source-like text of `lines` lines.
    fn code(lines: u32) -> String {
        let line = |i: u32| format!("    let v{i} = table.get({}).map(|x| x * {i});\n", i * 37);
        (0..lines).map(line).collect()
    }

    #[tokio::test]
    async fn files_edited_inside_a_leaf_ask_for_its_pieces_before_their_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let old = code(200);
        let edit = |i: usize| {
            let at = old.len() / 3 + 500 * i;
            format!("{} // edit {i}{}", &old[..at], &old[at..])
        };
        let n = ASK_MIN_FILES;
        let batch: Vec<Ready> = (0..n)
            .map(|i| ready_against(dir.path(), &format!("f{i}"), &edit(i), &old, 10 + i as u64))
            .collect();
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut ours = FramedStream::new(Box::new(a.compat()) as Box<dyn Duplex>);
        let mut peer = FramedStream::new(b.compat());
        let theirs = async {
            let mut asked = Vec::new();
            for _ in 0..n {
                match peer.recv().await.unwrap().unwrap() {
                    Message::LeafAsk { leaves, .. } => {
                        let hashes = pieces::describe(old.as_bytes(), &leaves).unwrap();
                        peer.queue(Message::LeafPieces(hashes)).unwrap();
                        asked.push(leaves);
                    }
                    m => panic!("expected a leaf ask, got {}", m.kind()),
                }
            }
            peer.flush().await.unwrap();
            let mut built = Vec::new();
            for _ in 0..n {
                let Message::LeafDelta {
                    update,
                    used,
                    delta,
                    asked,
                    found,
                } = peer.recv().await.unwrap().unwrap()
                else {
                    panic!("expected a leaf delta")
                };
                let base = pieces::base_of(old.as_bytes(), &used, &asked, &found).unwrap();
                let got = crate::delta::decode(&delta, &base, update.size as usize).unwrap();
                built.push((
                    String::from_utf8(got).unwrap(),
                    delta.len(),
                    !found.is_empty(),
                ));
            }
            (asked, built)
        };
        let stats = Stats::default();
        let (written, (asked, built)) =
            tokio::join!(write_batch(&mut ours, &stats, &batch), theirs);
        assert_eq!(written.unwrap().0.len(), n);
        assert!(asked.iter().all(|a| !a.is_empty()));
        for (i, (text, len, pieces)) in built.into_iter().enumerate() {
            assert_eq!(text, edit(i), "file {i} rebuilt from our leaves and pieces");
            assert!(pieces, "file {i} marked pieces");
            assert!(len < 100, "file {i}: {len} B of delta for 10 B inserted");
        }
    }
}
