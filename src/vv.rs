//! Version vectors: which node changed an entry how often, so two nodes can tell whether
//! one version descends from the other or both changed it apart (a conflict).
//!
//! A vector is a sorted list of `(node, counter)` pairs; a node that never changed the
//! entry has no pair (counter 0). A third or fourth node adds pairs: no format change.
//! Counters come from each node's own clock ([`crate::journal::Index::tick`]), which
//! only grows, so a counter is never reused after a crash. The empty vector is an
//! adopted entry nobody has changed through syncfs yet.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A node's short id in version vectors: the first 8 bytes of BLAKE3 of its PeerId bytes.
pub type NodeId = u64;

/// The short id of the node whose PeerId encodes to `peer_bytes`.
pub fn node_id(peer_bytes: &[u8]) -> NodeId {
    let h = blake3::hash(peer_bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// How two versions relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The same version.
    Equal,
    /// The left one descends from the right one (it is newer).
    Newer,
    /// The right one descends from the left one.
    Older,
    /// Each has changes the other lacks.
    Concurrent,
}

/// A version vector (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(NodeId, u64)>);

impl VersionVector {
    /// The empty vector (an adopted, never-changed entry).
    pub fn new() -> VersionVector {
        VersionVector(Vec::new())
    }

    /// Builds a vector from pairs in any order (duplicates keep the largest counter,
    /// zero counters are dropped).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (NodeId, u64)>) -> VersionVector {
        let mut v = VersionVector::new();
        for (n, c) in pairs {
            v.raise(n, c);
        }
        v
    }

    /// The pairs, sorted by node.
    pub fn pairs(&self) -> &[(NodeId, u64)] {
        &self.0
    }

    /// `node`'s counter (0 if absent).
    pub fn get(&self, node: NodeId) -> u64 {
        match self.0.binary_search_by_key(&node, |p| p.0) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Raises `node`'s counter to at least `counter`.
    pub fn raise(&mut self, node: NodeId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.0.binary_search_by_key(&node, |p| p.0) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(counter),
            Err(i) => self.0.insert(i, (node, counter)),
        }
    }

    /// This vector with `node`'s counter set to `counter` (a new local version; the
    /// caller's clock guarantees it is above every counter `node` used before).
    pub fn bumped(&self, node: NodeId, counter: u64) -> VersionVector {
        let mut v = self.clone();
        v.raise(node, counter);
        v
    }

    /// The least vector at or above both (the version that has seen both).
    pub fn merged(&self, other: &VersionVector) -> VersionVector {
        let mut v = self.clone();
        for &(n, c) in &other.0 {
            v.raise(n, c);
        }
        v
    }

    /// True if the two versions share no history: no node's change is in both.
    pub fn disjoint(&self, other: &VersionVector) -> bool {
        self.0.iter().all(|&(n, c)| other.get(n).min(c) == 0)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Order {
        let (mut greater, mut less) = (false, false);
        let nodes = self.0.iter().chain(other.0.iter()).map(|p| p.0);
        for n in nodes {
            match self.get(n).cmp(&other.get(n)) {
                Ordering::Greater => greater = true,
                Ordering::Less => less = true,
                Ordering::Equal => {}
            }
        }
        match (greater, less) {
            (false, false) => Order::Equal,
            (true, false) => Order::Newer,
            (false, true) => Order::Older,
            (true, true) => Order::Concurrent,
        }
    }

    /// True if `self` is the same as or newer than `other`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Order::Equal | Order::Newer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(p: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(p.iter().copied())
    }

    #[test]
    fn orders() {
        let a = vv(&[(1, 2), (2, 1)]);
        assert_eq!(a.compare(&a), Order::Equal);
        assert_eq!(a.compare(&vv(&[(1, 1), (2, 1)])), Order::Newer);
        assert_eq!(vv(&[(1, 1)]).compare(&a), Order::Older);
        assert_eq!(a.compare(&vv(&[(1, 1), (2, 2)])), Order::Concurrent);
        assert_eq!(VersionVector::new().compare(&a), Order::Older);
        assert!(vv(&[(1, 1)]).disjoint(&vv(&[(2, 1)])));
        assert!(!a.disjoint(&vv(&[(2, 5)])));
    }

    fn arb() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..4, 0u64..5), 0..5).prop_map(VersionVector::from_pairs)
    }

    proptest! {
        #[test]
        fn merge_dominates_both_and_compare_is_antisymmetric(a in arb(), b in arb()) {
            let m = a.merged(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
            prop_assert_eq!(m.clone(), b.merged(&a));
            let flip = match a.compare(&b) {
                Order::Newer => Order::Older,
                Order::Older => Order::Newer,
                o => o,
            };
            prop_assert_eq!(b.compare(&a), flip);
            prop_assert!(a.pairs().windows(2).all(|w| w[0].0 < w[1].0));
        }

        #[test]
        fn a_bump_is_newer(a in arb(), n in 0u64..4) {
            let c = a.pairs().iter().map(|p| p.1).max().unwrap_or(0) + 1;
            prop_assert_eq!(a.bumped(n, c).compare(&a), Order::Newer);
        }
    }
}
