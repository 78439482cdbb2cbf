//! Replaying metadata operations: idempotent (an op applied twice, e.g. resent after a
//! crash before its ack, leaves the same state), beneath the root, never following a
//! symlink, durable before `Ok`.

use super::trees::Stamp;
use super::{is, os_err, reopen_writable, Applier, ApplyError};
use crate::beneath::{open_beneath, open_parent};
use crate::journal::op::{MetaOp, SetTime};
use crate::path::RelPath;
use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

type Res = Result<(), ApplyError>;

/// Permission bits a peer may set: never setuid or setgid (a peer could otherwise plant
/// a root-owned setuid binary that any local user runs).
pub fn peer_perm(mode: u32) -> u32 {
    mode & 0o1777
}

/// Extended attribute namespaces a peer may not touch: file capabilities, SELinux
/// labels and other security state (`security.*`), and root-only data (`trusted.*`).
fn forbidden_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

fn refuse_xattr(path: &RelPath, name: &[u8]) -> Res {
    if forbidden_xattr(name) {
        return Err(ApplyError::BadRequest(format!(
            "{path}: xattr {} refused (security.* and trusted.* are never taken from peers)",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// The renameat2 flags a peer may ask for.
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn cstr(b: &[u8], what: &str) -> Result<CString, ApplyError> {
    CString::new(b).map_err(|_| ApplyError::BadRequest(format!("NUL byte in {what}")))
}

/// An xattr name from the peer: refused if it holds a NUL byte.
fn xattr_name(b: &[u8]) -> Result<&OsStr, ApplyError> {
    if b.contains(&0) {
        return Err(ApplyError::BadRequest("NUL byte in an xattr name".into()));
    }
    Ok(OsStr::from_bytes(b))
}

/// A directory entry an op works on: its directory and name.
pub(super) struct Entry {
    pub(super) dir: OwnedFd,
    pub(super) name: OsString,
}

impl Entry {
    fn exists(&self) -> bool {
        sys::fstatat(&self.dir, &self.name).is_ok()
    }
}

/// An existing node an attribute op works on.
struct Node {
    pfd: OwnedFd,
    st: libc::stat,
}

impl Node {
    fn is_symlink(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

impl Applier {
    /// Applies one metadata operation idempotently.
    pub fn apply_meta(&self, op: &MetaOp) -> Result<(), ApplyError> {
        let _serial = self.lock();
        match op {
            MetaOp::Create { path, mode, .. } => {
                // mknod(S_IFREG) creates without opening, so an existing file is never
                // truncated and a mode without u+w is no obstacle.
                let perm = peer_perm(*mode);
                self.make(path, "create", perm, |d, n| {
                    sys::mknodat(d, n, libc::S_IFREG | perm, 0)
                })
            }
            MetaOp::Mknod { path, mode, rdev } => {
                let kind = mode & libc::S_IFMT;
                if !matches!(kind, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFREG) {
                    // Device nodes from a peer would give it raw access to this machine's
                    // devices (if we run privileged): refused.
                    return Err(ApplyError::BadRequest(format!(
                        "{path}: mknod of type {kind:o} refused (only fifos, sockets and files)"
                    )));
                }
                let perm = peer_perm(*mode);
                self.make(path, "mknod", perm, |d, n| {
                    sys::mknodat(d, n, kind | perm, *rdev)
                })
            }
            MetaOp::Mkdir { path, mode } => {
                let perm = peer_perm(*mode);
                self.make(path, "mkdir", perm, |d, n| sys::mkdirat(d, n, perm))
            }
            MetaOp::Symlink { path, target } => {
                if target.is_empty() {
                    return Err(ApplyError::BadRequest(format!(
                        "{path}: empty symlink target"
                    )));
                }
                cstr(target, "a symlink target")?;
                let target = OsStr::from_bytes(target);
                self.make(path, "symlink", 0, |d, n| sys::symlinkat(target, d, n))
            }
            MetaOp::Unlink { path, .. } => self.remove(path, false),
            MetaOp::Rmdir { path } => self.remove(path, true),
            MetaOp::Rename { from, to, flags } => self.rename(from, to, *flags),
            MetaOp::Link { from, to } => self.link(from, to),
            MetaOp::Chmod { path, mode } => self.attr(path, "chmod", |_, n| {
                if n.is_symlink() {
                    // Linux has no symlink permissions; nothing to do.
                    return Ok(());
                }
                sys::chmod_fd(&n.pfd, peer_perm(*mode)).map_err(os_err)
            }),
            MetaOp::Chown { path, uid, gid } => self.chown(path, *uid, *gid),
            MetaOp::Truncate { path, size, .. } => self.truncate(path, *size),
            MetaOp::Utimens { path, atime, mtime } => self.attr(path, "utimens", |a, n| {
                let times = [SetTime::to_timespec(*atime), SetTime::to_timespec(*mtime)];
                if !n.is_symlink() {
                    return sys::utimens_fd(&n.pfd, &times).map_err(os_err);
                }
                let e = a.entry(path)?;
                sys::utimensat_nofollow(&e.dir, &e.name, &times).map_err(os_err)
            }),
            MetaOp::SetXattr {
                path, name, value, ..
            } => {
                refuse_xattr(path, name)?;
                let cname = xattr_name(name)?;
                // The op's flags (XATTR_CREATE / XATTR_REPLACE) held on the sender when it
                // ran; on a replay they would fail where the op already took effect, so
                // the value is simply set: the resulting state is the same.
                self.attr(path, "setxattr", |a, n| {
                    a.with_xattr_path(path, n, |p, follow| {
                        sys::setxattr_path(p, cname, value, follow).map_err(os_err)
                    })
                })
            }
            MetaOp::RemoveXattr { path, name } => {
                refuse_xattr(path, name)?;
                let cname = xattr_name(name)?;
                self.attr(path, "removexattr", |a, n| {
                    a.with_xattr_path(path, n, |p, follow| {
                        match sys::removexattr_path(p, cname, follow) {
                            Err(sys::Errno(libc::ENODATA)) => Ok(()), // already gone
                            r => r.map_err(os_err),
                        }
                    })
                })
            }
        }
    }

    /// The entry's directory (readable if we may, so that it can be fsynced) and name.
    pub(super) fn entry(&self, path: &RelPath) -> io::Result<Entry> {
        let Some((parent, name)) = path.split_last() else {
            return open_parent(&self.root, path).map(|(dir, name)| Entry { dir, name });
        };
        let dir = match open_beneath(&self.root, &parent, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(e) if is(&e, libc::EACCES) => {
                open_beneath(&self.root, &parent, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            r => r?,
        };
        Ok(Entry {
            dir,
            name: name.to_os_string(),
        })
    }

    /// After a namespace change in `e.dir`: durable, and the kernel's dentry dropped.
    pub(super) fn entry_changed(&self, path: &RelPath, e: &Entry) -> Res {
        self.sync_dir(&e.dir)
            .map_err(|err| ApplyError::io("fsync the directory of", path, err))?;
        if let Ok(st) = sys::fstat(&e.dir) {
            self.hooks.invalidate_entry(st.st_ino, &e.name);
        }
        Ok(())
    }

    /// Create / Mknod / Mkdir / Symlink: an existing entry counts as applied (EEXIST).
    /// A new node gets exactly `perm` (no umask); symlinks have none.
    fn make(
        &self,
        path: &RelPath,
        what: &'static str,
        perm: u32,
        create: impl FnOnce(&OwnedFd, &OsStr) -> Result<(), crate::sys::Errno>,
    ) -> Res {
        let e = self
            .entry(path)
            .map_err(|err| ApplyError::resolve(what, path, err))?;
        match create(&e.dir, &e.name) {
            Ok(()) => {
                if what != "symlink" {
                    let set = sys::open_path(&e.dir, &e.name).and_then(|n| sys::chmod_fd(&n, perm));
                    set.map_err(|err| ApplyError::io("chmod", path, os_err(err)))?;
                }
            }
            Err(crate::sys::Errno(libc::EEXIST)) => {
                tracing::debug!("{what} {path}: exists already (op replayed)");
            }
            Err(err) => return Err(ApplyError::resolve(what, path, os_err(err))),
        }
        self.entry_changed(path, &e)
    }

    /// Unlink / Rmdir: a missing entry (or directory) counts as applied.
    fn remove(&self, path: &RelPath, dir: bool) -> Res {
        let what = if dir { "rmdir" } else { "unlink" };
        let e = match self.entry(path) {
            Err(err) if matches!(errno(&err), libc::ENOENT | libc::ENOTDIR) => {
                tracing::debug!("{what} {path}: its directory is gone already (op replayed)");
                return Ok(());
            }
            r => r.map_err(|err| ApplyError::resolve(what, path, err))?,
        };
        match sys::unlinkat(&e.dir, &e.name, dir) {
            Ok(()) => {}
            Err(crate::sys::Errno(libc::ENOENT)) => {
                tracing::debug!("{what} {path}: gone already (op replayed)");
                return Ok(());
            }
            // ENOTEMPTY included: the peer removed the directory's contents first, so a
            // non-empty one here means the two sides disagree.
            Err(err) => return Err(ApplyError::io(what, path, os_err(err))),
        }
        self.entry_changed(path, &e)
    }

    /// Rename: a missing source with an existing target counts as applied.
    /// (`RENAME_EXCHANGE` cannot be recognised as applied: replaying it swaps back.)
    fn rename(&self, from: &RelPath, to: &RelPath, flags: u32) -> Res {
        if flags & !RENAME_FLAGS != 0 {
            return Err(ApplyError::BadRequest(format!(
                "rename {from} -> {to}: flags {flags:#x} refused"
            )));
        }
        let dst = self
            .entry(to)
            .map_err(|e| ApplyError::resolve("rename to", to, e))?;
        let src = match self.entry(from) {
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) && dst.exists() => {
                tracing::debug!("rename {from} -> {to}: applied already");
                return Ok(());
            }
            r => r.map_err(|e| ApplyError::resolve("rename from", from, e))?,
        };
        match sys::renameat2(&src.dir, &src.name, &dst.dir, &dst.name, flags) {
            Ok(()) => {}
            Err(crate::sys::Errno(libc::ENOENT | libc::EEXIST))
                if !src.exists() && dst.exists() =>
            {
                tracing::debug!("rename {from} -> {to}: applied already");
                return Ok(());
            }
            Err(e) => return Err(ApplyError::resolve("rename from", from, os_err(e))),
        }
        self.entry_changed(from, &src)?;
        self.entry_changed(to, &dst)
    }

    /// Hard link `to` → the inode named `from` (not following a symlink `from`): an
    /// existing `to` counts as applied.
    fn link(&self, from: &RelPath, to: &RelPath) -> Res {
        let dst = self
            .entry(to)
            .map_err(|e| ApplyError::resolve("link to", to, e))?;
        let src = match self.entry(from) {
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) && dst.exists() => {
                return Ok(())
            }
            r => r.map_err(|e| ApplyError::resolve("link from", from, e))?,
        };
        match sys::linkat(&src.dir, &src.name, &dst.dir, &dst.name).map_err(os_err) {
            Ok(()) => {}
            Err(e) if is(&e, libc::EEXIST) => {
                tracing::debug!("link {from} -> {to}: exists already (op replayed)");
                return Ok(());
            }
            Err(e) if is(&e, libc::ENOENT) && dst.exists() => return Ok(()),
            Err(e) => return Err(ApplyError::resolve("link from", from, e)),
        }
        if let Ok(st) = sys::fstatat(&src.dir, &src.name) {
            self.hooks.invalidate_inode(st.st_ino); // its link count changed
        }
        self.entry_changed(to, &dst)
    }

    /// An attribute op on an existing node (the root included). A missing node counts as
    /// applied: a later op, already replayed, removed it.
    /// Ownership from the peer: only with `sync_ownership`, and never to uid or gid 0.
    fn chown(&self, path: &RelPath, uid: Option<u32>, gid: Option<u32>) -> Res {
        if !self.sync_ownership {
            tracing::debug!("chown {path}: ignored (sync_ownership is off)");
            return Ok(());
        }
        if uid == Some(0) || gid == Some(0) {
            return Err(ApplyError::BadRequest(format!(
                "{path}: chown to uid or gid 0 refused"
            )));
        }
        self.attr(path, "chown", |_, n| {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            sys::chown_fd(&n.pfd, u, g).map_err(os_err)
        })
    }

    fn attr(
        &self,
        path: &RelPath,
        what: &'static str,
        f: impl FnOnce(&Self, &Node) -> io::Result<()>,
    ) -> Res {
        if path.is_root() {
            return Err(ApplyError::BadRequest(format!(
                "{what} on the folder root refused"
            )));
        }
        let Some(node) = self.node(path, what)? else {
            return Ok(());
        };
        match f(self, &node) {
            Ok(()) => {}
            Err(e) if is(&e, libc::ENOENT) => {
                tracing::debug!("{what} {path}: gone (removed by a later op)");
                return Ok(());
            }
            Err(e) => return Err(ApplyError::io(what, path, e)),
        }
        self.attr_changed(path, &node)
    }

    fn node(&self, path: &RelPath, what: &'static str) -> Result<Option<Node>, ApplyError> {
        let pfd = match open_beneath(&self.root, path, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => {
                tracing::debug!("{what} {path}: gone (removed by a later op)");
                return Ok(None);
            }
            Err(e) => return Err(ApplyError::resolve(what, path, e)),
        };
        let st = sys::fstat(&pfd).map_err(|e| ApplyError::io("stat", path, os_err(e)))?;
        Ok(Some(Node { pfd, st }))
    }

    fn attr_changed(&self, path: &RelPath, n: &Node) -> Res {
        self.sync_node(&n.pfd, &n.st)
            .map_err(|e| ApplyError::io("fsync", path, e))?;
        if let Ok(after) = sys::fstat(&n.pfd) {
            // attributes only: the content, and so its hash tree, is unchanged
            self.trees.restamp(&Stamp::of(&n.st), Stamp::of(&after));
        }
        self.hooks.invalidate_inode(n.st.st_ino);
        self.drop_name(path);
        Ok(())
    }

    /// With the writeback cache the kernel keeps its own size and mtime of a cached
    /// regular file: dropping the name lets an inode nobody holds open be evicted.
    fn drop_name(&self, path: &RelPath) {
        if let Ok((dir, name)) = open_parent(&self.root, path) {
            if let Ok(st) = sys::fstat(&dir) {
                self.hooks.invalidate_entry(st.st_ino, &name);
            }
        }
    }

    /// Runs `f` with the path for the xattr calls and whether to follow it: the node
    /// itself through its `/proc/self/fd` magic link (followed), or for a symlink (which
    /// that would follow to its target) its name under its directory's fd, not followed.
    fn with_xattr_path(
        &self,
        path: &RelPath,
        n: &Node,
        f: impl FnOnce(&CString, bool) -> io::Result<()>,
    ) -> io::Result<()> {
        let einval = |_| io::Error::from_raw_os_error(libc::EINVAL);
        if !n.is_symlink() {
            let p = CString::new(format!("/proc/self/fd/{}", n.pfd.as_raw_fd())).map_err(einval)?;
            return f(&p, true);
        }
        let e = self.entry(path)?;
        let mut v = format!("/proc/self/fd/{}/", e.dir.as_raw_fd()).into_bytes();
        v.extend_from_slice(e.name.as_bytes());
        f(&CString::new(v).map_err(einval)?, false)
    }

    /// Truncate (or extend) a regular file.
    fn truncate(&self, path: &RelPath, size: u64) -> Res {
        if size > self.max_file_size {
            return Err(ApplyError::BadRequest(format!(
                "{path}: size {size} too large"
            )));
        }
        let Some(node) = self.node(path, "truncate")? else {
            return Ok(());
        };
        if node.st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ApplyError::BadRequest(format!(
                "{path}: truncate of a non-regular file"
            )));
        }
        let (file, restore) = reopen_writable(&node.pfd, &node.st, libc::O_WRONLY)
            .map_err(|e| ApplyError::io("opening", path, e))?;
        let res = file.set_len(size).and_then(|()| file.sync_all());
        if let Some(mode) = restore {
            let _ = sys::chmod_fd(&node.pfd, mode);
        }
        res.map_err(|e| ApplyError::io("truncating", path, e))?;
        self.hooks.invalidate_inode(node.st.st_ino);
        if size > node.st.st_size as u64 {
            self.hooks.grew(node.st.st_ino, size, 0); // the extension is zeros
        }
        self.drop_name(path);
        Ok(())
    }
}
