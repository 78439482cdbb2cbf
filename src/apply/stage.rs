//! The staging directory: durable copies of updates being applied, and their recovery.
//!
//! A staged update is `staging/<32 hex>.staged` while it is being verified and
//! `<32 hex>.verified` once it has been (rule 2 of the module docs); the file holds
//! [`MAGIC`] then the [`FileUpdate`] in bincode (the wire's fixed-int little-endian
//! layout). It is not a wire frame because an update assembled from `UpdatePart`s may be
//! larger than `MAX_FRAME`.

use super::{os_err, Applier, ApplyError};
use crate::sys;
use crate::wire::FileUpdate;
use bincode::Options;
use std::ffi::OsStr;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;

/// First bytes of every staged file (format version 1).
pub(super) const MAGIC: &[u8; 8] = b"SYNCFSs1";

const STAGED: &str = ".staged";
const VERIFIED: &str = ".verified";

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Writes `u` in the staged format.
pub(super) fn write_staged(w: &mut impl Write, u: &FileUpdate) -> io::Result<()> {
    w.write_all(MAGIC)?;
    codec().serialize_into(&mut *w, u).map_err(io::Error::other)
}

/// Reads an update in the staged format (`len`: the file's length, bounding allocations).
pub(super) fn read_staged(r: &mut impl Read, len: u64) -> io::Result<FileUpdate> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a staged update",
        ));
    }
    codec()
        .with_limit(len)
        .deserialize_from(r)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Where a staged update is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Staged,
    Verified,
    Gone,
}

/// One staged update; removed on drop unless [`Stage::finish`] ran (error paths).
pub(super) struct Stage<'a> {
    applier: &'a Applier,
    stem: String,
    state: State,
}

impl<'a> Stage<'a> {
    fn name(&self) -> String {
        match self.state {
            State::Verified => format!("{}{VERIFIED}", self.stem),
            _ => format!("{}{STAGED}", self.stem),
        }
    }

    fn err(&self, what: &'static str, e: io::Error) -> ApplyError {
        ApplyError::io(
            what,
            self.applier.staging_path.join(self.name()).display(),
            e,
        )
    }

    /// Rule 1: the update is durable in `staging/` before the target is touched.
    pub(super) fn create(applier: &'a Applier, u: &FileUpdate) -> Result<Stage<'a>, ApplyError> {
        let stem = crate::store::hex(&rand::random::<[u8; 16]>());
        let mut stage = Stage {
            applier,
            stem,
            state: State::Gone,
        };
        let name = stage.name();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let fd = sys::openat(&applier.staging, OsStr::new(&name), flags, 0o600)
            .map_err(|e| stage.err("creating", os_err(e)))?;
        stage.state = State::Staged;
        let mut w = BufWriter::with_capacity(super::CHUNK, std::fs::File::from(fd));
        write_staged(&mut w, u).map_err(|e| stage.err("writing", e))?;
        let file = w
            .into_inner()
            .map_err(|e| stage.err("writing", e.into_error()))?;
        file.sync_all().map_err(|e| stage.err("fsync", e))?;
        Ok(stage)
    }

    /// Rule 2: `.staged` → `.verified`, then fsync `staging/`: from here on the update is
    /// replayed even if we crash.
    pub(super) fn mark_verified(&mut self) -> Result<(), ApplyError> {
        let (from, to) = (self.name(), format!("{}{VERIFIED}", self.stem));
        let st = &self.applier.staging;
        sys::renameat2(st, OsStr::new(&from), st, OsStr::new(&to), 0)
            .map_err(|e| self.err("renaming", os_err(e)))?;
        self.state = State::Verified;
        self.applier
            .sync_dir(st)
            .map_err(|e| self.err("fsync staging of", e))
    }

    /// Removes the stage (after a durable replay, or to discard it), fsyncing
    /// `staging/` so that a finished update is not replayed again after a crash.
    pub(super) fn finish(&mut self) -> Result<(), ApplyError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), ApplyError> {
        if self.state == State::Gone {
            return Ok(());
        }
        let name = self.name();
        match sys::unlinkat(&self.applier.staging, OsStr::new(&name), false) {
            Ok(()) | Err(crate::sys::Errno(libc::ENOENT)) => {}
            Err(e) => return Err(self.err("removing", os_err(e))),
        }
        let was = self.state;
        self.state = State::Gone;
        if was == State::Verified {
            self.applier
                .sync_dir(&self.applier.staging)
                .map_err(|e| self.err("fsync staging after removing", e))?;
        }
        Ok(())
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        // An error path: the update was refused, or its replay failed (the file may be
        // half-written, but it was not acked: the sender's retry fails the base check
        // and falls back to a whole-file update). A leftover `.verified` would be
        // replayed at the next start *over newer content*, so it must go.
        if let Err(e) = self.remove() {
            tracing::error!("cannot discard a staged update: {e}");
        }
    }
}

impl Applier {
    /// Rule 3: replays every `.verified` update left by a crash, discards every
    /// `.staged` one. Called by [`Applier::open`] before anything else is applied.
    pub(super) fn recover(&self) -> Result<(), ApplyError> {
        let entries = sys::read_dir(&self.staging)
            .map_err(|e| ApplyError::io("listing", self.staging_path.display(), os_err(e)))?;
        let mut names: Vec<Vec<u8>> = entries.into_iter().map(|e| e.name).collect();
        names.sort();
        let mut touched = false;
        for name in names {
            let name = OsStr::from_bytes(&name);
            let path = self.staging_path.join(name);
            let Some(s) = name.to_str() else { continue };
            if s.ends_with(STAGED) {
                tracing::info!("discarding unverified staged update {}", path.display());
            } else if s.ends_with(super::replace::NEW) {
                tracing::info!(
                    "discarding a replacing file left by a crash {}",
                    path.display()
                );
            } else if s.ends_with(VERIFIED) {
                match self.recover_one(name) {
                    Ok(mut u) => {
                        tracing::info!(
                            update = u.id,
                            "recovered a verified update: replayed {} ({} bytes, {} ranges)",
                            u.path,
                            u.size,
                            u.ranges.len()
                        );
                        u.ranges = Vec::new(); // kept for its version, not its bytes
                                               // kept until its index entry is durable (`forget_recovered`)
                        let mut held = self.recovered.lock().unwrap();
                        held.push((name.to_os_string(), u));
                        continue;
                    }
                    // Not acked: the sender resends it.
                    Err(e) => tracing::warn!("dropping staged update {}: {e}", path.display()),
                }
            } else {
                continue;
            }
            sys::unlinkat(&self.staging, name, false)
                .map_err(|e| ApplyError::io("removing", path.display(), os_err(e)))?;
            touched = true;
        }
        if touched {
            self.sync_dir(&self.staging)
                .map_err(|e| ApplyError::io("fsync", self.staging_path.display(), e))?;
        }
        Ok(())
    }

    /// Removes the `.verified` stages that recovery replayed, once the caller has made
    /// their index entries durable: a kill before this replays them again.
    pub fn forget_recovered(&self) -> Result<(), ApplyError> {
        let held = std::mem::take(&mut *self.recovered.lock().unwrap());
        for (name, _) in &held {
            sys::unlinkat(&self.staging, name, false).map_err(|e| {
                ApplyError::io(
                    "removing",
                    self.staging_path.join(name).display(),
                    os_err(e),
                )
            })?;
        }
        if !held.is_empty() {
            self.sync_dir(&self.staging)
                .map_err(|e| ApplyError::io("fsync", self.staging_path.display(), e))?;
        }
        Ok(())
    }

    fn recover_one(&self, name: &OsStr) -> Result<FileUpdate, ApplyError> {
        let path = self.staging_path.join(name);
        let fd = sys::openat(&self.staging, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
            .map_err(|e| ApplyError::io("opening", path.display(), os_err(e)))?;
        let file = std::fs::File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| ApplyError::io("stat", path.display(), e))?
            .len();
        let u = read_staged(&mut io::BufReader::with_capacity(super::CHUNK, file), len)
            .map_err(|e| ApplyError::io("decoding", path.display(), e))?;
        self.replay_recovered(&u)?;
        Ok(u)
    }
}
