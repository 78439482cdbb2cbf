//! The receiver's gate: every change from a peer is checked against the index before
//! the applier applies it ([`super::verdict`]), the local version that loses is set
//! aside (conflict copy or archive), and what was applied is folded into the index
//! with the peer's version. Blocking (sled and file I/O): call it off the runtime.

use super::fold::{self, Origin};
use super::verdict::{conflict_name, decide, Loser, Side, Verdict};
use super::SyncConfig;
use crate::apply::{Applier, ApplyError, Aside, Expect, Keep, Stamp};
use crate::journal::index::Kind;
use crate::journal::op::Timestamp;
use crate::journal::{Journal, JournalError, MetaOp};
use crate::path::RelPath;
use crate::vv::{Order, VersionVector};
use crate::wire::{content_id, FileUpdate, IndexItem, ItemKind, NackReason};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// What the receiver does with a peer's change.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply it (the losing local version, if any, is already set aside).
    Apply,
    /// Acknowledge it without applying: ours is newer, or the same, or won.
    Skip,
    /// Refuse it with this reason (the sender sends the whole file again).
    Refuse(NackReason),
    /// A rename whose target we keep: only its source is removed here.
    RemoveFrom,
}

/// What the receiver does with a peer's file update.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// Apply it to what was judged at its path (a losing local version is set aside).
    Apply(Expect),
    /// Acknowledge it without applying: ours is newer, or the same, or won.
    Skip,
    /// Refuse it with this reason (the sender sends the whole file again).
    Refuse(NackReason),
}

/// Everything the gate needs.
#[derive(Clone)]
pub struct Checker {
    /// The local journal (the index, and what is pending).
    pub journal: Journal,
    /// `O_PATH` fd of the backing data directory.
    pub root: Arc<OwnedFd>,
    /// The applier (sets losers aside).
    pub applier: Arc<Applier>,
    /// This node's ids.
    pub cfg: SyncConfig,
}

/// Our version of an entry.
struct Ours {
    /// The inode judged at the path (None: nothing there).
    ino: Option<u64>,
    vv: VersionVector,
    deleted: bool,
    hash: [u8; 32],
    mtime: Timestamp,
    /// The content was made here (see [`crate::journal::index::Entry::made_here`]).
    made_here: bool,
}

/// Errors of the gate, as the applier's (they are nacked the same way).
fn jerr(path: &RelPath) -> impl FnOnce(JournalError) -> ApplyError + '_ {
    move |e| ApplyError::Io {
        what: "indexing",
        path: path.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// True if our version, not pending, beat the peer's index entry of the same
/// version vector (two adopted copies, or copies adopted and versioned alike) with
/// other content or a delete.
fn beats_adopted(ours: Option<&Ours>, it: &IndexItem) -> bool {
    ours.is_some_and(|o| {
        !o.deleted
            && o.vv.pairs() == it.vv.as_slice()
            && (it.deleted || content_id(&o.hash) != it.hash)
    })
}

/// What an update is applied to: our file, in place, unless it `moved` aside (or we
/// hold none), when the update makes a new one.
fn judged(ours: Option<&Ours>, moved: bool) -> Expect {
    let ino = ours.filter(|o| !o.deleted && !moved).and_then(|o| o.ino);
    ino.map_or(Expect::Nothing, Expect::File)
}

impl Checker {
    /// Our version of `path`: the index's, counted newer if changed locally since.
    fn ours(&self, path: &RelPath) -> Result<Option<Ours>, ApplyError> {
        let entry = self.journal.index().get(path).map_err(jerr(path))?;
        let look = fold::look(&*self.root, path);
        let Some((kind, st)) = look else {
            let Some(e) = entry else { return Ok(None) };
            let vv = self.pending_bump(e.vv, self.journal.has_pending_op_from(path, e.taken_at));
            let mtime = e.mtime;
            return Ok(Some(Ours {
                ino: None,
                vv,
                deleted: true,
                hash: e.hash,
                mtime,
                made_here: e.made_here,
            }));
        };
        let stamp = fold::stamp(&st);
        let known = entry.as_ref().filter(|e| !e.deleted && e.kind == kind);
        // The indexed hash holds while the file's inode, size and mtime are the indexed
        // ones (ctime is no sign: a hard link or a chmod changes it); else it is read.
        let fresh = known.is_some_and(|e| {
            let s = e.stamp;
            (s.ino, s.size, s.mtime_ns) == (stamp.ino, stamp.size, stamp.mtime_ns)
        });
        // Ops recorded before a peer's version was taken here lost to it: not ours.
        let since = entry.as_ref().map_or(0, |e| e.taken_at);
        let pending =
            self.journal.is_pending(st.st_ino) || self.journal.has_pending_op_from(path, since);
        let hash = match (kind, known) {
            (Kind::File, Some(e)) if fresh && !pending => e.hash,
            (Kind::File, _) => self.applier.file_hash(path)?.unwrap_or([0; 32]),
            (_, Some(e)) => e.hash,
            _ => [0; 32],
        };
        let made_here = pending || !fresh || known.is_none_or(|e| e.made_here);
        let vv = entry.map(|e| e.vv).unwrap_or_default();
        let vv = self.pending_bump(vv, pending);
        Ok(Some(Ours {
            ino: Some(st.st_ino),
            vv,
            deleted: false,
            hash,
            mtime: fold::mtime(&st),
            made_here,
        }))
    }

    fn pending_bump(&self, vv: VersionVector, pending: bool) -> VersionVector {
        match pending {
            true => vv.bumped(self.cfg.node, u64::MAX),
            false => vv,
        }
    }

    fn verdict(&self, ours: Option<&Ours>, theirs: Side) -> Verdict {
        let ours = ours.map(|o| Side {
            vv: &o.vv,
            deleted: o.deleted,
            hash: content_id(&o.hash),
            mtime: o.mtime,
            node: &self.cfg.peer_bytes,
        });
        decide(ours.as_ref(), &theirs)
    }

    /// Decides on a file update from `peer` and sets our losing version aside. The
    /// applier then applies it only to what was judged here (see [`Expect`]).
    pub fn before_update(&self, u: &FileUpdate, peer: &[u8]) -> Result<UpdateStep, ApplyError> {
        if self.ignored(&u.path, false) {
            tracing::info!("peer's update of {}: an ignored path here; skipped", u.path);
            return Ok(UpdateStep::Skip);
        }
        let vv = VersionVector::from_pairs(u.vv.iter().copied());
        let ours = self.ours(&u.path)?;
        let theirs = Side {
            vv: &vv,
            deleted: false,
            hash: content_id(&u.hash),
            mtime: u.mtime.into(),
            node: peer,
        };
        let v = self.verdict(ours.as_ref(), theirs);
        tracing::debug!(path = %u.path, ?v, "update verdict");
        let judged = match v {
            Verdict::Keep => {
                self.answer(&u.path, ours.as_ref(), &vv)?;
                return Ok(UpdateStep::Skip);
            }
            Verdict::Merge => return self.after_update(u).map(|_| UpdateStep::Skip),
            Verdict::Take(Loser::Replaced) => self.keep_replaced(u, ours.as_ref())?,
            Verdict::Take(_) if u.base.is_some() => {
                return Ok(UpdateStep::Refuse(NackReason::UnknownBase))
            }
            Verdict::Take(Loser::Archive) => self.replace_whole(&u.path, ours.as_ref())?,
            Verdict::Take(Loser::ConflictCopy) => {
                let mtime = ours.as_ref().map_or(u.mtime.into(), |o| o.mtime);
                self.conflict_copy(&u.path, ours.as_ref(), mtime)?
            }
        };
        Ok(UpdateStep::Apply(judged))
    }

    /// Keeps the version a peer's update replaces in the archive: for a whole update,
    /// as [`Checker::replace_whole`] says; for an update applied in place, a copy, if
    /// the content was made here (one that came from the peer is the peer's to keep),
    /// so that a version the peer's user saved over unseen is not lost.
    fn keep_replaced(&self, u: &FileUpdate, ours: Option<&Ours>) -> Result<Expect, ApplyError> {
        let Some(o) = ours.filter(|o| !o.deleted && o.hash != u.hash) else {
            return Ok(judged(ours, false));
        };
        if u.base.is_none() {
            return self.replace_whole(&u.path, ours);
        }
        if o.made_here {
            self.applier.set_aside(&u.path, Aside::ArchiveCopy)?;
        }
        Ok(judged(ours, false))
    }

    /// Our version of `path`, which a whole update replaces: the applier keeps it in
    /// the archive as the new file takes its name ([`Expect::Replace`]); where that
    /// cannot be, it is moved there now. Either way the journal forgets it (see
    /// [`Checker::archive`]); a local write after this is caught by the stamp.
    fn replace_whole(&self, path: &RelPath, ours: Option<&Ours>) -> Result<Expect, ApplyError> {
        match self.replaceable(path, ours, &Keep::Archive)? {
            Some(old) => {
                self.journal.forget(old.ino()).map_err(jerr(path))?;
                Ok(Expect::Replace(old, Keep::Archive))
            }
            None => Ok(judged(ours, self.archive(path)?)),
        }
    }

    /// Our file at `path`, stamped, if it is the one the index knows as ours and a
    /// whole update can replace it keeping it as `keep` ([`Applier::replaceable`]).
    fn replaceable(
        &self,
        path: &RelPath,
        ours: Option<&Ours>,
        keep: &Keep,
    ) -> Result<Option<Stamp>, ApplyError> {
        let ino = ours.filter(|o| !o.deleted).and_then(|o| o.ino);
        let old = self.applier.replaceable(path, keep)?;
        Ok(old.filter(|old| Some(old.ino()) == ino))
    }

    /// Our version of `path` beat the peer's concurrent one, which the peer still holds:
    /// unless the journal already sends ours, the file goes to the peer whole (there
    /// the same verdict takes it and keeps theirs as the conflict copy).
    fn answer(
        &self,
        path: &RelPath,
        ours: Option<&Ours>,
        theirs: &VersionVector,
    ) -> Result<(), ApplyError> {
        let Some(o) = ours.filter(|o| !o.deleted) else {
            return Ok(());
        };
        if theirs.compare(&o.vv) != Order::Concurrent || o.vv.get(self.cfg.node) == u64::MAX {
            return Ok(()); // older, or ours is pending: it goes anyway
        }
        let Some((Kind::File, st)) = fold::look(&*self.root, path) else {
            return Ok(());
        };
        tracing::info!("{path}: our version beat the peer's concurrent one; sending it back");
        self.journal
            .want_whole(st.st_ino, path, st.st_size as u64)
            .map_err(jerr(path))
    }

    /// Our adopted copy of `path` beat the peer's (see [`beats_adopted`]): a file big
    /// enough for a chunk exchange goes to the peer at once (as one the peer asked for
    /// would: its index entry would only cost a round trip, and at a first contact we
    /// follow, the journal's pending file keeps it out of our index). A smaller one
    /// waits for the peer to ask for it and describe its version.
    fn send_big_back(&self, path: &RelPath) -> Result<(), ApplyError> {
        let Some((Kind::File, st)) = fold::look(&*self.root, path) else {
            return Ok(());
        };
        if !super::chunked::EXCHANGED.contains(&(st.st_size as u64)) {
            return Ok(());
        }
        tracing::info!("{path}: our adopted copy beat the peer's; sending it");
        self.journal
            .want_whole(st.st_ino, path, st.st_size as u64)
            .map_err(jerr(path))
    }

    /// Keeps our version of `path` as a conflict copy beside it: the applier gives it
    /// the copy's name as the update's file takes the path ([`Keep::Beside`]; then
    /// [`Checker::after_aside`] journals it), or, where that cannot be, it is renamed
    /// now and journaled as a new local file.
    fn conflict_copy(
        &self,
        path: &RelPath,
        ours: Option<&Ours>,
        mtime: Timestamp,
    ) -> Result<Expect, ApplyError> {
        let Some((name, _)) = self.conflict_name(path, mtime)? else {
            return Ok(judged(ours, false));
        };
        let keep = Keep::Beside(name.into());
        match self.replaceable(path, ours, &keep)? {
            Some(old) => Ok(Expect::Replace(old, keep)),
            None => Ok(judged(ours, self.rename_to_copy(path, mtime)?)),
        }
    }

    /// Renames our version of `path` to a conflict copy now, journaled as a new local
    /// file (true if a file was moved).
    fn rename_to_copy(&self, path: &RelPath, mtime: Timestamp) -> Result<bool, ApplyError> {
        let Some((name, copy)) = self.conflict_name(path, mtime)? else {
            return Ok(false);
        };
        let Some(s) = self.applier.set_aside(path, Aside::Rename(&name))? else {
            return Ok(false);
        };
        self.journal_copy(path, &copy, s.ino, (s.mode, s.size))?;
        Ok(true)
    }

    /// A free conflict name for our version of `path` (its leaf, and its path).
    fn conflict_name(
        &self,
        path: &RelPath,
        mtime: Timestamp,
    ) -> Result<Option<(String, RelPath)>, ApplyError> {
        let Some((parent, leaf)) = path.split_last() else {
            return Ok(None);
        };
        // a second conflict of the same version in the same second takes `-2`, `-3` …
        let leaf = leaf.to_string_lossy();
        let (name, copy) = (1..)
            .map(|n| {
                let name = conflict_name(&leaf, mtime, &self.cfg.peer_text, n);
                let copy = parent.join(std::ffi::OsStr::new(&name));
                (name, copy)
            })
            .find(|(_, c)| {
                c.as_ref()
                    .map_or(true, |c| fold::look(&*self.root, c).is_none())
            })
            .expect("an endless range");
        let copy =
            copy.map_err(|e| ApplyError::BadRequest(format!("{path}: conflict name: {e}")))?;
        Ok(Some((name, copy)))
    }

    /// Journals our version of `path`, now at `copy`, as a new local file.
    fn journal_copy(
        &self,
        path: &RelPath,
        copy: &RelPath,
        ino: u64,
        (mode, size): (u32, u64),
    ) -> Result<(), ApplyError> {
        tracing::warn!("conflict: {path} was changed on both sides; ours is kept as {copy}");
        self.journal
            .local_new_file(ino, copy, mode, size)
            .map_err(jerr(path))
    }

    /// After an update applied as `judged`: a conflict copy the applier made
    /// ([`Keep::Beside`]) is journaled as a new local file.
    pub fn after_aside(&self, u: &FileUpdate, judged: &Expect) -> Result<(), ApplyError> {
        let Expect::Replace(old, Keep::Beside(name)) = judged else {
            return Ok(());
        };
        let Some((parent, _)) = u.path.split_last() else {
            return Ok(());
        };
        let copy = parent
            .join(name)
            .map_err(|e| ApplyError::BadRequest(format!("{}: conflict name: {e}", u.path)))?;
        match fold::look(&*self.root, &copy) {
            Some((Kind::File, st)) if st.st_ino == old.ino() => self.journal_copy(
                &u.path,
                &copy,
                st.st_ino,
                (st.st_mode & 0o7777, st.st_size as u64),
            ),
            _ => Ok(()),
        }
    }

    /// True if `path` stays local here (`.syncfsignore`, re-read if it changed).
    fn ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.journal.ignores().is_some_and(|i| {
            i.refresh();
            i.matches(path, is_dir)
        })
    }

    /// Notes that a peer's version now lives at `path`: local ops recorded before now
    /// were made against what it replaced (the sender drops or narrows them).
    fn taken(&self, path: &RelPath) -> Result<(), ApplyError> {
        let seq = self.journal.next_seq();
        self.journal
            .index()
            .set_taken(path, seq)
            .map_err(jerr(path))
    }

    /// Folds an applied update into the index at the peer's version.
    pub fn after_update(&self, u: &FileUpdate) -> Result<(), ApplyError> {
        self.fold_update(u)?;
        self.taken(&u.path)
    }

    /// [`Checker::after_update`], flushed to disk: a kill -9 after this cannot make
    /// the next scan take the peer's content for a local edit.
    pub fn after_update_durably(&self, u: &FileUpdate) -> Result<(), ApplyError> {
        self.after_update(u)?;
        self.flush_index()
    }

    /// Moves our version of `path` into the version archive. The journal forgets it:
    /// a pending local change of it has lost to the peer's, and its inode number must
    /// not pass that change on to whatever file gets the number once the archive drops it.
    /// True if a file was moved (an empty one, or any without an archive, stays).
    fn archive(&self, path: &RelPath) -> Result<bool, ApplyError> {
        let Some(s) = self.applier.set_aside(path, Aside::Archive)? else {
            return Ok(false);
        };
        self.journal.forget(s.ino).map_err(jerr(path))?;
        Ok(true)
    }

    /// What a peer's `op` may free: `O_PATH` fds of the files at its destructive targets,
    /// taken before it is applied (see [`Checker::forget_freed`]).
    pub fn doomed(&self, op: &MetaOp) -> Option<OwnedFd> {
        let path = match op {
            MetaOp::Unlink { path, .. } => path,
            MetaOp::Rename { to, flags, .. } if flags & libc::RENAME_EXCHANGE == 0 => to,
            _ => return None,
        };
        let flags = libc::O_PATH | libc::O_NOFOLLOW;
        crate::beneath::open_beneath(&*self.root, path, flags, 0).ok()
    }

    /// Forgets, in the journal, the file a peer's op freed (no link left): its inode
    /// number would otherwise carry a pending local change to the next file made here.
    pub fn forget_freed(&self, doomed: Option<OwnedFd>) -> Result<(), ApplyError> {
        let st = doomed.and_then(|fd| crate::sys::fstat(&fd).ok());
        match st {
            Some(st) if st.st_nlink == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG => self
                .journal
                .forget(st.st_ino)
                .map_err(jerr(&RelPath::root())),
            _ => Ok(()),
        }
    }

    /// Makes every index entry written so far durable.
    pub fn flush_index(&self) -> Result<(), ApplyError> {
        self.journal.index().flush().map_err(jerr(&RelPath::root()))
    }

    /// Records the versions of updates that recovery replayed (the process died before
    /// recording them), so that the scan does not take them for local edits.
    pub fn record_recovered(&self, updates: &[FileUpdate]) {
        for u in updates {
            if let Err(e) = self.after_update_durably(u) {
                tracing::warn!("recording the recovered update of {}: {e}", u.path);
            }
        }
    }

    fn fold_update(&self, u: &FileUpdate) -> Result<(), ApplyError> {
        let vv = VersionVector::from_pairs(u.vv.iter().copied());
        fold::update(
            self.journal.index(),
            &*self.root,
            &u.path,
            u.hash,
            u.size,
            Origin::Peer(&vv),
        )
        .map_err(jerr(&u.path))?;
        Ok(())
    }

    /// Decides on a metadata op from `peer` at version `vv`.
    pub fn before_op(
        &self,
        op: &MetaOp,
        vv: &VersionVector,
        peer: &[u8],
    ) -> Result<Step, ApplyError> {
        if let Some(ig) = self.journal.ignores() {
            ig.refresh();
            if let Some(step) = super::ignored::peer_op(ig, &self.root, op) {
                return Ok(step);
            }
        }
        match op {
            MetaOp::Unlink { path, .. } | MetaOp::Rmdir { path } => {
                let last = matches!(
                    op,
                    MetaOp::Unlink {
                        last_link: true,
                        ..
                    }
                );
                self.removal(path, vv, peer, last)
            }
            MetaOp::Create { path, .. } if fold::look(&*self.root, path).is_some() => {
                // Something lives here already (ours, made concurrently: a replayed op
                // never reaches the gate): the content follows as an update, decided
                // against ours there.
                tracing::info!("create {path}: exists here; decided when its content comes");
                Ok(Step::Skip)
            }
            MetaOp::Truncate { path, .. } => {
                let ours = self.ours(path)?;
                let older = ours
                    .is_some_and(|o| matches!(vv.compare(&o.vv), Order::Older | Order::Concurrent));
                Ok(if older { Step::Skip } else { Step::Apply })
            }
            MetaOp::Rename { from, to, flags } if flags & libc::RENAME_EXCHANGE == 0 => {
                if fold::look(&*self.root, from).is_none() {
                    return Ok(Step::Apply);
                }
                if self.edited_here(from, vv)? {
                    // A rename is a delete of `from` and a new `to`: our concurrent edit
                    // of `from` beats the delete and stays; the peer sends `to` whole.
                    tracing::info!("rename {from} -> {to}: {from} was edited here; kept");
                    return Ok(Step::Refuse(NackReason::MissingFile));
                }
                if !self.is_other_file(from, to) {
                    return Ok(Step::Apply);
                }
                // A rename over our file: a new version of `to`, decided like an update.
                let moved = self.ours(from)?;
                let theirs = Side {
                    vv,
                    deleted: false,
                    hash: moved.as_ref().map_or([0; 16], |m| content_id(&m.hash)),
                    mtime: moved
                        .as_ref()
                        .map_or(Timestamp { secs: 0, nanos: 0 }, |m| m.mtime),
                    node: peer,
                };
                let ours = self.ours(to)?;
                match self.verdict(ours.as_ref(), theirs) {
                    Verdict::Keep => {
                        // ours stays at `to` (the peer gets it, and keeps its moved file
                        // as a conflict copy); `from` is gone there: gone here too,
                        // unless we edited it meanwhile (an edit beats a delete).
                        self.archive(from)?;
                        self.answer(to, ours.as_ref(), vv)?;
                        tracing::info!("rename {from} -> {to}: our {to} wins; {from} removed");
                        Ok(Step::RemoveFrom)
                    }
                    Verdict::Take(Loser::ConflictCopy) => {
                        let mtime = ours.map_or(Timestamp { secs: 0, nanos: 0 }, |o| o.mtime);
                        self.rename_to_copy(to, mtime)?;
                        Ok(Step::Apply)
                    }
                    _ => {
                        self.archive(to)?;
                        Ok(Step::Apply)
                    }
                }
            }
            _ => Ok(Step::Apply),
        }
    }

    /// Decides on the peer's removal of `path` at version `vv`: `Skip` if our version
    /// wins (an edit beats a concurrent delete; it goes back to the peer), else `Apply`
    /// with what is there archived first (`archive`: the last link of a file).
    fn removal(
        &self,
        path: &RelPath,
        vv: &VersionVector,
        peer: &[u8],
        archive: bool,
    ) -> Result<Step, ApplyError> {
        let ours = self.ours(path)?;
        let theirs = Side {
            vv,
            deleted: true,
            hash: ours.as_ref().map_or([0; 16], |o| content_id(&o.hash)),
            mtime: Timestamp { secs: 0, nanos: 0 },
            node: peer,
        };
        if self.verdict(ours.as_ref(), theirs) == Verdict::Keep {
            self.answer(path, ours.as_ref(), vv)?;
            return Ok(Step::Skip);
        }
        if archive {
            self.archive(path)?;
        }
        Ok(Step::Apply)
    }

    /// True if we changed `path` in ways the peer's op at `vv` has not seen (an edit
    /// concurrent with its rename away); ours then goes back to the peer.
    fn edited_here(&self, path: &RelPath, vv: &VersionVector) -> Result<bool, ApplyError> {
        let ours = self.ours(path)?;
        let Some(o) = ours.as_ref().filter(|o| !o.deleted) else {
            return Ok(false);
        };
        if !matches!(vv.compare(&o.vv), Order::Concurrent | Order::Older) {
            return Ok(false);
        }
        tracing::debug!(%path, ours = ?o.vv, theirs = ?vv, "edited here");
        self.answer(path, ours.as_ref(), vv)?;
        Ok(true)
    }

    /// True if `to` is a regular file other than the one at `from` (a rename replaces it).
    fn is_other_file(&self, from: &RelPath, to: &RelPath) -> bool {
        match (fold::look(&*self.root, from), fold::look(&*self.root, to)) {
            (Some((_, a)), Some((Kind::File, b))) => a.st_ino != b.st_ino,
            _ => false,
        }
    }

    /// Folds an applied op into the index (and the journal follows a rename).
    pub fn after_op(&self, op: &MetaOp, vv: &VersionVector) -> Result<(), ApplyError> {
        if let MetaOp::Rename { from, to, flags } = op {
            if flags & libc::RENAME_EXCHANGE == 0 {
                self.journal.peer_renamed(from, to).map_err(jerr(to))?;
            }
        }
        let path = op.attr_path().cloned().unwrap_or_else(RelPath::root);
        fold::op(self.journal.index(), &*self.root, op, Origin::Peer(vv)).map_err(jerr(&path))?;
        for p in fold::targets(op) {
            self.taken(p)?;
        }
        Ok(())
    }
}

impl Checker {
    /// Decides on one entry of the peer's index: applies what needs no data (deletes,
    /// directories, symlinks, merged versions) and returns, if we want the file's
    /// content, what becomes of our version (the peer then sends the file, and
    /// [`Checker::before_update`] decides again when it arrives).
    pub fn index_item(&self, it: &IndexItem, peer: &[u8]) -> Result<Option<Loser>, ApplyError> {
        if self.ignored(&it.path, matches!(it.kind, ItemKind::Dir)) {
            return Ok(None); // stays local: neither taken nor asked for
        }
        let vv = VersionVector::from_pairs(it.vv.iter().copied());
        let ours = self.ours(&it.path)?;
        let theirs = Side {
            vv: &vv,
            deleted: it.deleted,
            hash: it.hash,
            mtime: it.mtime.into(),
            node: peer,
        };
        let v = self.verdict(ours.as_ref(), theirs);
        tracing::debug!(path = %it.path, ?v, "index verdict");
        let ix = self.journal.index();
        match v {
            Verdict::Keep if beats_adopted(ours.as_ref(), it) => {
                self.send_big_back(&it.path).map(|_| None)
            }
            Verdict::Keep => self.answer(&it.path, ours.as_ref(), &vv).map(|_| None),
            Verdict::Merge => fold::merge(ix, &it.path, &vv)
                .map(|_| None)
                .map_err(jerr(&it.path)),
            Verdict::Take(_) if it.deleted => {
                let op = match fold::look(&*self.root, &it.path) {
                    Some((Kind::Dir, _)) => MetaOp::Rmdir {
                        path: it.path.clone(),
                    },
                    Some((_, st)) => MetaOp::Unlink {
                        path: it.path.clone(),
                        file: st.st_ino,
                        last_link: true,
                    },
                    None => return Ok(None),
                };
                self.archive(&it.path)?;
                let doomed = self.doomed(&op);
                match self.applier.apply_meta(&op) {
                    Ok(()) => {
                        self.forget_freed(doomed)?;
                        self.after_op(&op, &vv).map(|_| None)
                    }
                    Err(e) => {
                        tracing::info!("{}: not removed ({e}); kept", it.path);
                        Ok(None)
                    }
                }
            }
            Verdict::Take(loser) => match it.kind {
                ItemKind::File => Ok(Some(loser)),
                ItemKind::Dir => {
                    let op = MetaOp::Mkdir {
                        path: it.path.clone(),
                        mode: it.mode,
                    };
                    self.applier.apply_meta(&op)?;
                    self.after_op(&op, &vv).map(|_| None)
                }
                ItemKind::Symlink => {
                    if let Some((_, st)) = fold::look(&*self.root, &it.path) {
                        self.archive(&it.path)?;
                        let gone = MetaOp::Unlink {
                            path: it.path.clone(),
                            file: st.st_ino,
                            last_link: true,
                        };
                        self.applier.apply_meta(&gone)?;
                    }
                    let op = MetaOp::Symlink {
                        path: it.path.clone(),
                        target: it.target.clone(),
                    };
                    self.applier.apply_meta(&op)?;
                    self.after_op(&op, &vv).map(|_| None)
                }
            },
        }
    }
}
