//! A small file described by its leaves in one message, for a one-shot delta (no rounds):
//! the side that needs the file lists the short hashes of its version's leaves
//! ([`describe`]); the side that has the new version marks which of those leaves it
//! holds too and joins their bytes into a base both sides can build ([`shared_base`] on
//! its side, [`base_of`] on the other). The new version then travels as a delta against
//! that base. A short hash that matches the wrong bytes yields a base the other side
//! does not have: the delta's base id and the whole-file hash catch it.
//!
//! The leaves are smaller than a chunk tree's ([`MIN`]/[`AVG`]/[`MAX`]) and their hashes
//! shorter ([`HASH_BYTES`]): the hashes of a small file cost less than the bytes a
//! bigger leaf around a change would.

use std::collections::HashMap;

/// FastCDC (2020) leaf sizes for small files: minimum, average, maximum (bytes; the
/// crate's smallest minimum is 64). Chosen by benchmark: 300 source files of tokio, one
/// line each edited as bench-sync.sh's c does, cost 102,112 B at the chunk tree's
/// 128/512/4096 with 4-byte hashes, 84,010 B at 64/256/2048 with 3-byte hashes.
pub const MIN: u32 = 64;
/// Average leaf size.
pub const AVG: u32 = 256;
/// Largest leaf.
pub const MAX: u32 = 2048;
/// Bytes of a leaf's hash on the wire (the first bytes of its BLAKE3). The other side
/// looks each up among its version's leaves where the described order puts it
/// ([`matches`]): a described leaf it lacks matches one by chance about once in
/// 2^16 / 4, and that costs the file's delta, which then fails its hash and goes
/// whole. 294 tokio sources with a line edited each (`pieces::tests::costs`): 15,536 B
/// of leaf hashes at 2 bytes, 23,304 B at 3, the deltas and piece hashes the same.
pub const HASH_BYTES: usize = 2;

/// One leaf of a small file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Leaf {
    /// Where it starts.
    pub at: usize,
    /// Its length.
    pub len: usize,
    /// Its short hash.
    pub hash: u32,
}

/// `bytes`' leaves in file order.
pub(super) fn cut(bytes: &[u8]) -> Vec<Leaf> {
    if bytes.is_empty() {
        return Vec::new();
    }
    fastcdc::v2020::FastCDC::new(bytes, MIN, AVG, MAX)
        .map(|c| {
            let h = blake3::hash(&bytes[c.offset..c.offset + c.length]);
            let mut b = [0u8; 4];
            b[..HASH_BYTES].copy_from_slice(&h.as_bytes()[..HASH_BYTES]);
            Leaf {
                at: c.offset,
                len: c.length,
                hash: u32::from_le_bytes(b),
            }
        })
        .collect()
}

/// How many leaves past the last one matched a match may lie, beyond the described
/// leaves between them: an edit turns a leaf or two into a few.
const SLACK: usize = 3;

/// The side with the new version: for each described leaf, the leaf of `ours` taken
/// to be it, if any. A short hash alone would match one of ours by chance once in
/// 2^16 / (our leaves); a match must also sit where the described order puts it: next
/// to a neighbour's match (both sides' leaves in the same order), first or last on
/// both sides, or a little past the last match kept (a leaf between two edits). A
/// described leaf we lack then matches by chance about once in 2^16 / 4.
pub(super) fn matches(ours: &[Leaf], described: &[u32]) -> Vec<Option<Leaf>> {
    let mut at: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, l) in ours.iter().enumerate() {
        at.entry(l.hash).or_default().push(k);
    }
    let has = |i: usize, k: usize| ours.get(k).is_some_and(|l| l.hash == described[i]);
    let (n, m) = (described.len(), ours.len());
    let first = |i: usize, k: usize| i == 0 && k == 0;
    let last_one = |i: usize, k: usize| i + 1 == n && k + 1 == m;
    let beside = |i: usize, k: usize| {
        first(i, k)
            || last_one(i, k)
            || (i > 0 && k > 0 && has(i - 1, k - 1))
            || (i + 1 < n && has(i + 1, k + 1))
    };
    let mut last: Option<(usize, usize)> = None; // (described, ours) of the last kept
    let mut out = Vec::with_capacity(n);
    for (i, h) in described.iter().enumerate() {
        let after = |k: usize| last.is_some_and(|(li, lk)| k > lk && k - lk <= i - li + SLACK);
        let fits = |k: &&usize| n == 1 || beside(i, **k) || after(**k);
        let kept = at.get(h).and_then(|v| v.iter().find(fits)).copied();
        if let Some(k) = kept {
            last = Some((i, k));
        }
        out.push(kept.map(|k| ours[k]));
    }
    out
}

/// The short hashes of `bytes`' leaves, in file order.
pub fn describe(bytes: &[u8]) -> Vec<u32> {
    cut(bytes).into_iter().map(|l| l.hash).collect()
}

/// The side with the new version: for each described leaf, whether it holds it too
/// ([`matches`]).
pub fn held(new: &[u8], described: &[u32]) -> Vec<bool> {
    let ours = matches(&cut(new), described);
    ours.iter().map(Option::is_some).collect()
}

/// The side with the new version (`new`): which of the described leaves it holds
/// (a bitmap, bit `i % 8` of byte `i / 8`) and their bytes in the described order.
pub fn shared_base(new: &[u8], described: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let (used, _, base) = super::pieces::shared_base(new, described, &[], &[]);
    (used, base)
}

/// The side that described `old`: the base the other side marked in `used`, or `None`
/// if `used` does not fit `old`'s leaves (another version than the one described).
pub fn base_of(old: &[u8], used: &[u8]) -> Option<Vec<u8>> {
    super::pieces::base_of(old, used, &[], &[])
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
        // the changed leaf (256 bytes on average) against its neighbours; whole: 4 KB
        assert!(cost < 256, "{cost} bytes of delta for 19 bytes inserted");
        // the largest small file fits the wire's limit on leaves described
        let most = describe(&text(65_535, 9)).len();
        assert!(most <= crate::wire::MAX_FILE_LEAVES, "{most} leaves");
        // random letters: the changed leaf's own entropy, a few hundred bytes at most
        let old = text(13_000, 5);
        let mut new = old.clone();
        new.splice(6_500..6_500, b" // one line edited".iter().copied());
        let cost = roundtrip(&old, &new);
        assert!(cost < 2 * MAX as usize, "{cost} bytes");
    }

    #[test]
    fn a_short_hash_matches_only_where_the_order_puts_it() {
        let ours = |hashes: &[u32]| -> Vec<Leaf> {
            let leaf = |(k, &hash): (usize, &u32)| Leaf {
                at: k * 100,
                len: 100,
                hash,
            };
            hashes.iter().enumerate().map(leaf).collect()
        };
        let at = |ours: &[Leaf], described: &[u32]| -> Vec<Option<usize>> {
            let m = matches(ours, described);
            m.iter().map(|l| l.map(|l| l.at / 100)).collect()
        };
        // a leaf we lack whose hash is one of ours elsewhere (11): no match
        let mine = ours(&[10, 11, 12, 13, 14, 15]);
        let got = at(&mine, &[10, 99, 12, 13, 11, 15]);
        assert_eq!(got, [Some(0), None, Some(2), Some(3), None, Some(5)]);
        // leaves between two edits, first and last: kept
        let mine = ours(&[10, 50, 12, 51, 14]);
        let got = at(&mine, &[10, 60, 12, 61, 14]);
        assert_eq!(got, [Some(0), None, Some(2), None, Some(4)]);
        // a leaf far past the last match, with no neighbour: not taken
        let mine = ours(&[10, 11, 12, 13, 14, 15, 16, 17, 18]);
        assert_eq!(at(&mine, &[10, 99, 17]), [Some(0), None, None]);
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
