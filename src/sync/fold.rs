//! Keeps the index current: folds each metadata op and file update into it, either as
//! a new local version (the sender, as it sends them: a fresh counter of this node's
//! clock) or as a peer's version (the receiver, as it applies them: merged vectors).

use crate::beneath::open_beneath;
use crate::journal::index::{Entry, Index, Kind, Stamp};
use crate::journal::op::Timestamp;
use crate::journal::{JournalError, MetaOp};
use crate::path::RelPath;
use crate::sys;
use crate::vv::{NodeId, Order, VersionVector};
use std::os::fd::AsRawFd;

/// Where a version comes from.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A local change: each touched entry gets a fresh counter of `node`.
    Local(NodeId),
    /// A peer's change at version `vv`: merged into each touched entry.
    Peer(&'a VersionVector),
}

impl Origin<'_> {
    /// True for a local change (its content is made here).
    fn is_local(&self) -> bool {
        matches!(self, Origin::Local(_))
    }

    fn next(&self, ix: &Index, old: Option<&Entry>) -> Result<VersionVector, JournalError> {
        let base = old.map(|e| e.vv.clone()).unwrap_or_default();
        Ok(match self {
            Origin::Local(node) => base.bumped(*node, ix.tick()?),
            // A peer's entry that beats our tombstone (it was created or edited
            // there, concurrently or after): theirs as it is. Merged, our lost delete's
            // counter would make their next version of it look concurrent with ours.
            Origin::Peer(vv) if old.is_some_and(|e| e.deleted && beats(vv, &e.vv)) => (*vv).clone(),
            Origin::Peer(vv) => base.merged(vv),
        })
    }
}

/// True if a version at `theirs` replaces one at `ours` (newer or concurrent).
fn beats(theirs: &VersionVector, ours: &VersionVector) -> bool {
    matches!(theirs.compare(ours), Order::Newer | Order::Concurrent)
}

/// What the backing store shows at `path` now: kind, mode, size, mtime, stamp.
pub fn look(root: &impl AsRawFd, path: &RelPath) -> Option<(Kind, libc::stat)> {
    let fd = open_beneath(root, path, libc::O_PATH | libc::O_NOFOLLOW, 0).ok()?;
    let st = sys::fstat(&fd).ok()?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => return None,
    };
    Some((kind, st))
}

/// The stamp of a `stat`.
pub fn stamp(st: &libc::stat) -> Stamp {
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Stamp {
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
    }
}

/// The mtime of a `stat`.
pub fn mtime(st: &libc::stat) -> Timestamp {
    Timestamp {
        secs: st.st_mtime,
        nanos: st.st_mtime_nsec as u32,
    }
}

/// Refreshes an entry's local view (mode, size, mtime, stamp) from the backing store.
fn refresh(root: &impl AsRawFd, path: &RelPath, e: &mut Entry) {
    if let Some((kind, st)) = look(root, path) {
        e.kind = kind;
        e.mode = st.st_mode & 0o7777;
        e.mtime = mtime(&st);
        e.stamp = stamp(&st);
        if kind == Kind::File {
            e.size = st.st_size as u64;
        }
    }
}

/// Folds `op` into the index; returns the version of its target path after it.
pub fn op(
    ix: &Index,
    root: &impl AsRawFd,
    op: &MetaOp,
    origin: Origin,
) -> Result<VersionVector, JournalError> {
    let put = |path: &RelPath, make: &dyn Fn(Option<Entry>) -> Entry| {
        let old = ix.get(path)?;
        let vv = origin.next(ix, old.as_ref())?;
        let mut e = make(old);
        e.vv = vv.clone();
        e.deleted = false;
        refresh(root, path, &mut e);
        ix.put(path, e)?;
        Ok::<_, JournalError>(vv)
    };
    let made = origin.is_local();
    match op {
        MetaOp::Create { path, mode, .. } => put(path, &|_| Entry {
            made_here: made,
            ..Entry::new(Kind::File, *mode)
        }),
        MetaOp::Mkdir { path, mode } => put(path, &|_| Entry::new(Kind::Dir, *mode)),
        MetaOp::Symlink { path, target } => put(path, &|_| Entry {
            hash: *blake3::hash(target).as_bytes(),
            target: target.clone(),
            ..Entry::new(Kind::Symlink, 0o777)
        }),
        MetaOp::Link { from, to } => {
            let src = ix.get(from)?;
            put(to, &|_| {
                src.clone().unwrap_or_else(|| Entry::new(Kind::File, 0o644))
            })
        }
        MetaOp::Unlink { path, .. } | MetaOp::Rmdir { path } => bury(ix, path, origin),
        MetaOp::Rename { from, to, flags } => rename(ix, root, from, to, *flags, origin),
        MetaOp::Mknod { .. } => Ok(VersionVector::new()), // special files are not indexed
        MetaOp::Truncate { path, .. } => put(path, &|old| Entry {
            made_here: made,
            ..old.unwrap_or_else(|| Entry::new(Kind::File, 0o644))
        }),
        MetaOp::Chmod { path, .. }
        | MetaOp::Chown { path, .. }
        | MetaOp::Utimens { path, .. }
        | MetaOp::SetXattr { path, .. }
        | MetaOp::RemoveXattr { path, .. } => put(path, &|old| {
            old.unwrap_or_else(|| Entry::new(Kind::File, 0o644))
        }),
    }
}

/// A tombstone at `path` (and below it).
fn bury(ix: &Index, path: &RelPath, origin: Origin) -> Result<VersionVector, JournalError> {
    let old = ix.get(path)?;
    let vv = match (origin, &old) {
        // both deleted it: one tombstone that descends from both deletes
        (Origin::Peer(vv), Some(e)) if e.deleted => e.vv.merged(vv),
        _ => origin.next(ix, old.as_ref())?,
    };
    let old = old.unwrap_or_else(|| Entry::new(Kind::File, 0));
    ix.put(path, old.tombstone(vv.clone()))?;
    Ok(vv)
}

fn rename(
    ix: &Index,
    root: &impl AsRawFd,
    from: &RelPath,
    to: &RelPath,
    flags: u32,
    origin: Origin,
) -> Result<VersionVector, JournalError> {
    let moved = ix.under(from)?;
    let mut result = VersionVector::new();
    if flags & libc::RENAME_EXCHANGE != 0 {
        let back = ix.under(to)?;
        for (p, e) in back {
            if let Some(np) = p.rebase(to, from) {
                place(ix, root, &np, e, origin)?;
            }
        }
    }
    for (p, e) in moved {
        let Some(np) = p.rebase(from, to) else {
            continue;
        };
        let vv = place(ix, root, &np, e.clone(), origin)?;
        if np == *to {
            result = vv;
        }
        if flags & libc::RENAME_EXCHANGE == 0 && ix.get(&p)?.is_some_and(|e| !e.deleted) {
            let vv = origin.next(ix, Some(&e))?;
            let mut t = e.tombstone(vv);
            t.moved_to = Some(np.clone());
            ix.put(&p, t)?;
        }
    }
    Ok(result)
}

/// Puts `e` (moved from elsewhere) at `path`, above whatever was there.
fn place(
    ix: &Index,
    root: &impl AsRawFd,
    path: &RelPath,
    mut e: Entry,
    origin: Origin,
) -> Result<VersionVector, JournalError> {
    let at = ix.get(path)?;
    let mut vv = origin.next(ix, Some(&e))?;
    if let Some(at) = at {
        vv = vv.merged(&at.vv);
    }
    e.vv = vv.clone();
    e.deleted = false;
    refresh(root, path, &mut e);
    ix.put(path, e)?;
    Ok(vv)
}

/// Folds new content of the file at `path`; returns its version.
pub fn update(
    ix: &Index,
    root: &impl AsRawFd,
    path: &RelPath,
    hash: [u8; 32],
    size: u64,
    origin: Origin,
) -> Result<VersionVector, JournalError> {
    let old = ix.get(path)?;
    let vv = origin.next(ix, old.as_ref())?;
    let mut e = old.unwrap_or_else(|| Entry::new(Kind::File, 0o644));
    refresh(root, path, &mut e);
    (e.vv, e.deleted, e.hash, e.size) = (vv.clone(), false, hash, size);
    e.made_here = origin.is_local();
    ix.put(path, e)?;
    Ok(vv)
}

/// The paths whose version `op` changes (for a rename: both names).
pub fn targets(op: &MetaOp) -> Vec<&RelPath> {
    match op {
        MetaOp::Rename { from, to, .. } => vec![from, to],
        MetaOp::Link { to, .. } => vec![to],
        MetaOp::Create { path, .. }
        | MetaOp::Mknod { path, .. }
        | MetaOp::Mkdir { path, .. }
        | MetaOp::Unlink { path, .. }
        | MetaOp::Rmdir { path }
        | MetaOp::Symlink { path, .. }
        | MetaOp::Chmod { path, .. }
        | MetaOp::Chown { path, .. }
        | MetaOp::Truncate { path, .. }
        | MetaOp::Utimens { path, .. }
        | MetaOp::SetXattr { path, .. }
        | MetaOp::RemoveXattr { path, .. } => vec![path],
    }
}

/// Merges a peer's version into the entry at `path` (same content: no data moved).
pub fn merge(ix: &Index, path: &RelPath, vv: &VersionVector) -> Result<(), JournalError> {
    if let Some(mut e) = ix.get(path)? {
        let merged = e.vv.merged(vv);
        if merged != e.vv {
            e.vv = merged;
            ix.put(path, e)?;
        }
    }
    Ok(())
}

/// The wire form of an index entry.
pub fn to_item(path: RelPath, e: Entry) -> crate::wire::IndexItem {
    use crate::wire::ItemKind;
    crate::wire::IndexItem {
        path,
        kind: match e.kind {
            Kind::File => ItemKind::File,
            Kind::Dir => ItemKind::Dir,
            Kind::Symlink => ItemKind::Symlink,
        },
        size: if e.deleted { 0 } else { e.size },
        mtime: e.mtime.into(),
        mode: e.mode,
        hash: crate::wire::content_id(&e.hash),
        target: if e.deleted { Vec::new() } else { e.target },
        vv: e.vv.pairs().to_vec(),
        deleted: e.deleted,
    }
}
