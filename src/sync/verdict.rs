//! What to do with a peer's version of an entry, given ours: the one rule both nodes
//! apply to every update, metadata op and index entry, so that they reach the same
//! result without talking it over. Pure: no I/O.
//!
//! - theirs descends from ours: take it;
//! - ours descends from theirs, or they are the same: keep ours;
//! - concurrent with the same content: merge the vectors, move nothing;
//! - concurrent, one side deleted: the edit wins over the delete;
//! - concurrent edits: the newer mtime wins, then the greater PeerId; the loser is kept
//!   as a conflict copy, or, with no shared history (first pairing), in the archive.

use crate::journal::op::Timestamp;
use crate::vv::{Order, VersionVector};

/// One side's version of an entry.
#[derive(Clone, Debug)]
pub struct Side<'a> {
    /// Its version vector (ours with a pending local change counts as newer).
    pub vv: &'a VersionVector,
    /// True for a tombstone (or a file that is gone).
    pub deleted: bool,
    /// Content id (files, symlinks): the first 16 bytes of its BLAKE3
    /// (`wire::content_id`), as an index entry carries it.
    pub hash: [u8; 16],
    /// Modification time of that version.
    pub mtime: Timestamp,
    /// PeerId bytes of the node holding it (the tie-break).
    pub node: &'a [u8],
}

/// What becomes of the version we hold when we take theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loser {
    /// Ours is an ancestor of theirs: replaced (archived if it had content).
    Replaced,
    /// Concurrent edit that lost: kept next to the file as a conflict copy.
    ConflictCopy,
    /// No shared history (first pairing): kept in the version archive.
    Archive,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep ours; theirs is older, the same, or lost.
    Keep,
    /// Same content: adopt the merged vector, move no data.
    Merge,
    /// Take theirs.
    Take(Loser),
}

/// Decides for `theirs` against `ours` (`None`: we never had the entry).
pub fn decide(ours: Option<&Side>, theirs: &Side) -> Verdict {
    let Some(ours) = ours else {
        return match theirs.deleted {
            true => Verdict::Keep,
            false => Verdict::Take(Loser::Replaced),
        };
    };
    let same = ours.deleted == theirs.deleted && (ours.deleted || ours.hash == theirs.hash);
    match theirs.vv.compare(ours.vv) {
        Order::Older => Verdict::Keep,
        Order::Equal if same => Verdict::Keep,
        Order::Newer if same => Verdict::Merge,
        Order::Newer => Verdict::Take(Loser::Replaced),
        // Equal vectors with different content: two adopted (never versioned) copies.
        Order::Equal | Order::Concurrent => concurrent(ours, theirs, same),
    }
}

fn concurrent(ours: &Side, theirs: &Side, same: bool) -> Verdict {
    if same {
        return Verdict::Merge;
    }
    match (ours.deleted, theirs.deleted) {
        (false, true) => return Verdict::Keep, // the edit wins over the delete
        (true, false) => return Verdict::Take(Loser::Replaced),
        _ => {}
    }
    if (ours.mtime.secs, ours.mtime.nanos, ours.node)
        >= (theirs.mtime.secs, theirs.mtime.nanos, theirs.node)
    {
        return Verdict::Keep;
    }
    // An unversioned side (adopted, never changed since) is a first pairing; two live
    // versions, even of files made on each side independently, keep a conflict copy.
    match ours.vv.pairs().is_empty() || theirs.vv.pairs().is_empty() {
        true => Verdict::Take(Loser::Archive),
        false => Verdict::Take(Loser::ConflictCopy),
    }
}

/// `NAME.sync-conflict-YYYYMMDD-HHMMSS-<first 7 chars of peer>.EXT` for `name`, with
/// the losing version's mtime (UTC) and its node's PeerId; the `n`th copy (from 2 on,
/// when that name is taken) ends `-<n>` before the extension.
pub fn conflict_name(name: &str, mtime: Timestamp, peer: &str, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let short: String = peer.chars().take(7).collect();
    let nth = if n > 1 {
        format!("-{n}")
    } else {
        String::new()
    };
    format!(
        "{stem}.sync-conflict-{}-{short}{nth}{ext}",
        utc_stamp(mtime.secs)
    )
}

/// `YYYYMMDD-HHMMSS` in UTC for seconds since the epoch.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side<'a>(vv: &'a VersionVector, hash: u8, secs: i64, node: &'a [u8]) -> Side<'a> {
        Side {
            vv,
            deleted: false,
            hash: [hash; 16],
            mtime: Timestamp { secs, nanos: 0 },
            node,
        }
    }

    #[test]
    fn both_nodes_pick_the_same_winner() {
        let (a, b) = (
            VersionVector::from_pairs([(1, 2), (2, 1)]),
            VersionVector::from_pairs([(1, 1), (2, 2)]),
        );
        let on_a = decide(Some(&side(&a, 1, 10, b"A")), &side(&b, 2, 20, b"B"));
        let on_b = decide(Some(&side(&b, 2, 20, b"B")), &side(&a, 1, 10, b"A"));
        assert_eq!(
            (on_a, on_b),
            (Verdict::Take(Loser::ConflictCopy), Verdict::Keep)
        );
        // same mtime: the greater PeerId wins, on both
        let on_a = decide(Some(&side(&a, 1, 10, b"A")), &side(&b, 2, 10, b"B"));
        let on_b = decide(Some(&side(&b, 2, 10, b"B")), &side(&a, 1, 10, b"A"));
        assert_eq!(
            (on_a, on_b),
            (Verdict::Take(Loser::ConflictCopy), Verdict::Keep)
        );
    }

    #[test]
    fn history_decides_before_mtime() {
        let old = VersionVector::from_pairs([(1, 1)]);
        let new = VersionVector::from_pairs([(1, 1), (2, 1)]);
        // theirs descends from ours even with an older mtime: taken
        let v = decide(Some(&side(&old, 1, 99, b"A")), &side(&new, 2, 1, b"B"));
        assert_eq!(v, Verdict::Take(Loser::Replaced));
        assert_eq!(
            decide(Some(&side(&new, 2, 1, b"B")), &side(&old, 1, 99, b"A")),
            Verdict::Keep
        );
        // same content, theirs newer: merge only
        assert_eq!(
            decide(Some(&side(&old, 1, 1, b"A")), &side(&new, 1, 1, b"B")),
            Verdict::Merge
        );
    }

    #[test]
    fn first_pairing_archives_and_edits_beat_deletes() {
        let none = VersionVector::new();
        let v = decide(Some(&side(&none, 1, 10, b"A")), &side(&none, 2, 20, b"B"));
        assert_eq!(v, Verdict::Take(Loser::Archive));
        assert_eq!(
            decide(Some(&side(&none, 1, 10, b"A")), &side(&none, 1, 20, b"B")),
            Verdict::Keep
        );
        let (a, b) = (
            VersionVector::from_pairs([(1, 2)]),
            VersionVector::from_pairs([(2, 2)]),
        );
        let mut del = side(&b, 0, 99, b"B");
        del.deleted = true;
        assert_eq!(decide(Some(&side(&a, 1, 1, b"A")), &del), Verdict::Keep);
        assert_eq!(
            decide(Some(&del), &side(&a, 1, 1, b"A")),
            Verdict::Take(Loser::Replaced)
        );
        assert_eq!(decide(None, &del), Verdict::Keep);
    }

    #[test]
    fn conflict_names() {
        let t = Timestamp {
            secs: 1_764_331_200 + 3_723,
            nanos: 0,
        }; // 2025-11-28 13:02:03
        assert_eq!(
            conflict_name("notes.txt", t, "12D3KooWAbc", 1),
            "notes.sync-conflict-20251128-130203-12D3Koo.txt"
        );
        assert_eq!(
            conflict_name("Makefile", t, "x", 1),
            "Makefile.sync-conflict-20251128-130203-x"
        );
        assert_eq!(
            conflict_name(".bashrc", t, "x", 1),
            ".bashrc.sync-conflict-20251128-130203-x"
        );
        assert_eq!(
            conflict_name("notes.txt", t, "x", 2),
            "notes.sync-conflict-20251128-130203-x-2.txt"
        );
    }
}
