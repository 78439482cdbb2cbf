//! A small file described by its leaves in one message, for a one-shot delta (no rounds):
//! the side that needs the file lists the short hashes of its version's leaves
//! ([`describe`]); the side that has the new version marks which of those leaves it
//! holds too and joins their bytes into a base both sides can build ([`shared_base`] on
//! its side, [`base_of`] on the other). The new version then travels as a delta against
//! that base. A short hash that matches the wrong bytes yields a base the other side
//! does not have: the delta's base id and the whole-file hash catch it.

use super::Tree;
use std::collections::HashMap;

fn short(hash: u64) -> u32 {
    hash as u32
}

/// The short hashes of `bytes`' leaves, in file order.
pub fn describe(bytes: &[u8]) -> Vec<u32> {
    let t = Tree::from_bytes(bytes);
    if t.is_empty() {
        return Vec::new();
    }
    t.level(0).iter().map(|n| short(n.hash)).collect()
}

/// The side with the new version (`new`): which of the described leaves it holds
/// (a bitmap, bit `i % 8` of byte `i / 8`) and their bytes in the described order.
pub fn shared_base(new: &[u8], described: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let t = Tree::from_bytes(new);
    let mut ours: HashMap<u32, (usize, usize)> = HashMap::new();
    if !t.is_empty() {
        for n in t.level(0) {
            let span = (n.offset as usize, (n.offset + n.len) as usize);
            ours.entry(short(n.hash)).or_insert(span);
        }
    }
    let mut held = Vec::new();
    let mut base = Vec::new();
    for (i, h) in described.iter().enumerate() {
        if let Some(&(a, b)) = ours.get(h) {
            held.push(i);
            base.extend_from_slice(&new[a..b]);
        }
    }
    (crate::wire::bitmap(described.len(), held), base)
}

/// The side that described `old`: the base the other side marked in `used`, or `None`
/// if `used` does not fit `old`'s leaves (another version than the one described).
pub fn base_of(old: &[u8], used: &[u8]) -> Option<Vec<u8>> {
    let t = Tree::from_bytes(old);
    let leaves = if t.is_empty() { &[][..] } else { t.level(0) };
    let mut base = Vec::new();
    for i in crate::wire::bitmap_ones(used, leaves.len())? {
        let n = &leaves[i];
        base.extend_from_slice(&old[n.offset as usize..(n.offset + n.len) as usize]);
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::super::tests::text;
    use super::*;

    fn roundtrip(old: &[u8], new: &[u8]) -> usize {
        let (used, base) = shared_base(new, &describe(old));
        let delta = crate::delta::encode(new, &base, 19).unwrap();
        let theirs = base_of(old, &used).expect("the bitmap fits");
        assert_eq!(theirs, base, "both sides build the same base");
        let got = crate::delta::decode(&delta, &theirs, new.len()).unwrap();
        assert_eq!(got, new);
        delta.len()
    }

    /// Source-like lines: the leaf that changed compresses against its neighbours.
    fn code(lines: u32) -> Vec<u8> {
        let line = |i: u32| format!("    let v{i} = table.get({}).map(|x| x * {i});\n", i * 37);
        (0..lines).map(line).collect::<String>().into_bytes()
    }

    #[test]
    fn a_line_changed_in_a_small_file_costs_a_few_bytes() {
        let old = code(300);
        let mut new = old.clone();
        let mid = old.len() / 2;
        new.splice(mid..mid, b" // one line edited".iter().copied());
        let cost = roundtrip(&old, &new);
        // the changed leaf (512 bytes on average) against its neighbours; whole: 4 KB
        assert!(cost < 256, "{cost} bytes of delta for 19 bytes inserted");
        assert!(describe(&old).len() <= old.len() / 128);
        // random letters: the changed leaf's own entropy, a few hundred bytes at most
        let old = text(13_000, 5);
        let mut new = old.clone();
        new.splice(6_500..6_500, b" // one line edited".iter().copied());
        let cost = roundtrip(&old, &new);
        assert!(cost < 2 * super::super::LEAF_MAX as usize, "{cost} bytes");
    }

    #[test]
    fn unrelated_and_empty_versions_still_round_trip() {
        let (a, b) = (text(9_000, 1), text(9_000, 2));
        assert!(
            roundtrip(&a, &b) > 4_000,
            "nothing shared: about the text's entropy"
        );
        roundtrip(&[], &b);
        roundtrip(&a, &[]);
    }

    #[test]
    fn a_bitmap_for_another_version_is_refused() {
        let old = text(20_000, 3);
        let (used, _) = shared_base(&old, &describe(&old));
        assert!(base_of(&old[..5_000], &used).is_none(), "fewer leaves");
        let n = describe(&old).len();
        let mut past = vec![0u8; n.div_ceil(8) + usize::from(n.is_multiple_of(8))];
        past[n / 8] |= 1 << (n % 8); // the bit after the last leaf
        assert!(base_of(&old, &past).is_none(), "a bit past the last leaf");
    }
}
