//! `.syncfsignore`: paths matching it (gitignore syntax, the `ignore` crate's matcher)
//! stay local. They are never journaled for sending and a peer's changes to them are
//! not applied. The file itself is synced like any other.
//!
//! The rules are re-read when the file's (inode, size, mtime, ctime) changes: the
//! mount asks at once when it records a change to the file, the sender every round.
//! A change is remembered until the sender takes it, so that it can send what the new
//! rules no longer ignore.

pub mod local;

use crate::path::RelPath;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The ignore file's name, in the folder root.
pub const IGNORE_FILE: &str = ".syncfsignore";

/// Errors reading the ignore file.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A rule is not valid gitignore syntax (the other rules still apply).
    #[error("{path}: {source}")]
    Rule {
        /// The file.
        path: String,
        /// The cause.
        source: ignore::Error,
    },
}

/// One version of the rules.
#[derive(Clone, Debug)]
pub struct Rules(Arc<Gitignore>);

impl Rules {
    /// No rules: nothing is ignored.
    pub fn none() -> Rules {
        Rules(Arc::new(Gitignore::empty()))
    }

    /// True if `path` (a directory if `is_dir`) stays local. The ignore file never does.
    pub fn matches(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.is_root() || path.as_bytes() == IGNORE_FILE.as_bytes() {
            return false;
        }
        self.0
            .matched_path_or_any_parents(path.as_path(), is_dir)
            .is_ignore()
    }

    /// Like [`Rules::matches`] for `path` below `data`, asking the backing folder whether
    /// it is a directory only when the answer depends on it (a stat walks the whole path:
    /// once per recorded op, it cost an untar through the mount 27,000 walks).
    pub fn matches_at(&self, data: &Path, path: &RelPath) -> bool {
        self.matches_as(data, path, path)
    }

    /// Like [`Rules::matches_at`], with `path` a directory if `kind_of` is one (a
    /// rename's destination tells what its source was).
    pub fn matches_as(&self, data: &Path, path: &RelPath, kind_of: &RelPath) -> bool {
        let as_file = self.matches(path, false);
        if as_file == self.matches(path, true) {
            return as_file;
        }
        self.matches(path, is_dir(data, kind_of))
    }

    fn same(&self, other: &Rules) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The file's identity and version: a change to any part re-reads it.
type Stamp = Option<(u64, u64, i64, i64, i64, i64)>;

/// The live rules of one folder.
#[derive(Debug)]
pub struct Ignores {
    data: PathBuf,
    now: RwLock<(Stamp, Rules)>,
    /// The rules as of the last [`Ignores::take_change`].
    taken: Mutex<Rules>,
}

impl Ignores {
    /// The rules of the folder `data` (none if it has no ignore file).
    pub fn load(data: &Path) -> Arc<Ignores> {
        let (stamp, rules) = read(data);
        Arc::new(Ignores {
            data: data.to_path_buf(),
            taken: Mutex::new(rules.clone()),
            now: RwLock::new((stamp, rules)),
        })
    }

    /// The backing folder.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The current rules.
    pub fn rules(&self) -> Rules {
        self.now.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// True if `path` stays local under the current rules.
    pub fn matches(&self, path: &RelPath, is_dir: bool) -> bool {
        self.now
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .matches(path, is_dir)
    }

    /// Like [`Ignores::matches`], looking at the backing folder for whether `path` is a
    /// directory (a missing path counts as a file).
    pub fn matches_now(&self, path: &RelPath) -> bool {
        self.rules().matches_at(&self.data, path)
    }

    /// Re-reads the rules if the file changed (one `lstat` otherwise).
    pub fn refresh(&self) {
        let stamp = stamp(&self.data);
        if self.now.read().unwrap_or_else(|e| e.into_inner()).0 == stamp {
            return;
        }
        let (stamp, rules) = read(&self.data);
        tracing::info!("{IGNORE_FILE} changed: rules reloaded");
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = (stamp, rules);
    }

    /// The rules as of the last call and the current ones, if they differ.
    pub fn take_change(&self) -> Option<(Rules, Rules)> {
        let now = self.rules();
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.same(&now) {
            return None;
        }
        Some((std::mem::replace(&mut *taken, now.clone()), now))
    }
}

/// True if `path` below `data` is a directory (not following symlinks).
pub fn is_dir(data: &Path, path: &RelPath) -> bool {
    std::fs::symlink_metadata(data.join(path.as_path())).is_ok_and(|m| m.is_dir())
}

fn stamp(data: &Path) -> Stamp {
    let md = std::fs::symlink_metadata(data.join(IGNORE_FILE)).ok()?;
    Some((
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    ))
}

/// Reads the rules (a bad rule or an unreadable file is logged; the rest applies).
fn read(data: &Path) -> (Stamp, Rules) {
    let s = stamp(data);
    match parse(data) {
        Ok(r) => (s, r),
        Err((r, e)) => {
            tracing::warn!("{e}");
            (s, r)
        }
    }
}

fn parse(data: &Path) -> Result<Rules, (Rules, IgnoreError)> {
    let file = data.join(IGNORE_FILE);
    let p = file.display().to_string();
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Rules::none()),
        Err(source) => return Err((Rules::none(), IgnoreError::Io { path: p, source })),
    };
    let mut b = GitignoreBuilder::new(data);
    let mut first_err = None;
    for line in text.lines() {
        if let Err(source) = b.add_line(Some(file.clone()), line) {
            first_err.get_or_insert(IgnoreError::Rule {
                path: p.clone(),
                source,
            });
        }
    }
    let rules = match b.build() {
        Ok(g) => Rules(Arc::new(g)),
        Err(source) => return Err((Rules::none(), IgnoreError::Rule { path: p, source })),
    };
    match first_err {
        Some(e) => Err((rules, e)),
        None => Ok(rules),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn gitignore_syntax_and_reload() {
        let t = tempfile::tempdir().unwrap();
        let ig = Ignores::load(t.path());
        assert!(!ig.matches(&rp("a.o"), false));
        std::fs::write(t.path().join(IGNORE_FILE), "*.o\ntarget/\n/top\n!keep.o\n").unwrap();
        ig.refresh();
        assert!(ig.matches(&rp("a.o"), false) && ig.matches(&rp("d/b.o"), false));
        assert!(!ig.matches(&rp("keep.o"), false));
        assert!(ig.matches(&rp("target"), true) && ig.matches(&rp("x/target/y/z"), false));
        assert!(
            !ig.matches(&rp("target"), false),
            "a file named target is not a dir"
        );
        assert!(ig.matches(&rp("top"), false) && !ig.matches(&rp("d/top"), false));
        assert!(!ig.matches(&rp(IGNORE_FILE), false));
        let (old, new) = ig.take_change().expect("a change");
        assert!(!old.matches(&rp("a.o"), false) && new.matches(&rp("a.o"), false));
        assert!(ig.take_change().is_none());
        std::fs::write(t.path().join(IGNORE_FILE), "*.tmp\n").unwrap();
        ig.refresh();
        assert!(!ig.matches(&rp("a.o"), false) && ig.matches(&rp("a.tmp"), false));
    }

    #[test]
    fn a_bad_rule_keeps_the_others() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(IGNORE_FILE), "a[\n*.o\n").unwrap();
        let ig = Ignores::load(t.path());
        assert!(ig.matches(&rp("x.o"), false));
    }
}
