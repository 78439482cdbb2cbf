//! A new file that takes over from one the peer holds: the journal folds a save that
//! renamed the original away (`Rename a a~`, `Create a`, writes, `Unlink a~`) into an
//! update of `a` (`journal::cancel`), which the peer applies to its own `a` in place.
//! Here: the old file is held aside as the new one's pre-image, so the update goes as
//! a delta; and since the peer's `a` keeps its owner and extended attributes, those
//! of the new file that differ are recorded as ops on `a`.

use super::{sys, FsError, PassFs};
use crate::journal::op::MetaOp;
use crate::path::RelPath;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

type R<T> = Result<T, FsError>;

/// A file's owner and extended attributes.
pub(super) struct Attrs {
    owner: (u32, u32),
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// What an unlink that may end such a save keeps of the file going.
pub(super) struct Before {
    held: Option<crate::preimage::Held>,
    attrs: Attrs,
}

/// `fd`'s owner (from `st`) and extended attributes (those it can read).
fn attrs_of(fd: &impl AsRawFd, st: &libc::stat) -> Attrs {
    let mut xattrs = BTreeMap::new();
    let list = sys::listxattr(fd, 0).and_then(|l| sys::listxattr(fd, l.len()));
    for name in list
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let name = OsStr::from_bytes(name);
        let value = sys::getxattr(fd, name, 0).and_then(|v| sys::getxattr(fd, name, v.len()));
        if let Ok(v) = value {
            xattrs.insert(name.to_owned(), v);
        }
    }
    Attrs {
        owner: (st.st_uid, st.st_gid),
        xattrs,
    }
}

impl PassFs {
    /// Before the last name `path` (`dir/name`) of a regular file goes, when an unsent
    /// rename made that name (a save's backup): its attributes, and the file itself
    /// held aside if it has no pending change (then it is what the peer holds).
    pub(super) fn before_unlink(
        &self,
        dir: &impl AsRawFd,
        name: &OsStr,
        path: &RelPath,
        st: &libc::stat,
    ) -> Option<Before> {
        let pre = self.pre.as_ref()?;
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !regular || st.st_nlink != 1 || !self.rec.renamed_to(path) {
            return None;
        }
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = sys::openat(dir, name, flags, 0).ok()?;
        let attrs = attrs_of(&fd, st);
        let held = match self.rec.is_pending(st.st_ino) {
            true => None,
            false => pre
                .hold(dir, name)
                .map_err(|e| tracing::debug!("unlinked file not held: {e}"))
                .ok(),
        };
        Some(Before { held, attrs })
    }

    /// After an unlink of `old`: if it made `new` the successor of the file the peer
    /// holds, what was held (or `old`'s own pre-image, a save before the last was
    /// acknowledged) becomes `new`'s pre-image, and the owner and xattrs in which
    /// `new` differs from `old` are recorded; what is left of a file whose last name
    /// went is dropped.
    pub(super) fn after_unlink(
        &self,
        old: &libc::stat,
        last_link: bool,
        before: Option<Before>,
        new: Option<u64>,
    ) -> R<()> {
        let Some(pre) = &self.pre else {
            return Ok(());
        };
        let (held, attrs) = before.map_or((None, None), |b| (b.held, Some(b.attrs)));
        let found = new.and_then(|f| self.open_tracked(f));
        match (&found, held) {
            (Some((_, _, st)), Some(h)) => pre.adopt(st.st_ino, st.st_size as u64, h),
            (Some((_, _, st)), None) => {
                pre.transfer(old.st_ino, st.st_ino, st.st_size as u64);
            }
            (None, Some(h)) => pre.drop_held(h),
            (None, None) => {}
        }
        if last_link {
            pre.forget(old.st_ino);
        }
        match (found, attrs) {
            (Some((path, fd, st)), Some(old)) => {
                self.record_differences(path, &old, &attrs_of(&fd, &st))
            }
            _ => Ok(()),
        }
    }

    /// Tracked file `file` at its journalled path, opened, if it is there.
    fn open_tracked(&self, file: u64) -> Option<(RelPath, std::os::fd::OwnedFd, libc::stat)> {
        let path = self.rec.path_of(file)?;
        let root = self.inodes.get(super::inode::ROOT_INO).ok()?;
        let (dir, name) = crate::beneath::open_parent(&root.fd, &path).ok()?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = sys::openat(&dir, &name, flags, 0).ok()?;
        let st = sys::fstat(&fd).ok()?;
        (st.st_ino == file).then_some((path, fd, st))
    }

    /// Records the ops that make the peer's copy at `path` (attributes `old`) carry the
    /// owner and xattrs `new`.
    fn record_differences(&self, path: RelPath, old: &Attrs, new: &Attrs) -> R<()> {
        let mut ops = Vec::new();
        if old.owner != new.owner {
            let (uid, gid) = new.owner;
            ops.push(MetaOp::Chown {
                path: path.clone(),
                uid: Some(uid),
                gid: Some(gid),
            });
        }
        for (name, value) in &new.xattrs {
            if old.xattrs.get(name) != Some(value) {
                ops.push(MetaOp::SetXattr {
                    path: path.clone(),
                    name: name.as_bytes().to_vec(),
                    value: value.clone(),
                    flags: 0,
                });
            }
        }
        for name in old.xattrs.keys().filter(|n| !new.xattrs.contains_key(*n)) {
            ops.push(MetaOp::RemoveXattr {
                path: path.clone(),
                name: name.as_bytes().to_vec(),
            });
        }
        ops.into_iter()
            .try_for_each(|op| self.rec.meta(op).map_err(FsError::from))
    }
}
