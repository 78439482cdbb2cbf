//! The journal: per-file dirty byte ranges and the ordered metadata-operation log.
//! It is the sole owner of the sled database (`<dir>/db/`) and the intent log
//! (`<dir>/intent.log`).
//!
//! # Durability rule
//!
//! After a `kill -9` of the daemon, the journal covers every byte that reached the
//! backing file. The filesystem calls [`Journal::record_write`] *before* its backing
//! `pwrite`; the call returns only once the range is in the intent log (one `write(2)`
//! on an `O_APPEND` file, so it sits in the kernel page cache and survives the process)
//! or is already covered by state that survives a kill (the last checkpoint plus the
//! logged records). [`Journal::sync`] (the filesystem's fsync) `fdatasync`s the logs so
//! every earlier record also survives a power cut.
//!
//! sled 0.34 loses unflushed writes on kill -9 and flushing it per write is far too slow,
//! so sled only receives *checkpoints*: a background thread (every ~500 ms when anything
//! changed, sooner when the log passes ~64 MiB) folds the in-memory state into sled:
//!
//! 1. under the state lock: capture the changed entries and rotate the log —
//!    `intent.log` (generation `g`) becomes `intent.<g>.old`, a fresh `intent.log` of
//!    generation `g + 1` takes over, so writers never wait for sled;
//! 2. write the captured entries plus the marker "logs up to `g` are folded" in one
//!    atomic sled batch, then `db.flush()`;
//! 3. only then delete the old logs `<= g`.
//!
//! On open, logs whose generation is above the marker are replayed in order up to the
//! first torn or corrupt record, then a checkpoint runs. The generation marker makes a
//! crash between steps 2 and 3 harmless (folded logs are never replayed twice, which
//! matters because renames do not commute).
//!
//! The journal clears a range only after the peer's ack for exactly that range and
//! version ([`Journal::ack_file`]). Acks are not logged: a kill -9 may resurrect acked
//! ranges or ops, which are then simply sent again.

pub mod cancel;
pub mod index;
pub mod op;
pub mod ranges;
pub mod sources;
pub mod state;
pub mod wal;

pub use op::{FileId, MetaOp};
pub use ranges::RangeSet;
pub use state::FileEntry;

use crate::path::RelPath;
use state::{Delta, State};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use wal::{Record, Wal};

/// How often the background thread checkpoints when something changed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Log size that triggers a checkpoint before the interval is up.
const CHECKPOINT_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// sled key (in the "files" tree, not 8 bytes long so never a `FileId`) of the marker.
const MARKER_KEY: &[u8] = b"checkpoint";
/// Leads every value of the `files` tree (file entries, the checkpoint marker) since
/// formats were recorded, followed by one format byte, then the bincode encoding.
///
/// Values stored before have no prefix and must still decode, so the prefix has to be
/// one no such value starts with:
/// - a file entry (either old layout) starts with its path, whose bincode encoding
///   starts with its length as a little-endian u64. That length is at most
///   [`MAX_REL_PATH`](crate::path::MAX_REL_PATH) (16 KiB, checked when decoding), so
///   its second byte is at most 0x40, never 0xFF. (One byte would not do: the first
///   byte of a length is anything, and `[0xFE, 1]` is how a 510-byte path starts.)
/// - the old marker is two u64s, any bytes at all, but exactly 16 of them; a prefixed
///   marker never is ([`Marker::decode`] tells them apart by length).
const STORED_MAGIC: [u8; 2] = [0xFE, 0xFF];
const _: () = assert!(crate::path::MAX_REL_PATH < 0xFF00, "see STORED_MAGIC");
/// Format byte of the checkpoint marker.
const MARKER_FORMAT: u8 = 1;
/// Length of a marker stored before formats were recorded (two u64s).
const MARKER_V0_LEN: usize = 16;

/// Errors of the journal, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A filesystem operation on the journal directory failed.
    #[error("journal I/O: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sled database failed.
    #[error("journal database: {context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },
    /// Encoding or decoding a stored value failed.
    #[error("journal encoding: {context}: {source}")]
    Encode {
        /// What was being encoded or decoded.
        context: String,
        /// The underlying error.
        #[source]
        source: bincode::Error,
    },
    /// A byte range with `start > end`.
    #[error("invalid range {start}..{end} for file {file}")]
    InvalidRange {
        /// The file.
        file: FileId,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// The database holds something the journal cannot understand.
    #[error("journal corrupt: {0}")]
    Corrupt(String),
    /// A stored log or value is of a format newer than this build reads (a newer syncfs
    /// wrote it): refused rather than misread.
    #[error("{what} is of format {found}, this build reads formats up to {known}")]
    UnknownFormat {
        /// What was being read (an intent log names its file).
        what: String,
        /// The format it declares.
        found: u32,
        /// The newest format this build reads.
        known: u32,
    },
}

impl JournalError {
    fn io(context: impl Into<String>, source: std::io::Error) -> JournalError {
        JournalError::Io {
            context: context.into(),
            source,
        }
    }

    fn db(context: impl Into<String>, source: sled::Error) -> JournalError {
        JournalError::Db {
            context: context.into(),
            source,
        }
    }

    fn encode(context: impl Into<String>, source: bincode::Error) -> JournalError {
        JournalError::Encode {
            context: context.into(),
            source,
        }
    }

    /// True if the journal's disk is full (or its quota spent).
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            JournalError::Io { source, .. } => Some(source),
            JournalError::Db {
                source: sled::Error::Io(source),
                ..
            } => Some(source),
            _ => None,
        };
        io.and_then(|e| e.raw_os_error())
            .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
    }
}

/// A consistent copy of what is pending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Files with dirty ranges or a size change.
    pub files: BTreeMap<FileId, FileEntry>,
    /// Metadata operations, in sequence order.
    pub meta: Vec<(u64, MetaOp)>,
}

/// Checkpoint marker stored in sled.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// Logs of this generation and below are folded into sled.
    folded_gen: u64,
    /// Next metadata sequence number.
    next_seq: u64,
}

impl Marker {
    /// `[STORED_MAGIC, MARKER_FORMAT]` then bincode: 19 bytes, never the 16 of an old
    /// marker (a later format must keep its length other than 16 too).
    fn encode(&self) -> Result<Vec<u8>, JournalError> {
        encode_versioned(MARKER_FORMAT, self, "checkpoint marker")
    }

    /// Decodes a marker of this format, or an old one (exactly 16 bytes, no prefix:
    /// its first bytes may look like the prefix, so its length decides).
    fn decode(b: &[u8]) -> Result<Marker, JournalError> {
        if b.len() == MARKER_V0_LEN {
            return decode(b, "checkpoint marker");
        }
        match split_versioned(b) {
            Some((MARKER_FORMAT, body)) => decode(body, "checkpoint marker"),
            Some((found, _)) => Err(JournalError::UnknownFormat {
                what: "the journal's checkpoint marker".into(),
                found: found.into(),
                known: MARKER_FORMAT.into(),
            }),
            None => Err(JournalError::Corrupt(format!(
                "checkpoint marker of {} bytes without a format",
                b.len()
            ))),
        }
    }
}

/// The journal handle: cheap to clone, shared by all filesystem threads. When the
/// last clone is dropped the background thread stops and a final checkpoint runs.
#[derive(Clone)]
pub struct Journal {
    handle: Arc<Handle>,
}

/// Shared by all clones; its `Drop` shuts the journal down synchronously.
struct Handle {
    inner: Arc<Inner>,
}

/// Everything behind the lock.
struct Locked {
    state: State,
    wal: Wal,
    /// Rotated logs not yet folded, kept open so `sync` can fdatasync them.
    rotated: Vec<(u64, Arc<File>)>,
    /// Bumped whenever the directory changes (rotation); see `sync`.
    dir_epoch: u64,
    /// Highest metadata sequence number the sender may have sent (in memory only; at
    /// open, the highest one loaded): ops at or below it are never dropped.
    sent_upto: u64,
    /// Writes recorded and not yet done on the backing file, by file (in memory only).
    writing: std::collections::HashMap<FileId, u32>,
    /// Writable handles open through the mount, by file (in memory only).
    open_writers: std::collections::HashMap<FileId, u32>,
}

struct Inner {
    dir: PathBuf,
    files: sled::Tree,
    meta: sled::Tree,
    db: sled::Db,
    index: index::Index,
    sources: sources::Sources,
    locked: Mutex<Locked>,
    /// Serialises checkpoints.
    ckpt: Mutex<()>,
    /// Last `dir_epoch` made durable by `sync`.
    synced_dir_epoch: AtomicU64,
    worker: Worker,
    /// The folder's ignore rules, once set (see [`Journal::set_ignores`]).
    ignores: std::sync::OnceLock<Arc<crate::ignores::Ignores>>,
}

/// The background checkpoint thread's control block.
#[derive(Default)]
struct Worker {
    stop: Mutex<bool>,
    wake: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Set by the test-only crash path: skip the final checkpoint.
    no_final_checkpoint: std::sync::atomic::AtomicBool,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, recovers from the intent logs
    /// and starts the background checkpoint thread.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| JournalError::io(format!("create {}", dir.display()), e))?;
        let db = open_db(&dir.join("db"))?;
        let files = db
            .open_tree("files")
            .map_err(|e| JournalError::db("open tree files", e))?;
        let meta = db
            .open_tree("meta")
            .map_err(|e| JournalError::db("open tree meta", e))?;
        let (mut state, marker) = load(&files, &meta)?;
        let last_gen = replay_logs(dir, marker.folded_gen, &mut state)?;
        retire_active(dir)?;
        let wal = Wal::create(dir, last_gen.max(marker.folded_gen) + 1)?;
        let sent_upto = state.next_seq() - 1;
        let locked = Locked {
            state,
            wal,
            rotated: Vec::new(),
            dir_epoch: 1,
            sent_upto,
            writing: Default::default(),
            open_writers: Default::default(),
        };
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            files,
            meta,
            index: index::Index::open(&db)?,
            sources: sources::Sources::open(&db)?,
            db,
            locked: Mutex::new(locked),
            ckpt: Mutex::new(()),
            synced_dir_epoch: AtomicU64::new(0),
            worker: Worker::default(),
            ignores: Default::default(),
        });
        inner.checkpoint(true)?;
        spawn_worker(&inner)?;
        Ok(Journal {
            handle: Arc::new(Handle { inner }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// The index of every entry and its version (see [`index`]).
    pub fn index(&self) -> &index::Index {
        &self.inner().index
    }

    /// The chunk index: which file holds which content (see [`sources`]).
    pub fn sources(&self) -> &sources::Sources {
        &self.inner().sources
    }

    /// Gives the journal's users (the mount's recorder, the scan, the syncer) the
    /// folder's ignore rules: paths they match are not journaled, sent or applied.
    /// Only the first call counts.
    pub fn set_ignores(&self, ignores: Arc<crate::ignores::Ignores>) {
        let _ = self.inner().ignores.set(ignores);
    }

    /// The ignore rules, if set.
    pub fn ignores(&self) -> Option<&Arc<crate::ignores::Ignores>> {
        self.inner().ignores.get()
    }

    /// The sequence number the next metadata op will get.
    pub fn next_seq(&self) -> u64 {
        self.inner().lock().state.next_seq()
    }

    /// True if `file` has changes recorded and not yet acknowledged by the peer.
    pub fn is_pending(&self, file: FileId) -> bool {
        let l = self.inner().lock();
        l.state.entry(file).is_some_and(|e| e.is_pending())
    }

    /// A peer's rename moved files this journal tracks: they follow it (no op is
    /// queued: the peer made the change).
    pub fn peer_renamed(&self, from: &RelPath, to: &RelPath) -> Result<(), JournalError> {
        let mut l = self.inner().lock();
        let moved: Vec<(FileId, RelPath)> = l
            .state
            .files()
            .iter()
            .filter_map(|(id, e)| e.path.rebase(from, to).map(|p| (*id, p)))
            .collect();
        for (file, path) in moved {
            l.log_and_apply(Record::Track { file, path })?;
        }
        Ok(())
    }

    /// A file this node made itself outside the mount (a conflict copy): journaled as a
    /// local create with all its bytes dirty, so that it reaches the peer.
    pub fn local_new_file(
        &self,
        file: FileId,
        path: &RelPath,
        mode: u32,
        size: u64,
    ) -> Result<(), JournalError> {
        self.record_meta(MetaOp::Create {
            path: path.clone(),
            file,
            mode,
        })?;
        self.want_whole(file, path, size)
    }

    /// The whole of `file` (at `path`, `size` bytes) is to be sent: a peer asked for it,
    /// or it changed while syncfs was not watching.
    pub fn want_whole(&self, file: FileId, path: &RelPath, size: u64) -> Result<(), JournalError> {
        self.track(file, path)?;
        self.record_size(file, size)?;
        self.want_again(file, 0, size)
    }

    /// Bytes `[start, end)` of `file` are to be sent (again): dirty, as after a write
    /// that already reached the backing file.
    pub fn want_again(&self, file: FileId, start: u64, end: u64) -> Result<(), JournalError> {
        if start >= end {
            return Ok(());
        }
        let r = self.record_write(file, start, end);
        self.write_done(file);
        r
    }

    /// True if an unacknowledged metadata operation changes `path` (or moves or
    /// removes a directory above it).
    pub fn has_pending_op(&self, path: &RelPath) -> bool {
        self.pending_op_in(path, ..)
    }

    /// Like [`Journal::has_pending_op`], counting only ops numbered below `seq`.
    pub fn has_pending_op_before(&self, path: &RelPath, seq: u64) -> bool {
        self.pending_op_in(path, ..seq)
    }

    /// Like [`Journal::has_pending_op`], counting only ops numbered `seq` or later.
    pub fn has_pending_op_from(&self, path: &RelPath, seq: u64) -> bool {
        self.pending_op_in(path, seq..)
    }

    fn pending_op_in(&self, path: &RelPath, seqs: impl std::ops::RangeBounds<u64>) -> bool {
        let l = self.inner().lock();
        l.state
            .meta()
            .range(seqs)
            .any(|(_, op)| op.mentions(path) && op.attr_path().is_none_or(|p| p == path))
    }

    /// Records that `file` lives at `path` (no-op if already known there).
    pub fn track(&self, file: FileId, path: &RelPath) -> Result<(), JournalError> {
        let mut l = self.inner().lock();
        if l.state.is_tracked_at(file, path) {
            return Ok(());
        }
        l.log_and_apply(Record::Track {
            file,
            path: path.clone(),
        })
    }

    /// Marks `[start, end)` of `file` dirty; call before writing the backing file.
    /// Writes to untracked files (never tracked, or whose last link is gone, e.g. an
    /// unlinked file still open) are not journalled.
    pub fn record_write(&self, file: FileId, start: u64, end: u64) -> Result<(), JournalError> {
        let mut l = self.inner().lock();
        *l.writing.entry(file).or_default() += 1; // until `write_done`, whatever follows
        if start > end {
            return Err(JournalError::InvalidRange { file, start, end });
        }
        if start == end || !l.state.files().contains_key(&file) {
            return Ok(());
        }
        if l.state.write_is_covered(file, start, end) {
            l.state.apply_write(file, start, end);
            return Ok(());
        }
        l.log_and_apply(Record::Write { file, start, end })?;
        self.inner().nudge_if_large(&l);
        Ok(())
    }

    /// The write recorded by the matching [`Journal::record_write`] reached the backing
    /// file (or failed). Call exactly once per `record_write`, whatever it returned.
    pub fn write_done(&self, file: FileId) {
        let mut l = self.inner().lock();
        if let Some(n) = l.writing.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                l.writing.remove(&file);
            }
        }
    }

    /// A writable handle on `file` was opened through the mount.
    pub fn opened(&self, file: FileId) {
        *self.inner().lock().open_writers.entry(file).or_default() += 1;
    }

    /// A writable handle on `file` was closed (one per [`Journal::opened`]).
    pub fn closed(&self, file: FileId) {
        let mut l = self.inner().lock();
        if let Some(n) = l.open_writers.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                l.open_writers.remove(&file);
            }
        }
    }

    /// The files a writable handle is open on through the mount: their content may
    /// still change. Files the daemon itself wrote (conflict copies) never are.
    pub fn open_for_write(&self) -> std::collections::HashSet<FileId> {
        self.inner().lock().open_writers.keys().copied().collect()
    }

    /// True while a recorded write of `file` has not reached the backing file: a read
    /// of it now could see the old bytes of a range the journal already has as dirty.
    pub fn is_writing(&self, file: FileId) -> bool {
        self.inner().lock().writing.contains_key(&file)
    }

    /// Records that `file` was truncated or extended to `size` (ignored if untracked).
    pub fn record_size(&self, file: FileId, size: u64) -> Result<(), JournalError> {
        let mut l = self.inner().lock();
        if !l.state.files().contains_key(&file) {
            return Ok(());
        }
        l.log_and_apply(Record::Size { file, size })
    }

    /// Appends a metadata operation; returns its sequence number. Unsent ops it makes
    /// void (see [`cancel`]) are dropped, and so is the op itself when it cancels out:
    /// the drop is logged after the op, so a replay decides exactly the same.
    pub fn record_meta(&self, op: MetaOp) -> Result<u64, JournalError> {
        self.record_meta_saving(op).map(|(seq, _)| seq)
    }

    /// [`Journal::record_meta`], also returning the new file whose data update the op
    /// made a rewrite of a file the peer holds (see [`cancel::Plan::save`]).
    pub fn record_meta_saving(&self, op: MetaOp) -> Result<(u64, Option<FileId>), JournalError> {
        let mut l = self.inner().lock();
        let seq = l.state.next_seq();
        let files = l.state.files();
        let pending = |f: FileId| files.get(&f).is_some_and(|e| e.is_pending());
        let synced_file = |p: &RelPath| {
            let e = self.index().get(p).ok().flatten();
            e.is_some_and(|e| e.kind == index::Kind::File && !e.deleted)
        };
        let taken_at = |p: &RelPath| {
            let e = self.index().get(p).ok().flatten();
            e.map_or(0, |e| e.taken_at)
        };
        let known = cancel::Known {
            pending: &pending,
            synced_file: &synced_file,
            taken_at: &taken_at,
        };
        let plan = cancel::plan(l.state.meta(), l.sent_upto, seq, op, &known);
        l.log_and_apply(Record::Meta { seq, op: plan.op })?;
        if !plan.void.is_empty() {
            l.log_and_apply(Record::Drop { seqs: plan.void })?;
        }
        Ok((seq, plan.save))
    }

    /// True when the newest unsent op naming `path` is a plain rename to it.
    pub fn renamed_to(&self, path: &RelPath) -> bool {
        let l = self.inner().lock();
        cancel::renamed_to(l.state.meta(), l.sent_upto, path)
    }

    /// The sender is about to send the pending ops up to `upto_seq`: from now on none
    /// of them is dropped or merged. Returns how many ops `<= upto_seq` are still
    /// pending, so the caller can tell whether a drop made before this call took ops
    /// from its snapshot (then it must take a fresh one).
    pub fn mark_sent(&self, upto_seq: u64) -> usize {
        let mut l = self.inner().lock();
        l.sent_upto = l.sent_upto.max(upto_seq);
        l.state.meta().range(..=upto_seq).count()
    }

    /// Drops `file` and its pending ranges (its last link is gone).
    pub fn forget(&self, file: FileId) -> Result<(), JournalError> {
        let mut l = self.inner().lock();
        if l.state.entry(file).is_none() {
            return Ok(());
        }
        l.log_and_apply(Record::Forget { file })
    }

    /// Makes every earlier record durable against power loss (fdatasync of the logs).
    pub fn sync(&self) -> Result<(), JournalError> {
        self.inner().sync()
    }

    /// Folds everything recorded so far into sled and discards the folded logs.
    pub fn checkpoint(&self) -> Result<(), JournalError> {
        self.inner().checkpoint(false)
    }

    /// What is pending for the peer: files, their dirty bytes, metadata ops (without a
    /// copy of them, for `status` while no session runs).
    pub fn pending_counts(&self) -> (u64, u64, u64) {
        self.inner().lock().state.pending_counts()
    }

    /// A consistent copy of the pending files and metadata ops.
    pub fn snapshot(&self) -> Snapshot {
        let mut l = self.inner().lock();
        let files = l.state.snapshot_files();
        let meta = l
            .state
            .meta()
            .iter()
            .map(|(s, op)| (*s, op.clone()))
            .collect();
        Snapshot { files, meta }
    }

    /// The tracked entry of `file`, pending or not.
    pub fn entry(&self, file: FileId) -> Option<FileEntry> {
        self.inner().lock().state.entry(file).cloned()
    }

    /// Drops the ops `seqs` for good: the sender decided not to send them (carried by
    /// an update, beaten, void). A later snapshot must not offer them again: sent then,
    /// they would carry versions older than the ops after them that went first.
    pub fn drop_unsent(&self, seqs: Vec<u64>) -> Result<(), JournalError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.inner().lock().log_and_apply(Record::Drop { seqs })
    }

    /// Drops metadata ops with sequence numbers `<= upto_seq` (the peer has them).
    pub fn ack_meta(&self, upto_seq: u64) -> Result<(), JournalError> {
        self.inner().lock().state.ack_meta(upto_seq);
        Ok(())
    }

    /// The peer acknowledged `ranges` of `file` as snapshotted at `version`.
    ///
    /// If the entry is still at `version`, the ranges are removed (and the pending size
    /// with them once no range is left); returns `true`. If the file changed since, only
    /// the acked bytes that were provably not touched after the snapshot are removed
    /// (possibly none) and `false` is returned; the rest is sent again.
    pub fn ack_file(
        &self,
        file: FileId,
        version: u64,
        ranges: &RangeSet,
    ) -> Result<bool, JournalError> {
        Ok(self.inner().lock().state.ack_file(file, version, ranges))
    }

    /// Stops the background thread, then runs a final checkpoint. Other clones stay
    /// usable but are no longer checkpointed in the background.
    pub fn close(self) -> Result<(), JournalError> {
        self.inner().stop_worker();
        self.inner().checkpoint(false)
    }

    /// Test-only: stop the worker and drop this handle without the final checkpoint,
    /// as if the process had been killed (the intent log is all that remains).
    #[cfg(test)]
    fn crash(self) {
        self.inner()
            .worker
            .no_final_checkpoint
            .store(true, Ordering::SeqCst);
        self.inner().stop_worker();
    }
}

impl Locked {
    /// Appends `rec` to the intent log, then applies it to the state.
    fn log_and_apply(&mut self, rec: Record) -> Result<(), JournalError> {
        self.wal.append(&rec)?;
        self.state.apply(&rec);
        Ok(())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the worker when the log has grown past the size trigger.
    fn nudge_if_large(&self, l: &Locked) {
        if l.wal.bytes() > CHECKPOINT_LOG_BYTES {
            self.worker.wake.notify_one();
        }
    }

    fn sync(&self) -> Result<(), JournalError> {
        let (handles, epoch) = {
            let l = self.lock();
            let mut h: Vec<Arc<File>> = l.rotated.iter().map(|(_, f)| Arc::clone(f)).collect();
            h.push(l.wal.handle());
            (h, l.dir_epoch)
        };
        for f in handles {
            f.sync_data()
                .map_err(|e| JournalError::io("fdatasync intent log", e))?;
        }
        if self.synced_dir_epoch.load(Ordering::Acquire) < epoch {
            fsync_dir(&self.dir)?;
            self.synced_dir_epoch.fetch_max(epoch, Ordering::AcqRel);
        }
        Ok(())
    }

    /// One checkpoint (see the module doc); `force` runs it even with nothing dirty.
    fn checkpoint(&self, force: bool) -> Result<(), JournalError> {
        let _one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        let (delta, folded_gen) = {
            let mut l = self.lock();
            if !force && !l.state.is_dirty() {
                return Ok(());
            }
            let delta = l.state.take_delta();
            match self.rotate(&mut l) {
                Ok(g) => (delta, g),
                Err(e) => {
                    l.state.restore_delta(delta.ids);
                    return Err(e);
                }
            }
        };
        if let Err(e) = self.store(&delta, folded_gen) {
            self.lock().state.restore_delta(delta.ids);
            return Err(e);
        }
        self.lock().rotated.retain(|(g, _)| *g > folded_gen);
        remove_old_logs(&self.dir, folded_gen)
    }

    /// Renames the active log away and installs a fresh one; returns the old generation.
    fn rotate(&self, l: &mut Locked) -> Result<u64, JournalError> {
        let gen = l.wal.gen();
        let old = wal::old_path(&self.dir, gen);
        let active = self.dir.join(wal::ACTIVE_NAME);
        // The fresh log is written first: if that fails (no fds, no space), the active
        // log is untouched and the next checkpoint simply tries again.
        let fresh = Wal::prepare(&self.dir, gen + 1)?;
        if let Err(e) = std::fs::rename(&active, &old) {
            Wal::discard_prepared(&self.dir);
            return Err(JournalError::io(format!("rotate {}", active.display()), e));
        }
        if let Err(e) = Wal::install(&self.dir) {
            let _ = std::fs::rename(&old, &active);
            Wal::discard_prepared(&self.dir);
            return Err(e);
        }
        let prev = std::mem::replace(&mut l.wal, fresh);
        prev.shed_room(); // old logs wait for a checkpoint: they must not hold disk
        l.rotated.push((gen, prev.handle()));
        l.dir_epoch += 1;
        Ok(gen)
    }

    /// Writes a captured delta and the marker to sled and flushes it.
    fn store(&self, delta: &Delta, folded_gen: u64) -> Result<(), JournalError> {
        let mut meta = sled::Batch::default();
        for (seq, op) in &delta.meta {
            match op {
                Some(op) => meta.insert(&seq.to_be_bytes()[..], encode(op, "meta op")?),
                None => meta.remove(&seq.to_be_bytes()[..]),
            }
        }
        self.meta
            .apply_batch(meta)
            .map_err(|e| JournalError::db("store meta ops", e))?;
        let mut files = sled::Batch::default();
        for (id, entry) in &delta.files {
            match entry {
                Some(e) => files.insert(&id.to_be_bytes()[..], e.encode()?),
                None => files.remove(&id.to_be_bytes()[..]),
            }
        }
        let marker = Marker {
            folded_gen,
            next_seq: delta.next_seq,
        };
        files.insert(MARKER_KEY, marker.encode()?);
        self.files
            .apply_batch(files)
            .map_err(|e| JournalError::db("store file entries", e))?;
        self.db.flush().map_err(|e| JournalError::db("flush", e))?;
        Ok(())
    }

    fn stop_worker(&self) {
        *self.worker.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.worker.wake.notify_all();
        let handle = self
            .worker
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Waits one interval (or until woken); returns false once stopped.
    fn wait_tick(&self) -> bool {
        let stop = self.worker.stop.lock().unwrap_or_else(|p| p.into_inner());
        if *stop {
            return false;
        }
        let (stop, _) = self
            .worker
            .wake
            .wait_timeout(stop, CHECKPOINT_INTERVAL)
            .unwrap_or_else(|p| p.into_inner());
        !*stop
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.stop_worker();
        if self.inner.worker.no_final_checkpoint.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.inner.checkpoint(false) {
            tracing::warn!("final journal checkpoint failed: {e}");
        }
    }
}

/// Starts the background checkpoint thread; `Handle::drop` joins it, so the thread's
/// reference never outlives the last `Journal` clone.
fn spawn_worker(inner: &Arc<Inner>) -> Result<(), JournalError> {
    let shared = Arc::clone(inner);
    let handle = std::thread::Builder::new()
        .name("journal-ckpt".into())
        .spawn(move || worker_loop(&shared))
        .map_err(|e| JournalError::io("spawn checkpoint thread", e))?;
    *inner
        .worker
        .handle
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

fn worker_loop(inner: &Inner) {
    while inner.wait_tick() {
        if let Err(e) = inner.checkpoint(false) {
            tracing::warn!("journal checkpoint failed: {e}");
        }
    }
}

/// Opens sled, retrying for up to ~2 s while its lock is still held: sled 0.34's
/// `Db::drop` does not wait for its flusher thread to release the file lock
/// (spacejam/sled#1234), so an immediate reopen in the same process can race it.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, JournalError> {
    let mut delay = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e)) if is_lock_busy(&e) && waited < Duration::from_secs(2) => {
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            res => return res.map_err(|e| JournalError::db(format!("open {}", path.display()), e)),
        }
    }
}

/// True for sled's "could not acquire lock" (EWOULDBLOCK from `flock`).
fn is_lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Loads the checkpointed state and marker from sled.
fn load(files: &sled::Tree, meta: &sled::Tree) -> Result<(State, Marker), JournalError> {
    let mut entries = BTreeMap::new();
    let mut marker = Marker::default();
    for kv in files.iter() {
        let (k, v) = kv.map_err(|e| JournalError::db("read files", e))?;
        if &*k == MARKER_KEY {
            marker = Marker::decode(&v)?;
        } else {
            entries.insert(key_u64(&k, "files")?, FileEntry::decode(&v)?);
        }
    }
    let mut ops = BTreeMap::new();
    for kv in meta.iter() {
        let (k, v) = kv.map_err(|e| JournalError::db("read meta", e))?;
        ops.insert(key_u64(&k, "meta")?, decode(&v, "meta op")?);
    }
    let state = State::new(entries, ops, marker.next_seq);
    Ok((state, marker))
}

/// Replays every log newer than `folded_gen` into `state`, oldest first; returns the
/// highest generation seen (0 if none).
fn replay_logs(dir: &Path, folded_gen: u64, state: &mut State) -> Result<u64, JournalError> {
    let mut paths: Vec<PathBuf> = wal::list_old(dir)?.into_iter().map(|(_, p)| p).collect();
    paths.push(dir.join(wal::ACTIVE_NAME));
    let mut logs = Vec::new();
    for p in paths {
        let log = wal::read_log(&p)?;
        if log.torn {
            tracing::warn!("{}: torn or corrupt tail ignored", p.display());
        }
        if let Some(gen) = log.gen {
            logs.push((gen, log.records));
        }
    }
    logs.sort_by_key(|(g, _)| *g);
    let mut last = 0;
    for (gen, records) in logs {
        last = last.max(gen);
        if gen > folded_gen {
            records.iter().for_each(|r| state.apply(r));
        }
    }
    Ok(last)
}

/// Moves a leftover active log out of the way: renamed to an old log of its
/// generation, or deleted when it has no header (hence no records).
fn retire_active(dir: &Path) -> Result<(), JournalError> {
    let active = dir.join(wal::ACTIVE_NAME);
    let res = match wal::read_log(&active)?.gen {
        Some(gen) => std::fs::rename(&active, wal::old_path(dir, gen)),
        None => std::fs::remove_file(&active),
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(JournalError::io(format!("retire {}", active.display()), e))
        }
        _ => Ok(()),
    }
}

/// Deletes old logs of generation `<= folded_gen`.
fn remove_old_logs(dir: &Path, folded_gen: u64) -> Result<(), JournalError> {
    for (gen, path) in wal::list_old(dir)? {
        if gen <= folded_gen {
            std::fs::remove_file(&path)
                .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    let d = File::open(dir).map_err(|e| JournalError::io(format!("open {}", dir.display()), e))?;
    d.sync_all()
        .map_err(|e| JournalError::io(format!("fsync {}", dir.display()), e))
}

fn encode<T: serde::Serialize>(v: &T, what: &str) -> Result<Vec<u8>, JournalError> {
    bincode::serialize(v).map_err(|e| JournalError::encode(format!("encode {what}"), e))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, JournalError> {
    bincode::deserialize(b).map_err(|e| JournalError::encode(format!("decode {what}"), e))
}

/// `[STORED_MAGIC, format]` then the bincode encoding of `v`.
fn encode_versioned<T: serde::Serialize>(
    format: u8,
    v: &T,
    what: &str,
) -> Result<Vec<u8>, JournalError> {
    let mut out = vec![STORED_MAGIC[0], STORED_MAGIC[1], format];
    bincode::serialize_into(&mut out, v)
        .map_err(|e| JournalError::encode(format!("encode {what}"), e))?;
    Ok(out)
}

/// The format byte and the rest of a value with the [`STORED_MAGIC`] prefix, or `None`
/// for a value stored before formats were recorded.
fn split_versioned(b: &[u8]) -> Option<(u8, &[u8])> {
    match b {
        [m0, m1, format, body @ ..] if [*m0, *m1] == STORED_MAGIC => Some((*format, body)),
        _ => None,
    }
}

fn key_u64(k: &[u8], tree: &str) -> Result<u64, JournalError> {
    let arr: [u8; 8] = k.try_into().map_err(|_| {
        JournalError::Corrupt(format!("bad key of {} bytes in tree {tree}", k.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// A human-readable listing of a snapshot (for `syncfs journal STORE`).
pub fn format_snapshot(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "files with pending changes: {}", s.files.len());
    for (id, e) in &s.files {
        let size = e.size.map_or_else(|| "-".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "  file {id} {} size={size} version={} ranges={} ({} bytes)",
            e.path,
            e.version,
            e.ranges,
            e.ranges.len_bytes()
        );
    }
    let _ = writeln!(out, "metadata ops pending: {}", s.meta.len());
    for (seq, op) in &s.meta {
        let _ = writeln!(out, "  #{seq} {}", format_op(op));
    }
    out
}

/// One metadata op as `kind path fields...`.
pub fn format_op(op: &MetaOp) -> String {
    let k = op.kind();
    match op {
        MetaOp::Create { path, file, mode } => format!("{k} {path} mode={mode:04o} file={file}"),
        MetaOp::Mknod { path, mode, rdev } => format!("{k} {path} mode={mode:o} rdev={rdev}"),
        MetaOp::Mkdir { path, mode } => format!("{k} {path} mode={mode:04o}"),
        MetaOp::Unlink {
            path,
            file,
            last_link,
        } => {
            format!(
                "{k} {path} file={file}{}",
                if *last_link { " (last link)" } else { "" }
            )
        }
        MetaOp::Rmdir { path } => format!("{k} {path}"),
        MetaOp::Rename { from, to, flags } => format!("{k} {from} -> {to}{}", rename_flags(*flags)),
        MetaOp::Symlink { path, target } => {
            format!("{k} {path} -> {}", String::from_utf8_lossy(target))
        }
        MetaOp::Link { from, to } => format!("{k} {from} -> {to}"),
        MetaOp::Chmod { path, mode } => format!("{k} {path} mode={mode:04o}"),
        MetaOp::Chown { path, uid, gid } => format!("{k} {path} uid={} gid={}", opt(uid), opt(gid)),
        MetaOp::Truncate { path, file, size } => format!("{k} {path} size={size} file={file}"),
        MetaOp::Utimens { path, atime, mtime } => {
            format!(
                "{k} {path} atime={} mtime={}",
                fmt_time(atime),
                fmt_time(mtime)
            )
        }
        MetaOp::SetXattr {
            path, name, value, ..
        } => {
            format!(
                "{k} {path} {} ({} bytes)",
                String::from_utf8_lossy(name),
                value.len()
            )
        }
        MetaOp::RemoveXattr { path, name } => {
            format!("{k} {path} {}", String::from_utf8_lossy(name))
        }
    }
}

fn rename_flags(flags: u32) -> String {
    let mut s = String::new();
    if flags & libc::RENAME_NOREPLACE != 0 {
        s.push_str(" [noreplace]");
    }
    if flags & libc::RENAME_EXCHANGE != 0 {
        s.push_str(" [exchange]");
    }
    s
}

fn opt(v: &Option<u32>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn fmt_time(t: &Option<op::SetTime>) -> String {
    match t {
        None => "-".to_string(),
        Some(op::SetTime::Now) => "now".to_string(),
        Some(op::SetTime::At(ts)) => format!("{}.{:09}", ts.secs, ts.nanos),
    }
}

#[cfg(test)]
mod tests;
