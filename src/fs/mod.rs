//! The passthrough filesystem: every operation is applied to the backing directory
//! through `*at()` calls on held `O_PATH` fds, and every change is reported to a
//! [`Recorder`] (the journal) before it touches the backing store.
//!
//! This module knows nothing of fuser: [`fuse`] is the thin adapter that turns kernel
//! requests into calls here and errors into replies.

mod error;
pub mod fuse;
pub mod gate;
pub mod handle;
pub mod inode;
mod io;
mod longpath;
pub mod mount;
mod namespace;
pub mod record;
mod successor;

use crate::journal::op::SetTime;
use crate::path::RelPath;
use crate::sys;
pub use error::FsError;
use handle::{DirHandle, FileHandle, Handles};
use inode::{Inode, InodeTable};
pub use record::{NullRecorder, RecordError, Recorder};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Who asked: the requesting process's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The attribute changes of one `setattr`.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// An unprivileged caller changes the size: drop setuid/setgid and capabilities.
    pub kill_priv: bool,
}

/// Options of the passthrough.
#[derive(Debug, Clone, Copy)]
pub struct FsOptions {
    /// The kernel's writeback cache is on: open write-only files read-write, drop O_APPEND.
    pub writeback: bool,
}

/// The passthrough filesystem over one backing directory.
pub struct PassFs {
    root: PathBuf,
    inodes: InodeTable,
    files: Handles<FileHandle>,
    dirs: Handles<DirHandle>,
    rec: Arc<dyn Recorder>,
    pre: Option<Arc<crate::preimage::Preimages>>,
    gate: Arc<gate::Gate>,
    opts: FsOptions,
    is_root: bool,
}

impl PassFs {
    /// Opens the backing directory `root` and reports changes to `rec`.
    pub fn new(root: &Path, rec: Arc<dyn Recorder>, opts: FsOptions) -> Result<PassFs, FsError> {
        let root = root.canonicalize()?;
        let fd: OwnedFd = sys::openat(
            &sys::AtCwd,
            root.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Ok(PassFs {
            root,
            inodes: InodeTable::new(fd)?,
            files: Handles::default(),
            dirs: Handles::default(),
            rec,
            pre: None,
            gate: Arc::default(),
            opts,
            is_root: unsafe { libc::geteuid() } == 0,
        })
    }

    /// Saves old bytes at their first overwrite since the last ack into `pre`.
    pub fn with_preimages(mut self, pre: Arc<crate::preimage::Preimages>) -> PassFs {
        self.pre = Some(pre);
        self
    }

    /// The backing directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The FUSE inode number for a backing inode number.
    pub fn fuse_ino(&self, backing: u64) -> u64 {
        self.inodes.fuse_ino(backing)
    }

    /// Holds the file with this backing inode against access through the mount.
    pub fn hold(&self, backing_ino: u64) -> gate::HoldGuard {
        self.gate.hold(backing_ino)
    }

    /// Holds every change of names through the mount off until dropped (see `gate`).
    pub fn names_alone(&self) -> gate::NamesGuard {
        self.gate.names_alone()
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// The path of a held inode, or `None` once it has no name (unlinked but still open):
    /// such a file still takes writes and attribute changes, there is just nothing to sync.
    fn live_path(&self, inode: &Inode) -> Result<Option<RelPath>, FsError> {
        match self.rel_path(inode) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The store-relative path of a held inode, as the kernel resolves it now (ENOENT
    /// for an unlinked inode, whose `/proc` link reads "... (deleted)").
    fn rel_path(&self, inode: &Inode) -> Result<RelPath, FsError> {
        let st = sys::fstat(&inode.fd)?;
        if st.st_nlink == 0 {
            return Err(FsError::errno(libc::ENOENT));
        }
        let abs = match sys::readlink_path(&inode.proc_path()) {
            Err(sys::Errno(libc::ENAMETOOLONG)) => return self.walk_path(inode),
            r => r?,
        };
        if abs.ends_with(DELETED) && !names(&abs, &st) {
            // this name was unlinked: meanwhile (the file has no name now), or it is one
            // link of several (another link's name, found from where the inode was last
            // seen, or ENOENT: never the stale name)
            return self
                .walk_path(inode)
                .map_err(|_| FsError::errno(libc::ENOENT));
        }
        let root = self.root.as_os_str().as_encoded_bytes();
        let rest = abs.strip_prefix(root).ok_or(FsError::errno(libc::ENOENT))?;
        let rest = match rest {
            [] => rest,
            [b'/', tail @ ..] => tail,
            _ => return Err(FsError::errno(libc::ENOENT)),
        };
        RelPath::from_bytes(rest).map_err(|_| FsError::errno(libc::ENOENT))
    }

    /// Path of `name` inside the held directory `parent`.
    fn child_path(&self, parent: &Inode, name: &std::ffi::OsStr) -> Result<RelPath, FsError> {
        self.rel_path(parent)?
            .join(name)
            .map_err(|_| FsError::errno(libc::EINVAL))
    }
}

/// What the kernel appends to the `/proc` link of an fd whose name was unlinked.
const DELETED: &[u8] = b" (deleted)";

/// True if the absolute path `abs` names the inode `st` (a real name that happens to
/// end in " (deleted)").
fn names(abs: &[u8], st: &libc::stat) -> bool {
    let path = std::ffi::OsStr::from_bytes(abs);
    sys::fstatat(&sys::AtCwd, path).is_ok_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino))
}

/// Tells the recorder a write is over when dropped (after the backing change, and on
/// every error path): made just before the matching [`Recorder::write`].
pub(crate) struct WriteDone<'a>(pub(crate) &'a dyn Recorder, pub(crate) u64);

impl Drop for WriteDone<'_> {
    fn drop(&mut self) {
        self.0.write_done(self.1);
    }
}
