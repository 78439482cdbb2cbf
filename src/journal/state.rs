//! The journal's in-memory state: per-file entries and the metadata-op log, plus the
//! bookkeeping of what changed since the last checkpoint. Pure data: no I/O here, so
//! live calls and intent-log replay go through the same `apply_*` functions.

use super::op::{FileId, MetaOp};
use super::ranges::RangeSet;
use super::wal::Record;
use super::JournalError;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the journal knows about one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where the file currently lives in the store.
    pub path: RelPath,
    /// Byte ranges written and not yet acknowledged by the peer.
    pub ranges: RangeSet,
    /// Size set by truncate/extension (then grown by writes past it) and not yet
    /// acknowledged; `None` when the size needs no explicit propagation.
    pub size: Option<u64>,
    /// Set from the state's clock on every content change; an ack only fully applies
    /// to its version. Unique across files and time, so an ack of a file that is gone
    /// never matches a new file that got its inode number.
    pub version: u64,
    /// Other names of the file (hard links made through the mount): when `path` is
    /// unlinked or replaced, one of these takes over, so the data still has a name.
    pub links: Vec<RelPath>,
}

/// Format byte of a stored [`FileEntry`] (after the `files` tree's prefix, see
/// `STORED_MAGIC` in the journal module).
pub const ENTRY_FORMAT: u8 = 1;

/// [`FileEntry`] as stored before hard links were tracked (no `links`).
#[derive(Deserialize)]
struct FileEntryV0 {
    path: RelPath,
    ranges: RangeSet,
    size: Option<u64>,
    version: u64,
}

impl FileEntry {
    /// Encodes the entry for sled: the format prefix, then bincode.
    pub fn encode(&self) -> Result<Vec<u8>, JournalError> {
        super::encode_versioned(ENTRY_FORMAT, self, "file entry")
    }

    /// Decodes a stored entry: one of [`ENTRY_FORMAT`], or one stored before formats
    /// were recorded (no prefix; with or without `links`). A newer format is refused.
    pub fn decode(b: &[u8]) -> Result<FileEntry, JournalError> {
        match super::split_versioned(b) {
            Some((ENTRY_FORMAT, body)) => super::decode(body, "file entry"),
            Some((found, _)) => Err(JournalError::UnknownFormat {
                what: "a stored file entry".into(),
                found: found.into(),
                known: ENTRY_FORMAT.into(),
            }),
            None => Self::decode_unversioned(b)
                .map_err(|e| JournalError::encode("decode file entry", e)),
        }
    }

    /// Decodes an entry stored before formats were recorded, of either layout.
    fn decode_unversioned(b: &[u8]) -> Result<FileEntry, bincode::Error> {
        bincode::deserialize(b).or_else(|e| {
            let v0: FileEntryV0 = bincode::deserialize(b).map_err(|_| e)?;
            Ok(FileEntry {
                path: v0.path,
                ranges: v0.ranges,
                size: v0.size,
                version: v0.version,
                links: Vec::new(),
            })
        })
    }

    /// True if `p` is one of the file's names.
    pub fn has_name(&self, p: &RelPath) -> bool {
        &self.path == p || self.links.contains(p)
    }

    /// Drops the name `p` (unlinked or replaced); false if no name is left.
    fn drop_name(&mut self, p: &RelPath) -> bool {
        self.links.retain(|l| l != p);
        if &self.path == p {
            match self.links.pop() {
                Some(l) => self.path = l,
                None => return false,
            }
        }
        true
    }

    /// A clean entry at `path`.
    pub fn new(path: RelPath) -> FileEntry {
        FileEntry {
            path,
            ranges: RangeSet::new(),
            size: None,
            version: 0,
            links: Vec::new(),
        }
    }

    /// True when something must still be sent to the peer.
    pub fn is_pending(&self) -> bool {
        !self.ranges.is_empty() || self.size.is_some()
    }
}

/// Content changed since a snapshot at version `since` (in memory only).
#[derive(Clone, Debug, Default)]
struct Touched {
    since: u64,
    ranges: RangeSet,
}

/// Changes not yet folded into sled: ids whose current value must be written.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Files whose entry changed or was removed.
    pub files: BTreeSet<FileId>,
    /// Metadata sequence numbers added or removed.
    pub meta: BTreeSet<u64>,
}

/// Current values of dirty ids, captured for a checkpoint.
#[derive(Debug, Default)]
pub struct Delta {
    /// `(file, Some(entry))` to store, `(file, None)` to delete.
    pub files: Vec<(FileId, Option<FileEntry>)>,
    /// `(seq, Some(op))` to store, `(seq, None)` to delete.
    pub meta: Vec<(u64, Option<MetaOp>)>,
    /// The next metadata sequence number.
    pub next_seq: u64,
    /// The ids captured, to put back if the checkpoint fails.
    pub ids: Dirty,
}

/// The whole in-memory journal state.
#[derive(Debug)]
pub struct State {
    files: BTreeMap<FileId, FileEntry>,
    /// The ids in `files` that are pending: what a snapshot copies, without a walk over
    /// every file ever tracked (the sender takes one every 10-25 ms, under the lock that
    /// every write through the mount takes).
    pending: BTreeSet<FileId>,
    meta: BTreeMap<u64, MetaOp>,
    next_seq: u64,
    /// The last version handed out (see [`FileEntry::version`]).
    clock: u64,
    touched: HashMap<FileId, Touched>,
    dirty: Dirty,
}

impl State {
    /// State loaded from a checkpoint.
    pub fn new(
        files: BTreeMap<FileId, FileEntry>,
        meta: BTreeMap<u64, MetaOp>,
        next_seq: u64,
    ) -> State {
        let max_seq = meta.keys().next_back().map_or(0, |s| s + 1);
        let pending = files
            .iter()
            .filter(|(_, e)| e.is_pending())
            .map(|(id, _)| *id)
            .collect();
        let clock = files.values().map(|e| e.version).max().unwrap_or(0);
        State {
            files,
            pending,
            meta,
            next_seq: next_seq.max(max_seq).max(1),
            clock,
            touched: HashMap::new(),
            dirty: Dirty::default(),
        }
    }

    /// Keeps `pending` in step with `file`'s entry after a change to it.
    fn repend(&mut self, file: FileId) {
        if self.files.get(&file).is_some_and(|e| e.is_pending()) {
            self.pending.insert(file);
        } else {
            self.pending.remove(&file);
        }
    }

    /// What is pending: files, their dirty bytes, metadata ops.
    pub fn pending_counts(&self) -> (u64, u64, u64) {
        let bytes = self
            .pending
            .iter()
            .filter_map(|id| self.files.get(id))
            .map(|e| e.ranges.len_bytes())
            .sum();
        (self.pending.len() as u64, bytes, self.meta.len() as u64)
    }

    /// The entry for `file`, if tracked.
    pub fn entry(&self, file: FileId) -> Option<&FileEntry> {
        self.files.get(&file)
    }

    /// All tracked entries (pending or not).
    pub fn files(&self) -> &BTreeMap<FileId, FileEntry> {
        &self.files
    }

    /// Pending metadata operations in sequence order.
    pub fn meta(&self) -> &BTreeMap<u64, MetaOp> {
        &self.meta
    }

    /// The sequence number the next metadata op gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// True when something changed since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.files.is_empty() || !self.dirty.meta.is_empty()
    }

    /// Applies a replayed or freshly logged record.
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Header { .. } | Record::Format { .. } => {}
            Record::Track { file, path } => self.apply_track(*file, path),
            Record::Write { file, start, end } => self.apply_write(*file, *start, *end),
            Record::Size { file, size } => self.apply_size(*file, *size),
            Record::Meta { seq, op } => self.apply_meta(*seq, op),
            Record::Forget { file } => self.apply_forget(*file),
            Record::Drop { seqs } => self.apply_drop(seqs),
        }
    }

    /// Removes metadata ops made void before they were sent (see [`Record::Drop`]).
    pub fn apply_drop(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if self.meta.remove(seq).is_some() {
                self.dirty.meta.insert(*seq);
            }
        }
    }

    /// True when `track(file, path)` would change nothing.
    pub fn is_tracked_at(&self, file: FileId, path: &RelPath) -> bool {
        self.files.get(&file).is_some_and(|e| e.has_name(path))
    }

    /// True when a write of `[start, end)` to `file` adds nothing durable: the range
    /// is already dirty and the write does not grow a recorded size.
    pub fn write_is_covered(&self, file: FileId, start: u64, end: u64) -> bool {
        self.files
            .get(&file)
            .is_some_and(|e| e.ranges.covers(start, end) && e.size.is_none_or(|s| end <= s))
    }

    /// Records that `file` lives at `path` (creating a clean entry if unknown).
    pub fn apply_track(&mut self, file: FileId, path: &RelPath) {
        self.dirty.files.insert(file);
        match self.files.get_mut(&file) {
            Some(e) => e.path = path.clone(),
            None => {
                self.files.insert(file, FileEntry::new(path.clone()));
            }
        }
    }

    /// The next version from the clock.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Marks `[start, end)` of `file` dirty (ignored for untracked files).
    pub fn apply_write(&mut self, file: FileId, start: u64, end: u64) {
        let version = self.tick();
        let Some(e) = self.files.get_mut(&file) else {
            return;
        };
        e.ranges.insert(start, end);
        if let Some(s) = e.size.as_mut() {
            *s = (*s).max(end);
        }
        e.version = version;
        self.dirty.files.insert(file);
        self.pending.insert(file);
        if let Some(t) = self.touched.get_mut(&file) {
            t.ranges.insert(start, end);
        }
    }

    /// Sets the size of `file`, dropping dirty bytes at or beyond it.
    pub fn apply_size(&mut self, file: FileId, size: u64) {
        let version = self.tick();
        let Some(e) = self.files.get_mut(&file) else {
            return;
        };
        let changed_from = e.size.unwrap_or(size).min(size);
        e.size = Some(size);
        e.ranges.truncate(size);
        e.version = version;
        self.dirty.files.insert(file);
        self.pending.insert(file);
        if let Some(t) = self.touched.get_mut(&file) {
            t.ranges.insert(changed_from, u64::MAX);
        }
    }

    /// Drops `file` (its last link is gone).
    pub fn apply_forget(&mut self, file: FileId) {
        if self.files.remove(&file).is_some() {
            self.dirty.files.insert(file);
        }
        self.pending.remove(&file);
        self.touched.remove(&file);
    }

    /// Stores metadata op `seq` and applies its effect on file entries.
    pub fn apply_meta(&mut self, seq: u64, op: &MetaOp) {
        self.meta.insert(seq, op.clone());
        self.dirty.meta.insert(seq);
        self.next_seq = self.next_seq.max(seq + 1);
        match op {
            MetaOp::Create { path, file, .. } => self.apply_track(*file, path),
            MetaOp::Unlink {
                file,
                last_link: true,
                ..
            } => self.apply_forget(*file),
            MetaOp::Unlink { path, file, .. } => self.apply_unlink_name(*file, path),
            MetaOp::Link { from, to } => self.apply_link(from, to),
            MetaOp::Rename { from, to, flags } => self.apply_rename(from, to, *flags),
            MetaOp::Truncate { path, file, size } => {
                if !self.is_tracked_at(*file, path) {
                    self.apply_track(*file, path);
                }
                self.apply_size(*file, *size);
            }
            _ => {}
        }
    }

    /// Rebases paths for a rename (swapping both sides for `RENAME_EXCHANGE`). For a
    /// plain rename, entries that were at/below `to` were replaced and are dropped.
    fn apply_rename(&mut self, from: &RelPath, to: &RelPath, flags: u32) {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let mut gone = Vec::new();
        let moved = |n: &RelPath| n.starts_with(from) || n.starts_with(to);
        for (id, e) in self.files.iter_mut() {
            if !moved(&e.path) && !e.links.iter().any(moved) {
                continue; // not at or below either side: untouched, nothing cloned
            }
            let before = (e.path.clone(), e.links.clone());
            let names: Vec<RelPath> = std::iter::once(e.path.clone())
                .chain(std::mem::take(&mut e.links))
                .collect();
            let mut kept = Vec::new();
            for n in names {
                if let Some(p) = n.rebase(from, to) {
                    kept.push(p);
                } else if let Some(p) = n.rebase(to, from) {
                    if exchange {
                        kept.push(p);
                    } // else: replaced by the rename
                } else {
                    kept.push(n);
                }
            }
            match kept.split_first() {
                Some((first, rest)) => {
                    e.path = first.clone();
                    e.links = rest.to_vec();
                }
                None => gone.push(*id),
            }
            if (&e.path, &e.links) != (&before.0, &before.1) {
                self.dirty.files.insert(*id);
            }
        }
        for id in gone {
            self.apply_forget(id);
        }
    }

    /// A hard link `to` of the file named `from`: remembered as another name.
    fn apply_link(&mut self, from: &RelPath, to: &RelPath) {
        for (id, e) in self.files.iter_mut() {
            if e.has_name(from) && !e.has_name(to) {
                e.links.push(to.clone());
                self.dirty.files.insert(*id);
                return;
            }
        }
    }

    /// One name of `file` went, others stay: a remaining name becomes its path.
    fn apply_unlink_name(&mut self, file: FileId, path: &RelPath) {
        let Some(e) = self.files.get_mut(&file) else {
            return;
        };
        if e.has_name(path) {
            if !e.drop_name(path) {
                tracing::warn!(file, "unlinked the only known name of a linked file");
            }
            self.dirty.files.insert(file);
        }
    }

    /// Assigns the next sequence number to `op` and applies it.
    pub fn push_meta(&mut self, op: &MetaOp) -> u64 {
        let seq = self.next_seq;
        self.apply_meta(seq, op);
        seq
    }

    /// Drops metadata ops with sequence numbers `<= upto`.
    pub fn ack_meta(&mut self, upto: u64) {
        let keep = self.meta.split_off(&(upto.saturating_add(1)));
        let gone = std::mem::replace(&mut self.meta, keep);
        self.dirty.meta.extend(gone.into_keys());
    }

    /// Applies a peer ack of `ranges` at `version` (see [`super::Journal::ack_file`]).
    /// Returns true when the ack matched the current version.
    pub fn ack_file(&mut self, file: FileId, version: u64, ranges: &RangeSet) -> bool {
        let Some(e) = self.files.get_mut(&file) else {
            return false;
        };
        if e.version == version {
            e.ranges.remove_set(ranges);
            if e.ranges.is_empty() {
                e.size = None;
            }
            self.touched.remove(&file);
            self.dirty.files.insert(file);
            self.repend(file);
            return true;
        }
        if let Some(t) = self.touched.get(&file).filter(|t| t.since <= version) {
            e.ranges.remove_set(&ranges.difference(&t.ranges));
            self.dirty.files.insert(file);
            self.repend(file);
        }
        false
    }

    /// Pending entries (cloned), starting race tracking for each at its version.
    pub fn snapshot_files(&mut self) -> BTreeMap<FileId, FileEntry> {
        let pending: BTreeMap<FileId, FileEntry> = self
            .pending
            .iter()
            .filter_map(|id| Some((*id, self.files.get(id)?.clone())))
            .collect();
        for (id, e) in &pending {
            let t = Touched {
                since: e.version,
                ranges: RangeSet::new(),
            };
            self.touched.insert(*id, t);
        }
        pending
    }

    /// Captures the current value of every dirty id and clears the dirty sets.
    pub fn take_delta(&mut self) -> Delta {
        let ids = std::mem::take(&mut self.dirty);
        let files = ids
            .files
            .iter()
            .map(|id| (*id, self.files.get(id).cloned()))
            .collect();
        let meta = ids
            .meta
            .iter()
            .map(|s| (*s, self.meta.get(s).cloned()))
            .collect();
        Delta {
            files,
            meta,
            next_seq: self.next_seq,
            ids,
        }
    }

    /// Marks every id of a failed checkpoint's delta dirty again.
    pub fn restore_delta(&mut self, ids: Dirty) {
        self.dirty.files.extend(ids.files);
        self.dirty.meta.extend(ids.meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    fn state() -> State {
        State::new(BTreeMap::new(), BTreeMap::new(), 1)
    }

    #[test]
    fn exchange_swaps_both_sides() {
        let mut s = state();
        s.apply_track(1, &p("a/x"));
        s.apply_track(2, &p("b/y"));
        let op = MetaOp::Rename {
            from: p("a"),
            to: p("b"),
            flags: libc::RENAME_EXCHANGE,
        };
        s.push_meta(&op);
        assert_eq!(s.entry(1).unwrap().path, p("b/x"));
        assert_eq!(s.entry(2).unwrap().path, p("a/y"));
    }

    #[test]
    fn plain_rename_drops_replaced_target() {
        let mut s = state();
        s.apply_track(1, &p("a"));
        s.apply_track(2, &p("b"));
        s.push_meta(&MetaOp::Rename {
            from: p("a"),
            to: p("b"),
            flags: 0,
        });
        assert_eq!(s.entry(1).unwrap().path, p("b"));
        assert!(s.entry(2).is_none());
    }

    #[test]
    fn link_then_unlink_of_the_first_name_keeps_the_file_under_the_other() {
        // git: write tmp_pack, link it to pack-X.pack, unlink tmp_pack.
        let mut s = state();
        s.push_meta(&MetaOp::Create {
            path: p("tmp"),
            file: 1,
            mode: 0o444,
        });
        s.apply_write(1, 0, 100);
        s.push_meta(&MetaOp::Link {
            from: p("tmp"),
            to: p("pack"),
        });
        s.push_meta(&MetaOp::Unlink {
            path: p("tmp"),
            file: 1,
            last_link: false,
        });
        let e = s.entry(1).unwrap();
        assert_eq!(e.path, p("pack"));
        assert!(e.links.is_empty());
        assert!(e.is_pending());
    }

    #[test]
    fn rename_over_one_name_keeps_the_other_and_rebases_links() {
        let mut s = state();
        s.apply_track(1, &p("a/x"));
        s.push_meta(&MetaOp::Link {
            from: p("a/x"),
            to: p("a/y"),
        });
        s.apply_track(2, &p("b"));
        s.push_meta(&MetaOp::Rename {
            from: p("b"),
            to: p("a/x"),
            flags: 0,
        });
        assert_eq!(s.entry(1).unwrap().path, p("a/y"));
        s.push_meta(&MetaOp::Rename {
            from: p("a"),
            to: p("c"),
            flags: 0,
        });
        assert_eq!(s.entry(1).unwrap().path, p("c/y"));
        assert_eq!(s.entry(2).unwrap().path, p("c/x"));
        assert!(s.is_tracked_at(1, &p("c/y")));
    }

    #[test]
    fn entries_stored_without_links_still_decode() {
        #[derive(Serialize)]
        struct V0 {
            path: RelPath,
            ranges: RangeSet,
            size: Option<u64>,
            version: u64,
        }
        let mut ranges = RangeSet::new();
        ranges.insert(3, 9);
        let old = V0 {
            path: p("d/f"),
            ranges: ranges.clone(),
            size: Some(9),
            version: 4,
        };
        let e = FileEntry::decode(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!(
            (e.path, e.ranges, e.size, e.version),
            (p("d/f"), ranges, Some(9), 4)
        );
        assert!(e.links.is_empty());
        let mut new = FileEntry::new(p("g"));
        new.links.push(p("h"));
        assert_eq!(
            FileEntry::decode(&bincode::serialize(&new).unwrap()).unwrap(),
            new
        );
    }

    #[test]
    fn entries_carry_a_format_and_old_ones_still_decode() {
        let mut e = FileEntry::new(p("g"));
        e.links.push(p("h"));
        e.ranges.insert(1, 2);
        let new = e.encode().unwrap();
        assert_eq!(new[..3], [0xFE, 0xFF, ENTRY_FORMAT]);
        assert_eq!(FileEntry::decode(&new).unwrap(), e);
        let mut future = new.clone();
        future[2] = 99;
        assert!(matches!(
            FileEntry::decode(&future),
            Err(JournalError::UnknownFormat { found: 99, .. })
        ));
        // Old values start with their path's u64 length: 510 bytes start [0xFE, 1],
        // the longest path [0, 0x40]; none starts with the prefix.
        let path_of = |len: usize| -> String {
            (0..len)
                .map(|i| if i % 200 == 199 { '/' } else { 'a' })
                .collect()
        };
        for (len, start) in [(510, [0xFE, 1]), (crate::path::MAX_REL_PATH, [0, 0x40])] {
            let old = FileEntry::new(p(&path_of(len)));
            let bytes = bincode::serialize(&old).unwrap();
            assert_eq!(bytes[..2], start);
            assert_eq!(FileEntry::decode(&bytes).unwrap(), old);
        }
    }

    #[test]
    fn stale_ack_removes_only_untouched_ranges() {
        let mut s = state();
        s.apply_track(1, &p("f"));
        s.apply_write(1, 0, 100);
        let snap = s.snapshot_files();
        let v = snap[&1].version;
        s.apply_write(1, 10, 20);
        s.apply_write(1, 200, 300);
        assert!(!s.ack_file(1, v, &snap[&1].ranges));
        let left: Vec<_> = s.entry(1).unwrap().ranges.iter().collect();
        assert_eq!(left, vec![(10, 20), (200, 300)]);
    }

    #[test]
    fn an_ack_of_a_gone_file_leaves_a_new_file_with_its_inode_number_pending() {
        let mut s = state();
        s.apply_track(7, &p("old"));
        s.apply_write(7, 0, 100);
        let snap = s.snapshot_files();
        s.apply_forget(7); // unlinked while its update was in flight
        s.apply_track(7, &p("new")); // a new file got the inode number
        s.apply_write(7, 0, 50);
        assert!(!s.ack_file(7, snap[&7].version, &snap[&7].ranges));
        let e = s.entry(7).unwrap();
        assert_eq!(e.ranges.iter().collect::<Vec<_>>(), vec![(0, 50)]);
        assert!(s.snapshot_files().contains_key(&7));
    }

    #[test]
    fn stale_ack_after_truncate_keeps_tail() {
        let mut s = state();
        s.apply_track(1, &p("f"));
        s.apply_write(1, 0, 100);
        let snap = s.snapshot_files();
        s.apply_size(1, 50);
        s.apply_size(1, 100);
        s.apply_write(1, 60, 70);
        assert!(!s.ack_file(1, snap[&1].version, &snap[&1].ranges));
        let e = s.entry(1).unwrap();
        assert_eq!(e.ranges.iter().collect::<Vec<_>>(), vec![(60, 70)]);
        assert_eq!(e.size, Some(100));
    }

    proptest::proptest! {
        /// The pending set a snapshot copies from is always exactly the entries a full
        /// walk would find pending, whatever mix of writes, truncates, acks, renames and
        /// forgets came before.
        #[test]
        fn the_pending_set_matches_a_full_walk(ops in proptest::collection::vec((0u8..6, 0u64..6, 0u64..4), 1..80)) {
            let mut st = State::new(BTreeMap::new(), BTreeMap::new(), 1);
            for (kind, file, n) in ops {
                let path = p(&format!("d{}/f{file}", file % 2));
                match kind {
                    0 => st.apply_track(file, &path),
                    1 => st.apply_write(file, n * 10, n * 10 + 5),
                    2 => st.apply_size(file, n * 7),
                    3 => {
                        let v = st.entry(file).map_or(0, |e| e.version);
                        let r = st.entry(file).map(|e| e.ranges.clone()).unwrap_or_default();
                        st.ack_file(file, v.saturating_sub(n % 2), &r);
                    }
                    4 => st.apply_meta(99, &MetaOp::Rename { from: p("d0"), to: p(&format!("d{n}")), flags: 0 }),
                    _ => st.apply_forget(file),
                }
                let walked: Vec<FileId> = st.files().iter().filter(|(_, e)| e.is_pending()).map(|(id, _)| *id).collect();
                let set: Vec<FileId> = st.snapshot_files().keys().copied().collect();
                proptest::prop_assert_eq!(walked, set);
            }
        }
    }
}
