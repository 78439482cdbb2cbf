//! Content that already crossed the link, by file: the sync side of the store's chunk
//! index (`journal::sources`). A file offered by its chunks names the files here that
//! hold most of its content (at most [`MAX_CHUNK_SOURCES`]), and the peer rebuilds it
//! from its own copies of them (a copy edited before it synced, data moved or joined
//! into a new file). Both sides index a file when its whole content crosses: the
//! sender after offering it, the receiver after applying it. The index is a hint,
//! kept about the size of the live files' by [`sweep`].

use crate::beneath::open_beneath;
use crate::chunks::Tree;
use crate::journal::index::Kind;
use crate::journal::{Journal, JournalError};
use crate::path::RelPath;
use crate::wire::MAX_CHUNK_SOURCES;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;

/// Indexes `tree`, the content now at `path` (a failure is only logged: the index is
/// a hint).
pub fn remember(journal: &Journal, path: &RelPath, tree: &Tree) {
    if journal.sources().puts() % SWEEP_EVERY == SWEEP_EVERY - 1 {
        match sweep(journal) {
            Ok(n) => tracing::debug!(dropped = n, "chunk index swept"),
            Err(e) => tracing::warn!("cannot sweep the chunk index: {e}"),
        }
    }
    let hashes: Vec<u64> = tree.landmarks().into_iter().map(|(h, _)| h).collect();
    if let Err(e) = journal.sources().put(path, &hashes) {
        tracing::warn!("{path}: cannot index its chunks: {e}");
    }
}

/// Memory a chunk tree of `size` bytes takes while it is built, about.
pub fn tree_memory(size: u64) -> usize {
    (size / 4) as usize
}

/// Reads the file at `path` and indexes it if it is still a regular file of `size`
/// bytes (blocking).
pub fn remember_file(journal: &Journal, root: &impl AsRawFd, path: &RelPath, size: u64) {
    let at = std::time::Instant::now();
    // (non-blocking: a FIFO put there meanwhile is not waited on)
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let tree = open_beneath(root, path, flags, 0).and_then(|fd| {
        let st = crate::sys::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != size {
            return Err(std::io::Error::other("changed since it was applied"));
        }
        Tree::from_reader(std::fs::File::from(fd))
    });
    match tree {
        Ok(tree) => {
            remember(journal, path, &tree);
            let ms = at.elapsed().as_millis() as u64;
            tracing::debug!(bytes = tree.len(), ms, "{path}: chunks indexed");
        }
        Err(e) => tracing::debug!("{path}: not indexed: {e}"),
    }
}

/// The live, not ignored files of the index other than `path` holding the most of
/// `tree`'s content by the chunk index, most first: at most [`MAX_CHUNK_SOURCES`], each
/// holding some, together at most `most` bytes (what the peer stands on for a file of
/// this size); none found: empty.
pub fn sources_for(journal: &Journal, path: &RelPath, tree: &Tree, most: u64) -> Vec<RelPath> {
    let holders = match journal.sources().holders(&tree.landmarks()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("{path}: cannot read the chunk index: {e}");
            return Vec::new();
        }
    };
    let (mut out, mut total) = (Vec::new(), 0u64);
    for h in holders.into_iter().filter(|h| h.path != *path) {
        match now_at(journal, &h.path) {
            Ok(Some((p, size))) => {
                let fits = total.saturating_add(size) <= most;
                if fits && p != *path && !out.contains(&p) && !ignored(journal, &p) {
                    total += size;
                    out.push(p);
                }
            }
            // deleted since: its nodes are no one's now
            Ok(None) => forget(journal, &h.path),
            Err(e) => tracing::debug!("{}: cannot look it up: {e}", h.path),
        }
        if out.len() == MAX_CHUNK_SOURCES {
            break;
        }
    }
    out
}

fn forget(journal: &Journal, path: &RelPath) {
    if let Err(e) = journal.sources().forget(path) {
        tracing::warn!("{path}: cannot drop its chunks from the index: {e}");
    }
}

/// Renames followed at most, looking for where an indexed file went.
const MAX_HOPS: usize = 8;

/// Where the file indexed at `path` is now, and its size: there if it is a live file,
/// else where renames took it (`None`: deleted, or not a file).
fn now_at(journal: &Journal, path: &RelPath) -> Result<Option<(RelPath, u64)>, JournalError> {
    let mut at = path.clone();
    for _ in 0..=MAX_HOPS {
        let Some(e) = journal.index().get(&at)? else {
            return Ok(None);
        };
        match (e.kind, e.deleted, e.moved_to) {
            (Kind::File, false, _) => return Ok(Some((at, e.size))),
            (Kind::File, true, Some(to)) => at = to,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// True if the rules of the folder's ignore file match `path` (a file there is
/// neither sent nor read for the peer).
fn ignored(journal: &Journal, path: &RelPath) -> bool {
    journal.ignores().is_some_and(|i| i.matches(path, false))
}

/// The file a peer named to rebuild from, if it may stand for a new file here: a live
/// file of the index, not ignored, of a size in `sizes`.
pub fn usable(journal: &Journal, path: &RelPath, sizes: &RangeInclusive<u64>) -> bool {
    let entry = journal.index().get(path).ok().flatten();
    let live = entry.is_some_and(|e| e.kind == Kind::File && !e.deleted && sizes.contains(&e.size));
    live && !ignored(journal, path)
}

/// Indexes kept between sweeps of the index's paths (see [`sweep`]).
const SWEEP_EVERY: usize = 64;

/// Drops what was indexed for paths since deleted, or renamed and indexed again
/// under their new name, so that the index stays about the size of the live files'.
pub fn sweep(journal: &Journal) -> Result<usize, JournalError> {
    let sources = journal.sources();
    let mut dropped = 0;
    for path in sources.paths()? {
        let gone = match now_at(journal, &path)? {
            None => true,
            Some((now, _)) => now != path && sources.has(&now)?,
        };
        if gone {
            sources.forget(&path)?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::index::Entry;
    use crate::sync::hostile_tests::noise as bytes;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    struct Store {
        _tmp: tempfile::TempDir,
        data: std::path::PathBuf,
        journal: Journal,
    }

    fn store() -> Store {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let journal = Journal::open(&tmp.path().join("j")).unwrap();
        Store {
            _tmp: tmp,
            data,
            journal,
        }
    }

    /// Puts a file entry of `size` bytes at `path` (live or a tombstone).
    fn entry(j: &Journal, path: &str, size: u64, deleted: bool) {
        let mut e = Entry::new(Kind::File, 0o644);
        (e.size, e.deleted) = (size, deleted);
        j.index().put(&p(path), e).unwrap();
    }

    const ANY: RangeInclusive<u64> = 0..=u64::MAX;

    /// The first source named for `tree` at `path`, with no size limit.
    fn first(j: &Journal, path: &RelPath, tree: &Tree) -> Option<RelPath> {
        sources_for(j, path, tree, u64::MAX).first().cloned()
    }

    #[test]
    fn an_edited_copy_names_the_live_file_it_came_from() {
        let s = store();
        let j = &s.journal;
        let (a, b) = (bytes(2 << 20, 1), bytes(1 << 20, 2));
        remember(j, &p("a.iso"), &Tree::from_bytes(&a));
        remember(j, &p("gone/b.bin"), &Tree::from_bytes(&b));
        entry(j, "a.iso", 2 << 20, false);
        entry(j, "gone/b.bin", 1 << 20, true);
        let mut copy = a.clone();
        copy[1 << 20..(1 << 20) + 4096].copy_from_slice(&bytes(4096, 3));
        let copy = Tree::from_bytes(&copy);
        assert_eq!(first(j, &p("x/copy"), &copy), Some(p("a.iso")));
        assert_eq!(first(j, &p("a.iso"), &copy), None, "not itself");
        let too_big = sources_for(j, &p("x/copy"), &copy, 1 << 20);
        assert!(
            too_big.is_empty(),
            "a source over the size the peer stands on"
        );
        // b's content, moved into a new file after a header: b's file is deleted
        let moved: Vec<u8> = bytes(100, 4).into_iter().chain(b.clone()).collect();
        let moved = Tree::from_bytes(&moved);
        assert_eq!(first(j, &p("new"), &moved), None);
        entry(j, "gone/b.bin", 1 << 20, false);
        assert_eq!(
            first(j, &p("new"), &moved),
            None,
            "a deleted file's nodes were dropped when it was found deleted"
        );
        remember(j, &p("gone/b.bin"), &Tree::from_bytes(&b));
        assert_eq!(first(j, &p("new"), &moved), Some(p("gone/b.bin")));
        // renamed since it was indexed: named where it went
        let mut gone = Entry::new(Kind::File, 0o644);
        (gone.deleted, gone.moved_to) = (true, Some(p("kept/b.bin")));
        j.index().put(&p("gone/b.bin"), gone).unwrap();
        entry(j, "kept/b.bin", 1 << 20, false);
        assert_eq!(first(j, &p("new"), &moved), Some(p("kept/b.bin")));
        let other = Tree::from_bytes(&bytes(1 << 20, 5));
        assert_eq!(first(j, &p("new"), &other), None, "nothing shared");
    }

    #[test]
    fn data_of_several_files_names_each_most_first_within_the_size() {
        let s = store();
        let j = &s.journal;
        let (a, b, c) = (bytes(1 << 20, 11), bytes(2 << 20, 12), bytes(1 << 20, 13));
        for (path, data) in [("a", &a), ("b", &b), ("c", &c)] {
            remember(j, &p(path), &Tree::from_bytes(data));
            entry(j, path, data.len() as u64, false);
        }
        let joined: Vec<u8> = [&a[..], &b[..], &c[..512 << 10]].concat();
        let tree = Tree::from_bytes(&joined);
        let all = sources_for(j, &p("new"), &tree, u64::MAX);
        assert_eq!(all, [p("b"), p("a"), p("c")], "by bytes held");
        let some = sources_for(j, &p("new"), &tree, 3 << 20);
        assert_eq!(some, [p("b"), p("a")], "as many as fit");
    }

    #[test]
    fn an_ignored_file_is_neither_named_nor_usable() {
        let s = store();
        let j = &s.journal;
        std::fs::write(s.data.join(".syncfsignore"), "*.secret\n").unwrap();
        j.set_ignores(crate::ignores::Ignores::load(&s.data));
        let a = bytes(1 << 20, 6);
        remember(j, &p("keys.secret"), &Tree::from_bytes(&a));
        entry(j, "keys.secret", 1 << 20, false);
        entry(j, "plain.bin", 1 << 20, false);
        let tree = Tree::from_bytes(&a);
        assert_eq!(first(j, &p("copy.bin"), &tree), None);
        assert!(!usable(j, &p("keys.secret"), &ANY));
        assert!(usable(j, &p("plain.bin"), &ANY));
        assert!(!usable(j, &p("plain.bin"), &(0..=1000)), "too big");
        assert!(!usable(j, &p("nothing.bin"), &ANY), "not in the index");
    }

    #[test]
    fn a_sweep_drops_deleted_and_reindexed_renamed_paths() {
        let s = store();
        let j = &s.journal;
        let t = |seed| Tree::from_bytes(&bytes(256 << 10, seed));
        for (path, seed) in [("live", 1), ("deleted", 2), ("renamed", 3), ("moved", 4)] {
            remember(j, &p(path), &t(seed));
        }
        entry(j, "live", 256 << 10, false);
        entry(j, "deleted", 256 << 10, true);
        for (from, to) in [("renamed", "renamed-to"), ("moved", "moved-to")] {
            let mut e = Entry::new(Kind::File, 0o644);
            (e.deleted, e.moved_to) = (true, Some(p(to)));
            j.index().put(&p(from), e).unwrap();
            entry(j, to, 256 << 10, false);
        }
        remember(j, &p("moved-to"), &t(4)); // indexed again where it went
        assert_eq!(sweep(j).unwrap(), 2);
        let mut left: Vec<String> = j
            .sources()
            .paths()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["live", "moved-to", "renamed"]);
        let found = first(j, &p("new"), &t(3));
        assert_eq!(
            found,
            Some(p("renamed-to")),
            "a rename not indexed again is followed"
        );
    }
}
