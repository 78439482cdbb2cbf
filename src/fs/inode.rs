//! The inode table: every inode the kernel knows is held open as an `O_PATH` fd, keyed
//! by its FUSE inode number (the backing inode number, with root swapped to 1), so
//! operations resolve with `*at()` calls and renames never invalidate anything.

use super::FsError;
use crate::sys;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// The FUSE root inode number.
pub const ROOT_INO: u64 = 1;

/// One inode the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    /// `O_PATH | O_NOFOLLOW` fd on the backing inode.
    pub fd: OwnedFd,
    /// The backing inode number (the journal's `FileId`).
    pub backing_ino: u64,
    /// The `S_IFMT` bits of the inode.
    pub kind: u32,
    /// The directory and name it was last looked up or renamed to through the mount: a
    /// hint for finding the path of a non-directory when `/proc` cannot give it.
    pub last_name: Mutex<Option<(Arc<Inode>, Vec<u8>)>>,
}

impl Inode {
    /// `/proc/self/fd/N` path that reopens this inode.
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Remembers `parent/name` as where this inode was last seen (directories find
    /// their path through `..` and need no hint).
    fn name_is(&self, parent: &Arc<Inode>, name: &OsStr) {
        if self.kind != libc::S_IFDIR {
            let hint = (parent.clone(), name.as_encoded_bytes().to_vec());
            *self.last_name.lock().unwrap() = Some(hint);
        }
    }
}

struct Entry {
    inode: Arc<Inode>,
    lookups: u64,
}

/// Maps FUSE inode numbers to held inodes, with kernel lookup counts.
pub struct InodeTable {
    map: Mutex<HashMap<u64, Entry>>,
    root_backing: u64,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root_fd: OwnedFd) -> Result<InodeTable, FsError> {
        let st = sys::fstat(&root_fd)?;
        let root = Arc::new(Inode {
            fd: root_fd,
            backing_ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            last_name: Mutex::new(None),
        });
        let mut map = HashMap::new();
        map.insert(
            ROOT_INO,
            Entry {
                inode: root,
                lookups: 1 << 40,
            },
        );
        Ok(InodeTable {
            map: Mutex::new(map),
            root_backing: st.st_ino,
        })
    }

    /// The FUSE inode number for a backing inode number.
    pub fn fuse_ino(&self, backing: u64) -> u64 {
        match backing {
            b if b == self.root_backing => ROOT_INO,
            ROOT_INO => self.root_backing,
            b => b,
        }
    }

    /// The inode for a FUSE inode number, or ESTALE-ish ENOENT.
    pub fn get(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        let map = self.map.lock().unwrap();
        map.get(&ino)
            .map(|e| e.inode.clone())
            .ok_or(FsError::errno(libc::ENOENT))
    }

    /// Looks `name` up under `parent`, takes one kernel reference, returns its stat.
    pub fn lookup(&self, parent: &Arc<Inode>, name: &OsStr) -> Result<(u64, libc::stat), FsError> {
        let st = sys::fstatat(&parent.fd, name)?;
        let ino = self.fuse_ino(st.st_ino);
        if let Some(inode) = self.bump(ino, st.st_ino) {
            inode.name_is(parent, name);
            return Ok((ino, st));
        }
        let fd = sys::open_path(&parent.fd, name)?;
        let st = sys::fstat(&fd)?;
        let ino = self.fuse_ino(st.st_ino);
        let inode = Inode {
            fd,
            backing_ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            last_name: Mutex::new(None),
        };
        let mut map = self.map.lock().unwrap();
        let e = map.entry(ino).or_insert_with(|| Entry {
            inode: Arc::new(inode),
            lookups: 0,
        });
        e.lookups += 1;
        e.inode.name_is(parent, name);
        Ok((ino, st))
    }

    /// Notes that the held inode now at `parent/name` (if any) lives there, after a
    /// rename through the mount.
    pub fn renamed(&self, parent: &Arc<Inode>, name: &OsStr) {
        let Ok(st) = sys::fstatat(&parent.fd, name) else {
            return;
        };
        let found = self
            .map
            .lock()
            .unwrap()
            .get(&self.fuse_ino(st.st_ino))
            .map(|e| e.inode.clone());
        if let Some(inode) = found.filter(|i| i.backing_ino == st.st_ino) {
            inode.name_is(parent, name);
        }
    }

    /// Adds a reference to an inode already held (same backing inode).
    fn bump(&self, ino: u64, backing: u64) -> Option<Arc<Inode>> {
        let mut map = self.map.lock().unwrap();
        match map.get_mut(&ino) {
            Some(e) if e.inode.backing_ino == backing => {
                e.lookups += 1;
                Some(e.inode.clone())
            }
            _ => None,
        }
    }

    /// Drops `n` kernel references; the fd is closed when none remain.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut map = self.map.lock().unwrap();
        if let Some(e) = map.get_mut(&ino) {
            e.lookups = e.lookups.saturating_sub(n);
            if e.lookups == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Number of inodes held (for tests and status).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// True when only the root is held.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}
