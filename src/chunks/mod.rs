//! Content-defined chunk trees of a file, and the exchange that finds which parts of a
//! file a peer lacks when there is no shared history to delta against (first pairing,
//! files changed on both sides while apart). Pure: no I/O beyond reading the bytes
//! being cut, and no wire types (the sync layer carries [`Offer`]s and [`Answer`]s).
//!
//! A file is cut into leaves with FastCDC (2020), so that an insert or a delete moves
//! no boundary far from it. Consecutive nodes are grouped into parents, with
//! content-defined group boundaries too (after a child whose last leaf's hash, mixed
//! with the level, is 0 modulo [`FANOUT`]), level by level, up to a top level of at most [`TOP`] nodes. A node's
//! hash covers its bytes (leaves) or its children (parents), so equal hashes mean equal
//! bytes wherever they sit in either file.
//!
//! The side that needs the new version leads ([`Needs`]); it holds the old one. The
//! other side ([`Offers`]) offers its top nodes. Each offered node is found among the
//! needing side's own nodes at any level (then copied from its own bytes), expanded
//! (its children are offered in the next round), or, for a leaf, asked for (its bytes
//! come in the next round) or described (the hashes of its [`BLOCK`]-byte blocks come
//! next round; those not found in the needing side's bytes around the change are asked
//! for then, or, when many are, described in turn by their [`FINE`]-byte pieces). One
//! round per level; an unchanged subtree costs one hash.
//! The result is a [`Piece`] list the needing side rebuilds the file from; the caller
//! verifies the whole-file BLAKE3 of the result.

mod exchange;
pub mod inplace;
pub mod leaves;
pub mod matching;
pub mod pieces;
pub mod sketch;
mod tree;

pub use exchange::{
    block_hash, block_hashes, fine_hashes, rebuild, Answer, Needs, Offers, Picked, Piece, Round,
};
pub use tree::{Node, Tree};

/// Leaf sizes for FastCDC: minimum, average, maximum (bytes). Chosen by benchmark
/// (`chunks::tests::costs`, five seeds each, text-like data): at 128/512/4096, 100 B
/// inserted at the top of 32 MiB cost 1,228 B, 20 B changed in 16 MiB 1,648 B and 4 KiB
/// of random bytes in 64 MiB 4,736 B; at 256/1024/8192 1,229, 1,701 and 6,169 B; at
/// 64/256/2048 1,321, 1,781 and 4,716 B (one more round).
pub const LEAF_MIN: u32 = 128;
/// Average leaf size: about what a one-byte change costs.
pub const LEAF_AVG: u32 = 512;
/// Largest leaf (also the largest literal the needing side accepts for one leaf).
pub const LEAF_MAX: u32 = 4096;
/// Children of a parent: a group closes after a node whose last leaf's hash, mixed
/// with the level, is 0 modulo this (with at least 2 and at most [`MAX_GROUP`]
/// children: about 5 on average). Chosen by benchmark (`chunks::tests::costs`,
/// five seeds each; version 11, 16 before): 500 SQLite-like row updates in 60 MiB cost
/// 312,913 B at 16 and 245,947 B at 4 (19,587 and 11,300 nodes offered; 241,397 B at 3,
/// one round more), 100 B inserted at the top of 32 MiB 669 and 418 B, 20 B changed in
/// 16 MiB 899 and 547 B, 4 KiB written into 64 MiB 3,866 and 3,531 B, for two more
/// rounds (a round trip each). Fewer children cost fewer sibling hashes around each
/// change, more levels cost more: the total is least near 3.
pub const FANOUT: u64 = 4;
/// Most children of one parent (a group closes here whatever the hashes say).
pub const MAX_GROUP: usize = 4 * FANOUT as usize;
/// The top level has at most this many nodes.
pub const TOP: usize = 16;
/// A leaf of at least this many bytes that the needing side lacks is described by the
/// hashes of its blocks rather than sent: the bytes around a change come from the
/// needing side's own version (a 4 KiB write costs its own bytes plus a block each
/// side, not a leaf each side).
pub const MIN_DESCRIBED: u64 = LEAF_MIN as u64;
/// Block size within a described leaf.
pub const BLOCK: u64 = 128;
/// Size of the pieces a described block not found is described by in turn (the
/// block's changed bytes cost their own pieces, not the whole block; version 11).
pub const FINE: u64 = 32;
/// Blocks described finely in one round, at least: fewer are asked for whole (the
/// round trip would cost more than the pieces save).
pub const FINE_MIN: u64 = 8;
/// How far around where a block's old bytes should be its pieces are looked for (an
/// insert or a delete inside the block shifts them).
pub const FINE_SLACK: u64 = 64;
/// The most of its own bytes the needing side searches for one leaf's blocks.
pub const MAX_HOLE: u64 = 32 << 10;

/// Nodes of at least this many bytes (and a tree's top level) go into the store's
/// chunk index ([`Tree::landmarks`]): about 16,000 for 1 GiB.
pub const LANDMARK: u64 = 64 << 10;

/// One node as offered to the needing side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The node's hash (see [`Node::hash`]).
    pub hash: u64,
    /// Bytes it covers.
    pub len: u64,
    /// True for a leaf (it cannot be expanded; its bytes can be asked for).
    pub leaf: bool,
}

/// A peer broke the exchange's rules (the caller falls back to sending the file whole).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The message does not fit the previous round (counts or lengths disagree).
    #[error("chunk exchange: {0}")]
    Mismatch(String),
    /// Our own version could not be read (local).
    #[error("chunk exchange: reading our version: {0}")]
    Read(String),
}

#[cfg(test)]
pub(crate) mod tests;
