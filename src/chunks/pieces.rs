//! A second, finer look at the leaves of a small file that the side with the new
//! version lacks (version 16). [`super::leaves`] builds a leaf delta's base from the
//! described leaves both sides hold; a leaf around an edit is held by neither, so its
//! unchanged bytes used to cross as literals. Now the side with the new version asks
//! for the hashes of those leaves' [`PIECE`]-byte pieces ([`to_ask`], then
//! [`describe`] on the other side), looks for each among its own bytes that no held
//! leaf covers, and the pieces it finds join the base ([`shared_base`] on its side,
//! [`base_of`] on the other): the delta then pays for the edit, not for the leaf
//! around it. A leaf's last, shorter part is described by the piece that ends where
//! the leaf ends (overlapping the one before; version 24). A short hash that matches the wrong bytes yields a base the other side
//! does not have: the delta's base id and the whole-file hash catch it.

use super::leaves::{cut, Leaf};
use std::collections::{HashMap, HashSet};

/// Bytes per piece. Chosen by benchmark (`costs` below): 294 tokio source files with a
/// line edited each cost 54,341 B of leaf deltas without asking; asking, 41,036 B with
/// 32-byte pieces, 36,884 B with 64, 38,080 B with 96 and 39,402 B with 128 (deltas
/// plus piece hashes); 46 files of syn: 7,689 B without, 5,687 B with 48, 5,365 B with
/// 64, 5,465 B with 80.
pub const PIECE: usize = 64;
/// Bytes of a piece's hash on the wire (the first bytes of its BLAKE3). Pieces are
/// looked for only among the bytes no held leaf covers (a few hundred per edit), so a
/// false match is about one in 2^24 / (those bytes) per piece; it costs the file's
/// delta, which fails its hash, and the file goes whole. `costs` below: 5,205 B of
/// piece hashes at 3 bytes, 6,940 B at 4, the deltas the same.
pub const HASH_BYTES: usize = 3;
/// Most leaves asked about per file: an edit makes one or two; a file that lacks more
/// was rewritten, and its pieces would only cost.
pub const MAX_ASKED: usize = 8;

/// The hash of one piece.
fn hash(bytes: &[u8]) -> u32 {
    let h = blake3::hash(bytes);
    let mut b = [0u8; 4];
    b[..HASH_BYTES].copy_from_slice(&h.as_bytes()[..HASH_BYTES]);
    u32::from_le_bytes(b)
}

/// The side with the new version: the described leaves to ask about (indexes into
/// `held`, which says for each described leaf whether it is held here), if any are
/// worth it: some but not all held, and at most [`MAX_ASKED`] lacking.
pub fn to_ask(held: &[bool]) -> Vec<u16> {
    let lacking: Vec<u16> = (0..held.len())
        .filter(|&i| !held[i])
        .filter_map(|i| u16::try_from(i).ok())
        .collect();
    let some_held = held.iter().any(|&h| h);
    if !some_held || lacking.is_empty() || lacking.len() > MAX_ASKED {
        return Vec::new();
    }
    lacking
}

/// The side that described `old`: the hashes of the whole pieces of each leaf
/// `asked` (strictly increasing indexes into its leaves), or `None` if `asked` does
/// not fit them (another version than the one described).
pub fn describe(old: &[u8], asked: &[u16]) -> Option<Vec<Vec<u32>>> {
    let leaves = asked_leaves(&cut(old), asked)?;
    let pieces = |l: &Leaf| starts(l).map(|at| hash(&old[at..at + PIECE])).collect();
    Some(leaves.iter().map(pieces).collect())
}

/// Where the pieces of leaf `l` start: every [`PIECE`] bytes from its start, and a
/// last one ending at its end if its length is not a multiple (overlapping the one
/// before), so that a leaf's tail joins the base too (version 24).
fn starts(l: &Leaf) -> impl Iterator<Item = usize> + '_ {
    let whole = (0..l.len / PIECE).map(move |j| l.at + j * PIECE);
    let tail = (l.len > PIECE && !l.len.is_multiple_of(PIECE)).then(|| l.at + l.len - PIECE);
    whole.chain(tail)
}

/// The leaves `asked` names, if the indexes are strictly increasing and in range.
fn asked_leaves(leaves: &[Leaf], asked: &[u16]) -> Option<Vec<Leaf>> {
    let increasing = asked.windows(2).all(|w| w[0] < w[1]);
    let last_fits = asked.last().is_none_or(|&i| usize::from(i) < leaves.len());
    (increasing && last_fits).then(|| asked.iter().map(|&i| leaves[usize::from(i)]).collect())
}

/// Where each window of [`PIECE`] bytes lies in `new`'s bytes that no held leaf covers
/// (with a piece's width on each side: a piece may straddle a leaf's edge), by hash.
fn windows(new: &[u8], covered: &[bool], leaves: &[Leaf]) -> HashMap<u32, usize> {
    let mut found = HashMap::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (l, _) in leaves.iter().zip(covered).filter(|(_, &c)| !c) {
        let (a, b) = (
            l.at.saturating_sub(PIECE),
            (l.at + l.len + PIECE).min(new.len()),
        );
        match spans.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => spans.push((a, b)),
        }
    }
    for (a, b) in spans {
        for (k, w) in new[a..b].windows(PIECE).enumerate() {
            found.entry(hash(w)).or_insert(a + k);
        }
    }
    found
}

/// The side with the new version: the base of the described leaves it holds (bitmap
/// `used`, as [`super::leaves::shared_base`]) and of the pieces of the `asked` leaves
/// it found (bitmap `found`, one bit per piece of `pieces`, all in order). Returns
/// (used, found, base).
pub fn shared_base(
    new: &[u8],
    described: &[u32],
    asked: &[u16],
    pieces: &[Vec<u32>],
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let ours = cut(new);
    let matched = super::leaves::matches(&ours, described);
    let held: HashSet<usize> = matched.iter().flatten().map(|l| l.at).collect();
    let covered: Vec<bool> = ours.iter().map(|l| held.contains(&l.at)).collect();
    let windows = windows(new, &covered, &ours);
    let asked_piece = |i: usize| asked.iter().position(|&a| usize::from(a) == i);
    let (mut used, mut found, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0; // pieces seen so far
    for (i, m) in matched.iter().enumerate() {
        if let Some(l) = m {
            used.push(i);
            base.extend_from_slice(&new[l.at..l.at + l.len]);
        } else if let Some(k) = asked_piece(i) {
            for p in pieces.get(k).into_iter().flatten() {
                if let Some(&at) = windows.get(p) {
                    found.push(n);
                    base.extend_from_slice(&new[at..at + PIECE]);
                }
                n += 1;
            }
        }
    }
    let bitmap = crate::wire::bitmap;
    (bitmap(described.len(), used), bitmap(n, found), base)
}

/// The side that described `old`: the base the other side marked in `used` (its
/// leaves) and `found` (the whole pieces of the leaves `asked`), or `None` if they do
/// not fit `old` (another version than the one described).
pub fn base_of(old: &[u8], used: &[u8], asked: &[u16], found: &[u8]) -> Option<Vec<u8>> {
    let leaves = cut(old);
    let used = crate::wire::bitmap_ones(used, leaves.len())?;
    let asked_leaves = asked_leaves(&leaves, asked)?;
    let total: usize = asked_leaves.iter().map(|l| starts(l).count()).sum();
    let found = crate::wire::bitmap_ones(found, total)?;
    let (mut used, mut found) = (used.into_iter().peekable(), found.into_iter().peekable());
    let mut base = Vec::new();
    let mut n = 0;
    for (i, l) in leaves.iter().enumerate() {
        if used.next_if_eq(&i).is_some() {
            base.extend_from_slice(&old[l.at..l.at + l.len]);
        } else if asked.binary_search(&(i as u16)).is_ok() {
            for at in starts(l) {
                if found.next_if_eq(&n).is_some() {
                    base.extend_from_slice(&old[at..at + PIECE]);
                }
                n += 1;
            }
        }
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::super::leaves;
    use super::*;

    /// Source-like lines, as `leaves`' tests make them.
    fn code(lines: u32) -> Vec<u8> {
        let line = |i: u32| format!("    let v{i} = table.get({}).map(|x| x * {i});\n", i * 37);
        (0..lines).map(line).collect::<String>().into_bytes()
    }

    /// The delta of `new` against what both sides build from `old`'s description,
    /// asking about its lacking leaves when `fine`: (delta bytes, piece hash bytes).
    fn roundtrip(old: &[u8], new: &[u8], fine: bool) -> (usize, usize) {
        let described = leaves::describe(old);
        let asked = if fine {
            to_ask(&leaves::held(new, &described))
        } else {
            Vec::new()
        };
        let pieces = describe(old, &asked).expect("the leaves asked are ours");
        let (used, found, base) = shared_base(new, &described, &asked, &pieces);
        let theirs = base_of(old, &used, &asked, &found).expect("the bitmaps fit");
        assert_eq!(theirs, base, "both sides build the same base");
        let delta = crate::delta::encode(new, &base, 19).unwrap();
        let got = crate::delta::decode(&delta, &theirs, new.len()).unwrap();
        assert_eq!(got, new);
        let hashes = pieces.iter().map(Vec::len).sum::<usize>() * HASH_BYTES;
        (delta.len(), hashes)
    }

    /// (bytes asking, bytes not asking) over 20 edits spread over `old`.
    fn edits(old: &[u8]) -> (usize, usize) {
        let (mut fine, mut plain) = (0, 0);
        for k in 0..20 {
            let at = old.len() * k / 20 + k;
            let mut new = old.to_vec();
            new.splice(at..at, b" // one line edited".iter().copied());
            let (without, none) = roundtrip(old, &new, false);
            let (with, hashes) = roundtrip(old, &new, true);
            assert_eq!(none, 0);
            assert!(
                hashes > 0,
                "at {at}: the leaf around the edit is asked about"
            );
            assert!(
                with <= without,
                "at {at}: {with} B of delta, {without} B without"
            );
            (fine, plain) = (fine + with + hashes, plain + without);
        }
        (fine, plain)
    }

    #[test]
    fn an_edit_inside_a_leaf_costs_its_pieces_not_the_leaf() {
        // repetitive code: the leaf's literals compress well against its neighbours
        let (fine, plain) = edits(&code(300));
        assert!(fine < plain, "{fine} B asking, {plain} B without");
        // random letters: the leaf's literals are its entropy
        let (fine, plain) = edits(&super::super::tests::text(16_000, 7));
        assert!(fine * 2 < plain, "{fine} B asking, {plain} B without");
    }

    #[test]
    fn unrelated_and_empty_versions_still_round_trip() {
        let (a, b) = (code(200), super::super::tests::text(9_000, 2));
        roundtrip(&a, &b, true);
        roundtrip(&b, &a, true);
        roundtrip(&[], &a, true);
        roundtrip(&a, &[], true);
    }

    #[test]
    fn what_does_not_fit_the_described_version_is_refused() {
        let old = code(300);
        let n = leaves::describe(&old).len() as u16;
        assert!(describe(&old, &[3, 2]).is_none(), "not increasing");
        assert!(describe(&old, &[n]).is_none(), "past the last leaf");
        let pieces = describe(&old, &[1, 2]).unwrap();
        let total: usize = pieces.iter().map(Vec::len).sum();
        let used = crate::wire::bitmap(n as usize, []);
        let found = crate::wire::bitmap(total, [0]);
        assert!(base_of(&old, &used, &[1, 2], &found).is_some());
        let wider = crate::wire::bitmap(total + 9, [0]);
        assert!(
            base_of(&old, &used, &[1, 2], &wider).is_none(),
            "more pieces"
        );
        assert!(
            base_of(&old, &used, &[2, 1], &found).is_none(),
            "not increasing"
        );
    }

    #[test]
    fn only_a_few_lacking_leaves_beside_held_ones_are_asked_about() {
        assert!(to_ask(&[false; 4]).is_empty(), "nothing held: a rewrite");
        assert_eq!(to_ask(&[true, false, true, false]), [1, 3]);
        let mut many = vec![false; MAX_ASKED + 1];
        many.push(true);
        assert!(to_ask(&many).is_empty(), "too many lacking");
        assert!(to_ask(&[true, true]).is_empty(), "nothing lacking");
    }

    /// bench-sync.sh's c in memory: `PIECES_DIR=<a crate's src>` (its `.rs` files under
    /// 64 KiB, one line of each edited) prints the leaf deltas' bytes with and without
    /// asking.
    #[test]
    #[ignore]
    fn costs() {
        let dir = std::env::var("PIECES_DIR").expect("PIECES_DIR");
        let mut files = Vec::new();
        let mut todo = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let (mut plain, mut fine, mut hashes, mut n, mut desc) = (0, 0, 0, 0, 0);
        for (i, f) in files.iter().take(300).enumerate() {
            let old = std::fs::read(f).unwrap();
            if old.len() < 64 || old.len() >= 65_536 {
                continue;
            }
            let mut new = old.clone();
            let lines: Vec<usize> = (0..old.len()).filter(|&k| old[k] == b'\n').collect();
            let at = lines
                .get((7_919 + i * 104_729) % lines.len().max(1))
                .copied();
            new.splice(at.unwrap_or(0)..at.unwrap_or(0), *b" // bench edit");
            plain += roundtrip(&old, &new, false).0;
            desc += leaves::describe(&old).len() * leaves::HASH_BYTES;
            let (d, h) = roundtrip(&old, &new, true);
            (fine, hashes, n) = (fine + d, hashes + h, n + 1);
        }
        println!("{n} files: leaf deltas {plain} B; asking, {fine} B of deltas + {hashes} B of piece hashes; {desc} B of leaf hashes");
    }
}
