//! The index: every entry of the folder this node knows, live or deleted (tombstones),
//! with its version vector, whole-file BLAKE3 and the local stamp it was last seen
//! with. It is the state half of sync: peers exchange it on connect, and the receiver
//! checks every change from a peer against it.
//!
//! Stored in the journal's sled (trees `index`: path → entry, `index_seq`: change
//! number → path, for "what changed since the peer's last ack"), every value prefixed
//! with [`FORMAT`]. The node's clock (counters for version vectors) is reserved in
//! blocks durably, so a counter is never handed out twice, even after a kill -9.

use super::op::Timestamp;
use super::JournalError;
use crate::path::RelPath;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Format byte in front of every stored index value (1: before [`Entry::made_here`],
/// still read).
pub const FORMAT: u8 = 2;
/// Clock counters reserved per durable write.
const CLOCK_BLOCK: u64 = 1024;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is in `target`).
    Symlink,
}

/// How the entry looked locally when last indexed: a change behind syncfs's back
/// shows as a different stamp at the next mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// mtime in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// ctime in nanoseconds since the epoch.
    pub ctime_ns: i128,
}

/// One entry of the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File, directory or symlink.
    pub kind: Kind,
    /// Size in bytes (files).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Permission bits.
    pub mode: u32,
    /// BLAKE3 of the content (files) or of the target (symlinks); zeros for directories.
    pub hash: [u8; 32],
    /// Symlink target (empty otherwise).
    pub target: Vec<u8>,
    /// Which version this is.
    pub vv: VersionVector,
    /// A tombstone: the entry was deleted at version `vv`.
    pub deleted: bool,
    /// Local stamp when last indexed (not sent).
    pub stamp: Stamp,
    /// Local change number when last changed (not sent).
    pub seq: u64,
    /// For a tombstone left by a rename: where the entry went (not sent; shown by
    /// diagnostics only: a rename counts as a delete and a new entry).
    pub moved_to: Option<RelPath>,
    /// The journal's next op sequence number when a peer's version was last taken here
    /// (not sent): local ops recorded before it were made against what it replaced.
    pub taken_at: u64,
    /// This content was made on this node (a local change, or found by the scan), not
    /// taken from a peer (not sent): a peer's update replacing it in place keeps a copy
    /// in the archive. True for entries of format 1.
    pub made_here: bool,
}

/// An entry as format 1 stored it (without `made_here`).
#[derive(Deserialize)]
struct EntryV1 {
    kind: Kind,
    size: u64,
    mtime: Timestamp,
    mode: u32,
    hash: [u8; 32],
    target: Vec<u8>,
    vv: VersionVector,
    deleted: bool,
    stamp: Stamp,
    seq: u64,
    moved_to: Option<RelPath>,
    taken_at: u64,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Entry {
        Entry {
            kind: e.kind,
            size: e.size,
            mtime: e.mtime,
            mode: e.mode,
            hash: e.hash,
            target: e.target,
            vv: e.vv,
            deleted: e.deleted,
            stamp: e.stamp,
            seq: e.seq,
            moved_to: e.moved_to,
            taken_at: e.taken_at,
            made_here: true,
        }
    }
}

impl Entry {
    /// A new, empty, never-versioned entry of `kind` with permission bits `mode`.
    pub fn new(kind: Kind, mode: u32) -> Entry {
        Entry {
            kind,
            size: 0,
            mtime: Timestamp { secs: 0, nanos: 0 },
            mode,
            hash: *blake3::hash(b"").as_bytes(),
            target: Vec::new(),
            vv: VersionVector::new(),
            deleted: false,
            stamp: Stamp::default(),
            seq: 0,
            moved_to: None,
            taken_at: 0,
            made_here: true,
        }
    }

    /// A tombstone for this entry at version `vv`.
    pub fn tombstone(&self, vv: VersionVector) -> Entry {
        Entry {
            deleted: true,
            vv,
            stamp: Stamp::default(),
            moved_to: None,
            ..self.clone()
        }
    }

    fn encode(&self) -> Result<Vec<u8>, JournalError> {
        let mut out = vec![FORMAT];
        bincode::serialize_into(&mut out, self)
            .map_err(|e| JournalError::encode("index entry", e))?;
        Ok(out)
    }

    fn decode(b: &[u8]) -> Result<Entry, JournalError> {
        let bad = |e| JournalError::encode("index entry", e);
        match b.split_first() {
            Some((&FORMAT, rest)) => bincode::deserialize(rest).map_err(bad),
            Some((1, rest)) => bincode::deserialize::<EntryV1>(rest)
                .map(Entry::from)
                .map_err(bad),
            _ => Err(JournalError::Corrupt(
                "index entry of unknown format".into(),
            )),
        }
    }
}

/// The index handle (shared through [`super::Journal::index`]).
pub struct Index {
    entries: sled::Tree,
    by_seq: sled::Tree,
    meta: sled::Tree,
    /// (next counter, reserved up to): counters below `reserved` are ours to hand out.
    clock: Mutex<(u64, u64)>,
    /// Serialises read-modify-write of entries (seq numbers and the `by_seq` tree).
    write: Mutex<()>,
}

fn db(context: &str) -> impl FnOnce(sled::Error) -> JournalError + '_ {
    move |e| JournalError::db(context, e)
}

impl Index {
    /// Opens the index trees in `db`.
    pub(super) fn open(db: &sled::Db) -> Result<Index, JournalError> {
        let entries = db.open_tree("index").map_err(db_err("open tree index"))?;
        let by_seq = db
            .open_tree("index_seq")
            .map_err(db_err("open tree index_seq"))?;
        let meta = db
            .open_tree("index_meta")
            .map_err(db_err("open tree index_meta"))?;
        let reserved = read_u64(&meta, b"clock")?;
        Ok(Index {
            entries,
            by_seq,
            meta,
            clock: Mutex::new((reserved, reserved)),
            write: Mutex::new(()),
        })
    }

    /// A fresh counter of this node's clock, above every one handed out before.
    pub fn tick(&self) -> Result<u64, JournalError> {
        let mut c = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        c.0 += 1;
        if c.0 >= c.1 {
            let reserved = c.0 + CLOCK_BLOCK;
            self.meta
                .insert(b"clock", &reserved.to_be_bytes())
                .map_err(db("reserve clock"))?;
            self.meta.flush().map_err(db("flush clock"))?;
            c.1 = reserved;
        }
        Ok(c.0)
    }

    /// The entry at `path`, live or tombstone.
    pub fn get(&self, path: &RelPath) -> Result<Option<Entry>, JournalError> {
        match self.entries.get(path.as_bytes()).map_err(db("index get"))? {
            Some(v) => Entry::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `e` at `path` as a new local change (a fresh change number).
    pub fn put(&self, path: &RelPath, mut e: Entry) -> Result<(), JournalError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = self.get(path)? {
            self.by_seq
                .remove(old.seq.to_be_bytes())
                .map_err(db("index unseq"))?;
        }
        e.seq = self.last_seq()? + 1;
        self.by_seq
            .insert(e.seq.to_be_bytes(), path.as_bytes())
            .map_err(db("index seq"))?;
        self.entries
            .insert(path.as_bytes(), e.encode()?)
            .map_err(db("index put"))?;
        Ok(())
    }

    /// Updates the local stamp only (no new change number: peers need not hear of it).
    pub fn restamp(&self, path: &RelPath, stamp: Stamp) -> Result<(), JournalError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut e) = self.get(path)? {
            e.stamp = stamp;
            self.entries
                .insert(path.as_bytes(), e.encode()?)
                .map_err(db("index restamp"))?;
        }
        Ok(())
    }

    /// Notes that a peer's version was taken at `path` when the journal's next op
    /// sequence number was `seq` (no new change number).
    pub fn set_taken(&self, path: &RelPath, seq: u64) -> Result<(), JournalError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut e) = self.get(path)? {
            e.taken_at = seq;
            self.entries
                .insert(path.as_bytes(), e.encode()?)
                .map_err(db("index taken"))?;
        }
        Ok(())
    }

    /// The highest change number handed out.
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        Ok(match self.by_seq.last().map_err(db("index last"))? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        })
    }

    /// Entries changed after change number `after`, in change order, at most `limit`.
    pub fn changed_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(RelPath, Entry)>, JournalError> {
        let mut out = Vec::new();
        for kv in self.by_seq.range((after + 1).to_be_bytes()..).take(limit) {
            let (_, p) = kv.map_err(db("index scan"))?;
            let path = RelPath::from_bytes(&p)
                .map_err(|e| JournalError::Corrupt(format!("index path: {e}")))?;
            if let Some(e) = self.get(&path)? {
                out.push((path, e));
            }
        }
        Ok(out)
    }

    /// The entry at `path` and every entry below it, in path order.
    pub fn under(&self, path: &RelPath) -> Result<Vec<(RelPath, Entry)>, JournalError> {
        let mut out = Vec::new();
        if let Some(e) = self.get(path)? {
            out.push((path.clone(), e));
        }
        let mut prefix = path.as_bytes().to_vec();
        prefix.push(b'/');
        for kv in self.entries.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(db("index scan"))?;
            let p = RelPath::from_bytes(&k)
                .map_err(|e| JournalError::Corrupt(format!("index path: {e}")))?;
            out.push((p, Entry::decode(&v)?));
        }
        Ok(out)
    }

    /// The direct children of directory `dir` (the root: `RelPath::root()`).
    pub fn children(&self, dir: &RelPath) -> Result<Vec<(RelPath, Entry)>, JournalError> {
        self.children_within(dir, usize::MAX)
    }

    /// The direct children of `dir` among the first `keys` entries under it (its
    /// subtree's, in key order): a bounded look at a directory that may be huge.
    pub fn children_within(
        &self,
        dir: &RelPath,
        keys: usize,
    ) -> Result<Vec<(RelPath, Entry)>, JournalError> {
        let prefix = match dir.is_root() {
            true => Vec::new(),
            false => [dir.as_bytes(), b"/"].concat(),
        };
        let mut out = Vec::new();
        for kv in self.entries.scan_prefix(&prefix).take(keys) {
            let (k, v) = kv.map_err(db("index scan"))?;
            if k[prefix.len()..].contains(&b'/') {
                continue;
            }
            let p = RelPath::from_bytes(&k)
                .map_err(|e| JournalError::Corrupt(format!("index path: {e}")))?;
            out.push((p, Entry::decode(&v)?));
        }
        Ok(out)
    }

    /// One digest per directory that has entries: 16 bytes of BLAKE3 over its direct
    /// children (name, kind, tombstone, mode, hash, version), in name order. Two nodes
    /// whose directories hold the same versions compute the same digest.
    pub fn digests(&self) -> Result<Vec<(RelPath, [u8; 16])>, JournalError> {
        let mut dirs: std::collections::BTreeMap<Vec<u8>, blake3::Hasher> = Default::default();
        for kv in self.all() {
            let (path, e) = kv?;
            let Some((parent, name)) = path.split_last() else {
                continue;
            };
            let h = dirs.entry(parent.as_bytes().to_vec()).or_default();
            feed(h, name.as_encoded_bytes(), &e);
        }
        dirs.into_iter()
            .map(|(k, h)| {
                let p = RelPath::from_bytes(&k)
                    .map_err(|e| JournalError::Corrupt(format!("index path: {e}")))?;
                let d: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16 bytes");
                Ok((p, d))
            })
            .collect()
    }

    /// Live conflict copies (`NAME.sync-conflict-...`), in path order.
    pub fn conflict_copies(&self) -> Result<Vec<RelPath>, JournalError> {
        let mut out = Vec::new();
        for kv in self.all() {
            let (p, e) = kv?;
            let copy = p.split_last().is_some_and(|(_, n)| {
                n.as_encoded_bytes()
                    .windows(15)
                    .any(|w| w == b".sync-conflict-")
            });
            if copy && !e.deleted {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Every entry, in path order (live and tombstones).
    pub fn all(&self) -> impl Iterator<Item = Result<(RelPath, Entry), JournalError>> + '_ {
        self.entries.iter().map(|kv| {
            let (k, v) = kv.map_err(db("index iter"))?;
            let path = RelPath::from_bytes(&k)
                .map_err(|e| JournalError::Corrupt(format!("index path: {e}")))?;
            Ok((path, Entry::decode(&v)?))
        })
    }

    /// Number of entries (live and tombstones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is indexed yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last change number of ours that `peer` acknowledged.
    pub fn peer_acked(&self, peer: &str) -> Result<u64, JournalError> {
        read_u64(&self.meta, format!("acked/{peer}").as_bytes())
    }

    /// Records that `peer` has our index up to change number `seq`.
    pub fn set_peer_acked(&self, peer: &str, seq: u64) -> Result<(), JournalError> {
        self.meta
            .insert(format!("acked/{peer}").as_bytes(), &seq.to_be_bytes())
            .map_err(db("index ack"))?;
        Ok(())
    }

    /// The version the journal's op `seq` was given when it was first folded (a resend
    /// after a lost link must carry the same one, not fold the op twice).
    pub fn op_version(&self, seq: u64) -> Result<Option<VersionVector>, JournalError> {
        let Some(v) = self.meta.get(op_key(seq)).map_err(db("op version"))? else {
            return Ok(None);
        };
        match v.split_first() {
            Some((&FORMAT, rest)) => bincode::deserialize(rest)
                .map(Some)
                .map_err(|e| JournalError::Corrupt(format!("op version: {e}"))),
            _ => Err(JournalError::Corrupt("op version of unknown format".into())),
        }
    }

    /// Records the version op `seq` was given.
    pub fn set_op_version(&self, seq: u64, vv: &VersionVector) -> Result<(), JournalError> {
        let mut out = vec![FORMAT];
        bincode::serialize_into(&mut out, vv).map_err(|e| JournalError::encode("op version", e))?;
        self.meta
            .insert(op_key(seq), out)
            .map_err(db("op version"))?;
        Ok(())
    }

    /// Forgets the versions of ops up to `seq` (acknowledged by the peer).
    pub fn forget_op_versions(&self, seq: u64) -> Result<(), JournalError> {
        for k in self.meta.range(op_key(0)..=op_key(seq)).keys() {
            self.meta
                .remove(k.map_err(db("op version"))?)
                .map_err(db("op version"))?;
        }
        Ok(())
    }

    /// A flag in the index's metadata (e.g. "adopted": the first scan is pending).
    pub fn flag(&self, name: &str) -> Result<bool, JournalError> {
        Ok(self
            .meta
            .get(format!("flag/{name}").as_bytes())
            .map_err(db("index flag"))?
            .is_some())
    }

    /// Sets or clears a flag.
    pub fn set_flag(&self, name: &str, on: bool) -> Result<(), JournalError> {
        let k = format!("flag/{name}");
        match on {
            true => self.meta.insert(k.as_bytes(), &[1u8][..]).map(|_| ()),
            false => self.meta.remove(k.as_bytes()).map(|_| ()),
        }
        .map_err(db("index flag"))
    }

    /// Makes the index durable.
    pub fn flush(&self) -> Result<(), JournalError> {
        self.entries.flush().map_err(db("index flush"))?;
        Ok(())
    }
}

fn op_key(seq: u64) -> [u8; 13] {
    let mut k = *b"opvv/\0\0\0\0\0\0\0\0";
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Feeds one child into its directory's digest.
/// A digest of one entry with its whole path: equal digests mean both sides hold the
/// same entry at the same path (same kind, mode, content and version).
pub fn entry_digest(path: &RelPath, e: &Entry) -> u64 {
    let mut h = blake3::Hasher::new();
    feed(&mut h, path.as_bytes(), e);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn feed(h: &mut blake3::Hasher, name: &[u8], e: &Entry) {
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name);
    h.update(&[e.kind as u8, e.deleted as u8]);
    h.update(&e.mode.to_le_bytes());
    h.update(&e.hash);
    for (n, c) in e.vv.pairs() {
        h.update(&n.to_le_bytes());
        h.update(&c.to_le_bytes());
    }
    h.update(&[0xff]);
}

fn db_err(context: &'static str) -> impl FnOnce(sled::Error) -> JournalError {
    move |e| JournalError::db(context, e)
}

fn read_u64(t: &sled::Tree, key: &[u8]) -> Result<u64, JournalError> {
    Ok(match t.get(key).map_err(db("index meta"))? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_entry_is_read_as_made_here() {
        let mut e = entry();
        e.made_here = false;
        e.taken_at = 9;
        let mut v1 = vec![1u8];
        bincode::serialize_into(&mut v1, &e).unwrap();
        v1.truncate(v1.len() - 1); // format 1 ended at `taken_at`
        let back = Entry::decode(&v1).unwrap();
        assert_eq!(
            back,
            Entry {
                made_here: true,
                ..e.clone()
            }
        );
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(
            Entry::decode(&[3, 0]).is_err(),
            "an unknown format is refused"
        );
    }

    fn entry() -> Entry {
        Entry {
            size: 3,
            mtime: Timestamp { secs: 1, nanos: 0 },
            mode: 0o644,
            hash: [7; 32],
            ..Entry::new(Kind::File, 0)
        }
    }

    #[test]
    fn clock_never_repeats_across_reopen_and_changes_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| RelPath::from_bytes(s.as_bytes()).unwrap();
        let first;
        {
            let db = sled::open(dir.path()).unwrap();
            let ix = Index::open(&db).unwrap();
            first = ix.tick().unwrap();
            assert!(ix.tick().unwrap() > first);
            ix.put(&p("a"), entry()).unwrap();
            ix.put(&p("b"), entry()).unwrap();
            ix.put(&p("a"), entry()).unwrap(); // a changes again: listed once, last
            let since: Vec<_> = ix.changed_since(0, 10).unwrap();
            let names: Vec<_> = since.iter().map(|(p, _)| p.to_string()).collect();
            assert_eq!(names, ["b", "a"]);
            assert_eq!(ix.changed_since(since[0].1.seq, 10).unwrap().len(), 1);
        } // dropped without any orderly close of the clock
        let db = crate::journal::open_db(dir.path()).unwrap(); // (the lock may still be held)
        let ix = Index::open(&db).unwrap();
        assert!(ix.tick().unwrap() > first + 1);
        assert_eq!(ix.get(&p("a")).unwrap().unwrap().hash, [7; 32]);
    }

    #[test]
    fn equal_directories_have_equal_digests() {
        let p = |s: &str| RelPath::from_bytes(s.as_bytes()).unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (db1, db2) = (
            sled::open(d1.path()).unwrap(),
            sled::open(d2.path()).unwrap(),
        );
        let (a, b) = (Index::open(&db1).unwrap(), Index::open(&db2).unwrap());
        for ix in [&a, &b] {
            for n in ["x/1", "x/2", "y/1", "top"] {
                ix.put(&p(n), entry()).unwrap();
            }
        }
        assert_eq!(a.digests().unwrap(), b.digests().unwrap());
        b.put(
            &p("y/1"),
            Entry {
                hash: [8; 32],
                ..entry()
            },
        )
        .unwrap();
        let (da, db) = (a.digests().unwrap(), b.digests().unwrap());
        let differ: Vec<String> = da
            .iter()
            .zip(&db)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0.to_string())
            .collect();
        assert_eq!(differ, ["y"]);
        let kids: Vec<String> = a
            .children(&RelPath::root())
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(kids, ["top"]);
        assert_eq!(a.children(&p("x")).unwrap().len(), 2);
    }

    #[test]
    fn unknown_format_is_an_error() {
        assert!(Entry::decode(&[9, 1, 2]).is_err());
        let e = entry();
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
    }
}
