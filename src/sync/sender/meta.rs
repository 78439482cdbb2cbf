//! The sender's metadata ops: when a snapshot's ops may go ([`meta_due`]), which of
//! them go (coalesced, narrowed to what still holds here), in batches with their
//! versions, and what the peer's acks and refusals clear.

use super::{fold, Origin, Sender, State, Stream, CREATE_HOLD, MAX_DELAY, META_GRACE};
use crate::journal::{FileId, MetaOp, Snapshot};
use crate::path::RelPath;
use crate::sync::coalesce::coalesce;
use crate::sync::sender::recv_reply;
use crate::sync::{Stats, SyncError, REPLY_TIMEOUT};
use crate::vv::VersionVector;
use crate::wire::{AckKind, FramedStream, Message, MetaItem, NackReason};
use std::collections::HashSet;
use std::os::fd::OwnedFd;
use tokio::time::Instant;

/// Metadata operations per `MetaBatch`.
const META_BATCH: usize = 512;

/// True when the snapshot's metadata ops (if any) may go now: the log has been quiet
/// for [`META_GRACE`] and no file they create is still being written (open for write
/// through the mount, per `open`, written or not yet, or closed just now with data
/// pending; a temp file renamed over its target once written folds into an update of
/// the target, see `journal::cancel`, but not once its `Create` went), or ops have
/// waited [`MAX_DELAY`] ([`CREATE_HOLD`] while such a file is open).
pub(super) fn meta_due(st: &mut State, snap: &Snapshot, open: &dyn Fn(FileId) -> bool) -> bool {
    let Some(&(newest, _)) = snap.meta.last() else {
        st.meta_seen = None;
        return true;
    };
    let now = Instant::now();
    let (seq, changed, since) = st.meta_seen.get_or_insert((newest, now, now));
    if *seq != newest {
        (*seq, *changed) = (newest, now);
    }
    let (changed, since) = (*changed, *since);
    let writing = snap.meta.iter().any(|(_, op)| match op {
        // open but not written yet: `cat src > tmp` creates tmp, then reads src first
        MetaOp::Create { file, .. } => {
            open(*file) || (snap.files.contains_key(file) && st.quiet.closed_lately(*file))
        }
        _ => false,
    });
    let cap = if writing { CREATE_HOLD } else { MAX_DELAY };
    (now - changed >= META_GRACE && !writing) || now - since >= cap
}

/// The paths of the files with a pending data update.
pub(super) fn pending_paths(snap: &Snapshot) -> HashSet<RelPath> {
    snap.files.values().map(|e| e.path.clone()).collect()
}

/// Sends the snapshot's ops (coalesced) in batches; false if the peer refused one (it is
/// dropped as a conflict) or the journal cancelled some of them since the snapshot (a
/// fresh one is needed). Ops coalesced away are acknowledged in the journal too.
pub(super) async fn send_meta(
    s: &Sender,
    fs: &mut Stream,
    snap: &Snapshot,
) -> Result<bool, SyncError> {
    let last = snap.meta.last().map(|(seq, _)| *seq).unwrap_or(0);
    // Before anything goes out: the journal must no longer drop what we send.
    if s.journal.mark_sent(last) != snap.meta.len() {
        return Ok(false);
    }
    let mut ops = coalesce(&snap.meta, &pending_paths(snap));
    ops.retain(|(_, op)| !stale_truncate(&s.root, op) && !stale_unlink(s, op));
    crate::sync::ignored::drop_ops(s, &mut ops);
    let ops: Vec<(u64, MetaOp)> = ops
        .into_iter()
        .filter_map(|(seq, op)| narrow(s, seq, op))
        .collect();
    let sent: HashSet<u64> = ops.iter().map(|(seq, _)| *seq).collect();
    let unsent = snap.meta.iter().map(|(seq, _)| *seq);
    s.journal
        .drop_unsent(unsent.filter(|seq| !sent.contains(seq)).collect())?;
    Stats::add(&s.stats.meta_acked, (snap.meta.len() - ops.len()) as u64);
    for chunk in ops.chunks(META_BATCH) {
        let mut items = Vec::with_capacity(chunk.len());
        for (seq, op) in chunk {
            let vv = version_of(s, *seq, op)?;
            tracing::debug!(seq, ?op, ?vv, "op sent");
            items.push(MetaItem {
                seq: *seq,
                op: op.clone().into(),
                vv: vv.pairs().to_vec(),
            });
        }
        // The versions leave only once durable here: a kill must not leave our index
        // behind what the peer holds (we would take our own version, echoed back, for
        // the peer's, and drop our pending ops as beaten by it).
        s.journal.index().flush()?;
        fs.send(Message::MetaBatch(items)).await?;
        let sent = (chunk[0].0, chunk[chunk.len() - 1].0);
        match meta_reply(&s.stats, fs, sent).await? {
            Ok(upto) => {
                acked(s, upto)?;
                Stats::add(&s.stats.meta_acked, chunk.len() as u64);
            }
            Err((seq, reason)) => {
                tracing::warn!("peer could not apply metadata op #{seq}: {reason:?}; dropping it");
                s.stats.error(format!("peer refused op #{seq}: {reason:?}"));
                Stats::add(&s.stats.conflicts, 1);
                if let Some((_, op)) = chunk.iter().find(|(n, _)| *n == seq) {
                    send_target_whole(s, op);
                }
                acked(s, seq)?;
                return Ok(false);
            }
        }
    }
    acked(s, last)?;
    Ok(true)
}

/// A rename or link the peer could not apply (it lacks the source: deleted there
/// meanwhile): what it made here still goes, as a new file.
fn send_target_whole(s: &Sender, op: &MetaOp) {
    let (MetaOp::Rename { to, .. } | MetaOp::Link { to, .. }) = op else {
        return;
    };
    if let Some((crate::journal::index::Kind::File, st)) = fold::look(&*s.root, to) {
        tracing::info!("{to}: the peer could not make it from its source; sending it whole");
        if let Err(e) = s.journal.want_whole(st.st_ino, to, st.st_size as u64) {
            tracing::warn!("{to}: cannot queue it whole: {e}");
        }
    }
}

/// The peer has every op up to `seq`: the journal and the op versions let them go.
fn acked(s: &Sender, seq: u64) -> Result<(), SyncError> {
    s.journal.ack_meta(seq)?;
    s.journal.index().forget_op_versions(seq)?;
    Ok(())
}

/// The version of local op `seq`: folded into the index the first time it is sent,
/// the same one again when a lost link makes it go again.
fn version_of(s: &Sender, seq: u64, op: &MetaOp) -> Result<VersionVector, SyncError> {
    let ix = s.journal.index();
    if let Some(vv) = ix.op_version(seq)? {
        return Ok(vv);
    }
    let vv = fold::op(ix, &*s.root, op, Origin::Local(s.cfg.node))?;
    ix.set_op_version(seq, &vv)?;
    Ok(vv)
}

/// A truncate of a file no longer at that path (renamed, or set aside as a conflict
/// copy because the peer's version won): not sent, since it would cut the file the peer
/// now has there. The file's update carries its size wherever it went.
fn stale_truncate(root: &OwnedFd, op: &MetaOp) -> bool {
    let MetaOp::Truncate { path, file, .. } = op else {
        return false;
    };
    fold::look(root, path).is_none_or(|(_, st)| st.st_ino != *file)
}

/// A local op recorded before the receiver took the peer's version of its target path
/// lost to that version (see `sync::verdict`): it is not sent, since with today's
/// version it would win over the version that beat it. A rename keeps its other half:
/// the source is gone here, so it goes on the peer too.
fn narrow(s: &Sender, seq: u64, op: MetaOp) -> Option<(u64, MetaOp)> {
    let ix = s.journal.index();
    let entry = |p: &RelPath| ix.get(p).ok().flatten();
    let taken = |p: &RelPath| entry(p).is_some_and(|e| e.taken_at > seq);
    match &op {
        MetaOp::Rename { from, to, flags } if *flags == 0 && taken(to) && taken(from) => {
            tracing::info!("rename {from} -> {to}: the peer's versions of both won meanwhile");
            None
        }
        MetaOp::Rename { from, to, flags } if *flags == 0 && taken(to) => {
            tracing::info!(
                "rename {from} -> {to}: the peer's {to} won meanwhile; only {from} goes"
            );
            let gone = MetaOp::Unlink {
                path: from.clone(),
                file: 0,
                last_link: true,
            };
            Some((seq, gone))
        }
        MetaOp::Rename { from, to, flags } if *flags == 0 && taken(from) => {
            // The peer's version lives at `from` now; what we moved to `to` is new
            // there: it goes as a new file.
            tracing::info!(
                "rename {from} -> {to}: the peer's {from} won meanwhile; {to} goes whole"
            );
            send_target_whole(s, &op);
            None
        }
        MetaOp::Unlink { path, .. } | MetaOp::Rmdir { path }
            if entry(path).is_some_and(|e| e.taken_at > seq && e.deleted)
                && fold::look(&*s.root, path).is_none() =>
        {
            // The peer's version that won here was a delete too: ours goes all the same.
            // Its version descends from every version of the path we sent (a create
            // the peer may not have applied yet), so it deletes that there too.
            Some((seq, op))
        }
        _ if fold::targets(&op).into_iter().any(taken) => {
            tracing::info!(
                "op #{seq} ({}): the peer's version won meanwhile; not sent",
                op.kind()
            );
            None
        }
        _ => Some((seq, op)),
    }
}

/// An unlink of a name where a file the journal does not know now lives: the peer's
/// version came back there meanwhile (its edit beat our delete, see `sync::verdict`), so
/// the unlink would delete the winner on the peer. A file created here again is tracked.
fn stale_unlink(s: &Sender, op: &MetaOp) -> bool {
    let MetaOp::Unlink { path, file, .. } = op else {
        return false;
    };
    fold::look(&*s.root, path)
        .is_some_and(|(_, st)| st.st_ino != *file && s.journal.entry(st.st_ino).is_none())
}

/// The peer's answer to a batch of ops `sent = (first, last)`: `Ok(upto)` or the op it
/// refused. Acks and nacks naming ops outside the batch (never sent) are ignored.
pub(super) async fn meta_reply<S>(
    stats: &Stats,
    fs: &mut FramedStream<S>,
    sent: (u64, u64),
) -> Result<Result<u64, (u64, NackReason)>, SyncError>
where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    loop {
        let (seq, nack) = match recv_reply(stats, fs, REPLY_TIMEOUT).await? {
            Message::Ack(AckKind::Meta(upto)) => (upto, None),
            Message::Nack {
                of: AckKind::Meta(seq),
                reason,
            } => (seq, Some(reason)),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected a meta ack, got {}",
                    other.kind()
                )))
            }
        };
        if seq < sent.0 || seq > sent.1 {
            tracing::warn!(
                "peer acked op #{seq}, not in the batch sent (#{}..#{}): ignored",
                sent.0,
                sent.1
            );
            continue;
        }
        return Ok(match nack {
            None => Ok(seq),
            Some(reason) => Err((seq, reason)),
        });
    }
}
