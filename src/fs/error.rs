//! The mount's error type: what the kernel is told (an errno), what failed (a message),
//! why (the source), and how loudly to log it. Modelled on mountpoint-s3's `fs/error.rs`.
//! The FUSE adapter logs and replies every error in one place (`fuse::fail`).

use super::record::RecordError;
use crate::sys::Errno;
use std::borrow::Cow;
use tracing::Level;

/// An error of one mount operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}: {}", Errno(*.errno))]
pub struct FsError {
    /// The errno replied to the kernel.
    pub errno: i32,
    /// What failed.
    pub message: Cow<'static, str>,
    /// The underlying cause, if it is more than the errno.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// How loudly the adapter logs it: an answer (`ENOENT` for a lookup) is `DEBUG`, a
    /// fault of ours or of the backing store is `WARN` or `ERROR`.
    pub level: Level,
}

impl FsError {
    /// An errno that answers the caller (no such file, not empty...): logged at debug.
    pub fn errno(errno: i32) -> FsError {
        FsError {
            errno,
            message: Cow::Borrowed("refused"),
            source: None,
            level: Level::DEBUG,
        }
    }

    /// `errno` with a message saying what failed.
    pub fn new(errno: i32, message: impl Into<Cow<'static, str>>) -> FsError {
        FsError {
            message: message.into(),
            ..FsError::errno(errno)
        }
    }

    /// The same error, logged at `level`.
    pub fn at(mut self, level: Level) -> FsError {
        self.level = level;
        self
    }

    /// True if this error carries `errno`.
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

/// A syscall on the backing store failed. Errors that say the store itself is in
/// trouble (I/O, no space, read-only) are warnings; the rest are answers.
impl From<Errno> for FsError {
    fn from(e: Errno) -> FsError {
        let level = match e.0 {
            libc::EIO | libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EMFILE | libc::ENFILE => {
                Level::WARN
            }
            _ => Level::DEBUG,
        };
        FsError::new(e.0, "backing store").at(level)
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> FsError {
        FsError::from(Errno::from(e))
    }
}

/// The journal could not record the change: the operation is refused, loudly (ENOSPC
/// when the journal's disk is full, else EIO).
impl From<RecordError> for FsError {
    fn from(e: RecordError) -> FsError {
        FsError {
            errno: if e.1 .0 { libc::ENOSPC } else { libc::EIO },
            message: Cow::Borrowed("journal refused the change; operation not done"),
            source: Some(Box::new(e)),
            level: Level::ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_failure_is_an_eio_logged_as_an_error_with_its_cause() {
        let e = FsError::from(RecordError::other("disk gone"));
        assert_eq!((e.errno, e.level), (libc::EIO, Level::ERROR));
        let cause = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(cause.as_deref(), Some("recording change failed: disk gone"));
        let full = FsError::from(RecordError(
            "no space".into(),
            crate::fs::record::Full(true),
        ));
        assert_eq!(
            full.errno,
            libc::ENOSPC,
            "a full journal disk is told as such"
        );
    }

    #[test]
    fn backing_errors_keep_their_errno_and_only_store_trouble_is_loud() {
        let gone = FsError::from(Errno(libc::ENOENT));
        assert_eq!((gone.errno, gone.level), (libc::ENOENT, Level::DEBUG));
        let full = FsError::from(Errno(libc::ENOSPC));
        assert_eq!((full.errno, full.level), (libc::ENOSPC, Level::WARN));
        assert!(full.to_string().starts_with("backing store: "), "{full}");
    }
}
