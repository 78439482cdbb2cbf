//! Building a file update from the backing store: the journal's dirty ranges (or the
//! whole file) read, as one joint delta where the peer's old bytes are known and raw
//! otherwise (the stream compression squeezes them), split into frames, with the BLAKE3
//! hash of the whole new content.

use crate::beneath::open_beneath;
use crate::hashtree::{HashTree, LEAF};
use crate::journal::{FileEntry, FileId, RangeSet};
use crate::preimage::Preimages;
use crate::wire::{Encoding, FileUpdate, Message, RangeData, WireTime, MAX_UPDATE_SPAN};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Uncompressed bytes per range piece.
const PIECE: u64 = 1 << 20;
/// Range bytes per frame before starting a new `UpdatePart`.
const FRAME_BUDGET: usize = 4 << 20;

/// An update ready to send.
pub struct Built {
    /// `UpdatePart` frames, then the `FileUpdate`.
    pub frames: Vec<Message>,
    /// BLAKE3 of the whole new content.
    pub hash: [u8; 32],
    /// The byte ranges this update carries (acked as such).
    pub sent: RangeSet,
    /// Payload bytes (range data, before stream compression) in the frames.
    pub payload: u64,
    /// The file's hash tree as read for this update (kept for the next one).
    pub tree: HashTree,
    /// Bytes read to hash the file (only the changed leaves when a tree was given).
    pub hash_read: u64,
    /// File bytes that went as a delta against the peer's, and the delta's size.
    pub delta: (u64, u64),
    /// Cut short ([`cut_at`]): the update ends the peer's file at the first offset, and
    /// `[first, second)` (the file's size) is to be sent again after its ack.
    pub cut: Option<(u64, u64)>,
}

/// What to send for one file.
pub struct Plan<'a> {
    /// The journal's id of the file.
    pub file: FileId,
    /// Its journal entry.
    pub entry: &'a FileEntry,
    /// The update id.
    pub id: u64,
    /// Send every byte (fallback after a nack) instead of the dirty ranges.
    pub whole: bool,
    /// The id of the content the peer holds, if known (`wire::base_id`).
    pub base: Option<u64>,
    /// zstd level.
    pub level: i32,
    /// The file's hash tree from its last update: every byte changed since is in the
    /// journal's dirty ranges, so only their leaves are read again.
    pub tree: Option<HashTree>,
    /// Old bytes of dirty regions as the peer holds them, for delta compression.
    pub pre: Option<&'a Preimages>,
}

/// Bytes to send above which ranges go without a delta (the peer must hold the decoded
/// ranges in memory before it overwrites their old bytes; it refuses more).
pub const DICT_LIMIT: u64 = 64 << 20;

/// Builds the update, or `None` if the file is gone or is no longer this file.
pub fn build(root: &impl AsRawFd, p: Plan<'_>) -> std::io::Result<Option<Built>> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let file = match open_beneath(root, &p.entry.path, flags, 0) {
        Ok(fd) => File::from(fd),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let md = file.metadata()?;
    if !md.is_file() || md.ino() != p.file {
        return Ok(None);
    }
    if p.tree.is_some() && !p.whole {
        crate::sys::advise_random(&file); // only dirty ranges and their leaves are read
    }
    let size = md.len();
    let mut sent = if p.whole {
        RangeSet::from_range(0, size)
    } else {
        p.entry.ranges.clone()
    };
    sent.truncate(size);
    let cut = cut_at(&sent);
    if let Some(at) = cut {
        sent.truncate(at); // the rest goes in the next update (see `cut_at`)
    }
    let dirty = sent.clone();
    let pre = p.pre.filter(|_| !p.whole && cut.is_none()).and_then(|pre| {
        let merged = merge_spans(&sent, pre, p.file);
        (merged.len_bytes() <= DICT_LIMIT).then_some((pre, merged))
    });
    let pre = pre.map(|(pre, merged)| {
        sent = merged;
        pre
    });
    let old = pre.map(|x| Old {
        pre: x,
        file: p.file,
        dirty: &dirty,
    });
    let ranges = read_ranges(&file, &sent, p.level, old.as_ref())?;
    let (tree, hash_read) = hash_tree(&file, p.tree, &p.entry.ranges, size)?;
    let hash = match cut {
        Some(at) => (tree.prefix_root((at / LEAF) as usize))
            .ok_or_else(|| std::io::Error::other("a cut update's prefix is not whole leaves"))?,
        None => tree.root(),
    };
    let payload = ranges.iter().map(|r| r.data.len() as u64).sum();
    let joint = ranges.iter().filter(|r| r.encoding == Encoding::Joint);
    let delta = joint.fold((0, 0), |(n, p), r| (n + r.len, p + r.data.len() as u64));
    let update = FileUpdate {
        id: p.id,
        file: p.file,
        path: p.entry.path.clone(),
        base: p.base,
        size: cut.unwrap_or(size),
        mode: md.mode() & 0o7777,
        mtime: WireTime {
            secs: md.mtime(),
            nanos: md.mtime_nsec() as u32,
        },
        ranges: Vec::new(),
        hash,
        vv: Vec::new(), // set by the sender as it sends (sync::fold)
    };
    Ok(Some(Built {
        frames: into_frames(update, ranges),
        hash,
        sent,
        payload,
        tree,
        hash_read,
        delta,
        cut: cut.map(|at| (at, size)),
    }))
}

/// Where to cut an update whose ranges hold more than a peer takes in one
/// ([`MAX_UPDATE_SPAN`]): at the last [`LEAF`] boundary by which that much is dirty.
/// The update then makes the peer's file that prefix of ours (its size, its hash), and
/// the rest (`[cut, size)`, dirty again at the ack: a clean byte past the cut is lost
/// with the peer's tail) goes in the next. A file of 3 GiB goes in three updates,
/// each held in memory on both sides, not one the peer refuses.
fn cut_at(sent: &RangeSet) -> Option<u64> {
    if sent.len_bytes() <= MAX_UPDATE_SPAN {
        return None;
    }
    // (at least MAX_UPDATE_SPAN, a multiple of LEAF: no dirty byte precedes 0)
    let mut room = MAX_UPDATE_SPAN;
    for (start, end) in sent.iter() {
        if end - start >= room {
            return Some((start + room) / LEAF * LEAF);
        }
        room -= end - start;
    }
    None
}

/// Brings the tree up to date with the dirty ranges (and any size change), or hashes
/// the whole file when there is none. Returns the tree and the bytes read.
fn hash_tree(
    file: &File,
    tree: Option<HashTree>,
    dirty: &RangeSet,
    size: u64,
) -> std::io::Result<(HashTree, u64)> {
    let Some(mut tree) = tree else {
        return Ok((HashTree::from_file(file)?, size));
    };
    let (a, b) = (tree.len().min(size), tree.len().max(size));
    let resized = (a < b).then_some((a, b));
    let stats = tree.update(file, dirty.iter().chain(resized), size)?;
    Ok((tree, stats.bytes_read))
}

/// Largest clean gap merged between two dirty ranges into one span.
const GAP: u64 = 64 << 10;

/// Nearby dirty ranges whose old bytes are all known are merged, with the clean bytes
/// between them (which the peer holds as they are), into spans of at most [`PIECE`]:
/// one delta frame per span instead of one per range (SQLite pages, VM images).
fn merge_spans(set: &RangeSet, pre: &Preimages, file: FileId) -> RangeSet {
    let mut out = RangeSet::new();
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in set.iter() {
        let known = pre.covers(file, a, b);
        match cur {
            Some((s, e)) if known && a - e <= GAP && b - s <= PIECE => cur = Some((s, b)),
            _ => {
                if let Some((s, e)) = cur.take() {
                    out.insert(s, e);
                }
                if known {
                    cur = Some((a, b));
                } else {
                    out.insert(a, b);
                }
            }
        }
    }
    if let Some((s, e)) = cur {
        out.insert(s, e);
    }
    out
}

/// Where a piece's old bytes (what the peer holds) come from: the pre-images of its
/// dirty parts, and the current bytes of its clean parts.
struct Old<'a> {
    pre: &'a Preimages,
    file: FileId,
    dirty: &'a RangeSet,
}

impl Old<'_> {
    /// The peer's bytes of `[off, off + cur.len())`, if every dirty part's are known.
    fn of(&self, off: u64, cur: &[u8]) -> Option<Vec<u8>> {
        let end = off + cur.len() as u64;
        let mut old = cur.to_vec();
        for (a, b) in self.dirty.iter().filter(|(a, b)| *a < end && *b > off) {
            let (a, b) = (a.max(off), b.min(end));
            let bytes = self.pre.get(self.file, a, b)?;
            old[(a - off) as usize..(b - off) as usize].copy_from_slice(&bytes);
        }
        Some(old)
    }

    /// Where a piece starting at `off` must end (at most `end`): at the first edge of
    /// the dirty bytes whose old bytes are not known (a file grown by a rewrite: its new
    /// tail), so that the piece before it still goes as a delta.
    fn edge(&self, off: u64, end: u64) -> u64 {
        let window = RangeSet::from_range(off, end);
        let mut dirty = window.clone();
        dirty.remove_set(&window.difference(self.dirty));
        let unknown = dirty.difference(&self.pre.known(self.file, off, end));
        let edges = unknown.iter().flat_map(|(a, b)| [a, b]);
        edges.filter(|&x| x > off).min().unwrap_or(end).min(end)
    }
}

/// Reads `set` in pieces of at most [`PIECE`] bytes. Pieces whose old bytes are all
/// known go as one joint delta (see [`Encoding::Joint`]); the others go raw, for the
/// stream compression to squeeze along with everything else sent.
fn read_ranges(
    file: &File,
    set: &RangeSet,
    level: i32,
    old: Option<&Old<'_>>,
) -> std::io::Result<Vec<RangeData>> {
    let mut out = Vec::new();
    let (mut new_joint, mut old_joint, mut first) = (Vec::new(), Vec::new(), None);
    for (start, end) in set.iter() {
        let mut off = start;
        while off < end {
            let mut len = (end - off).min(PIECE);
            if let Some(o) = old {
                len = o.edge(off, off + len) - off;
            }
            let len = len as usize;
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, off)?;
            let (encoding, data) = match old.and_then(|o| o.of(off, &buf)) {
                Some(o) => {
                    old_joint.extend_from_slice(&o);
                    new_joint.extend_from_slice(&buf);
                    first.get_or_insert(out.len());
                    (Encoding::Joint, Vec::new()) // the piece's buffer is freed here
                }
                None => (Encoding::Raw, buf),
            };
            out.push(RangeData {
                offset: off,
                len: len as u64,
                encoding,
                data,
            });
            off += len as u64;
        }
    }
    if let Some(i) = first {
        out[i].data = crate::delta::encode(&new_joint, &old_joint, level)
            .map_err(|e| std::io::Error::other(format!("delta: {e}")))?;
    }
    Ok(out)
}

/// Splits ranges into `UpdatePart` frames within the budget; the last frame is the update.
fn into_frames(mut update: FileUpdate, ranges: Vec<RangeData>) -> Vec<Message> {
    let mut frames = Vec::new();
    let mut cur: Vec<RangeData> = Vec::new();
    let mut bytes = 0;
    for r in ranges {
        if bytes + r.data.len() > FRAME_BUDGET && !cur.is_empty() {
            frames.push(Message::UpdatePart {
                id: update.id,
                ranges: std::mem::take(&mut cur),
            });
            bytes = 0;
        }
        bytes += r.data.len();
        cur.push(r);
    }
    update.ranges = cur;
    frames.push(Message::FileUpdate(update));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelPath;

    /// A plan for the dirty ranges (or `whole` file) at zstd level 3, no tree, no pre-images.
    fn plan(file: FileId, entry: &FileEntry, id: u64, whole: bool) -> Plan<'_> {
        Plan {
            file,
            entry,
            id,
            whole,
            base: None,
            level: 3,
            tree: None,
            pre: None,
        }
    }

    fn entry(path: &str, ranges: &[(u64, u64)]) -> FileEntry {
        let mut e = FileEntry::new(RelPath::from_bytes(path.as_bytes()).unwrap());
        for &(s, t) in ranges {
            e.ranges.insert(s, t);
        }
        e
    }

    #[test]
    fn builds_dirty_ranges_and_whole_file_hash() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(t.path().join("f"), &data).unwrap();
        let root = File::open(t.path()).unwrap();
        let ino = std::fs::metadata(t.path().join("f")).unwrap().ino();
        let e = entry("f", &[(100, 200), (9_000_000, 20_000_000)]);
        let b = build(&root, plan(ino, &e, 7, false)).unwrap().unwrap();
        assert_eq!(b.hash, *blake3::hash(&data).as_bytes());
        assert_eq!(
            b.sent.iter().collect::<Vec<_>>(),
            vec![(100, 200), (9_000_000, 10_000_000)]
        );
        let Some(Message::FileUpdate(u)) = b.frames.last() else {
            panic!("last frame is the update")
        };
        assert_eq!((u.id, u.size), (7, 10_000_000));
        let all: Vec<_> = b
            .frames
            .iter()
            .flat_map(|m| match m {
                Message::UpdatePart { ranges, .. } => ranges.clone(),
                Message::FileUpdate(u) => u.ranges.clone(),
                _ => vec![],
            })
            .collect();
        let total: u64 = all.iter().map(|r| r.len).sum();
        assert_eq!(total, 100 + 1_000_000);
        for r in &all {
            let bytes = crate::wire::decompress_range(r).unwrap();
            assert_eq!(bytes, &data[r.offset as usize..(r.offset + r.len) as usize]);
        }
        for m in &b.frames {
            crate::wire::encode(m).expect("every frame fits");
        }
    }

    #[test]
    fn small_edit_rehashes_one_leaf() {
        let t = tempfile::tempdir().unwrap();
        let mut data = vec![5u8; 8 << 20];
        std::fs::write(t.path().join("f"), &data).unwrap();
        let root = File::open(t.path()).unwrap();
        let ino = std::fs::metadata(t.path().join("f")).unwrap().ino();
        let e = entry("f", &[(0, 8 << 20)]);
        let first = build(&root, plan(ino, &e, 1, false)).unwrap().unwrap();
        data[3 << 20] = 9;
        std::fs::OpenOptions::new()
            .write(true)
            .open(t.path().join("f"))
            .unwrap()
            .write_all_at(&[9], 3 << 20)
            .unwrap();
        let e = entry("f", &[(3 << 20, (3 << 20) + 1)]);
        let p = Plan {
            tree: Some(first.tree),
            ..plan(ino, &e, 2, false)
        };
        let b = build(&root, p).unwrap().unwrap();
        assert_eq!(b.hash, *blake3::hash(&data).as_bytes());
        assert!(
            b.hash_read <= 1 << 20,
            "read {} bytes to hash a 1-byte edit",
            b.hash_read
        );
    }

    /// A small file rewritten (`O_TRUNC`) with a line inserted in its middle grows: its
    /// new tail has no old bytes, but the rest still goes as a delta against what the
    /// peer holds, not as the whole file.
    #[test]
    fn a_rewrite_that_grows_the_file_goes_as_a_delta() {
        let t = tempfile::tempdir().unwrap();
        let line = |i: u32| {
            format!(
                "let value_{i} = compute({i}, {}); // a line of code\n",
                i * 7919
            )
        };
        let old: String = (0..300).map(line).collect();
        let mut new = old.clone();
        new.insert_str(old.len() / 2, "// a comment inserted in the middle\n");
        std::fs::write(t.path().join("f"), &old).unwrap();
        let ino = std::fs::metadata(t.path().join("f")).unwrap().ino();
        let pre = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        let backing = File::options()
            .read(true)
            .write(true)
            .open(t.path().join("f"))
            .unwrap();
        pre.before_truncate(ino, &backing, old.len() as u64, 0)
            .unwrap();
        backing.set_len(0).unwrap();
        pre.before_write(ino, &backing, 0, 0, new.len() as u64)
            .unwrap();
        backing.write_all_at(new.as_bytes(), 0).unwrap();
        let root = File::open(t.path()).unwrap();
        let e = entry("f", &[(0, new.len() as u64)]);
        let p = Plan {
            pre: Some(&pre),
            ..plan(ino, &e, 1, false)
        };
        let b = build(&root, p).unwrap().unwrap();
        assert_eq!(b.hash, *blake3::hash(new.as_bytes()).as_bytes());
        let Some(Message::FileUpdate(u)) = b.frames.last() else {
            panic!("last frame is the update")
        };
        let bytes: usize = u.ranges.iter().map(|r| r.data.len()).sum();
        assert!(
            bytes < 200,
            "{bytes} bytes for a {}-byte file with one line inserted: {:?}",
            new.len(),
            u.ranges
                .iter()
                .map(|r| (r.offset, r.len, r.encoding))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn big_whole_file_is_split_into_parts() {
        let t = tempfile::tempdir().unwrap();
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; 20 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data); // incompressible
        std::fs::write(t.path().join("f"), &data).unwrap();
        let root = File::open(t.path()).unwrap();
        let ino = std::fs::metadata(t.path().join("f")).unwrap().ino();
        let e = entry("f", &[]);
        let p = Plan {
            level: 1,
            ..plan(ino, &e, 1, true)
        };
        let b = build(&root, p).unwrap().unwrap();
        assert!(b.frames.len() > 2, "{} frames", b.frames.len());
        assert!(matches!(b.frames[0], Message::UpdatePart { id: 1, .. }));
    }

    #[test]
    fn missing_or_replaced_file_builds_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = File::open(t.path()).unwrap();
        let e = entry("gone", &[(0, 1)]);
        let p = || plan(1, &e, 1, false);
        assert!(build(&root, p()).unwrap().is_none());
        std::fs::write(t.path().join("gone"), b"x").unwrap();
        assert!(
            build(&root, p()).unwrap().is_none(),
            "another inode at the path is not this file"
        );
    }
}
