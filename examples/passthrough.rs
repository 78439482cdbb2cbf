//! The mount's floor: syncfs's passthrough filesystem with nothing recorded
//! (`NullRecorder`: no journal, no sync), mounted the way the daemon mounts it.
//! `scripts/bench-fs.sh` runs each measure through it too, so that what FUSE itself costs
//! here shows beside the plain directory and the full daemon.
//!
//! Usage: `passthrough BACKING_DIR MOUNTPOINT`; unmounts on SIGTERM or SIGINT.
//! `PASSTHROUGH_THREADS` sets the FUSE session threads (4, the daemon's default).

use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use std::sync::Arc;
use syncfs::fs::mount::{mount, MountOpts};
use syncfs::fs::{FsOptions, NullRecorder, PassFs};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        anyhow::bail!("usage: passthrough BACKING_DIR MOUNTPOINT");
    };
    // Blocked before the session threads start, so that only `wait` below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    let fs = PassFs::new(
        backing,
        Arc::new(NullRecorder),
        FsOptions { writeback: true },
    )?;
    let opts = MountOpts {
        threads: std::env::var("PASSTHROUGH_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(4), // the daemon's default (`threads` in config.toml)
        suid: false,
        dev: false,
    };
    let mounted = mount(Arc::new(fs), mountpoint, opts)?;
    signals.wait()?;
    mounted.unmount()?;
    Ok(())
}
