//! A peer's metadata batches, applied exactly once and in crash-safe order: the batch
//! is held durably (`Applier::hold_batch`), each op goes through the gate and the
//! applier, its index entry is written, and the batch is committed: the index flushed,
//! *then* "applied up to" recorded, then the held batch dropped. A daemon killed in
//! mid-batch finishes the held batch at its next start ([`recover`]), before its scan,
//! so that no op of the peer's is taken for a local change.

use super::check::{Checker, Step};
use super::receiver::Receiver;
use super::Stats;
use crate::apply::{Applier, ApplyError, HeldOp, OpState};
use crate::journal::MetaOp;
use crate::net::PeerId;
use crate::vv::VersionVector;
use crate::wire::{AckKind, Message, MetaItem, NackReason};
use std::sync::atomic::Ordering;

/// Applies a batch from `peer` (ops resent after a lost ack are skipped) and answers
/// with the ack of its last op, or the nack of the first op refused.
pub async fn apply_batch(ops: Vec<MetaItem>, r: &Receiver, peer: &PeerId) -> Message {
    let _one = r.lock.lock().await;
    let (check, stats) = (r.check.clone(), r.stats.clone());
    let (bytes, peer) = (peer.to_bytes(), peer.to_string());
    let first = ops.first().map_or(0, |i| i.seq);
    let held: Vec<HeldOp> = ops
        .into_iter()
        .map(|MetaItem { seq, op, vv }| {
            let vv = VersionVector::from_pairs(vv.iter().copied());
            (seq, MetaOp::from(op), vv)
        })
        .collect();
    let res = tokio::task::spawn_blocking(move || {
        let applied = run_batch(&check, &peer, &bytes, &held)?;
        let now = super::stats::now_ms();
        Stats::add(&stats.applied, applied);
        if applied > 0 {
            stats.last_applied_ms.store(now, Ordering::Relaxed);
        }
        Ok::<_, (u64, ApplyError)>(held.last().map_or(0, |h| h.0))
    })
    .await;
    match res {
        Ok(Ok(last)) => Message::Ack(AckKind::Meta(last)),
        Ok(Err((seq, e))) => nack(seq, e.nack_reason()),
        Err(e) => nack(first, NackReason::Io(format!("applier task: {e}"))),
    }
}

fn nack(seq: u64, reason: NackReason) -> Message {
    Message::Nack {
        of: AckKind::Meta(seq),
        reason,
    }
}

/// Holds, applies and commits one batch; the number of ops applied, or the first op
/// refused (committed with the ops before it: a refused op is not tried again).
fn run_batch(
    check: &Checker,
    peer: &str,
    peer_bytes: &[u8],
    ops: &[HeldOp],
) -> Result<u64, (u64, ApplyError)> {
    let applier = &check.applier;
    let upto = applier.applied(peer).map_err(|e| (0, e))?.upto;
    let Some(last) = ops.iter().map(|h| h.0).filter(|s| *s > upto).max() else {
        return Ok(0); // resent after a lost ack
    };
    let marks = applier.hold_batch(peer, ops).map_err(|e| (last, e))?;
    let mut applied = 0;
    for (k, (seq, op, vv)) in ops.iter().enumerate() {
        let mark = |s| marks.set(k, s);
        match gated_op(check, peer, peer_bytes, *seq, op, vv, &mark) {
            Ok(done) => applied += u64::from(done),
            Err(e) => {
                tracing::warn!("cannot apply op #{seq} ({}): {e}", op.kind());
                commit(check, peer, *seq).map_err(|e| (*seq, e))?;
                return Err((*seq, e));
            }
        }
    }
    commit(check, peer, last).map_err(|e| (last, e))?;
    Ok(applied)
}

/// Index entries first, then "applied up to `seq`", then the held batch goes.
fn commit(check: &Checker, peer: &str, seq: u64) -> Result<(), ApplyError> {
    durable_upto(check, peer, seq)?;
    check.applier.release_batch(peer)
}

/// Flushes the index, then records "applied up to `seq`" (which clears a rename's
/// "pending" mark before the next op).
fn durable_upto(check: &Checker, peer: &str, seq: u64) -> Result<(), ApplyError> {
    check.flush_index()?;
    check.applier.applied_upto(peer, seq)
}

/// Finishes what a killed daemon left half done, before the scan can see it: replays
/// the `.verified` updates' index entries and the held metadata batches.
pub fn recover(check: &Checker) -> Result<(), ApplyError> {
    check.record_recovered(&check.applier.recovered());
    check.flush_index()?;
    check.applier.forget_recovered()?;
    for b in check.applier.held_batches()? {
        let Some(last) = b.ops.iter().map(|(h, _)| h.0).max() else {
            check.applier.release_batch(&b.peer)?;
            continue;
        };
        tracing::info!(peer = %b.peer, "finishing a batch of {} ops cut short by the last stop", b.ops.len());
        let node = b.peer.parse::<PeerId>().map(|p| p.to_bytes());
        let node = node.unwrap_or_default();
        let upto = check.applier.applied(&b.peer)?.upto;
        for ((seq, op, vv), state) in b.ops.iter().filter(|(h, _)| h.0 > upto) {
            if let Err(e) = finish_op(check, &b.peer, &node, (*seq, op, vv), *state) {
                tracing::warn!("op #{seq} ({}) of the cut batch: {e}", op.kind());
            }
        }
        commit(check, &b.peer, last)?;
    }
    Ok(())
}

/// Takes one op of a cut batch from where it got to.
fn finish_op(
    check: &Checker,
    peer: &str,
    peer_bytes: &[u8],
    (seq, op, vv): (u64, &MetaOp, &VersionVector),
    state: OpState,
) -> Result<(), ApplyError> {
    match state {
        OpState::Skipped => Ok(()),
        OpState::Applied => check.after_op(op, vv),
        OpState::RemovedFrom => check.after_op(&source_gone(op), vv),
        OpState::Started => {
            check.applier.apply_meta_once(peer, seq, op)?;
            check.after_op(op, vv)
        }
        OpState::NotReached => {
            gated_op(check, peer, peer_bytes, seq, op, vv, &|_| Ok(())).map(|_| ())
        }
    }
}

/// The unlink of a rename's source (the rest of the rename lost here).
fn source_gone(op: &MetaOp) -> MetaOp {
    let path = match op {
        MetaOp::Rename { from, .. } => from.clone(),
        _ => unreachable!("only a rename removes its source"),
    };
    MetaOp::Unlink {
        path,
        file: 0,
        last_link: true,
    }
}

/// One op through the gate, exactly once: `Ok(true)` if applied now. Its index entry
/// is written (not flushed); a rename is committed at once (its "pending" mark allows
/// one rename at a time). `mark` records how far it got, for [`recover`].
fn gated_op(
    check: &Checker,
    peer: &str,
    peer_bytes: &[u8],
    seq: u64,
    op: &MetaOp,
    vv: &VersionVector,
    mark: &dyn Fn(OpState) -> Result<(), ApplyError>,
) -> Result<bool, ApplyError> {
    let applier: &Applier = &check.applier;
    let rec = applier.applied(peer)?;
    if seq <= rec.upto {
        return Ok(false); // resent after a lost ack
    }
    if let MetaOp::Rename { from, to, .. } = op {
        // Without its source (deleted here meanwhile) a rename cannot make `to`; unless
        // it is the one a crash interrupted, the peer sends `to` whole instead.
        let interrupted = rec.pending.is_some_and(|(p, _)| p == seq);
        if !interrupted && super::fold::look(&*check.root, from).is_none() {
            tracing::info!("rename {from} -> {to}: no {from} here; the peer sends {to} whole");
            return Err(ApplyError::BadRequest(format!(
                "{:?}",
                NackReason::MissingFile
            )));
        }
    }
    // No local create, rename or unlink between the decision and the op (see fs::gate).
    let _names = applier.hold_names();
    let step = check.before_op(op, vv, peer_bytes)?;
    tracing::debug!(seq, ?op, ?vv, ?step, "peer op");
    match step {
        Step::Skip => {
            tracing::info!("op #{seq} ({}) skipped: our version is newer", op.kind());
            mark(OpState::Skipped)?;
            Ok(false)
        }
        Step::Refuse(r) => Err(ApplyError::BadRequest(format!("{r:?}"))),
        Step::RemoveFrom => {
            if !matches!(op, MetaOp::Rename { .. }) {
                return Ok(false);
            }
            let gone = source_gone(op);
            let doomed = check.doomed(&gone);
            applier.apply_meta(&gone)?;
            mark(OpState::RemovedFrom)?;
            check.forget_freed(doomed)?;
            check.after_op(&gone, vv)?;
            Ok(true)
        }
        Step::Apply => {
            mark(OpState::Started)?;
            let doomed = check.doomed(op);
            let done = applier.apply_meta_once(peer, seq, op)?;
            mark(OpState::Applied)?;
            check.forget_freed(doomed)?;
            check.after_op(op, vv)?;
            if matches!(op, MetaOp::Rename { .. }) {
                durable_upto(check, peer, seq)?;
            }
            Ok(done)
        }
    }
}
