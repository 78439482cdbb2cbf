//! Incremental whole-file BLAKE3 hashing.
//!
//! A [`HashTree`] keeps the BLAKE3 chaining value (CV) of every [`LEAF`]-sized, leaf-aligned
//! slice of a file. After a small edit only the leaves touching the changed bytes are read and
//! re-hashed ([`HashTree::update`]); the whole-content hash ([`HashTree::root`]) is then rebuilt
//! from the stored CVs with cheap parent-node compressions, and is exactly
//! `blake3::hash(content)`.
//!
//! Why this is valid BLAKE3: a leaf is a power-of-two number of chunks and starts at a multiple of
//! its own length, so every leaf is a complete subtree of the standard BLAKE3 tree (only the last
//! leaf may be short). Leaves are merged following BLAKE3's shape: the left child of any subtree
//! holds [`left_subtree_len`] bytes (the largest power of two strictly less than the subtree's
//! length). Content of at most one leaf has no parent nodes at all, so for such content the single
//! stored value is the plain root hash of the content rather than a CV.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use serde::{Deserialize, Serialize};

/// Leaf size in bytes: 32 KiB, i.e. 32 BLAKE3 chunks (a power of two, so leaves are aligned
/// BLAKE3 subtrees). The trade: a changed page costs a read of its leaf on each side, and a
/// tree holds 32 bytes per leaf (1 MiB of memory per GiB of file). At 256 KiB, 493 changed
/// pages of a 60 MB SQLite file touched most leaves, and hashing read 90% of the file.
pub const LEAF: u64 = 32 << 10;

/// Per-file BLAKE3 leaf chaining values, allowing the whole-file hash to be updated in time
/// proportional to the changed bytes.
///
/// Invariant (checked on deserialization): `leaves.len()` is the number of leaves of `len` bytes
/// (one for `len <= LEAF`, including the empty file). When `len <= LEAF` the single entry is the
/// root hash `blake3::hash(content)`; otherwise entry `i` is the non-root CV of bytes
/// `[i * LEAF, min((i + 1) * LEAF, len))`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawHashTree")]
pub struct HashTree {
    len: u64,
    leaves: Vec<[u8; 32]>,
}

/// What an [`HashTree::update`] cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Bytes read from the content to re-hash leaves.
    pub bytes_read: u64,
    /// Number of leaves whose value was recomputed.
    pub leaves_rehashed: usize,
}

/// A deserialized [`HashTree`] whose leaf count does not match its length.
#[derive(Debug, thiserror::Error)]
#[error("hash tree for {len} bytes must have {expected} leaves, found {found}")]
pub struct InvalidHashTree {
    /// The content length recorded in the tree.
    pub len: u64,
    /// The leaf count that length requires.
    pub expected: usize,
    /// The leaf count found.
    pub found: usize,
}

/// The unchecked serialized form of [`HashTree`].
#[derive(Deserialize)]
struct RawHashTree {
    len: u64,
    leaves: Vec<[u8; 32]>,
}

impl TryFrom<RawHashTree> for HashTree {
    type Error = InvalidHashTree;

    fn try_from(raw: RawHashTree) -> Result<Self, Self::Error> {
        let expected = leaf_count(raw.len);
        if raw.leaves.len() != expected {
            return Err(InvalidHashTree {
                len: raw.len,
                expected,
                found: raw.leaves.len(),
            });
        }
        Ok(HashTree {
            len: raw.len,
            leaves: raw.leaves,
        })
    }
}

impl Default for HashTree {
    fn default() -> Self {
        HashTree::empty()
    }
}

impl HashTree {
    /// The tree of empty content.
    pub fn empty() -> HashTree {
        HashTree {
            len: 0,
            leaves: vec![*blake3::hash(b"").as_bytes()],
        }
    }

    /// Hashes in-memory content.
    pub fn from_bytes(data: &[u8]) -> HashTree {
        let mut tree = HashTree::empty();
        let len = data.len() as u64;
        tree.update_from(slice_reader(data), [(0, len)], len)
            .expect("reading from a slice cannot fail");
        tree
    }

    /// Hashes a whole file (reads it once), up to its current length.
    pub fn from_file(f: &File) -> io::Result<HashTree> {
        let len = f.metadata()?.len();
        let mut tree = HashTree::empty();
        tree.update(f, [(0, len)], len)?;
        Ok(tree)
    }

    /// Re-hashes only the leaves touching the `dirty` half-open byte ranges and the leaves
    /// affected by a size change to `new_len` (the old last partial leaf, new leaves past the old
    /// end), reading only those leaves from `f`; leaves past the new end are dropped.
    ///
    /// The caller must report every byte whose content may differ from what was last hashed. In
    /// particular a truncation that is later followed by an extension (before this call) changes
    /// the bytes between the truncation point and the old end: report them as dirty (e.g.
    /// `(truncated_len, u64::MAX)`; ranges are clipped to `new_len`).
    ///
    /// The file must be at least `new_len` bytes long. On error `self` is unchanged.
    pub fn update(
        &mut self,
        f: &File,
        dirty: impl IntoIterator<Item = (u64, u64)>,
        new_len: u64,
    ) -> io::Result<UpdateStats> {
        self.update_from(|off, buf| f.read_exact_at(buf, off), dirty, new_len)
    }

    /// [`update`](Self::update) with content read through `read_at(offset, buf)`, which must fill
    /// all of `buf` with the content starting at `offset`.
    pub fn update_from(
        &mut self,
        mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
        dirty: impl IntoIterator<Item = (u64, u64)>,
        new_len: u64,
    ) -> io::Result<UpdateStats> {
        let todo = self.leaves_to_rehash(dirty, new_len);
        let mut stats = UpdateStats::default();
        let mut buf = Vec::new();
        let mut fresh = Vec::with_capacity(todo.len());
        for i in todo {
            let (start, end) = leaf_range(i, new_len);
            buf.resize((end - start) as usize, 0);
            read_at(start, &mut buf)?;
            fresh.push((i, leaf_value(start, &buf, new_len)));
            stats.bytes_read += end - start;
            stats.leaves_rehashed += 1;
        }
        self.leaves.resize(leaf_count(new_len), [0; 32]);
        for (i, value) in fresh {
            self.leaves[i] = value;
        }
        self.len = new_len;
        Ok(stats)
    }

    /// The whole-content BLAKE3 hash (equal to `blake3::hash(content)`), merged from the leaf
    /// values in O(number of leaves) compressions.
    pub fn root(&self) -> [u8; 32] {
        if self.len <= LEAF {
            return self.leaves[0];
        }
        let (left, right) = self.split(0, self.leaves.len(), self.len);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    }

    /// The BLAKE3 hash of the content's first `leaves` leaves alone (at least two, all
    /// full; `None` otherwise): a prefix's hash without reading it.
    pub fn prefix_root(&self, leaves: usize) -> Option<[u8; 32]> {
        let len = leaves as u64 * LEAF;
        if leaves < 2 || len > self.len {
            return None;
        }
        let (left, right) = self.split(0, leaves, len);
        Some(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
    }

    /// Memory the tree holds, in bytes.
    pub fn mem_bytes(&self) -> usize {
        std::mem::size_of::<HashTree>() + self.leaves.len() * 32
    }

    /// The content length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sorted indices (under `new_len`) of the leaves whose value must be recomputed.
    fn leaves_to_rehash(
        &self,
        dirty: impl IntoIterator<Item = (u64, u64)>,
        new_len: u64,
    ) -> BTreeSet<usize> {
        let mut todo = BTreeSet::new();
        for (start, end) in dirty {
            let end = end.min(new_len);
            if start < end {
                todo.extend(leaf_index(start)..=leaf_index(end - 1));
            }
        }
        todo.extend(self.resized_leaves(new_len));
        todo
    }

    /// Leaves whose byte range or kind (root hash vs CV) differs between `self.len` and `new_len`.
    fn resized_leaves(&self, new_len: u64) -> impl Iterator<Item = usize> + '_ {
        let (old_n, new_n) = (self.leaves.len(), leaf_count(new_len));
        let kind_changed = (self.len <= LEAF) != (new_len <= LEAF);
        let first = if kind_changed {
            0
        } else {
            old_n.min(new_n) - 1
        };
        (first..new_n).filter(move |&i| {
            kind_changed || i >= old_n || leaf_range(i, self.len) != leaf_range(i, new_len)
        })
    }

    /// The CVs of the left and right children of the subtree of `len` bytes made of leaves
    /// `first..first + count` (`count >= 2`).
    fn split(&self, first: usize, count: usize, len: u64) -> (ChainingValue, ChainingValue) {
        let left_len = left_subtree_len(len);
        let left_count = (left_len / LEAF) as usize;
        let left = self.subtree_cv(first, left_count, left_len);
        let right = self.subtree_cv(first + left_count, count - left_count, len - left_len);
        (left, right)
    }

    /// The non-root CV of the subtree of `len` bytes made of leaves `first..first + count`.
    fn subtree_cv(&self, first: usize, count: usize, len: u64) -> ChainingValue {
        if count == 1 {
            return self.leaves[first];
        }
        let (left, right) = self.split(first, count, len);
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

/// Number of leaves stored for `len` bytes of content (at least one, even when empty).
fn leaf_count(len: u64) -> usize {
    len.div_ceil(LEAF).max(1) as usize
}

/// Index of the leaf holding byte `offset`.
fn leaf_index(offset: u64) -> usize {
    (offset / LEAF) as usize
}

/// Half-open byte range of leaf `i` in content of `len` bytes (empty past the end).
fn leaf_range(i: usize, len: u64) -> (u64, u64) {
    let start = (i as u64 * LEAF).min(len);
    (start, (start + LEAF).min(len))
}

/// The stored value of the leaf at `start` holding `data`, in content of `len` bytes: the root
/// hash when the content is a single leaf, otherwise the leaf's non-root CV.
fn leaf_value(start: u64, data: &[u8], len: u64) -> [u8; 32] {
    if len <= LEAF {
        return *blake3::hash(data).as_bytes();
    }
    blake3::Hasher::new()
        .set_input_offset(start)
        .update(data)
        .finalize_non_root()
}

/// A `read_at` function over in-memory content.
fn slice_reader(data: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
    |offset, buf| {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = data
            .get(start..)
            .and_then(|rest| rest.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// Largest content the tests build (6 MiB), plus room for one write past it.
    const MAX: u64 = 6 * LEAF;
    /// Largest single test write.
    const MAX_WRITE: u64 = 64 * 1024;

    /// Deterministic pseudo-random bytes from a seed.
    fn content(seed: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0; len as usize];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn temp_file(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    fn assert_matches(tree: &HashTree, data: &[u8]) {
        assert_eq!(tree.len(), data.len() as u64);
        assert_eq!(
            tree.root(),
            *blake3::hash(data).as_bytes(),
            "len {}",
            data.len()
        );
    }

    const EDGE_SIZES: &[u64] = &[
        0,
        1,
        1023,
        1024,
        1025,
        LEAF - 1,
        LEAF,
        LEAF + 1,
        LEAF + 1024,
        2 * LEAF - 1,
        2 * LEAF,
        2 * LEAF + 1,
        3 * LEAF + 5,
        4 * LEAF,
        4 * LEAF + 1,
        5 * LEAF - 1,
        6 * LEAF,
    ];

    #[test]
    fn from_bytes_matches_blake3_at_edge_sizes() {
        for &len in EDGE_SIZES {
            let data = content(len, len);
            assert_matches(&HashTree::from_bytes(&data), &data);
        }
    }

    #[test]
    fn a_prefix_of_whole_leaves_hashes_as_blake3_of_it() {
        let data = content(9, 7 * LEAF + 123);
        let tree = HashTree::from_bytes(&data);
        for leaves in 2..=7 {
            let want = *blake3::hash(&data[..leaves * LEAF as usize]).as_bytes();
            assert_eq!(tree.prefix_root(leaves), Some(want), "{leaves} leaves");
        }
        assert_eq!(tree.prefix_root(1), None, "one leaf holds a CV, not a hash");
        assert_eq!(tree.prefix_root(8), None, "the last leaf is short");
    }

    #[test]
    fn from_file_matches_from_bytes() {
        for &len in &[0, 1, LEAF, 3 * LEAF + 5] {
            let data = content(7, len);
            let tree = HashTree::from_file(&temp_file(&data)).unwrap();
            assert_eq!(tree, HashTree::from_bytes(&data));
            assert_matches(&tree, &data);
        }
    }

    #[test]
    fn resizing_between_edge_sizes_matches_blake3() {
        for &from in EDGE_SIZES {
            for &to in EDGE_SIZES {
                let mut data = content(from, from);
                let mut tree = HashTree::from_bytes(&data);
                data.resize(to as usize, 0);
                tree.update_from(slice_reader(&data), [], to).unwrap();
                assert_matches(&tree, &data);
            }
        }
    }

    #[test]
    fn small_write_into_big_file_reads_one_leaf() {
        let mut data = content(1, MAX);
        let f = temp_file(&data);
        let mut tree = HashTree::from_file(&f).unwrap();
        let (off, patch) = (3 * LEAF + 100, content(2, 4096));
        data[off as usize..][..patch.len()].copy_from_slice(&patch);
        f.write_all_at(&patch, off).unwrap();
        let stats = tree.update(&f, [(off, off + 4096)], MAX).unwrap();
        assert_matches(&tree, &data);
        assert!(stats.bytes_read <= 2 * LEAF, "{stats:?}");
        assert_eq!(stats.leaves_rehashed, 1);
    }

    #[test]
    fn write_straddling_leaves_rehashes_both() {
        let mut data = content(1, 3 * LEAF);
        let mut tree = HashTree::from_bytes(&data);
        let off = 2 * LEAF - 10;
        data[off as usize..][..20].fill(0xAB);
        let stats = tree
            .update_from(slice_reader(&data), [(off, off + 20)], 3 * LEAF)
            .unwrap();
        assert_matches(&tree, &data);
        assert_eq!(stats.leaves_rehashed, 2);
        assert_eq!(stats.bytes_read, 2 * LEAF);
    }

    #[test]
    fn appending_to_full_leaves_reads_only_new_bytes() {
        let mut data = content(1, 2 * LEAF);
        let mut tree = HashTree::from_bytes(&data);
        data.extend_from_slice(&content(2, 10));
        let stats = tree
            .update_from(
                slice_reader(&data),
                [(2 * LEAF, 2 * LEAF + 10)],
                2 * LEAF + 10,
            )
            .unwrap();
        assert_matches(&tree, &data);
        assert_eq!(stats.bytes_read, 10);
    }

    #[test]
    fn growing_past_one_leaf_rehashes_first_leaf_as_cv() {
        // Leaf 0's bytes are unchanged, but its stored value must switch from root hash to CV.
        let mut data = content(1, LEAF);
        let mut tree = HashTree::from_bytes(&data);
        data.push(9);
        tree.update_from(slice_reader(&data), [], LEAF + 1).unwrap();
        assert_matches(&tree, &data);
        data.pop();
        tree.update_from(slice_reader(&data), [], LEAF).unwrap();
        assert_matches(&tree, &data);
    }

    #[test]
    fn failed_read_leaves_tree_unchanged() {
        let data = content(1, 2 * LEAF);
        let mut tree = HashTree::from_bytes(&data);
        let before = tree.clone();
        let short = &data[..LEAF as usize];
        let err = tree.update_from(slice_reader(short), [(LEAF, LEAF + 1)], 2 * LEAF);
        assert!(err.is_err());
        assert_eq!(tree, before);
    }

    #[test]
    fn dirty_ranges_past_new_end_are_ignored() {
        let data = content(1, LEAF + 5);
        let mut tree = HashTree::from_bytes(&data);
        let stats = tree
            .update_from(
                slice_reader(&data),
                [(5 * LEAF, 6 * LEAF), (3, 3)],
                LEAF + 5,
            )
            .unwrap();
        assert_eq!(stats, UpdateStats::default());
        assert_matches(&tree, &data);
    }

    #[test]
    fn serde_round_trip() {
        for &len in &[0, 10, LEAF, 3 * LEAF + 5] {
            let tree = HashTree::from_bytes(&content(3, len));
            let bytes = bincode::serialize(&tree).unwrap();
            assert_eq!(bincode::deserialize::<HashTree>(&bytes).unwrap(), tree);
        }
    }

    #[test]
    fn deserializing_wrong_leaf_count_fails() {
        let mut tree = HashTree::from_bytes(&content(3, 3 * LEAF));
        tree.leaves.pop();
        let bytes = bincode::serialize(&tree).unwrap();
        assert!(bincode::deserialize::<HashTree>(&bytes).is_err());
    }

    /// One edit to the content.
    #[derive(Clone, Debug)]
    enum Op {
        /// Write `len` pseudo-random bytes from `seed` at `offset` (may leave a hole).
        Write { offset: u64, len: u64, seed: u64 },
        /// Truncate or extend (with zeros) to the given length.
        SetLen(u64),
    }

    /// Sizes clustered around leaf (and chunk) boundaries, at most `MAX`.
    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..=6, -3i64..=3).prop_map(|(k, d)| (k * LEAF).saturating_add_signed(d).min(MAX)),
            0u64..=3000,
            0u64..=MAX,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (size(), 1u64..=MAX_WRITE, any::<u64>()).prop_map(|(offset, len, seed)| {
                Op::Write { offset: offset.min(MAX - len), len, seed }
            }),
            1 => size().prop_map(Op::SetLen),
        ]
    }

    /// Applies `op` to the model and the file; returns the range to report as dirty.
    fn apply(op: &Op, model: &mut Vec<u8>, f: &File) -> Option<(u64, u64)> {
        match *op {
            Op::Write { offset, len, seed } => {
                let bytes = content(seed, len);
                let end = (offset + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&bytes);
                f.write_all_at(&bytes, offset).unwrap();
                Some((offset, offset + len))
            }
            Op::SetLen(len) => {
                let shrunk = len < model.len() as u64;
                model.resize(len as usize, 0);
                f.set_len(len).unwrap();
                // A later re-extension would change these bytes without a write.
                shrunk.then_some((len, u64::MAX))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn prop_update_after_each_op_matches_blake3(
            init in size(), seed in any::<u64>(), ops in prop::collection::vec(op(), 1..8),
        ) {
            let mut model = content(seed, init);
            let f = temp_file(&model);
            let mut tree = HashTree::from_file(&f).unwrap();
            for op in &ops {
                let dirty = apply(op, &mut model, &f);
                tree.update(&f, dirty, model.len() as u64).unwrap();
                assert_matches(&tree, &model);
            }
        }

        #[test]
        fn prop_batched_update_matches_blake3(
            init in size(), seed in any::<u64>(), ops in prop::collection::vec(op(), 1..8),
        ) {
            let mut model = content(seed, init);
            let f = temp_file(&model);
            let mut tree = HashTree::from_file(&f).unwrap();
            let dirty: Vec<_> = ops.iter().filter_map(|op| apply(op, &mut model, &f)).collect();
            tree.update(&f, dirty, model.len() as u64).unwrap();
            assert_matches(&tree, &model);
            prop_assert_eq!(tree, HashTree::from_bytes(&model));
        }
    }
}
