//! The syncer's side of `.syncfsignore` (see [`crate::ignores`]): the sender re-reads
//! the rules each round and queues what they no longer ignore, and leaves out files,
//! ops and index entries of paths they match (journaled before the rules changed);
//! the receiver does not apply a peer's changes to them.

use super::check::Step;
use super::fold;
use super::sender::Sender;
use super::SyncError;
use crate::ignores::{local, Ignores, IGNORE_FILE};
use crate::journal::index::Kind;
use crate::journal::{MetaOp, Snapshot};
use crate::path::RelPath;
use crate::wire::NackReason;
use std::os::fd::OwnedFd;

/// Re-reads the rules if the file changed; if they changed, journals whatever they no
/// longer ignore, whole. That waits until the peer has acknowledged the ignore file
/// itself, so that it applies the new rules before what they let through.
pub async fn refresh(s: &Sender) -> Result<(), SyncError> {
    let Some(ig) = s.journal.ignores().cloned() else {
        return Ok(());
    };
    ig.refresh();
    if rules_unsent(s) {
        return Ok(());
    }
    let Some((old, new)) = ig.take_change() else {
        return Ok(());
    };
    let j = s.journal.clone();
    let walk = move || local::record_unignored(&j, &old, &new, ig.data());
    let n = tokio::task::spawn_blocking(walk)
        .await
        .map_err(|e| SyncError::Protocol(format!("ignore rules task: {e}")))??;
    if n > 0 {
        tracing::info!("ignore rules changed: {n} paths no longer ignored, queued");
    }
    Ok(())
}

/// True while the journal holds unsent changes to the ignore file.
fn rules_unsent(s: &Sender) -> bool {
    let Ok(path) = RelPath::from_bytes(IGNORE_FILE.as_bytes()) else {
        return false;
    };
    s.journal.has_pending_op(&path)
        || fold::look(&s.root, &path).is_some_and(|(_, st)| s.journal.is_pending(st.st_ino))
}

/// Leaves out of `snap` the files at ignored paths, and forgets them in the journal.
pub fn drop_files(s: &Sender, snap: &mut Snapshot) -> Result<(), SyncError> {
    let Some(ig) = s.journal.ignores() else {
        return Ok(());
    };
    let gone: Vec<_> = snap
        .files
        .iter()
        .filter(|(_, e)| ig.matches(&e.path, false))
        .map(|(f, _)| *f)
        .collect();
    for f in gone {
        tracing::debug!("file {f}: at an ignored path; not sent");
        snap.files.remove(&f);
        s.journal.forget(f)?;
    }
    Ok(())
}

/// True if `op` changes only ignored paths (a rename or link: both of them).
pub fn op_ignored(ig: &Ignores, root: &OwnedFd, op: &MetaOp) -> bool {
    let m = |p: &RelPath| ig.matches(p, is_dir(root, p, op));
    match op {
        MetaOp::Rename { from, to, .. } | MetaOp::Link { from, to } => m(from) && m(to),
        _ => fold::targets(op).into_iter().next().is_some_and(m),
    }
}

/// Whether `p` is taken for a directory in `op`: the op says, else a look.
fn is_dir(root: &OwnedFd, p: &RelPath, op: &MetaOp) -> bool {
    match op {
        MetaOp::Mkdir { .. } | MetaOp::Rmdir { .. } => true,
        MetaOp::Create { .. } | MetaOp::Unlink { .. } | MetaOp::Truncate { .. } => false,
        _ => matches!(fold::look(root, p), Some((Kind::Dir, _))),
    }
}

/// Leaves out the ops that change only ignored paths.
pub fn drop_ops(s: &Sender, ops: &mut Vec<(u64, MetaOp)>) {
    if let Some(ig) = s.journal.ignores() {
        ops.retain(|(_, op)| !op_ignored(ig, &s.root, op));
    }
}

/// True if the index entry of `path` is of an ignored path.
pub fn entry_ignored(s: &Sender, path: &RelPath, kind: Kind) -> bool {
    s.journal
        .ignores()
        .is_some_and(|i| i.matches(path, kind == Kind::Dir))
}

/// The receiver's step for a peer's `op` touching paths ignored here, or `None` for
/// the usual gate: changes to ignored paths are acknowledged unapplied; a rename from
/// an ignored name is refused, so the peer sends the new name whole; a rename to one
/// removes its source.
pub fn peer_op(ig: &Ignores, root: &OwnedFd, op: &MetaOp) -> Option<Step> {
    let m = |p: &RelPath| ig.matches(p, is_dir(root, p, op));
    let step = match op {
        MetaOp::Rename { from, to, flags } if flags & libc::RENAME_EXCHANGE == 0 => {
            match (m(from), m(to)) {
                (false, false) => return None,
                (true, false) => Step::Refuse(NackReason::MissingFile),
                (false, true) if !matches!(fold::look(root, from), Some((Kind::Dir, _))) => {
                    Step::RemoveFrom
                }
                _ => Step::Skip,
            }
        }
        MetaOp::Rename { from, to, .. } | MetaOp::Link { from, to } => match (m(from), m(to)) {
            (false, false) => return None,
            (true, false) => Step::Refuse(NackReason::MissingFile),
            _ => Step::Skip,
        },
        _ => match fold::targets(op).into_iter().next().is_some_and(m) {
            true => Step::Skip,
            false => return None,
        },
    };
    tracing::info!("peer's {}: an ignored path here; {step:?}", op.kind());
    Some(step)
}
