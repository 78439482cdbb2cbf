//! Pre-images: the bytes a region held at the last acknowledged sync, copied aside at
//! its first overwrite since, so that the sender can compress new bytes against what the
//! peer already holds ([`crate::delta`], like `zstd --patch-from`).
//!
//! Rules kept here:
//! - Only bytes never overwritten since the last ack are saved: a region is saved once,
//!   before its first overwrite, and released when the peer acknowledges it.
//! - Regions that were dirty before this process started (their old bytes are unknown)
//!   are tainted: never saved, never offered, until acknowledged.
//! - Space is bounded: past the cap nothing more is saved (those ranges are then sent
//!   compressed without a dictionary). Pre-images do not survive a restart.
//! - A wrong pre-image can never corrupt the peer: deltas carry an id of their base and
//!   the peer checks the whole file's hash before anything is visible.

use crate::journal::{FileId, RangeSet};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::sys;

fn os_err(e: crate::sys::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}

/// Saved old bytes of one file: a sparse file at the same offsets, and what it holds.
struct Saved {
    file: Option<File>,
    saved: RangeSet,
    tainted: RangeSet,
    /// The file is a replaced file's inode (see [`Preimages::adopt`]).
    adopted: bool,
}

/// A file about to be replaced by a rename, hard-linked into the pre-image directory
/// (see [`Preimages::hold`]).
pub struct Held {
    name: std::ffi::OsString,
    file: FileId,
    size: u64,
}

/// The pre-images of one store.
pub struct Preimages {
    /// The directory (0700), opened: files are made and removed relative to it.
    dir: OwnedFd,
    cap: u64,
    inner: Mutex<(HashMap<FileId, Saved>, u64)>,
}

impl Preimages {
    /// Opens (emptying) `dir`; `tainted` are regions dirty before this start, by file.
    pub fn open(
        dir: &Path,
        cap: u64,
        tainted: impl IntoIterator<Item = (FileId, RangeSet)>,
    ) -> io::Result<Preimages> {
        let _ = std::fs::remove_dir_all(dir); // does not follow a symlink planted there
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = sys::openat(&sys::AtCwd, dir.as_os_str(), flags, 0).map_err(os_err)?;
        let p = Preimages {
            dir: fd,
            cap,
            inner: Mutex::new((HashMap::new(), 0)),
        };
        let mut inner = p.inner.lock().unwrap();
        for (file, ranges) in tainted {
            Self::saved_for(&mut inner.0, file).tainted = ranges;
        }
        drop(inner);
        Ok(p)
    }

    fn saved_for(map: &mut HashMap<FileId, Saved>, file: FileId) -> &mut Saved {
        map.entry(file).or_insert_with(|| Saved {
            file: None,
            saved: RangeSet::new(),
            tainted: RangeSet::new(),
            adopted: false,
        })
    }

    /// The sparse file holding `file`'s old bytes, created at the first save.
    /// Made fresh (`O_EXCL | O_NOFOLLOW`, 0600) relative to the directory's fd: nothing
    /// planted there is ever followed or written through.
    fn backing_file<'a>(dir: &OwnedFd, s: &'a mut Saved, file: FileId) -> io::Result<&'a File> {
        if s.file.is_none() {
            let name = std::ffi::OsString::from(file.to_string());
            match sys::unlinkat(dir, &name, false) {
                Err(e) if e.0 != libc::ENOENT => return Err(os_err(e)),
                _ => {}
            }
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            let f = sys::openat(dir, &name, flags, 0o600).map_err(os_err)?;
            s.file = Some(File::from(f));
        }
        Ok(s.file.as_ref().expect("set above"))
    }

    /// Before `[start, end)` of `backing` (now `size` bytes long) is overwritten: saves
    /// its old bytes that are not saved, not tainted, and exist. Bytes past the end are
    /// new since the last ack, and so is the hole a write past the end leaves: the peer
    /// has nothing there, so they become tainted (a later overwrite must not pass them
    /// off as what the peer holds: the writeback cache flushes pages out of order, so a
    /// file being copied in gets its holes filled after its end moved past them).
    pub fn before_write(
        &self,
        file: FileId,
        backing: &File,
        size: u64,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        if start >= end {
            return Ok(());
        }
        let mut guard = self.inner.lock().unwrap();
        let (map, total) = &mut *guard;
        let s = Self::saved_for(map, file);
        if end > size {
            // saved bytes past the end were cut by a truncate: the peer still holds them
            let mut new = RangeSet::from_range(size, end).difference(&s.saved);
            new.remove_set(&s.tainted);
            s.tainted.insert_set(&new);
        }
        let end = end.min(size);
        if start >= end {
            return Ok(());
        }
        let mut todo = RangeSet::from_range(start, end).difference(&s.saved);
        todo.remove_set(&s.tainted);
        let need = todo.len_bytes();
        if need == 0 || *total + need > self.cap {
            return Ok(());
        }
        let dst = Self::backing_file(&self.dir, s, file)?;
        for (a, b) in todo.iter() {
            copy(backing, dst, a, b - a)?;
        }
        s.saved.insert_set(&todo);
        *total += need;
        Ok(())
    }

    /// Before `backing` (now `size` bytes long) is cut to `new_size`: saves the bytes
    /// cut off, as for an overwrite, so that a file rewritten from scratch (`O_TRUNC`,
    /// `ftruncate(0)`) still goes as a delta against what the peer holds.
    pub fn before_truncate(
        &self,
        file: FileId,
        backing: &File,
        size: u64,
        new_size: u64,
    ) -> io::Result<()> {
        self.before_write(file, backing, size, new_size, size)
    }

    /// Before `dir/name` (a regular file with one link, `size` bytes, no pending
    /// change: what the peer holds there) is replaced by a rename: keeps its inode by a
    /// hard link, at no cost, for [`Preimages::adopt`] to take over.
    pub fn hold(&self, dir: &impl AsRawFd, name: &OsStr) -> io::Result<Held> {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let f = sys::openat(dir, name, flags, 0).map_err(os_err)?;
        let st = sys::fstat(&f).map_err(os_err)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Err(io::Error::other("not a regular file with one link"));
        }
        let held = Held {
            name: format!("held-{}", st.st_ino).into(),
            file: st.st_ino,
            size: st.st_size as u64,
        };
        let _ = sys::unlinkat(&self.dir, &held.name, false);
        sys::link_fd(&f, &self.dir, &held.name).map_err(os_err)?;
        Ok(held)
    }

    /// Drops a held file (the rename did not happen, or nothing adopted it).
    pub fn drop_held(&self, held: Held) {
        let _ = sys::unlinkat(&self.dir, &held.name, false);
    }

    /// `file` (`size` bytes, all of it new since the last ack) took the name of the
    /// held file: the peer holds the held content there, so it becomes `file`'s
    /// pre-image (a temp file + rename save then goes as a delta against it). Nothing
    /// is adopted past the cap, or for a file the peer already has bytes of.
    pub fn adopt(&self, file: FileId, size: u64, held: Held) {
        let mut guard = self.inner.lock().unwrap();
        let (map, total) = &mut *guard;
        let s = Self::saved_for(map, file);
        let new = s.saved.is_empty() && s.tainted.covers(0, size);
        if !new || *total + held.size > self.cap {
            drop(guard);
            return self.drop_held(held);
        }
        let name = std::ffi::OsString::from(file.to_string());
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let moved = sys::renameat2(&self.dir, &held.name, &self.dir, &name, 0)
            .and_then(|()| sys::openat(&self.dir, &name, flags, 0));
        let Ok(f) = moved else {
            drop(guard);
            return self.drop_held(held);
        };
        s.file = Some(File::from(f));
        s.adopted = true;
        s.saved = RangeSet::from_range(0, held.size);
        s.tainted = RangeSet::from_range(0, size);
        s.tainted.remove(0, held.size);
        *total += held.size;
        if let Some(old) = map.remove(&held.file) {
            *total -= old.saved.len_bytes();
            let _ = sys::unlinkat(&self.dir, OsStr::new(&held.file.to_string()), false);
        }
    }

    /// `to` (`size` bytes, all new since the last ack) replaced `from`, which is gone,
    /// where the peer still holds what `from`'s saved bytes are (a second save before
    /// the first was acknowledged): they become `to`'s. False if there were none.
    pub fn transfer(&self, from: FileId, to: FileId, size: u64) -> bool {
        let mut guard = self.inner.lock().unwrap();
        let (map, total) = &mut *guard;
        let fresh = map
            .get(&to)
            .is_none_or(|t| t.saved.is_empty() && t.tainted.covers(0, size));
        let Some(mut s) = map.remove(&from).filter(|s| fresh && !s.saved.is_empty()) else {
            return false;
        };
        let (a, b) = (OsStr::new(&from.to_string()).to_owned(), to.to_string());
        if sys::renameat2(&self.dir, &a, &self.dir, OsStr::new(&b), 0).is_err() {
            *total -= s.saved.len_bytes();
            let _ = sys::unlinkat(&self.dir, &a, false);
            return false;
        }
        let end = s.saved.end().unwrap_or(0).max(size);
        s.tainted = RangeSet::from_range(0, end).difference(&s.saved);
        map.insert(to, s);
        true
    }

    /// `file` is gone (its last name unlinked): its saved bytes are of no more use.
    pub fn forget(&self, file: FileId) {
        let mut guard = self.inner.lock().unwrap();
        let (map, total) = &mut *guard;
        if let Some(s) = map.remove(&file) {
            *total -= s.saved.len_bytes();
            let _ = sys::unlinkat(&self.dir, OsStr::new(&file.to_string()), false);
        }
    }

    /// True if the old bytes of all of `[start, end)` are saved (and none unknown).
    pub fn covers(&self, file: FileId, start: u64, end: u64) -> bool {
        let guard = self.inner.lock().unwrap();
        let s = guard.0.get(&file);
        s.is_some_and(|s| s.saved.covers(start, end) && !s.tainted.intersects(start, end))
    }

    /// True if the old bytes of the start of `file` are saved: all of `[0, want)`, or
    /// all the old file had when it was shorter (the bytes after it are new since the
    /// last ack: a file rewritten longer than it was).
    pub fn covers_start(&self, file: FileId, want: u64) -> bool {
        let guard = self.inner.lock().unwrap();
        let Some(s) = guard.0.get(&file) else {
            return false;
        };
        let Some((0, end)) = s.saved.iter().next() else {
            return false;
        };
        let end = end.min(want);
        let old_ends_there = end == want || s.tainted.intersects(end, end + 1);
        end > 0 && old_ends_there && !s.tainted.intersects(0, end)
    }

    /// The parts of `[start, end)` whose old bytes are saved (and not tainted).
    pub fn known(&self, file: FileId, start: u64, end: u64) -> RangeSet {
        let guard = self.inner.lock().unwrap();
        let Some(s) = guard.0.get(&file) else {
            return RangeSet::new();
        };
        let outside = RangeSet::from_range(start, end).difference(&s.saved);
        let mut known = RangeSet::from_range(start, end);
        known.remove_set(&outside);
        known.remove_set(&s.tainted);
        known
    }

    /// The old bytes of `[start, end)`, if all of them are saved.
    pub fn get(&self, file: FileId, start: u64, end: u64) -> Option<Vec<u8>> {
        let guard = self.inner.lock().unwrap();
        let s = guard.0.get(&file)?;
        if !s.saved.covers(start, end) || s.tainted.intersects(start, end) {
            return None;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        s.file.as_ref()?.read_exact_at(&mut buf, start).ok()?;
        Some(buf)
    }

    /// The peer acknowledged `ranges` of the file, now `size` bytes long: what it holds
    /// there is the current content, and it holds nothing past `size`.
    pub fn release(&self, file: FileId, ranges: &RangeSet, size: u64) {
        let mut guard = self.inner.lock().unwrap();
        let (map, total) = &mut *guard;
        if let Some(s) = map.get_mut(&file) {
            let mut gone = ranges.clone();
            gone.insert(size, u64::MAX); // bytes a truncate cut: of no more use
            let before = s.saved.len_bytes();
            s.saved.remove_set(&gone);
            s.tainted.remove_set(ranges);
            *total -= before - s.saved.len_bytes();
            // an adopted file's inode was the replaced file's: a process may still have
            // it open, so it is never punched, only unlinked once all of it is released
            if let Some(f) = s.file.as_ref().filter(|_| !s.adopted) {
                for (a, b) in gone.iter() {
                    punch(f, a, b);
                }
            }
            if s.saved.is_empty() && s.tainted.is_empty() {
                map.remove(&file);
                let _ = sys::unlinkat(&self.dir, std::ffi::OsStr::new(&file.to_string()), false);
            }
        }
    }

    /// Bytes of old data held now.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap().1
    }
}

/// Copies `[off, off + len)` of `src` to the same offsets of `dst`: in the kernel where
/// it can, else through a 1 MiB buffer.
fn copy(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    match sys::copy_range(src, dst, off, len) {
        Ok(()) => return Ok(()),
        Err(e)
            if !matches!(
                e.0,
                libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
            ) =>
        {
            return Err(os_err(e))
        }
        Err(_) => {}
    }
    let mut buf = vec![0u8; (len as usize).min(1 << 20)];
    let mut at = off;
    while at < off + len {
        let n = ((off + len - at) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Frees the space of `[a, b)` in a sparse file (best effort).
fn punch(f: &File, a: u64, b: u64) {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let len = b.saturating_sub(a).min(i64::MAX as u64);
    let _ = sys::fallocate(f, mode, a, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(content: &[u8]) -> (tempfile::TempDir, File) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), content).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path().join("f"))
            .unwrap();
        (t, f)
    }

    #[test]
    fn first_overwrite_is_saved_once_and_released_at_ack() {
        let (t, f) = setup(&[1u8; 10_000]);
        let p = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        p.before_write(7, &f, 10_000, 100, 200).unwrap();
        f.write_all_at(&[2u8; 100], 100).unwrap();
        p.before_write(7, &f, 10_000, 150, 300).unwrap(); // 150..200 already saved
        assert_eq!(
            p.get(7, 100, 300).unwrap(),
            vec![1u8; 200],
            "old bytes, not the first rewrite"
        );
        assert!(p.get(7, 100, 301).is_none());
        p.before_write(7, &f, 10_000, 9_990, 20_000).unwrap(); // past the end: only what exists
        assert_eq!(p.bytes(), 210);
        p.release(7, &RangeSet::from_range(0, 10_000), 10_000);
        assert_eq!(p.bytes(), 0);
        assert!(p.get(7, 100, 200).is_none());
    }

    #[test]
    fn the_start_of_a_file_rewritten_longer_is_covered() {
        let (t, f) = setup(&[1u8; 1_000]);
        let p = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        assert!(!p.covers_start(7, 1_200), "nothing saved");
        p.before_truncate(7, &f, 1_000, 0).unwrap(); // O_TRUNC
        f.set_len(0).unwrap();
        p.before_write(7, &f, 0, 0, 1_200).unwrap(); // rewritten, 200 bytes longer
        assert!(p.covers_start(7, 1_200), "all the old file had is saved");
        assert!(p.covers_start(7, 500));
        // only the first 100 bytes overwritten in place: the rest of the old file is
        // not saved, so its start is not all the old file had
        let (t2, g) = setup(&[1u8; 1_000]);
        let q = Preimages::open(&t2.path().join("pre"), 1 << 20, []).unwrap();
        q.before_write(8, &g, 1_000, 0, 100).unwrap();
        assert!(q.covers_start(8, 100));
        assert!(!q.covers_start(8, 1_000));
        // a tainted start is not covered
        let r = Preimages::open(
            &t2.path().join("pre2"),
            1 << 20,
            [(9, RangeSet::from_range(0, 10))],
        )
        .unwrap();
        r.before_write(9, &g, 1_000, 0, 1_000).unwrap();
        assert!(!r.covers_start(9, 1_000));
    }

    #[test]
    fn a_second_save_takes_over_the_first_ones_old_bytes_and_a_gone_file_frees_them() {
        let (t, f) = setup(&[1u8; 1_000]);
        let p = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        p.before_truncate(7, &f, 1_000, 0).unwrap(); // save 1: file 7 rewritten
        f.set_len(0).unwrap();
        p.before_write(7, &f, 0, 0, 1_200).unwrap();
        assert!(p.transfer(7, 8, 1_300), "save 2: file 8 replaces file 7");
        assert!(p.get(7, 0, 1_000).is_none());
        assert_eq!(p.get(8, 0, 1_000).unwrap(), vec![1u8; 1_000]);
        assert!(p.covers_start(8, 1_300));
        assert!(
            p.get(8, 1_000, 1_100).is_none(),
            "the peer holds nothing there"
        );
        assert_eq!(p.bytes(), 1_000);
        assert!(!p.transfer(7, 9, 10), "nothing left under 7");
        p.forget(8);
        assert_eq!(p.bytes(), 0);
        assert!(p.get(8, 0, 10).is_none());
        let left = std::fs::read_dir(t.path().join("pre")).unwrap().count();
        assert_eq!(left, 0, "no file left in the pre-image directory");
    }

    #[test]
    fn bytes_new_since_the_ack_are_never_offered_as_old() {
        let (t, f) = setup(&[1u8; 100]);
        let p = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        p.before_write(7, &f, 100, 50, 200).unwrap(); // 100..200 are new: the peer has none
        f.write_all_at(&[2u8; 150], 50).unwrap();
        p.before_write(7, &f, 200, 150, 180).unwrap(); // overwriting new bytes saves nothing
        assert_eq!(p.get(7, 50, 100).unwrap(), vec![1u8; 50]);
        assert!(p.get(7, 150, 180).is_none());
        assert!(p.get(7, 90, 110).is_none());
        p.release(7, &RangeSet::from_range(0, 200), 200); // acked: the peer has it all now
        p.before_write(7, &f, 200, 150, 180).unwrap();
        assert_eq!(p.get(7, 150, 180).unwrap(), vec![2u8; 30]);
    }

    #[test]
    fn tainted_regions_and_the_cap_are_respected() {
        let (t, f) = setup(&[1u8; 10_000]);
        let p = Preimages::open(
            &t.path().join("pre"),
            500,
            [(7, RangeSet::from_range(0, 100))],
        )
        .unwrap();
        p.before_write(7, &f, 10_000, 0, 200).unwrap();
        assert!(p.get(7, 0, 200).is_none(), "tainted bytes are unknown");
        assert!(p.get(7, 100, 200).is_some());
        p.before_write(7, &f, 10_000, 1000, 2000).unwrap(); // over the cap: not saved
        assert!(p.get(7, 1000, 2000).is_none());
        assert_eq!(p.bytes(), 100);
    }

    #[test]
    fn holes_left_by_writes_past_the_end_are_unknown() {
        // Pages flushed out of order: the end moves to 3000 first, then the hole below
        // it is written. The peer never had those zeros.
        let (t, f) = setup(&[1u8; 1000]);
        let p = Preimages::open(&t.path().join("pre"), 1 << 20, []).unwrap();
        p.before_write(7, &f, 1000, 2000, 3000).unwrap();
        f.set_len(3000).unwrap();
        p.before_write(7, &f, 3000, 1000, 2000).unwrap();
        assert!(
            p.get(7, 1000, 2000).is_none(),
            "the hole is new since the ack"
        );
        assert!(!p.covers(7, 1500, 1600));
        p.before_write(7, &f, 3000, 0, 500).unwrap();
        assert_eq!(
            p.get(7, 0, 500).unwrap(),
            vec![1u8; 500],
            "old bytes still known"
        );
    }
}
