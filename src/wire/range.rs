//! Pure helpers to compress and decompress one [`RangeData`].

use super::{Encoding, RangeData, WireError, MAX_RANGE_LEN};

/// Encodes `bytes` (the file's bytes at `offset`) as a range: zstd at `level` when that
/// is strictly smaller, raw otherwise. Callers keep `bytes` within [`MAX_RANGE_LEN`].
pub fn compress_range(offset: u64, bytes: &[u8], level: i32) -> RangeData {
    let len = bytes.len() as u64;
    match zstd::bulk::compress(bytes, level) {
        Ok(data) if data.len() < bytes.len() => RangeData {
            offset,
            len,
            encoding: Encoding::Zstd,
            data,
        },
        _ => RangeData {
            offset,
            len,
            encoding: Encoding::Raw,
            data: bytes.to_vec(),
        },
    }
}

/// Decodes a range to exactly `r.len` bytes. Decompression is capped at the declared
/// length: data that expands to more (or less) is an error, never a larger allocation.
/// Deltas ([`Encoding::ZstdDict`], [`Encoding::Joint`]) need the receiver's old bytes
/// (`crate::delta`) and yield [`WireError::Unsupported`] here.
pub fn decompress_range(r: &RangeData) -> Result<Vec<u8>, WireError> {
    let declared = declared_len(r)?;
    match r.encoding {
        Encoding::Raw => exact(r.len, r.data.clone()),
        Encoding::Zstd => exact(r.len, unzstd(&r.data, declared)?),
        Encoding::ZstdDict | Encoding::Joint => {
            Err(WireError::Unsupported("a delta needs the old bytes"))
        }
    }
}

/// The declared length as a buffer size, refusing anything over [`MAX_RANGE_LEN`].
fn declared_len(r: &RangeData) -> Result<usize, WireError> {
    usize::try_from(r.len)
        .ok()
        .filter(|l| *l <= MAX_RANGE_LEN)
        .ok_or_else(|| {
            WireError::Decompress(format!("declared length {} exceeds {MAX_RANGE_LEN}", r.len))
        })
}

fn unzstd(data: &[u8], capacity: usize) -> Result<Vec<u8>, WireError> {
    let mut d =
        zstd::bulk::Decompressor::new().map_err(|e| WireError::Decompress(e.to_string()))?;
    d.decompress(data, capacity)
        .map_err(|e| WireError::Decompress(e.to_string()))
}

fn exact(declared: u64, bytes: Vec<u8>) -> Result<Vec<u8>, WireError> {
    if bytes.len() as u64 != declared {
        return Err(WireError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}
