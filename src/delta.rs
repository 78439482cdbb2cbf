//! Delta compression of one dirty byte range against its previous contents.
//!
//! The receiver already holds the old bytes of every range it is sent (the
//! pre-image), so the sender compresses the new bytes with zstd using the old
//! bytes as a raw-content prefix dictionary, like `zstd --patch-from`. Bytes
//! that did not change become long matches into the prefix and cost almost
//! nothing: for 500 row updates in a 60 MB SQLite file, `rsync -z` sent
//! 3.9 MB where `zstd --patch-from` needs 72 KB.
//!
//! Encoded layout (all of it produced by [`encode`], checked by [`decode`]):
//!
//! ```text
//! tag: u8 | base id: first 8 bytes of BLAKE3(old) | payload
//! ```
//!
//! - tag [`TAG_ZSTD`]: the payload is one zstd frame carrying its content size
//!   and a content checksum, compressed with `old` as prefix;
//! - tag [`TAG_SAME`]: the new bytes equal `old`; the payload is empty.
//!
//! The base id makes a delta self-checking: decoding against any other `old`
//! fails with [`DeltaError::WrongBase`] instead of producing garbage. The
//! declared content size must equal the caller's expected length before any
//! output is allocated, so a hostile frame cannot make [`decode`] allocate
//! more than asked for.

use zstd::zstd_safe::{self, zstd_sys::ZSTD_EndDirective as EndDirective};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Tag of a delta whose payload is a zstd frame compressed against `old`.
pub const TAG_ZSTD: u8 = 0xD1;
/// Tag of a delta whose new bytes are identical to `old` (empty payload).
pub const TAG_SAME: u8 = 0xD0;
/// How many leading bytes of BLAKE3(old) the header carries.
const BASE_ID_LEN: usize = 8;
/// Header length: tag plus base id.
const HEADER_LEN: usize = 1 + BASE_ID_LEN;
/// Smallest window log zstd accepts.
const MIN_WINDOW_LOG: u32 = 10;
/// Input fed to zstd per flush: just under 128 KiB, so zstd never pre-splits a block (see `compress`).
const CHUNK: usize = (128 << 10) - 1;
/// Prefix plus input size above which long-distance matching is enabled.
///
/// Measured with zstd 1.5.7 on random data with scattered one-byte changes:
/// without LDM the regular match finders stop finding the prefix at all (the
/// output is as large as the input) from 128 KiB + 128 KiB up at level 1,
/// 512 KiB + 512 KiB at level 6 and 4 MiB + 4 MiB at levels 3 and 9. Below
/// that, LDM costs 10-60% more per changed spot (its matches start only at
/// its hash split points, so more bytes around each change become literals),
/// which matters for 4 KiB pages. Level 19 gives the same output either way.
const LDM_MIN_TOTAL: usize = 128 << 10;
/// Largest window log we ask for (1 GiB): valid on 32- and 64-bit zstd alike.
const MAX_WINDOW_LOG: u32 = 30;

/// Why a delta could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The data is shorter than the delta header.
    #[error("delta is truncated: {0} bytes, header needs {HEADER_LEN}")]
    Truncated(usize),
    /// The header's tag is not one this version knows.
    #[error("unknown delta format tag {0:#04x}")]
    UnknownFormat(u8),
    /// The delta was encoded against different old bytes than those given.
    #[error("delta was encoded against a different base")]
    WrongBase,
    /// The delta describes a different number of bytes than expected.
    #[error("delta holds {actual} bytes, expected {expected}")]
    LengthMismatch {
        /// The length the caller asked for.
        expected: u64,
        /// The length the delta declares or produced.
        actual: u64,
    },
    /// The payload is malformed in a way zstd itself does not report.
    #[error("corrupt delta: {0}")]
    Corrupt(&'static str),
    /// zstd reported an error (corrupt frame, checksum mismatch, ...).
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// zstd could not allocate a context.
    #[error("zstd could not allocate a context")]
    OutOfMemory,
}

/// Compresses `new` against `old` (the previous bytes of the same range; may be shorter or empty) at `level`.
///
/// `level` is a zstd level (see [`level_for_throughput`]); out-of-range values
/// are clamped by zstd. With an empty `old` this is plain zstd plus the
/// header. If `new == old` the result is just the 9-byte header.
pub fn encode(new: &[u8], old: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    if new == old {
        return Ok(header(TAG_SAME, old).to_vec());
    }
    let bound = zstd_safe::compress_bound(new.len());
    let mut out = vec![0u8; HEADER_LEN + bound];
    out[..HEADER_LEN].copy_from_slice(&header(TAG_ZSTD, old));
    let written = compress(&mut out[HEADER_LEN..], new, old, level, true)?;
    out.truncate(HEADER_LEN + written);
    Ok(out)
}

/// [`encode`] without its header and zstd's checksum: one zstd frame with its content
/// size, for a caller that checks the result itself (a whole-file hash) and so needs
/// neither the base id nor the checksum (13 bytes less).
pub fn encode_bare(new: &[u8], old: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    let mut out = vec![0u8; zstd_safe::compress_bound(new.len())];
    let written = compress(&mut out, new, old, level, false)?;
    out.truncate(written);
    Ok(out)
}

/// Decodes an [`encode_bare`] frame to exactly `len` bytes against `old`. A wrong
/// `old` decodes to wrong bytes (or fails): the caller checks the result.
pub fn decode_bare(frame: &[u8], old: &[u8], len: usize) -> Result<Vec<u8>, DeltaError> {
    decompress(frame, old, len)
}

/// Decompresses to exactly `len` bytes using `old` as the reference.
///
/// Never allocates more than `len` bytes of output (plus zstd's fixed-size
/// context); errors, never panics, on corrupt or truncated input, a wrong
/// reference, or a length mismatch.
///
/// The header's base id is checked first: a delta made against other old
/// bytes fails with [`DeltaError::WrongBase`]. Then the frame's declared
/// content size must equal `len` ([`DeltaError::LengthMismatch`] otherwise),
/// and zstd verifies the frame's content checksum while decoding.
pub fn decode(data: &[u8], old: &[u8], len: usize) -> Result<Vec<u8>, DeltaError> {
    let (tag, payload) = split_header(data, old)?;
    match tag {
        TAG_SAME => decode_same(payload, old, len),
        _ => decompress(payload, old, len),
    }
}

/// Picks the zstd level from the link's measured throughput in bytes/s: slow links spend CPU.
///
/// Rule: the highest level whose compression speed stays roughly 5x or more
/// above the link rate, so compressing never becomes the bottleneck even on a
/// busy 2-core machine (the prefix costs indexing time too). On gigabit links
/// no level keeps that margin; level 3 (about 2x busy, 4x idle) still shrinks
/// unchanged bytes as well as any level, and level 1 takes over beyond. Speeds measured
/// with `zstd -b` on 3 MB of C source on this machine while it was also
/// building (idle figures are about twice as high; zstd-3 ~500 MiB/s idle):
///
/// | level | MB/s (busy) | ratio | chosen for links up to          |
/// |------:|------------:|------:|---------------------------------|
/// |    19 |         1.5 |  7.65 | 2 Mbit/s (250 kB/s)             |
/// |    15 |         3.0 |  7.09 | 5 Mbit/s (625 kB/s)             |
/// |    12 |          13 |  6.92 | 20 Mbit/s (2.5 MB/s)            |
/// |     6 |          64 |  6.43 | 100 Mbit/s (12.5 MB/s)          |
/// |     3 |         240 |  5.56 | 1 Gbit/s (125 MB/s)             |
/// |     1 |         330 |  4.83 | faster links                    |
///
/// A throughput of NaN (not measured yet) gives zstd's default level 3; zero
/// or negative values count as the slowest link.
pub fn level_for_throughput(bytes_per_sec: f64) -> i32 {
    if bytes_per_sec.is_nan() {
        return zstd_safe::CLEVEL_DEFAULT;
    }
    LEVELS
        .iter()
        .find(|&&(limit, _)| bytes_per_sec <= limit)
        .map_or(1, |&(_, level)| level)
}

/// `(highest link throughput in bytes/s, level)`, slowest first; see [`level_for_throughput`].
const LEVELS: [(f64, i32); 5] = [
    (250_000.0, 19),
    (625_000.0, 15),
    (2_500_000.0, 12),
    (12_500_000.0, 6),
    (125_000_000.0, 3),
];

/// The header for `tag` and the base `old`.
fn header(tag: u8, old: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = tag;
    h[1..].copy_from_slice(&base_id(old));
    h
}

/// The first [`BASE_ID_LEN`] bytes of BLAKE3(`old`).
fn base_id(old: &[u8]) -> [u8; BASE_ID_LEN] {
    let mut id = [0u8; BASE_ID_LEN];
    id.copy_from_slice(&blake3::hash(old).as_bytes()[..BASE_ID_LEN]);
    id
}

/// Checks the header against `old`; returns the tag and the payload.
fn split_header<'d>(data: &'d [u8], old: &[u8]) -> Result<(u8, &'d [u8]), DeltaError> {
    if data.len() < HEADER_LEN {
        return Err(DeltaError::Truncated(data.len()));
    }
    let (head, payload) = data.split_at(HEADER_LEN);
    if head[0] != TAG_ZSTD && head[0] != TAG_SAME {
        return Err(DeltaError::UnknownFormat(head[0]));
    }
    if head[1..] != base_id(old) {
        return Err(DeltaError::WrongBase);
    }
    Ok((head[0], payload))
}

/// A [`DeltaError::LengthMismatch`] for `expected` vs `actual`.
fn mismatch(expected: usize, actual: u64) -> DeltaError {
    DeltaError::LengthMismatch {
        expected: expected as u64,
        actual,
    }
}

/// Maps a zstd error code to [`DeltaError::Zstd`].
fn zstd_err(code: zstd_safe::ErrorCode) -> DeltaError {
    DeltaError::Zstd(zstd_safe::get_error_name(code))
}

/// Window log covering `old` and `new` together, so every byte of the prefix stays reachable.
fn window_log(total: usize) -> u32 {
    let needed = usize::BITS - total.saturating_sub(1).leading_zeros();
    needed.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// A context set up for `level`, with a window covering `total` bytes of prefix plus
/// input, writing zstd's content checksum if `checksum`.
fn new_cctx(level: i32, total: usize, checksum: bool) -> Result<CCtx<'static>, DeltaError> {
    let mut cctx = CCtx::try_create().ok_or(DeltaError::OutOfMemory)?;
    let params = [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log(total)),
        CParameter::EnableLongDistanceMatching(total > LDM_MIN_TOTAL),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(checksum),
    ];
    for param in params {
        cctx.set_parameter(param).map_err(zstd_err)?;
    }
    Ok(cctx)
}

/// Compresses `new` into `dst` with `old` as prefix; returns the bytes written.
///
/// The input is fed and flushed in chunks of [`CHUNK`] bytes, each becoming
/// one zstd block: zstd 1.5.7 pre-splits full 128 KiB blocks by the byte
/// statistics of the input alone, blind to the prefix, and every extra block
/// costs a header plus a sequence section. On a 1 MiB range with one byte
/// changed that is ~1.2 KB at level 3 against ~120 bytes this way.
fn compress(
    dst: &mut [u8],
    new: &[u8],
    old: &[u8],
    level: i32,
    checksum: bool,
) -> Result<usize, DeltaError> {
    let mut cctx = new_cctx(level, old.len().saturating_add(new.len()), checksum)?;
    cctx.set_pledged_src_size(Some(new.len() as u64))
        .map_err(zstd_err)?;
    if !old.is_empty() {
        cctx.ref_prefix(old).map_err(zstd_err)?;
    }
    let mut out = OutBuffer::around(dst);
    for chunk in new.chunks(CHUNK) {
        flush_chunk(&mut cctx, &mut out, chunk)?;
    }
    while cctx.end_stream(&mut out).map_err(zstd_err)? != 0 {
        ensure_room(&out)?;
    }
    Ok(out.pos())
}

/// Compresses all of `chunk` and flushes it as one block.
fn flush_chunk(
    cctx: &mut CCtx<'_>,
    out: &mut OutBuffer<'_, [u8]>,
    chunk: &[u8],
) -> Result<(), DeltaError> {
    let mut input = InBuffer::around(chunk);
    loop {
        let left = cctx
            .compress_stream2(out, &mut input, EndDirective::ZSTD_e_flush)
            .map_err(zstd_err)?;
        if left == 0 && input.pos() == chunk.len() {
            return Ok(());
        }
        ensure_room(out)?;
    }
}

/// Fails if `out` is full, so a stalled stream cannot loop forever (cannot happen with
/// a `compress_bound`-sized buffer).
fn ensure_room(out: &OutBuffer<'_, [u8]>) -> Result<(), DeltaError> {
    if out.pos() == out.capacity() {
        return Err(DeltaError::Zstd("output buffer full"));
    }
    Ok(())
}

/// Decodes a [`TAG_SAME`] payload: the result is `old` itself.
fn decode_same(payload: &[u8], old: &[u8], len: usize) -> Result<Vec<u8>, DeltaError> {
    if !payload.is_empty() {
        return Err(DeltaError::Corrupt("bytes after an unchanged-range delta"));
    }
    if old.len() != len {
        return Err(mismatch(len, old.len() as u64));
    }
    Ok(old.to_vec())
}

/// Checks that `frame` is exactly one zstd frame declaring `len` bytes of content.
fn check_frame(frame: &[u8], len: usize) -> Result<(), DeltaError> {
    let declared = zstd_safe::get_frame_content_size(frame)
        .map_err(|_| DeltaError::Corrupt("bad zstd frame header"))?
        .ok_or(DeltaError::Corrupt("zstd frame lacks its content size"))?;
    if declared != len as u64 {
        return Err(mismatch(len, declared));
    }
    let size = zstd_safe::find_frame_compressed_size(frame).map_err(zstd_err)?;
    if size != frame.len() {
        return Err(DeltaError::Corrupt("bytes after the zstd frame"));
    }
    Ok(())
}

/// Decompresses a [`TAG_ZSTD`] payload into at most `len` bytes.
fn decompress(frame: &[u8], old: &[u8], len: usize) -> Result<Vec<u8>, DeltaError> {
    check_frame(frame, len)?;
    let mut dctx = DCtx::try_create().ok_or(DeltaError::OutOfMemory)?;
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(zstd_err)?;
    if !old.is_empty() {
        dctx.ref_prefix(old).map_err(zstd_err)?;
    }
    let mut out = Vec::with_capacity(len);
    let written = dctx.decompress(&mut out, frame).map_err(zstd_err)?;
    if written != len || out.len() != len {
        return Err(mismatch(len, written as u64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};

    /// `n` random bytes from `seed`.
    fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// `page` with `count` random single bytes overwritten at random places (each really changed).
    fn scatter_changes(page: &[u8], count: usize, rng: &mut StdRng) -> Vec<u8> {
        let mut new = page.to_vec();
        for _ in 0..count {
            let i = rng.gen_range(0..new.len());
            new[i] = new[i].wrapping_add(rng.gen_range(1..=255));
        }
        new
    }

    /// Encodes and decodes, asserting a byte-exact round trip; returns the encoded size.
    fn round_trip(new: &[u8], old: &[u8], level: i32) -> usize {
        let enc = encode(new, old, level).expect("encode");
        let dec = decode(&enc, old, new.len()).expect("decode");
        assert!(dec == new, "round trip differs");
        enc.len()
    }

    #[test]
    fn a_bare_delta_round_trips_and_is_smaller_than_a_headed_one() {
        let old = random_bytes(3, 20_000);
        let mut new = old.clone();
        new.splice(9_000..9_000, b" // an edit".iter().copied());
        let bare = encode_bare(&new, &old, 19).unwrap();
        assert_eq!(decode_bare(&bare, &old, new.len()).unwrap(), new);
        let headed = encode(&new, &old, 19).unwrap().len();
        assert!(bare.len() + 13 <= headed, "{} vs {headed}", bare.len());
        // against other bytes it does not make `new` (the caller's hash catches it)
        let mut other = old.clone();
        other[100] ^= 1;
        let wrong = decode_bare(&bare, &other, new.len());
        assert!(
            wrong.is_err() || wrong.unwrap() != new,
            "made from other bytes"
        );
        assert!(
            decode_bare(&bare, &old, new.len() + 1).is_err(),
            "its size is checked"
        );
    }

    /// One edit applied to derive `new` from `old`.
    #[derive(Debug, Clone)]
    enum Edit {
        Overwrite(usize, Vec<u8>),
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (any::<usize>(), bytes()).prop_map(|(at, b)| Edit::Overwrite(at, b)),
            (any::<usize>(), bytes()).prop_map(|(at, b)| Edit::Insert(at, b)),
            (any::<usize>(), 0..2000usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        ]
    }

    fn apply(old: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut v = old.to_vec();
        for e in edits {
            match e {
                Edit::Overwrite(at, b) => {
                    let at = at % (v.len() + 1);
                    let end = (at + b.len()).min(v.len());
                    v.splice(at..end, b.iter().copied());
                }
                Edit::Insert(at, b) => {
                    let at = at % (v.len() + 1);
                    v.splice(at..at, b.iter().copied());
                }
                Edit::Delete(at, n) => {
                    let at = at % (v.len() + 1);
                    let end = (at + n).min(v.len());
                    v.drain(at..end);
                }
            }
        }
        v
    }

    /// Old contents: random or low-entropy (text-like), up to 20 KiB.
    fn old_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20_000),
            proptest::collection::vec(prop::sample::select(b"abc \n".to_vec()), 0..20_000),
        ]
    }

    fn level() -> impl Strategy<Value = i32> {
        prop::sample::select(vec![-5, 1, 3, 9, 19])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_round_trip_edits(
            old in old_bytes(),
            edits in proptest::collection::vec(edit(), 0..8),
            level in level(),
        ) {
            let new = apply(&old, &edits);
            round_trip(&new, &old, level);
        }

        #[test]
        fn prop_round_trip_unrelated(
            old in proptest::collection::vec(any::<u8>(), 0..5000),
            new in proptest::collection::vec(any::<u8>(), 0..5000),
            level in level(),
        ) {
            round_trip(&new, &old, level);
        }

        #[test]
        fn prop_wrong_base_is_rejected(
            old in proptest::collection::vec(any::<u8>(), 1..5000),
            edits in proptest::collection::vec(edit(), 1..4),
            flip in any::<usize>(),
        ) {
            let new = apply(&old, &edits);
            let enc = encode(&new, &old, 3).unwrap();
            let mut other = old.clone();
            other[flip % old.len()] ^= 1;
            prop_assert_eq!(decode(&enc, &other, new.len()), Err(DeltaError::WrongBase));
            let shorter = &old[..old.len() - 1];
            prop_assert_eq!(decode(&enc, shorter, new.len()), Err(DeltaError::WrongBase));
        }

        #[test]
        fn prop_corruption_never_panics_nor_lies(
            old in proptest::collection::vec(any::<u8>(), 0..3000),
            edits in proptest::collection::vec(edit(), 1..4),
            hits in proptest::collection::vec((any::<usize>(), 1..=255u8), 1..4),
        ) {
            let new = apply(&old, &edits);
            let mut enc = encode(&new, &old, 3).unwrap();
            for (at, x) in hits {
                let i = at % enc.len();
                enc[i] ^= x;
            }
            if let Ok(dec) = decode(&enc, &old, new.len()) {
                prop_assert!(dec == new, "corrupt delta decoded to other bytes");
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let old = random_bytes(1, 8192);
        let new = scatter_changes(&old, 40, &mut StdRng::seed_from_u64(2));
        let enc = encode(&new, &old, 3).unwrap();
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut], &old, new.len()).is_err(), "cut {cut}");
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(decode(&longer, &old, new.len()).is_err());
        let same = encode(&old, &old, 3).unwrap();
        for cut in 0..same.len() {
            assert!(decode(&same[..cut], &old, old.len()).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn unknown_tag_is_rejected() {
        let mut enc = encode(b"hello", b"", 3).unwrap();
        enc[0] = 0x42;
        assert_eq!(decode(&enc, b"", 5), Err(DeltaError::UnknownFormat(0x42)));
    }

    #[test]
    fn wrong_base_with_empty_and_same() {
        let old = random_bytes(3, 4096);
        let enc = encode(&old, &old, 3).unwrap();
        assert_eq!(enc.len(), HEADER_LEN);
        assert_eq!(decode(&enc, b"", 4096), Err(DeltaError::WrongBase));
        let enc = encode(b"fresh bytes", b"", 3).unwrap();
        assert_eq!(decode(&enc, &old, 11), Err(DeltaError::WrongBase));
        assert_eq!(decode(&enc, b"", 11).unwrap(), b"fresh bytes");
    }

    #[test]
    fn length_mismatch_is_rejected() {
        let old = random_bytes(4, 4096);
        let new = scatter_changes(&old, 10, &mut StdRng::seed_from_u64(5));
        let enc = encode(&new, &old, 3).unwrap();
        for len in [0, 4095, 4097, usize::MAX] {
            let err = decode(&enc, &old, len).unwrap_err();
            assert!(
                matches!(err, DeltaError::LengthMismatch { .. }),
                "{len}: {err}"
            );
        }
        let same = encode(&old, &old, 3).unwrap();
        assert!(matches!(
            decode(&same, &old, 4095),
            Err(DeltaError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn decompression_bomb_is_rejected() {
        // 16 MiB of zeros compresses to well under 1 KiB; the caller expects 1000 bytes.
        let bomb = vec![0u8; 16 << 20];
        let enc = encode(&bomb, b"", 3).unwrap();
        eprintln!("bomb: 16 MiB of zeros -> {} bytes", enc.len());
        let err = decode(&enc, b"", 1000).unwrap_err();
        assert_eq!(err, mismatch(1000, 16 << 20));
    }

    #[test]
    fn lying_content_size_is_rejected() {
        // A frame whose header declares 300 bytes but whose blocks hold 64 KiB.
        let mut enc = encode(&vec![7u8; 65_536], b"", 3).unwrap();
        let fhd = enc[HEADER_LEN + 4];
        assert_eq!(fhd >> 6, 1, "expected a 2-byte content size field");
        let fcs_at =
            HEADER_LEN + 5 + usize::from(fhd & 0x20 == 0) + [0, 1, 2, 4][usize::from(fhd & 3)];
        enc[fcs_at..fcs_at + 2].copy_from_slice(&(300u16 - 256).to_le_bytes());
        assert!(decode(&enc, b"", 300).is_err());
    }

    #[test]
    fn frame_without_content_size_is_rejected() {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::ContentSizeFlag(false))
            .unwrap();
        let mut frame = Vec::with_capacity(1024);
        cctx.compress2(&mut frame, b"some bytes").unwrap();
        let mut data = header(TAG_ZSTD, b"").to_vec();
        data.extend_from_slice(&frame);
        assert_eq!(
            decode(&data, b"", 10),
            Err(DeltaError::Corrupt("zstd frame lacks its content size"))
        );
    }

    #[test]
    fn page_with_50_changed_bytes_is_small() {
        let mut rng = StdRng::seed_from_u64(6);
        for level in [1, 3, 9, 19] {
            let old = random_bytes(7 + level as u64, 4096);
            let new = scatter_changes(&old, 50, &mut rng);
            let size = round_trip(&new, &old, level);
            eprintln!("4 KiB page, 50 scattered bytes changed, level {level}: {size} bytes");
            assert!(size < 300, "level {level}: {size} bytes");
        }
    }

    #[test]
    fn unchanged_region_costs_almost_nothing() {
        let old = random_bytes(8, 1 << 20);
        let size = round_trip(&old, &old, 3);
        eprintln!("1 MiB unchanged: {size} bytes");
        assert!(size < 100);
        // Through zstd itself (one byte differs): still tiny.
        let mut new = old.clone();
        new[(1 << 20) - 1] ^= 0xff;
        let size = round_trip(&new, &old, 3);
        eprintln!("1 MiB with its last byte changed: {size} bytes");
        assert!(size < 200);
    }

    #[test]
    fn empty_old_is_plain_zstd() {
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(200);
        let size = round_trip(&text, b"", 3);
        let plain = zstd::bulk::compress(&text, 3).unwrap().len();
        eprintln!("8.8 KB text, no base: {size} bytes (plain zstd: {plain})");
        assert!(size <= plain + HEADER_LEN + 8);
        assert_eq!(round_trip(b"", b"", 3), HEADER_LEN);
        round_trip(b"", b"something", 3);
    }

    #[test]
    fn sqlite_like_page_rewrites_fit_budget() {
        /// Budget for 100 pages with ~20 changed bytes each: 100 KiB (measured ~10x below).
        const BUDGET: usize = 100 << 10;
        const PAGE: usize = 4096;
        let old_db = random_bytes(9, 4 << 20);
        let mut rng = StdRng::seed_from_u64(10);
        let mut total = 0;
        for _ in 0..100 {
            let page = rng.gen_range(0..old_db.len() / PAGE) * PAGE;
            let old = &old_db[page..page + PAGE];
            let new = scatter_changes(old, rng.gen_range(15..=25), &mut rng);
            total += round_trip(&new, old, 3);
        }
        eprintln!(
            "100 rewritten 4 KiB pages of a 4 MiB db: {total} bytes ({:.1}x smaller than {} raw)",
            (100 * PAGE) as f64 / total as f64,
            100 * PAGE
        );
        assert!(total < BUDGET, "{total} bytes over the {BUDGET} budget");
    }

    #[test]
    fn mid_size_ranges_find_their_prefix_at_every_level() {
        // Sizes around the LDM threshold, one changed byte per 16 KiB, and a
        // 100-byte insert at the front shifting everything after it.
        let mut rng = StdRng::seed_from_u64(14);
        for size in [64 << 10, 100 << 10, 200 << 10, 1 << 20, 4 << 20] {
            let old = random_bytes(size as u64, size);
            let mut new = vec![9u8; 100];
            new.extend_from_slice(&old);
            new.truncate(size);
            let changes = size / (16 << 10);
            let new = scatter_changes(&new, changes, &mut rng);
            for level in [1, 3, 6, 9, 19] {
                let enc = round_trip(&new, &old, level);
                let limit = 200 + 16 * changes;
                eprintln!(
                    "{size} bytes, {changes} changes + front insert, level {level}: {enc} bytes"
                );
                assert!(enc < limit, "{size} at level {level}: {enc} >= {limit}");
            }
        }
    }

    #[test]
    fn large_range_matches_across_the_whole_window() {
        // 16 MiB range, 1 KiB inserted at the front: every old byte shifts.
        let old = random_bytes(11, 16 << 20);
        let mut new = random_bytes(12, 1024);
        new.extend_from_slice(&old);
        new.truncate(16 << 20);
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..100 {
            let i = rng.gen_range(0..new.len());
            new[i] ^= 0x5a;
        }
        let size = round_trip(&new, &old, 1);
        eprintln!("16 MiB range, 1 KiB inserted at front + 100 bytes changed: {size} bytes");
        assert!(size < 8 << 10, "{size} bytes");
    }

    #[test]
    fn levels_follow_throughput() {
        let mbit = |m: f64| m * 125_000.0;
        assert_eq!(level_for_throughput(mbit(1.0)), 19);
        assert_eq!(level_for_throughput(mbit(2.0)), 19);
        assert_eq!(level_for_throughput(mbit(4.0)), 15);
        assert_eq!(level_for_throughput(mbit(20.0)), 12);
        assert_eq!(level_for_throughput(mbit(100.0)), 6);
        assert_eq!(level_for_throughput(mbit(1000.0)), 3);
        assert_eq!(level_for_throughput(mbit(10_000.0)), 1);
        assert_eq!(level_for_throughput(f64::INFINITY), 1);
        assert_eq!(level_for_throughput(0.0), 19);
        assert_eq!(level_for_throughput(f64::NAN), 3);
        let mut last = i32::MAX;
        for r in (0..40).map(|e| 2f64.powi(e)) {
            let level = level_for_throughput(r);
            assert!(level <= last);
            last = level;
        }
    }
}
