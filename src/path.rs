//! `RelPath`: a path relative to the store's data root, validated so that it can never
//! escape the store (no absolute paths, no `..`, no empty or NUL components).
//!
//! Every path that crosses the wire or the journal is a `RelPath`; turning one into a
//! backing-store location is only possible through [`RelPath::components`], which yields
//! plain file names for `*at()` resolution.

use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Longest relative path accepted from anywhere (bytes).
pub const MAX_REL_PATH: usize = 16 * 1024;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path was empty where a name is needed, or had an empty component.
    #[error("empty path component")]
    Empty,
    /// The path was absolute.
    #[error("absolute path not allowed: {0}")]
    Absolute(String),
    /// The path contained `.` or `..`.
    #[error("path component '.' or '..' not allowed: {0}")]
    DotComponent(String),
    /// The path contained a NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// The path was longer than [`MAX_REL_PATH`].
    #[error("path longer than {MAX_REL_PATH} bytes")]
    TooLong,
}

/// A validated path relative to the data root; the empty path is the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(try_from = "serde_bytes::ByteBuf", into = "serde_bytes::ByteBuf")]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The data root itself.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Validates raw bytes (`a/b/c`, no leading or trailing slash).
    pub fn from_bytes(bytes: &[u8]) -> Result<RelPath, PathError> {
        if bytes.len() > MAX_REL_PATH {
            return Err(PathError::TooLong);
        }
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul);
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(String::from_utf8_lossy(bytes).into()));
        }
        for comp in bytes.split(|b| *b == b'/') {
            check_name(comp, bytes)?;
        }
        Ok(RelPath(bytes.to_vec()))
    }

    /// Validates a `Path` (must be relative).
    pub fn from_path(path: &Path) -> Result<RelPath, PathError> {
        RelPath::from_bytes(path.as_os_str().as_bytes())
    }

    /// This path with one more component.
    pub fn join(&self, name: &OsStr) -> Result<RelPath, PathError> {
        let name = name.as_bytes();
        check_name(name, name)?;
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath::from_bytes(&v)
    }

    /// True for the data root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As an `OsStr` (relative, for `*at()` calls on the root fd).
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// As a relative `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(self.as_os_str())
    }

    /// The file names along the path.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(OsStr::from_bytes)
    }

    /// The parent path and the last name, or `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        if self.is_root() {
            return None;
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Some((
                RelPath(self.0[..i].to_vec()),
                OsStr::from_bytes(&self.0[i + 1..]),
            )),
            None => Some((RelPath::root(), OsStr::from_bytes(&self.0))),
        }
    }

    /// True if `self` equals `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &RelPath) -> bool {
        if prefix.is_root() {
            return true;
        }
        self.0.starts_with(&prefix.0)
            && (self.0.len() == prefix.0.len() || self.0[prefix.0.len()] == b'/')
    }

    /// Replaces the leading `from` with `to` (for renames of a directory).
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        let mut v = to.0.clone();
        if !v.is_empty() && !rest.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(rest);
        Some(RelPath(v))
    }

    /// Converts to an owned `PathBuf`.
    pub fn to_path_buf(&self) -> PathBuf {
        PathBuf::from(OsString::from_vec(self.0.clone()))
    }
}

fn check_name(comp: &[u8], whole: &[u8]) -> Result<(), PathError> {
    match comp {
        b"" => Err(PathError::Empty),
        b"." | b".." => Err(PathError::DotComponent(
            String::from_utf8_lossy(whole).into(),
        )),
        c if c.contains(&b'/') => Err(PathError::Absolute(String::from_utf8_lossy(whole).into())),
        c if c.contains(&0) => Err(PathError::Nul),
        _ => Ok(()),
    }
}

impl TryFrom<Vec<u8>> for RelPath {
    type Error = PathError;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        RelPath::from_bytes(&v)
    }
}

impl TryFrom<serde_bytes::ByteBuf> for RelPath {
    type Error = PathError;
    fn try_from(v: serde_bytes::ByteBuf) -> Result<Self, Self::Error> {
        RelPath::from_bytes(&v)
    }
}

impl From<RelPath> for serde_bytes::ByteBuf {
    fn from(p: RelPath) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(p.0)
    }
}

impl From<RelPath> for Vec<u8> {
    fn from(p: RelPath) -> Vec<u8> {
        p.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        for bad in [
            &b"/etc"[..],
            b"a/../b",
            b"..",
            b".",
            b"a//b",
            b"a/",
            b"a\0b",
        ] {
            assert!(RelPath::from_bytes(bad).is_err(), "{:?}", bad);
        }
        assert!(RelPath::root().join(OsStr::new("..")).is_err());
        assert!(RelPath::root().join(OsStr::new("a/b")).is_err());
    }

    #[test]
    fn accepts_and_splits() {
        let p = RelPath::from_bytes(b"a/b/c.txt").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.as_bytes(), b"a/b");
        assert_eq!(name, "c.txt");
        assert_eq!(p.components().count(), 3);
    }

    #[test]
    fn rebase_only_whole_components() {
        let from = RelPath::from_bytes(b"a/b").unwrap();
        let to = RelPath::from_bytes(b"x").unwrap();
        let p = RelPath::from_bytes(b"a/b/c").unwrap();
        assert_eq!(p.rebase(&from, &to).unwrap().as_bytes(), b"x/c");
        let q = RelPath::from_bytes(b"a/bc").unwrap();
        assert!(q.rebase(&from, &to).is_none());
        assert_eq!(from.rebase(&from, &to).unwrap().as_bytes(), b"x");
    }
}
