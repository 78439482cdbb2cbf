//! The gate: the applier holds a file while it replays a peer's update into the backing
//! store, and opens, reads and writes of that file through the mount wait until it is
//! released, so users of the mount never see a half-applied file.
//!
//! It also holds the names: while the applier decides on a peer's metadata op and
//! applies it, no create, rename, link or unlink goes through the mount. Otherwise a
//! local save renamed over a path between the decision ("ours is set aside") and the
//! peer's rename over that path would be replaced unseen, and lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Files held against access through the mount, by backing inode number.
#[derive(Default)]
pub struct Gate {
    held: Mutex<HashSet<u64>>,
    released: Condvar,
    count: AtomicUsize,
    names: Mutex<Names>,
    names_changed: Condvar,
}

/// Who holds the names: local ops (shared) or the applier (alone).
#[derive(Default)]
struct Names {
    shared: usize,
    alone: bool,
    /// The applier waits: new local ops wait behind it (it is not starved).
    waiting: usize,
}

/// A local op's share of the names (see the module docs), until dropped.
pub struct SharedNames<'a>(&'a Gate);

/// The applier's hold of the names, until dropped.
pub struct NamesGuard {
    gate: Arc<Gate>,
}

/// Holds one file until dropped.
pub struct HoldGuard {
    gate: Arc<Gate>,
    ino: u64,
}

impl Gate {
    /// Waits while `ino` is held (a lock-free check when nothing is held).
    pub fn wait(&self, ino: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap();
        while held.contains(&ino) {
            held = self.released.wait(held).unwrap();
        }
    }

    /// Holds `ino` (waiting for any other holder of it first).
    pub fn hold(self: &Arc<Self>, ino: u64) -> HoldGuard {
        let mut held = self.held.lock().unwrap();
        while held.contains(&ino) {
            held = self.released.wait(held).unwrap();
        }
        held.insert(ino);
        self.count.fetch_add(1, Ordering::Release);
        HoldGuard {
            gate: self.clone(),
            ino,
        }
    }
}

impl Gate {
    /// Shares the names with other local ops: waits while the applier holds them.
    pub fn names_shared(&self) -> SharedNames<'_> {
        let mut n = self.names.lock().unwrap();
        while n.alone || n.waiting > 0 {
            n = self.names_changed.wait(n).unwrap();
        }
        n.shared += 1;
        SharedNames(self)
    }

    /// Holds the names alone: waits for the local ops under way to finish.
    pub fn names_alone(self: &Arc<Self>) -> NamesGuard {
        let mut n = self.names.lock().unwrap();
        n.waiting += 1;
        while n.alone || n.shared > 0 {
            n = self.names_changed.wait(n).unwrap();
        }
        n.waiting -= 1;
        n.alone = true;
        NamesGuard { gate: self.clone() }
    }
}

impl Drop for SharedNames<'_> {
    fn drop(&mut self) {
        let mut n = self.0.names.lock().unwrap();
        n.shared -= 1;
        if n.shared == 0 {
            self.0.names_changed.notify_all();
        }
    }
}

impl Drop for NamesGuard {
    fn drop(&mut self) {
        self.gate.names.lock().unwrap().alone = false;
        self.gate.names_changed.notify_all();
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut held = self.gate.held.lock().unwrap();
        held.remove(&self.ino);
        self.gate.count.fetch_sub(1, Ordering::Release);
        self.gate.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_blocks_until_released() {
        let gate = Arc::new(Gate::default());
        gate.wait(7); // nothing held: returns at once
        let guard = gate.hold(7);
        let g2 = gate.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            g2.wait(7);
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        gate.wait(8); // another file is not held
        drop(guard);
        assert!(t.join().unwrap() >= Duration::from_millis(90));
    }

    #[test]
    fn local_ops_wait_while_the_applier_holds_the_names_and_it_waits_for_them() {
        let gate = Arc::new(Gate::default());
        let local = gate.names_shared();
        let g2 = gate.clone();
        let applier = std::thread::spawn(move || {
            let start = Instant::now();
            let held = g2.names_alone();
            let waited = start.elapsed();
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
            waited
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(local);
        assert!(applier.join().is_ok_and(|w| w >= Duration::from_millis(90)));
        drop(gate.names_shared()); // free again
        let alone = gate.names_alone();
        let g3 = gate.clone();
        let op = std::thread::spawn(move || {
            let start = Instant::now();
            let _s = g3.names_shared();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(alone);
        assert!(op.join().unwrap() >= Duration::from_millis(90));
    }
}
