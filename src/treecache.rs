//! Bounded memory for the hash trees kept per file (sender and applier): a tree costs
//! 32 bytes per [`crate::hashtree::LEAF`] of file, and one is kept for every file changed
//! since the mount. Past the cap, other files' trees are dropped; such a file's next
//! update hashes it in full once.

use crate::hashtree::HashTree;
use std::collections::HashMap;
use std::hash::Hash;

/// Default cap: 256 MiB of trees, i.e. 256 GiB of files changed since the mount.
pub const TREE_CACHE_BYTES: usize = 256 << 20;

/// Trees by key, each with `X` (e.g. the stamp it is valid for), within a byte cap.
#[derive(Debug)]
pub struct TreeCache<K, X> {
    map: HashMap<K, (X, HashTree)>,
    bytes: usize,
    cap: usize,
}

impl<K, X> Default for TreeCache<K, X> {
    fn default() -> Self {
        TreeCache {
            map: HashMap::new(),
            bytes: 0,
            cap: TREE_CACHE_BYTES,
        }
    }
}

impl<K: Eq + Hash + Copy, X> TreeCache<K, X> {
    /// An empty cache holding at most `cap` bytes of trees.
    pub fn with_cap(cap: usize) -> Self {
        TreeCache {
            cap,
            ..Default::default()
        }
    }

    /// The entry for `k`.
    pub fn get(&self, k: &K) -> Option<&(X, HashTree)> {
        self.map.get(k)
    }

    /// The extra value of `k`'s entry, to change it (the tree stays as it is).
    pub fn extra_mut(&mut self, k: &K) -> Option<&mut X> {
        self.map.get_mut(k).map(|(x, _)| x)
    }

    /// Takes `k`'s entry out.
    pub fn remove(&mut self, k: &K) -> Option<(X, HashTree)> {
        let e = self.map.remove(k)?;
        self.bytes -= e.1.mem_bytes();
        Some(e)
    }

    /// Keeps `tree` (with `x`) for `k`, dropping other entries while over the cap.
    pub fn insert(&mut self, k: K, x: X, tree: HashTree) {
        self.remove(&k);
        self.bytes += tree.mem_bytes();
        self.map.insert(k, (x, tree));
        while self.bytes > self.cap {
            let Some(other) = self.map.keys().find(|o| **o != k).copied() else {
                break;
            };
            self.remove(&other);
        }
    }

    /// Bytes of trees held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_cap_and_keeps_the_newest() {
        let big = HashTree::from_bytes(&vec![1u8; 10 * crate::hashtree::LEAF as usize]);
        let one = big.mem_bytes();
        let mut c: TreeCache<u64, ()> = TreeCache::with_cap(3 * one);
        for k in 0..10 {
            c.insert(k, (), big.clone());
            assert!(c.bytes() <= 3 * one, "{} bytes after {k}", c.bytes());
            assert!(c.get(&k).is_some(), "the tree just kept is there");
        }
        c.insert(9, (), HashTree::empty());
        assert!(c.bytes() < 3 * one);
        assert!(c.remove(&9).is_some());
        assert!(c.get(&9).is_none());
        let huge: TreeCache<u64, ()> = TreeCache::with_cap(1);
        let mut huge = huge;
        huge.insert(1, (), big);
        assert!(
            huge.get(&1).is_some(),
            "a tree over the cap alone is still kept"
        );
    }
}
