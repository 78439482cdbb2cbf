//! The receiver's side of leaf deltas and patches (`sync::leaf_delta`): the `Index`
//! entries we wanted and described, kept by path until their `LeafPatch` comes, and
//! the small file each `LeafDelta` or `LeafPatch` makes from our own version's leaves
//! and pieces, to apply as an ordinary whole-file update.

use super::{whole_update, Next, Rebuilds, DESCRIBED};
use crate::path::RelPath;
use crate::sync::leaf_delta::{rebuild, Marked};
use crate::wire::{content_id, AckKind, FileUpdate, IndexItem, Message, NackReason, WireVersion};
use std::os::fd::AsRawFd;

/// Most `Index` entries kept for their `LeafPatch` (a peer that never sends them
/// cannot grow the map without end; one past it is refused and sent whole).
pub const MAX_EXPECTED: usize = 1 << 16;

impl Rebuilds {
    /// `items`, entries of the peer's `Index` we want and described by their leaves:
    /// their content may come as a `LeafPatch` ([`Rebuilds::leaf_patch`]).
    pub fn expect(&mut self, items: Vec<IndexItem>) {
        for it in items {
            if self.expected.len() < MAX_EXPECTED || self.expected.contains_key(&it.path) {
                self.expected.insert(it.path.clone(), it);
            }
        }
    }

    /// A `LeafDelta`: the new content from our version's leaves the sender marked and
    /// the delta (blocking: call off the runtime); refused (`UnknownBase`) if they do not
    /// make it.
    pub fn leaf_delta(
        &mut self,
        root: &impl AsRawFd,
        update: FileUpdate,
        marked: Marked,
        delta: &[u8],
    ) -> Next {
        self.leaf_rebuilt(root, update, marked, (delta, None))
    }

    /// A `LeafPatch` of update `id`: a [`Rebuilds::leaf_delta`] whose update is the
    /// entry at `path` we [expected](Rebuilds::expect) at version `vv`, its result
    /// checked against that entry's content id; refused (`UnknownBase`) if we expect
    /// none there.
    pub fn leaf_patch(
        &mut self,
        root: &impl AsRawFd,
        (id, path, vv): (u64, RelPath, WireVersion),
        marked: Marked,
        delta: &[u8],
    ) -> Next {
        let Some(it) = self.expected.remove(&path) else {
            tracing::info!("{path}: leaf patch for no entry we wanted");
            return leaf_nack(id, NackReason::UnknownBase);
        };
        let update = FileUpdate {
            id,
            file: 0,
            path,
            base: None,
            size: it.size,
            mode: it.mode,
            mtime: it.mtime,
            ranges: vec![],
            hash: [0; 32], // (set from the result, once it matches the content id)
            vv,
        };
        self.leaf_rebuilt(root, update, marked, (delta, Some(it.hash)))
    }

    /// The file a leaf delta (`expect`: none) or patch (the content id expected)
    /// makes, to apply; refused if it cannot be built or is not what was expected.
    fn leaf_rebuilt(
        &mut self,
        root: &impl AsRawFd,
        mut update: FileUpdate,
        marked: Marked,
        (delta, expect): (&[u8], Option<[u8; 16]>),
    ) -> Next {
        use NackReason::{HashMismatch, UnknownBase};
        let size = update.size;
        if !DESCRIBED.contains(&size) || !self.budget.take(size as usize) {
            return leaf_nack(update.id, UnknownBase);
        }
        let bare = (delta, expect.is_some());
        let built = rebuild(root, &update.path, marked, bare, size);
        let built = built.and_then(|content| match expect {
            None => Ok(content),
            Some(id) => {
                let hash = *blake3::hash(&content).as_bytes();
                update.hash = hash;
                (content_id(&hash) == id)
                    .then_some(content)
                    .ok_or_else(|| "the result is not the entry's content".to_string())
            }
        });
        match built {
            Ok(content) => Next::Apply(whole_update(update, &content), size as usize),
            Err(e) => {
                self.budget.give(size as usize);
                tracing::info!("{}: leaf delta refused: {e}", update.path);
                let reason = if expect.is_some() {
                    HashMismatch
                } else {
                    UnknownBase
                };
                leaf_nack(update.id, reason)
            }
        }
    }
}

/// The refusal of leaf delta (or patch) `id`.
fn leaf_nack(id: u64, reason: NackReason) -> Next {
    Next::Reply(Message::Nack {
        of: AckKind::Update(id),
        reason,
    })
}
