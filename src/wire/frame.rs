//! Length-prefixed framing over any `futures::io` stream (libp2p streams included):
//! each frame is a little-endian `u32` payload length followed by the payload, one
//! encoded [`Message`].
//!
//! `read_frame` and `write_frame` are not cancellation-safe: dropping one midway leaves
//! the stream at an unknown position, so the stream must then be closed.

use super::{decode, encode, Message, WireError, MAX_FRAME};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::ErrorKind;

/// Encodes `msg` and writes it as one frame, then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Appends the frame of `msg` (length prefix and payload) to `buf`.
pub fn encode_frame(msg: &Message, buf: &mut Vec<u8>) -> Result<(), WireError> {
    let payload = encode(msg)?;
    let len =
        u32::try_from(payload.len()).map_err(|_| WireError::MessageTooLarge { max: MAX_FRAME })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// Reads one frame and decodes it. `Ok(None)` on a clean end of stream before a frame;
/// an error on a length over [`MAX_FRAME`] (checked before allocating), on a stream
/// that ends inside a frame, or on a payload that does not decode and validate.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, WireError> {
    let Some(len) = read_len(r, MAX_FRAME).await? else {
        return Ok(None);
    };
    let payload = read_payload(r, len).await?;
    decode(&payload).map(Some)
}

/// Reads the length prefix; `None` on end of stream before its first byte.
pub(super) async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<usize>, WireError> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Truncated { expected: 4, got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(buf);
    if len as usize > max {
        return Err(WireError::FrameTooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(Some(len as usize))
}

/// Reads exactly `len` payload bytes. The buffer grows with the bytes that actually
/// arrive, so a peer announcing a large frame and sending nothing costs nothing.
pub(super) async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::new();
    (&mut *r).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(WireError::Truncated {
            expected: len,
            got: buf.len(),
        });
    }
    Ok(buf)
}
