//! Stream compression: after the handshake, each direction of a stream is one zstd
//! stream, flushed at the end of every block of frames, so each block decodes as soon as
//! it arrives while every block is compressed against the ones before it (like
//! `rsync -z` or `ssh -C`). A thousand small files then cost about what one archive of
//! them would, and repeated message fields (paths, ids) almost nothing.

use super::{WireError, MAX_FRAME};
use zstd::zstd_safe::{self, zstd_sys::ZSTD_EndDirective as EndDirective};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Window of the stream (8 MiB): how far back a frame may refer. The receiver refuses
/// streams asking for more, which bounds its memory.
pub const WINDOW_LOG: u32 = 23;

/// Largest decoded block: one frame of [`MAX_FRAME`] payload with its length prefixes.
pub const MAX_BLOCK: usize = MAX_FRAME + 64;

/// Largest compressed block: what zstd may need for a [`MAX_BLOCK`] input.
pub fn max_compressed() -> usize {
    zstd_safe::compress_bound(MAX_BLOCK) + 1024
}

/// The sending half: one zstd stream across blocks.
pub struct Compressor {
    cctx: CCtx<'static>,
    level: i32,
    /// A level to switch to before the next block.
    next: Option<i32>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    /// A stream compressing at zstd `level`.
    pub fn new(level: i32) -> Result<Compressor, WireError> {
        let mut cctx = CCtx::try_create().ok_or_else(|| zerr("out of memory"))?;
        for p in [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(WINDOW_LOG),
            CParameter::ChecksumFlag(false),
        ] {
            cctx.set_parameter(p).map_err(code)?;
        }
        Ok(Compressor {
            cctx,
            level,
            next: None,
        })
    }

    /// Compresses later blocks at `level`. A single-threaded zstd context applies a new
    /// level only from its next frame, so a change ends the current frame (which costs
    /// the history: the window starts empty again) before the next block.
    pub fn set_level(&mut self, level: i32) {
        self.next = (level != self.level).then_some(level);
    }

    /// Compresses one block and flushes, appending the bytes to `out`.
    pub fn block(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(level) = self.next.take() {
            self.run(&[], out, EndDirective::ZSTD_e_end)?;
            self.cctx
                .set_parameter(CParameter::CompressionLevel(level))
                .map_err(code)?;
            self.level = level;
        }
        self.run(payload, out, EndDirective::ZSTD_e_flush)
    }

    /// Feeds all of `payload` with `how`, until zstd has nothing left to write.
    fn run(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        how: EndDirective,
    ) -> Result<(), WireError> {
        let start = out.len();
        out.resize(start + zstd_safe::compress_bound(payload.len()) + 64, 0);
        let mut input = InBuffer::around(payload);
        let mut pos = start;
        loop {
            let mut ob = OutBuffer::around_pos(&mut out[..], pos);
            let left = self
                .cctx
                .compress_stream2(&mut ob, &mut input, how)
                .map_err(code)?;
            pos = ob.pos();
            if left == 0 && input.pos() == payload.len() {
                out.truncate(pos);
                return Ok(());
            }
            if pos == out.len() {
                out.resize(out.len() + (64 << 10), 0);
            }
        }
    }
}

/// The receiving half: decodes each block, never producing more than [`MAX_BLOCK`]
/// bytes for one.
pub struct Decompressor {
    dctx: DCtx<'static>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Decompressor {
    /// A fresh stream decoder.
    pub fn new() -> Result<Decompressor, WireError> {
        let mut dctx = DCtx::try_create().ok_or_else(|| zerr("out of memory"))?;
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
            .map_err(code)?;
        Ok(Decompressor { dctx })
    }

    /// Decodes one block's compressed bytes. A block that expands beyond [`MAX_BLOCK`]
    /// is an error; one cut short decodes short (its frames then fail to parse).
    pub fn block(&mut self, data: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut out = vec![0u8; (data.len() * 4).clamp(4096, MAX_BLOCK + 1)];
        let mut input = InBuffer::around(data);
        let mut pos = 0;
        loop {
            let mut ob = OutBuffer::around_pos(&mut out[..], pos);
            self.dctx
                .decompress_stream(&mut ob, &mut input)
                .map_err(code)?;
            pos = ob.pos();
            if pos > MAX_BLOCK {
                return Err(WireError::FrameTooLarge {
                    len: pos as u64,
                    max: MAX_BLOCK,
                });
            }
            if pos < out.len() && input.pos() == data.len() {
                out.truncate(pos);
                return Ok(out);
            }
            if pos == out.len() {
                let grown = (out.len() * 2).min(MAX_BLOCK + 1);
                out.resize(grown, 0);
            }
        }
    }
}

fn code(c: zstd_safe::ErrorCode) -> WireError {
    zerr(zstd_safe::get_error_name(c))
}

fn zerr(what: &str) -> WireError {
    WireError::Decompress(format!("stream compression: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_share_context() {
        let (mut c, mut d) = (Compressor::new(3).unwrap(), Decompressor::new().unwrap());
        let mut x = 1u64;
        let text: Vec<u8> = (0..60_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"0123456789abcdef"[(x >> 60) as usize]
            })
            .collect();
        let mut sizes = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            c.block(&text, &mut out).unwrap();
            sizes.push(out.len());
            assert_eq!(d.block(&out).unwrap(), text);
        }
        assert!(
            sizes[1] * 10 < sizes[0],
            "second copy is a match: {sizes:?}"
        );
        let mut out = Vec::new();
        c.block(b"", &mut out).unwrap();
        assert_eq!(d.block(&out).unwrap(), b"");
    }

    #[test]
    fn a_level_change_starts_a_new_frame_that_still_decodes() {
        let (mut c, mut d) = (Compressor::new(1).unwrap(), Decompressor::new().unwrap());
        let text: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8).collect();
        for level in [1, 1, 19, 19, 3] {
            c.set_level(level);
            let mut out = Vec::new();
            c.block(&text, &mut out).unwrap();
            assert_eq!(d.block(&out).unwrap(), text, "level {level}");
        }
        assert_eq!(c.level, 3);
    }

    #[test]
    fn garbage_and_bombs_are_errors() {
        let mut d = Decompressor::new().unwrap();
        assert!(d.block(b"not zstd at all").is_err());
        let mut c = Compressor::new(1).unwrap();
        let mut out = Vec::new();
        c.block(&vec![0u8; MAX_BLOCK + 1], &mut out).unwrap();
        let mut d = Decompressor::new().unwrap();
        assert!(matches!(
            d.block(&out),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_cut_frame_is_an_error_or_short() {
        let mut c = Compressor::new(3).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        c.block(&payload, &mut out).unwrap();
        let mut d = Decompressor::new().unwrap();
        let got = d.block(&out[..out.len() / 2]);
        assert!(got.map_or(true, |g| g != payload));
    }
}
