//! Chunk trees of our own versions of files the peer is about to offer (the receiver's
//! side), built ahead of the offer.
//!
//! A file we want whose two versions share no history (first pairing, or edited on
//! both sides while apart) comes as a chunk offer, and answering it takes our
//! version's chunk tree: a read of the whole file. Started when the index exchange
//! says so ([`Warm::start`]), that read runs while the peer reads its own version to
//! make the offer, instead of after the offer came: the offer is answered at once (its
//! TCP ACK rides on the answer) and the exchange takes one file's reading less.
//!
//! A tree is used only if the file's stat is unchanged since it was built
//! ([`Warm::take`]); one never asked for goes after [`KEEP_FOR`]. Trees held are
//! bounded by [`WARM_BYTES`] (a file past that is read when offered, as before).

use crate::chunks::Tree;
use crate::path::RelPath;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Memory the trees built ahead may take (`sources::tree_memory` of their files: files
/// of 512 MiB in all).
pub const WARM_BYTES: usize = 128 << 20;

/// A tree not asked for within this long is dropped (its file went otherwise).
pub const KEEP_FOR: Duration = Duration::from_secs(120);

/// What identifies a version of a file: device, inode, size, mtime and ctime (ns).
type Stamp = [i64; 7];

fn stamp(st: &libc::stat) -> Stamp {
    [
        st.st_dev as i64,
        st.st_ino as i64,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    ]
}

/// One tree being built or built.
struct Slot {
    /// `None` while building; then the tree and the stamp of what it was built from
    /// (no tree: the file could not be read, or changed while read).
    built: Mutex<Option<Option<(Stamp, Tree)>>>,
    done: Condvar,
    charged: usize,
    since: Instant,
}

#[derive(Default)]
struct Slots {
    by_path: HashMap<RelPath, Arc<Slot>>,
    charged: usize,
}

/// The trees built ahead for one peer's stream.
pub struct Warm {
    slots: Mutex<Slots>,
    tasks: Mutex<JoinSet<()>>,
    cap: usize,
    used: AtomicUsize,
}

impl Default for Warm {
    fn default() -> Self {
        Warm::with_cap(WARM_BYTES)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Warm {
    /// No trees yet; those held take at most `cap` bytes (`sources::tree_memory`).
    pub fn with_cap(cap: usize) -> Warm {
        Warm {
            slots: Mutex::default(),
            tasks: Mutex::default(),
            cap,
            used: AtomicUsize::new(0),
        }
    }

    /// Starts building the tree of our file at `path` (a regular file of `sizes`),
    /// unless one is held for it or the trees would pass [`WARM_BYTES`]. Call within
    /// the runtime; the read runs on a blocking thread.
    pub fn start(
        self: &Arc<Self>,
        root: Arc<OwnedFd>,
        path: RelPath,
        sizes: std::ops::RangeInclusive<u64>,
    ) {
        let Some((file, st)) = super::chunked::open_file(&*root, &path, sizes) else {
            return;
        };
        let charged = super::sources::tree_memory(st.st_size as u64);
        let slot = Arc::new(Slot {
            built: Mutex::new(None),
            done: Condvar::new(),
            charged,
            since: Instant::now(),
        });
        {
            let mut slots = lock(&self.slots);
            slots.drop_stale();
            if slots.by_path.contains_key(&path) || slots.charged + charged > self.cap {
                return;
            }
            slots.charged += charged;
            slots.by_path.insert(path.clone(), slot.clone());
        }
        let mut tasks = lock(&self.tasks);
        while let Some(ended) = tasks.try_join_next() {
            if let Err(e) = ended {
                tracing::warn!("building a chunk tree ahead: {e}");
            }
        }
        tasks.spawn_blocking(move || {
            let tree = Tree::from_reader(&file).ok();
            let after = crate::sys::fstat(&file).ok();
            let same = after.is_some_and(|a| stamp(&a) == stamp(&st));
            let built = tree.filter(|_| same).map(|t| (stamp(&st), t));
            tracing::debug!(%path, built = built.is_some(), "chunk tree built ahead");
            *lock(&slot.built) = Some(built);
            slot.done.notify_all();
        });
    }

    /// The tree built ahead for `path`, if it was built from the version whose stat is
    /// `st` (waits for a build under way; blocking: call off the runtime). Taken: a
    /// later call gets none.
    pub fn take(&self, path: &RelPath, st: &libc::stat) -> Option<Tree> {
        let slot = {
            let mut slots = lock(&self.slots);
            let slot = slots.by_path.remove(path)?;
            slots.charged -= slot.charged;
            slot
        };
        let mut built = lock(&slot.built);
        while built.is_none() {
            built = slot.done.wait(built).unwrap_or_else(|e| e.into_inner());
        }
        let (was, tree) = built.take().flatten()?;
        let same = was == stamp(st);
        self.used.fetch_add(usize::from(same), Ordering::Relaxed);
        same.then_some(tree)
    }

    /// Trees held (built or being built).
    pub fn held(&self) -> usize {
        lock(&self.slots).by_path.len()
    }

    /// Trees taken for the version they were built from, so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Slots {
    /// Drops the trees built more than [`KEEP_FOR`] ago.
    fn drop_stale(&mut self) {
        let stale: Vec<RelPath> = (self.by_path.iter())
            .filter(|(_, s)| s.since.elapsed() > KEEP_FOR && lock(&s.built).is_some())
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            if let Some(s) = self.by_path.remove(&p) {
                self.charged -= s.charged;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::tests::text;
    use crate::sync::chunked::{Next, Rebuilds, EXCHANGED};
    use crate::wire::Message;

    fn rp(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    fn folder(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Arc<OwnedFd>) {
        let t = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(t.path().join(name), bytes).unwrap();
        }
        let root = OwnedFd::from(std::fs::File::open(t.path()).unwrap());
        (t, Arc::new(root))
    }

    fn stat(t: &tempfile::TempDir, name: &str) -> libc::stat {
        crate::sys::fstat(&std::fs::File::open(t.path().join(name)).unwrap()).unwrap()
    }

    fn tops(t: &Tree) -> Vec<(u64, u64)> {
        let top = t.level(t.depth() - 1);
        top.iter().map(|n| (n.hash, n.len)).collect()
    }

    #[tokio::test]
    async fn a_tree_built_ahead_is_taken_once_and_only_for_its_version() {
        let old = text(300_000, 1);
        let (t, root) = folder(&[("f", &old)]);
        let warm = Arc::new(Warm::default());
        warm.start(root.clone(), rp("f"), EXCHANGED);
        let tree = warm.take(&rp("f"), &stat(&t, "f")).expect("built ahead");
        assert_eq!(tops(&tree), tops(&Tree::from_bytes(&old)));
        assert!(warm.take(&rp("f"), &stat(&t, "f")).is_none(), "taken once");
        assert_eq!((warm.used(), warm.held()), (1, 0));

        warm.start(root.clone(), rp("f"), EXCHANGED);
        // (another size: a rewrite within the clock's tick could keep the times)
        std::fs::write(t.path().join("f"), text(300_001, 2)).unwrap();
        assert!(
            warm.take(&rp("f"), &stat(&t, "f")).is_none(),
            "another version"
        );
        // too small, or not there: nothing is built
        warm.start(root.clone(), rp("f"), 1..=10);
        warm.start(root, rp("nowhere"), EXCHANGED);
        assert_eq!((warm.used(), warm.held()), (1, 0));
    }

    #[tokio::test]
    async fn trees_built_ahead_stay_under_their_cap() {
        let (a, b) = (text(400_000, 1), text(400_000, 2));
        let (_t, root) = folder(&[("a", &a), ("b", &b)]);
        let one = crate::sync::sources::tree_memory(400_000);
        let warm = Arc::new(Warm::with_cap(one + one / 2));
        warm.start(root.clone(), rp("a"), EXCHANGED);
        warm.start(root.clone(), rp("a"), EXCHANGED); // held already
        warm.start(root, rp("b"), EXCHANGED); // past the cap
        assert_eq!(warm.held(), 1);
    }

    /// An offer of a file whose tree was built ahead is answered from that tree, the
    /// same as from a fresh read.
    #[tokio::test]
    async fn an_offer_is_answered_from_the_tree_built_ahead() {
        let old = text(1_500_000, 3);
        let mut new = old.clone();
        new[700_000..700_020].copy_from_slice(&text(20, 9));
        let (t, root) = folder(&[("f", &old)]);
        let tree = Tree::from_bytes(&new);
        let mut offers = crate::chunks::Offers::new(&tree);
        let top: Vec<_> = (offers.top().into_iter())
            .map(crate::sync::chunked::to_wire)
            .collect();
        let sketch = crate::chunks::sketch::encode(&tree, crate::chunks::sketch::CELLS);
        let mut update = crate::sync::hostile_tests::valid_update(7, "f", &new);
        update.ranges.clear();
        let answer = |warm: bool| {
            let mut rebuilds = Rebuilds::new(Arc::default());
            if warm {
                rebuilds.warm().start(root.clone(), rp("f"), EXCHANGED);
            }
            let next = rebuilds.offered(&*root, update.clone(), (&top, &sketch), |_| vec![]);
            let Next::Reply(m @ Message::ChunkPick { .. }) = next else {
                panic!("the sketch decodes");
            };
            (m, rebuilds.warm().used())
        };
        let (cold, none) = answer(false);
        let (warmed, used) = answer(true);
        assert_eq!((none, used), (0, 1));
        assert_eq!(cold, warmed);
        drop(t);
    }
}
