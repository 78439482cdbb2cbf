//! [`FramedStream`]: a bidirectional stream of [`Message`] frames, with outgoing frames
//! queued and written at [`FramedStream::flush`], and (after the handshake) stream
//! compression.
//!
//! Once compression is on, the stream carries *blocks*. A block header is a `u32`
//! little-endian length; with bit 31 clear it is an ordinary frame (a tiny message,
//! sent as is), with bit 31 set the `len & !bit31` bytes that follow are the zstd
//! stream's output (see [`super::compress`]) for
//!
//! ```text
//! headers_len: u32 LE | frames with their raw range bytes taken out | those bytes
//! ```
//!
//! flushed after the frames and after the bytes (see [`super::columns`]). All frames
//! queued between two flushes share one block, so a burst of small updates is
//! compressed like one archive.
//!
//! At trace level it logs each frame's kind and size as it is queued, and each block's
//! size as it is sealed: `scripts/wire-kinds.sh` sums a log's bytes by message kind.

use super::columns::{refill, strip};
use super::compress::{max_compressed, Compressor, Decompressor, MAX_BLOCK};
use super::frame::{encode_frame, read_frame, read_len, read_payload};
use super::{decode, Message, WireError, MAX_FRAME};
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Set in a block header when the block is compressed.
const COMPRESSED: u32 = 1 << 31;
/// Runs of frames shorter than this go uncompressed (a flushed zstd block costs more).
const MIN_COMPRESS: usize = 64;

/// A bidirectional stream speaking [`Message`] frames; see the module docs.
#[derive(Debug)]
pub struct FramedStream<S> {
    inner: BufReader<Counted<S>>,
    /// Frames queued for the next block (without their raw range bytes when compressed).
    raw: Vec<u8>,
    /// The raw range bytes taken out of the queued frames.
    data: Vec<u8>,
    /// Bytes ready to write.
    out: Vec<u8>,
    comp: Option<Compressor>,
    decomp: Option<Decompressor>,
    /// The decoded block being read: next frame at `at`, frames end at `frames_end`,
    /// next range bytes at `data_at`.
    block: Vec<u8>,
    at: usize,
    frames_end: usize,
    data_at: usize,
}

impl<S: AsyncRead + Unpin> FramedStream<S> {
    /// Wraps a stream positioned at a frame boundary.
    pub fn new(inner: S) -> Self {
        Self::counting(inner, Arc::default(), Arc::default())
    }

    /// Like [`FramedStream::new`], adding the bytes written to and read from the
    /// stream to `written` and `read` as they pass (shared counters, e.g. for status).
    pub fn counting(inner: S, written: Arc<AtomicU64>, read: Arc<AtomicU64>) -> Self {
        let inner = Counted {
            inner,
            read,
            written,
            progress: Progress::new(),
            heard: None,
            wrote: None,
        };
        FramedStream {
            inner: BufReader::with_capacity(64 << 10, inner),
            raw: Vec::new(),
            data: Vec::new(),
            out: Vec::new(),
            comp: None,
            decomp: None,
            block: Vec::new(),
            at: 0,
            frames_end: 0,
            data_at: 0,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().inner
    }

    /// Bytes (written, read) through the underlying stream so far: what this session
    /// put on and took off the link, frames and compression included.
    pub fn counted(&self) -> (u64, u64) {
        let c = self.inner.get_ref();
        (c.written.load(Relaxed), c.read.load(Relaxed))
    }

    /// When bytes last moved on the stream (for watchdogs: see `sync::unless_stalled`).
    pub fn progress(&self) -> Progress {
        self.inner.get_ref().progress.clone()
    }

    /// Also marks `heard` whenever bytes are read and `wrote` whenever bytes are
    /// written: clocks shared by every stream to the same peer (see `sync::alive`).
    pub fn share_clocks(&mut self, heard: Progress, wrote: Progress) {
        let c = self.inner.get_mut();
        (c.heard, c.wrote) = (Some(heard), Some(wrote));
    }

    /// Unwraps the underlying stream (bytes read ahead are lost).
    pub fn into_inner(self) -> S {
        self.inner.into_inner().inner
    }

    /// Compresses every later block in both directions at zstd `level`. Both sides call
    /// it right after the `Hello`s (the sender after writing its own, the receiver after
    /// reading the peer's), so that no block is compressed on one side only; `Hello`
    /// and `Refused` stay plain frames, which read as well with decompression on.
    pub fn compress(&mut self, level: i32) -> Result<(), WireError> {
        self.seal()?;
        self.comp = Some(Compressor::new(level)?);
        self.decomp = Some(Decompressor::new()?);
        Ok(())
    }

    /// Changes the compression level of later blocks (no-op before [`Self::compress`]).
    pub fn set_level(&mut self, level: i32) {
        if let Some(c) = &mut self.comp {
            c.set_level(level);
        }
    }

    /// Encodes `msg` as a frame queued for the next [`FramedStream::flush`].
    pub fn queue(&mut self, msg: Message) -> Result<(), WireError> {
        let kind = msg.kind();
        if self.comp.is_none() {
            let before = self.out.len();
            encode_frame(&msg, &mut self.out)?;
            tracing::trace!(kind, plain = self.out.len() - before, "frame queued");
            return Ok(());
        }
        let mut data = Vec::new();
        let frame = strip(msg, &mut data)?;
        tracing::trace!(kind, frame = frame.len(), data = data.len(), "frame queued");
        if 8 + self.raw.len() + self.data.len() + frame.len() + data.len() > MAX_BLOCK {
            self.seal()?;
        }
        self.raw
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.raw.extend_from_slice(&frame);
        self.data.append(&mut data);
        Ok(())
    }

    /// Ends the current block here: the frames queued so far decode on arrival, even
    /// if the stream is cut before the next flush (the sender ends one after each
    /// part of a multi-part update, so a cut loses at most the part in flight).
    pub fn end_block(&mut self) -> Result<(), WireError> {
        self.seal()
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.raw.len() + self.data.len() + self.out.len()
    }

    /// True if part of a next frame already arrived (reading it will not wait long).
    pub fn input_pending(&self) -> bool {
        self.at < self.frames_end || !self.inner.buffer().is_empty()
    }

    /// Moves the queued frames into the output: as one compressed block, or as plain
    /// frames when they are a few tiny messages.
    fn seal(&mut self) -> Result<(), WireError> {
        let Some(comp) = &mut self.comp else {
            return Ok(());
        };
        if self.data.is_empty() && self.raw.len() < MIN_COMPRESS {
            tracing::trace!(plain = self.raw.len(), "block sealed");
            self.out.append(&mut self.raw);
            return Ok(());
        }
        let head = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        let mut frames = (self.raw.len() as u32).to_le_bytes().to_vec();
        frames.append(&mut self.raw);
        comp.block(&frames, &mut self.out)?;
        if !self.data.is_empty() {
            comp.block(&self.data, &mut self.out)?;
            self.data.clear();
        }
        tracing::trace!(written = self.out.len() - head, "block sealed");
        let len = (self.out.len() - head - 4) as u32 | COMPRESSED;
        self.out[head..head + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// The next frame of the decoded block, if any is left; an error if the block ends
    /// inside a frame or holds bytes no frame claims.
    fn next_in_block(&mut self) -> Result<Option<Message>, WireError> {
        if self.at == self.frames_end {
            if self.data_at != self.block.len() {
                return Err(WireError::Decompress("block bytes no frame claims".into()));
            }
            return Ok(None);
        }
        let (len, start) = self.len_at(self.at, self.frames_end)?;
        self.at = start + len;
        refill(
            &self.block[start..start + len],
            &self.block,
            &mut self.data_at,
        )
        .map(Some)
    }

    /// A `u32` length at `at` and the payload it announces, both within `end`.
    fn len_at(&self, at: usize, end: usize) -> Result<(usize, usize), WireError> {
        let rest = &self.block[at..end];
        let head: [u8; 4] = rest
            .get(..4)
            .ok_or(WireError::Truncated {
                expected: 4,
                got: rest.len(),
            })?
            .try_into()
            .expect("four bytes");
        let len = u32::from_le_bytes(head) as usize;
        if len > rest.len() - 4 {
            return Err(WireError::Truncated {
                expected: len,
                got: rest.len() - 4,
            });
        }
        Ok((len, at + 4))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedStream<S> {
    /// Writes every queued frame and flushes.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.seal()?;
        if !self.out.is_empty() {
            self.inner.write_all(&self.out).await?;
            self.out.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends one message now (with anything queued before it).
    pub async fn send(&mut self, msg: Message) -> Result<(), WireError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Receives one message; `Ok(None)` when the peer closed cleanly (see [`read_frame`]).
    pub async fn recv(&mut self) -> Result<Option<Message>, WireError> {
        if self.decomp.is_none() {
            return read_frame(&mut self.inner).await;
        }
        loop {
            if let Some(msg) = self.next_in_block()? {
                return Ok(Some(msg));
            }
            let Some(len) = read_len(&mut self.inner, u32::MAX as usize).await? else {
                return Ok(None);
            };
            if len & COMPRESSED as usize == 0 {
                return self.plain(len).await.map(Some);
            }
            self.read_block(len & !(COMPRESSED as usize)).await?;
        }
    }

    /// Reads the payload of a plain frame of `len` bytes.
    async fn plain(&mut self, len: usize) -> Result<Message, WireError> {
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge {
                len: len as u64,
                max: MAX_FRAME,
            });
        }
        decode(&read_payload(&mut self.inner, len).await?)
    }

    /// Reads and decodes a compressed block of `len` bytes.
    async fn read_block(&mut self, len: usize) -> Result<(), WireError> {
        if len > max_compressed() {
            return Err(WireError::FrameTooLarge {
                len: len as u64,
                max: max_compressed(),
            });
        }
        let data = read_payload(&mut self.inner, len).await?;
        let decomp = self.decomp.as_mut().expect("compression is on");
        self.block = decomp.block(&data)?;
        let (frames_len, start) = self.len_at(0, self.block.len())?;
        (self.at, self.frames_end) = (start, start + frames_len);
        self.data_at = self.frames_end;
        Ok(())
    }

    /// Flushes and closes the write side.
    pub async fn close(&mut self) -> Result<(), WireError> {
        self.flush().await?;
        self.inner.close().await?;
        Ok(())
    }
}

/// When bytes last moved on a stream, either way (shared, so that a watchdog can read
/// it while a read or write is pending). On tokio's clock, so paused-time tests see it.
/// A new one reads as moved at its creation.
#[derive(Clone, Debug)]
pub struct Progress {
    epoch: tokio::time::Instant,
    /// Milliseconds from `epoch` to the last read or write that moved a byte.
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// A clock that last moved now.
    pub fn new() -> Progress {
        Progress {
            epoch: tokio::time::Instant::now(),
            last_ms: Arc::default(),
        }
    }

    /// Records that bytes moved now.
    pub fn mark(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Relaxed);
    }

    /// When a byte last moved.
    pub fn last(&self) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// A stream that counts the bytes read from and written to it.
#[derive(Debug)]
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    progress: Progress,
    /// Marked on reads too, if set (see [`FramedStream::share_clocks`]).
    heard: Option<Progress>,
    /// Marked on writes too, if set.
    wrote: Option<Progress>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.read.fetch_add(*n as u64, Relaxed);
            if *n > 0 {
                self.progress.mark();
                self.heard.iter().for_each(Progress::mark);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Relaxed);
            if *n > 0 {
                self.progress.mark();
                self.wrote.iter().for_each(Progress::mark);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
