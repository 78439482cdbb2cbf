//! Mounting: clears a stale mount left by a killed daemon, mounts the adapter with the
//! options a user expects (allow_other, default_permissions) and unmounts on request.

use super::fuse::FuseAdapter;
use super::PassFs;
use fuser::{BackgroundSession, Config, MountOption, Notifier, SessionACL};
use std::path::Path;
use std::sync::Arc;

/// A live mount; unmounts when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    /// The passthrough behind the mount.
    pub fs: Arc<PassFs>,
}

impl Mounted {
    /// A handle to send cache invalidations to the kernel.
    pub fn notifier(&self) -> Option<Notifier> {
        self.session.as_ref().map(|s| s.notifier())
    }

    /// True once the session ended (e.g. an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts and waits for the session threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!("unmount on drop failed: {e}");
            }
        }
    }
}

/// If `mountpoint` is a dead FUSE mount (ENOTCONN), detaches it. Returns true if it did.
pub fn clear_stale(mountpoint: &Path) -> bool {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!("clearing stale mount at {}", mountpoint.display());
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok()
        }
        _ => false,
    }
}

/// Mounts `fs` at `mountpoint` with `threads` session threads.
pub fn mount(fs: Arc<PassFs>, mountpoint: &Path, threads: usize) -> std::io::Result<Mounted> {
    clear_stale(mountpoint);
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("syncfs".into()),
        MountOption::Subtype("syncfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(threads.max(1));
    let session = fuser::Session::new(FuseAdapter::new(fs.clone()), mountpoint, &cfg)?.spawn()?;
    Ok(Mounted { session: Some(session), fs })
}
