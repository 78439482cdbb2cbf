//! The wire's own metadata-op and time types: [`WireOp`], [`WireTime`], [`WireSetTime`].
//!
//! They mirror the journal's record types (`crate::journal::op`) variant for variant
//! and field for field, so today the bytes are the same; but they are the wire
//! format's, pinned by the hex tests and `docs/PROTOCOL.md`, and a change to the
//! journal's records does not change what peers exchange. `From` converts both ways;
//! this file is the only place in `wire` that names the journal's types.

use crate::journal::op::{MetaOp, SetTime, Timestamp};
use crate::path::RelPath;
use serde::{Deserialize, Serialize};

/// A point in time on the wire: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTime {
    /// Seconds since the epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000` (checked by validation).
    pub nanos: u32,
}

/// A time to set, on the wire: a given value, or "now" as seen by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireSetTime {
    /// A specific time.
    At(WireTime),
    /// The receiver's current time.
    Now,
}

/// One metadata operation on the wire. Variant indices, field order and field types
/// are part of the format (`docs/PROTOCOL.md`, section "MetaOp").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOp {
    /// A regular file was created (empty) with this mode.
    Create {
        /// Its path.
        path: RelPath,
        /// Its identity (inode) on the sender.
        file: u64,
        /// Mode bits.
        mode: u32,
    },
    /// A fifo or other special file was created.
    Mknod {
        /// Its path.
        path: RelPath,
        /// Mode bits, file type included.
        mode: u32,
        /// Device number.
        rdev: u64,
    },
    /// A directory was created.
    Mkdir {
        /// Its path.
        path: RelPath,
        /// Mode bits.
        mode: u32,
    },
    /// A name was removed; `last_link` when the file itself went away.
    Unlink {
        /// The name removed.
        path: RelPath,
        /// The file's identity on the sender.
        file: u64,
        /// True when no other name is left.
        last_link: bool,
    },
    /// A directory was removed.
    Rmdir {
        /// Its path.
        path: RelPath,
    },
    /// A rename; `flags` are the `renameat2` flags (NOREPLACE, EXCHANGE).
    Rename {
        /// The old name.
        from: RelPath,
        /// The new name.
        to: RelPath,
        /// `renameat2` flags.
        flags: u32,
    },
    /// A symbolic link was created.
    Symlink {
        /// Its path.
        path: RelPath,
        /// Its target (not resolved by the receiver).
        target: Vec<u8>,
    },
    /// A hard link `to` was made to the existing name `from`.
    Link {
        /// The existing name.
        from: RelPath,
        /// The new name.
        to: RelPath,
    },
    /// Permission bits changed.
    Chmod {
        /// Its path.
        path: RelPath,
        /// Mode bits.
        mode: u32,
    },
    /// Ownership changed (`None` leaves that id alone).
    Chown {
        /// Its path.
        path: RelPath,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
    },
    /// The file was truncated or extended to `size`.
    Truncate {
        /// Its path.
        path: RelPath,
        /// The file's identity on the sender.
        file: u64,
        /// The new size.
        size: u64,
    },
    /// Access and/or modification times were set (`None`: left alone).
    Utimens {
        /// Its path.
        path: RelPath,
        /// Access time.
        atime: Option<WireSetTime>,
        /// Modification time.
        mtime: Option<WireSetTime>,
    },
    /// An extended attribute was set.
    SetXattr {
        /// Its path.
        path: RelPath,
        /// Attribute name.
        name: Vec<u8>,
        /// Attribute value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// `setxattr` flags.
        flags: i32,
    },
    /// An extended attribute was removed.
    RemoveXattr {
        /// Its path.
        path: RelPath,
        /// Attribute name.
        name: Vec<u8>,
    },
}

impl From<Timestamp> for WireTime {
    fn from(t: Timestamp) -> WireTime {
        WireTime {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

impl From<WireTime> for Timestamp {
    fn from(t: WireTime) -> Timestamp {
        Timestamp {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

impl From<SetTime> for WireSetTime {
    fn from(t: SetTime) -> WireSetTime {
        match t {
            SetTime::At(t) => WireSetTime::At(t.into()),
            SetTime::Now => WireSetTime::Now,
        }
    }
}

impl From<WireSetTime> for SetTime {
    fn from(t: WireSetTime) -> SetTime {
        match t {
            WireSetTime::At(t) => SetTime::At(t.into()),
            WireSetTime::Now => SetTime::Now,
        }
    }
}

impl From<MetaOp> for WireOp {
    fn from(op: MetaOp) -> WireOp {
        match op {
            MetaOp::Create { path, file, mode } => WireOp::Create { path, file, mode },
            MetaOp::Mknod { path, mode, rdev } => WireOp::Mknod { path, mode, rdev },
            MetaOp::Mkdir { path, mode } => WireOp::Mkdir { path, mode },
            MetaOp::Unlink {
                path,
                file,
                last_link,
            } => WireOp::Unlink {
                path,
                file,
                last_link,
            },
            MetaOp::Rmdir { path } => WireOp::Rmdir { path },
            MetaOp::Rename { from, to, flags } => WireOp::Rename { from, to, flags },
            MetaOp::Symlink { path, target } => WireOp::Symlink { path, target },
            MetaOp::Link { from, to } => WireOp::Link { from, to },
            MetaOp::Chmod { path, mode } => WireOp::Chmod { path, mode },
            MetaOp::Chown { path, uid, gid } => WireOp::Chown { path, uid, gid },
            MetaOp::Truncate { path, file, size } => WireOp::Truncate { path, file, size },
            MetaOp::Utimens { path, atime, mtime } => WireOp::Utimens {
                path,
                atime: atime.map(Into::into),
                mtime: mtime.map(Into::into),
            },
            MetaOp::SetXattr {
                path,
                name,
                value,
                flags,
            } => WireOp::SetXattr {
                path,
                name,
                value,
                flags,
            },
            MetaOp::RemoveXattr { path, name } => WireOp::RemoveXattr { path, name },
        }
    }
}

impl From<WireOp> for MetaOp {
    fn from(op: WireOp) -> MetaOp {
        match op {
            WireOp::Create { path, file, mode } => MetaOp::Create { path, file, mode },
            WireOp::Mknod { path, mode, rdev } => MetaOp::Mknod { path, mode, rdev },
            WireOp::Mkdir { path, mode } => MetaOp::Mkdir { path, mode },
            WireOp::Unlink {
                path,
                file,
                last_link,
            } => MetaOp::Unlink {
                path,
                file,
                last_link,
            },
            WireOp::Rmdir { path } => MetaOp::Rmdir { path },
            WireOp::Rename { from, to, flags } => MetaOp::Rename { from, to, flags },
            WireOp::Symlink { path, target } => MetaOp::Symlink { path, target },
            WireOp::Link { from, to } => MetaOp::Link { from, to },
            WireOp::Chmod { path, mode } => MetaOp::Chmod { path, mode },
            WireOp::Chown { path, uid, gid } => MetaOp::Chown { path, uid, gid },
            WireOp::Truncate { path, file, size } => MetaOp::Truncate { path, file, size },
            WireOp::Utimens { path, atime, mtime } => MetaOp::Utimens {
                path,
                atime: atime.map(Into::into),
                mtime: mtime.map(Into::into),
            },
            WireOp::SetXattr {
                path,
                name,
                value,
                flags,
            } => MetaOp::SetXattr {
                path,
                name,
                value,
                flags,
            },
            WireOp::RemoveXattr { path, name } => MetaOp::RemoveXattr { path, name },
        }
    }
}
