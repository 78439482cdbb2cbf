//! Length-prefixed framing over any `futures::io` stream (libp2p streams included):
//! each frame is a little-endian `u32` payload length followed by the payload, one
//! encoded [`Message`].
//!
//! `read_frame` and `write_frame` are not cancellation-safe: dropping one midway leaves
//! the stream at an unknown position, so the stream must then be closed.

use super::compress::{max_compressed, Compressor, Decompressor};
use super::{decode, encode, Message, WireError, MAX_FRAME};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use std::io::ErrorKind;

/// Encodes `msg` and writes it as one frame, then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    write_frames(w, std::slice::from_ref(msg)).await
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

/// Writes several messages as consecutive frames with one write and one flush, so many
/// small messages share transport packets.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    msgs: &[Message],
) -> Result<(), WireError> {
    let mut buf = Vec::new();
    for msg in msgs {
        encode_frame(msg, &mut buf)?;
    }
    w.write_all(&buf).await?;
    w.flush().await?;
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
async fn read_len<R: AsyncRead + Unpin>(
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
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, WireError> {
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

/// Set in a frame's length prefix when its payload went through the stream compression.
const COMPRESSED: u32 = 1 << 31;
/// Payloads shorter than this go uncompressed.
const MIN_COMPRESS: usize = 64;

/// A bidirectional stream speaking [`Message`] frames; after [`FramedStream::compress`],
/// frame payloads travel through one zstd stream per direction (see [`super::compress`]).
/// Outgoing frames are queued and written together at [`FramedStream::flush`].
#[derive(Debug)]
pub struct FramedStream<S> {
    inner: BufReader<S>,
    out: Vec<u8>,
    comp: Option<Compressor>,
    decomp: Option<Decompressor>,
}

impl<S: AsyncRead> FramedStream<S> {
    /// Wraps a stream positioned at a frame boundary.
    pub fn new(inner: S) -> Self {
        FramedStream {
            inner: BufReader::with_capacity(64 << 10, inner),
            out: Vec::new(),
            comp: None,
            decomp: None,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// Unwraps the underlying stream (bytes read ahead are lost).
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }

    /// Compresses every later frame in both directions at zstd `level`. Both sides call
    /// it right after the handshake, so that no frame is compressed on one side only.
    pub fn compress(&mut self, level: i32) -> Result<(), WireError> {
        self.comp = Some(Compressor::new(level)?);
        self.decomp = Some(Decompressor::new()?);
        Ok(())
    }

    /// Changes the compression level of later frames (no-op before [`Self::compress`]).
    pub fn set_level(&mut self, level: i32) -> Result<(), WireError> {
        match &mut self.comp {
            Some(c) => c.set_level(level),
            None => Ok(()),
        }
    }

    /// Encodes `msg` into the outgoing buffer, compressed if enabled and the message is
    /// not tiny (a flushed zstd block costs more than an ack's raw bytes).
    pub fn queue(&mut self, msg: &Message) -> Result<(), WireError> {
        let Some(comp) = &mut self.comp else {
            return encode_frame(msg, &mut self.out);
        };
        let payload = encode(msg)?;
        if payload.len() < MIN_COMPRESS {
            self.out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            self.out.extend_from_slice(&payload);
            return Ok(());
        }
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        comp.frame(&payload, &mut self.out)?;
        let len = (self.out.len() - at - 4) as u32 | COMPRESSED;
        self.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// True if bytes of a next frame already arrived (reading it will not wait long).
    pub fn input_pending(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedStream<S> {
    /// Writes every queued frame and flushes.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.out.is_empty() {
            self.inner.write_all(&self.out).await?;
            self.out.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends one message now (with anything queued before it).
    pub async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Sends several messages with one write and one flush.
    pub async fn send_all(&mut self, msgs: &[Message]) -> Result<(), WireError> {
        for m in msgs {
            self.queue(m)?;
        }
        self.flush().await
    }

    /// Receives one message; `Ok(None)` when the peer closed cleanly (see [`read_frame`]).
    pub async fn recv(&mut self) -> Result<Option<Message>, WireError> {
        let Some(decomp) = &mut self.decomp else {
            return read_frame(&mut self.inner).await;
        };
        let Some(len) = read_len(&mut self.inner, u32::MAX as usize).await? else {
            return Ok(None);
        };
        let (packed, len) = (len & COMPRESSED as usize != 0, len & !(COMPRESSED as usize));
        let max = if packed { max_compressed() } else { MAX_FRAME };
        if len > max {
            return Err(WireError::FrameTooLarge {
                len: len as u64,
                max,
            });
        }
        let data = read_payload(&mut self.inner, len).await?;
        match packed {
            true => decode(&decomp.frame(&data)?).map(Some),
            false => decode(&data).map(Some),
        }
    }

    /// Flushes and closes the write side.
    pub async fn close(&mut self) -> Result<(), WireError> {
        self.flush().await?;
        self.inner.close().await?;
        Ok(())
    }
}
