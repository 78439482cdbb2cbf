//! The receiver's applier: stages, verifies and replays the peer's file updates and
//! metadata operations into the backing directory (`data/`), crash-safely.
//!
//! # Durability rules
//!
//! These are the promises the sender relies on; each is kept (and commented) where the
//! code keeps it:
//!
//! 1. **Stage before touching.** A [`FileUpdate`] is written to `staging/<hex>.staged`
//!    and fsynced before the backing file is opened for writing (`update.rs`).
//! 2. **Verify before anything is visible.** The result (current content with the ranges
//!    overlaid, cut or zero-extended to `size`) is hashed in one streaming pass *before*
//!    a single byte is written; only a result hashing to `FileUpdate::hash` (and, with a
//!    `base`, a current content hashing to `base`) goes on. The stage is then renamed to
//!    `.verified` and the staging directory fsynced: from that point the update *will*
//!    be replayed, now or after a crash.
//! 3. **Replay idempotently.** Replaying writes the same bytes to the same offsets,
//!    truncates to the same size and sets the same mode and mtime, so replaying a
//!    `.verified` update twice (crash during the first replay) gives the same file.
//!    [`Applier::open`] replays every `.verified` update left by a crash and discards
//!    every `.staged` one (never verified, never acked: the sender resends it).
//! 4. **Ack only after fsync.** [`Applier::apply_update`] and [`Applier::apply_meta`]
//!    return `Ok` only once the change is durable (file fsynced; for namespace changes
//!    the directory fsynced), so the caller may ack on `Ok`.
//! 5. **Users never see a half-applied file.** The mount's [`ApplyHooks::hold`] is held
//!    from verification until the replay is fsynced, then the kernel's caches are
//!    invalidated. A file that a whole update replaces stays at its path until the new
//!    one is renamed over it (`replace.rs`).
//!
//! # Nothing from the wire is trusted
//!
//! Paths are resolved only beneath the data root without following any symlink
//! ([`crate::beneath`]); range bounds are re-checked here (the update may have been
//! assembled from several frames); decompression is capped at each range's declared
//! length (and at [`MAX_RANGE_LEN`]); the hash is checked before anything is visible;
//! device nodes are refused.
//!
//! # Fault injection (tests only)
//!
//! Only in builds with the `fault-injection` cargo feature (and unit tests): when the
//! environment variable `SYNCFS_FAULT` (read once, in [`Applier::open`]) is
//! `apply:after-stage` or `apply:after-replay`, the process aborts at that point of
//! [`Applier::apply_update`], so that crash tests can check recovery. Release builds
//! ignore the variable.
//!
//! [`FileUpdate`]: crate::wire::FileUpdate
//! [`MAX_RANGE_LEN`]: crate::wire::MAX_RANGE_LEN

mod applied;
mod batch;
pub mod partial;
pub use applied::Applied;
pub use batch::{HeldBatch, HeldOp, Marks, OpState};
mod aside;
pub use aside::{Aside, SetAside};
mod meta;
mod replace;
mod stage;
mod trees;
pub use replace::Keep;
pub use trees::Stamp;
mod update;
pub use update::Expect;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod replace_tests;
#[cfg(test)]
mod tests;

use crate::beneath::open_beneath;
use crate::path::RelPath;
use crate::sys;
use crate::sys::Errno;
use crate::wire::{NackReason, MAX_REASON};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why an update or a metadata op could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The content after applying the update does not hash to its `hash`.
    #[error("{path}: the updated content does not match the update's hash")]
    HashMismatch {
        /// The file.
        path: RelPath,
    },
    /// The current content does not hash to the update's `base`.
    #[error("{path}: the local content is not the update's base")]
    UnknownBase {
        /// The file.
        path: RelPath,
    },
    /// The file, or a directory the op needs, does not exist here.
    #[error("{path}: missing here")]
    MissingFile {
        /// The path.
        path: RelPath,
    },
    /// The request makes no sense or is refused (bad ranges, reserved encoding,
    /// symlink in the path, not a regular file, device node...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An I/O error applying it.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what (store-relative path or staging file).
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    /// The reason to send back in a `Nack`.
    pub fn nack_reason(&self) -> NackReason {
        match self {
            ApplyError::HashMismatch { .. } => NackReason::HashMismatch,
            ApplyError::UnknownBase { .. } => NackReason::UnknownBase,
            ApplyError::MissingFile { .. } => NackReason::MissingFile,
            ApplyError::BadRequest(why) => NackReason::BadRequest(bounded(why)),
            ApplyError::Io { .. } => NackReason::Io(bounded(&self.to_string())),
        }
    }

    fn io(what: &'static str, path: impl std::fmt::Display, source: io::Error) -> ApplyError {
        ApplyError::Io {
            what,
            path: path.to_string(),
            source,
        }
    }

    /// Maps an error resolving `path` beneath the root: missing components are
    /// `MissingFile`, symlinks and escapes are `BadRequest`, the rest is I/O.
    fn resolve(what: &'static str, path: &RelPath, e: io::Error) -> ApplyError {
        if path.is_root() && e.kind() == io::ErrorKind::InvalidInput {
            // `open_parent` of the root.
            return ApplyError::BadRequest(format!("{what}: the operation cannot name the root"));
        }
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => ApplyError::MissingFile { path: path.clone() },
            Some(libc::ELOOP | libc::EXDEV) => ApplyError::BadRequest(format!(
                "{path}: the path crosses a symbolic link or leaves the store"
            )),
            _ => ApplyError::io(what, path, e),
        }
    }
}

/// A reason string cut to at most [`MAX_REASON`] bytes, on a char boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_string();
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Hooks into the local mount so that its users never see a half-applied file.
pub trait ApplyHooks: Send + Sync + 'static {
    /// Blocks opens/reads/writes of this backing inode through the mount until the guard drops.
    fn hold(&self, backing_ino: u64) -> Box<dyn std::any::Any + Send>;
    /// Blocks every change of names through the mount (create, rename, link, unlink,
    /// mkdir...) until the guard drops: a peer's op is decided and applied meanwhile.
    fn names(&self) -> Box<dyn std::any::Any + Send> {
        Box::new(())
    }
    /// The file's content changed behind the kernel's back: drop cached pages/attrs.
    fn invalidate_inode(&self, backing_ino: u64);
    /// A name in directory `parent_backing_ino` changed: drop the cached dentry.
    fn invalidate_entry(&self, parent_backing_ino: u64, name: &OsStr);
    /// The file is now `size` bytes and its last byte is `last`. With the writeback
    /// cache the kernel never takes a size from us for an inode it holds (open, or
    /// reachable by another hard link): a store of that last byte grows its size.
    fn grew(&self, _backing_ino: u64, _size: u64, _last: u8) {}
}

/// Hooks that do nothing: no mount is running (or tests).
pub struct NoHooks;

impl ApplyHooks for NoHooks {
    fn hold(&self, _backing_ino: u64) -> Box<dyn std::any::Any + Send> {
        Box::new(())
    }
    fn invalidate_inode(&self, _backing_ino: u64) {}
    fn invalidate_entry(&self, _parent_backing_ino: u64, _name: &OsStr) {}
}

/// Crash points for tests (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AfterStage,
    AfterReplay,
}

impl Fault {
    /// Without the `fault-injection` feature (release builds), never a fault.
    #[cfg(not(any(test, feature = "fault-injection")))]
    fn from_env() -> Option<Fault> {
        None
    }

    #[cfg(any(test, feature = "fault-injection"))]
    fn from_env() -> Option<Fault> {
        match std::env::var("SYNCFS_FAULT").ok()?.as_str() {
            "apply:after-stage" => Some(Fault::AfterStage),
            "apply:after-replay" => Some(Fault::AfterReplay),
            _ => None,
        }
    }
}

/// Buffer size of the streaming passes over a file.
const CHUNK: usize = 1 << 20;

/// Applies the peer's updates and metadata ops to the backing directory.
pub struct Applier {
    /// `data/`, opened `O_RDONLY | O_DIRECTORY` (rather than `O_PATH`) so that the root
    /// directory itself can be fsynced and `syncfs`ed; every path resolves beneath it.
    root: OwnedFd,
    /// `staging/`, `O_RDONLY | O_DIRECTORY` (fsynced after each rename or unlink).
    staging: OwnedFd,
    staging_path: PathBuf,
    hooks: Arc<dyn ApplyHooks>,
    fault: Option<Fault>,
    /// One update or op at a time: verification and replay must not interleave.
    serial: Mutex<()>,
    /// Hash trees of files as this applier last left them.
    trees: trees::Trees,
    /// Apply ownership from the peer (`sync_ownership`; never uid or gid 0).
    sync_ownership: bool,
    /// Largest file a peer may make here (`max_file_mib`).
    max_file_size: u64,
    /// Per peer: metadata ops applied up to which sequence number (`applied`).
    applied: Mutex<std::collections::HashMap<String, applied::Applied>>,
    /// Where replaced and deleted versions go (none: they are not kept).
    archive: Option<crate::versions::Archive>,
    /// Updates replayed by recovery (without their ranges), for the caller to record.
    recovered: Mutex<Vec<(std::ffi::OsString, crate::wire::FileUpdate)>>,
}

impl Applier {
    /// Applies ownership sent by the peer (off by default; uid and gid 0 always refused).
    pub fn set_sync_ownership(&mut self, on: bool) {
        self.sync_ownership = on;
    }

    /// Caps the size of files a peer may make (never above [`crate::wire::MAX_FILE_SIZE`]).
    pub fn set_max_file_size(&mut self, bytes: u64) {
        self.max_file_size = bytes.min(crate::wire::MAX_FILE_SIZE);
    }

    /// Opens the applier over `data` and `staging`, and recovers staged updates left by a crash.
    pub fn open(
        data: &Path,
        staging: &Path,
        hooks: Arc<dyn ApplyHooks>,
    ) -> Result<Applier, ApplyError> {
        Applier::open_with(data, staging, hooks, None)
    }

    /// [`Applier::open`] with the version archive, which recovery already uses: a file
    /// that a recovered whole update replaces is kept there.
    pub fn open_with(
        data: &Path,
        staging: &Path,
        hooks: Arc<dyn ApplyHooks>,
        archive: Option<crate::versions::Archive>,
    ) -> Result<Applier, ApplyError> {
        let dir = |p: &Path| {
            sys::openat(
                &sys::AtCwd,
                p.as_os_str(),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .map_err(|e| ApplyError::io("opening", p.display(), os_err(e)))
        };
        let applier = Applier {
            root: dir(data)?,
            staging: dir(staging)?,
            staging_path: staging.to_path_buf(),
            hooks,
            fault: Fault::from_env(),
            serial: Mutex::new(()),
            trees: trees::Trees::default(),
            sync_ownership: false,
            max_file_size: crate::wire::MAX_FILE_SIZE,
            applied: Mutex::new(Default::default()),
            archive,
            recovered: Mutex::new(Vec::new()),
        };
        if let Some(f) = applier.fault {
            tracing::warn!("SYNCFS_FAULT is set: the applier will abort at {f:?} (tests only)");
        }
        applier.recover()?;
        Ok(applier)
    }

    /// Holds the mount's names (no local create, rename or unlink) until dropped: a
    /// peer's op is decided and applied against a namespace that cannot change under it.
    pub fn hold_names(&self) -> Box<dyn std::any::Any + Send> {
        self.hooks.names()
    }

    /// The updates recovery replayed when this applier opened (their ranges dropped):
    /// their new versions may not be recorded yet (the process died first). Their
    /// stages stay until [`Applier::forget_recovered`].
    pub fn recovered(&self) -> Vec<crate::wire::FileUpdate> {
        let held = self.recovered.lock().unwrap();
        held.iter().map(|(_, u)| u.clone()).collect()
    }

    /// Hash of the file at `path` (BLAKE3 of the whole content), None if missing.
    pub fn file_hash(&self, path: &RelPath) -> Result<Option<[u8; 32]>, ApplyError> {
        let pfd = match open_beneath(&self.root, path, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None)
            }
            Err(e) => return Err(ApplyError::resolve("opening", path, e)),
        };
        let st = sys::fstat(&pfd).map_err(|e| ApplyError::io("stat", path, os_err(e)))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ApplyError::BadRequest(format!(
                "{path}: not a regular file"
            )));
        }
        let mut file = sys::reopen(&pfd, libc::O_RDONLY)
            .map_err(|e| ApplyError::io("opening", path, os_err(e)))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::io("reading", path, e)),
            };
            h.update(&buf[..n]);
        }
        Ok(Some(*h.finalize().as_bytes()))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fault_point(&self, at: Fault) {
        if self.fault == Some(at) {
            tracing::error!("SYNCFS_FAULT: aborting at {at:?}");
            std::process::abort();
        }
    }

    /// Makes a directory's entries durable. `fsync` needs a real fd: an `O_PATH` one is
    /// reopened read-only, and a directory we may not read falls back to `syncfs` of the
    /// data filesystem.
    fn sync_dir(&self, dir: &impl AsRawFd) -> io::Result<()> {
        match sys::fsync(dir, false) {
            Err(Errno(libc::EBADF)) => match sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(d) => d.sync_all(),
                Err(_) => self.syncfs(),
            },
            r => r.map_err(os_err),
        }
    }

    /// Makes an inode's attributes durable: `fsync` of a read-only reopen for regular
    /// files and directories; `syncfs` for the rest (symlinks, fifos, sockets: opening
    /// those could block or have side effects) or when the reopen is refused.
    fn sync_node(&self, pfd: &OwnedFd, st: &libc::stat) -> io::Result<()> {
        let flags = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => libc::O_RDONLY | libc::O_NONBLOCK,
            libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY,
            _ => return self.syncfs(),
        };
        match sys::reopen(pfd, flags) {
            Ok(f) => f.sync_all(),
            Err(_) => self.syncfs(),
        }
    }

    fn syncfs(&self) -> io::Result<()> {
        Ok(sys::syncfs(&self.root)?)
    }
}

/// An errno from the `sys` wrappers as an `io::Error`.
fn os_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}

/// True if the error is this errno.
fn is(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// Opens a regular file's `O_PATH` fd for real I/O. A file we own but may not write
/// (mode 0444, common for e.g. git objects) gets `u+rw` for the duration; the original
/// mode is returned so that the caller sets the final mode (or restores it).
fn reopen_writable(pfd: &OwnedFd, st: &libc::stat, flags: i32) -> io::Result<(File, Option<u32>)> {
    match sys::reopen(pfd, flags) {
        Ok(f) => Ok((f, None)),
        Err(Errno(libc::EACCES)) if st.st_uid == unsafe { libc::geteuid() } => {
            let old = st.st_mode & 0o7777;
            sys::chmod_fd(pfd, old | 0o600).map_err(os_err)?;
            match sys::reopen(pfd, flags) {
                Ok(f) => Ok((f, Some(old))),
                Err(e) => {
                    let _ = sys::chmod_fd(pfd, old);
                    Err(os_err(e))
                }
            }
        }
        Err(e) => Err(os_err(e)),
    }
}
