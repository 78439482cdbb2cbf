//! Files the peer's index names that this node already holds under another path (a
//! rename or a copy made while the two were apart, a directory moved): they are made
//! from the local bytes, through the same gate and applier as a peer's update, and
//! nothing crosses the link.

use super::check::{Checker, UpdateStep};
use crate::apply::ApplyError;
use crate::beneath::open_beneath;
use crate::journal::Journal;
use crate::path::RelPath;
use crate::wire::{content_id, Encoding, FileUpdate, IndexItem, RangeData};
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// Larger files are sent by the peer (the local copy is read into memory).
const MAX_LOCAL: u64 = 64 << 20;

/// Live files of the index (at most [`MAX_LOCAL`] bytes) by content hash, and their
/// sizes (read once per index batch or sender round, on first use).
#[derive(Default)]
pub struct ByHash(Option<Live>);

/// What [`ByHash`] read of the index.
#[derive(Default)]
struct Live {
    by_hash: HashMap<[u8; 16], RelPath>,
    sizes: HashSet<u64>,
}

impl ByHash {
    fn read(&mut self, journal: &Journal) -> &Live {
        self.0.get_or_insert_with(|| {
            let mut live = Live::default();
            for (p, e) in live_files(journal).filter(|(_, e)| e.size <= MAX_LOCAL) {
                live.sizes.insert(e.size);
                live.by_hash.entry(content_id(&e.hash)).or_insert(p);
            }
            live
        })
    }

    /// A live file of `journal`'s index whose content id is `id`
    /// (`wire::content_id`).
    pub fn find(&mut self, journal: &Journal, id: &[u8; 16]) -> Option<RelPath> {
        self.read(journal).by_hash.get(id).cloned()
    }

    /// True if some live file of `journal`'s index is `size` bytes (else none can be
    /// a copy of a file that size: no need to read it for its hash).
    pub fn holds_size(&mut self, journal: &Journal, size: u64) -> bool {
        self.read(journal).sizes.contains(&size)
    }
}

/// The index's live, non-empty files.
fn live_files(
    journal: &Journal,
) -> impl Iterator<Item = (RelPath, crate::journal::index::Entry)> + '_ {
    (journal.index().all().flatten()).filter(|(_, e)| live_file(e) && e.size > 0)
}

/// A regular file of the index, not deleted.
fn live_file(e: &crate::journal::index::Entry) -> bool {
    e.kind == crate::journal::index::Kind::File && !e.deleted
}

/// A live file other than `not` whose indexed content hash is `hash`: a copy of the
/// content here, to rebuild from (the caller verifies what it read).
pub fn path_with_hash(journal: &Journal, hash: &[u8; 32], not: &RelPath) -> Option<RelPath> {
    live_files(journal)
        .find(|(p, e)| e.hash == *hash && p != not)
        .map(|(p, _)| p)
}

/// Index entries looked at for a [`similar`] file, at most.
const SIMILAR_LOOK: usize = 4096;

/// A live file to rebuild a new file `path` of `size` bytes from when no file here has
/// its content: one in the same directory with the same extension (or none), from half
/// to twice the size, and the nearest in size (a "save as" of an edited copy; the
/// exchange declines at once if it shares nothing with the new content).
pub fn similar(
    journal: &Journal,
    path: &RelPath,
    size: u64,
    sizes: &std::ops::RangeInclusive<u64>,
) -> Option<RelPath> {
    let dir = path.split_last().map_or_else(RelPath::root, |(d, _)| d);
    let ext = extension(path);
    let near = |s: u64| s.abs_diff(size);
    let fits = |p: &RelPath, s: u64| {
        p != path && sizes.contains(&s) && s >= size / 2 && s <= size.saturating_mul(2)
    };
    let children = journal.index().children_within(&dir, SIMILAR_LOOK).ok()?;
    (children.into_iter())
        .filter(|(p, e)| live_file(e) && fits(p, e.size) && extension(p) == ext)
        .min_by_key(|(p, e)| (near(e.size), p.clone()))
        .map(|(p, _)| p)
}

/// The extension of `path`'s name (after its last dot, if that is not the first byte).
fn extension(path: &RelPath) -> Option<Vec<u8>> {
    let (_, name) = path.split_last()?;
    let name = name.as_encoded_bytes();
    let dot = name.iter().rposition(|&b| b == b'.').filter(|&i| i > 0)?;
    Some(name[dot + 1..].to_vec())
}

/// Makes the file `it` names from a local file with the same content, if there is one
/// (true: done, the peer need not send it).
pub fn make_from_local(
    check: &Checker,
    it: &IndexItem,
    peer: &[u8],
    by_hash: &mut ByHash,
) -> Result<bool, ApplyError> {
    if it.size == 0 || it.size > MAX_LOCAL {
        return Ok(false);
    }
    let Some(src) = (by_hash.find(&check.journal, &it.hash)).filter(|p| *p != it.path) else {
        return Ok(false);
    };
    let Some(bytes) = read(check, &src, it.size) else {
        return Ok(false);
    };
    let hash = *blake3::hash(&bytes).as_bytes();
    if content_id(&hash) != it.hash {
        return Ok(false); // changed since it was indexed
    }
    let u = FileUpdate {
        id: 0,
        file: 0,
        path: it.path.clone(),
        base: None,
        size: it.size,
        mode: libc::S_IFREG | (it.mode & 0o7777),
        mtime: it.mtime,
        ranges: vec![RangeData {
            offset: 0,
            len: it.size,
            encoding: Encoding::Raw,
            data: bytes,
        }],
        hash,
        vv: it.vv.clone(),
    };
    let UpdateStep::Apply(judged) = check.before_update(&u, peer)? else {
        return Ok(true);
    };
    let aside = judged.clone();
    let record = &mut || {
        check.after_update(&u)?;
        check.after_aside(&u, &aside)
    };
    check.applier.apply_update_then(&u, Some(judged), record)?;
    tracing::info!(
        "{}: made from the local copy at {src}; nothing sent",
        it.path
    );
    Ok(true)
}

/// The content of `path` if it is exactly `size` bytes.
fn read(check: &Checker, path: &RelPath, size: u64) -> Option<Vec<u8>> {
    let fd = open_beneath(&*check.root, path, libc::O_RDONLY | libc::O_NOFOLLOW, 0).ok()?;
    let mut f = std::fs::File::from(fd);
    let mut buf = Vec::with_capacity(size as usize);
    f.by_ref().take(size + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 == size).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::index::{Entry, Kind};

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn a_similar_file_shares_directory_and_extension_and_is_nearest_in_size() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = crate::journal::Journal::open(&tmp.path().join("j")).unwrap();
        let file = |path: &str, size: u64, deleted: bool| {
            let mut e = Entry::new(Kind::File, 0o644);
            (e.size, e.deleted) = (size, deleted);
            journal.index().put(&p(path), e).unwrap();
        };
        file("docs/a.odt", 900_000, false);
        file("docs/b.odt", 1_200_000, false);
        file("docs/c.odt", 1_010_000, true); // deleted
        file("docs/d.txt", 1_000_000, false); // another extension
        file("docs/sub/e.odt", 1_000_000, false); // another directory
        file("docs/f.odt", 3_000_000, false); // too big
        let sizes = 1..=u64::MAX;
        let got = |path: &str, size| similar(&journal, &p(path), size, &sizes);
        assert_eq!(got("docs/new.odt", 1_000_000), Some(p("docs/a.odt")));
        assert_eq!(got("docs/new.odt", 1_150_000), Some(p("docs/b.odt")));
        assert_eq!(
            got("docs/a.odt", 900_000),
            Some(p("docs/b.odt")),
            "not itself"
        );
        assert_eq!(got("docs/new.txt", 600_000), Some(p("docs/d.txt")));
        assert_eq!(
            got("docs/new", 1_000_000),
            None,
            "no extension: none like it"
        );
        assert_eq!(got("docs/new.odt", 100_000), None, "nothing near the size");
        assert_eq!(
            extension(&p("x/.bashrc")),
            None,
            "a leading dot is no extension"
        );
        assert_eq!(extension(&p("x/a.tar.gz")), Some(b"gz".to_vec()));
    }
}
