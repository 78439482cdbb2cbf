//! The journal's record types: file identity, metadata operations and timestamps.
//! Used by the journal (which stores them) and the applier (which replays them). The
//! wire protocol ships its own mirror of them (`wire::WireOp`, `wire::WireTime`),
//! converted with `From` in the wire module; nothing here depends on the wire.

use crate::path::RelPath;
use serde::{Deserialize, Serialize};

/// Stable identity of a file while it lives: the backing file's inode number.
/// Renames keep it; it is dropped from the journal when the last link goes.
pub type FileId = u64;

/// A point in time as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

/// A time to set: a given value, or "now" as seen by whoever applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// A specific time.
    At(Timestamp),
    /// The applier's current time.
    Now,
}

impl SetTime {
    /// The `timespec` `utimensat` wants for an optional time (`None`: UTIME_OMIT).
    pub fn to_timespec(t: Option<SetTime>) -> libc::timespec {
        let (tv_sec, tv_nsec) = match t {
            None => (0, libc::UTIME_OMIT),
            Some(SetTime::Now) => (0, libc::UTIME_NOW),
            Some(SetTime::At(Timestamp { secs, nanos })) => (secs, nanos as i64),
        };
        libc::timespec { tv_sec, tv_nsec }
    }
}

/// One metadata operation, as recorded in the ordered log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOp {
    /// A regular file was created (empty) with this mode.
    Create {
        path: RelPath,
        file: FileId,
        mode: u32,
    },
    /// A fifo or other special file was created.
    Mknod { path: RelPath, mode: u32, rdev: u64 },
    /// A directory was created.
    Mkdir { path: RelPath, mode: u32 },
    /// A name was removed; `last_link` when the file itself went away.
    Unlink {
        path: RelPath,
        file: FileId,
        last_link: bool,
    },
    /// A directory was removed.
    Rmdir { path: RelPath },
    /// A rename; `flags` are the `renameat2` flags (NOREPLACE, EXCHANGE).
    Rename {
        from: RelPath,
        to: RelPath,
        flags: u32,
    },
    /// A symbolic link was created.
    Symlink { path: RelPath, target: Vec<u8> },
    /// A hard link `to` was made to the existing name `from`.
    Link { from: RelPath, to: RelPath },
    /// Permission bits changed.
    Chmod { path: RelPath, mode: u32 },
    /// Ownership changed (`None` leaves that id alone).
    Chown {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// The file was truncated or extended to `size`.
    Truncate {
        path: RelPath,
        file: FileId,
        size: u64,
    },
    /// Access and/or modification times were set (`None`: left alone).
    Utimens {
        path: RelPath,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    /// An extended attribute was set.
    SetXattr {
        path: RelPath,
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    /// An extended attribute was removed.
    RemoveXattr { path: RelPath, name: Vec<u8> },
}

impl MetaOp {
    /// A short name of the operation, for listings and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaOp::Create { .. } => "create",
            MetaOp::Mknod { .. } => "mknod",
            MetaOp::Mkdir { .. } => "mkdir",
            MetaOp::Unlink { .. } => "unlink",
            MetaOp::Rmdir { .. } => "rmdir",
            MetaOp::Rename { .. } => "rename",
            MetaOp::Symlink { .. } => "symlink",
            MetaOp::Link { .. } => "link",
            MetaOp::Chmod { .. } => "chmod",
            MetaOp::Chown { .. } => "chown",
            MetaOp::Truncate { .. } => "truncate",
            MetaOp::Utimens { .. } => "utimens",
            MetaOp::SetXattr { .. } => "setxattr",
            MetaOp::RemoveXattr { .. } => "removexattr",
        }
    }

    /// The path of an attribute-only op (chmod, chown, utimens, truncate, xattrs).
    pub fn attr_path(&self) -> Option<&RelPath> {
        match self {
            MetaOp::Chmod { path, .. }
            | MetaOp::Chown { path, .. }
            | MetaOp::Utimens { path, .. }
            | MetaOp::Truncate { path, .. }
            | MetaOp::SetXattr { path, .. }
            | MetaOp::RemoveXattr { path, .. } => Some(path),
            _ => None,
        }
    }

    /// True for an attribute-only op on exactly `path`.
    pub fn is_attr_op_on(&self, path: &RelPath) -> bool {
        self.attr_path() == Some(path)
    }

    /// True if the op names `path`, something below it or a directory above it, in any
    /// role.
    pub fn mentions(&self, path: &RelPath) -> bool {
        let hit = |p: &RelPath| p.starts_with(path) || path.starts_with(p);
        match self {
            MetaOp::Rename { from, to, .. } | MetaOp::Link { from, to } => hit(from) || hit(to),
            MetaOp::Create { path: p, .. }
            | MetaOp::Mknod { path: p, .. }
            | MetaOp::Mkdir { path: p, .. }
            | MetaOp::Unlink { path: p, .. }
            | MetaOp::Rmdir { path: p }
            | MetaOp::Symlink { path: p, .. }
            | MetaOp::Chmod { path: p, .. }
            | MetaOp::Chown { path: p, .. }
            | MetaOp::Truncate { path: p, .. }
            | MetaOp::Utimens { path: p, .. }
            | MetaOp::SetXattr { path: p, .. }
            | MetaOp::RemoveXattr { path: p, .. } => hit(p),
        }
    }
}
