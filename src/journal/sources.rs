//! The chunk index of the store: which file holds the content of a chunk-tree node
//! (see `crate::chunks`), for content the peer is known to hold or to be receiving. A
//! new file whose nodes are found here is offered with that file named, and the peer
//! rebuilds it from its own copy of that file: data copied or moved between files
//! crosses the link once.
//!
//! Stored in the journal's sled: tree `sources` maps a node hash (8 bytes, big-endian)
//! to [`FORMAT`] and the holding file's path; tree `sources_by_path` maps a path to the
//! node hashes indexed for it, so indexing a file again replaces its old nodes. A hint
//! only: a file edited since still holds most of its nodes, and the peer verifies
//! whatever it rebuilds.

use super::JournalError;
use crate::path::RelPath;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Format byte in front of every stored value.
const FORMAT: u8 = 1;
/// Nodes indexed per file, at most (the largest first: see [`Sources::put`]).
pub const MAX_NODES: usize = 1 << 16;

/// The chunk index handle (shared through [`super::Journal::sources`]).
pub struct Sources {
    nodes: sled::Tree,
    by_path: sled::Tree,
    /// Files indexed since this journal was opened.
    puts: AtomicUsize,
    /// Serialises changes (a path's nodes and its list go together).
    write: Mutex<()>,
}

/// A file that holds some of the nodes looked up, and how many of their bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Where it was when indexed.
    pub path: RelPath,
    /// Bytes of the looked-up nodes it holds.
    pub bytes: u64,
}

fn db(context: &'static str) -> impl FnOnce(sled::Error) -> JournalError {
    move |e| JournalError::db(context, e)
}

impl Sources {
    /// Opens the trees in `db`.
    pub(super) fn open(db_: &sled::Db) -> Result<Sources, JournalError> {
        Ok(Sources {
            nodes: db_.open_tree("sources").map_err(db("open tree sources"))?,
            by_path: (db_.open_tree("sources_by_path")).map_err(db("open tree sources_by_path"))?,
            puts: AtomicUsize::new(0),
            write: Mutex::new(()),
        })
    }

    /// Records that `path` holds the nodes `hashes` (the first [`MAX_NODES`] of them
    /// are kept), replacing what was indexed for it before.
    pub fn put(&self, path: &RelPath, hashes: &[u64]) -> Result<(), JournalError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.forget_locked(path)?;
        let hashes = &hashes[..hashes.len().min(MAX_NODES)];
        let mut value = vec![FORMAT];
        value.extend_from_slice(path.as_bytes());
        let mut batch = sled::Batch::default();
        for h in hashes {
            batch.insert(&h.to_be_bytes(), value.as_slice());
        }
        self.nodes.apply_batch(batch).map_err(db("index sources"))?;
        let list: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        (self.by_path.insert(path.as_bytes(), list)).map_err(db("index sources by path"))?;
        Ok(())
    }

    /// Drops what was indexed for `path` (nodes another file was indexed with since
    /// stay that file's).
    pub fn forget(&self, path: &RelPath) -> Result<(), JournalError> {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.forget_locked(path)
    }

    fn forget_locked(&self, path: &RelPath) -> Result<(), JournalError> {
        let Some(old) = (self.by_path.remove(path.as_bytes())).map_err(db("forget sources"))?
        else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for h in old.chunks_exact(8) {
            let key = u64::from_le_bytes(h.try_into().expect("8 bytes")).to_be_bytes();
            let held = self.nodes.get(key).map_err(db("read sources"))?;
            if held.is_some_and(|v| v.get(1..) == Some(path.as_bytes())) {
                batch.remove(&key);
            }
        }
        self.nodes.apply_batch(batch).map_err(db("forget sources"))
    }

    /// Files indexed since the journal was opened.
    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::Relaxed)
    }

    /// Every path something is indexed for.
    pub fn paths(&self) -> Result<Vec<RelPath>, JournalError> {
        let mut out = Vec::new();
        for kv in self.by_path.iter() {
            let (k, _) = kv.map_err(db("read sources by path"))?;
            out.extend(RelPath::from_bytes(&k).ok());
        }
        Ok(out)
    }

    /// True if something is indexed for `path`.
    pub fn has(&self, path: &RelPath) -> Result<bool, JournalError> {
        (self.by_path.contains_key(path.as_bytes())).map_err(db("read sources by path"))
    }

    /// The files holding any of `nodes` (hash, bytes), each with the bytes of those it
    /// holds, most first. Unreadable entries are skipped.
    pub fn holders(&self, nodes: &[(u64, u64)]) -> Result<Vec<Holder>, JournalError> {
        let mut found: HashMap<Vec<u8>, u64> = HashMap::new();
        for &(hash, len) in nodes {
            let Some(v) = self
                .nodes
                .get(hash.to_be_bytes())
                .map_err(db("read sources"))?
            else {
                continue;
            };
            if v.len() > 1 && v[0] == FORMAT {
                *found.entry(v[1..].to_vec()).or_default() += len;
            }
        }
        let mut out: Vec<Holder> = (found.into_iter())
            .filter_map(|(p, bytes)| {
                Some(Holder {
                    path: RelPath::from_bytes(&p).ok()?,
                    bytes,
                })
            })
            .collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn holders_are_ranked_by_bytes_and_indexing_again_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let j = crate::journal::Journal::open(&tmp.path().join("j")).unwrap();
        let s = j.sources();
        s.put(&p("a/big.iso"), &[10, 11, 12]).unwrap();
        s.put(&p("b/small"), &[20, 12]).unwrap();
        let got = s
            .holders(&[(10, 100), (11, 100), (20, 5), (99, 1000)])
            .unwrap();
        let ranked: Vec<(String, u64)> =
            got.iter().map(|h| (h.path.to_string(), h.bytes)).collect();
        assert_eq!(ranked, [("a/big.iso".into(), 200), ("b/small".into(), 5)]);
        // node 12 now belongs to b/small; indexing a/big.iso again drops 10 and 11
        // but leaves b/small's 12 alone
        s.put(&p("a/big.iso"), &[13]).unwrap();
        let got = s.holders(&[(10, 1), (11, 1), (12, 7), (13, 9)]).unwrap();
        let ranked: Vec<(String, u64)> =
            got.iter().map(|h| (h.path.to_string(), h.bytes)).collect();
        assert_eq!(ranked, [("a/big.iso".into(), 9), ("b/small".into(), 7)]);
        s.forget(&p("b/small")).unwrap();
        assert!(s.holders(&[(12, 1), (20, 1)]).unwrap().is_empty());
    }
}
