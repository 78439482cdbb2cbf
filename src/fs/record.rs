//! `Recorder`: where the filesystem reports changes. The journal implements it; tests
//! may use [`NullRecorder`]. Every data change is recorded *before* the backing write.

use crate::journal::op::{FileId, MetaOp};
use crate::path::RelPath;

/// A failure to record a change; the operation is refused with EIO, or ENOSPC when
/// the journal's disk is full (`full`).
#[derive(Debug, thiserror::Error)]
#[error("recording change failed: {0}")]
pub struct RecordError(pub String, pub Full);

/// Whether a [`RecordError`] came from a full disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full(pub bool);

impl RecordError {
    /// A failure for another reason than a full disk.
    pub fn other(why: impl Into<String>) -> RecordError {
        RecordError(why.into(), Full(false))
    }
}

/// Receives every change the filesystem makes to the backing store.
pub trait Recorder: Send + Sync + 'static {
    /// The file with this id lives at `path` (called before its first recorded write).
    fn track(&self, file: FileId, path: &RelPath) -> Result<(), RecordError>;
    /// Bytes `[start, end)` of `file` are about to be written. Every call, whatever it
    /// returns, is followed by [`Recorder::write_done`] once the backing write is over.
    fn write(&self, file: FileId, start: u64, end: u64) -> Result<(), RecordError>;
    /// The write announced by the last matching [`Recorder::write`] is over.
    fn write_done(&self, _file: FileId) {}
    /// `file` is about to get this size.
    fn size(&self, file: FileId, size: u64) -> Result<(), RecordError>;
    /// A metadata operation is about to happen (or just did, for creations).
    fn meta(&self, op: MetaOp) -> Result<(), RecordError>;
    /// An `Unlink` just happened; returns the new file that now replaces a file the
    /// peer holds, if the unlink ended such a save (see `journal::cancel`).
    fn unlinked(&self, op: MetaOp) -> Result<Option<FileId>, RecordError> {
        self.meta(op).map(|()| None)
    }
    /// Everything recorded so far must survive a power cut (called from fsync).
    fn sync(&self) -> Result<(), RecordError>;
    /// A writable handle on `file` was opened (before any write through it).
    fn opened(&self, _file: FileId) {}
    /// A writable handle on `file` was closed: the file may now be quiet.
    fn closed(&self, _file: FileId) {}
    /// True when `file` has changes not yet acknowledged by the peer.
    fn is_pending(&self, _file: FileId) -> bool {
        false
    }
    /// Where tracked `file` lives (its journalled path).
    fn path_of(&self, _file: FileId) -> Option<RelPath> {
        None
    }
    /// True when an unsent rename made `path` (an unlink of it may end a save).
    fn renamed_to(&self, _path: &RelPath) -> bool {
        false
    }
    /// True when `file` is tracked and `path` (just unlinked, other links remain) was
    /// its only known name: the filesystem should tell where the file still lives.
    fn lost_name(&self, _file: FileId, _path: &RelPath) -> bool {
        false
    }
}

/// Records nothing (for tests of the passthrough alone).
pub struct NullRecorder;

impl Recorder for NullRecorder {
    fn track(&self, _: FileId, _: &RelPath) -> Result<(), RecordError> {
        Ok(())
    }
    fn write(&self, _: FileId, _: u64, _: u64) -> Result<(), RecordError> {
        Ok(())
    }
    fn size(&self, _: FileId, _: u64) -> Result<(), RecordError> {
        Ok(())
    }
    fn meta(&self, _: MetaOp) -> Result<(), RecordError> {
        Ok(())
    }
    fn sync(&self) -> Result<(), RecordError> {
        Ok(())
    }
}

/// Called with a file's id when a writable handle on it is closed.
pub type OnClosed = Box<dyn Fn(FileId) + Send + Sync>;

/// Records into the sled journal, and announces closed files (the syncer's cue). Paths
/// the journal's ignore rules match are not recorded (see [`crate::ignores::local`]); a
/// change to the ignore file reloads the rules at once.
pub struct JournalRecorder {
    journal: crate::journal::Journal,
    on_closed: Option<OnClosed>,
}

impl JournalRecorder {
    /// Records into `journal`; `on_closed` (if any) hears of closed written files.
    pub fn new(journal: crate::journal::Journal, on_closed: Option<OnClosed>) -> Self {
        JournalRecorder { journal, on_closed }
    }
}

fn rec_err(e: crate::journal::JournalError) -> RecordError {
    RecordError(e.to_string(), Full(e.is_disk_full()))
}

impl Recorder for JournalRecorder {
    fn track(&self, file: FileId, path: &RelPath) -> Result<(), RecordError> {
        if self
            .journal
            .ignores()
            .is_some_and(|i| i.matches(path, false))
        {
            return Ok(()); // untracked: its writes are not journaled
        }
        self.journal.track(file, path).map_err(rec_err)
    }
    fn write(&self, file: FileId, start: u64, end: u64) -> Result<(), RecordError> {
        self.journal.record_write(file, start, end).map_err(rec_err)
    }
    fn size(&self, file: FileId, size: u64) -> Result<(), RecordError> {
        self.journal.record_size(file, size).map_err(rec_err)
    }
    fn write_done(&self, file: FileId) {
        self.journal.write_done(file);
    }
    fn meta(&self, op: MetaOp) -> Result<(), RecordError> {
        let Some(ig) = self.journal.ignores() else {
            return self.journal.record_meta(op).map(drop).map_err(rec_err);
        };
        let rules_changed = op.mentions(&ignore_file());
        let r = crate::ignores::local::record_op(&self.journal, ig, op).map_err(rec_err);
        if rules_changed {
            ig.refresh();
        }
        r
    }
    fn unlinked(&self, op: MetaOp) -> Result<Option<FileId>, RecordError> {
        // an ignored name, or the ignore file itself: as any other op
        let special = match (&op, self.journal.ignores()) {
            (MetaOp::Unlink { path, .. }, Some(ig)) => {
                ig.matches(path, false) || op.mentions(&ignore_file())
            }
            (_, Some(_)) => true,
            (_, None) => false,
        };
        if special {
            return self.meta(op).map(|()| None);
        }
        let (_, save) = self.journal.record_meta_saving(op).map_err(rec_err)?;
        Ok(save)
    }
    fn sync(&self) -> Result<(), RecordError> {
        self.journal.sync().map_err(rec_err)
    }
    fn is_pending(&self, file: FileId) -> bool {
        self.journal.entry(file).is_some_and(|e| e.is_pending())
    }
    fn path_of(&self, file: FileId) -> Option<RelPath> {
        self.journal.entry(file).map(|e| e.path)
    }
    fn renamed_to(&self, path: &RelPath) -> bool {
        self.journal.renamed_to(path)
    }
    fn lost_name(&self, file: FileId, path: &RelPath) -> bool {
        self.journal
            .entry(file)
            .is_some_and(|e| &e.path == path && e.links.is_empty())
    }
    fn opened(&self, file: FileId) {
        self.journal.opened(file);
    }
    fn closed(&self, file: FileId) {
        self.journal.closed(file);
        if let Some(ig) = self.journal.ignores() {
            if self
                .journal
                .entry(file)
                .is_some_and(|e| e.path == ignore_file())
            {
                ig.refresh();
            }
        }
        if let Some(f) = &self.on_closed {
            f(file);
        }
    }
}

fn ignore_file() -> RelPath {
    RelPath::from_bytes(crate::ignores::IGNORE_FILE.as_bytes()).expect("a plain name")
}
