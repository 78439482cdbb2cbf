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

use super::budget::PeerBudget;
use crate::chunks::Tree;
use crate::path::RelPath;
use std::collections::HashMap;
use std::fs::File;
use std::ops::RangeInclusive;
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

/// The trees built ahead for one peer's stream, charged to the peer's memory budget
/// while held.
pub struct Warm {
    slots: Mutex<Slots>,
    tasks: Mutex<JoinSet<()>>,
    cap: usize,
    budget: Arc<PeerBudget>,
    used: AtomicUsize,
}

impl Default for Warm {
    fn default() -> Self {
        Warm::new(WARM_BYTES, Arc::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends its slot when dropped, built or not: a `take` waiting on it never waits
/// forever (the build panicked, or its task never ran).
struct Finish(Arc<Slot>, Option<(Stamp, Tree)>);

impl Drop for Finish {
    fn drop(&mut self) {
        let mut built = lock(&self.0.built);
        if built.is_none() {
            *built = Some(self.1.take());
        }
        self.0.done.notify_all();
    }
}

/// Our file at `path` if it is a regular file of `sizes` (opened without blocking: a
/// FIFO put there is not waited on), and its tree's stamp.
fn open(root: &OwnedFd, path: &RelPath, sizes: &RangeInclusive<u64>) -> Option<(File, Stamp)> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = crate::beneath::open_beneath(root, path, flags, 0).ok()?;
    let st = crate::sys::fstat(&fd).ok()?;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    (regular && sizes.contains(&(st.st_size as u64))).then(|| (File::from(fd), stamp(&st)))
}

/// The tree of `file` if its stat is still `was` once read.
fn build(file: &File, was: Stamp) -> Option<(Stamp, Tree)> {
    let tree = Tree::from_reader(file).ok()?;
    let now = crate::sys::fstat(file).ok()?;
    (stamp(&now) == was).then_some((was, tree))
}

impl Warm {
    /// No trees yet; those held take at most `cap` bytes (`sources::tree_memory`),
    /// each charged to `budget` while held.
    pub fn new(cap: usize, budget: Arc<PeerBudget>) -> Warm {
        Warm {
            slots: Mutex::default(),
            tasks: Mutex::default(),
            cap,
            budget,
            used: AtomicUsize::new(0),
        }
    }

    /// Starts building the tree of our file at `path` (the peer's entry says `size`
    /// bytes; ours must be a regular file of `sizes`), unless one is held for it, the
    /// trees would pass the cap or the peer's budget. Call within the runtime; the
    /// open and the read run on a blocking thread.
    pub fn start(
        self: &Arc<Self>,
        root: Arc<OwnedFd>,
        path: RelPath,
        size: u64,
        sizes: RangeInclusive<u64>,
    ) {
        let charged = super::sources::tree_memory(size.min(*sizes.end()));
        let slot = Arc::new(Slot {
            built: Mutex::new(None),
            done: Condvar::new(),
            charged,
            since: Instant::now(),
        });
        {
            let mut slots = lock(&self.slots);
            self.drop_stale(&mut slots);
            let full = slots.charged + charged > self.cap;
            if slots.by_path.contains_key(&path) || full || !self.budget.take(charged) {
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
            let mut finish = Finish(slot, None);
            finish.1 = open(&root, &path, &sizes).and_then(|(f, was)| build(&f, was));
            tracing::debug!(%path, built = finish.1.is_some(), "chunk tree built ahead");
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
            self.budget.give(slot.charged);
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

impl Warm {
    /// Drops the trees built more than [`KEEP_FOR`] ago.
    fn drop_stale(&self, slots: &mut Slots) {
        let stale: Vec<RelPath> = (slots.by_path.iter())
            .filter(|(_, s)| s.since.elapsed() > KEEP_FOR && lock(&s.built).is_some())
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            if let Some(s) = slots.by_path.remove(&p) {
                slots.charged -= s.charged;
                self.budget.give(s.charged);
            }
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.budget.give(lock(&self.slots).charged);
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

    fn root_of(t: &tempfile::TempDir) -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(std::fs::File::open(t.path()).unwrap()))
    }

    fn stat(t: &tempfile::TempDir, name: &str) -> libc::stat {
        crate::sys::fstat(&std::fs::File::open(t.path().join(name)).unwrap()).unwrap()
    }

    fn tops(t: &Tree) -> Vec<(u64, u64)> {
        t.top_pairs()
    }

    #[tokio::test]
    async fn a_tree_built_ahead_is_taken_once_and_only_for_its_version() {
        let old = text(300_000, 1);
        let (t, root) = folder(&[("f", &old)]);
        let budget = Arc::new(PeerBudget::default());
        let warm = Arc::new(Warm::new(WARM_BYTES, budget.clone()));
        warm.start(root.clone(), rp("f"), 300_000, EXCHANGED);
        assert!(budget.held() > 0, "charged to the peer");
        let tree = warm.take(&rp("f"), &stat(&t, "f")).expect("built ahead");
        assert_eq!(tops(&tree), tops(&Tree::from_bytes(&old)));
        assert!(warm.take(&rp("f"), &stat(&t, "f")).is_none(), "taken once");
        assert_eq!((warm.used(), warm.held(), budget.held()), (1, 0, 0));

        warm.start(root.clone(), rp("f"), 300_000, EXCHANGED);
        std::thread::sleep(std::time::Duration::from_millis(300)); // built by now
                                                                   // (another size: a rewrite within the clock's tick could keep the times)
        std::fs::write(t.path().join("f"), text(300_001, 2)).unwrap();
        assert!(
            warm.take(&rp("f"), &stat(&t, "f")).is_none(),
            "another version"
        );
        // too small, or not there: nothing is built
        warm.start(root.clone(), rp("f"), 300_001, 1..=10);
        warm.start(root, rp("nowhere"), 300_000, EXCHANGED);
        assert!(warm.take(&rp("f"), &stat(&t, "f")).is_none());
        assert!(warm.take(&rp("nowhere"), &stat(&t, "f")).is_none());
        assert_eq!((warm.used(), warm.held(), budget.held()), (1, 0, 0));
        warm.start(root_of(&t), rp("f"), 300_001, EXCHANGED);
        drop(warm);
        assert_eq!(budget.held(), 0, "given back when dropped");
    }

    #[tokio::test]
    async fn trees_built_ahead_stay_under_their_cap() {
        let (a, b) = (text(400_000, 1), text(400_000, 2));
        let (_t, root) = folder(&[("a", &a), ("b", &b)]);
        let one = crate::sync::sources::tree_memory(400_000);
        let warm = Arc::new(Warm::new(one + one / 2, Arc::default()));
        warm.start(root.clone(), rp("a"), 400_000, EXCHANGED);
        warm.start(root.clone(), rp("a"), 400_000, EXCHANGED); // held already
        warm.start(root, rp("b"), 400_000, EXCHANGED); // past the cap
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
                rebuilds
                    .warm()
                    .start(root.clone(), rp("f"), new.len() as u64, EXCHANGED);
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
