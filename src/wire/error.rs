//! Errors of the wire layer.

/// Anything that can go wrong encoding, decoding, framing or decompressing.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix announced a frame larger than [`MAX_FRAME`](super::MAX_FRAME).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message to send would encode to more than [`MAX_FRAME`](super::MAX_FRAME) bytes.
    #[error("message does not fit in a {max}-byte frame")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a length prefix or a payload.
    #[error("stream ended inside a frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes that were needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::Error),
    /// The bytes are not a well-formed message (bad tag, short data, bad path, trailing
    /// bytes, ...).
    #[error("malformed message: {0}")]
    Decode(#[source] bincode::Error),
    /// The message is well formed but breaks a protocol rule.
    #[error("invalid message: {0}")]
    Invalid(#[from] Violation),
    /// A compressed range could not be decompressed (corrupt, or larger than declared).
    #[error("range decompression failed: {0}")]
    Decompress(String),
    /// A range decoded to a different length than it declared.
    #[error("range decoded to {actual} bytes but declares {declared}")]
    LengthMismatch {
        /// The range's declared `len`.
        declared: u64,
        /// What the data decoded to.
        actual: usize,
    },
    /// A feature reserved for a later protocol revision.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The peer's `Hello` names another protocol version.
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// The peer's `Hello` names another folder.
    #[error("peer syncs a different folder")]
    FolderMismatch,
    /// The peer sent `Refused`.
    #[error("peer refused: {0}")]
    Refused(String),
    /// A message of the wrong kind arrived.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// The kind that was expected.
        expected: &'static str,
        /// [`Message::kind`](super::Message::kind) of what arrived.
        got: &'static str,
    },
}

/// A protocol rule broken by an otherwise well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A string or byte field is longer than its limit.
    #[error("{field} is {len} bytes, limit {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A number is above its limit.
    #[error("{field} is {value}, limit {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A byte field that must not be empty is.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A byte field contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// A path that must name an entry is the data root.
    #[error("{0} must name an entry, not the root")]
    RootPath(&'static str),
    /// A byte field's length is not a whole number of its items.
    #[error("{field} is {len} bytes, not a multiple of {item}")]
    Ragged {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The size of one item.
        item: usize,
    },
    /// A code outside the values its field allows.
    #[error("{field} is {value}, not a value it may take")]
    BadCode {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Two lists that go in pairs differ in length.
    #[error("{0}: lists of different lengths")]
    Unpaired(&'static str),
    /// A list that must be strictly increasing is not.
    #[error("{0} is not strictly increasing")]
    NotIncreasing(&'static str),
    /// A timestamp's nanoseconds are not below one billion.
    #[error("timestamp nanoseconds {0} out of range")]
    BadNanos(u32),
    /// A range has length zero.
    #[error("range {index} is empty")]
    EmptyRange {
        /// Position in `ranges`.
        index: usize,
    },
    /// A range starts before the previous one ends (unsorted or overlapping).
    #[error("range {index} starts before the previous range ends")]
    RangeOrder {
        /// Position in `ranges`.
        index: usize,
    },
    /// A range ends past the file's new size (or its end overflows).
    #[error("range {index} ends beyond the file size {size}")]
    RangeBeyondSize {
        /// Position in `ranges`.
        index: usize,
        /// The update's `size`.
        size: u64,
    },
    /// A range declares more than [`MAX_RANGE_LEN`](super::MAX_RANGE_LEN) bytes.
    #[error("range {index} declares {len} bytes, limit {max}")]
    RangeTooLong {
        /// Position in `ranges`.
        index: usize,
        /// Its declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The ranges of one update add up to more than
    /// [`MAX_UPDATE_SPAN`](super::MAX_UPDATE_SPAN).
    #[error("ranges total more than {max} bytes")]
    UpdateTooLarge {
        /// The limit.
        max: u64,
    },
    /// A raw range carries a different number of bytes than it declares.
    #[error("raw range {index} carries {actual} bytes but declares {declared}")]
    RawLength {
        /// Position in `ranges`.
        index: usize,
        /// Its declared length.
        declared: u64,
        /// Bytes carried.
        actual: usize,
    },
    /// A compressed range carries more bytes than it declares uncompressed.
    #[error("compressed range {index} carries {actual} bytes, more than its length {declared}")]
    CompressedTooLarge {
        /// Position in `ranges`.
        index: usize,
        /// Its declared length.
        declared: u64,
        /// Bytes carried.
        actual: usize,
    },
    /// A metadata batch has no ops.
    #[error("metadata batch is empty")]
    EmptyBatch,
    /// A version vector is not strictly sorted by node or holds a zero counter.
    #[error("malformed version vector")]
    BadVersion,
    /// Sequence numbers in a metadata batch do not strictly increase.
    #[error("metadata batch sequence {seq} does not increase")]
    SeqOrder {
        /// The offending sequence number.
        seq: u64,
    },
}
