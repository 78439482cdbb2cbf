//! The message types. Their serde layout *is* the wire format: any change to it (even
//! appending a variant or field) needs a new [`PROTOCOL_VERSION`] (see
//! `docs/PROTOCOL.md`).

use super::{WireError, WireOp, WireTime, BLOCK_HASH, PROTOCOL_VERSION};
use crate::path::RelPath;
use serde::{Deserialize, Serialize};

/// One protocol message; each frame carries exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The first message each side sends on a fresh stream.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
        /// Identifies the synced folder; both peers must agree.
        folder_id: [u8; 16],
        /// Human-readable name of the sending node, for logs (not trusted).
        node_name: String,
    },
    /// The handshake failed; the sender closes the stream after this.
    Refused {
        /// Why, for logs.
        reason: String,
    },
    /// New content for one regular file.
    FileUpdate(FileUpdate),
    /// One metadata operation from the sender's ordered log.
    Meta(MetaItem),
    /// Several consecutive metadata operations, in log order (strictly increasing seq).
    MetaBatch(Vec<MetaItem>),
    /// Something was applied durably.
    Ack(AckKind),
    /// Something could not be applied.
    Nack {
        /// What failed.
        of: AckKind,
        /// Why.
        reason: NackReason,
    },
    /// Liveness probe; answered with [`Message::Pong`] carrying the same nonce.
    Ping(u64),
    /// Answer to [`Message::Ping`].
    Pong(u64),
    /// Part of a file update too big for one frame: ranges to stage for update `id`.
    /// Parts precede the `FileUpdate` with the same id, which carries the last ranges,
    /// the size and the hash; ranges across all parts are sorted and disjoint.
    UpdatePart {
        /// The update these ranges belong to.
        id: u64,
        /// The ranges, sorted and disjoint.
        ranges: Vec<RangeData>,
    },
    /// Part of the sender's index: its entries changed after the change number the
    /// receiver acknowledged last (all of them at first contact), in change order.
    Index {
        /// The entries.
        entries: Vec<IndexItem>,
        /// The change number of the last entry (the receiver acks it).
        upto: u64,
        /// True on the last part of this exchange.
        last: bool,
    },
    /// The receiver holds the sender's index up to change number `upto`, and wants the
    /// content of these files (which the sender then sends as whole-file updates, or as
    /// a `LeafDelta` for a file described in `leaves`).
    IndexAck {
        /// The change number acknowledged.
        upto: u64,
        /// The entries of the `Index` answered whose file content the receiver wants:
        /// one bit per entry, in its order (bit `i % 8` of byte `i / 8`; a bitmap since
        /// version 10, paths before).
        #[serde(with = "serde_bytes")]
        want: Vec<u8>,
        /// Per wanted file, in order (shorter: none for the rest): the leaves of the
        /// version the receiver holds there, a small file (version 7): the first 2
        /// bytes of each FastCDC leaf's BLAKE3 (version 22; 3 from version 11, 4
        /// before), in file order (see `crate::chunks::leaves`), 2 bytes each on the
        /// wire. Empty: no version here.
        #[serde(with = "leaf_hashes")]
        leaves: Vec<Vec<u32>>,
    },
    /// At first contact, before any `Index`: a digest of each directory of the sender's
    /// index, so that equal directories cost one digest instead of their entries.
    Summary {
        /// The directories (the root included), in path order.
        dirs: Vec<DirDigest>,
        /// True on the last part.
        last: bool,
        /// Answer with the digests as a list, not a sketch (version 19): the sender
        /// sends a part's directories that differed again so when the sketch of its
        /// first answer did not peel.
        list: bool,
        /// Instead of `dirs` (then empty; version 19), for the whole index in one part:
        /// an invertible Bloom lookup table of the directories' `DirDigest`s (each a
        /// 9-byte key, `key | digest << 24`), in cells of 13 bytes (see
        /// `crate::sync::digests`). The receiver answers over those directories sorted
        /// by (key, digest), or with an empty `differ` if the table does not peel.
        #[serde(with = "serde_bytes")]
        sketch: Vec<u8>,
        /// With a sketch, the checksum of the set of keys it holds; 0 otherwise.
        sum: u64,
    },
    /// The directories of a `Summary` whose digest differs from the receiver's (or
    /// that it lacks): the sender then sends their entries as `Index` messages, but
    /// for those the receiver already holds exactly (`same`).
    SummaryAck {
        /// One bit per directory of the `Summary` answered, in its order (bit `i % 8`
        /// of byte `i / 8`), set for each that differs (a bitmap since version 10).
        #[serde(with = "serde_bytes")]
        differ: Vec<u8>,
        /// The digests of the receiver's entries in those directories (version 7): the
        /// first 6 bytes (8 before version 15), little-endian, of the BLAKE3 of the
        /// entry's path and fields (see `journal::index::entry_digest` and
        /// [`short48`]), as one byte string. At most [`super::MAX_SAME_DIGESTS`].
        #[serde(with = "hashes48")]
        same: Vec<u64>,
        /// One bit per directory set in `differ`, in order, set for each the receiver
        /// holds (version 19): only those have entries in `same` or `sketch`.
        #[serde(with = "serde_bytes")]
        held: Vec<u8>,
        /// Instead of `same` when smaller (version 19; empty: `same` is the list): an
        /// invertible Bloom lookup table of the same digests in cells of 10 bytes (see
        /// `crate::iblt`), at most [`super::MAX_SAME_DIGESTS`] cells.
        #[serde(with = "serde_bytes")]
        sketch: Vec<u8>,
        /// With a sketch, a checksum of the whole set of digests it holds (version 19;
        /// see `crate::sync::digests::set_sum`), so that a wrong peel is caught; 0 with
        /// a list.
        sum: u64,
        /// Set (version 24) when the receiver follows this first contact (see
        /// `crate::sync::follow`): the newest mtime of the entries it described. The
        /// leader holds back its own entries no newer than this (the receiver's may
        /// replace them) until it has read the receiver's index.
        newest: Option<WireTime>,
    },
    /// What the sender has queued for the receiver (for its `syncfs status`): sent when
    /// it changes, at most once a second (at once when it empties or doubles in bytes;
    /// a queue filled from empty once it has lasted a second). No reply.
    Queue {
        /// Files with pending data plus pending metadata ops.
        files: u64,
        /// Bytes of file data pending.
        bytes: u64,
    },
    /// Precedes the `UpdatePart`s of a multi-part update: what they build, so that the
    /// receiver can keep them on disk and a later session can resume after a cut.
    UpdateStart {
        /// The update id (of the parts and the final `FileUpdate`).
        id: u64,
        /// The file (as in the `FileUpdate`).
        path: RelPath,
        /// The base (as in the `FileUpdate`).
        base: Option<u64>,
        /// BLAKE3 of the new content (as in the `FileUpdate`).
        hash: [u8; 32],
        /// Ranges ending at or before this offset are not sent: the receiver takes them
        /// from the parts it kept of the same `path`, `base` and `hash` (see
        /// `Message::Staged`). 0: a fresh start.
        from: u64,
    },
    /// The receiver's second handshake message: the multi-part updates from this
    /// sender it holds parts of (on disk, from an earlier session), and (version 23)
    /// whether the receiver leads first contact (see `crate::sync::follow`).
    Staged {
        /// The updates it holds parts of.
        items: Vec<StagedItem>,
        /// The receiver's node leads a first contact with the sender's (the greater
        /// PeerId, its own first contact not yet acknowledged): its summary finds what
        /// both sides lack, and its [`Message::IndexAsk`] names the sender's entries
        /// it lacks, so the sender sends no summary of its own.
        lead: bool,
    },
    /// Opens a chunk exchange (version 6) for a file the receiver may hold another
    /// version of, with no shared history to delta against: the update's header
    /// (`ranges` empty, `base` none; the receiver rebuilds the content from its own
    /// bytes and the leaves it asks for) and the top level of the file's chunk tree.
    ChunkOffer {
        /// The update (its `id` names the exchange).
        update: FileUpdate,
        /// The top nodes of the new content's chunk tree, in file order.
        top: Vec<ChunkNode>,
        /// Files of the sender's that hold much of the content and that the receiver
        /// is thought to hold too, most first (at most [`MAX_CHUNK_SOURCES`](super::MAX_CHUNK_SOURCES); version
        /// 14): the receiver may rebuild from them, joined end to end in this order,
        /// when it has no usable version of `update.path`.
        from: Vec<RelPath>,
        /// A sketch of the new content's leaves (`crate::chunks::sketch`; version 17):
        /// a whole number of 14-byte cells, the first of a rateless table (version 21;
        /// before, a multiple of 4 of a fixed one; 19 and 3 before version 18), at most
        /// [`MAX_SKETCH`](super::MAX_SKETCH) bytes; empty: none (a small tree).
        #[serde(with = "serde_bytes")]
        sketch: Vec<u8>,
    },
    /// The receiver's answers to the nodes, blocks and pieces offered last, one byte
    /// each, in order: 0 found here, 1 expand (offer its children; parents only), 2
    /// send its bytes (leaves, blocks and pieces), 3 describe it by its blocks' hashes
    /// (leaves of 128 bytes or more; version 8) or a block by its 32-byte pieces'
    /// (blocks of more than 32 bytes; version 11).
    ChunkAnswer {
        /// The exchange (the update id).
        id: u64,
        /// The answers.
        #[serde(with = "serde_bytes")]
        answers: Vec<u8>,
    },
    /// A later round of an exchange: the children of each node answered "expand", the
    /// bytes of each leaf, block or piece answered "send" (concatenated), the block
    /// hashes of each leaf answered "describe", then the piece hashes of each block
    /// answered "describe", all in order; then the literal bytes of the gaps the pick
    /// matched (version 20). The blocks and pieces offered are answered in the next
    /// `ChunkAnswer`, with the children, all in file order.
    ChunkRound {
        /// The exchange (the update id).
        id: u64,
        /// Children lists, one per expanded node.
        children: Vec<Vec<ChunkNode>>,
        /// The leaves', blocks' and pieces' bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// For each described leaf, the hash of each of its 128-byte blocks (the last
        /// may be shorter): the first [`BLOCK_HASH`] bytes of its BLAKE3 (version 8);
        /// then for each described block the hash of each of its 32-byte pieces, the
        /// same way (version 11).
        #[serde(with = "serde_bytes")]
        blocks: Vec<u8>,
        /// For each gap the pick matched (answer 5), in order, the ops that make it
        /// from the receiver's hole and the literal bytes in `data`
        /// (`crate::chunks::matching`; version 20).
        #[serde(with = "serde_bytes")]
        matched: Vec<u8>,
    },
    /// Either side ends an exchange without a result: the file then goes as an
    /// ordinary `FileUpdate` (the receiver holds no version of it, or the versions
    /// share too little).
    ChunkDecline(u64),
    /// A file the receiver described by its leaves (`IndexAck::leaves`), as a delta
    /// (`crate::delta`) against the bytes of the leaves both sides hold (version 7):
    /// `used` has one bit per described leaf (bit `i % 8` of byte `i / 8`), set for each
    /// leaf the sender holds too; those leaves' bytes, in the receiver's file order, are
    /// the delta's base. The header is a whole-file update's (`ranges` empty, `base`
    /// none); the receiver applies the result as one, and answers `Ack` or `Nack`.
    LeafDelta {
        /// The update (its `id` is acked).
        update: FileUpdate,
        /// Which described leaves make the base.
        #[serde(with = "serde_bytes")]
        used: Vec<u8>,
        /// The new content, delta-encoded against the base.
        #[serde(with = "serde_bytes")]
        delta: Vec<u8>,
        /// The described leaves the sender asked about (`LeafAsk`, version 16), strictly
        /// increasing; empty if it asked about none.
        asked: Vec<u16>,
        /// One bit per piece of `LeafPieces` (all of the asked leaves', in order), set
        /// for each the sender found among its own bytes: after the marked leaves, those
        /// pieces' bytes in the receiver's file order make the base too (version 16).
        #[serde(with = "serde_bytes")]
        found: Vec<u8>,
    },
    /// Before a `LeafDelta` (version 16): the sender asks for the hashes of the
    /// 32-byte pieces of some leaves the receiver described in its `IndexAck` and the
    /// sender lacks (around an edit); answered `LeafPieces`.
    LeafAsk {
        /// The file (as named in the `Index`).
        path: RelPath,
        /// Indexes of the described leaves, strictly increasing.
        leaves: Vec<u16>,
    },
    /// The answer to a `LeafAsk` (version 16): for each leaf asked about, in order, the
    /// first 3 bytes (little-endian; 4 before version 22) of the BLAKE3 of each of its
    /// 64-byte pieces: one every 64 bytes, and (version 24) if the leaf's length is not
    /// a multiple, one more ending where it ends; empty if the file is no longer one
    /// described.
    LeafPieces(#[serde(with = "piece_hashes")] Vec<Vec<u32>>),
    /// The receiver's first answer when the offer's sketch decoded (version 17): it
    /// knows the new content's leaves, and answers only those it lacks, by their
    /// index among them, each 2 (send its bytes), 3 (describe it by its blocks) or 5
    /// (match its gap against the receiver's hole, version 20); the exchange goes on
    /// as after a `ChunkAnswer` to those leaves.
    ChunkPick {
        /// The exchange (the update id).
        id: u64,
        /// Indexes of the leaves answered, in the new content's leaf order, strictly
        /// increasing.
        leaves: Vec<u32>,
        /// One answer per leaf, in order.
        #[serde(with = "serde_bytes")]
        answers: Vec<u8>,
        /// The receiver's old bytes of each gap (run of consecutive leaves) answered 5,
        /// in order, by the hashes of their 128-byte blocks
        /// (`crate::chunks::matching`; version 20).
        #[serde(with = "serde_bytes")]
        holes: Vec<u8>,
    },
    /// The receiver asks for more of a sketch of the new content (version 21), when
    /// the offer's leaf sketch did not decode and only its root was offered: the
    /// leaf sketch's cells `from..to` (`stream` 0, [`SKETCH_LEAVES`](super::SKETCH_LEAVES)),
    /// or symbols `from..to` of its in-place sketch (`crate::chunks::inplace`): the
    /// sample stream (1) or the full one (2). Answered `SketchPart`. The root stays
    /// unanswered: the receiver answers it (`ChunkAnswer`) if it gives the sketches
    /// up, or picks (`ChunkPick`) once the leaf sketch decodes.
    SketchAsk {
        /// The exchange (the update id).
        id: u64,
        /// Which sketch: 0 the leaves', 1 the in-place sample, 2 the in-place whole.
        stream: u8,
        /// First cell or symbol asked for.
        from: u32,
        /// The cell or symbol after the last asked for.
        to: u32,
    },
    /// What a `SketchAsk` asked for, in order (version 21): leaf cells of
    /// [`sketch::CELL`](crate::chunks::sketch::CELL) bytes, or in-place symbols of
    /// [`INPLACE_SYMBOL`](super::INPLACE_SYMBOL) bytes.
    SketchPart {
        /// The exchange (the update id).
        id: u64,
        /// The cells or symbols.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A `LeafDelta` of a file whose content, size, mode and mtime are the `Index`
    /// entry at `path` the receiver wanted and described (version 22): no update
    /// header, the receiver takes it from that entry, but for the version (an adopted
    /// entry has none until it is sent). `delta` is a bare zstd
    /// frame (`crate::delta::encode_bare`: no tag, base id or zstd checksum) against
    /// the base the marks make; the receiver checks the result against the entry's
    /// content id. Answered as a `LeafDelta` (`Nack` `UnknownBase` if it holds no
    /// such entry: the sender then sends the file as an ordinary update).
    LeafPatch {
        /// The update id (acked).
        id: u64,
        /// The file, as its `Index` entry named it.
        path: RelPath,
        /// As `LeafDelta::used`.
        #[serde(with = "serde_bytes")]
        used: Vec<u8>,
        /// The new content, a bare delta against the base.
        #[serde(with = "serde_bytes")]
        delta: Vec<u8>,
        /// As `LeafDelta::asked`.
        asked: Vec<u16>,
        /// As `LeafDelta::found`.
        #[serde(with = "serde_bytes")]
        found: Vec<u8>,
        /// The version this content is.
        vv: WireVersion,
    },
    /// At first contact, from the leading side after its last `Index` (version 23):
    /// the digests of the receiver's entries the sender lacks, as its summary found
    /// them. The receiver's own first contact then sends those entries (with those of
    /// the directories the sender lacks and of what changed since) instead of a
    /// summary of its own. No reply.
    IndexAsk {
        /// Entry digests as in `SummaryAck::same`, at most [`super::MAX_SAME_DIGESTS`].
        #[serde(with = "hashes48")]
        digests: Vec<u64>,
        /// The sender holds back entries until it has read the receiver's index
        /// (version 24): the receiver sends one even if it holds no entries (on the
        /// last message of an ask).
        wait: bool,
    },
}

/// One node of a chunk tree on the wire (see `crate::chunks`): 11 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkNode {
    /// The first 6 bytes of the node's BLAKE3 hash, little-endian (6 bytes on the
    /// wire, since version 9; the top two bytes of the value are zero).
    #[serde(with = "hash48")]
    pub hash: u64,
    /// Bytes it covers (at least 1; a u32 since version 9: exchanged files are at
    /// most 1 GiB, 256 MiB before version 13).
    pub len: u32,
    /// A leaf (its bytes can be asked for) rather than a parent (it can be expanded).
    pub leaf: bool,
}

/// Lists of short hashes, each list as one byte string of `N` little-endian bytes a
/// hash (the top bytes of each value are zero): `leaf_hashes` and `piece_hashes`.
mod packed_hashes {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub fn serialize<const N: usize, S: Serializer>(
        lists: &[Vec<u32>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if lists
            .iter()
            .flatten()
            .any(|&h| u64::from(h) >= 1 << (8 * N))
        {
            return Err(serde::ser::Error::custom(format!(
                "a hash wider than {N} bytes"
            )));
        }
        let packed = lists.iter().map(|hashes| {
            let bytes = hashes
                .iter()
                .flat_map(|h| h.to_le_bytes().into_iter().take(N));
            ByteBuf::from(bytes.collect::<Vec<u8>>())
        });
        packed.collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, const N: usize, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Vec<u32>>, D::Error> {
        let lists = Vec::<ByteBuf>::deserialize(d)?;
        lists
            .iter()
            .map(|b| {
                if b.len() % N != 0 {
                    return Err(D::Error::custom("short hashes: not a whole number"));
                }
                let hash = |c: &[u8]| {
                    let mut v = [0u8; 4];
                    v[..N].copy_from_slice(c);
                    u32::from_le_bytes(v)
                };
                Ok(b.chunks(N).map(hash).collect())
            })
            .collect()
    }
}

/// Each file's leaf hashes, 3 bytes a hash.
mod leaf_hashes {
    use serde::{Deserializer, Serializer};
    const N: usize = crate::chunks::leaves::HASH_BYTES;

    pub fn serialize<S: Serializer>(files: &[Vec<u32>], s: S) -> Result<S::Ok, S::Error> {
        super::packed_hashes::serialize::<N, S>(files, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u32>>, D::Error> {
        super::packed_hashes::deserialize::<N, D>(d)
    }
}

/// Each leaf's piece hashes, 4 bytes a hash.
mod piece_hashes {
    use serde::{Deserializer, Serializer};
    const N: usize = crate::chunks::pieces::HASH_BYTES;

    pub fn serialize<S: Serializer>(leaves: &[Vec<u32>], s: S) -> Result<S::Ok, S::Error> {
        super::packed_hashes::serialize::<N, S>(leaves, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u32>>, D::Error> {
        super::packed_hashes::deserialize::<N, D>(d)
    }
}

/// A 48-bit hash as its 6 little-endian bytes.
mod hash48 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(h: &u64, s: S) -> Result<S::Ok, S::Error> {
        super::hash48_bytes(*h).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(super::hash48_from(&<[u8; 6]>::deserialize(d)?))
    }
}

/// Many 48-bit hashes as one byte string, 6 little-endian bytes each.
mod hashes48 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub fn serialize<S: Serializer>(hs: &[u64], s: S) -> Result<S::Ok, S::Error> {
        if hs.iter().any(|&h| h != super::short48(h)) {
            return Err(serde::ser::Error::custom("a hash wider than 6 bytes"));
        }
        let bytes: Vec<u8> = hs.iter().flat_map(|&h| super::hash48_bytes(h)).collect();
        ByteBuf::from(bytes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let b = ByteBuf::deserialize(d)?;
        if b.len() % super::BLOCK_HASH != 0 {
            return Err(D::Error::custom("48-bit hashes: not a whole number"));
        }
        Ok(b.chunks(super::BLOCK_HASH)
            .map(super::hash48_from)
            .collect())
    }
}

/// The low 48 bits of a 64-bit hash: what goes on the wire as 6 bytes.
pub fn short48(h: u64) -> u64 {
    h & ((1 << 48) - 1)
}

/// A 48-bit hash's 6 bytes on the wire, little-endian (its top two bytes dropped).
pub fn hash48_bytes(h: u64) -> [u8; BLOCK_HASH] {
    h.to_le_bytes()[..BLOCK_HASH].try_into().expect("6 bytes")
}

/// The 48-bit hash in 6 little-endian bytes.
pub fn hash48_from(b: &[u8]) -> u64 {
    let mut all = [0u8; 8];
    all[..BLOCK_HASH].copy_from_slice(b);
    u64::from_le_bytes(all)
}

/// Parts of one multi-part update the receiver holds: every range ending at or before
/// `upto` arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedItem {
    /// The file.
    pub path: RelPath,
    /// The update's base.
    pub base: Option<u64>,
    /// The update's content hash.
    pub hash: [u8; 32],
    /// The end of the last range held.
    pub upto: u64,
}

/// The id of a content in an index entry: the first 16 bytes of its BLAKE3 hash (two
/// contents share one only by a collision of 128 bits: "same content" is decided on it).
pub fn content_id(hash: &[u8; 32]) -> [u8; 16] {
    hash[..16].try_into().expect("16 bytes")
}

/// The id of a base content on the wire: the first 8 bytes (LE) of its BLAKE3 hash. A
/// receiver whose content has another id refuses the update (`UnknownBase`); one that
/// matches by chance is caught by the result's whole hash, which is checked anyway.
pub fn base_id(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// One directory in a `Summary` (version 10; see [`DirDigest::of`]): 9 bytes (12
/// before version 12) instead of its path and a digest of its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirDigest {
    /// Which directory: the first 3 bytes (LE) of BLAKE3 of its path (4 before version
    /// 12; the top byte of the value is zero). Several may share one; it only says
    /// where the receiver looks (one directory under a key, rarely two, up to
    /// millions of directories).
    #[serde(with = "key24")]
    pub key: u32,
    /// The first 6 bytes (LE) of BLAKE3 of its path and its children's digest (8
    /// before version 12): equal on both sides only for the same directory with the
    /// same children. Compared only with the receiver's directories under the same
    /// key, so 48 bits leave a false match at about 2^-48 per directory.
    #[serde(with = "hash48")]
    pub digest: u64,
}

/// A [`DirDigest::key`]'s 3 bytes on the wire, little-endian.
mod key24 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(k: &u32, s: S) -> Result<S::Ok, S::Error> {
        if *k >= 1 << 24 {
            return Err(serde::ser::Error::custom(
                "a directory key wider than 3 bytes",
            ));
        }
        <[u8; 3]>::try_from(&k.to_le_bytes()[..3])
            .expect("3 bytes")
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let [a, b, c] = <[u8; 3]>::deserialize(d)?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }
}

/// Bytes of a [`DirDigest::digest`] (BLAKE3's first, little-endian).
const DIR_DIGEST_BYTES: usize = 6;

impl DirDigest {
    /// The summary item of directory `path` whose children digest to `children`
    /// (`journal::index::Index::digests`).
    pub fn of(path: &RelPath, children: &[u8; 16]) -> DirDigest {
        DirDigest {
            key: Self::key_of(path),
            digest: {
                let mut h = blake3::Hasher::new();
                h.update(&(path.as_bytes().len() as u64).to_le_bytes());
                h.update(path.as_bytes());
                h.update(children);
                hash48_from(&h.finalize().as_bytes()[..DIR_DIGEST_BYTES])
            },
        }
    }

    /// The `key` of directory `path`.
    pub fn key_of(path: &RelPath) -> u32 {
        let h = blake3::hash(path.as_bytes()).as_bytes()[..3].to_vec();
        u32::from_le_bytes([h[0], h[1], h[2], 0])
    }
}

/// A version vector on the wire: `(node, counter)` pairs, strictly sorted by node,
/// every counter above 0 (see [`crate::vv`]).
pub type WireVersion = Vec<(u64, u64)>;

/// One metadata operation with its sequence number and the version it makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaItem {
    /// The op's sequence number in the sender's log.
    pub seq: u64,
    /// The operation.
    pub op: WireOp,
    /// The version of the op's target path after the op (for a rename: of `to`).
    pub vv: WireVersion,
}

/// What one index entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One entry of a peer's index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexItem {
    /// Where the entry lives (never the root).
    pub path: RelPath,
    /// File, directory or symlink.
    pub kind: ItemKind,
    /// Size in bytes (files).
    pub size: u64,
    /// Modification time.
    pub mtime: WireTime,
    /// Permission bits.
    pub mode: u32,
    /// The content's id ([`content_id`]: the first 16 bytes of the BLAKE3 of the
    /// content, files, or target, symlinks; the whole 32 bytes before version 19);
    /// zeros for directories. The content itself comes with its whole hash.
    pub hash: [u8; 16],
    /// Symlink target (empty otherwise).
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// The entry's version.
    pub vv: WireVersion,
    /// A tombstone: deleted at version `vv`.
    pub deleted: bool,
}

/// What an [`Message::Ack`] or [`Message::Nack`] refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckKind {
    /// The [`FileUpdate`] with this `id`.
    Update(u64),
    /// Metadata ops: for an ack, every op with a seq up to and including this one; for a
    /// nack, the op with this seq (everything before it was applied).
    Meta(u64),
}

/// Why the receiver could not apply something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// The content after applying the ranges did not hash to `FileUpdate::hash`.
    HashMismatch,
    /// The receiver's copy does not hash to `FileUpdate::base`.
    UnknownBase,
    /// The file (or a path the op needs) does not exist on the receiver.
    MissingFile,
    /// The message made no sense to the receiver (e.g. a reserved encoding).
    BadRequest(String),
    /// The receiver hit an I/O error applying it.
    Io(String),
}

/// New content for one regular file, as ranges over a base.
///
/// The new content is: the base (the receiver's current content if `base` is `Some`,
/// or nothing if `None`) truncated or zero-extended to `size`, with every range's bytes
/// written at its offset. Its BLAKE3 hash must equal `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUpdate {
    /// The sender's id for this update, echoed in the ack or nack.
    pub id: u64,
    /// The file's identity (inode) on the sender.
    pub file: u64,
    /// Where the file lives (store-relative; never the root).
    pub path: RelPath,
    /// The content the sender believes the receiver holds, by its [`base_id`] (version
    /// 10; the whole BLAKE3 before); `None`: start from empty (a whole-file replace).
    pub base: Option<u64>,
    /// The new total size in bytes.
    pub size: u64,
    /// The file's mode bits.
    pub mode: u32,
    /// The file's modification time after the update.
    pub mtime: WireTime,
    /// The changed bytes: sorted, non-overlapping, inside `size`.
    pub ranges: Vec<RangeData>,
    /// BLAKE3 of the whole new content.
    pub hash: [u8; 32],
    /// The version this content is.
    pub vv: WireVersion,
}

/// One contiguous run of new bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeData {
    /// Where the run starts in the file.
    pub offset: u64,
    /// Uncompressed length of the run.
    pub len: u64,
    /// How `data` encodes the run.
    pub encoding: Encoding,
    /// The encoded bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// How a [`RangeData`]'s bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The bytes themselves (the stream compression still applies to them).
    Raw,
    /// A zstd stream of the bytes.
    Zstd,
    /// A delta (`crate::delta`) against the receiver's current bytes of the same range.
    ZstdDict,
    /// Part of the update's joint delta: the first `Joint` range's data is one delta of
    /// the concatenated new bytes of all `Joint` ranges (in order) against the
    /// receiver's current bytes of the same ranges, concatenated; later `Joint` ranges
    /// carry no data. One stream for hundreds of scattered pages costs a fraction of
    /// one delta per page.
    Joint,
}

impl Message {
    /// A `Hello` for this build's [`PROTOCOL_VERSION`].
    pub fn hello(folder_id: [u8; 16], node_name: impl Into<String>) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            folder_id,
            node_name: node_name.into(),
        }
    }

    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Refused { .. } => "refused",
            Message::FileUpdate(_) => "file-update",
            Message::Meta { .. } => "meta",
            Message::MetaBatch(_) => "meta-batch",
            Message::Ack(_) => "ack",
            Message::Nack { .. } => "nack",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::UpdatePart { .. } => "update-part",
            Message::Index { .. } => "index",
            Message::IndexAck { .. } => "index-ack",
            Message::Summary { .. } => "summary",
            Message::SummaryAck { .. } => "summary-ack",
            Message::Queue { .. } => "queue",
            Message::UpdateStart { .. } => "update-start",
            Message::Staged { .. } => "staged",
            Message::ChunkOffer { .. } => "chunk-offer",
            Message::ChunkAnswer { .. } => "chunk-answer",
            Message::ChunkRound { .. } => "chunk-round",
            Message::ChunkDecline(_) => "chunk-decline",
            Message::LeafDelta { .. } => "leaf-delta",
            Message::LeafAsk { .. } => "leaf-ask",
            Message::LeafPieces(_) => "leaf-pieces",
            Message::ChunkPick { .. } => "chunk-pick",
            Message::SketchAsk { .. } => "sketch-ask",
            Message::SketchPart { .. } => "sketch-part",
            Message::LeafPatch { .. } => "leaf-patch",
            Message::IndexAsk { .. } => "index-ask",
        }
    }
}

impl RangeData {
    /// The offset just past this range, or `None` if it overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// Checks the peer's first message against our folder: returns the peer's node name
/// if it is a `Hello` with our version and `folder_id`, else the reason to refuse
/// (or [`WireError::Refused`] if the peer refused us).
pub fn check_hello<'a>(msg: &'a Message, folder_id: &[u8; 16]) -> Result<&'a str, WireError> {
    match msg {
        Message::Hello { version, .. } if *version != PROTOCOL_VERSION => {
            Err(WireError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: *version,
            })
        }
        Message::Hello {
            folder_id: theirs, ..
        } if theirs != folder_id => Err(WireError::FolderMismatch),
        Message::Hello { node_name, .. } => Ok(node_name),
        Message::Refused { reason } => Err(WireError::Refused(reason.clone())),
        other => Err(WireError::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}
