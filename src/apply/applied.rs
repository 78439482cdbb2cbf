//! Exactly-once metadata replay: per peer, a durable "applied up to sequence N"
//! (`staging/applied-<peer>`), so that a batch resent after a lost ack is skipped
//! instead of replayed. Most ops are idempotent on their own; renames are not
//! (`[Rename a→b, Create a]` replayed would move the new empty `a` over `b`, and
//! `RENAME_EXCHANGE` would swap back), so each rename is bracketed: before it, the
//! record says "seq k pending, `from` was inode i"; after it, "applied up to k". A
//! replay of a pending rename whose `from` no longer holds inode i was applied already.

use super::{os_err, Applier, ApplyError};
use crate::journal::op::MetaOp;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::io::Write;

/// First bytes of the record file (format version 1).
const MAGIC: &[u8; 8] = b"SYNCFSa1";

/// What one peer's ops have done here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Every op with a sequence number up to this one is applied.
    pub upto: u64,
    /// A rename being applied: its sequence number and the inode its source held.
    pub pending: Option<(u64, u64)>,
}

impl Applier {
    /// Applies op `seq` of `peer` exactly once (see the module docs); `Ok(false)` if it
    /// was applied before and skipped. A rename leaves its "pending" mark for the
    /// caller's [`Applier::applied_upto`], made once the op's index entry is durable.
    pub fn apply_meta_once(&self, peer: &str, seq: u64, op: &MetaOp) -> Result<bool, ApplyError> {
        let mut rec = self.applied(peer)?;
        if seq <= rec.upto {
            tracing::debug!(seq, "op #{seq} applied before: skipped");
            return Ok(false);
        }
        let MetaOp::Rename { from, .. } = op else {
            self.apply_meta(op)?;
            return Ok(true);
        };
        let now = self.node_ino(from);
        if let Some((p, ino)) = rec.pending.filter(|(p, _)| *p == seq) {
            if now != Some(ino) {
                tracing::debug!(seq = p, "rename #{seq} applied before the last stop");
                return Ok(false);
            }
        }
        if let Some(ino) = now {
            rec.pending = Some((seq, ino));
            self.record_applied(peer, rec)?;
        }
        self.apply_meta(op)?;
        Ok(true)
    }

    /// Records that every op of `peer` up to `seq` is applied. The caller makes their
    /// index entries durable first: a kill between the two then replays ops whose
    /// entries are missing, never the reverse (a change taken for a local one).
    pub fn applied_upto(&self, peer: &str, seq: u64) -> Result<(), ApplyError> {
        let rec = self.applied(peer)?;
        if seq > rec.upto {
            self.record_applied(
                peer,
                Applied {
                    upto: seq,
                    pending: rec.pending.filter(|(p, _)| *p > seq),
                },
            )?;
        }
        Ok(())
    }

    /// The record of `peer` (cached; read from staging the first time).
    pub fn applied(&self, peer: &str) -> Result<Applied, ApplyError> {
        let mut cache = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = cache.get(peer) {
            return Ok(*a);
        }
        let a = self.read_applied(peer)?;
        cache.insert(peer.to_string(), a);
        Ok(a)
    }

    fn read_applied(&self, peer: &str) -> Result<Applied, ApplyError> {
        let name = file_name(peer);
        let fd = match sys::openat(&self.staging, &name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.0 == libc::ENOENT => return Ok(Applied::default()),
            Err(e) => return Err(ApplyError::io("opening", name.to_string_lossy(), os_err(e))),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)
            .map_err(|e| ApplyError::io("reading", name.to_string_lossy(), e))?;
        let body = bytes.strip_prefix(&MAGIC[..]).ok_or_else(|| {
            ApplyError::io(
                "decoding",
                name.to_string_lossy(),
                std::io::ErrorKind::InvalidData.into(),
            )
        })?;
        bincode::deserialize(body).map_err(|e| {
            ApplyError::io("decoding", name.to_string_lossy(), std::io::Error::other(e))
        })
    }

    /// Writes the record durably.
    fn record_applied(&self, peer: &str, a: Applied) -> Result<(), ApplyError> {
        let body = bincode::serialize(&a).map_err(|e| {
            ApplyError::io(
                "encoding",
                "staging/applied record",
                std::io::Error::other(e),
            )
        })?;
        self.write_durably(&file_name(peer), MAGIC, &body)?;
        let mut cache = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(peer.to_string(), a);
        Ok(())
    }

    /// Replaces `staging/<name>` with `magic` + `body` durably: a temp file, fsync,
    /// rename, fsync of the directory.
    pub(super) fn write_durably(
        &self,
        name: &OsStr,
        magic: &[u8],
        body: &[u8],
    ) -> Result<(), ApplyError> {
        let mut tmp = name.to_os_string();
        tmp.push(".tmp");
        let shown = name.to_string_lossy().into_owned();
        let io = |what: &'static str| {
            let shown = shown.clone();
            move |e: std::io::Error| ApplyError::io(what, format!("staging/{shown}"), e)
        };
        let _ = sys::unlinkat(&self.staging, &tmp, false);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = sys::openat(&self.staging, &tmp, flags, 0o600)
            .map_err(|e| io("creating")(os_err(e)))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(magic)
            .and_then(|()| f.write_all(body))
            .map_err(io("writing"))?;
        f.sync_all().map_err(io("fsync"))?;
        sys::renameat2(&self.staging, &tmp, &self.staging, name, 0)
            .map_err(|e| io("renaming")(os_err(e)))?;
        self.sync_dir(&self.staging)
            .map_err(io("fsync the directory"))
    }

    /// The inode number `path` names now, not following a symlink (None if nothing).
    fn node_ino(&self, path: &crate::path::RelPath) -> Option<u64> {
        let (dir, name) = crate::beneath::open_parent(&self.root, path).ok()?;
        sys::fstatat(&dir, &name).ok().map(|st| st.st_ino)
    }
}

/// `applied-<peer>`: the peer id is base58, a safe file name.
fn file_name(peer: &str) -> OsString {
    let safe: String = peer
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    OsStr::new(&format!("applied-{safe}")).to_os_string()
}
