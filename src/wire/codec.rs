//! Message <-> bytes, with validation on both sides.

use super::validate::validate;
use super::{Message, WireError, MAX_FRAME};
use bincode::Options;

/// The one and only bincode configuration of the wire format.
pub(super) fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME as u64)
        .reject_trailing_bytes()
}

/// Validates `msg` and encodes it as one frame payload (at most [`MAX_FRAME`] bytes).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    validate(msg)?;
    codec().serialize(msg).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => WireError::MessageTooLarge { max: MAX_FRAME },
        _ => WireError::Encode(e),
    })
}

/// Encodes `msg` without validating it (for a message whose data was moved aside).
pub(super) fn encode_unchecked(msg: &Message) -> Result<Vec<u8>, WireError> {
    codec().serialize(msg).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => WireError::MessageTooLarge { max: MAX_FRAME },
        _ => WireError::Encode(e),
    })
}

/// Decodes a payload without validating it; the caller validates once it is whole.
pub(super) fn decode_unchecked(bytes: &[u8]) -> Result<Message, WireError> {
    codec().deserialize(bytes).map_err(WireError::Decode)
}

/// Decodes one frame payload and validates the message. All of `bytes` must be used.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len: bytes.len() as u64,
            max: MAX_FRAME,
        });
    }
    let msg: Message = codec().deserialize(bytes).map_err(WireError::Decode)?;
    validate(&msg)?;
    Ok(msg)
}
