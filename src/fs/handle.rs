//! Open file and directory handles, keyed by the `fh` number given to the kernel.

use super::FsError;
use crate::sys::DirEntry;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// An open regular file.
#[derive(Debug)]
pub struct FileHandle {
    /// The backing file, opened read-write when the kernel may write through it.
    pub file: File,
    /// The journal's file id (backing inode number).
    pub file_id: u64,
    /// The FUSE inode number (to find its path).
    pub ino: u64,
    /// True if opened for writing.
    pub writable: bool,
}

/// An open directory: its entries, read once at `opendir`.
#[derive(Debug)]
pub struct DirHandle {
    /// The snapshot of entries that `readdir` pages through.
    pub entries: Vec<DirEntry>,
}

/// A table of handles of one kind.
pub struct Handles<T> {
    next: AtomicU64,
    map: RwLock<HashMap<u64, Arc<T>>>,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(1),
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> Handles<T> {
    /// Stores a handle and returns its number.
    pub fn insert(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().unwrap().insert(fh, Arc::new(h));
        fh
    }

    /// The handle for `fh`, or EBADF.
    pub fn get(&self, fh: u64) -> Result<Arc<T>, FsError> {
        self.map
            .read()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::errno(libc::EBADF))
    }

    /// Replaces the handle `fh` (EBADF if it is not open).
    pub fn replace(&self, fh: u64, h: T) -> Result<(), FsError> {
        let mut map = self.map.write().unwrap();
        let slot = map.get_mut(&fh).ok_or(FsError::errno(libc::EBADF))?;
        *slot = Arc::new(h);
        Ok(())
    }

    /// Removes and returns the handle for `fh`.
    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.write().unwrap().remove(&fh)
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }

    /// True when none are open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
