//! The mount-time scan: finds what changed in the backing folder while syncfs was not
//! watching, by comparing each entry's (inode, size, mtime, ctime) with the index: only
//! entries that differ are rehashed, and real changes are journaled like any other
//! local change (so they reach the peer), with a new version.
//!
//! The first scan of a folder (adopted with `init --data`, or a store from before the
//! index) indexes everything at the empty version and journals nothing: what both
//! sides already hold is matched at first contact, not sent.
//!
//! Paths the ignore rules match (`.syncfsignore`) are skipped: neither indexed nor
//! journaled, and an indexed entry that is now ignored is not taken for deleted.

use crate::journal::index::{Entry, Kind, Stamp};
use crate::journal::{Journal, JournalError, MetaOp};
use crate::path::RelPath;
use crate::sync::fold;
use crate::vv::NodeId;
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Index flag set once a scan completed (unset: the next scan adopts).
pub const SCANNED: &str = "scanned";

/// Progress, for `syncfs status`.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries looked at.
    pub seen: AtomicU64,
    /// Bytes hashed.
    pub hashed: AtomicU64,
    /// Changes found (journaled).
    pub changed: AtomicU64,
    /// 1 while scanning, 0 when done.
    pub running: AtomicU64,
    /// Set to stop the scan early (the daemon was told to stop).
    pub cancel: std::sync::atomic::AtomicBool,
}

/// What one walk of the folder collects.
struct Walk {
    /// Every path seen.
    seen: HashSet<Vec<u8>>,
    /// Files the index did not hold.
    fresh: Vec<Fresh>,
    /// The journal's next op number when the scan began.
    before: u64,
}

/// A file the scan found that the index did not hold.
struct Fresh {
    path: RelPath,
    ino: u64,
    mode: u32,
    size: u64,
    hash: [u8; 32],
}

/// Errors of a scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading the folder failed.
    #[error("scanning {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Stopped before the end ([`Progress::cancel`]); what was journaled stays valid.
    #[error("scan stopped before the end")]
    Cancelled,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a scan needs.
pub struct Scan<'a> {
    /// The backing folder.
    pub data: &'a Path,
    /// The journal (and its index).
    pub journal: &'a Journal,
    /// This node's id (versions of changes found).
    pub node: NodeId,
    /// Counters.
    pub progress: &'a Progress,
}

impl Scan<'_> {
    /// Scans the whole folder once.
    pub fn run(&self) -> Result<(), ScanError> {
        self.progress.running.store(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let ix = self.journal.index();
        let adopt = !ix.flag(SCANNED)?;
        if adopt {
            tracing::info!(
                "first scan of {}: indexing what is there",
                self.data.display()
            );
        }
        let mut w = Walk {
            seen: HashSet::new(),
            fresh: Vec::new(),
            before: self.journal.next_seq(),
        };
        self.walk(Path::new(""), adopt, &mut w)?;
        if !adopt {
            self.find_deleted(&w.seen, w.fresh)?;
        }
        ix.set_flag(SCANNED, true)?;
        ix.flush()?;
        self.progress.running.store(0, Ordering::Relaxed);
        tracing::info!(
            entries = self.progress.seen.load(Ordering::Relaxed),
            changed = self.progress.changed.load(Ordering::Relaxed),
            hashed = self.progress.hashed.load(Ordering::Relaxed),
            ms = started.elapsed().as_millis() as u64,
            "scan done"
        );
        Ok(())
    }

    fn walk(&self, rel: &Path, adopt: bool, w: &mut Walk) -> Result<(), ScanError> {
        let dir = self.data.join(rel);
        for ent in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let ent = ent.map_err(io(&dir))?;
            let rel = rel.join(ent.file_name());
            let full = self.data.join(&rel);
            let md = std::fs::symlink_metadata(&full).map_err(io(&full))?;
            let Ok(path) = RelPath::from_path(&rel) else {
                continue;
            };
            let kind = match md.file_type() {
                t if t.is_dir() => Kind::Dir,
                t if t.is_symlink() => Kind::Symlink,
                t if t.is_file() => Kind::File,
                _ => continue, // fifos and sockets are not indexed
            };
            if self.ignored(&path, kind == Kind::Dir) {
                continue; // stays local: not indexed, not journaled, not looked into
            }
            if self.progress.cancel.load(Ordering::Relaxed) {
                return Err(ScanError::Cancelled);
            }
            self.progress.seen.fetch_add(1, Ordering::Relaxed);
            w.seen.insert(path.as_bytes().to_vec());
            self.entry(&path, &full, kind, &md, adopt, w)?;
            if kind == Kind::Dir {
                self.walk(&rel, adopt, w)?;
            }
        }
        Ok(())
    }

    /// Looks at one entry; rehashes and journals it if it changed.
    fn entry(
        &self,
        path: &RelPath,
        full: &Path,
        kind: Kind,
        md: &std::fs::Metadata,
        adopt: bool,
        w: &mut Walk,
    ) -> Result<(), ScanError> {
        let ix = self.journal.index();
        let old = ix.get(path)?.filter(|e| !e.deleted && e.kind == kind);
        let stamp = stamp_of(md);
        if old.as_ref().is_some_and(|e| e.stamp == stamp) {
            return Ok(()); // unchanged: not even read
        }
        // (ops this scan journaled, e.g. the mkdir of a new parent, do not count)
        let held = self.journal.has_pending_op_before(path, w.before);
        if self.journal.is_pending(md.ino()) || held {
            return Ok(()); // a change the journal already holds: sent (and indexed) soon
        }
        let (hash, target) = self.hash(full, kind)?;
        let mut e = old.clone().unwrap_or_else(|| Entry::new(kind, 0));
        // (a directory's stamp moves with every entry made or removed in it: only its
        // mode is a change of its own; indexes of old builds hold another hash for it)
        let same_content = |o: &Entry| kind == Kind::Dir || o.hash == hash;
        let same =
            old.is_some_and(|o| same_content(&o) && o.mode == md.permissions().mode() & 0o7777);
        (e.hash, e.target, e.stamp) = (hash, target, stamp);
        e.made_here = true; // found here, whether adopted or changed behind our back
        e.size = if kind == Kind::File { md.len() } else { 0 };
        e.mode = md.permissions().mode() & 0o7777;
        e.mtime = fold::mtime(&stat_like(md));
        if same {
            return Ok(ix.restamp(path, stamp)?);
        }
        if !adopt {
            e.vv = e.vv.bumped(self.node, ix.tick()?);
            self.journal_change(path, kind, md, &e, &mut w.fresh)?;
            self.progress.changed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ix.put(path, e)?)
    }

    /// Journals a change found by the scan, as the mount would have.
    fn journal_change(
        &self,
        path: &RelPath,
        kind: Kind,
        md: &std::fs::Metadata,
        e: &Entry,
        fresh: &mut Vec<Fresh>,
    ) -> Result<(), ScanError> {
        let j = self.journal;
        let known = j
            .index()
            .get(path)?
            .is_some_and(|o| !o.deleted && o.kind == kind);
        tracing::info!("{path} changed while not mounted: journaled");
        match kind {
            Kind::File if !known => fresh.push(Fresh {
                path: path.clone(),
                ino: md.ino(),
                mode: e.mode,
                size: md.len(),
                hash: e.hash,
            }),
            Kind::File => j.want_whole(md.ino(), path, md.len())?,
            Kind::Dir if !known => {
                j.record_meta(MetaOp::Mkdir {
                    path: path.clone(),
                    mode: e.mode,
                })?;
            }
            Kind::Dir => {
                j.record_meta(MetaOp::Chmod {
                    path: path.clone(),
                    mode: e.mode,
                })?;
            }
            Kind::Symlink => {
                if known {
                    j.record_meta(unlink(path, 0))?;
                }
                j.record_meta(MetaOp::Symlink {
                    path: path.clone(),
                    target: e.target.clone(),
                })?;
            }
        }
        Ok(())
    }

    /// Entries the index holds live that are gone from the folder: deleted while not
    /// mounted; journaled (children before their directory).
    fn find_deleted(&self, seen: &HashSet<Vec<u8>>, fresh: Vec<Fresh>) -> Result<(), ScanError> {
        let ix = self.journal.index();
        let mut gone = Vec::new();
        for kv in ix.all() {
            let (path, e) = kv?;
            let ignored = self.ignored(&path, e.kind == Kind::Dir);
            if !e.deleted
                && !ignored
                && !seen.contains(path.as_bytes())
                && !self.journal.has_pending_op(&path)
            {
                gone.push((path, e));
            }
        }
        let gone = self.new_files(fresh, gone)?;
        for (path, e) in gone.into_iter().rev() {
            tracing::info!("{path} deleted while not mounted: journaled");
            // File id 0 (no inode has it): the inode number may already belong to a
            // file created meanwhile (found by this scan), which must stay tracked.
            let op = match e.kind {
                Kind::Dir => MetaOp::Rmdir { path: path.clone() },
                _ => unlink(&path, 0),
            };
            self.journal.record_meta(op)?;
            self.progress.changed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Journals the files new since the last scan: one with the content of a file that
    /// is gone is that file renamed (no data moves); the others are new, sent whole.
    /// Returns the gone entries not renamed.
    fn new_files(
        &self,
        fresh: Vec<Fresh>,
        gone: Vec<(RelPath, Entry)>,
    ) -> Result<Vec<(RelPath, Entry)>, ScanError> {
        let mut by_hash: std::collections::HashMap<([u8; 32], u64), RelPath> = gone
            .iter()
            .filter(|(_, e)| e.kind == Kind::File && e.size > 0)
            .map(|(p, e)| ((e.hash, e.size), p.clone()))
            .collect();
        let mut renamed = HashSet::new();
        let j = self.journal;
        for f in fresh {
            if let Some(from) = by_hash.remove(&(f.hash, f.size)) {
                tracing::info!("{from} renamed to {} while not mounted: journaled", f.path);
                let to = f.path;
                renamed.insert(from.as_bytes().to_vec());
                j.record_meta(MetaOp::Rename { from, to, flags: 0 })?;
                continue;
            }
            j.record_meta(MetaOp::Create {
                path: f.path.clone(),
                file: f.ino,
                mode: f.mode,
            })?;
            j.want_whole(f.ino, &f.path, f.size)?;
        }
        Ok(gone
            .into_iter()
            .filter(|(p, _)| !renamed.contains(p.as_bytes()))
            .collect())
    }

    /// True if the journal's ignore rules keep `path` local.
    fn ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.journal
            .ignores()
            .is_some_and(|i| i.matches(path, is_dir))
    }

    fn hash(&self, full: &Path, kind: Kind) -> Result<([u8; 32], Vec<u8>), ScanError> {
        Ok(match kind {
            // as `Entry::new` has it (a directory's content is its entries)
            Kind::Dir => (*blake3::hash(b"").as_bytes(), Vec::new()),
            Kind::Symlink => {
                use std::os::unix::ffi::OsStrExt;
                let t = std::fs::read_link(full).map_err(io(full))?;
                let t = t.as_os_str().as_bytes().to_vec();
                (*blake3::hash(&t).as_bytes(), t)
            }
            Kind::File => {
                let mut f = std::fs::File::open(full).map_err(io(full))?;
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io(full))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    self.progress.hashed.fetch_add(n as u64, Ordering::Relaxed);
                }
                (*h.finalize().as_bytes(), Vec::new())
            }
        })
    }
}

fn unlink(path: &RelPath, file: u64) -> MetaOp {
    MetaOp::Unlink {
        path: path.clone(),
        file,
        last_link: true,
    }
}

fn stamp_of(md: &std::fs::Metadata) -> Stamp {
    fold::stamp(&stat_like(md))
}

/// The fields of a `stat` the index uses, from std's metadata.
fn stat_like(md: &std::fs::Metadata) -> libc::stat {
    // SAFETY: libc::stat is plain old data; every field we read is set below.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_ino = md.ino();
    st.st_size = md.size() as i64;
    st.st_mtime = md.mtime();
    st.st_mtime_nsec = md.mtime_nsec();
    st.st_ctime = md.ctime();
    st.st_ctime_nsec = md.ctime_nsec();
    st
}
