//! Applying one [`FileUpdate`]: decode, stage, verify, replay (see the module docs for
//! the rules kept here).

use super::replace::Keep;
use super::stage::Stage;
use super::trees::Stamp;
use super::{is, os_err, reopen_writable, Applier, ApplyError, Fault, CHUNK};
use crate::beneath::{open_beneath, open_parent};
use crate::hashtree::HashTree;
use crate::path::RelPath;
use crate::sys;
use crate::wire::{decompress_range, Encoding, FileUpdate, RangeData, WireError, MAX_RANGE_LEN};
use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

/// Decompressed ranges kept in memory up to this total; larger updates decompress each
/// range again when it is needed, so memory stays bounded whatever the update's size.
const CACHE_LIMIT: u64 = 64 << 20;

/// Checks what the wire validation checks for a single frame, for updates assembled
/// from several: not the root, ranges non-empty, sorted, disjoint and inside `size`.
pub(super) fn check_update(u: &FileUpdate) -> Result<(), ApplyError> {
    let bad = |why: String| Err(ApplyError::BadRequest(format!("{}: {why}", u.path)));
    if u.path.is_root() {
        return bad("an update cannot name the root".into());
    }
    if u.size > crate::wire::MAX_FILE_SIZE {
        return bad(format!("size {} too large", u.size));
    }
    let mut prev = 0u64;
    for r in &u.ranges {
        let Some(end) = r.end().filter(|e| *e <= u.size) else {
            return bad(format!(
                "range at {} (+{}) beyond the size {}",
                r.offset, r.len, u.size
            ));
        };
        if r.len == 0 || r.len > MAX_RANGE_LEN as u64 || r.offset < prev {
            return bad(format!(
                "range at {} (+{}) empty, too long or out of order",
                r.offset, r.len
            ));
        }
        prev = end;
    }
    Ok(())
}

/// The update's ranges, decompressed (cached, or again on demand).
struct Ranges<'a> {
    u: &'a FileUpdate,
    cache: Option<Vec<Vec<u8>>>,
}

impl<'a> Ranges<'a> {
    /// Step 1: every range decompresses to exactly its declared length (capped there).
    /// Deltas (`ZstdDict`) decode against the target's current bytes of the same range,
    /// so they are decoded now, before anything overwrites those bytes.
    fn decode(u: &'a FileUpdate, target: Option<&File>) -> Result<Ranges<'a>, ApplyError> {
        let total: u64 = u.ranges.iter().map(|r| r.len).sum();
        if u.ranges.iter().any(is_delta) && total > CACHE_LIMIT {
            return Err(ApplyError::BadRequest(format!(
                "{}: deltas over {CACHE_LIMIT} bytes",
                u.path
            )));
        }
        let joint = decode_joint(u, target)?;
        let mut at = 0;
        let mut cache = (total <= CACHE_LIMIT).then(Vec::new);
        for (i, r) in u.ranges.iter().enumerate() {
            let bytes = match (&joint, r.encoding) {
                (Some(j), Encoding::Joint) => {
                    at += r.len as usize;
                    j[at - r.len as usize..at].to_vec()
                }
                _ => decode_range(u, i, target)?,
            };
            if let Some(c) = cache.as_mut() {
                c.push(bytes);
            }
        }
        Ok(Ranges { u, cache })
    }

    fn get(&self, i: usize) -> Result<Cow<'_, [u8]>, ApplyError> {
        match &self.cache {
            Some(c) => Ok(Cow::Borrowed(&c[i])),
            None => decode_range(self.u, i, None).map(Cow::Owned),
        }
    }

    /// The update as it is staged: deltas replaced by their decoded bytes (after a crash
    /// mid-replay, the old bytes they refer to may be gone).
    fn stageable(&self) -> Cow<'a, FileUpdate> {
        let (u, Some(cache)) = (self.u, &self.cache) else {
            return Cow::Borrowed(self.u);
        };
        if !u.ranges.iter().any(is_delta) {
            return Cow::Borrowed(u);
        }
        let mut staged = u.clone();
        for (r, bytes) in staged.ranges.iter_mut().zip(cache) {
            if is_delta(r) {
                *r = RangeData {
                    offset: r.offset,
                    len: r.len,
                    encoding: Encoding::Raw,
                    data: bytes.clone(),
                };
            }
        }
        Cow::Owned(staged)
    }
}

/// True for ranges decoded against the receiver's old bytes.
fn is_delta(r: &RangeData) -> bool {
    matches!(r.encoding, Encoding::ZstdDict | Encoding::Joint)
}

/// The concatenated new bytes of the update's `Joint` ranges, decoded against this
/// side's current bytes of those ranges (`None` if it has none).
fn decode_joint(u: &FileUpdate, target: Option<&File>) -> Result<Option<Vec<u8>>, ApplyError> {
    let mut joint = u.ranges.iter().filter(|r| r.encoding == Encoding::Joint);
    let Some(first) = joint.next() else {
        return Ok(None);
    };
    if joint.clone().any(|r| !r.data.is_empty()) {
        return Err(ApplyError::BadRequest(format!(
            "{}: only the first joint range may carry data",
            u.path
        )));
    }
    let mismatch = || ApplyError::HashMismatch {
        path: u.path.clone(),
    };
    let file = target.ok_or_else(mismatch)?;
    let mut old = Vec::new();
    for r in std::iter::once(first).chain(joint) {
        let at = old.len();
        old.resize(at + r.len as usize, 0);
        file.read_exact_at(&mut old[at..], r.offset)
            .map_err(|_| mismatch())?;
    }
    let bytes = crate::delta::decode(&first.data, &old, old.len()).map_err(|e| match e {
        crate::delta::DeltaError::WrongBase => mismatch(),
        e => ApplyError::BadRequest(format!("{}: joint delta: {e}", u.path)),
    })?;
    Ok(Some(bytes))
}

fn decode_range(u: &FileUpdate, i: usize, target: Option<&File>) -> Result<Vec<u8>, ApplyError> {
    let r = &u.ranges[i];
    if r.encoding == Encoding::ZstdDict {
        return decode_delta(u, r, target);
    }
    decompress_range(r).map_err(|e: WireError| {
        ApplyError::BadRequest(format!("{}: range at {}: {e}", u.path, r.offset))
    })
}

/// A delta against this side's current bytes of the range; a different base (the peer's
/// idea of our content is wrong) is a hash mismatch, so the sender sends the whole file.
fn decode_delta(
    u: &FileUpdate,
    r: &RangeData,
    target: Option<&File>,
) -> Result<Vec<u8>, ApplyError> {
    let mismatch = || ApplyError::HashMismatch {
        path: u.path.clone(),
    };
    let file = target.ok_or_else(mismatch)?;
    let mut old = vec![0u8; r.len as usize];
    file.read_exact_at(&mut old, r.offset)
        .map_err(|_| mismatch())?;
    crate::delta::decode(&r.data, &old, r.len as usize).map_err(|e| match e {
        crate::delta::DeltaError::WrongBase => mismatch(),
        e => ApplyError::BadRequest(format!("{}: delta at {}: {e}", u.path, r.offset)),
    })
}

impl Applier {
    /// Hashes of the current content and of the result, and the result's tree if the
    /// file's tree was known (then only the leaves the update touches are read).
    fn hashes(
        &self,
        file: &File,
        u: &FileUpdate,
        ranges: &Ranges<'_>,
    ) -> std::io::Result<([u8; 32], [u8; 32], Option<HashTree>)> {
        let st = sys::fstat(file).map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        let tree = self.trees.get(&Stamp::of(&st));
        if tree.is_some() {
            sys::advise_random(file); // only the touched leaves are read
        }
        let Some(mut tree) = tree else {
            tracing::debug!(path = %u.path, "verify: full pass (no hash tree for this state)");
            let (current, result) = verify_pass(file, u.size, ranges)?;
            return Ok((current, result, None));
        };
        let current = tree.root();
        let cur_len = st.st_size as u64;
        let resized = (cur_len != u.size).then(|| (cur_len.min(u.size), cur_len.max(u.size)));
        let dirty = u
            .ranges
            .iter()
            .map(|r| (r.offset, r.offset + r.len))
            .chain(resized);
        tree.update_from(
            |off, buf| overlay_read(file, cur_len, u, ranges, off, buf),
            dirty,
            u.size,
        )?;
        Ok((current, tree.root(), Some(tree)))
    }

    /// Records the file's tree (hashing it in full if unknown) with its stamp now.
    fn remember(&self, file: &File, tree: Option<HashTree>) {
        let Ok(st) = sys::fstat(file) else { return };
        let tree = match tree {
            Some(t) => t,
            None => match HashTree::from_file(file) {
                Ok(t) => t,
                Err(_) => return,
            },
        };
        tracing::debug!(
            ino = st.st_ino,
            "hash tree kept for stamp {:?}",
            Stamp::of(&st)
        );
        self.trees.put(Stamp::of(&st), tree);
    }
}

/// Reads `buf.len()` bytes of the result at `off`: the current file (zeros past its end)
/// with the update's ranges laid over it.
fn overlay_read(
    file: &File,
    cur_len: u64,
    u: &FileUpdate,
    ranges: &Ranges<'_>,
    off: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let have = cur_len.saturating_sub(off).min(buf.len() as u64) as usize;
    file.read_exact_at(&mut buf[..have], off)?;
    buf[have..].fill(0);
    let end = off + buf.len() as u64;
    let first = u.ranges.partition_point(|r| r.offset + r.len <= off);
    for (i, r) in u.ranges.iter().enumerate().skip(first) {
        if r.offset >= end {
            break;
        }
        let data = ranges
            .get(i)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let (from, to) = (r.offset.max(off), (r.offset + r.len).min(end));
        buf[(from - off) as usize..(to - off) as usize]
            .copy_from_slice(&data[(from - r.offset) as usize..(to - r.offset) as usize]);
    }
    Ok(())
}

impl Applier {
    /// The target's (inode, size, mtime, ctime): any write changes it.
    fn stamp(&self, t: &Target, path: &RelPath) -> Result<Stamp, ApplyError> {
        let st = sys::fstat(&t.file).map_err(|e| ApplyError::io("stat", path, os_err(e)))?;
        Ok(Stamp::of(&st))
    }

    /// Sizes are bounded before any work: at most the configured maximum, and at most
    /// the file's current size or the end of the update's last range (a file only grows
    /// by bytes that are sent; a refused update comes again whole).
    fn check_size(&self, u: &FileUpdate, t: &Target) -> Result<(), ApplyError> {
        let cur = t
            .file
            .metadata()
            .map_err(|e| ApplyError::io("stat", &u.path, e))?
            .len();
        let sent_end = u.ranges.last().and_then(|r| r.end()).unwrap_or(0);
        if u.size > self.max_file_size || u.size > cur.max(sent_end) {
            return Err(ApplyError::BadRequest(format!(
                "{}: size {} refused (now {cur}, ranges end at {sent_end}, limit {})",
                u.path, u.size, self.max_file_size
            )));
        }
        Ok(())
    }
}

/// What the checker judged to be at an update's path when it decided to take the
/// update ([`crate::sync::check`]): the applier applies it to that and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No file (there was none, or ours was set aside): the update makes a new one.
    Nothing,
    /// This file (backing inode number): the update changes it in place.
    File(u64),
    /// This file, as stamped ([`Applier::replaceable`]): the whole update makes a new
    /// file that takes its name in one rename, and it is kept where [`Keep`] says.
    Replace(Stamp, Keep),
}

/// The backing file an update applies to.
struct Target {
    file: File,
    pfd: OwnedFd,
    ino: u64,
    /// Set when we created the file: its directory and name (to fsync / undo).
    created: Option<(OwnedFd, OsString)>,
    /// The created file is still unnamed (`O_TMPFILE`): `done` links it in.
    unnamed: bool,
    /// The file's mode if we added `u+rw` to write it.
    restore_mode: Option<u32>,
    /// The file at the path that this unnamed one replaces, and where that goes
    /// ([`Expect::Replace`]).
    replaces: Option<(Stamp, Keep)>,
}

impl Applier {
    /// Applies one file update; Ok means durable (fsynced) and verified: the caller acks.
    pub fn apply_update(&self, u: &FileUpdate) -> Result<(), ApplyError> {
        self.apply_update_then(u, None, &mut || Ok(()))
    }

    /// [`Applier::apply_update`], running `after` (the caller's durable record of the
    /// new version) once the file is in place and before its stage is removed: a crash
    /// before `after` is done leaves the stage, which recovery replays and lists
    /// ([`Applier::recovered`]) for the record to be made again. With `expect`, the
    /// update is refused (`UnknownBase`: sent again whole) unless its path still holds
    /// what the checker judged there.
    pub fn apply_update_then(
        &self,
        u: &FileUpdate,
        expect: Option<Expect>,
        after: &mut dyn FnMut() -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let _serial = self.lock();
        check_update(u)?;
        // 1. The target, beneath the root (deltas decode against its current bytes).
        let replaces = match &expect {
            Some(Expect::Replace(old, keep)) => Some((*old, keep.clone())),
            _ => None,
        };
        let mut t = self.open_target(u, u.base.is_none(), replaces)?;
        if let Err(e) = self.check_size(u, &t) {
            undo_create(&t);
            return Err(e);
        }
        // 2. Decompress every range (capped at its declared length).
        let ranges = match Ranges::decode(u, Some(&t.file)) {
            Ok(r) => r,
            Err(e) => {
                undo_create(&t);
                return Err(e);
            }
        };
        // 3. Rule 1: stage durably before the target is written.
        let mut stage = Stage::create(self, &ranges.stageable())?;
        let res = self.verify_and_replay(u, &ranges, &mut stage, &mut t, (expect, after));
        if res.is_err() {
            if let Some(mode) = t.restore_mode {
                let _ = sys::chmod_fd(&t.pfd, mode);
            }
        }
        // `stage` is dropped (removed) on every error path.
        res
    }

    fn verify_and_replay(
        &self,
        u: &FileUpdate,
        ranges: &Ranges<'_>,
        stage: &mut Stage<'_>,
        t: &mut Target,
        (expect, after): (Option<Expect>, &mut dyn FnMut() -> Result<(), ApplyError>),
    ) -> Result<(), ApplyError> {
        // 4. Hashes of the current content and of the result: from the file's tree when
        //    it is known (only touched leaves are read), else one streaming pass. The
        //    mount is not held meanwhile (readers of the file never wait on a hash).
        let before = self.stamp(t, &u.path)?;
        let (current, result, tree) = self
            .hashes(&t.file, u, ranges)
            .map_err(|e| ApplyError::io("reading", &u.path, e))?;
        let refused = if current == u.hash {
            None // a resend of an update already applied (we crashed before acking)
        } else if u.base.is_some_and(|b| b != crate::wire::base_id(&current)) {
            Some(ApplyError::UnknownBase {
                path: u.path.clone(),
            })
        } else if result != u.hash {
            Some(ApplyError::HashMismatch {
                path: u.path.clone(),
            })
        } else {
            None
        };
        if let Some(e) = refused {
            undo_create(t); // nothing was written
            return Err(e);
        }
        // Rule 5: held from here to the fsynced replay, so that nobody reads a
        // half-applied file; a local write that slipped in while hashing is caught by
        // the file's stamp, and the update is refused (the sender sends it again).
        // The names are held too, up to the caller's record of the new version: a local
        // save renamed over the path since the checker's decision is caught here, and
        // none lands between this check and that record.
        let names = self.hooks.names();
        let hold = self.hooks.hold(t.ino);
        let _old = t.replaces.as_ref().map(|(old, _)| self.hooks.hold(old.ino));
        let judged = self.as_judged(&u.path, t, expect.as_ref());
        if !judged {
            tracing::info!(
                "{}: changed here since the update was decided; refused",
                u.path
            );
        }
        if self.stamp(t, &u.path)? != before || !judged {
            undo_create(t);
            return Err(ApplyError::UnknownBase {
                path: u.path.clone(),
            });
        }
        if current == u.hash {
            self.set_attrs(u, &t.file)?;
            self.remember(&t.file, tree);
            self.done(u, t, hold)?;
            after()?;
            drop(names);
            return stage.finish();
        }
        // 5. Rule 2: the stage is verified, durably.
        stage.mark_verified()?;
        self.fault_point(Fault::AfterStage);
        // 6. Rule 3: replay (idempotent), fsync.
        self.replay(u, ranges, &t.file)?;
        self.remember(&t.file, tree); // still held: no local write can slip in
        self.fault_point(Fault::AfterReplay);
        self.done(u, t, hold)?;
        after()?; // the stage stays until the caller's record is durable
        drop(names);
        stage.finish()
    }

    /// True if `path` still holds what the checker judged there, and that is the target
    /// (a created target is not named yet, or is named `path`).
    fn as_judged(&self, path: &RelPath, t: &Target, expect: Option<&Expect>) -> bool {
        let flags = libc::O_PATH | libc::O_NOFOLLOW;
        let now = open_beneath(&self.root, path, flags, 0)
            .ok()
            .and_then(|fd| sys::fstat(&fd).ok())
            .map(|st| Stamp::of(&st));
        let replaced = t.replaces.as_ref().map(|(old, _)| *old);
        let here = match (&t.created, replaced) {
            (Some(_), Some(old)) if t.unnamed => now == Some(old),
            (Some(_), None) if t.unnamed => now.is_none(),
            _ => now.map(|s| s.ino) == Some(t.ino),
        };
        here && match expect {
            None => true,
            Some(Expect::Nothing) => t.created.is_some() && t.replaces.is_none(),
            Some(Expect::File(ino)) => t.created.is_none() && t.ino == *ino,
            Some(Expect::Replace(old, _)) => replaced == Some(*old),
        }
    }

    /// Rule 4: the file (and a new name) are durable before the caller may ack; then the
    /// hold goes and the kernel's caches are dropped.
    fn done(
        &self,
        u: &FileUpdate,
        t: &mut Target,
        hold: Box<dyn std::any::Any + Send>,
    ) -> Result<(), ApplyError> {
        if let Some((dir, name)) = &t.created {
            if let Some((_, keep)) = &t.replaces {
                self.swap_in(&u.path, &t.file, (dir, name), keep)?;
            } else if t.unnamed {
                // verified and durable: now it gets its name (a name taken meanwhile by
                // a local create is not replaced: refused, the sender tries again)
                sys::link_fd(&t.file, dir, name)
                    .map_err(|e| ApplyError::io("linking in", &u.path, os_err(e)))?;
            }
            self.sync_dir(dir)
                .map_err(|e| ApplyError::io("fsync the directory of", &u.path, e))?;
            if let Ok(st) = sys::fstat(dir) {
                self.hooks.invalidate_entry(st.st_ino, name);
            }
        }
        t.restore_mode = None;
        drop(hold);
        self.hooks.invalidate_inode(t.ino);
        if u.size > 0 {
            let mut last = [0u8];
            if t.file.read_exact_at(&mut last, u.size - 1).is_ok() {
                self.hooks.grew(t.ino, u.size, last[0]);
            }
        }
        // With the writeback cache the kernel trusts its cached size over ours: drop the
        // name too, so an inode nobody holds open is evicted and looked up afresh.
        if let Ok((dir, name)) = open_parent(&self.root, &u.path) {
            if let Ok(st) = sys::fstat(&dir) {
                self.hooks.invalidate_entry(st.st_ino, &name);
            }
        }
        Ok(())
    }

    /// Writes every range, cuts to `size`, sets mode and mtime, fsyncs. Idempotent.
    fn replay(&self, u: &FileUpdate, ranges: &Ranges<'_>, file: &File) -> Result<(), ApplyError> {
        let io = |what| move |e| ApplyError::io(what, &u.path, e);
        reserve(u, file)?;
        for (i, r) in u.ranges.iter().enumerate() {
            file.write_all_at(&ranges.get(i)?, r.offset)
                .map_err(io("writing"))?;
        }
        file.set_len(u.size).map_err(io("truncating"))?;
        self.set_attrs(u, file)
    }

    /// Mode and mtime, then fsync (covers the data written before).
    fn set_attrs(&self, u: &FileUpdate, file: &File) -> Result<(), ApplyError> {
        let io = |what| move |e| ApplyError::io(what, &u.path, e);
        sys::chmod_fd(file, super::meta::peer_perm(u.mode)).map_err(|e| io("chmod")(os_err(e)))?;
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: u.mtime.secs,
                tv_nsec: i64::from(u.mtime.nanos),
            },
        ];
        sys::futimens(file, &times).map_err(|e| io("setting the mtime of")(os_err(e)))?;
        file.sync_all().map_err(io("fsync"))
    }

    /// Opens the update's target for reading and writing: an existing regular file, or
    /// (when `create`) a new one in an existing directory; always a new one when it
    /// `replaces` the file at the path.
    fn open_target(
        &self,
        u: &FileUpdate,
        create: bool,
        replaces: Option<(Stamp, Keep)>,
    ) -> Result<Target, ApplyError> {
        let path = &u.path;
        for _ in 0..2 {
            match open_beneath(&self.root, path, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(_) if replaces.is_some() => {}
                Ok(pfd) => return self.existing_target(path, pfd),
                Err(e) if is(&e, libc::ENOENT) && create => {}
                Err(e) => return Err(ApplyError::resolve("opening", path, e)),
            }
            let (dir, name) = open_parent(&self.root, path)
                .map_err(|e| ApplyError::resolve("opening the directory of", path, e))?;
            let perm = super::meta::peer_perm(u.mode);
            // Unnamed until verified and written (linked in by `done`): nobody sees an
            // empty or partial file with the peer's mode.
            let tmp = sys::openat(&dir, OsStr::new("."), libc::O_TMPFILE | libc::O_RDWR, perm);
            match tmp {
                Ok(fd) => return new_target(path, File::from(fd), dir, name, replaces),
                Err(e) if replaces.is_some() => {
                    return Err(ApplyError::io("creating", path, os_err(e)))
                }
                Err(_) => {}
            }
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            match sys::openat(&dir, &name, flags, perm) {
                Ok(fd) => {
                    let mut t = new_target(path, File::from(fd), dir, name, None)?;
                    t.unnamed = false;
                    return Ok(t);
                }
                Err(crate::sys::Errno(libc::EEXIST)) => continue, // raced: open it
                Err(e) => return Err(ApplyError::resolve("creating", path, os_err(e))),
            }
        }
        Err(ApplyError::io(
            "opening",
            path,
            std::io::Error::from_raw_os_error(libc::EEXIST),
        ))
    }

    fn existing_target(&self, path: &RelPath, pfd: OwnedFd) -> Result<Target, ApplyError> {
        let st = sys::fstat(&pfd).map_err(|e| ApplyError::io("stat", path, os_err(e)))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ApplyError::BadRequest(format!(
                "{path}: not a regular file here"
            )));
        }
        let (file, restore_mode) = reopen_writable(&pfd, &st, libc::O_RDWR)
            .map_err(|e| ApplyError::io("opening", path, e))?;
        Ok(Target {
            file,
            pfd,
            ino: st.st_ino,
            created: None,
            unnamed: false,
            restore_mode,
            replaces: None,
        })
    }

    /// Rule 3, after a crash: replays a `.verified` update (already verified; replay is
    /// idempotent) and makes it durable.
    pub(super) fn replay_recovered(&self, u: &FileUpdate) -> Result<(), ApplyError> {
        check_update(u)?;
        let replaces = self.recovery_replaces(u).map(|old| (old, Keep::Archive));
        let mut t = self.open_target(u, u.base.is_none(), replaces)?;
        let ranges = Ranges::decode(u, Some(&t.file))?;
        let hold = self.hooks.hold(t.ino);
        if let Err(e) = self.replay(u, &ranges, &t.file) {
            if let Some(mode) = t.restore_mode {
                let _ = sys::chmod_fd(&t.pfd, mode);
            }
            return Err(e);
        }
        self.done(u, &mut t, hold)
    }
}

/// Allocates the blocks every range will write before a byte is written, so that a
/// full disk refuses the update whole instead of leaving it half-applied (filesystems
/// without `fallocate` go on unreserved).
fn reserve(u: &FileUpdate, file: &File) -> Result<(), ApplyError> {
    for r in &u.ranges {
        match sys::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, r.offset, r.len) {
            Ok(()) => {}
            Err(e) if matches!(e.0, libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(()),
            Err(e) => return Err(ApplyError::io("reserving space for", &u.path, os_err(e))),
        }
    }
    Ok(())
}

/// Removes the target if this update created it (it was refused before any write).
/// A file this update creates (`file`, unnamed until `done` names it `name` in `dir`).
fn new_target(
    path: &RelPath,
    file: File,
    dir: OwnedFd,
    name: OsString,
    replaces: Option<(Stamp, Keep)>,
) -> Result<Target, ApplyError> {
    let st = sys::fstat(&file).map_err(|e| ApplyError::io("stat", path, os_err(e)))?;
    let pfd = file
        .try_clone()
        .map_err(|e| ApplyError::io("opening", path, e))?
        .into();
    Ok(Target {
        file,
        pfd,
        ino: st.st_ino,
        created: Some((dir, name)),
        unnamed: true,
        restore_mode: None,
        replaces,
    })
}

fn undo_create(t: &Target) {
    if let Some((dir, name)) = t.created.as_ref().filter(|_| !t.unnamed) {
        let _ = sys::unlinkat(dir, name, false);
    }
}

/// Reads the current file once (1 MiB at a time) and returns the BLAKE3 of its content
/// and of the result: that content cut or zero-extended to `size` with the ranges
/// overlaid.
fn verify_pass(
    file: &File,
    size: u64,
    ranges: &Ranges<'_>,
) -> std::io::Result<([u8; 32], [u8; 32])> {
    let cur_len = file.metadata()?.len();
    let end = cur_len.max(size);
    let (mut cur_h, mut res_h) = (blake3::Hasher::new(), blake3::Hasher::new());
    let mut buf = vec![0u8; CHUNK];
    let rs = &ranges.u.ranges;
    let mut ri = 0; // first range that may still intersect
    let mut memo: Option<(usize, Cow<'_, [u8]>)> = None; // the range being overlaid
    let mut pos = 0u64;
    while pos < end {
        let n = (end - pos).min(CHUNK as u64) as usize;
        let have = cur_len.saturating_sub(pos).min(n as u64) as usize;
        file.read_exact_at(&mut buf[..have], pos)?;
        cur_h.update(&buf[..have]);
        if pos < size {
            let m = (size - pos).min(n as u64) as usize;
            if have < m {
                buf[have..m].fill(0);
            }
            let chunk_end = pos + m as u64;
            while ri < rs.len() && rs[ri].offset < chunk_end {
                let r = &rs[ri];
                let r_end = r.offset + r.len;
                let (from, to) = (r.offset.max(pos), r_end.min(chunk_end));
                if from < to {
                    if memo.as_ref().map(|(i, _)| *i) != Some(ri) {
                        let bytes = ranges.get(ri).map_err(|e| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                        })?;
                        memo = Some((ri, bytes));
                    }
                    let data = &memo.as_ref().expect("set above").1;
                    buf[(from - pos) as usize..(to - pos) as usize].copy_from_slice(
                        &data[(from - r.offset) as usize..(to - r.offset) as usize],
                    );
                }
                if r_end <= chunk_end {
                    ri += 1;
                    memo = None;
                } else {
                    break;
                }
            }
            res_h.update(&buf[..m]);
        }
        pos += n as u64;
    }
    Ok((*cur_h.finalize().as_bytes(), *res_h.finalize().as_bytes()))
}
