//! The version archive (`STORE/versions`): every version of a file that a peer's change
//! replaced or deleted (for a change applied in place, a copy of a version made on this
//! node), and the losers of first pairings, kept for `versions_days` and up to
//! `versions_max_mib` (oldest go first). Sync never destroys the only copy of anything:
//! it moves it here.
//!
//! Layout: `versions/<store-relative path>~<YYYYMMDD-HHMMSS>` (UTC time of archiving,
//! with `-N` appended when that name is taken), directories made as needed (0700).

use crate::path::RelPath;
use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The archive's directory, opened once.
pub struct Archive {
    dir: OwnedFd,
    path: PathBuf,
    keep_for: Duration,
    max_bytes: u64,
}

/// One archived version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The file's store-relative path.
    pub path: String,
    /// When it was archived (`YYYYMMDD-HHMMSS`, UTC, maybe with `-N`).
    pub when: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it is on disk.
    pub file: PathBuf,
}

fn errno(e: crate::sys::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}

impl Archive {
    /// Opens (creating) the archive at `path`.
    pub fn open(path: &Path, keep_days: u64, max_mib: u64) -> io::Result<Archive> {
        std::fs::create_dir_all(path)?;
        let dir = sys::openat(
            &sys::AtCwd,
            path.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(errno)?;
        Ok(Archive {
            dir,
            path: path.to_path_buf(),
            keep_for: Duration::from_secs(keep_days.saturating_mul(86_400)),
            max_bytes: max_mib.saturating_mul(1 << 20),
        })
    }

    /// Moves `name` in `dir` (the entry at store path `path`) into the archive. Falls
    /// back to a copy (then unlink) when the archive is on another filesystem.
    pub fn keep(&self, dir: &impl AsRawFd, name: &OsStr, path: &RelPath) -> io::Result<PathBuf> {
        let moved = self.put(path, |to, dest| {
            match sys::renameat2(dir, name, to, dest, libc::RENAME_NOREPLACE) {
                Err(e) if e.0 == libc::EXDEV => copy_then_unlink(dir, name, to, dest),
                res => res.map_err(errno),
            }
        })?;
        tracing::info!("kept the replaced version of {path} in the archive");
        Ok(moved)
    }

    /// Gives `name` in `dir` (the entry at store path `path`, about to be replaced by a
    /// rename over it) a second name in the archive; a copy across filesystems. Undone
    /// by [`Archive::unkeep`] if the replacement does not happen.
    pub fn keep_link(
        &self,
        dir: &impl AsRawFd,
        name: &OsStr,
        path: &RelPath,
    ) -> io::Result<PathBuf> {
        self.put(path, |to, dest| match sys::linkat(dir, name, to, dest) {
            Err(e) if e.0 == libc::EXDEV => copy(dir, name, to, dest),
            res => res.map_err(errno),
        })
    }

    /// Copies `name` in `dir` (the entry at store path `path`) into the archive and
    /// leaves it in place (its inode has other names).
    pub fn keep_copy(
        &self,
        dir: &impl AsRawFd,
        name: &OsStr,
        path: &RelPath,
    ) -> io::Result<PathBuf> {
        let copied = self.put(path, |to, dest| copy(dir, name, to, dest))?;
        tracing::info!("kept a copy of the replaced version of {path} in the archive");
        Ok(copied)
    }

    /// Drops a version that [`Archive::keep_link`] kept for a replacement that did not
    /// happen.
    pub fn unkeep(&self, kept: &Path) {
        if let Err(e) = std::fs::remove_file(kept) {
            tracing::warn!("archive: removing {}: {e}", kept.display());
        }
    }

    /// Puts a version of `path` into a free slot of the archive with `how` (given the
    /// slot's directory and name), durably; returns where it is.
    fn put(
        &self,
        path: &RelPath,
        how: impl FnOnce(&OwnedFd, &OsStr) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let (parent, leaf) = self.slot(path)?;
        let dest = pick_name(&parent, &leaf)?;
        how(&parent, &dest)?;
        sys::fsync(&parent, false).map_err(errno)?;
        self.prune();
        let rel = Path::new(path.as_os_str())
            .parent()
            .unwrap_or(Path::new(""));
        Ok(self.path.join(rel).join(dest))
    }

    /// True if a version of `size` bytes fits under `versions_max_mib` at all (a larger
    /// one would be pruned at once).
    pub fn fits(&self, size: u64) -> bool {
        size <= self.max_bytes
    }

    /// The archive directory for `path`'s parent (made as needed) and the file's name.
    fn slot(&self, path: &RelPath) -> io::Result<(OwnedFd, OsString)> {
        let (parent, name) = path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut dir = sys::openat(
            &self.dir,
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(errno)?;
        for c in parent.components() {
            match sys::mkdirat(&dir, c, 0o700) {
                Ok(()) => {}
                Err(e) if e.0 == libc::EEXIST => {}
                Err(e) => return Err(errno(e)),
            }
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            dir = sys::openat(&dir, c, flags, 0).map_err(errno)?;
        }
        let stamp = crate::sync::verdict::utc_stamp(now_secs());
        let mut leaf = name.to_os_string();
        leaf.push(format!("~{stamp}"));
        Ok((dir, leaf))
    }

    /// Drops versions older than `versions_days`, then the oldest while over the cap.
    pub fn prune(&self) {
        let Ok(mut all) = list(&self.path, None) else {
            return;
        };
        all.sort_by(|a, b| a.when.cmp(&b.when));
        let cutoff = now_secs() - self.keep_for.as_secs() as i64;
        let cutoff = crate::sync::verdict::utc_stamp(cutoff);
        let mut total: u64 = all.iter().map(|k| k.size).sum();
        for k in all {
            if k.when >= cutoff && total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&k.file).is_ok() {
                tracing::info!("archive: dropped {} of {}", k.when, k.path);
                total -= k.size;
            }
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `leaf`, or `leaf-2`, `leaf-3`... whichever is free in `dir`.
fn pick_name(dir: &OwnedFd, leaf: &OsStr) -> io::Result<OsString> {
    for n in 1..1000 {
        let mut name = leaf.to_os_string();
        if n > 1 {
            name.push(format!("-{n}"));
        }
        match sys::fstatat(dir, &name) {
            Err(e) if e.0 == libc::ENOENT => return Ok(name),
            Err(e) => return Err(errno(e)),
            Ok(_) => {}
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Copies in the kernel (a reflink where the filesystem can), fsynced.
fn copy(dir: &impl AsRawFd, name: &OsStr, to_dir: &OwnedFd, to: &OsStr) -> io::Result<()> {
    let src = sys::openat(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0).map_err(errno)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let dst = sys::openat(to_dir, to, flags, 0o600).map_err(errno)?;
    let size = sys::fstat(&src).map_err(errno)?.st_size as u64;
    let copied = match sys::copy_range(&src, &dst, 0, size) {
        // across filesystems (the data folder linked elsewhere), or not supported here
        Err(e) if [libc::EXDEV, libc::ENOSYS, libc::EOPNOTSUPP, libc::EINVAL].contains(&e.0) => {
            let (mut src, mut dst) = (std::fs::File::from(src), std::fs::File::from(dst));
            dst.set_len(0)
                .and_then(|()| io::copy(&mut src, &mut dst))
                .and_then(|_| dst.sync_all())
        }
        Err(e) => Err(errno(e)),
        Ok(()) => sys::fsync(&dst, false).map_err(errno),
    };
    if copied.is_err() {
        let _ = sys::unlinkat(to_dir, to, false);
    }
    copied
}

fn copy_then_unlink(
    dir: &impl AsRawFd,
    name: &OsStr,
    to_dir: &OwnedFd,
    to: &OsStr,
) -> io::Result<()> {
    copy(dir, name, to_dir, to)?;
    sys::unlinkat(dir, name, false).map_err(errno)
}

/// Every archived version under `root` (only those of `filter` and below, if given),
/// by path then time.
pub fn list(root: &Path, filter: Option<&Path>) -> io::Result<Vec<Kept>> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    if let Some(f) = filter {
        out.retain(|k| Path::new(&k.path).starts_with(f));
    }
    out.sort_by(|a, b| (&a.path, &a.when).cmp(&(&b.path, &b.when)));
    Ok(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<Kept>) -> io::Result<()> {
    let dir = match std::fs::read_dir(root.join(rel)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    for ent in dir {
        let ent = ent?;
        let md = ent.metadata()?;
        let name = ent.file_name();
        if md.is_dir() {
            walk(root, &rel.join(&name), out)?;
            continue;
        }
        let bytes = name.as_bytes();
        let Some(i) = bytes.iter().rposition(|b| *b == b'~') else {
            continue;
        };
        let orig = rel.join(OsStr::from_bytes(&bytes[..i]));
        out.push(Kept {
            path: orig.to_string_lossy().into_owned(),
            when: String::from_utf8_lossy(&bytes[i + 1..]).into_owned(),
            size: md.len(),
            file: ent.path(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lists_and_prunes_over_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("d")).unwrap();
        let a = Archive::open(&t.path().join("versions"), 30, 1).unwrap();
        let dir = sys::openat(&sys::AtCwd, data.join("d").as_os_str(), libc::O_RDONLY, 0).unwrap();
        let p = RelPath::from_bytes(b"d/f.txt").unwrap();
        for body in ["one", "two"] {
            std::fs::write(data.join("d/f.txt"), body).unwrap();
            a.keep(&dir, OsStr::new("f.txt"), &p).unwrap();
            assert!(!data.join("d/f.txt").exists());
        }
        let kept = list(&t.path().join("versions"), Some(Path::new("d"))).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|k| k.path == "d/f.txt"));
        assert_eq!(std::fs::read(&kept[1].file).unwrap(), b"two");
        // over a 1 MiB cap: the oldest go
        std::fs::write(data.join("d/f.txt"), vec![1u8; 2 << 20]).unwrap();
        a.keep(&dir, OsStr::new("f.txt"), &p).unwrap();
        assert!(list(&t.path().join("versions"), None).unwrap().is_empty());
    }

    #[test]
    fn a_kept_copy_leaves_the_file_and_matches_it() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(data.join("f"), &body).unwrap();
        let a = Archive::open(&t.path().join("versions"), 30, 1).unwrap();
        let dir = sys::openat(&sys::AtCwd, data.as_os_str(), libc::O_RDONLY, 0).unwrap();
        let p = RelPath::from_bytes(b"f").unwrap();
        let kept = a.keep_copy(&dir, OsStr::new("f"), &p).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), body);
        assert_eq!(
            std::fs::read(data.join("f")).unwrap(),
            body,
            "the file stays"
        );
        assert!(a.fits(1 << 20) && !a.fits((1 << 20) + 1));
    }
}
