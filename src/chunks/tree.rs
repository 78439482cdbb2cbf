//! Building a file's chunk tree: FastCDC leaves, content-defined groups above them.

use super::{FANOUT, LANDMARK, LEAF_AVG, LEAF_MAX, LEAF_MIN, MAX_GROUP, TOP};
use fastcdc::v2020::StreamCDC;
use std::io::Read;

/// One node: a leaf (a chunk of the file) or a parent (a run of nodes one level down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// The first 6 bytes of a BLAKE3 hash: of the bytes (leaf) or of the children's
    /// hashes and lengths (parent). A false match is caught by the whole-file hash
    /// (a 1 GiB file's tree has about 2.4 million nodes: a 48-bit hash offered
    /// matches one of them by chance once in about 100 million offers).
    pub hash: u64,
    /// Where it starts in the file.
    pub offset: u64,
    /// Bytes it covers.
    pub len: u64,
    /// Its children: index of the first in the level below, and how many (0: a leaf).
    pub first: u32,
    /// Number of children (0 for a leaf).
    pub count: u32,
    /// The hash of its last leaf: whether a group closes after it depends on this
    /// alone, so a change inside a node moves no group boundary above it (unless it
    /// changed that leaf).
    pub key: u64,
}

/// A file's chunk tree: `levels[0]` are the leaves in file order, each next level the
/// parents of the one before; the last level has at most [`TOP`] nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<Node>>,
}

/// The first 6 bytes of a BLAKE3 hash, little-endian (what the wire carries).
pub(super) fn short(h: blake3::Hash) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&h.as_bytes()[..6]);
    u64::from_le_bytes(b)
}

impl Tree {
    /// Cuts everything `r` yields (a file, or a slice) into a tree.
    pub fn from_reader(r: impl Read) -> std::io::Result<Tree> {
        let mut leaves = Vec::new();
        for c in StreamCDC::new(r, LEAF_MIN, LEAF_AVG, LEAF_MAX) {
            let c = c.map_err(std::io::Error::from)?;
            let hash = short(blake3::hash(&c.data));
            leaves.push(Node {
                hash,
                offset: c.offset,
                len: c.length as u64,
                first: 0,
                count: 0,
                key: hash,
            });
        }
        Ok(Tree::from_leaves(leaves))
    }

    /// The tree of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Tree {
        Tree::from_reader(bytes).expect("reading a slice cannot fail")
    }

    fn from_leaves(leaves: Vec<Node>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().expect("one level").len() > TOP {
            let up = group(levels.last().expect("one level"), levels.len());
            levels.push(up);
        }
        Tree { levels }
    }

    /// The top level, (hash, len) of each node, of the tree whose leaves are `leaves`
    /// ((hash, len) in file order): what a tree built from their bytes has.
    pub fn top_of(leaves: &[(u64, u64)]) -> Vec<(u64, u64)> {
        Tree::of_leaves(leaves).top_pairs()
    }

    /// The top level as (hash, len) of each node, as [`crate::chunks::sketch::decode`]
    /// checks it.
    pub fn top_pairs(&self) -> Vec<(u64, u64)> {
        self.top().iter().map(|n| (n.hash, n.len)).collect()
    }

    /// The tree whose leaves are `leaves` ((hash, len) in file order).
    pub fn of_leaves(leaves: &[(u64, u64)]) -> Tree {
        let mut offset = 0;
        let node = |&(hash, len): &(u64, u64)| {
            let n = Node {
                hash,
                offset,
                len,
                first: 0,
                count: 0,
                key: hash,
            };
            offset += len;
            n
        };
        Tree::from_leaves(leaves.iter().map(node).collect())
    }

    /// The root: one node over the whole top level, hashed as a parent of it is
    /// (what an offer with a sketch offers in place of the top level).
    pub fn root(&self) -> super::Offer {
        super::Offer {
            hash: root_hash(&self.top_pairs()),
            len: self.len(),
            leaf: false,
        }
    }

    /// The top level (empty for an empty file).
    pub fn top(&self) -> &[Node] {
        self.levels.last().map_or(&[], |l| l.as_slice())
    }

    /// The children of the node at (`level`, `index`).
    pub fn children(&self, level: usize, index: usize) -> &[Node] {
        let n = &self.levels[level][index];
        match level {
            0 => &[],
            _ => &self.levels[level - 1][n.first as usize..(n.first + n.count) as usize],
        }
    }

    /// The nodes `down` levels below node `index` of `level` (at most down to the
    /// leaves): that level, and their range in it (they are consecutive).
    pub fn descendants(
        &self,
        level: usize,
        index: usize,
        down: usize,
    ) -> (usize, std::ops::Range<usize>) {
        let (mut at, mut range) = (level, index..index + 1);
        for _ in 0..down.min(level) {
            let level_nodes = &self.levels[at];
            let first = level_nodes[range.start].first as usize;
            let last = &level_nodes[range.end - 1];
            range = first..(last.first + last.count) as usize;
            at -= 1;
        }
        (at, range)
    }

    /// The nodes of one level, in file order (0: the leaves).
    pub fn level(&self, level: usize) -> &[Node] {
        &self.levels[level]
    }

    /// Number of levels (0 for an empty file).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Every node at every level.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.levels.iter().flatten()
    }

    /// What the store's chunk index keeps of this tree (hash, bytes): every node of
    /// at least [`LANDMARK`] bytes and those of the top level, the largest first. Node
    /// boundaries are content-defined, so a copy of these bytes inside another file
    /// has most of the same nodes.
    pub fn landmarks(&self) -> Vec<(u64, u64)> {
        let top = self.depth().saturating_sub(1);
        let kept = |(level, n): &(usize, &Node)| n.len >= LANDMARK || *level == top;
        let mut out: Vec<(u64, u64)> = (self.levels.iter().enumerate())
            .flat_map(|(level, nodes)| nodes.iter().map(move |n| (level, n)))
            .filter(kept)
            .map(|(_, n)| (n.hash, n.len))
            .collect();
        out.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
        out
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.top().iter().map(|n| n.len).sum()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.levels.first().is_none_or(|l| l.is_empty())
    }
}

/// The parents of the nodes at `height`: a group closes after a node whose key, mixed
/// with the height (so that each level cuts at different leaves), is 0 modulo
/// [`FANOUT`] (with at least two children, so that every level shrinks), or at
/// [`MAX_GROUP`] children.
fn group(level: &[Node], height: usize) -> Vec<Node> {
    let mut up = Vec::with_capacity(level.len() / FANOUT as usize + 1);
    let mut start = 0;
    for (i, n) in level.iter().enumerate() {
        let count = i + 1 - start;
        let cut = (mix(n.key, height).is_multiple_of(FANOUT) && count >= 2) || count == MAX_GROUP;
        if cut || i + 1 == level.len() {
            up.push(parent(level, start, i + 1));
            start = i + 1;
        }
    }
    up
}

/// SplitMix64's finalizer over the key and the height: independent bits per level.
fn mix(key: u64, height: usize) -> u64 {
    let mut z = key ^ (height as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash of a parent of `children` (hash, len each).
fn parent_hash(children: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut h = blake3::Hasher::new();
    for (hash, len) in children {
        h.update(&hash.to_le_bytes());
        h.update(&len.to_le_bytes());
    }
    short(h.finalize())
}

/// The hash of the root over a top level (hash, len each): see [`Tree::root`].
pub fn root_hash(top: &[(u64, u64)]) -> u64 {
    parent_hash(top.iter().copied())
}

fn parent(level: &[Node], from: usize, to: usize) -> Node {
    Node {
        hash: parent_hash(level[from..to].iter().map(|c| (c.hash, c.len))),
        offset: level[from].offset,
        len: level[from..to].iter().map(|c| c.len).sum(),
        first: from as u32,
        count: (to - from) as u32,
        key: level[to - 1].key,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::text;
    use super::*;

    #[test]
    fn levels_cover_the_file_and_shrink_to_the_top() {
        let data = text(3 << 20, 7);
        let t = Tree::from_bytes(&data);
        assert!(
            t.top().len() <= TOP && t.depth() >= 3,
            "depth {}",
            t.depth()
        );
        assert_eq!(t.len(), data.len() as u64);
        for level in 1..t.depth() {
            let mut at = 0;
            for (i, n) in t.levels[level].iter().enumerate() {
                assert_eq!(n.offset, at);
                let kids = t.children(level, i);
                assert!(!kids.is_empty() && kids.len() <= MAX_GROUP);
                assert_eq!(kids[0].offset, n.offset);
                assert_eq!(kids.iter().map(|k| k.len).sum::<u64>(), n.len);
                at += n.len;
            }
            assert_eq!(at, data.len() as u64);
        }
    }

    #[test]
    fn an_insert_changes_only_the_nodes_around_it() {
        let old = text(2 << 20, 3);
        let mut new = old.clone();
        new.splice(1000..1000, text(100, 9));
        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
        let known: std::collections::HashSet<u64> = a.nodes().map(|n| n.hash).collect();
        let fresh = b.levels[0]
            .iter()
            .filter(|n| !known.contains(&n.hash))
            .count();
        assert!(fresh <= 2, "{fresh} new leaves for one insert");
        let fresh_top = b.top().iter().filter(|n| !known.contains(&n.hash)).count();
        assert_eq!(fresh_top, 1, "one top node holds the change");
    }

    #[test]
    fn the_same_bytes_repeated_still_make_a_tree() {
        let zeros = vec![0u8; 4 << 20];
        let t = Tree::from_bytes(&zeros);
        assert!(t.top().len() <= TOP);
        assert_eq!(t.len(), zeros.len() as u64);
        assert!(Tree::from_bytes(&[]).is_empty());
        assert_eq!(Tree::from_bytes(b"x").top().len(), 1);
    }
}
