//! The gate: the applier holds a file while it replays a peer's update into the backing
//! store, and opens, reads and writes of that file through the mount wait until it is
//! released, so users of the mount never see a half-applied file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Files held against access through the mount, by backing inode number.
#[derive(Default)]
pub struct Gate {
    held: Mutex<HashSet<u64>>,
    released: Condvar,
    count: AtomicUsize,
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
}
