//! Paths too long for `/proc/self/fd` (the store's absolute path plus the file's past
//! `PATH_MAX`, where `readlink` fails with `ENAMETOOLONG`): a directory's path is found
//! by walking up through `..` and finding each name by inode number in its parent; a
//! non-directory's through the directory and name it was last seen at in the mount.

use super::inode::{Inode, ROOT_INO};
use super::{sys, FsError, PassFs};
use crate::path::{RelPath, MAX_REL_PATH};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

type R<T> = Result<T, FsError>;

/// The path is too long for `/proc` and no other way found it.
fn too_long() -> FsError {
    FsError::new(
        libc::ENAMETOOLONG,
        "path of a held inode: too long, and no name hint",
    )
}

impl PassFs {
    /// The store-relative path of `inode`, found without `/proc`.
    pub(super) fn walk_path(&self, inode: &Inode) -> R<RelPath> {
        let mut names = match inode.kind {
            libc::S_IFDIR => self.dir_names(&inode.fd)?,
            _ => self.file_names(inode)?,
        };
        names.reverse();
        let joined = names.join(&b'/');
        if joined.len() > MAX_REL_PATH {
            return Err(too_long());
        }
        RelPath::from_bytes(&joined).map_err(|_| too_long())
    }

    /// The names from a non-directory up to the root, innermost first.
    fn file_names(&self, inode: &Inode) -> R<Vec<Vec<u8>>> {
        let hint = inode.last_name.lock().unwrap().clone();
        let (parent, name) = hint.ok_or_else(too_long)?;
        let still_there = sys::fstatat(&parent.fd, OsStr::from_bytes(&name))
            .is_ok_and(|st| st.st_ino == inode.backing_ino);
        let name = if still_there {
            name
        } else {
            name_in(&parent.fd, inode.backing_ino)? // renamed outside the mount
        };
        let mut names = self.dir_names(&parent.fd)?;
        names.insert(0, name);
        Ok(names)
    }

    /// The names from a directory up to the root, innermost first.
    fn dir_names(&self, dir: &OwnedFd) -> R<Vec<Vec<u8>>> {
        let root = sys::fstat(&self.inodes.get(ROOT_INO)?.fd)?;
        let dot = |fd: &OwnedFd, n: &str| {
            sys::openat(fd, OsStr::new(n), libc::O_PATH | libc::O_DIRECTORY, 0)
        };
        let (mut names, mut len) = (Vec::new(), 0);
        let mut cur = dot(dir, ".")?;
        loop {
            let st = sys::fstat(&cur)?;
            if (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino) {
                return Ok(names);
            }
            let up = dot(&cur, "..")?;
            if sys::fstat(&up)?.st_ino == st.st_ino || len > MAX_REL_PATH {
                return Err(FsError::errno(libc::ENOENT)); // reached `/`: not below the store
            }
            let name = name_in(&up, st.st_ino)?;
            len += name.len() + 1;
            names.push(name);
            cur = up;
        }
    }
}

/// The name of inode `ino` in the directory `dir`. None there (moved elsewhere outside
/// the mount) fails with ENAMETOOLONG, as `/proc` did: never ENOENT, which would
/// read as "unlinked" and let the operation through unjournaled.
fn name_in(dir: &OwnedFd, ino: u64) -> R<Vec<u8>> {
    find_name(dir, ino)?.ok_or_else(too_long)
}

/// A name of inode `ino` in the directory `dir`, if it has one there.
pub(super) fn find_name(dir: &OwnedFd, ino: u64) -> R<Option<Vec<u8>>> {
    Ok(sys::read_dir(dir)?
        .into_iter()
        .find(|e| e.ino == ino && e.name != b"." && e.name != b"..")
        .map(|e| e.name))
}
