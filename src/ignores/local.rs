//! Journaling around the rules: a mount's op on an ignored path is not recorded, a
//! rename out of the ignored set makes new entries, a rename into it removes what the
//! peer holds, and a change of the rules queues what they no longer ignore.

use super::{is_dir, Ignores, Rules};
use crate::journal::{Journal, JournalError, MetaOp};
use crate::path::RelPath;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Records a metadata op made through the mount, minding the rules.
pub fn record_op(j: &Journal, ig: &Ignores, op: MetaOp) -> Result<(), JournalError> {
    let (rules, data) = (ig.rules(), ig.data());
    let (a, b) = match &op {
        MetaOp::Rename { from, to, .. } | MetaOp::Link { from, to } => (from, to),
        _ => {
            let Some((path, dir)) = target(&op) else {
                return j.record_meta(op).map(drop);
            };
            let ignored = match dir {
                Some(d) => rules.matches(path, d),
                None => rules.matches_at(data, path),
            };
            if !ignored {
                return j.record_meta(op).map(drop);
            }
            if let MetaOp::Unlink {
                file,
                last_link: true,
                ..
            } = op
            {
                j.forget(file)?; // tracked before the rules ignored it
            }
            return Ok(());
        }
    };
    let exchange = matches!(op, MetaOp::Rename { flags, .. } if flags & libc::RENAME_EXCHANGE != 0);
    let link = matches!(op, MetaOp::Link { .. });
    // After the op: `b` holds what was at `a` (and, for an exchange, `a` what was at `b`).
    let (ia, ib) = (
        rules.matches_as(data, a, if exchange { a } else { b }),
        rules.matches_at(data, b),
    );
    match (ia, ib) {
        (false, false) => j.record_meta(op).map(drop),
        (true, true) => Ok(()),
        (true, false) => {
            if exchange {
                record_gone(j, &rules, data, a, b)?;
            }
            record_new(j, &rules, data, b)
        }
        (false, true) if link => Ok(()),
        (false, true) => {
            record_gone(j, &rules, data, b, a)?;
            if exchange {
                record_new(j, &rules, data, a)?;
            }
            Ok(())
        }
    }
}

/// The path an op (other than a rename or link) changes, and whether it is a directory
/// (`None`: look).
fn target(op: &MetaOp) -> Option<(&RelPath, Option<bool>)> {
    Some(match op {
        MetaOp::Create { path, .. }
        | MetaOp::Mknod { path, .. }
        | MetaOp::Symlink { path, .. }
        | MetaOp::Unlink { path, .. }
        | MetaOp::Truncate { path, .. } => (path, Some(false)),
        MetaOp::Mkdir { path, .. } | MetaOp::Rmdir { path } => (path, Some(true)),
        MetaOp::Chmod { path, .. }
        | MetaOp::Chown { path, .. }
        | MetaOp::Utimens { path, .. }
        | MetaOp::SetXattr { path, .. }
        | MetaOp::RemoveXattr { path, .. } => (path, None),
        MetaOp::Rename { .. } | MetaOp::Link { .. } => return None,
    })
}

/// Journals `path` and everything below it that `rules` do not ignore as new local
/// entries (files whole), parents first, as the mount would have.
pub fn record_new(
    j: &Journal,
    rules: &Rules,
    data: &Path,
    path: &RelPath,
) -> Result<(), JournalError> {
    let full = data.join(path.as_path());
    let Ok(md) = std::fs::symlink_metadata(&full) else {
        return Ok(()); // gone meanwhile
    };
    if rules.matches(path, md.is_dir()) {
        return Ok(());
    }
    let (path, mode) = (path.clone(), md.mode() & 0o7777);
    let t = md.file_type();
    if t.is_file() {
        let file = md.ino();
        j.record_meta(MetaOp::Create {
            path: path.clone(),
            file,
            mode,
        })?;
        j.want_whole(file, &path, md.len())?;
    } else if t.is_symlink() {
        let Ok(target) = std::fs::read_link(&full) else {
            return Ok(());
        };
        let target = target.as_os_str().as_bytes().to_vec();
        j.record_meta(MetaOp::Symlink { path, target })?;
    } else if t.is_dir() {
        j.record_meta(MetaOp::Mkdir {
            path: path.clone(),
            mode,
        })?;
        for name in children(&full) {
            if let Ok(child) = path.join(&name) {
                record_new(j, rules, data, &child)?;
            }
        }
    }
    Ok(())
}

/// What is now at `now` (moved into the ignored set) was at `was`, where the peer has
/// it: journals its removal there, children first.
pub fn record_gone(
    j: &Journal,
    rules: &Rules,
    data: &Path,
    now: &RelPath,
    was: &RelPath,
) -> Result<(), JournalError> {
    let Ok(md) = std::fs::symlink_metadata(data.join(now.as_path())) else {
        return Ok(());
    };
    if rules.matches(was, md.is_dir()) {
        return Ok(()); // ignored there too: the peer never had it
    }
    if !md.is_dir() {
        let file = if md.is_file() { md.ino() } else { 0 };
        let op = MetaOp::Unlink {
            path: was.clone(),
            file,
            last_link: true,
        };
        return j.record_meta(op).map(drop);
    }
    for name in children(&data.join(now.as_path())) {
        if let (Ok(n), Ok(w)) = (now.join(&name), was.join(&name)) {
            record_gone(j, rules, data, &n, &w)?;
        }
    }
    j.record_meta(MetaOp::Rmdir { path: was.clone() }).map(drop)
}

/// Journals, as new, every entry `old` ignored and `new` does not; returns how many
/// subtrees.
pub fn record_unignored(
    j: &Journal,
    old: &Rules,
    new: &Rules,
    data: &Path,
) -> Result<usize, JournalError> {
    walk_unignored(j, old, new, data, &RelPath::root())
}

fn walk_unignored(
    j: &Journal,
    old: &Rules,
    new: &Rules,
    data: &Path,
    dir: &RelPath,
) -> Result<usize, JournalError> {
    let mut n = 0;
    for name in children(&data.join(dir.as_path())) {
        let Ok(path) = dir.join(&name) else { continue };
        let d = is_dir(data, &path);
        match (old.matches(&path, d), new.matches(&path, d)) {
            (true, false) => {
                tracing::info!("{path}: no longer ignored; sending it");
                record_new(j, new, data, &path)?;
                n += 1;
            }
            (false, false) if d => n += walk_unignored(j, old, new, data, &path)?,
            _ => {}
        }
    }
    Ok(n)
}

/// Names in the directory `dir` (none if unreadable), sorted.
fn children(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    v.sort();
    v
}
