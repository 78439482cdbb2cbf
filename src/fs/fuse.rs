//! The fuser adapter: the only place that names fuser. Each kernel request becomes one
//! call into [`PassFs`]; each `FsError` becomes the errno reply.

use super::{Ctx, FsError, PassFs, SetAttr};
use crate::journal::op::{SetTime, Timestamp};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Level;

/// How long the kernel may cache attributes and names. Only this mount changes the
/// backing folder while it is mounted, and the applier invalidates what it changes
/// (see `mount::MountHooks`), so the cache may be long: a `find` or `diff -r` right after
/// an untar then asks nothing of the daemon.
const TTL: Duration = Duration::from_secs(30);

/// Adapts [`PassFs`] to fuser's `Filesystem` trait.
pub struct FuseAdapter {
    fs: Arc<PassFs>,
}

impl FuseAdapter {
    /// Wraps a passthrough filesystem.
    pub fn new(fs: Arc<PassFs>) -> FuseAdapter {
        FuseAdapter { fs }
    }

    fn attr(&self, st: &libc::stat) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.fs.fuse_ino(st.st_ino)),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: system_time(st.st_atime, st.st_atime_nsec),
            mtime: system_time(st.st_mtime, st.st_mtime_nsec),
            ctime: system_time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn attr_reply(&self, r: Result<libc::stat, FsError>, reply: ReplyAttr) {
        match r {
            Ok(st) => reply.attr(&TTL, &self.attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn entry(&self, r: Result<(u64, libc::stat), FsError>, reply: ReplyEntry) {
        match r {
            Ok((_, st)) => reply.entry(&TTL, &self.attr(&st), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// The one place a failed operation is logged (at its level, inside the operation's
/// span) and turned into the errno the kernel is told.
fn errno(e: FsError) -> Errno {
    let cause = e.source.as_ref().map(|s| s.to_string());
    match e.level {
        Level::ERROR => tracing::error!(errno = e.errno, cause, "{e}"),
        Level::WARN => tracing::warn!(errno = e.errno, cause, "{e}"),
        Level::INFO => tracing::info!(errno = e.errno, cause, "{e}"),
        Level::DEBUG => tracing::debug!(errno = e.errno, cause, "{e}"),
        _ => tracing::trace!(errno = e.errno, cause, "{e}"),
    }
    Errno::from_i32(e.errno)
}

/// The span of one kernel request: its operation and inode.
fn span(op: &'static str, ino: u64) -> tracing::span::EnteredSpan {
    tracing::debug_span!("fuse", op, ino).entered()
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn data(r: Result<Vec<u8>, FsError>, reply: ReplyData) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

fn system_time(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dirent_type(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(timestamp(st)),
    })
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

/// Capabilities asked of the kernel, each only if it offers it.
/// `FUSE_HANDLE_KILLPRIV_V2` lets the kernel mark inodes `S_NOSEC` instead of asking for
/// `security.capability` before every write (a third of all requests in an untar); in
/// exchange we drop setuid/setgid and capabilities ourselves (see `PassFs::kill_priv`).
const WANTED: [InitFlags; 5] = [
    InitFlags::FUSE_WRITEBACK_CACHE,
    InitFlags::FUSE_HANDLE_KILLPRIV_V2,
    InitFlags::FUSE_PARALLEL_DIROPS,
    InitFlags::FUSE_AUTO_INVAL_DATA,
    InitFlags::FUSE_DO_READDIRPLUS,
];

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in WANTED {
            if flag == InitFlags::FUSE_DO_READDIRPLUS {
                continue; // readdirplus is not implemented; plain readdir is enough
            }
            if config.add_capabilities(flag).is_err() {
                tracing::warn!("kernel does not offer {flag:?}");
            }
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = span("lookup", parent.0);
        self.entry(self.fs.lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _span = span("forget", ino.0);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = span("getattr", ino.0);
        self.attr_reply(self.fs.getattr(ino.0), reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = span("setattr", ino.0);
        let kill_priv = size.is_some() && req.uid() != 0;
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            kill_priv,
        };
        self.attr_reply(self.fs.setattr(ino.0, fh.map(|f| f.0), &a), reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = span("readlink", ino.0);
        data(self.fs.readlink(ino.0), reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = span("mknod", parent.0);
        self.entry(
            self.fs.mknod(ctx(req), parent.0, name, mode, rdev as u64),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = span("mkdir", parent.0);
        self.entry(self.fs.mkdir(ctx(req), parent.0, name, mode), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("unlink", parent.0);
        empty(self.fs.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("rmdir", parent.0);
        empty(self.fs.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _span = span("symlink", parent.0);
        self.entry(
            self.fs
                .symlink(ctx(req), parent.0, link_name, target.as_os_str()),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = span("rename", parent.0);
        empty(
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span = span("link", ino.0);
        self.entry(self.fs.link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = span("open", ino.0);
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = span("read", ino.0);
        data(self.fs.read(fh.0, offset, size), reply);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = span("write", ino.0);
        let kill_priv = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write(fh.0, offset, data, kill_priv) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _span = span("flush", ino.0);
        // Nothing to do at close (no locks are kept here; with the writeback cache the
        // kernel writes dirty pages before it would ask): ENOSYS makes the kernel stop
        // asking, saving one round trip per close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = span("release", ino.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = span("fsync", ino.0);
        empty(self.fs.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = span("opendir", ino.0);
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = span("readdir", ino.0);
        let dir = match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(d) => d,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
            let ino = INodeNo(self.fs.fuse_ino(e.ino));
            let name = OsStr::from_bytes_compat(&e.name);
            if reply.add(ino, (i + 1) as u64, dirent_type(e.kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _span = span("releasedir", ino.0);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = span("fsyncdir", ino.0);
        empty(self.fs.fsyncdir(ino.0, datasync), reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = span("statfs", ino.0);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _pos: u32,
        reply: ReplyEmpty,
    ) {
        let _span = span("setxattr", ino.0);
        empty(self.fs.setxattr(ino.0, name, value, flags), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = span("getxattr", ino.0);
        xattr_reply(self.fs.getxattr(ino.0, name, size), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = span("listxattr", ino.0);
        xattr_reply(self.fs.listxattr(ino.0, size), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = span("removexattr", ino.0);
        empty(self.fs.removexattr(ino.0, name), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = span("create", parent.0);
        match self.fs.create(ctx(req), parent.0, name, mode, flags) {
            Ok((_, st, fh)) => reply.created(
                &TTL,
                &self.attr(&st),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = span("fallocate", ino.0);
        empty(self.fs.fallocate(fh.0, offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _span = span("lseek", ino.0);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn xattr_reply(r: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

/// `OsStr` from raw bytes (Unix).
trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &OsStr;
}
impl FromBytesCompat for OsStr {
    fn from_bytes_compat(b: &[u8]) -> &OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}
