//! Resolving store-relative paths so that they can never escape the data root.
//!
//! A [`RelPath`] already refuses `..`, `.`, absolute paths and NUL bytes, but a path made
//! only of plain names can still leave the store through a symbolic link inside it
//! (`data/x -> /etc`, then `x/passwd`). Everything that opens a path received from the
//! peer therefore goes through this module, which resolves it relative to an fd of the
//! data root and **never follows a symbolic link** on the way:
//!
//! - [`open_beneath`] uses `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS`, so the kernel itself refuses any escape (`EXDEV`) and any
//!   symlink component (`ELOOP`).
//! - On kernels without `openat2` (`ENOSYS`, before Linux 5.6) it walks the components
//!   itself: each directory is opened with `O_PATH | O_NOFOLLOW` relative to the previous
//!   one, a symlink component is refused with `ELOOP`, and the last component is opened
//!   with `O_NOFOLLOW` added to the caller's flags.
//!
//! In both cases a trailing symlink is only ever opened as the link itself (with
//! `O_PATH | O_NOFOLLOW`), never followed. [`open_parent`] gives the directory fd and the
//! final name for `*at()` calls (unlink, rename, mknod...) that act on the name itself.

use crate::path::RelPath;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// Opens `path` relative to the directory fd `root` with `open(2)` `flags` and creation
/// `mode`, refusing to leave `root` and to follow any symbolic link (`ELOOP` for a
/// symlink component; a trailing symlink opens only with `O_PATH | O_NOFOLLOW`). The
/// root path opens `root` itself. `O_CLOEXEC` is always added.
pub fn open_beneath(
    root: &impl AsRawFd,
    path: &RelPath,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    match openat2_beneath(root, path, flags, mode) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => walk_beneath(root, path, flags, mode),
        other => other,
    }
}

/// The directory holding the last component of `path` (an `O_PATH | O_DIRECTORY` fd,
/// resolved with [`open_beneath`]) and that last name, for `*at()` calls on the name
/// itself. The root path has no parent: `EINVAL`.
pub fn open_parent(root: &impl AsRawFd, path: &RelPath) -> io::Result<(OwnedFd, OsString)> {
    let (parent, name) = path.split_last().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the data root has no parent directory",
        )
    })?;
    let name = name.to_os_string();
    let dir = open_beneath(root, &parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    Ok((dir, name))
}

/// What to pass as the pathname for `path` relative to its directory fd.
fn c_path(path: &RelPath) -> io::Result<CString> {
    let bytes: &[u8] = if path.is_root() {
        b"."
    } else {
        path.as_bytes()
    };
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat2_beneath(
    root: &impl AsRawFd,
    path: &RelPath,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    // EAGAIN: the kernel saw a concurrent rename during a scoped lookup; retry a little.
    let mut tries = 0;
    loop {
        match sys::openat2(root, &c, flags, mode, resolve) {
            Err(sys::Errno(libc::EAGAIN)) if tries < 8 => tries += 1,
            r => return r.map_err(io::Error::from),
        }
    }
}

fn openat_raw(dir: libc::c_int, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    Ok(sys::openat(&sys::Raw(dir), name, flags, mode)?)
}

fn fstat_mode(fd: &impl AsRawFd) -> io::Result<u32> {
    Ok(sys::fstat(fd)?.st_mode)
}

/// The fallback for kernels without `openat2`: one component at a time, never following
/// a symlink. `..` cannot occur (a `RelPath` has none), so staying on plain names
/// relative to fds we opened ourselves keeps us beneath `root`.
fn walk_beneath(root: &impl AsRawFd, path: &RelPath, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let Some((parent, last)) = path.split_last() else {
        return openat_raw(root.as_raw_fd(), OsStr::new("."), flags, mode);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parent.components() {
        let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
        let fd = openat_raw(at, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        match fstat_mode(&fd)? & libc::S_IFMT {
            libc::S_IFDIR => dir = Some(fd),
            libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
    openat_raw(at, last, flags | libc::O_NOFOLLOW, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    type Opener = fn(&OwnedFd, &RelPath, i32, u32) -> io::Result<OwnedFd>;

    fn via_openat2(r: &OwnedFd, p: &RelPath, f: i32, m: u32) -> io::Result<OwnedFd> {
        open_beneath(r, p, f, m)
    }
    fn via_walk(r: &OwnedFd, p: &RelPath, f: i32, m: u32) -> io::Result<OwnedFd> {
        walk_beneath(r, p, f, m)
    }
    const OPENERS: [(&str, Opener); 2] = [("openat2", via_openat2), ("walk", via_walk)];

    fn rp(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    fn setup() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(data.join("a/b")).unwrap();
        fs::write(data.join("a/b/f"), b"hello").unwrap();
        fs::write(data.join("b"), b"top").unwrap();
        std::os::unix::fs::symlink("/etc", data.join("x")).unwrap();
        std::os::unix::fs::symlink("a", data.join("inner")).unwrap();
        let root = openat_raw(
            libc::AT_FDCWD,
            data.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        (t, root)
    }

    fn read_all(fd: OwnedFd) -> Vec<u8> {
        use std::io::Read;
        let mut v = Vec::new();
        fs::File::from(fd).read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn nested_paths_open() {
        let (_t, root) = setup();
        for (name, open) in OPENERS {
            let fd = open(&root, &rp("a/b/f"), libc::O_RDONLY, 0).unwrap();
            assert_eq!(read_all(fd), b"hello", "{name}");
            let fd = open(&root, &rp("b"), libc::O_RDONLY, 0).unwrap();
            assert_eq!(read_all(fd), b"top", "{name}");
            let dir = open(&root, &rp("a/b"), libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
            assert_eq!(
                fstat_mode(&dir).unwrap() & libc::S_IFMT,
                libc::S_IFDIR,
                "{name}"
            );
        }
    }

    #[test]
    fn root_path_opens_root() {
        let (t, root) = setup();
        let want = fs::metadata(t.path().join("data")).unwrap();
        for (name, open) in OPENERS {
            let fd = open(
                &root,
                &RelPath::root(),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .unwrap();
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) }, 0);
            use std::os::unix::fs::MetadataExt;
            assert_eq!(unsafe { st.assume_init() }.st_ino, want.ino(), "{name}");
        }
    }

    #[test]
    fn symlink_pointing_outside_is_refused() {
        let (_t, root) = setup();
        for (name, open) in OPENERS {
            let e = open(&root, &rp("x/passwd"), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{name}: {e}");
            // Also a symlink that stays inside is not followed as a component.
            let e = open(&root, &rp("inner/b/f"), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{name}: {e}");
            // A trailing symlink is never followed either...
            let e = open(&root, &rp("x"), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{name}: {e}");
            // ...but can be opened as the link itself.
            let fd = open(&root, &rp("x"), libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
            assert_eq!(
                fstat_mode(&fd).unwrap() & libc::S_IFMT,
                libc::S_IFLNK,
                "{name}"
            );
        }
    }

    #[test]
    fn dotdot_cannot_be_built() {
        assert!(RelPath::from_bytes(b"a/../b").is_err());
        assert!(RelPath::from_bytes(b"../etc/passwd").is_err());
        assert!(RelPath::from_bytes(b"/etc/passwd").is_err());
        assert!(RelPath::from_bytes(b"a/./b").is_err());
    }

    #[test]
    fn file_component_is_not_a_directory() {
        let (_t, root) = setup();
        for (name, open) in OPENERS {
            let e = open(&root, &rp("b/c"), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{name}: {e}");
            let e = open(&root, &rp("nope/c"), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{name}: {e}");
        }
    }

    #[test]
    fn create_beneath() {
        let (t, root) = setup();
        for (i, (name, open)) in OPENERS.into_iter().enumerate() {
            let p = rp(&format!("a/new{i}"));
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            open(&root, &p, flags, 0o640).unwrap();
            assert!(t.path().join("data").join(p.as_path()).is_file(), "{name}");
            let e = open(&root, &rp("x/new"), flags, 0o640).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{name}: {e}");
        }
    }

    #[test]
    fn parent_and_name() {
        let (_t, root) = setup();
        let (dir, name) = open_parent(&root, &rp("a/b/f")).unwrap();
        assert_eq!(name, "f");
        let fd = openat_raw(dir.as_raw_fd(), &name, libc::O_RDONLY, 0).unwrap();
        assert_eq!(read_all(fd), b"hello");
        let (_, name) = open_parent(&root, &rp("top")).unwrap();
        assert_eq!(name, "top");
        assert!(open_parent(&root, &RelPath::root()).is_err());
        let e = open_parent(&root, &rp("x/passwd")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }
}
