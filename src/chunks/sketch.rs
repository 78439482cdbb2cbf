//! A sketch of a file's leaves: an invertible Bloom lookup table (IBLT) of its leaf
//! *edges* (each leaf with the one before it), so that the side holding another
//! version finds the few leaves that differ in one message, whatever the size of the
//! file, instead of walking the chunk tree down a round trip per two levels.
//!
//! The offering side sends [`encode`]; the needing side subtracts its own edges and
//! peels the table ([`decode`]). What is left are the edges only one side has; with
//! its own edges minus its side's and plus the other's, it walks the other version's
//! leaves from the first to the last. A table too small for the difference (many
//! changes) does not decode, and the exchange goes down the tree as before.
//!
//! An edge's key names the leaf by its 48-bit hash and length, and the leaf before it
//! only by a 16-bit *hint* (the low bits of its hash): the leaves that an edge only
//! the other side has can follow are few (those whose own way on was lost, the other
//! side's new leaves, and the last leaf), and the hint tells which ([`decode`]; two of
//! them with one hint do not decode). A cell is [`CELL`] bytes: a count (mod 256), the
//! XOR of the 10-byte keys (hint, hash, length as a u16; little-endian) and the XOR of
//! their 24-bit check values. The table is rateless ([`iblt::Layout::Rateless`]): each
//! edge is in cell 0 and in cell `j` with probability about 2 / (j + 2), so the first
//! cells of a table are a table too: an offer carries [`CELLS`] of them, and a
//! receiver they do not decode for asks for more ([`MORE_CELLS`]).
//! A false "pure" cell is caught by the check, by the key's own cells, by the walk
//! (every edge used once, the lengths summing to the file's size) and last by the
//! whole-file BLAKE3 of the rebuilt file.

use super::{Node, Tree, LEAF_MAX};
use crate::iblt::{self, Table};
use std::collections::{HashMap, HashSet};

/// Bytes of an edge's key on the wire (hint, hash, length).
const KEY_BYTES: usize = 10;
/// Bytes of one cell on the wire.
pub const CELL: usize = iblt::cell_bytes(KEY_BYTES);
/// Cells an offer carries: a change or two (100 B inserted at the top, 20 B changed:
/// about 36 times in 40, `tests::sizing`) decode; more ask for [`MORE_CELLS`].
pub const CELLS: usize = 16;
/// Cells a receiver asks for in all when the offer's do not decode: 4 KiB of new bytes
/// written decode about 37 times in 40 at 48 (`tests::sizing`).
pub const MORE_CELLS: usize = 48;
/// Most cells a sketch may have (the wire refuses more).
pub const MAX_CELLS: usize = WAYS * 192;
pub use crate::iblt::WAYS;
/// Leaves a tree needs for its offer to carry a sketch: smaller trees are a round
/// trip or two deep, and their top levels cost less than the sketch.
pub const MIN_LEAVES: usize = 2048;

/// The previous-leaf hash of a file's first leaf (a leaf whose 48-bit hash is this
/// too, once in 2^48, makes the walk fail: the tree is walked instead).
const START: u64 = 0xFFFF_FFFF_FFFF;

/// One leaf with its predecessor's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Edge {
    prev: u64,
    hash: u64,
    len: u16,
}

/// An edge as the table holds it: its predecessor known by a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    hint: u16,
    hash: u64,
    len: u16,
}

impl Edge {
    fn key(self) -> Key {
        let hint = self.prev as u16;
        Key {
            hint,
            hash: self.hash,
            len: self.len,
        }
    }
}

impl Key {
    fn bits(self) -> u128 {
        u128::from(self.hint) | u128::from(self.hash) << 16 | u128::from(self.len) << 64
    }

    fn of_bits(k: u128) -> Key {
        Key {
            hint: k as u16,
            hash: (k >> 16 & 0xFFFF_FFFF_FFFF) as u64,
            len: (k >> 64) as u16,
        }
    }

    fn edge(self, prev: u64) -> Edge {
        let (hash, len) = (self.hash, self.len);
        Edge { prev, hash, len }
    }
}

/// A file's leaves in order, as edges (the first leaf's predecessor is [`START`]).
fn edges(leaves: &[Node]) -> impl Iterator<Item = Edge> + '_ {
    let prevs = std::iter::once(START).chain(leaves.iter().map(|n| n.hash));
    prevs.zip(leaves).map(|(prev, n)| Edge {
        prev,
        hash: n.hash,
        len: n.len as u16,
    })
}

fn table(leaves: &[Node], add: bool, into: &mut Table) {
    for e in edges(leaves) {
        let k = e.key().bits();
        if add {
            into.insert(k);
        } else {
            into.remove(k);
        }
    }
}

/// The first `cells` cells of the (rateless) sketch of `tree`'s leaves.
pub fn encode(tree: &Tree, cells: usize) -> Vec<u8> {
    let mut t = Table::rateless(cells, KEY_BYTES);
    table(tree.level(0), true, &mut t);
    t.encode()
}

/// Peels `t` (theirs minus ours): the keys only they have and those only we have.
fn peel(t: Table) -> Option<(Vec<Key>, Vec<Key>)> {
    let p = t.peel()?;
    let keys = |ks: Vec<u128>| ks.into_iter().map(Key::of_bits).collect();
    Some((keys(p.theirs), keys(p.ours)))
}

/// Their version's leaves, (hash, len) in file order, from their sketch and our
/// tree, if the sketch decodes, the walk uses every edge once and covers `size`
/// bytes, and the leaves make their tree's `top` level (hash, len), or its root
/// ([`Tree::root`]) when that alone was offered; `None` otherwise
/// (then the tree is walked instead). The top check catches every walk that used the
/// right edges in a wrong order (two runs of one repeated leaf, such as zeros, share
/// its loops) or took a wrong edge (a hint that cancelled another's).
pub fn decode(
    sketch: &[u8],
    ours: &Tree,
    size: u64,
    top: &[(u64, u64)],
) -> Option<Vec<(u64, u64)>> {
    let leaves = walk_of(sketch, ours, size)?;
    let mine = Tree::top_of(&leaves);
    let root = [(super::tree::root_hash(&mine), size)];
    (mine == top || top == root).then_some(leaves)
}

/// [`decode`] without the top check.
fn walk_of(sketch: &[u8], ours: &Tree, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut t = Table::parse_as(sketch, KEY_BYTES, MAX_CELLS, iblt::Layout::Rateless)?;
    table(ours.level(0), false, &mut t);
    let (theirs, only_ours) = peel(t)?;
    let own: Vec<Edge> = edges(ours.level(0)).collect();
    let lost = our_edges(&own, &only_ours)?;
    let last = own.last().map_or(START, |e| e.hash);
    let gained = their_edges(&lost, &theirs, last)?;
    // their edges: ours, less those only we have, plus those only they have
    let mut ways = Ways::new(own.into_iter().chain(gained).collect());
    for e in lost {
        ways.take(e)?;
    }
    ways.walk(size)
}

/// Our edges behind `keys` (those only we have): for each, the one leaf before it
/// among our edges of that key (two different ones: `None`).
fn our_edges(own: &[Edge], keys: &[Key]) -> Option<Vec<Edge>> {
    let wanted: HashSet<Key> = keys.iter().copied().collect();
    let mut prevs: HashMap<Key, u64> = HashMap::new();
    for e in own.iter().filter(|e| wanted.contains(&e.key())) {
        if *prevs.entry(e.key()).or_insert(e.prev) != e.prev {
            return None;
        }
    }
    keys.iter().map(|k| Some(k.edge(*prevs.get(k)?))).collect()
}

/// Their edges behind `keys` (those only they have): each follows a leaf left owing a
/// way on (one whose edge on we `lost`, a leaf of theirs, or our `last`), the one
/// whose hash has the key's hint (two with one hint: `None`; a wrong one fails the
/// walk or the top check).
fn their_edges(lost: &[Edge], keys: &[Key], last: u64) -> Option<Vec<Edge>> {
    let mut owed: HashMap<u64, i64> = HashMap::from([(last, 1)]);
    for e in lost {
        *owed.entry(e.prev).or_default() += 1;
        *owed.entry(e.hash).or_default() -= 1;
    }
    for k in keys {
        *owed.entry(k.hash).or_default() += 1;
    }
    let mut by_hint: HashMap<u16, u64> = HashMap::new();
    for (&leaf, _) in owed.iter().filter(|(_, n)| **n > 0) {
        if by_hint.insert(leaf as u16, leaf).is_some() {
            return None;
        }
    }
    keys.iter()
        .map(|k| Some(k.edge(*by_hint.get(&k.hint)?)))
        .collect()
}

/// Where a walk goes from a leaf.
enum Next {
    /// Nowhere: the last leaf.
    End,
    /// Two different ways: the walk cannot tell which comes first.
    Fork,
    /// Along this edge.
    Edge(usize),
}

/// Edges sorted by predecessor, each to be used once (24 bytes and a flag an edge:
/// 50 MB for a file of 1 GiB).
struct Ways {
    edges: Vec<Edge>,
    used: Vec<bool>,
}

impl Ways {
    fn new(mut edges: Vec<Edge>) -> Ways {
        edges.sort_unstable_by_key(|e| (e.prev, e.hash, e.len));
        let used = vec![false; edges.len()];
        Ways { edges, used }
    }

    /// The unused edges out of `prev`.
    fn out_of(&self, prev: u64) -> impl Iterator<Item = usize> + Clone + '_ {
        let lo = self.edges.partition_point(|e| e.prev < prev);
        let hi = lo + self.edges[lo..].partition_point(|e| e.prev == prev);
        (lo..hi).filter(|&i| !self.used[i])
    }

    /// Uses up one edge equal to `e`, if one is left.
    fn take(&mut self, e: Edge) -> Option<()> {
        let i = self.out_of(e.prev).find(|&i| self.edges[i] == e)?;
        self.used[i] = true;
        Some(())
    }

    /// The edge to follow out of `at`: a loop first, else the one way on (or one of
    /// several equal ones).
    fn next_from(&self, at: u64) -> Next {
        let mut free = self.out_of(at);
        let Some(first) = free.clone().next() else {
            return Next::End;
        };
        let same = |i: usize| (self.edges[i].hash, self.edges[i].len);
        match free.clone().find(|&i| self.edges[i].hash == at) {
            Some(i) => Next::Edge(i),
            None if free.all(|i| same(i) == same(first)) => Next::Edge(first),
            None => Next::Fork,
        }
    }

    /// Follows the edges from [`START`]: a leaf's next is the one edge out of it (a
    /// run of equal leaves takes its loops first); two different ways on is ambiguous.
    fn walk(mut self, size: u64) -> Option<Vec<(u64, u64)>> {
        let total = self.used.iter().filter(|u| !**u).count();
        let (mut out, mut at, mut sum) = (Vec::with_capacity(total), START, 0u64);
        loop {
            let pick = match self.next_from(at) {
                Next::End => break,
                Next::Fork => return None,
                Next::Edge(i) => i,
            };
            let e = self.edges[pick];
            self.used[pick] = true;
            if e.len == 0 || u32::from(e.len) > LEAF_MAX {
                return None;
            }
            sum += u64::from(e.len);
            out.push((e.hash, u64::from(e.len)));
            at = e.hash;
        }
        (out.len() == total && sum == size).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::text;
    use super::*;

    fn tops(t: &Tree) -> Vec<(u64, u64)> {
        t.top_pairs()
    }

    fn leaves(t: &Tree) -> Vec<(u64, u64)> {
        t.level(0).iter().map(|n| (n.hash, n.len)).collect()
    }

    #[test]
    fn a_change_or_two_decode_to_the_new_leaves() {
        let old = text(4 << 20, 7);
        let mut new = old.clone();
        new.splice(0..0, text(100, 8));
        let at = new.len() / 2;
        new[at..at + 20].copy_from_slice(&text(20, 9));
        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
        let sketch = encode(&b, CELLS);
        assert_eq!(sketch.len(), CELLS * CELL);
        let got = decode(&sketch, &a, new.len() as u64, &tops(&b)).expect("decodes");
        assert_eq!(got, leaves(&b));
        // the root alone checks the walk as the top level does; another root does not
        let root = b.root();
        let by_root = decode(&sketch, &a, new.len() as u64, &[(root.hash, root.len)]);
        assert_eq!(by_root, Some(leaves(&b)));
        let wrong = [(root.hash ^ 1, root.len)];
        assert_eq!(decode(&sketch, &a, new.len() as u64, &wrong), None);
        assert_eq!(
            decode(&sketch, &a, new.len() as u64, &[(a.root().hash, root.len)]),
            None
        );
    }

    #[test]
    fn pinned_cell_layout() {
        // (docs/PROTOCOL.md, *Sketch*) every edge is in cell 0
        let t = Tree::from_bytes(&text(3000, 2));
        let n = t.level(0);
        let m = |mut x: u64| {
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        let (mut key, mut chk) = (0u128, 0u32);
        for (i, l) in n.iter().enumerate() {
            let prev = if i == 0 {
                0xFFFF_FFFF_FFFF
            } else {
                n[i - 1].hash
            };
            let k = (prev & 0xFFFF) as u128 | u128::from(l.hash) << 16 | (l.len as u128) << 64;
            key ^= k;
            chk ^= m(m(k as u64 ^ m(0x5EED)) ^ (k >> 64) as u64) as u32 & 0xFF_FFFF;
        }
        let mut cell = vec![n.len() as u8];
        cell.extend_from_slice(&key.to_le_bytes()[..10]);
        cell.extend_from_slice(&chk.to_le_bytes()[..3]);
        assert_eq!(encode(&t, 1), cell);
        // and the first cells of a longer table are that table
        assert_eq!(encode(&t, 40)[..CELL * 16], encode(&t, 16));
    }

    #[test]
    fn a_moved_run_decodes_and_a_copied_one_forks() {
        use super::super::tests::edit;
        let old = text(2 << 20, 5);
        let a = Tree::from_bytes(&old);
        let sketch_of = |kind| {
            let mut new = old.clone();
            edit(&mut new, (0.3, kind, 20_000, 0.7), 5);
            let b = Tree::from_bytes(&new);
            (
                decode(&encode(&b, MORE_CELLS), &a, new.len() as u64, &tops(&b)),
                leaves(&b),
            )
        };
        let (moved, want) = sketch_of(3);
        assert!(moved == Some(want), "a moved run walks in its new place");
        // the copied run's last leaf has two ways on: the walk cannot tell which comes
        // first, and the tree is walked instead
        assert!(sketch_of(4).0.is_none(), "a copied run forks");
    }

    #[test]
    fn many_changes_do_not_decode() {
        let old = text(4 << 20, 7);
        let mut new = old.clone();
        for k in 0..200 {
            new[k * 20_000] ^= 1;
        }
        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
        assert_eq!(
            decode(&encode(&b, CELLS), &a, new.len() as u64, &tops(&b)),
            None
        );
    }

    #[test]
    fn runs_of_equal_leaves_walk_their_loops_first() {
        let mut old = text(1 << 20, 3);
        old.extend(vec![0u8; 64 << 10]);
        old.extend(text(1 << 20, 4));
        let mut new = old.clone();
        new[10] ^= 1;
        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
        let got = decode(&encode(&b, CELLS), &a, new.len() as u64, &tops(&b));
        assert_eq!(got, Some(leaves(&b)));
    }

    /// Two runs of one repeated leaf (zeros) share its loops: the walk may use every
    /// edge in a wrong order (the first run takes all the loops); the top check
    /// refuses that, so the tree is walked instead.
    #[test]
    fn two_runs_of_one_leaf_never_decode_out_of_order() {
        let (a, z, c, d) = ((1, 500), (2, 4096), (3, 700), (4, 900));
        let old = Tree::of_leaves(&[a, z, z, c, d, z, z]);
        let want = [(5, 600), z, z, c, d, z, z];
        let new = Tree::of_leaves(&want);
        let size = want.iter().map(|l| l.1).sum();
        let sketch = encode(&new, CELLS);
        let walked = walk_of(&sketch, &old, size).expect("the edges decode");
        assert_ne!(walked, want, "the walk alone goes wrong");
        assert_eq!(decode(&sketch, &old, size, &tops(&new)), None);
    }

    #[test]
    fn a_bad_sketch_is_refused_not_trusted() {
        let old = text(1 << 20, 3);
        let a = Tree::from_bytes(&old);
        let good = encode(&a, CELLS);
        assert_eq!(
            decode(&good[..CELL * 2 + 3], &a, old.len() as u64, &tops(&a)),
            None,
            "ragged"
        );
        assert_eq!(decode(&[], &a, old.len() as u64, &tops(&a)), None, "empty");
        assert_eq!(
            decode(&good, &a, old.len() as u64 + 1, &tops(&a)),
            None,
            "wrong size"
        );
        let mut bad = good.clone();
        bad[5] ^= 0x40;
        assert_eq!(
            decode(&bad, &a, old.len() as u64, &tops(&a)),
            None,
            "a flipped bit"
        );
        // equal versions: nothing differs, the walk is our own leaves
        assert_eq!(
            decode(&good, &a, old.len() as u64, &tops(&a)),
            Some(leaves(&a))
        );
    }

    /// `n` bytes of noise from `seed`.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// 4 KiB of new bytes written into random bytes (the bench's pairing d): about
    /// twenty differing edges, too many for the offer's cells mostly, which the cells
    /// asked for then decode nearly always.
    #[test]
    fn a_4k_write_into_random_bytes_decodes() {
        let decoded = (1..=10u64)
            .filter(|&seed| {
                let old = noise(2 << 20, seed);
                let mut new = old.clone();
                let at = (seed as usize * 7_777_777) % (old.len() - 4096);
                new[at..at + 4096].copy_from_slice(&noise(4096, seed + 99));
                let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
                decode(&encode(&b, MORE_CELLS), &a, new.len() as u64, &tops(&b)) == Some(leaves(&b))
            })
            .count();
        assert!(decoded >= 9, "{decoded} of 10 decoded");
    }

    /// How often a sketch of `cells` cells decodes, per kind of change (40 seeds):
    /// `cargo test --release --lib chunks::sketch::tests::sizing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sizing() {
        type Change = fn(&mut Vec<u8>, u64);
        let kinds: [(&str, bool, Change); 4] = [
            ("100 B inserted at the top of text", false, |v, s| {
                v.splice(0..0, text(100, s));
            }),
            ("20 B changed in text", false, |v, s| {
                let at = v.len() / 3 + s as usize * 977;
                v[at..at + 20].copy_from_slice(&text(20, s + 1));
            }),
            ("4 KiB of random bytes written into text", false, |v, s| {
                let at = (s as usize * 7_777_777) % (v.len() - 4096);
                let w: Vec<u8> = text(4096, s).iter().map(|b| b.wrapping_mul(7)).collect();
                v[at..at + 4096].copy_from_slice(&w);
            }),
            (
                "4 KiB of random bytes written into random bytes",
                true,
                |v, s| {
                    let at = (s as usize * 7_777_777) % (v.len() - 4096) / 4096 * 4096;
                    let w: Vec<u8> = text(4096, s).iter().map(|b| b.wrapping_mul(7)).collect();
                    v[at..at + 4096].copy_from_slice(&w);
                },
            ),
        ];
        for (what, random, change) in kinds {
            let mut line = format!("{what}:");
            for cells in [8, 12, 16, 20, 24, 32, 40, 48] {
                let decoded = (1..=40u64)
                    .filter(|&seed| {
                        let old = if random {
                            noise(4 << 20, seed)
                        } else {
                            text(4 << 20, seed)
                        };
                        let mut new = old.clone();
                        change(&mut new, seed);
                        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
                        decode(&encode(&b, cells), &a, new.len() as u64, &tops(&b))
                            == Some(leaves(&b))
                    })
                    .count();
                line += &format!(" {cells} cells {decoded}/40;");
            }
            println!("{line}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn whatever_decodes_is_the_new_version(
            seed in 1u64..1000,
            edits in super::super::tests::edits(1..3000, 0..4),
        ) {
            // inserts, deletes, overwrites, moves and duplicated runs
            let old = text(300_000, seed);
            let new = super::super::tests::edited(&old, edits, seed);
            let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
            if let Some(got) = decode(&encode(&b, CELLS), &a, new.len() as u64, &tops(&b)) {
                proptest::prop_assert_eq!(got, leaves(&b));
            }
        }
    }
}
