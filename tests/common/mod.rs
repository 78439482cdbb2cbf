//! Test harness: stores in temp dirs, the real `syncfs` binary mounting them, and guards
//! that unmount (and kill) whatever a test mounted, even when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The syncfs binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_syncfs")
}

/// True if `path` is a mount point of a FUSE filesystem right now.
pub fn is_fuse_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, mp, ty) = (f.next(), f.next(), f.next());
        mp == Some(&*p) && ty.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Detaches whatever is mounted at `path` (ignores errors).
pub fn force_unmount(path: &Path) {
    let _ = Command::new("umount").arg("-l").arg(path).stderr(Stdio::null()).status();
}

/// Runs `syncfs` with arguments, panicking with its stderr on failure.
pub fn syncfs(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().expect("run syncfs");
    assert!(out.status.success(), "syncfs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One store and its mount point in a temp dir.
pub struct Node {
    /// Keeps the temp dir alive.
    pub tmp: tempfile::TempDir,
    /// The store directory.
    pub store: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A new store (not mounted).
    pub fn new() -> Node {
        Node::with_init(&[])
    }

    /// A new store, `init` given extra arguments.
    pub fn with_init(extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["init", store.to_str().unwrap()];
        args.extend_from_slice(extra);
        syncfs(&args);
        Node { tmp, store, mnt, child: None }
    }

    /// The backing data directory.
    pub fn data(&self) -> PathBuf {
        self.store.join("data")
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Starts `syncfs mount` and waits until the mount is up.
    pub fn mount(&mut self) {
        let log = std::fs::File::create(self.tmp.path().join("mount.log")).unwrap();
        let child = Command::new(bin())
            .args(["mount", self.store.to_str().unwrap(), self.mnt.to_str().unwrap()])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn syncfs mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // a stale mount left by a killed daemon answers ENOTCONN until the new one replaces it
        while syncfs::fs::mount::probe(&self.mnt) != syncfs::fs::mount::MountState::Live {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("syncfs mount exited early ({st}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "mount did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mount daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("mount.log")).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mounted").id()
    }

    /// Stops the daemon with SIGTERM and waits for a clean unmount.
    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "syncfs mount exited with {st}: {}", self.log());
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                force_unmount(&self.mnt);
                panic!("syncfs mount did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_fuse_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// Kills the daemon with SIGKILL (the mount stays behind, stale).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_fuse_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

/// Opens the store's journal in-process (the store must not be mounted).
pub fn journal_snapshot(store: &Path) -> syncfs::journal::Snapshot {
    let j = syncfs::journal::Journal::open(&store.join("journal")).expect("open journal");
    let s = j.snapshot();
    j.close().expect("close journal");
    s
}
