//! File I/O: open, create, read, write, fsync, release, fallocate and lseek.
//! Every write is recorded in the journal before the backing `pwrite`.

use super::handle::FileHandle;
use super::WriteDone;
use super::{sys, Ctx, FsError, PassFs};
use crate::journal::op::MetaOp;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;

type R<T> = Result<T, FsError>;

const FALLOC_MODES_OK: i32 =
    libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;

impl PassFs {
    /// Flags to open the backing file with, given the kernel's open flags.
    fn backing_flags(&self, flags: i32) -> i32 {
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        if self.opts.writeback {
            // The kernel may read pages of a write-only file, and handles O_APPEND itself.
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    fn is_writable(flags: i32) -> bool {
        flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
    }

    /// Opens a regular file; returns the handle number.
    pub fn open(&self, ino: u64, flags: i32) -> R<u64> {
        let inode = self.inodes.get(ino)?;
        self.gate.wait(inode.backing_ino);
        let writable = Self::is_writable(flags);
        if writable {
            if let Some(path) = self.live_path(&inode)? {
                self.rec.track(inode.backing_ino, &path)?;
            }
            if flags & libc::O_TRUNC != 0 {
                self.save_cut(&inode, 0);
                self.rec.size(inode.backing_ino, 0)?;
            }
        }
        let file = sys::reopen(&inode.fd, self.backing_flags(flags))?;
        if writable {
            self.rec.opened(inode.backing_ino);
        }
        Ok(self.files.insert(FileHandle {
            file,
            file_id: inode.backing_ino,
            ino,
            writable,
        }))
    }

    /// Creates and opens `parent/name`; returns (ino, stat, handle).
    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> R<(u64, libc::stat, u64)> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let path = self.child_path(&p, name)?;
        // O_NOFOLLOW: a symlink raced into the backing directory is never followed (ELOOP)
        let bflags =
            self.backing_flags(flags) | libc::O_CREAT | libc::O_NOFOLLOW | (flags & libc::O_EXCL);
        let fd = sys::openat(&p.fd, name, bflags, mode)?;
        let (ino, st) = self.adopt(ctx, &p, name)?;
        self.rec.track(st.st_ino, &path)?;
        self.rec.meta(MetaOp::Create {
            path: path.clone(),
            file: st.st_ino,
            mode: mode & 0o7777,
        })?;
        self.record_owner(&path, &st)?;
        self.rec.opened(st.st_ino);
        let fh = FileHandle {
            file: fd.into(),
            file_id: st.st_ino,
            ino,
            writable: true,
        };
        Ok((ino, st, self.files.insert(fh)))
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> R<Vec<u8>> {
        let h = self.files.get(fh)?;
        self.gate.wait(h.file_id);
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match h.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`: journals the range first, then writes the backing file.
    /// `kill_priv`: the kernel asks us to drop setuid/setgid and file capabilities, as a
    /// write by an unprivileged process does (we write as root, which would keep them).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill_priv: bool) -> R<u32> {
        let h = self.files.get(fh)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::errno(libc::EFBIG))?;
        self.gate.wait(h.file_id);
        if kill_priv {
            self.kill_priv(&*self.inodes.get(h.ino)?)?;
        }
        // A write past the end leaves a hole of zeros: changed bytes too (the peer and
        // the hash trees must see them even after an earlier truncate shrank the file).
        let eof = if offset > 0 || self.pre.is_some() {
            sys::fstat(&h.file)?.st_size as u64
        } else {
            0
        };
        let _done = WriteDone(&*self.rec, h.file_id);
        self.rec.write(h.file_id, offset.min(eof), end)?;
        self.save_preimage(&h, eof, offset, end);
        h.file.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// Copies old bytes aside before their first overwrite (an optimisation: a failure
    /// only means the range goes without a dictionary).
    fn save_preimage(&self, h: &FileHandle, size: u64, start: u64, end: u64) {
        if let Some(p) = &self.pre {
            if let Err(e) = p.before_write(h.file_id, &h.file, size, start, end) {
                tracing::debug!(file = h.file_id, "pre-image not saved: {e}");
            }
        }
    }

    /// Before `inode`'s file is cut to `size`: copies the bytes cut off aside as
    /// pre-images (an optimisation, as for writes: a failure is only logged).
    pub(super) fn save_cut(&self, inode: &super::inode::Inode, size: u64) {
        let Some(p) = &self.pre else { return };
        let saved = sys::reopen(&inode.fd, libc::O_RDONLY | libc::O_CLOEXEC)
            .map_err(|e| std::io::Error::from_raw_os_error(e.0))
            .and_then(|f| {
                let cur = f.metadata()?.len();
                match size < cur {
                    true => p.before_truncate(inode.backing_ino, &f, cur, size),
                    false => Ok(()),
                }
            });
        if let Err(e) = saved {
            tracing::debug!(
                file = inode.backing_ino,
                "pre-image of a cut not saved: {e}"
            );
        }
    }

    /// Makes the file and its journal entries durable.
    pub fn fsync(&self, fh: u64, datasync: bool) -> R<()> {
        let h = self.files.get(fh)?;
        self.rec.sync()?;
        sys::fsync(&h.file, datasync).map_err(FsError::from)
    }

    /// `fsyncdir`: the directory's entries, and the journal records of them, are made
    /// durable.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> R<()> {
        let inode = self.inodes.get(ino)?;
        self.rec.sync()?;
        let dir = sys::reopen(
            &inode.fd,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?;
        sys::fsync(&dir, datasync).map_err(FsError::from)
    }

    /// Closes a handle; a writable one tells the recorder the file may be quiet.
    pub fn release(&self, fh: u64) {
        if let Some(h) = self.files.remove(fh) {
            if h.writable {
                self.rec.closed(h.file_id);
            }
        }
    }

    /// `fallocate`: preallocation, hole punching and zeroing (others: EOPNOTSUPP).
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> R<()> {
        if mode & !FALLOC_MODES_OK != 0 {
            return Err(FsError::errno(libc::EOPNOTSUPP));
        }
        let h = self.files.get(fh)?;
        let end = offset.checked_add(len).ok_or(FsError::errno(libc::EFBIG))?;
        let zeroes = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let size = sys::fstat(&h.file)?.st_size as u64;
        let (a, b) = match () {
            _ if zeroes => (offset, end),
            _ if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size => (size, end),
            _ => (end, end), // nothing changes; still in flight until done
        };
        let _done = WriteDone(&*self.rec, h.file_id);
        self.rec.write(h.file_id, a, b)?;
        if zeroes {
            self.save_preimage(&h, size, offset, end);
        }
        sys::fallocate(&h.file, mode, offset, len).map_err(FsError::from)
    }

    /// `lseek` for SEEK_DATA / SEEK_HOLE (and the plain whences).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> R<i64> {
        sys::lseek(&self.files.get(fh)?.file, offset, whence).map_err(FsError::from)
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::inode::ROOT_INO;
    use super::super::record::NullRecorder;
    use super::super::{Ctx, FsOptions, PassFs};
    use std::sync::Arc;

    #[test]
    fn create_never_follows_a_symlink_raced_into_the_backing_dir() {
        let t = tempfile::tempdir().unwrap();
        let (data, outside) = (t.path().join("data"), t.path().join("outside"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(&outside, b"not yours").unwrap();
        // the name was free at LOOKUP; a symlink took it before CREATE
        std::os::unix::fs::symlink(&outside, data.join("x")).unwrap();
        let fs = PassFs::new(&data, Arc::new(NullRecorder), FsOptions { writeback: true }).unwrap();
        let ctx = Ctx { uid: 0, gid: 0 };
        let flags = libc::O_WRONLY | libc::O_TRUNC;
        let err = fs
            .create(ctx, ROOT_INO, std::ffi::OsStr::new("x"), 0o644, flags)
            .unwrap_err();
        assert_eq!(err.errno, libc::ELOOP);
        assert_eq!(std::fs::read(&outside).unwrap(), b"not yours");
    }

    /// Counts `sync` calls; fails them when `fail` is set.
    struct SyncCounter {
        syncs: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    impl super::super::record::Recorder for SyncCounter {
        fn track(&self, _: u64, _: &crate::path::RelPath) -> Result<(), RecordError> {
            Ok(())
        }
        fn write(&self, _: u64, _: u64, _: u64) -> Result<(), RecordError> {
            Ok(())
        }
        fn size(&self, _: u64, _: u64) -> Result<(), RecordError> {
            Ok(())
        }
        fn meta(&self, _: crate::journal::op::MetaOp) -> Result<(), RecordError> {
            Ok(())
        }
        fn sync(&self) -> Result<(), RecordError> {
            self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.fail {
                true => Err(RecordError::other("disk gone")),
                false => Ok(()),
            }
        }
    }
    use super::super::record::RecordError;

    #[test]
    fn fsyncdir_makes_the_journal_durable_and_reports_its_failure() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        for fail in [false, true] {
            let rec = Arc::new(SyncCounter {
                syncs: Default::default(),
                fail,
            });
            let fs = PassFs::new(t.path(), rec.clone(), FsOptions { writeback: true }).unwrap();
            let got = fs.fsyncdir(ROOT_INO, false);
            assert_eq!(rec.syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
            assert_eq!(
                got.is_err(),
                fail,
                "fsyncdir must fail when the journal cannot sync"
            );
        }
    }
}
