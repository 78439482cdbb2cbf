//! The one syscall layer: thin safe wrappers over the `*at()` system calls that the
//! mount (`fs`), the applier (`apply`), path resolution (`beneath`) and the store's own
//! files use. Each returns [`Errno`], the raw errno, so that the mount can reply with
//! exactly what the backing filesystem said and everyone else can add their context.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A failed system call: its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} (errno {})", std::io::Error::from_raw_os_error(*.0).kind(), .0)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's current `errno`.
    pub fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.0)
    }
}

type R<T> = Result<T, Errno>;

fn cstr(s: &OsStr) -> R<CString> {
    CString::new(s.as_bytes()).map_err(|_| Errno(libc::EINVAL))
}

fn check(rc: libc::c_int) -> R<libc::c_int> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn stat_at(dir: libc::c_int, name: &CString, flags: libc::c_int) -> R<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    check(unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), flags) })?;
    Ok(unsafe { st.assume_init() })
}

/// `stat` of the inode behind an fd (O_PATH fds included), not following symlinks.
pub fn fstat(fd: &impl AsRawFd) -> R<libc::stat> {
    let empty = CString::default();
    stat_at(
        fd.as_raw_fd(),
        &empty,
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
    )
}

/// `stat` of `name` in directory `dir`, not following symlinks.
pub fn fstatat(dir: &impl AsRawFd, name: &OsStr) -> R<libc::stat> {
    stat_at(dir.as_raw_fd(), &cstr(name)?, libc::AT_SYMLINK_NOFOLLOW)
}

/// Opens `name` in `dir` with raw `open(2)` flags and creation mode.
/// Retries on `EINTR`.
pub fn openat(dir: &impl AsRawFd, name: &OsStr, flags: libc::c_int, mode: u32) -> R<OwnedFd> {
    let c = cstr(name)?;
    loop {
        let fd =
            unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        match check(fd) {
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `openat2(2)` `resolve` flag: no magic links (`/proc/self/fd/N`) on the way.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `openat2(2)` `resolve` flag: no symbolic link anywhere on the way (`ELOOP`).
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// `openat2(2)` `resolve` flag: never leave `dir` (`EXDEV`).
pub const RESOLVE_BENEATH: u64 = 0x08;

/// `struct open_how` of `openat2(2)` (libc's is `#[non_exhaustive]`, so it cannot be
/// built with a literal; the layout is fixed by the kernel ABI).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)`: opens `path` under `dir` with `flags` (plus `O_CLOEXEC`), creation
/// `mode` and `resolve` flags. `ENOSYS` before Linux 5.6. Retries on `EINTR`.
pub fn openat2(
    dir: &impl AsRawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> R<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u32 as u64,
        // openat2 refuses a mode without O_CREAT / O_TMPFILE.
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            u64::from(mode & 0o7777)
        } else {
            0
        },
        resolve,
    };
    loop {
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match rc {
            fd if fd >= 0 => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            _ if Errno::last().0 == libc::EINTR => continue,
            _ => return Err(Errno::last()),
        }
    }
}

/// A raw fd number borrowed as `AsRawFd` (the caller keeps it open).
pub struct Raw(pub libc::c_int);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> libc::c_int {
        self.0
    }
}

/// An `O_PATH | O_NOFOLLOW` handle on `name` in `dir`.
pub fn open_path(dir: &impl AsRawFd, name: &OsStr) -> R<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Reopens an `O_PATH` inode through `/proc/self/fd` with real access flags.
pub fn reopen(path_fd: &impl AsRawFd, flags: libc::c_int) -> R<File> {
    let p = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    let fd = openat(&AtCwd, OsStr::new(&p), flags & !libc::O_NOFOLLOW, 0)?;
    Ok(File::from(fd))
}

/// The current working directory as an `*at()` anchor.
pub struct AtCwd;
impl AsRawFd for AtCwd {
    fn as_raw_fd(&self) -> libc::c_int {
        libc::AT_FDCWD
    }
}

/// `mkdirat`.
pub fn mkdirat(dir: &impl AsRawFd, name: &OsStr, mode: u32) -> R<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// `mknodat`.
pub fn mknodat(dir: &impl AsRawFd, name: &OsStr, mode: u32, rdev: u64) -> R<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &OsStr, dir: &impl AsRawFd, name: &OsStr) -> R<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `unlinkat`, with `AT_REMOVEDIR` for directories.
pub fn unlinkat(dir: &impl AsRawFd, name: &OsStr, rmdir: bool) -> R<()> {
    let c = cstr(name)?;
    let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2` with its flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn renameat2(
    old_dir: &impl AsRawFd,
    old: &OsStr,
    new_dir: &impl AsRawFd,
    new: &OsStr,
    flags: u32,
) -> R<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    let rc = unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    };
    check(rc).map(drop)
}

/// Makes a hard link `dir/name` to the inode behind an `O_PATH` fd.
pub fn link_fd(target: &impl AsRawFd, dir: &impl AsRawFd, name: &OsStr) -> R<()> {
    let c = cstr(name)?;
    let empty = CString::default();
    let rc = unsafe {
        libc::linkat(
            target.as_raw_fd(),
            empty.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    check(rc).map(drop)
}

/// `readlinkat(fd, "")` on an `O_PATH` symlink fd.
pub fn readlink_fd(fd: &impl AsRawFd) -> R<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let empty = CString::default();
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `readlink` of a path (used for `/proc/self/fd/N`).
pub fn readlink_path(path: &str) -> R<Vec<u8>> {
    std::fs::read_link(path)
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .map_err(Errno::from)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`; `u32::MAX` leaves an id alone.
pub fn chown_fd(fd: &impl AsRawFd, uid: u32, gid: u32) -> R<()> {
    let empty = CString::default();
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    check(unsafe { libc::fchownat(fd.as_raw_fd(), empty.as_ptr(), uid, gid, flags) }).map(drop)
}

/// Runs `on_fd` (a call on the fd itself, with an empty path and `AT_EMPTY_PATH`) until
/// the kernel refuses it with one of `unsupported` (set in `old` from then on), then
/// `via_proc` on the fd's `/proc/self/fd/N` path, which works everywhere but walks it.
fn on_fd_or_proc(
    fd: &impl AsRawFd,
    old: &AtomicBool,
    unsupported: &[i32],
    on_fd: impl FnOnce(&std::ffi::CStr) -> libc::c_int,
    via_proc: impl FnOnce(&std::ffi::CStr) -> libc::c_int,
) -> R<()> {
    if !old.load(Ordering::Relaxed) {
        match check(on_fd(&CString::default())) {
            Err(e) if unsupported.contains(&e.0) => old.store(true, Ordering::Relaxed),
            r => return r.map(drop),
        }
    }
    check(via_proc(&proc_c(fd))).map(drop)
}

/// `fchmodat2(fd, "", AT_EMPTY_PATH)` (Linux 6.6+) on an `O_PATH` fd, else `chmod`
/// through `/proc/self/fd/N` (works on `O_PATH` fds of non-symlinks, but walks a path).
pub fn chmod_fd(fd: &impl AsRawFd, mode: u32) -> R<()> {
    static OLD_KERNEL: AtomicBool = AtomicBool::new(false);
    let raw = fd.as_raw_fd();
    on_fd_or_proc(
        fd,
        &OLD_KERNEL,
        &[libc::ENOSYS, libc::EINVAL],
        |empty| unsafe {
            let flags = libc::AT_EMPTY_PATH;
            libc::syscall(libc::SYS_fchmodat2, raw, empty.as_ptr(), mode, flags) as libc::c_int
        },
        |path| unsafe { libc::chmod(path.as_ptr(), mode) },
    )
}

/// `utimensat(fd, "", AT_EMPTY_PATH)` on an `O_PATH` fd, else through
/// `/proc/self/fd/N`; each time may be UTIME_NOW or UTIME_OMIT.
pub fn utimens_fd(fd: &impl AsRawFd, times: &[libc::timespec; 2]) -> R<()> {
    static OLD_KERNEL: AtomicBool = AtomicBool::new(false);
    let (raw, t) = (fd.as_raw_fd(), times.as_ptr());
    on_fd_or_proc(
        fd,
        &OLD_KERNEL,
        &[libc::EINVAL],
        |empty| unsafe { libc::utimensat(raw, empty.as_ptr(), t, libc::AT_EMPTY_PATH) },
        |path| unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), t, 0) },
    )
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`: a symlink's own times.
pub fn utimensat_nofollow(dir: &impl AsRawFd, name: &OsStr, times: &[libc::timespec; 2]) -> R<()> {
    let c = cstr(name)?;
    let rc = unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(rc).map(drop)
}

/// `futimens` on an open file.
pub fn futimens(fd: &impl AsRawFd, times: &[libc::timespec; 2]) -> R<()> {
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// `ftruncate`.
pub fn ftruncate(fd: &impl AsRawFd, size: u64) -> R<()> {
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// `fallocate`.
pub fn fallocate(fd: &impl AsRawFd, mode: i32, offset: u64, len: u64) -> R<()> {
    let rc = unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as i64, len as i64) };
    check(rc).map(drop)
}

/// Copies `[off, off + len)` of `src` to the same offsets of `dst` in the kernel
/// (`copy_file_range`: no bytes through user space; a reflink where the filesystem can).
pub fn copy_range(src: &impl AsRawFd, dst: &impl AsRawFd, off: u64, len: u64) -> R<()> {
    let (mut a, mut b, mut left) = (off as i64, off as i64, len as usize);
    while left > 0 {
        let rc = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, left, 0)
        };
        match rc {
            n if n > 0 => left -= n as usize,
            0 => return Err(Errno(libc::ENODATA)), // the source ended early
            _ if Errno::last().0 == libc::EINTR => {}
            _ => return Err(Errno::last()),
        }
    }
    Ok(())
}

/// `lseek` (for SEEK_DATA / SEEK_HOLE).
pub fn lseek(fd: &impl AsRawFd, offset: i64, whence: i32) -> R<i64> {
    let rc = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(rc)
}

/// Tells the kernel reads of `fd` will be sparse (no readahead): updates read only the
/// changed ranges and hash-tree leaves of what may be a very large file.
pub fn advise_random(fd: &impl AsRawFd) {
    unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: &impl AsRawFd, datasync: bool) -> R<()> {
    let rc = unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    check(rc).map(drop)
}

/// `statvfs` of the filesystem holding `fd`.
pub fn fstatvfs(fd: &impl AsRawFd) -> R<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
}

fn proc_c(fd: &impl AsRawFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
}

fn size_result(n: isize) -> R<usize> {
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

/// `getxattr` through `/proc/self/fd/N`; `size == 0` asks for the length.
pub fn getxattr(fd: &impl AsRawFd, name: &OsStr, size: usize) -> R<Vec<u8>> {
    let (p, n) = (proc_c(fd), cstr(name)?);
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    let len = size_result(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, size) })?;
    buf.truncate(if size == 0 { 0 } else { len });
    if size == 0 {
        buf = vec![0; len];
        return Ok(buf);
    }
    Ok(buf)
}

/// `listxattr` through `/proc/self/fd/N`; `size == 0` asks for the length.
pub fn listxattr(fd: &impl AsRawFd, size: usize) -> R<Vec<u8>> {
    let p = proc_c(fd);
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    let len = size_result(unsafe { libc::listxattr(p.as_ptr(), ptr, size) })?;
    if size == 0 {
        return Ok(vec![0; len]);
    }
    buf.truncate(len);
    Ok(buf)
}

/// `setxattr` through `/proc/self/fd/N`.
pub fn setxattr(fd: &impl AsRawFd, name: &OsStr, value: &[u8], flags: i32) -> R<()> {
    let (p, n) = (proc_c(fd), cstr(name)?);
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(rc).map(drop)
}

/// `removexattr` through `/proc/self/fd/N`.
pub fn removexattr(fd: &impl AsRawFd, name: &OsStr) -> R<()> {
    let (p, n) = (proc_c(fd), cstr(name)?);
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// `setxattr` (`follow`) or `lsetxattr` of a path (a `/proc/self/fd/N[/name]` one).
pub fn setxattr_path(path: &std::ffi::CStr, name: &OsStr, value: &[u8], follow: bool) -> R<()> {
    let (p, n, v) = (path.as_ptr(), cstr(name)?, value.as_ptr().cast());
    check(unsafe {
        if follow {
            libc::setxattr(p, n.as_ptr(), v, value.len(), 0)
        } else {
            libc::lsetxattr(p, n.as_ptr(), v, value.len(), 0)
        }
    })
    .map(drop)
}

/// `removexattr` (`follow`) or `lremovexattr` of a path.
pub fn removexattr_path(path: &std::ffi::CStr, name: &OsStr, follow: bool) -> R<()> {
    let (p, n) = (path.as_ptr(), cstr(name)?);
    check(unsafe {
        if follow {
            libc::removexattr(p, n.as_ptr())
        } else {
            libc::lremovexattr(p, n.as_ptr())
        }
    })
    .map(drop)
}

/// `linkat(src_dir, src_name, dst_dir, dst_name, 0)`: a new name for an existing inode.
pub fn linkat(
    src_dir: &impl AsRawFd,
    src_name: &OsStr,
    dst_dir: &impl AsRawFd,
    dst_name: &OsStr,
) -> R<()> {
    let (s, d) = (cstr(src_name)?, cstr(dst_name)?);
    let (sd, dd) = (src_dir.as_raw_fd(), dst_dir.as_raw_fd());
    check(unsafe { libc::linkat(sd, s.as_ptr(), dd, d.as_ptr(), 0) }).map(drop)
}

/// `syncfs(2)`: flushes the whole filesystem holding `fd`.
pub fn syncfs(fd: &impl AsRawFd) -> R<()> {
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// One directory entry: backing inode, `d_type`, name.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Backing inode number.
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// The name.
    pub name: Vec<u8>,
}

/// Reads every entry of the directory behind an `O_PATH` fd.
pub fn read_dir(dir: &impl AsRawFd) -> R<Vec<DirEntry>> {
    let fd = openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = fd.as_raw_fd();
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        return Err(Errno::last());
    }
    std::mem::forget(fd); // owned by dirp now
    let mut out = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = unsafe { *libc::__errno_location() };
            unsafe { libc::closedir(dirp) };
            return if err == 0 { Ok(out) } else { Err(Errno(err)) };
        }
        let ent = unsafe { &*ent };
        let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) };
        out.push(DirEntry {
            ino: ent.d_ino,
            kind: ent.d_type,
            name: name.to_bytes().to_vec(),
        });
    }
}

/// Borrow helper for code holding raw fds.
pub fn borrow(fd: &impl AsRawFd) -> BorrowedFd<'_> {
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// `TCP_RTO_MAX_MS` (Linux 6.15, `linux/tcp.h`); not in `libc` yet.
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// Caps the TCP retransmission timeout of the connected socket `sock` at `ms`
/// milliseconds (1,000 to 120,000). Older kernels answer `ENOPROTOOPT`.
pub fn set_tcp_rto_max(sock: &impl AsRawFd, ms: u32) -> R<()> {
    let v = ms as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = (&v as *const libc::c_int).cast();
    check(unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, TCP_RTO_MAX_MS, p, len)
    })?;
    Ok(())
}

/// Turns the TCP socket `sock`'s quick-ack mode on or off (`TCP_QUICKACK`; the kernel
/// may switch it again by itself). Off, a segment's ACK waits a little for data to ride
/// on instead of going alone.
pub fn set_tcp_quickack(sock: &impl AsRawFd, on: bool) -> R<()> {
    let v = libc::c_int::from(on);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = (&v as *const libc::c_int).cast();
    let opt = libc::TCP_QUICKACK;
    check(unsafe { libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, opt, p, len) })?;
    Ok(())
}

/// The retransmission timeout cap of the TCP socket `sock`, in milliseconds.
pub fn tcp_rto_max(sock: &impl AsRawFd) -> R<u32> {
    Ok(tcp_int(sock, TCP_RTO_MAX_MS)? as u32)
}

/// True while the TCP socket `sock` is in quick-ack mode (see [`set_tcp_quickack`]).
pub fn tcp_quickack(sock: &impl AsRawFd) -> R<bool> {
    Ok(tcp_int(sock, libc::TCP_QUICKACK)? != 0)
}

/// An `int` TCP socket option.
fn tcp_int(sock: &impl AsRawFd, opt: libc::c_int) -> R<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = (&mut v as *mut libc::c_int).cast();
    let fd = sock.as_raw_fd();
    check(unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, opt, p, &mut len) })?;
    Ok(v)
}
