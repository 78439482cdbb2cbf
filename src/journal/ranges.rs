//! `RangeSet`: a set of half-open byte intervals `[start, end)` over `u64`, kept
//! normalised (sorted, disjoint, non-adjacent) in a `BTreeMap` from start to end.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A normalised set of half-open byte ranges `[start, end)`.
///
/// Serialised as a list of `(start, end)` pairs; deserialising re-normalises, so a
/// set read from anywhere is always sorted, disjoint and non-adjacent.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// A set holding the single range `[start, end)` (empty if `start >= end`).
    pub fn from_range(start: u64, end: u64) -> RangeSet {
        let mut s = RangeSet::new();
        s.insert(start, end);
        s
    }

    /// True when no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Total number of bytes covered.
    pub fn len_bytes(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// The ranges as `(start, end)`, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(s, e)| (*s, *e))
    }

    /// One past the last covered byte, or `None` when empty.
    pub fn end(&self) -> Option<u64> {
        self.map.values().next_back().copied()
    }

    /// Adds `[start, end)`, merging with overlapping and adjacent ranges.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // A range starting at or before `start` that reaches it merges in.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                lo = s;
                hi = hi.max(e);
            }
        }
        // Ranges starting inside `[lo, hi]` merge in (adjacent included).
        let absorbed: Vec<(u64, u64)> = self.map.range(lo..=hi).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in absorbed {
            self.map.remove(&s);
            hi = hi.max(e);
        }
        self.map.insert(lo, hi);
    }

    /// Removes `[start, end)`, splitting ranges that straddle its edges.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut hit: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e > start {
                hit.push((s, e));
            }
        }
        hit.extend(self.map.range(start..end).map(|(s, e)| (*s, *e)));
        for (s, e) in hit {
            self.map.remove(&s);
            if s < start {
                self.map.insert(s, start);
            }
            if e > end {
                self.map.insert(end, e);
            }
        }
    }

    /// Adds every range of `other`.
    pub fn insert_set(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.insert(s, e);
        }
    }

    /// Removes every range of `other`.
    pub fn remove_set(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.remove(s, e);
        }
    }

    /// `self` minus `other`, as a new set.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut d = self.clone();
        d.remove_set(other);
        d
    }

    /// Drops every byte at or beyond `size`.
    pub fn truncate(&mut self, size: u64) {
        self.remove(size, u64::MAX);
    }

    /// True when every byte of `[start, end)` is in the set (an empty range is covered).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        match self.map.range(..=start).next_back() {
            Some((_, &e)) => e >= end,
            None => false,
        }
    }

    /// True when every range of `other` is covered by `self`.
    pub fn contains_range(&self, other: &RangeSet) -> bool {
        other.iter().all(|(s, e)| self.covers(s, e))
    }

    /// True when some byte of `[start, end)` is in the set.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        if let Some((_, &e)) = self.map.range(..=start).next_back() {
            if e > start {
                return true;
            }
        }
        self.map.range(start..end).next().is_some()
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (s, e)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}..{e}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Vec<(u64, u64)>> for RangeSet {
    fn from(v: Vec<(u64, u64)>) -> RangeSet {
        v.into_iter().collect()
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(s: RangeSet) -> Vec<(u64, u64)> {
        s.iter().collect()
    }
}

impl FromIterator<(u64, u64)> for RangeSet {
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(iter: I) -> RangeSet {
        let mut s = RangeSet::new();
        for (a, b) in iter {
            s.insert(a, b);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(s: &RangeSet) -> Vec<(u64, u64)> {
        s.iter().collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        s.insert(20, 25);
        assert_eq!(ranges(&s), vec![(10, 25), (30, 40)]);
        s.insert(25, 30);
        assert_eq!(ranges(&s), vec![(10, 40)]);
        s.insert(0, 5);
        s.insert(3, 12);
        assert_eq!(ranges(&s), vec![(0, 40)]);
        s.insert(7, 7);
        assert_eq!(s.len_bytes(), 40);
    }

    #[test]
    fn remove_splits() {
        let mut s = RangeSet::from_range(0, 100);
        s.remove(10, 20);
        assert_eq!(ranges(&s), vec![(0, 10), (20, 100)]);
        s.remove(5, 30);
        assert_eq!(ranges(&s), vec![(0, 5), (30, 100)]);
        s.remove(0, 200);
        assert!(s.is_empty());
    }

    #[test]
    fn truncate_and_covers() {
        let mut s: RangeSet = [(0, 10), (20, 30)].into_iter().collect();
        assert!(s.covers(2, 10));
        assert!(!s.covers(5, 21));
        assert!(s.intersects(5, 21));
        assert!(!s.intersects(10, 20));
        s.truncate(25);
        assert_eq!(ranges(&s), vec![(0, 10), (20, 25)]);
        assert_eq!(s.to_string(), "[0..10, 20..25]");
        assert!(s.contains_range(&RangeSet::from_range(21, 24)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Truncate(u64),
    }

    const DOMAIN: u64 = 64;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..DOMAIN, 0..DOMAIN).prop_map(|(a, b)| Op::Insert(a, b)),
            (0..DOMAIN, 0..DOMAIN).prop_map(|(a, b)| Op::Remove(a, b)),
            (0..DOMAIN).prop_map(Op::Truncate),
        ]
    }

    fn model_apply(bits: &mut [bool], op: &Op) {
        match *op {
            Op::Insert(a, b) => (a..b).for_each(|i| bits[i as usize] = true),
            Op::Remove(a, b) => (a..b).for_each(|i| bits[i as usize] = false),
            Op::Truncate(n) => (n..DOMAIN).for_each(|i| bits[i as usize] = false),
        }
    }

    fn model_ranges(bits: &[bool]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bits.len() {
            if bits[i] {
                let s = i;
                while i < bits.len() && bits[i] {
                    i += 1;
                }
                out.push((s as u64, i as u64));
            } else {
                i += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn matches_bitmap_model(ops in proptest::collection::vec(op(), 0..40),
                                q in (0..DOMAIN, 0..DOMAIN)) {
            let mut set = RangeSet::new();
            let mut bits = vec![false; DOMAIN as usize];
            for op in &ops {
                match *op {
                    Op::Insert(a, b) => set.insert(a, b),
                    Op::Remove(a, b) => set.remove(a, b),
                    Op::Truncate(n) => set.truncate(n),
                }
                model_apply(&mut bits, op);
                prop_assert_eq!(ranges(&set), model_ranges(&bits));
            }
            let count = bits.iter().filter(|b| **b).count() as u64;
            prop_assert_eq!(set.len_bytes(), count);
            let (a, b) = q;
            let model_covers = (a..b).all(|i| bits[i as usize]);
            prop_assert_eq!(set.covers(a, b), model_covers);
            let model_hits = (a..b).any(|i| bits[i as usize]);
            prop_assert_eq!(set.intersects(a, b), model_hits);
            let rt: RangeSet = bincode::deserialize(&bincode::serialize(&set).unwrap()).unwrap();
            prop_assert_eq!(rt, set);
        }
    }
}
