//! The versioned wire protocol spoken between two syncfs peers: message types, their
//! byte encoding, validation, range compression and length-prefixed framing.
//!
//! This module is pure: it knows nothing about the journal's state, the filesystem or
//! libp2p. It turns [`Message`]s into bytes and bytes back into [`Message`]s, and it is
//! paranoid about doing so:
//!
//! - **Nothing from the wire is trusted.** Every decoded message is validated before it
//!   is returned ([`decode`] / [`read_frame`]): paths are [`RelPath`]s (which cannot
//!   escape the store), byte ranges are sorted, non-overlapping and inside the declared
//!   file size (checked arithmetic, no overflow), lengths agree with the data carried,
//!   timestamps are well formed and strings are short. Hostile bytes yield a
//!   [`WireError`], never a panic.
//! - **Bounded sizes.** A frame is at most [`MAX_FRAME`] bytes and the length prefix is
//!   checked *before* any buffer is sized by it; a range expands to at most
//!   [`MAX_RANGE_LEN`] bytes, and decompression is capped at the range's declared
//!   length, so a decompression bomb is an error, not an allocation.
//! - **Data integrity.** A [`FileUpdate`] carries the BLAKE3 hash of the whole new
//!   content (and of the base it was computed against), so the receiver can verify what
//!   it will install before it installs it.
//! - **One fixed encoding.** bincode 1 with explicit options (little-endian, fixed-width
//!   integers, size limit, trailing bytes rejected), chosen in a single place so that
//!   encoder and decoder cannot disagree. Pinned-hex tests guard the format.
//!
//! The protocol itself (handshake, update/ack flow, versioning rules) is described in
//! `docs/PROTOCOL.md`.
//!
//! [`RelPath`]: crate::path::RelPath

mod codec;
mod columns;
pub mod compress;
mod error;
mod frame;
mod message;
mod op;
mod range;
mod stream;
mod validate;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

pub use codec::{decode, encode};
pub use error::{Violation, WireError};
pub use frame::{encode_frame, read_frame, write_frame};
pub use message::{
    base_id, check_hello, content_id, hash48_bytes, hash48_from, short48, AckKind, ChunkNode,
    DirDigest, Encoding, FileUpdate, IndexItem, ItemKind, Message, MetaItem, NackReason, RangeData,
    StagedItem, WireVersion,
};
pub use op::{WireOp, WireSetTime, WireTime};
pub use range::{compress_range, decompress_range};
pub use stream::{FramedStream, Progress};

/// A bitmap of `n` bits (bit `i % 8` of byte `i / 8`) with the bits `ones` set.
pub fn bitmap(n: usize, ones: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for i in ones.into_iter().filter(|&i| i < n) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// The set bits of a bitmap of `n` bits, or `None` if it is not exactly
/// ⌈n / 8⌉ bytes or sets a bit past `n`.
pub fn bitmap_ones(bits: &[u8], n: usize) -> Option<Vec<usize>> {
    if bits.len() != n.div_ceil(8) {
        return None;
    }
    let set = |i: usize| bits[i / 8] & (1 << (i % 8)) != 0;
    if (n..bits.len() * 8).any(set) {
        return None;
    }
    Some((0..n).filter(|&i| set(i)).collect())
}

/// The protocol version this build speaks; sent in [`Message::Hello`].
/// Peers with a different version refuse each other (see `docs/PROTOCOL.md`).
pub const PROTOCOL_VERSION: u32 = 24;

/// The libp2p stream protocol name under which [`Message`] frames are exchanged.
pub const STREAM_PROTOCOL: &str = "/syncfs/sync/24";

/// Most pairs in one version vector (nodes that ever changed one entry).
pub const MAX_VV_PAIRS: usize = 64;

/// Most entries in one `Index` message (and paths in one `IndexAck`).
pub const MAX_INDEX_ITEMS: usize = 16 * 1024;

/// Most entry digests in one `SummaryAck` (8 MiB of them), and most cells in its sketch.
pub const MAX_SAME_DIGESTS: usize = 1 << 20;

/// Bytes of an entry digest (`SummaryAck`), and of a key in its sketch.
pub const SAME_DIGEST_BYTES: usize = 6;

/// Bytes of a directory's key in a `Summary` sketch: its `DirDigest` key (3) and
/// digest (6).
pub const DIR_KEY_BYTES: usize = 9;

/// Most leaves described for one file in an `IndexAck` (files up to 64 KiB have about
/// 256 of 256 bytes; their FastCDC leaves are at least 64 bytes).
pub const MAX_FILE_LEAVES: usize = 1024;

/// Largest encoded message (frame payload, excluding the 4-byte length prefix), in bytes.
pub const MAX_FRAME: usize = 16 << 20;

/// Largest uncompressed length of one [`RangeData`], in bytes. Senders split longer
/// dirty extents into several ranges; decompression never produces more than this.
pub const MAX_RANGE_LEN: usize = MAX_FRAME;

/// Largest sum of the uncompressed range lengths of one [`FileUpdate`], in bytes.
pub const MAX_UPDATE_SPAN: u64 = 1 << 30;

/// Most ranges one update may carry, its parts included (each costs memory to hold
/// whatever its data length).
pub const MAX_UPDATE_RANGES: usize = 1 << 20;

/// Largest file size a peer may ask for, in bytes (1 TiB); a store's `max_file_mib`
/// may set a lower one.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Most chunk-tree nodes (offered, or answered) in one message.
pub const MAX_CHUNK_NODES: usize = 1 << 16;
/// Most files a `ChunkOffer` names as its sources (version 14).
pub const MAX_CHUNK_SOURCES: usize = 4;
/// Most bytes of a `ChunkOffer`'s sketch (version 17).
pub const MAX_SKETCH: usize = crate::chunks::sketch::MAX_CELLS * crate::chunks::sketch::CELL;
/// Most bytes of a `ChunkPick`'s holes, and of a `ChunkRound`'s matched ops (version
/// 20).
pub const MAX_MATCH_BYTES: usize = crate::chunks::matching::MAX_ENCODED;
/// `SketchAsk.stream`: the leaf sketch's cells (version 21).
pub const SKETCH_LEAVES: u8 = 0;
/// `SketchAsk.stream`: the in-place sketch's sample stream (version 21).
pub const SKETCH_SAMPLE: u8 = 1;
/// `SketchAsk.stream`: the in-place sketch's full stream (version 21).
pub const SKETCH_PIECES: u8 = 2;
/// Bytes of one symbol of an in-place sketch (version 21).
pub const INPLACE_SYMBOL: usize = crate::chunks::inplace::SYMBOL;
/// Most symbols one `SketchAsk` may ask for (version 21).
pub const MAX_INPLACE_SYMBOLS: u32 = crate::chunks::inplace::MAX_SYMBOLS;
/// Bytes of one block hash in a `ChunkRound` (see `crate::chunks::block_hash`).
pub const BLOCK_HASH: usize = 6;

/// Most entries in one [`Message::Staged`] (a receiver keeps parts of fewer updates
/// per peer).
pub const MAX_STAGED_ITEMS: usize = 64;

/// Longest [`Message::Hello`] `node_name`, in bytes.
pub const MAX_NODE_NAME: usize = 255;

/// Longest free-text reason ([`Message::Refused`], [`NackReason`]), in bytes.
pub const MAX_REASON: usize = 4096;

/// Longest symbolic-link target carried by a metadata op, in bytes (Linux `PATH_MAX`).
pub const MAX_SYMLINK_TARGET: usize = 4096;

/// Longest extended-attribute name, in bytes (Linux `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;

/// Longest extended-attribute value, in bytes (Linux `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
