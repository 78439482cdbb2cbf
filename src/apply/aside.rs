//! Setting a local version aside before a peer's version takes its place: renamed to a
//! conflict copy next to it, or moved into the version archive ([`crate::versions`]).

use super::{os_err, Applier, ApplyError};
use crate::path::RelPath;
use crate::sys;
use crate::versions::Archive;

/// Where a local version goes.
pub enum Aside<'a> {
    /// Renamed to this name in the same directory (a conflict copy).
    Rename(&'a str),
    /// Into the version archive.
    Archive,
    /// A copy into the version archive; the file stays (a peer's update is applied to
    /// it in place).
    ArchiveCopy,
}

/// The regular file that was set aside.
#[derive(Clone, Copy, Debug)]
pub struct SetAside {
    /// Its inode (unchanged by a rename).
    pub ino: u64,
    /// Its permission bits.
    pub mode: u32,
    /// Its size.
    pub size: u64,
}

impl Applier {
    /// Gives the applier a version archive; without one, nothing is archived.
    pub fn set_archive(&mut self, archive: Archive) {
        self.archive = Some(archive);
    }

    /// Moves the regular file at `path` aside; `None` if there is no regular file
    /// there (or, for the archive, none is configured).
    pub fn set_aside(&self, path: &RelPath, to: Aside) -> Result<Option<SetAside>, ApplyError> {
        let _serial = self.lock();
        let e = match self.entry(path) {
            Ok(e) => e,
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None)
            }
            Err(err) => return Err(ApplyError::resolve("setting aside", path, err)),
        };
        let st = match sys::fstatat(&e.dir, &e.name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => st,
            _ => return Ok(None),
        };
        let hold = self.hooks.hold(st.st_ino);
        // whether the entry at `path` went (a copy leaves it as it was)
        let moved = match to {
            Aside::Rename(name) => {
                let name = std::ffi::OsStr::new(name);
                sys::renameat2(&e.dir, &e.name, &e.dir, name, libc::RENAME_NOREPLACE).map_err(
                    |err| ApplyError::io("renaming to a conflict copy", path, os_err(err)),
                )?;
                if let Ok(d) = sys::fstat(&e.dir) {
                    self.hooks.invalidate_entry(d.st_ino, name);
                }
                true
            }
            Aside::Archive | Aside::ArchiveCopy if st.st_size == 0 => return Ok(None),
            Aside::Archive | Aside::ArchiveCopy => {
                let Some(a) = &self.archive else {
                    return Ok(None);
                };
                let copy = matches!(to, Aside::ArchiveCopy);
                if copy && !a.fits(st.st_size as u64) {
                    tracing::info!(
                        "{path}: larger than the archive; the replaced version is not kept"
                    );
                    return Ok(None);
                }
                let res = match st.st_nlink {
                    // other names share the inode: a copy, so that they keep it
                    n if n > 1 || copy => a.keep_copy(&e.dir, &e.name, path),
                    _ => a.keep(&e.dir, &e.name, path),
                };
                res.map_err(|err| ApplyError::io("archiving", path, err))?;
                !copy
            }
        };
        drop(hold);
        if moved {
            self.entry_changed(path, &e)?;
        }
        Ok(Some(SetAside::of(&st)))
    }
}

impl SetAside {
    fn of(st: &libc::stat) -> SetAside {
        SetAside {
            ino: st.st_ino,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
        }
    }
}
