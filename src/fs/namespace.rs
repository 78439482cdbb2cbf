//! Namespace and attribute operations: lookup, getattr/setattr, creation and removal of
//! names, rename, links, directories, statfs and extended attributes.

use super::handle::DirHandle;
use super::inode::Inode;
use super::{sys, Ctx, FsError, PassFs, SetAttr};
use crate::journal::op::MetaOp;
use crate::journal::op::SetTime;
use crate::path::RelPath;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

type R<T> = Result<T, FsError>;

impl PassFs {
    /// Looks up `name` in `parent`; returns (FUSE ino, stat) and takes a kernel reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> R<(u64, libc::stat)> {
        let p = self.inodes.get(parent)?;
        self.inodes.lookup(&p, name)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> R<libc::stat> {
        sys::fstat(&self.inodes.get(ino)?.fd).map_err(FsError::from)
    }

    /// Applies attribute changes, recording each, and returns the new attributes.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, a: &SetAttr) -> R<libc::stat> {
        let inode = self.inodes.get(ino)?;
        let path = self.live_path(&inode)?;
        if let Some(mode) = a.mode {
            sys::chmod_fd(&inode.fd, mode & 0o7777)?;
            self.log(&path, |path| MetaOp::Chmod {
                path,
                mode: mode & 0o7777,
            })?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::chown_fd(
                &inode.fd,
                a.uid.unwrap_or(u32::MAX),
                a.gid.unwrap_or(u32::MAX),
            )?;
            self.log(&path, |path| MetaOp::Chown {
                path,
                uid: a.uid,
                gid: a.gid,
            })?;
        }
        if let Some(size) = a.size {
            if a.kill_priv {
                self.kill_priv(&inode)?;
            }
            self.truncate(&inode, fh, &path, size)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            self.utimens(&inode, fh, &path, a)?;
        }
        sys::fstat(&inode.fd).map_err(FsError::from)
    }

    /// Records a metadata op on a file that still has a name (an unlinked one has none).
    fn log(&self, path: &Option<RelPath>, op: impl FnOnce(RelPath) -> MetaOp) -> R<()> {
        match path {
            Some(p) => self.rec.meta(op(p.clone())).map_err(Into::into),
            None => Ok(()),
        }
    }

    fn truncate(&self, inode: &Inode, fh: Option<u64>, path: &Option<RelPath>, size: u64) -> R<()> {
        let file = inode.backing_ino;
        if let Some(p) = path {
            self.rec.track(file, p)?;
        }
        let cur = sys::fstat(&inode.fd)?.st_size as u64;
        let _done = super::WriteDone(&*self.rec, file);
        // the new zeros are changed bytes too; a cut is in flight until done as well
        let (a, b) = if size > cur {
            (cur, size)
        } else {
            (size, size)
        };
        self.rec.write(file, a, b)?;
        self.save_cut(inode, size);
        self.rec.size(file, size)?; // before the backing change: covered even after a kill
        match fh.map(|fh| self.files.get(fh)).transpose()? {
            Some(h) if h.writable => sys::ftruncate(&h.file, size)?,
            _ => sys::ftruncate(&sys::reopen(&inode.fd, libc::O_WRONLY)?, size)?,
        }
        self.log(path, |path| MetaOp::Truncate { path, file, size })
    }

    fn utimens(
        &self,
        inode: &Inode,
        fh: Option<u64>,
        path: &Option<RelPath>,
        a: &SetAttr,
    ) -> R<()> {
        let times = [SetTime::to_timespec(a.atime), SetTime::to_timespec(a.mtime)];
        match (fh.map(|fh| self.files.get(fh)).transpose()?, path) {
            (Some(h), _) => sys::futimens(&h.file, &times)?,
            (None, Some(p)) if inode.kind == libc::S_IFLNK => self.utimens_symlink(p, &times)?,
            (None, None) if inode.kind == libc::S_IFLNK => {
                return Err(FsError::errno(libc::ENOENT))
            }
            (None, _) => sys::utimens_fd(&inode.fd, &times)?,
        }
        self.log(path, |path| MetaOp::Utimens {
            path,
            atime: a.atime,
            mtime: a.mtime,
        })
    }

    /// A symlink's own times: `utimensat(dir, name, AT_SYMLINK_NOFOLLOW)` under its parent.
    fn utimens_symlink(&self, path: &RelPath, times: &[libc::timespec; 2]) -> R<()> {
        let root = self.inodes.get(super::inode::ROOT_INO)?;
        let (dir, name) = crate::beneath::open_parent(&root.fd, path)?;
        sys::utimensat_nofollow(&dir, &name, times).map_err(FsError::from)
    }

    /// Target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> R<Vec<u8>> {
        sys::readlink_fd(&self.inodes.get(ino)?.fd).map_err(FsError::from)
    }

    /// Gives a freshly created `name` in `parent` to the caller and looks it up.
    pub(super) fn adopt(
        &self,
        ctx: Ctx,
        parent: &Arc<Inode>,
        name: &OsStr,
    ) -> R<(u64, libc::stat)> {
        let (ino, st) = self.inodes.lookup(parent, name)?;
        if !self.is_root || (ctx.uid == 0 && ctx.gid == 0) {
            return Ok((ino, st));
        }
        let pst = sys::fstat(&parent.fd)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            ctx.gid
        };
        let inode = self.inodes.get(ino)?;
        sys::chown_fd(&inode.fd, ctx.uid, gid)?;
        Ok((ino, sys::fstat(&inode.fd)?))
    }

    /// Drops setuid (and setgid with group-execute) and `security.capability`, recording
    /// what changed: what the kernel does for unprivileged writers and truncaters.
    pub(super) fn kill_priv(&self, inode: &Inode) -> R<()> {
        let st = sys::fstat(&inode.fd)?;
        let mut kill = libc::S_ISUID;
        if st.st_mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        let path = self.rel_path(inode)?;
        if st.st_mode & kill != 0 {
            let mode = st.st_mode & 0o7777 & !kill;
            sys::chmod_fd(&inode.fd, mode)?;
            self.rec.meta(MetaOp::Chmod {
                path: path.clone(),
                mode,
            })?;
        }
        let caps = OsStr::new("security.capability");
        match sys::removexattr(&inode.fd, caps) {
            Ok(()) => self.rec.meta(MetaOp::RemoveXattr {
                path,
                name: caps.as_bytes().to_vec(),
            })?,
            Err(sys::Errno(libc::ENODATA | libc::EOPNOTSUPP)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Records the owner of a new file when it is not root's, so the peer matches it.
    pub(super) fn record_owner(&self, path: &crate::path::RelPath, st: &libc::stat) -> R<()> {
        if st.st_uid == 0 && st.st_gid == 0 {
            return Ok(());
        }
        let op = MetaOp::Chown {
            path: path.clone(),
            uid: Some(st.st_uid),
            gid: Some(st.st_gid),
        };
        self.rec.meta(op).map_err(Into::into)
    }

    /// Creates a special file (fifo, socket, device) or an empty regular file.
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> R<(u64, libc::stat)> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let path = self.child_path(&p, name)?;
        sys::mknodat(&p.fd, name, mode, rdev)?;
        let (ino, st) = self.adopt(ctx, &p, name)?;
        let op = if mode & libc::S_IFMT == libc::S_IFREG {
            self.rec.track(st.st_ino, &path)?;
            MetaOp::Create {
                path: path.clone(),
                file: st.st_ino,
                mode: mode & 0o7777,
            }
        } else {
            MetaOp::Mknod {
                path: path.clone(),
                mode,
                rdev,
            }
        };
        self.rec.meta(op)?;
        self.record_owner(&path, &st)?;
        Ok((ino, st))
    }

    /// Creates a directory.
    pub fn mkdir(&self, ctx: Ctx, parent: u64, name: &OsStr, mode: u32) -> R<(u64, libc::stat)> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let path = self.child_path(&p, name)?;
        sys::mkdirat(&p.fd, name, mode)?;
        let (ino, st) = self.adopt(ctx, &p, name)?;
        self.rec.meta(MetaOp::Mkdir {
            path: path.clone(),
            mode: mode & 0o7777,
        })?;
        self.record_owner(&path, &st)?;
        Ok((ino, st))
    }

    /// Creates a symbolic link `parent/name -> target`.
    pub fn symlink(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> R<(u64, libc::stat)> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let path = self.child_path(&p, name)?;
        sys::symlinkat(target, &p.fd, name)?;
        let (ino, st) = self.adopt(ctx, &p, name)?;
        self.rec.meta(MetaOp::Symlink {
            path: path.clone(),
            target: target.as_bytes().to_vec(),
        })?;
        self.record_owner(&path, &st)?;
        Ok((ino, st))
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> R<()> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let st = sys::fstatat(&p.fd, name)?;
        let path = self.child_path(&p, name)?;
        let last_link = st.st_nlink <= 1 && st.st_mode & libc::S_IFMT != libc::S_IFDIR;
        let before = self.before_unlink(&p.fd, name, &path, &st);
        let unlinked = sys::unlinkat(&p.fd, name, false).map_err(FsError::from);
        let saved = unlinked.and_then(|()| {
            let op = MetaOp::Unlink {
                path: path.clone(),
                file: st.st_ino,
                last_link,
            };
            self.rec.unlinked(op).map_err(FsError::from)
        });
        let new = saved.as_ref().ok().copied().flatten();
        self.after_unlink(&st, last_link, before, new)?;
        saved?;
        if !last_link && self.rec.lost_name(st.st_ino, &path) {
            self.find_other_name(&p, &path, st.st_ino)?;
        }
        Ok(())
    }

    /// The journal knew `file` only by `gone` (a hard link made outside the mount
    /// remains): tracks a remaining name in the same directory, where tools such as
    /// git put them (link the temp file to its final name, unlink the temp name).
    fn find_other_name(&self, dir: &Inode, gone: &RelPath, file: u64) -> R<()> {
        match super::longpath::find_name(&dir.fd, file)? {
            Some(name) => {
                let (parent, _) = gone.split_last().ok_or(FsError::errno(libc::EINVAL))?;
                let path = parent
                    .join(OsStr::from_bytes(&name))
                    .map_err(|_| FsError::errno(libc::EINVAL))?;
                self.rec.track(file, &path).map_err(Into::into)
            }
            None => {
                tracing::warn!(file, path = %gone.as_path().display(),
                    "unlinked the only known name of a file that keeps other links; \
                     its pending data waits until it is written or opened again");
                Ok(())
            }
        }
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> R<()> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let p = self.inodes.get(parent)?;
        let path = self.child_path(&p, name)?;
        sys::unlinkat(&p.fd, name, true)?;
        self.rec.meta(MetaOp::Rmdir { path }).map_err(Into::into)
    }

    /// Renames, honouring RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> R<()> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let (p, np) = (self.inodes.get(parent)?, self.inodes.get(newparent)?);
        let from = self.child_path(&p, name)?;
        let to = self.child_path(&np, newname)?;
        let replaced = sys::fstatat(&np.fd, newname).ok();
        let held = self.hold_replaced(&p.fd, name, &np.fd, newname, replaced.as_ref(), flags);
        if let Err(e) = sys::renameat2(&p.fd, name, &np.fd, newname, flags) {
            if let (Some(pre), Some((_, _, h))) = (&self.pre, held) {
                pre.drop_held(h);
            }
            return Err(e.into());
        }
        self.after_replace(&np.fd, newname, replaced.as_ref(), flags, held);
        self.inodes.renamed(&np, newname);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.inodes.renamed(&p, name);
        }
        // A replaced entry other than a directory is recorded as unlinked first: the
        // journal then knows a rename's target was free when no such unlink precedes
        // it (see `journal::cancel`), and forgets the replaced file.
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if let Some(old) =
            replaced.filter(|s| !exchange && s.st_mode & libc::S_IFMT != libc::S_IFDIR)
        {
            let regular = old.st_mode & libc::S_IFMT == libc::S_IFREG;
            self.rec.meta(MetaOp::Unlink {
                path: to.clone(),
                file: old.st_ino,
                last_link: !regular || old.st_nlink <= 1,
            })?;
        }
        self.rec.meta(MetaOp::Rename { from, to, flags })?;
        Ok(())
    }

    /// After a rename to `newdir/newname` that replaced `replaced`: the held file, or
    /// the replaced file's own pre-image (a pending file: a save before the last was
    /// acknowledged), becomes the new file's; the rest of a replaced file is dropped.
    fn after_replace(
        &self,
        newdir: &impl std::os::fd::AsRawFd,
        newname: &OsStr,
        replaced: Option<&libc::stat>,
        flags: u32,
        held: Option<(u64, u64, crate::preimage::Held)>,
    ) {
        let Some(pre) = &self.pre else { return };
        if let Some((file, size, h)) = held {
            return pre.adopt(file, size, h);
        }
        let gone = replaced.filter(|s| {
            flags & libc::RENAME_EXCHANGE == 0
                && s.st_mode & libc::S_IFMT == libc::S_IFREG
                && s.st_nlink <= 1
        });
        let Some(old) = gone else { return };
        if let Ok(new) = sys::fstatat(newdir, newname) {
            if pre.transfer(old.st_ino, new.st_ino, new.st_size as u64) {
                return;
            }
        }
        pre.forget(old.st_ino);
    }

    /// Before a plain rename of regular file `dir/name` over `newdir/newname`, a regular
    /// file with one link and no pending change: holds the replaced file aside, so that
    /// the new one goes as a delta against it (a temp file + rename save). Returns the
    /// new file's id and size with what is held.
    fn hold_replaced(
        &self,
        dir: &impl std::os::fd::AsRawFd,
        name: &OsStr,
        newdir: &impl std::os::fd::AsRawFd,
        newname: &OsStr,
        replaced: Option<&libc::stat>,
        flags: u32,
    ) -> Option<(u64, u64, crate::preimage::Held)> {
        let pre = self.pre.as_ref()?;
        let old = replaced.filter(|s| flags == 0 && s.st_mode & libc::S_IFMT == libc::S_IFREG)?;
        if old.st_nlink != 1 || self.rec.is_pending(old.st_ino) {
            return None;
        }
        let new = sys::fstatat(dir, name).ok()?;
        if new.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        match pre.hold(newdir, newname) {
            Ok(h) => Some((new.st_ino, new.st_size as u64, h)),
            Err(e) => {
                tracing::debug!("replaced file not held as a pre-image: {e}");
                None
            }
        }
    }

    /// Makes `newparent/newname` a hard link to `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> R<(u64, libc::stat)> {
        let _names = self.gate.names_shared(); // see `gate`: no applier op meanwhile
        let (inode, np) = (self.inodes.get(ino)?, self.inodes.get(newparent)?);
        let from = self.live_path(&inode)?;
        let to = self.child_path(&np, newname)?;
        sys::link_fd(&inode.fd, &np.fd, newname)?;
        match from {
            Some(from) => self.rec.meta(MetaOp::Link { from, to })?,
            // the name it was known by is gone and another is not found: `to` goes to
            // the peer as a new file with the content
            None => {
                let st = sys::fstat(&inode.fd)?;
                let (file, mode) = (st.st_ino, st.st_mode & 0o7777);
                self.rec.meta(MetaOp::Create {
                    path: to,
                    file,
                    mode,
                })?;
                self.rec.write(file, 0, st.st_size as u64)?;
            }
        }
        self.inodes.lookup(&np, newname)
    }

    /// Opens a directory; its entries are read by the first `readdir`.
    pub fn opendir(&self, ino: u64) -> R<u64> {
        self.inodes.get(ino)?;
        Ok(self.dirs.insert(DirHandle {
            entries: Vec::new(),
        }))
    }

    /// The entries of directory handle `fh` to page through; reading from offset 0 (a
    /// first read or a `rewinddir`) lists the directory afresh.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> R<std::sync::Arc<DirHandle>> {
        if offset == 0 {
            let entries = sys::read_dir(&self.inodes.get(ino)?.fd)?;
            self.dirs.replace(fh, DirHandle { entries })?;
        }
        self.dirs.get(fh)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    /// Filesystem statistics of the backing store.
    pub fn statfs(&self) -> R<libc::statvfs> {
        sys::fstatvfs(&self.inodes.get(super::inode::ROOT_INO)?.fd).map_err(FsError::from)
    }

    /// Reads an extended attribute (`size == 0`: only its length matters).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> R<Vec<u8>> {
        let inode = self.xattr_inode(ino)?;
        sys::getxattr(&inode.fd, name, size as usize).map_err(FsError::from)
    }

    /// Lists extended attribute names (`size == 0`: only the length matters).
    pub fn listxattr(&self, ino: u64, size: u32) -> R<Vec<u8>> {
        let inode = self.xattr_inode(ino)?;
        sys::listxattr(&inode.fd, size as usize).map_err(FsError::from)
    }

    /// Sets an extended attribute.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> R<()> {
        let inode = self.xattr_inode(ino)?;
        let path = self.rel_path(&inode)?;
        let op = MetaOp::SetXattr {
            path,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags,
        };
        sys::setxattr(&inode.fd, name, value, flags)?;
        self.rec.meta(op).map_err(Into::into)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> R<()> {
        let inode = self.xattr_inode(ino)?;
        let path = self.rel_path(&inode)?;
        sys::removexattr(&inode.fd, name)?;
        self.rec
            .meta(MetaOp::RemoveXattr {
                path,
                name: name.as_bytes().to_vec(),
            })
            .map_err(Into::into)
    }

    /// Symlinks can't carry user xattrs through `/proc/self/fd`: refuse clearly.
    fn xattr_inode(&self, ino: u64) -> R<std::sync::Arc<Inode>> {
        let inode = self.inodes.get(ino)?;
        if inode.kind == libc::S_IFLNK {
            return Err(FsError::errno(libc::EOPNOTSUPP));
        }
        Ok(inode)
    }
}
