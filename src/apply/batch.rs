//! The metadata batch being applied, per peer (`staging/batch-<peer>`). It is written
//! durably before the batch's first op and removed once the batch is committed (its
//! index entries flushed, then "applied up to" recorded). Each op's progress is marked
//! in it as it goes (one byte each, written but not fsynced: it survives a killed
//! process, which is what it is for). After a kill in between, the daemon finishes the
//! held batch at start, before its scan: otherwise the scan would take the ops already
//! applied, but not yet in the index, for local changes, and the peer's next version of
//! those files would become spurious conflict copies.
//!
//! Layout: `MAGIC`, the op count (u32 LE), 4 zero bytes, one [`OpState`] byte per op,
//! then the ops (bincode).

use super::{os_err, Applier, ApplyError};
use crate::journal::op::MetaOp;
use crate::sys;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

/// First bytes of a batch file (format version 1).
const MAGIC: &[u8; 8] = b"SYNCFSb1";
/// Where the op states start.
const STATES_AT: usize = 16;
/// File name prefix of batch files.
const PREFIX: &str = "batch-";

/// One op of a held batch: its sequence number, the op, and its version vector.
pub type HeldOp = (u64, MetaOp, VersionVector);

/// How far one op of a held batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpState {
    /// Not decided yet.
    NotReached = 0,
    /// The gate said apply; it may or may not have been applied.
    Started = 1,
    /// Applied (its index entry may be missing).
    Applied = 2,
    /// Skipped or refused: nothing changed here.
    Skipped = 3,
    /// A rename of which only the source was removed (its index entry may be missing).
    RemovedFrom = 4,
}

impl OpState {
    fn from_byte(b: u8) -> OpState {
        match b {
            1 => OpState::Started,
            2 => OpState::Applied,
            3 => OpState::Skipped,
            4 => OpState::RemovedFrom,
            _ => OpState::NotReached,
        }
    }
}

/// A batch that was being applied when the daemon stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBatch {
    /// The peer that sent it (its PeerId as text).
    pub peer: String,
    /// Its ops, in order, each with how far it got.
    pub ops: Vec<(HeldOp, OpState)>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    peer: String,
    ops: Vec<HeldOp>,
}

/// Marks the progress of the ops of the batch being held.
pub struct Marks(std::fs::File);

impl Marks {
    /// Records how far op `k` (its index in the batch) got.
    pub fn set(&self, k: usize, state: OpState) -> Result<(), ApplyError> {
        self.0
            .write_all_at(&[state as u8], (STATES_AT + k) as u64)
            .map_err(|e| ApplyError::io("marking", "staging/batch", e))
    }
}

impl Applier {
    /// Keeps `ops` of `peer` durably until [`Applier::release_batch`].
    pub fn hold_batch(&self, peer: &str, ops: &[HeldOp]) -> Result<Marks, ApplyError> {
        let body = Body {
            peer: peer.to_string(),
            ops: ops.to_vec(),
        };
        let body = bincode::serialize(&body)
            .map_err(|e| ApplyError::io("encoding", "staging/batch", std::io::Error::other(e)))?;
        let mut bytes = (ops.len() as u32).to_le_bytes().to_vec();
        bytes.extend([0; 4]);
        bytes.resize(bytes.len() + ops.len(), OpState::NotReached as u8);
        bytes.extend(body);
        let name = batch_name(peer);
        self.write_durably(&name, MAGIC, &bytes)?;
        let fd = sys::openat(&self.staging, &name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)
            .map_err(|e| ApplyError::io("opening", "staging/batch", os_err(e)))?;
        Ok(Marks(fd.into()))
    }

    /// Drops the held batch of `peer` (committed). Not fsynced: a batch file that comes
    /// back after a crash holds only ops at or below "applied up to", which are skipped.
    pub fn release_batch(&self, peer: &str) -> Result<(), ApplyError> {
        match sys::unlinkat(&self.staging, &batch_name(peer), false) {
            Err(e) if e.0 != libc::ENOENT => {
                Err(ApplyError::io("removing", "staging/batch", os_err(e)))
            }
            _ => Ok(()),
        }
    }

    /// The batches left by a stop in mid-batch. An unreadable one is dropped (its ops
    /// were never acked: the peer sends them again).
    pub fn held_batches(&self) -> Result<Vec<HeldBatch>, ApplyError> {
        let names = sys::read_dir(&self.staging)
            .map_err(|e| ApplyError::io("listing", self.staging_path.display(), os_err(e)))?;
        let mut out = Vec::new();
        for e in names {
            let name = OsStr::from_bytes(&e.name);
            let is_batch = e.name.starts_with(PREFIX.as_bytes()) && !e.name.ends_with(b".tmp");
            if !is_batch {
                continue;
            }
            match self.read_batch(name) {
                Ok(b) => out.push(b),
                Err(err) => {
                    tracing::warn!("dropping {}: {err}", name.to_string_lossy());
                    let _ = sys::unlinkat(&self.staging, name, false);
                }
            }
        }
        Ok(out)
    }

    fn read_batch(&self, name: &OsStr) -> Result<HeldBatch, ApplyError> {
        let shown = format!("staging/{}", name.to_string_lossy());
        let fd = sys::openat(&self.staging, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
            .map_err(|e| ApplyError::io("opening", &shown, os_err(e)))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)
            .map_err(|e| ApplyError::io("reading", &shown, e))?;
        let bad = |what: &str| {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
            ApplyError::io("decoding", &shown, e)
        };
        if bytes.len() < STATES_AT || &bytes[..8] != MAGIC {
            return Err(bad("not a batch file"));
        }
        let n = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let states = bytes
            .get(STATES_AT..STATES_AT + n)
            .ok_or_else(|| bad("cut short"))?;
        let body: Body =
            bincode::deserialize(&bytes[STATES_AT + n..]).map_err(|e| bad(&e.to_string()))?;
        if body.ops.len() != n {
            return Err(bad("op count"));
        }
        let states = states.iter().map(|b| OpState::from_byte(*b));
        Ok(HeldBatch {
            peer: body.peer,
            ops: body.ops.into_iter().zip(states).collect(),
        })
    }
}

/// `batch-<peer>`: the peer id is base58, a safe file name.
fn batch_name(peer: &str) -> OsString {
    let safe: String = peer.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    OsString::from(format!("{PREFIX}{safe}"))
}
