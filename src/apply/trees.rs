//! Hash trees of files the applier keeps up to date, so that verifying a small update to
//! a big file reads only the leaves the update touches. A tree is trusted only while the
//! file's stamp (inode, size, mtime, ctime) is the one recorded with it: any other change
//! (a local write through the mount) makes the next update hash the file in full.

use crate::hashtree::HashTree;
use crate::treecache::TreeCache;
use std::sync::Mutex;

/// What identifies one state of a file's content: inode, size, mtime and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub(super) ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The file's inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The stamp of a file as `fstat` sees it now.
    pub(super) fn of(st: &libc::stat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Trees by inode, each with the stamp it is valid for (memory bounded).
#[derive(Default)]
pub(super) struct Trees {
    map: Mutex<TreeCache<u64, Stamp>>,
}

impl Trees {
    /// The tree of the file with this stamp, if it is still valid.
    pub(super) fn get(&self, stamp: &Stamp) -> Option<HashTree> {
        let map = self.map.lock().unwrap();
        if let Some((s, _)) = map.get(&stamp.ino).filter(|(s, _)| s != stamp) {
            tracing::debug!("hash tree stale: kept for {s:?}, file now {stamp:?}");
        }
        map.get(&stamp.ino)
            .filter(|(s, _)| s == stamp)
            .map(|(_, t)| t.clone())
    }

    /// The content did not change (an attribute op): a tree valid at `before` is valid at `after`.
    pub(super) fn restamp(&self, before: &Stamp, after: Stamp) {
        let mut map = self.map.lock().unwrap();
        if let Some(s) = map.extra_mut(&before.ino).filter(|s| *s == before) {
            *s = after;
        }
    }

    /// Remembers `tree` as the content of the file with `stamp`.
    pub(super) fn put(&self, stamp: Stamp, tree: HashTree) {
        self.map.lock().unwrap().insert(stamp.ino, stamp, tree);
    }
}
