//! STUB written by the lead so the crate compiles while the applier is being written:
//! replace this file entirely with the real module, keeping these public signatures.

use crate::journal::MetaOp;
use crate::path::RelPath;
use crate::wire::{FileUpdate, NackReason};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

/// Hooks into the local mount (see the task description).
pub trait ApplyHooks: Send + Sync + 'static {
    /// Blocks access to this backing inode through the mount until the guard drops.
    fn hold(&self, backing_ino: u64) -> Box<dyn std::any::Any + Send>;
    /// Drop the kernel's cached pages/attrs of this inode.
    fn invalidate_inode(&self, backing_ino: u64);
    /// Drop the kernel's cached dentry `name` in this directory.
    fn invalidate_entry(&self, parent_backing_ino: u64, name: &OsStr);
}

/// Hooks that do nothing.
pub struct NoHooks;
impl ApplyHooks for NoHooks {
    fn hold(&self, _: u64) -> Box<dyn std::any::Any + Send> {
        Box::new(())
    }
    fn invalidate_inode(&self, _: u64) {}
    fn invalidate_entry(&self, _: u64, _: &OsStr) {}
}

/// Stub error.
#[derive(Debug, thiserror::Error)]
#[error("applier not implemented yet")]
pub struct ApplyError;

impl ApplyError {
    /// The nack reason for this error.
    pub fn nack_reason(&self) -> NackReason {
        NackReason::Io("applier not implemented yet".into())
    }
}

/// Stub applier.
pub struct Applier;

impl Applier {
    /// Stub.
    pub fn open(
        _data: &Path,
        _staging: &Path,
        _hooks: Arc<dyn ApplyHooks>,
    ) -> Result<Applier, ApplyError> {
        Ok(Applier)
    }
    /// Stub.
    pub fn apply_update(&self, _u: &FileUpdate) -> Result<(), ApplyError> {
        Err(ApplyError)
    }
    /// Stub.
    pub fn apply_meta(&self, _op: &MetaOp) -> Result<(), ApplyError> {
        Err(ApplyError)
    }
    /// Stub.
    pub fn file_hash(&self, _path: &RelPath) -> Result<Option<[u8; 32]>, ApplyError> {
        Err(ApplyError)
    }
}
