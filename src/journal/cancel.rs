//! Ops made void while still unsent, found when a new op is recorded, so that the
//! journal stays bounded while no peer takes them:
//!
//! - an `Unlink` of a file's last link whose `Create` is unsent voids the `Create`,
//!   the renames, links and unlinks of the file's other names between (a temp file
//!   renamed, a hard link made and removed), the attribute ops on its names, and
//!   itself;
//!   the same for a symlink or special file (`Symlink`, `Mknod` at the path) and for an
//!   `Rmdir` whose `Mkdir` is unsent;
//! - a `Chmod`, `Chown`, `Utimens`, `SetXattr` or `RemoveXattr` replaces an unsent
//!   earlier one of the same kind on the same path (and xattr name), taking over the
//!   fields it leaves unset.
//!
//! The search stops at an op naming the path in another role (rename, link, create …),
//! as [`crate::sync::coalesce`] does at send time, and at the sent watermark: an op the
//! sender may have sent is never touched. Pure: no I/O, no state change.

use super::op::{FileId, MetaOp};
use crate::path::RelPath;
use std::collections::BTreeMap;

/// Pending ops looked at, newest first, when searching for what a new op voids.
const WINDOW: usize = 1024;

/// What recording a new op does to the pending log.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The op to record (a merge carries fields over from the op it replaces).
    pub op: MetaOp,
    /// Sequence numbers to drop, possibly including the new op's own.
    pub void: Vec<u64>,
    /// The new file whose data update now rewrites a file both sides hold (an unlink
    /// that ends a save by renaming the original away, see [`find_backup_save`]).
    pub save: Option<FileId>,
}

/// What the journal knows beyond the log, for [`plan`].
pub struct Known<'a> {
    /// True when the file has a data update pending.
    pub pending: &'a dyn Fn(FileId) -> bool,
    /// True when both sides hold a regular file at the path (the index says so).
    pub synced_file: &'a dyn Fn(&RelPath) -> bool,
    /// The sequence number from which ops follow the peer's version last taken at the
    /// path (the index's `taken_at`; 0: none taken).
    pub taken_at: &'a dyn Fn(&RelPath) -> u64,
}

/// Decides what `op`, about to be recorded as `seq`, voids among the pending ops
/// `meta` above `floor` (the highest sequence number the sender may have sent).
pub fn plan(
    meta: &BTreeMap<u64, MetaOp>,
    floor: u64,
    seq: u64,
    op: MetaOp,
    known: &Known<'_>,
) -> Plan {
    let birth = match &op {
        MetaOp::Rename { from, to, flags: 0 } if (known.synced_file)(to) => {
            find_save(meta, floor, from, to, known.pending)
        }
        MetaOp::Unlink {
            path,
            file,
            last_link: true,
        } => {
            let born = find_file_birth(meta, floor, path, *file).or_else(|| {
                find_birth(meta, floor, path, |o| {
                    matches!(o, MetaOp::Symlink { path: p, .. } | MetaOp::Mknod { path: p, .. }
                        if p == path)
                })
            });
            if born.is_none() {
                if let Some((mut void, new)) = find_backup_save(meta, floor, path, known) {
                    void.push(seq);
                    return Plan {
                        op,
                        void,
                        save: Some(new),
                    };
                }
            }
            born
        }
        MetaOp::Rmdir { path } => find_birth(
            meta,
            floor,
            path,
            |o| matches!(o, MetaOp::Mkdir { path: p, .. } if p == path),
        ),
        _ => return merge(meta, floor, op),
    };
    let void = birth.map_or_else(Vec::new, |mut v| {
        v.push(seq);
        v
    });
    Plan {
        op,
        void,
        save: None,
    }
}

/// Unsent pending ops, newest first, at most [`WINDOW`].
fn unsent(meta: &BTreeMap<u64, MetaOp>, floor: u64) -> impl Iterator<Item = (&u64, &MetaOp)> {
    meta.range(floor.saturating_add(1)..).rev().take(WINDOW)
}

/// The sequence numbers of the op `born` matches and of the attribute ops on `path`
/// after it, when nothing else mentions `path` in between.
fn find_birth(
    meta: &BTreeMap<u64, MetaOp>,
    floor: u64,
    path: &RelPath,
    born: impl Fn(&MetaOp) -> bool,
) -> Option<Vec<u64>> {
    let mut seqs = Vec::new();
    for (s, o) in unsent(meta, floor) {
        if born(o) {
            seqs.push(*s);
            return Some(seqs);
        }
        if o.is_attr_op_on(path) {
            seqs.push(*s);
        } else if o.mentions(path) {
            return None;
        }
    }
    None
}

/// The whole unsent life of regular file `file`, walked back from the unlink of its
/// last name `path`: its `Create`, the renames, links and other unlinks that moved its
/// names, and the attribute ops on any of its names. `None` when anything else names
/// one of them, or names a rename's target before the rename (a rename over an existing
/// entry is recorded after an `Unlink` of that entry, so an untouched target was free),
/// or when the birth is sent or outside the window.
fn find_file_birth(
    meta: &BTreeMap<u64, MetaOp>,
    floor: u64,
    path: &RelPath,
    file: FileId,
) -> Option<Vec<u64>> {
    // the file's names just after the op looked at, and the names renames took over
    let (mut names, mut fresh) = (vec![path.clone()], Vec::<RelPath>::new());
    let mut seqs = Vec::new();
    for (s, o) in unsent(meta, floor) {
        let has = |p: &RelPath| names.contains(p);
        match o {
            MetaOp::Create {
                path: p, file: f, ..
            } if *f == file && has(p) => {
                if names.len() > 1 {
                    return None;
                }
                seqs.push(*s);
                return Some(seqs);
            }
            MetaOp::Unlink {
                path: p,
                file: f,
                last_link: false,
            } if *f == file && !has(p) && !fresh.contains(p) => names.push(p.clone()),
            MetaOp::Link { from, to } if has(from) && has(to) => names.retain(|n| n != to),
            MetaOp::Rename { from, to, flags }
                if flags & libc::RENAME_EXCHANGE == 0 && has(to) && !has(from) =>
            {
                names.retain(|n| n != to);
                names.push(from.clone());
                fresh.push(to.clone());
            }
            o if names.iter().any(|n| o.is_attr_op_on(n)) => {}
            o if names.iter().chain(&fresh).any(|n| o.mentions(n)) => return None,
            _ => continue,
        }
        seqs.push(*s);
    }
    None
}

/// A save by temp file and rename (`Create t`, writes, attribute ops on `t`, then `t`
/// renamed over a regular file `b` both sides hold, recorded as `Unlink b` +
/// `Rename t b`), all unsent: the
/// new file's pending data update, now at `b`, rewrites `b` in place, so it can go as a
/// delta against the peer's `b` (see `crate::preimage`). The `Create`, the `Unlink` and
/// the attribute ops the update carries (mode, mtime, size) are void, and so is the
/// rename. `None` for anything else on either name between, or a file with no pending
/// data (its content then travels with the ops).
fn find_save(
    meta: &BTreeMap<u64, MetaOp>,
    floor: u64,
    from: &RelPath,
    to: &RelPath,
    pending: &dyn Fn(FileId) -> bool,
) -> Option<Vec<u64>> {
    let mut ops = unsent(meta, floor).filter(|(_, o)| o.mentions(from) || o.mentions(to));
    let (s, replaced) = ops.next()?;
    if !matches!(replaced, MetaOp::Unlink { path, last_link: true, .. } if path == to) {
        return None;
    }
    let mut seqs = vec![*s];
    for (s, o) in ops {
        match o {
            MetaOp::Chmod { path, .. } | MetaOp::Utimens { path, .. } if path == from => {}
            MetaOp::Truncate { path, .. } if path == from => {}
            MetaOp::Create { path, file, .. } if path == from && pending(*file) => {
                seqs.push(*s);
                return Some(seqs);
            }
            o if o.mentions(from) => return None,
            _ => continue, // an older op on the replaced entry: it stands
        }
        seqs.push(*s);
    }
    None
}

/// A save that renames the original away first (vim's and emacs's backup: `Rename a
/// b`, `Create a`, writes, attribute ops, then `Unlink b`, recorded as `b`'s last link
/// goes), all unsent, with `a` a regular file both sides hold and the new file's data
/// pending: as for [`find_save`], the new file's update rewrites `a` in place. The
/// rename, the `Create`, the attribute ops on `b` and those on `a` the update carries
/// (mode, mtime, size) are void; an owner or xattr op on `a` stands. Returns the void
/// ops and the new file; `None` for anything else on either name between.
fn find_backup_save(
    meta: &BTreeMap<u64, MetaOp>,
    floor: u64,
    b: &RelPath,
    known: &Known<'_>,
) -> Option<(Vec<u64>, FileId)> {
    let mut void = Vec::new();
    let mut rename = None;
    for (s, o) in unsent(meta, floor) {
        match o {
            MetaOp::Rename { from, to, flags } if to == b && plain(*flags) => {
                rename = Some((*s, from));
                break;
            }
            o if o.is_attr_op_on(b) => void.push(*s),
            o if o.mentions(b) => return None,
            _ => {}
        }
    }
    let (at, a) = rename?;
    // the file unlinked must be the one the rename moved: not a peer's version taken
    // at `b` since (the renamed file went aside as a conflict copy or was archived)
    if (known.taken_at)(b) > at {
        return None;
    }
    // `a` must still be the file both sides hold: nothing unsent replaced it before
    let replaced = meta
        .range(floor.saturating_add(1)..at)
        .any(|(_, o)| o.mentions(a) && !o.is_attr_op_on(a));
    if replaced || !(known.synced_file)(a) {
        return None;
    }
    let mut born = None;
    for (s, o) in meta.range(at + 1..).filter(|(_, o)| o.mentions(a)) {
        match o {
            MetaOp::Create { path, file, .. } if path == a && born.is_none() => born = Some(*file),
            MetaOp::Chmod { path, .. }
            | MetaOp::Utimens { path, .. }
            | MetaOp::Truncate { path, .. }
                if path == a && born.is_some() => {}
            o if o.is_attr_op_on(a) && born.is_some() => continue, // it stands
            _ => return None,
        }
        void.push(*s);
    }
    let new = born.filter(|f| (known.pending)(*f))?;
    void.push(at);
    void.sort_unstable();
    Some((void, new))
}

/// True when an unsent plain rename made `path`, attribute ops aside (so unlinking it
/// may end a save that renamed the original away: [`find_backup_save`]).
pub fn renamed_to(meta: &BTreeMap<u64, MetaOp>, floor: u64, path: &RelPath) -> bool {
    unsent(meta, floor)
        .find(|(_, o)| o.mentions(path) && !o.is_attr_op_on(path))
        .is_some_and(
            |(_, o)| matches!(o, MetaOp::Rename { to, flags, .. } if to == path && plain(*flags)),
        )
}

/// A rename that moves one entry to a name (`RENAME_NOREPLACE` only says the name was
/// free, as `mv` asks), not an exchange or whiteout.
fn plain(flags: u32) -> bool {
    flags & !libc::RENAME_NOREPLACE == 0
}

/// Merges an attribute op into the newest unsent one of the same kind on its path.
fn merge(meta: &BTreeMap<u64, MetaOp>, floor: u64, op: MetaOp) -> Plan {
    let Some(path) = op.attr_path() else {
        return Plan::keep(op);
    };
    for (s, o) in unsent(meta, floor) {
        if let Some(m) = merged(&op, o) {
            return Plan {
                op: m,
                void: vec![*s],
                save: None,
            };
        }
        if blocks_merge(&op, o, path) {
            break;
        }
    }
    Plan::keep(op)
}

impl Plan {
    /// Records `op` as it is, voiding nothing.
    fn keep(op: MetaOp) -> Plan {
        Plan {
            op,
            void: vec![],
            save: None,
        }
    }
}

/// True when `o` stands between `op` and an earlier op on `path` it would replace:
/// it names the path in a namespace role, or (for times) truncates it, which sets
/// the mtime an older `Utimens` field would otherwise override.
fn blocks_merge(op: &MetaOp, o: &MetaOp, path: &RelPath) -> bool {
    let truncates = matches!(o, MetaOp::Truncate { path: p, .. } if p == path);
    (o.attr_path().is_none() && o.mentions(path))
        || (truncates && matches!(op, MetaOp::Utimens { .. }))
}

/// `new` recorded after `old`, as one op, when both set the same attribute of the
/// same path (the new op's fields win; the ones it leaves unset keep the old value).
fn merged(new: &MetaOp, old: &MetaOp) -> Option<MetaOp> {
    use MetaOp::*;
    match (new, old) {
        (Chmod { path, .. }, Chmod { path: q, .. }) if path == q => Some(new.clone()),
        (
            Chown { path, uid, gid },
            Chown {
                path: q,
                uid: u,
                gid: g,
            },
        ) if path == q => Some(Chown {
            path: path.clone(),
            uid: uid.or(*u),
            gid: gid.or(*g),
        }),
        (
            Utimens { path, atime, mtime },
            Utimens {
                path: q,
                atime: a,
                mtime: m,
            },
        ) if path == q => Some(Utimens {
            path: path.clone(),
            atime: atime.or(*a),
            mtime: mtime.or(*m),
        }),
        (SetXattr { .. } | RemoveXattr { .. }, SetXattr { .. } | RemoveXattr { .. })
            if xattr_key(new) == xattr_key(old) =>
        {
            Some(new.clone())
        }
        _ => None,
    }
}

/// The path and name an xattr op sets or removes.
fn xattr_key(op: &MetaOp) -> Option<(&RelPath, &[u8])> {
    match op {
        MetaOp::SetXattr { path, name, .. } | MetaOp::RemoveXattr { path, name } => {
            Some((path, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::op::SetTime;

    fn rp(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    /// [`super::plan`] with every file's data pending and every path a synced file.
    fn plan(meta: &BTreeMap<u64, MetaOp>, floor: u64, seq: u64, op: MetaOp) -> Plan {
        let known = Known {
            pending: &|_| true,
            synced_file: &|_| true,
            taken_at: &|_| 0,
        };
        super::plan(meta, floor, seq, op, &known)
    }

    fn log(ops: Vec<MetaOp>) -> BTreeMap<u64, MetaOp> {
        (1..).zip(ops).collect()
    }

    fn chown(uid: Option<u32>, gid: Option<u32>) -> MetaOp {
        MetaOp::Chown {
            path: rp("f"),
            uid,
            gid,
        }
    }

    fn xattr(name: &str, value: Option<&str>) -> MetaOp {
        let (path, name) = (rp("f"), name.as_bytes().to_vec());
        match value {
            Some(v) => MetaOp::SetXattr {
                path,
                name,
                value: v.as_bytes().to_vec(),
                flags: 0,
            },
            None => MetaOp::RemoveXattr { path, name },
        }
    }

    #[test]
    fn a_backup_save_folds_unless_a_peer_version_replaced_the_backup() {
        let meta = log(vec![
            MetaOp::Rename {
                from: rp("a"),
                to: rp("a~"),
                flags: 0,
            },
            MetaOp::Create {
                path: rp("a"),
                file: 5,
                mode: 0o644,
            },
        ]);
        let unlink = MetaOp::Unlink {
            path: rp("a~"),
            file: 4,
            last_link: true,
        };
        let folded = plan(&meta, 0, 3, unlink.clone());
        assert_eq!((folded.save, folded.void), (Some(5), vec![1, 2, 3]));
        // the peer's version was taken at `a~` after the rename (ops from seq 2 on follow
        // it): the file unlinked is that one, and the unlink must go
        let taken = |p: &RelPath| if *p == rp("a~") { 2 } else { 0 };
        let known = Known {
            pending: &|_| true,
            synced_file: &|_| true,
            taken_at: &taken,
        };
        let kept = super::plan(&meta, 0, 3, unlink, &known);
        assert_eq!((kept.save, kept.void), (None, vec![]));
    }

    #[test]
    fn symlinks_and_fifos_cancel_out_too() {
        let meta = log(vec![
            MetaOp::Symlink {
                path: rp("l"),
                target: b"x".to_vec(),
            },
            MetaOp::Mknod {
                path: rp("p"),
                mode: libc::S_IFIFO | 0o644,
                rdev: 0,
            },
        ]);
        let unlink = |p: &str| MetaOp::Unlink {
            path: rp(p),
            file: 9,
            last_link: true,
        };
        assert_eq!(plan(&meta, 0, 3, unlink("l")).void, [1, 3]);
        assert_eq!(plan(&meta, 0, 3, unlink("p")).void, [2, 3]);
        assert!(plan(&meta, 2, 3, unlink("p")).void.is_empty());
    }

    #[test]
    fn a_renamed_temp_file_cancels_out_unless_it_replaced_something() {
        let create = MetaOp::Create {
            path: rp("a"),
            file: 9,
            mode: 0o644,
        };
        let rename = MetaOp::Rename {
            from: rp("a"),
            to: rp("b"),
            flags: 0,
        };
        let unlink = |p: &str, file| MetaOp::Unlink {
            path: rp(p),
            file,
            last_link: true,
        };
        let chmod = MetaOp::Chmod {
            path: rp("b"),
            mode: 0o600,
        };
        let meta = log(vec![create.clone(), rename.clone(), chmod]);
        assert_eq!(plan(&meta, 0, 4, unlink("b", 9)).void, [3, 2, 1, 4]);
        assert!(
            plan(&meta, 1, 4, unlink("b", 9)).void.is_empty(),
            "create sent"
        );
        // b existed: the rename replaced it, which the peer must still see
        let meta = log(vec![create, unlink("b", 5), rename]);
        assert!(plan(&meta, 0, 4, unlink("b", 9)).void.is_empty());
    }

    #[test]
    fn a_save_that_renames_the_original_away_becomes_an_update_of_it() {
        // vim: rename doc -> doc~, create doc, write, chmod, chown, unlink doc~
        let (doc, bak) = (rp("d/doc"), rp("d/doc~"));
        let meta = log(vec![
            MetaOp::Rename {
                from: doc.clone(),
                to: bak.clone(),
                flags: 0,
            },
            MetaOp::Create {
                path: doc.clone(),
                file: 9,
                mode: 0o644,
            },
            MetaOp::Chmod {
                path: doc.clone(),
                mode: 0o600,
            },
            MetaOp::Chown {
                path: doc.clone(),
                uid: Some(1000),
                gid: None,
            },
        ]);
        let unlink = MetaOp::Unlink {
            path: bak.clone(),
            file: 5,
            last_link: true,
        };
        let p = plan(&meta, 0, 5, unlink.clone());
        assert_eq!(p.void, [1, 2, 3, 5], "the owner op stands");
        assert_eq!(p.save, Some(9));
        let empty = Known {
            pending: &|_| false,
            synced_file: &|_| true,
            taken_at: &|_| 0,
        };
        let p = super::plan(&meta, 0, 5, unlink.clone(), &empty);
        assert!(p.void.is_empty() && p.save.is_none(), "no data: ops");
        let fresh = Known {
            pending: &|_| true,
            synced_file: &|_| false,
            taken_at: &|_| 0,
        };
        let p = super::plan(&meta, 0, 5, unlink.clone(), &fresh);
        assert!(p.save.is_none(), "the peer holds no file at doc");
        assert!(
            plan(&meta, 1, 5, unlink.clone()).save.is_none(),
            "rename sent"
        );
        let mut other = meta.clone();
        other.insert(
            4,
            MetaOp::Rename {
                from: doc.clone(),
                to: rp("d/x"),
                flags: 0,
            },
        );
        assert!(
            plan(&other, 0, 5, unlink.clone()).save.is_none(),
            "doc moved on"
        );
        // doc replaced by a symlink (unsent) before the save: the peer's doc is no file
        let mut before = log(vec![
            MetaOp::Unlink {
                path: doc.clone(),
                file: 4,
                last_link: true,
            },
            MetaOp::Symlink {
                path: doc.clone(),
                target: b"x".to_vec(),
            },
        ]);
        before.extend(meta.iter().map(|(s, o)| (s + 2, o.clone())));
        assert!(
            plan(&before, 0, 7, unlink.clone()).save.is_none(),
            "doc was replaced"
        );
        assert!(
            plan(&before, 2, 7, unlink).save.is_some(),
            "the replacement was sent"
        );
    }

    #[test]
    fn a_name_an_unsent_rename_made_is_known_attribute_ops_aside() {
        let (doc, bak) = (rp("doc"), rp("doc~"));
        let rename = |flags| MetaOp::Rename {
            from: doc.clone(),
            to: bak.clone(),
            flags,
        };
        let times = MetaOp::Utimens {
            path: bak.clone(),
            atime: None,
            mtime: None,
        };
        let meta = log(vec![rename(libc::RENAME_NOREPLACE), times.clone()]);
        assert!(renamed_to(&meta, 0, &bak));
        assert!(!renamed_to(&meta, 1, &bak), "the rename was sent");
        assert!(!renamed_to(&meta, 0, &doc));
        let exchange = log(vec![rename(libc::RENAME_EXCHANGE), times]);
        assert!(!renamed_to(&exchange, 0, &bak));
    }

    #[test]
    fn a_temp_file_saved_over_a_file_becomes_an_update_of_it() {
        let t = rp("d/.doc.swp");
        let meta = log(vec![
            MetaOp::Create {
                path: t.clone(),
                file: 9,
                mode: 0o600,
            },
            MetaOp::Chmod {
                path: t.clone(),
                mode: 0o644,
            },
            MetaOp::Unlink {
                path: rp("d/doc"),
                file: 5,
                last_link: true,
            },
        ]);
        let save = MetaOp::Rename {
            from: t.clone(),
            to: rp("d/doc"),
            flags: 0,
        };
        assert_eq!(plan(&meta, 0, 4, save.clone()).void, [3, 2, 1, 4]);
        let empty = Known {
            pending: &|_| false,
            synced_file: &|_| true,
            taken_at: &|_| 0,
        };
        let none = super::plan(&meta, 0, 4, save.clone(), &empty);
        assert!(none.void.is_empty(), "an empty new file goes as ops");
        let symlink = Known {
            pending: &|_| true,
            synced_file: &|_| false,
            taken_at: &|_| 0,
        };
        let over_a_link = super::plan(&meta, 0, 4, save.clone(), &symlink);
        assert!(
            over_a_link.void.is_empty(),
            "a symlink or new file replaced goes as ops"
        );
        assert!(
            plan(&meta, 1, 4, save.clone()).void.is_empty(),
            "create sent"
        );
        let mut owned = meta.clone();
        owned.insert(
            3,
            MetaOp::Chown {
                path: t,
                uid: Some(1),
                gid: None,
            },
        );
        owned.insert(
            4,
            MetaOp::Unlink {
                path: rp("d/doc"),
                file: 5,
                last_link: true,
            },
        );
        assert!(
            plan(&owned, 0, 5, save).void.is_empty(),
            "a chown goes as ops"
        );
    }

    #[test]
    fn chown_keeps_the_ids_the_new_op_leaves_alone() {
        let meta = log(vec![chown(Some(5), Some(6))]);
        let p = plan(&meta, 0, 2, chown(None, Some(7)));
        assert_eq!(p.op, chown(Some(5), Some(7)));
        assert_eq!(p.void, [1]);
        assert!(plan(&meta, 1, 2, chown(None, Some(7))).void.is_empty());
    }

    #[test]
    fn xattrs_merge_per_name() {
        let meta = log(vec![xattr("user.a", Some("1")), xattr("user.b", Some("2"))]);
        let p = plan(&meta, 0, 3, xattr("user.a", None));
        assert_eq!((p.op, p.void), (xattr("user.a", None), vec![1]));
    }

    #[test]
    fn a_truncate_keeps_times_apart() {
        let t = MetaOp::Utimens {
            path: rp("f"),
            atime: None,
            mtime: Some(SetTime::Now),
        };
        let trunc = MetaOp::Truncate {
            path: rp("f"),
            file: 1,
            size: 0,
        };
        let meta = log(vec![t.clone(), trunc]);
        assert!(plan(&meta, 0, 3, t.clone()).void.is_empty());
        let chmod = |mode| MetaOp::Chmod {
            path: rp("f"),
            mode,
        };
        let meta = log(vec![chmod(0o600), t]);
        assert_eq!(plan(&meta, 0, 3, chmod(0o644)).void, [1]);
    }
}
