//! Content that already crossed the link, by file: the sync side of the store's chunk
//! index (`journal::sources`). A file offered by its chunks names the file here that
//! holds most of its content, and the peer rebuilds it from its own copy of that one
//! (a copy edited before it synced, data moved into a new file). Both sides index a
//! file when its whole content crosses: the sender after offering it, the receiver
//! after applying it.

use crate::beneath::open_beneath;
use crate::chunks::Tree;
use crate::journal::index::Kind;
use crate::journal::Journal;
use crate::path::RelPath;
use std::os::fd::AsRawFd;

/// Indexes `tree`, the content now at `path` (a failure is only logged: the index is
/// a hint).
pub fn remember(journal: &Journal, path: &RelPath, tree: &Tree) {
    let hashes: Vec<u64> = tree.landmarks().into_iter().map(|(h, _)| h).collect();
    if let Err(e) = journal.sources().put(path, &hashes) {
        tracing::warn!("{path}: cannot index its chunks: {e}");
    }
}

/// Reads the file at `path` and indexes it (blocking).
pub fn remember_file(journal: &Journal, root: &impl AsRawFd, path: &RelPath) {
    let (at, flags) = (std::time::Instant::now(), libc::O_RDONLY | libc::O_NOFOLLOW);
    let tree = open_beneath(root, path, flags, 0)
        .and_then(|fd| Tree::from_reader(std::fs::File::from(fd)));
    match tree {
        Ok(tree) => {
            remember(journal, path, &tree);
            let ms = at.elapsed().as_millis() as u64;
            tracing::debug!(bytes = tree.len(), ms, "{path}: chunks indexed");
        }
        Err(e) => tracing::debug!("{path}: not indexed: {e}"),
    }
}

/// A live file of the index other than `path` holding the most of `tree`'s content,
/// by the chunk index (none found: `None`).
pub fn source_for(journal: &Journal, path: &RelPath, tree: &Tree) -> Option<RelPath> {
    let holders = match journal.sources().holders(&tree.landmarks()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("{path}: cannot read the chunk index: {e}");
            return None;
        }
    };
    for h in holders.into_iter().filter(|h| h.path != *path) {
        match now_at(journal, &h.path) {
            Some(p) if p != *path => return Some(p),
            Some(_) => {}
            // deleted since: its nodes are no one's now
            None => {
                if let Err(e) = journal.sources().forget(&h.path) {
                    tracing::warn!("{}: cannot drop its chunks from the index: {e}", h.path);
                }
            }
        }
    }
    None
}

/// Renames followed at most, looking for where an indexed file went.
const MAX_HOPS: usize = 8;

/// Where the file indexed at `path` is now: there if it is a live file, else where
/// renames took it (`None`: deleted, or not a file).
fn now_at(journal: &Journal, path: &RelPath) -> Option<RelPath> {
    let mut at = path.clone();
    for _ in 0..=MAX_HOPS {
        let e = journal.index().get(&at).ok().flatten()?;
        match (e.kind, e.deleted, e.moved_to) {
            (Kind::File, false, _) => return Some(at),
            (Kind::File, true, Some(to)) => at = to,
            _ => return None,
        }
    }
    None
}

/// True if `path` is a regular file of the index, not deleted.
pub fn live_file(journal: &Journal, path: &RelPath) -> bool {
    let entry = journal.index().get(path).ok().flatten();
    entry.is_some_and(|e| e.kind == Kind::File && !e.deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::index::Entry;
    use crate::sync::hostile_tests::noise as bytes;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn an_edited_copy_names_the_live_file_it_came_from() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(&tmp.path().join("j")).unwrap();
        let live = |path: &str, deleted: bool| {
            let mut e = Entry::new(Kind::File, 0o644);
            e.deleted = deleted;
            journal.index().put(&p(path), e).unwrap();
        };
        let (a, b) = (bytes(2 << 20, 1), bytes(1 << 20, 2));
        remember(&journal, &p("a.iso"), &Tree::from_bytes(&a));
        remember(&journal, &p("gone/b.bin"), &Tree::from_bytes(&b));
        live("a.iso", false);
        live("gone/b.bin", true);
        let mut copy = a.clone();
        copy[1 << 20..(1 << 20) + 4096].copy_from_slice(&bytes(4096, 3));
        let copy = Tree::from_bytes(&copy);
        assert_eq!(source_for(&journal, &p("x/copy"), &copy), Some(p("a.iso")));
        assert_eq!(source_for(&journal, &p("a.iso"), &copy), None, "not itself");
        // b's content, moved into a new file after a header: b's file is deleted
        let moved: Vec<u8> = bytes(100, 4).into_iter().chain(b).collect();
        let moved = Tree::from_bytes(&moved);
        assert_eq!(source_for(&journal, &p("new"), &moved), None);
        live("gone/b.bin", false);
        assert_eq!(
            source_for(&journal, &p("new"), &moved),
            None,
            "a deleted file's nodes were dropped when it was found deleted"
        );
        remember(
            &journal,
            &p("gone/b.bin"),
            &Tree::from_bytes(&bytes(1 << 20, 2)),
        );
        assert_eq!(
            source_for(&journal, &p("new"), &moved),
            Some(p("gone/b.bin"))
        );
        // renamed since it was indexed: named where it went
        let mut gone = Entry::new(Kind::File, 0o644);
        (gone.deleted, gone.moved_to) = (true, Some(p("kept/b.bin")));
        journal.index().put(&p("gone/b.bin"), gone).unwrap();
        live("kept/b.bin", false);
        assert_eq!(
            source_for(&journal, &p("new"), &moved),
            Some(p("kept/b.bin"))
        );
        let other = Tree::from_bytes(&bytes(1 << 20, 5));
        assert_eq!(
            source_for(&journal, &p("new"), &other),
            None,
            "nothing shared"
        );
    }
}
