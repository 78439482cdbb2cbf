//! Mounting: clears a stale mount left by a killed daemon, mounts the adapter with the
//! options a user expects (allow_other, default_permissions) and unmounts on request.

use super::fuse::FuseAdapter;
use super::PassFs;
use crate::apply::ApplyHooks;
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

    /// The applier's view of this mount: hold a file, invalidate the kernel's caches.
    pub fn hooks(&self) -> MountHooks {
        MountHooks {
            fs: self.fs.clone(),
            notifier: self.notifier(),
            deferred: Arc::default(),
        }
    }

    /// True once the session ended (e.g. an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts and waits for the session threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => unmount_within(s, UNMOUNT_WAIT),
            None => Ok(()),
        }
    }
}

/// The applier's view of the local mount.
#[derive(Clone)]
pub struct MountHooks {
    fs: Arc<PassFs>,
    notifier: Option<Notifier>,
    /// Notices to the kernel held back while the applier holds the names: the kernel
    /// may need a directory lock that a local op waiting for the names holds.
    deferred: Arc<Mutex<Option<Vec<Notice>>>>,
}

/// One notice to the kernel (see [`ApplyHooks`]).
enum Notice {
    Inode(u64),
    Entry(u64, OsString),
    Grew(u64, u64, u8),
}

/// The applier's hold of the names; sends the deferred notices once released.
struct NamesHeld {
    guard: Option<super::gate::NamesGuard>,
    hooks: MountHooks,
}

impl Drop for NamesHeld {
    fn drop(&mut self) {
        let notices = self.hooks.deferred.lock().unwrap().take();
        drop(self.guard.take());
        for n in notices.into_iter().flatten() {
            self.hooks.send(n);
        }
    }
}

impl MountHooks {
    /// Sends `n` now, or keeps it for later while the names are held.
    fn notice(&self, n: Notice) {
        match self.deferred.lock().unwrap().as_mut() {
            Some(later) => later.push(n),
            None => self.send(n),
        }
    }

    fn send(&self, n: Notice) {
        let Some(no) = &self.notifier else { return };
        let fuse = |b| INodeNo(self.fs.fuse_ino(b));
        let _ = match n {
            Notice::Inode(ino) => no.inval_inode(fuse(ino), 0, 0),
            Notice::Entry(parent, name) => no.inval_entry(fuse(parent), &name),
            Notice::Grew(ino, size, last) => no.store(fuse(ino), size - 1, &[last]),
        };
    }
}

impl ApplyHooks for MountHooks {
    fn hold(&self, backing_ino: u64) -> Box<dyn std::any::Any + Send> {
        Box::new(self.fs.hold(backing_ino))
    }
    fn names(&self) -> Box<dyn std::any::Any + Send> {
        let guard = self.fs.names_alone();
        *self.deferred.lock().unwrap() = Some(Vec::new());
        Box::new(NamesHeld {
            guard: Some(guard),
            hooks: self.clone(),
        })
    }
    fn invalidate_inode(&self, backing_ino: u64) {
        self.notice(Notice::Inode(backing_ino));
    }
    fn invalidate_entry(&self, parent_backing_ino: u64, name: &OsStr) {
        self.notice(Notice::Entry(parent_backing_ino, name.to_os_string()));
    }
    fn grew(&self, backing_ino: u64, size: u64, last: u8) {
        self.notice(Notice::Grew(backing_ino, size, last));
    }
}

/// How long `unmount` waits for the session threads to end.
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Unmounts and joins the session threads, but gives up waiting after `wait`: when
/// another mount namespace still holds the mount (a container or `unshare -m` started
/// while mounted), the kernel keeps the connection and the threads would wait forever.
/// The caller then exits, and closing `/dev/fuse` ends the connection.
fn unmount_within(s: BackgroundSession, wait: std::time::Duration) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(s.umount_and_join());
    });
    match rx.recv_timeout(wait) {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!("unmounted, but the FUSE connection is still held elsewhere (another mount namespace?); leaving it to process exit");
            Ok(())
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = unmount_within(s, UNMOUNT_WAIT) {
                tracing::warn!("unmount on drop failed: {e}");
            }
        }
    }
}

/// What is at a mount point before we mount.
#[derive(Debug, PartialEq, Eq)]
pub enum MountState {
    /// No FUSE filesystem is mounted there.
    Free,
    /// A FUSE mount whose daemon is gone (it answers ENOTCONN).
    Stale,
    /// A live FUSE mount: another daemon serves it.
    Live,
}

/// True if `/proc/self/mountinfo` lists a FUSE mount at `path`.
pub fn fuse_mounted_at(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1));
        f.get(4) == Some(&&*want) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Probes `mountpoint`. `statfs` always reaches the daemon (a `stat` may be answered
/// from the kernel's attribute cache even after the daemon died).
pub fn probe(mountpoint: &Path) -> MountState {
    if !fuse_mounted_at(mountpoint) {
        return MountState::Free;
    }
    match nix::sys::statfs::statfs(mountpoint) {
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::ECONNABORTED) => {
            MountState::Stale
        }
        _ => MountState::Live,
    }
}

/// Detaches a stale mount left by a killed daemon; refuses to mount over a live one.
pub fn clear_stale(mountpoint: &Path) -> std::io::Result<()> {
    match probe(mountpoint) {
        MountState::Free => Ok(()),
        MountState::Live => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "{} is already mounted by a running syncfs (or another FUSE daemon)",
                mountpoint.display()
            ),
        )),
        MountState::Stale => {
            tracing::warn!(
                "clearing stale mount at {} left by a killed daemon",
                mountpoint.display()
            );
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .map_err(std::io::Error::from)
        }
    }
}

/// How to mount.
#[derive(Clone, Copy, Debug, Default)]
pub struct MountOpts {
    /// FUSE session threads.
    pub threads: usize,
    /// Honour setuid/setgid bits (`suid`; `nosuid` otherwise).
    pub suid: bool,
    /// Honour device nodes (`dev`; `nodev` otherwise).
    pub dev: bool,
}

/// Mounts `fs` at `mountpoint`.
pub fn mount(fs: Arc<PassFs>, mountpoint: &Path, opts: MountOpts) -> std::io::Result<Mounted> {
    let mountpoint = &absolute(mountpoint)?;
    clear_stale(mountpoint)?;
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("syncfs".into()),
        MountOption::Subtype("syncfs".into()),
        MountOption::DefaultPermissions,
        if opts.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if opts.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(opts.threads.max(1));
    let session = fuser::Session::new(FuseAdapter::new(fs.clone()), mountpoint, &cfg)?.spawn()?;
    raise_readahead(mountpoint);
    Ok(Mounted {
        session: Some(session),
        fs,
    })
}

/// Readahead for reads through the mount, in KiB. The kernel offers FUSE 128 KiB; at
/// 1 MiB a cold sequential read through the mount went from 622 to 1,240 MiB/s here.
const READAHEAD_KIB: u32 = 1024;

/// Sets the mount's readahead (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`); a failure
/// (no sysfs, not root) only costs speed.
fn raise_readahead(mountpoint: &Path) {
    let dev = match nix::sys::stat::stat(mountpoint) {
        Ok(st) => st.st_dev,
        Err(e) => return tracing::debug!("readahead: stat {}: {e}", mountpoint.display()),
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, READAHEAD_KIB.to_string()) {
        tracing::debug!("readahead: {knob}: {e}");
    }
}

/// The absolute path of `p` without touching `p` itself (a stale mount answers ENOTCONN).
fn absolute(p: &Path) -> std::io::Result<std::path::PathBuf> {
    let name = p
        .file_name()
        .ok_or_else(|| std::io::Error::other("mount point has no name"))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.canonicalize()?,
        _ => std::env::current_dir()?,
    };
    Ok(parent.join(name))
}
