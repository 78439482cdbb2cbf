//! A whole update that replaces a file: the new file takes the path's name in one
//! rename, and the replaced file keeps a name in the version archive. Whoever looks at
//! the path finds the old file or the new one, never none (moving the old one aside
//! first left a moment without a file, as long as the update took to stage and write).

use super::trees::Stamp;
use super::{os_err, Applier, ApplyError};
use crate::beneath::open_beneath;
use crate::path::RelPath;
use crate::sys;
use crate::wire::FileUpdate;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Where [`Applier::swap_in`] put the replaced file's second name.
enum Kept<'a> {
    Archive(PathBuf),
    Beside(&'a OsStr),
    Nowhere,
}

/// Suffix of the name a replacing file has in `staging/` for the moment before its
/// rename (a crash leaves it there; recovery removes it).
pub(super) const NEW: &str = ".new";

/// Where the file that a whole update replaces goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Into the version archive.
    Archive,
    /// To this name in the same directory (a conflict copy; a name taken meanwhile
    /// refuses the update).
    Beside(OsString),
}

impl Applier {
    /// The stamp of the file at `path` if a whole update can replace it by a rename,
    /// keeping it as `keep` says: a regular file on a filesystem with unnamed files
    /// (`O_TMPFILE`); for the archive, also non-empty, with one name, and an archive
    /// there is. `None`: set it aside instead.
    pub fn replaceable(&self, path: &RelPath, keep: &Keep) -> Result<Option<Stamp>, ApplyError> {
        let _serial = self.lock();
        if *keep == Keep::Archive && self.archive.is_none() {
            return Ok(None);
        }
        let Ok(e) = self.entry(path) else {
            return Ok(None);
        };
        let st = match sys::fstatat(&e.dir, &e.name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => st,
            _ => return Ok(None),
        };
        if *keep == Keep::Archive && (st.st_size == 0 || st.st_nlink != 1) {
            return Ok(None);
        }
        let unnamed = sys::openat(
            &e.dir,
            OsStr::new("."),
            libc::O_TMPFILE | libc::O_RDWR,
            0o600,
        );
        Ok(unnamed.is_ok().then(|| Stamp::of(&st)))
    }

    /// Recovery of a whole update: the file at its path is replaced (not written in
    /// place) if it holds other content or other names: a crash may have come between
    /// its archive link and the rename, or before either.
    pub(super) fn recovery_replaces(&self, u: &FileUpdate) -> Option<Stamp> {
        if u.base.is_some() || self.archive.is_none() {
            return None;
        }
        let fd = open_beneath(&self.root, &u.path, libc::O_PATH | libc::O_NOFOLLOW, 0).ok()?;
        let st = sys::fstat(&fd).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size == 0 {
            return None;
        }
        let differs = st.st_nlink > 1 || self.file_hash(&u.path).ok()? != Some(u.hash);
        differs.then(|| Stamp::of(&st))
    }

    /// The verified, durable, unnamed `file` takes `name` in `dir` (store path `path`)
    /// from the file there, which first gets its second name (`keep`); undone if the
    /// rename fails.
    pub(super) fn swap_in(
        &self,
        path: &RelPath,
        file: &File,
        (dir, name): (&OwnedFd, &OsStr),
        keep: &Keep,
    ) -> Result<(), ApplyError> {
        let kept = match (keep, &self.archive) {
            (Keep::Archive, Some(a)) => Kept::Archive(
                a.keep_link(dir, name, path)
                    .map_err(|e| ApplyError::io("archiving", path, e))?,
            ),
            (Keep::Archive, None) => Kept::Nowhere,
            (Keep::Beside(copy), _) => {
                sys::linkat(dir, name, dir, copy)
                    .map_err(|e| ApplyError::io("linking the conflict copy of", path, os_err(e)))?;
                Kept::Beside(copy)
            }
        };
        let res = self.rename_in(path, file, dir, name);
        match (&res, kept) {
            (Err(_), Kept::Archive(k)) => self.archive.iter().for_each(|a| a.unkeep(&k)),
            (Err(_), Kept::Beside(copy)) => drop(sys::unlinkat(dir, copy, false)),
            (Ok(()), Kept::Archive(_)) => {
                tracing::info!("kept the replaced version of {path} in the archive")
            }
            _ => {}
        }
        res
    }

    /// Names `file` in `staging/` (or, on another filesystem, beside its target), then
    /// renames it over `name` in `dir`.
    fn rename_in(
        &self,
        path: &RelPath,
        file: &File,
        dir: &OwnedFd,
        name: &OsStr,
    ) -> Result<(), ApplyError> {
        let hex = crate::store::hex(&rand::random::<[u8; 8]>());
        let in_staging = OsString::from(format!("{hex}{NEW}"));
        let (from, tmp) = match sys::link_fd(file, &self.staging, &in_staging) {
            Ok(()) => (&self.staging, in_staging),
            Err(e) if e.0 == libc::EXDEV => {
                let mut beside = OsString::from(".");
                beside.push(name);
                beside.push(format!(".syncfs-{hex}"));
                sys::link_fd(file, dir, &beside)
                    .map_err(|e| ApplyError::io("linking in", path, os_err(e)))?;
                (dir, beside)
            }
            Err(e) => return Err(ApplyError::io("linking in", path, os_err(e))),
        };
        sys::renameat2(from, &tmp, dir, name, 0).map_err(|e| {
            let _ = sys::unlinkat(from, &tmp, false);
            ApplyError::io("renaming into place", path, os_err(e))
        })
    }
}
