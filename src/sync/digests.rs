//! What the peer lacks at first contact, by sketches sized by the differences.
//!
//! Directories: an index of [`SKETCH_MIN_DIRS`] or more directories sends its
//! summary as one invertible Bloom lookup table of their digests ([`summary_sketch`]);
//! the receiver peels it against its own ([`their_dirs`]) and answers as for a list,
//! or, if it does not peel, the summary goes in parts, listed.
//!
//! Entries: the receiver of a `Summary`
//! answers, for the directories that differ, with the digests of its entries there
//! ([`super::same_digest`], 6 bytes): as a list, or, when that is smaller, as an
//! invertible Bloom lookup table ([`crate::iblt`]) sized by the number of those
//! directories it holds. The summary's sender takes its own digests out of the table
//! and peels it: what is left on its side are the entries the peer lacks. A table that
//! does not peel (far more differences than directories) costs a round trip more: the
//! sender sends the part's directories that differed again, asking for a list
//! (`Summary::list`).

use crate::iblt::{self, Table};
use crate::journal::index::{Entry, Index};
use crate::path::RelPath;
use crate::wire::{
    bitmap_ones, DirDigest, DIR_KEY_BYTES, MAX_INDEX_ITEMS, MAX_SAME_DIGESTS, SAME_DIGEST_BYTES,
};
use std::collections::HashSet;

use super::SyncError;

/// Bytes of a sketch's cell.
const CELL: usize = iblt::cell_bytes(SAME_DIGEST_BYTES);
/// Differences a sketch is sized for per directory that differs: an entry changed
/// there is two (ours and theirs), so two changed entries (bench-sync.sh's c has about
/// 3 differences per directory that differs).
const PER_DIR: usize = 4;
/// Differences a sketch is sized for beyond those.
const SLACK: usize = 8;

/// Cells of a sketch for `held` differing directories holding `digests` entries;
/// `None` where the list costs no more.
pub(crate) fn cells(held: usize, digests: usize) -> Option<usize> {
    // 1.5 cells a difference: 4-way tables of a few hundred keys peel from about 1.3
    let cells = ((PER_DIR * held + SLACK) * 3 / 2).next_multiple_of(iblt::WAYS);
    (cells * CELL < digests * SAME_DIGEST_BYTES && cells <= MAX_SAME_DIGESTS).then_some(cells)
}

/// The sketch of `digests` in `cells` cells.
pub(crate) fn sketch(digests: &[u64], cells: usize) -> Vec<u8> {
    let mut t = Table::new(cells, SAME_DIGEST_BYTES);
    digests.iter().for_each(|&d| t.insert(d.into()));
    t.encode()
}

/// An order-free checksum of a set of keys, sent beside a sketch: the sum (mod 2^64)
/// of `m(lo ^ m(hi))` over the keys, `lo` and `hi` a key's low and high 64 bits, `m`
/// splitmix64's finalizer (`m(0) = 0`: a digest's term is `m(digest)`).
pub fn set_sum(keys: impl IntoIterator<Item = u128>) -> u64 {
    let term = |k: u128| iblt::mix(k as u64 ^ iblt::mix((k >> 64) as u64));
    keys.into_iter().fold(0u64, |s, k| s.wrapping_add(term(k)))
}

/// Bytes of a directory sketch's cell.
const DIR_CELL: usize = iblt::cell_bytes(DIR_KEY_BYTES);
/// Fewest directories whose summary goes as a sketch first: below, the list costs a
/// few KB and a sketch that does not peel (many directories differ) a round trip
/// (bench-sync.sh's c: 417 directories, 93 differ).
pub const SKETCH_MIN_DIRS: usize = 1024;

/// A directory's key in a summary sketch: its `DirDigest` key and digest.
fn dir_key(d: &DirDigest) -> u128 {
    u128::from(d.key) | u128::from(d.digest) << 24
}

/// Cells of the summary sketch of `dirs` directories: a quarter of their list's
/// bytes (it peels while up to about 6% of them differ); `None` under
/// [`SKETCH_MIN_DIRS`] or over one part's [`MAX_INDEX_ITEMS`].
pub(crate) fn summary_cells(dirs: usize) -> Option<usize> {
    let cells = dirs * DIR_KEY_BYTES / 4 / DIR_CELL / iblt::WAYS * iblt::WAYS;
    (SKETCH_MIN_DIRS..=MAX_INDEX_ITEMS)
        .contains(&dirs)
        .then_some(cells)
}

/// The summary sketch of `dirs` in `cells` cells, and its set's [`set_sum`].
pub(crate) fn summary_sketch(dirs: &[DirDigest], cells: usize) -> (Vec<u8>, u64) {
    let mut t = Table::new(cells, DIR_KEY_BYTES);
    dirs.iter().for_each(|d| t.insert(dir_key(d)));
    (t.encode(), set_sum(dirs.iter().map(dir_key)))
}

/// The peer's directories from its summary `sketch` (of a set whose [`set_sum`] is
/// `sum`) and `ours`, sorted by (key, digest); `None` if it does not peel, peels to a
/// directory not ours, or to a set of another sum.
pub(crate) fn their_dirs(
    sketch: &[u8],
    sum: u64,
    ours: impl Iterator<Item = DirDigest>,
) -> Option<Vec<DirDigest>> {
    let mut t = Table::parse(sketch, DIR_KEY_BYTES, MAX_INDEX_ITEMS)?;
    let mut set: HashSet<u128> = ours.map(|d| dir_key(&d)).collect();
    set.iter().for_each(|&k| t.remove(k));
    let peeled = t.peel()?;
    for k in &peeled.ours {
        set.remove(k).then_some(())?;
    }
    set.extend(peeled.theirs);
    if set_sum(set.iter().copied()) != sum || set.len() > MAX_INDEX_ITEMS {
        return None;
    }
    let dir = |k: u128| DirDigest {
        key: (k & 0xFF_FFFF) as u32,
        digest: (k >> 24) as u64 & 0xFFFF_FFFF_FFFF,
    };
    let mut dirs: Vec<DirDigest> = set.into_iter().map(dir).collect();
    dirs.sort_unstable_by_key(|d| (d.key, d.digest));
    Some(dirs)
}

/// Of `ours` (our digests in the directories the peer holds), those its `sketch`
/// (of a set whose [`set_sum`] is `sum`) lacks, and the peer's digests we lack;
/// `None` if it does not peel, or peels to a digest not ours or to a set of another
/// sum.
pub(crate) fn lacking(sketch: &[u8], sum: u64, ours: &[u64]) -> Option<(HashSet<u64>, Vec<u64>)> {
    let mut t = Table::parse(sketch, SAME_DIGEST_BYTES, MAX_SAME_DIGESTS)?;
    ours.iter().for_each(|&d| t.remove(d.into()));
    let peeled = t.peel()?;
    let lacking: HashSet<u64> = peeled.ours.iter().map(|&k| k as u64).collect();
    let mut theirs: HashSet<u64> = ours.iter().copied().collect();
    if !lacking.is_subset(&theirs) {
        return None;
    }
    theirs.retain(|d| !lacking.contains(d));
    let only_theirs: Vec<u64> = peeled.theirs.iter().map(|&k| k as u64).collect();
    theirs.extend(only_theirs.iter().copied());
    (set_sum(theirs.into_iter().map(u128::from)) == sum).then_some((lacking, only_theirs))
}

/// Our entries the peer lacks (of the directories of a part of our summary that
/// differ), and the digests of its entries there that we lack.
pub(crate) type Found = (Vec<(RelPath, Entry)>, Vec<u64>);

/// The peer's answer to a part of our summary: which directories it holds of those that
/// differ, and the digests of its entries in them (a list or a sketch).
pub(crate) struct Answer {
    /// `SummaryAck::held`.
    pub held: Vec<u8>,
    /// `SummaryAck::same`.
    pub same: Vec<u64>,
    /// `SummaryAck::sketch`.
    pub sketch: Vec<u8>,
    /// `SummaryAck::sum`.
    pub sum: u64,
}

/// Our entries in `dirs` (the part's directories that differ, in order) that the
/// peer's answer does not hold, and the digests of its entries there we do not hold;
/// `None` if its sketch does not peel.
pub(crate) fn to_send(
    ix: &Index,
    dirs: &[&RelPath],
    answer: &Answer,
) -> Result<Option<Found>, SyncError> {
    let held: HashSet<usize> = bitmap_ones(&answer.held, dirs.len())
        .ok_or_else(|| SyncError::Protocol("a held bitmap that does not fit".into()))?
        .into_iter()
        .collect();
    // each entry with its digest if the peer holds its directory
    let mut entries = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        for (p, e) in ix.children(dir)? {
            let digest = held.contains(&i).then(|| super::same_digest(&p, &e));
            entries.push((p, e, digest));
        }
    }
    let ours: Vec<u64> = entries.iter().filter_map(|x| x.2).collect();
    let (theirs, only_theirs): (Box<dyn Fn(u64) -> bool>, _) = if answer.sketch.is_empty() {
        let mine: HashSet<u64> = ours.into_iter().collect();
        let only: Vec<u64> = answer
            .same
            .iter()
            .copied()
            .filter(|d| !mine.contains(d))
            .collect();
        let listed: HashSet<u64> = answer.same.iter().copied().collect();
        (Box::new(move |d| listed.contains(&d)), only)
    } else {
        let Some((lack, only)) = lacking(&answer.sketch, answer.sum, &ours) else {
            return Ok(None);
        };
        (Box::new(move |d| !lack.contains(&d)), only)
    };
    let send = |d: Option<u64>| d.is_none_or(|d| !theirs(d));
    let entries = entries
        .into_iter()
        .filter(|x| send(x.2))
        .map(|(p, e, _)| (p, e))
        .collect();
    Ok(Some((entries, only_theirs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: u64, seed: u64) -> Vec<u64> {
        let digest = |i: u64| {
            let h = blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
            crate::wire::short48(u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()))
        };
        (0..n).map(digest).collect()
    }

    #[test]
    fn a_sketch_finds_what_the_peer_lacks() {
        // 90 directories that differ, 1,500 entries; 150 changed on each side
        let theirs = digests(1500, 1);
        let mut ours = theirs.clone();
        for d in ours.iter_mut().step_by(10) {
            *d ^= 0x8000_0000_0000;
        }
        let cells = cells(90, theirs.len()).expect("a sketch is smaller");
        assert!(cells * CELL < theirs.len() * 6 * 2 / 3, "{cells} cells");
        let sum = set_sum(theirs.iter().map(|&d| d.into()));
        let (got, only) = lacking(&sketch(&theirs, cells), sum, &ours).expect("peels");
        let changed: HashSet<u64> = theirs.iter().copied().step_by(10).collect();
        assert_eq!(
            only.into_iter().collect::<HashSet<u64>>(),
            changed,
            "theirs we lack"
        );
        assert_eq!(
            lacking(&sketch(&theirs, cells), sum ^ 1, &ours),
            None,
            "a bad sum"
        );
        let want: HashSet<u64> = ours.iter().copied().step_by(10).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_sketch_too_small_does_not_peel_and_a_list_is_used_when_smaller() {
        let theirs = digests(1500, 2);
        let ours = digests(1500, 3);
        let sum = set_sum(theirs.iter().map(|&d| d.into()));
        assert_eq!(lacking(&sketch(&theirs, 64), sum, &ours), None);
        assert_eq!(cells(90, 100), None, "100 digests cost 600 B as a list");
        assert_eq!(lacking(&[1, 2, 3], 0, &ours), None, "not a table");
    }
}
