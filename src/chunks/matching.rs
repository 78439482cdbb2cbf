//! Gaps matched against the needing side's own bytes, after a sketch decoded: for
//! each run of new leaves it lacks (a *gap*), the needing side sends the hashes of the
//! [`BLOCK`]-byte blocks of its old bytes there (its *hole*, [`Hole`]) with its pick;
//! the offering side finds those blocks at any offset of the gap's new bytes
//! ([`encode`]) and sends the gap as copies of them and the bytes between
//! ([`decode`]). One round trip, where describing the new leaves by their blocks
//! costs two (the hashes one way, the answers back, then the bytes).
//!
//! On the wire (`docs/PROTOCOL.md`): holes are, per gap, the hole's length (u32,
//! little-endian) and its blocks' 6-byte hashes (the last block may be shorter); a
//! gap's ops are LEB128 numbers: (literal length, block index + 1, blocks) repeated,
//! then a last literal length and 0.

use super::{exchange::block_hash, ChunkError, Piece, BLOCK};
use std::collections::HashMap;

/// The largest hole matched: a gap's old bytes beyond this are described the old way
/// (at most this / [`BLOCK`] hashes a gap).
pub const MATCH_HOLE: u64 = 16 << 10;
/// The most new bytes of one gap matched (a larger gap is mostly new data).
pub const MATCH_GAP: u64 = 64 << 10;
/// The most new bytes of all the gaps of one pick matched: the offering side hashes a
/// window at each of their offsets.
pub const MATCH_TOTAL: u64 = 1 << 20;
/// Most bytes of a pick's holes, and of a round's ops, on the wire.
pub const MAX_ENCODED: usize = 256 << 10;
/// Bytes of one block hash on the wire.
const HASH: usize = 6;

/// The needing side's old bytes of one gap, as the offering side learns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hole {
    /// Its length (1 to [`MATCH_HOLE`]).
    pub span: u64,
    /// The hashes of its blocks, in order (the last may be shorter).
    pub hashes: Vec<u64>,
}

impl Hole {
    /// The hole of `bytes` (at most [`MATCH_HOLE`] of them).
    pub fn of(bytes: &[u8]) -> Hole {
        Hole {
            span: bytes.len() as u64,
            hashes: bytes.chunks(BLOCK as usize).map(block_hash).collect(),
        }
    }

    /// Bytes of a hole of `span` bytes on the wire ([`encode_holes`]).
    pub fn wire_len(span: u64) -> usize {
        4 + HASH * span.div_ceil(BLOCK) as usize
    }

    /// The length of block `k`.
    fn block_len(&self, k: usize) -> u64 {
        BLOCK.min(self.span - k as u64 * BLOCK)
    }
}

fn mismatch(s: &str) -> ChunkError {
    ChunkError::Mismatch(format!("matched gap: {s}"))
}

/// The holes of a pick on the wire.
pub fn encode_holes(holes: &[Hole]) -> Vec<u8> {
    let mut out = Vec::new();
    for h in holes {
        out.extend_from_slice(&(h.span as u32).to_le_bytes());
        for &x in &h.hashes {
            out.extend_from_slice(&x.to_le_bytes()[..HASH]);
        }
    }
    out
}

/// The holes of a pick from the wire.
pub fn decode_holes(mut b: &[u8]) -> Result<Vec<Hole>, ChunkError> {
    let mut holes = Vec::new();
    while !b.is_empty() {
        let (span, rest) = b
            .split_at_checked(4)
            .ok_or_else(|| mismatch("a cut hole"))?;
        let span = u64::from(u32::from_le_bytes(span.try_into().expect("4 bytes")));
        if span == 0 || span > MATCH_HOLE {
            return Err(mismatch(&format!("a hole of {span} bytes")));
        }
        let n = span.div_ceil(BLOCK) as usize;
        let (hs, rest) = (rest.split_at_checked(n * HASH)).ok_or_else(|| mismatch("a cut hole"))?;
        let hashes = hs.chunks(HASH).map(hash48).collect();
        holes.push(Hole { span, hashes });
        b = rest;
    }
    Ok(holes)
}

fn hash48(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x[..HASH].copy_from_slice(b);
    u64::from_le_bytes(x)
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take(b: &mut &[u8]) -> Result<u64, ChunkError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first().ok_or_else(|| mismatch("cut ops"))?;
        *b = rest;
        v |= u64::from(x & 0x7F) << shift;
        if x < 0x80 {
            return Ok(v);
        }
    }
    Err(mismatch("a number too long"))
}

/// The ops and literal bytes that make `new` (a gap's new bytes) from `hole`'s blocks.
pub fn encode(new: &[u8], hole: &Hole) -> (Vec<u8>, Vec<u8>) {
    let mut at: HashMap<u64, usize> = HashMap::new();
    for (k, &h) in hole.hashes.iter().enumerate() {
        if hole.block_len(k) == BLOCK {
            at.entry(h).or_insert(k);
        }
    }
    let (mut ops, mut literal) = (Vec::new(), Vec::new());
    let (b, n) = (BLOCK as usize, new.len());
    let (mut i, mut lit) = (0, 0);
    while i + b <= n {
        let Some(&k) = at.get(&block_hash(&new[i..i + b])) else {
            i += 1;
            continue;
        };
        literal.extend_from_slice(&new[lit..i]);
        put(&mut ops, (i - lit) as u64);
        i += b;
        let mut c = 1;
        // the blocks after it, where they sit if the old bytes go on here
        while let Some(&h) = hole.hashes.get(k + c) {
            let l = hole.block_len(k + c) as usize;
            if i + l > n || block_hash(&new[i..i + l]) != h {
                break;
            }
            (i, c) = (i + l, c + 1);
        }
        put(&mut ops, k as u64 + 1);
        put(&mut ops, c as u64);
        lit = i;
    }
    literal.extend_from_slice(&new[lit..]);
    put(&mut ops, (n - lit) as u64);
    put(&mut ops, 0);
    (ops, literal)
}

/// The pieces of a gap of `len` new bytes, from its ops and literal bytes (each
/// taken from the front of `ops` and `literal`), over our hole at `hole` (offset,
/// span) whose blocks' hashes we sent.
pub fn decode(
    ops: &mut &[u8],
    literal: &mut &[u8],
    (from, span): (u64, u64),
    len: u64,
) -> Result<Vec<Piece>, ChunkError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    loop {
        let lit = take(ops)?;
        if lit > len - total {
            return Err(mismatch("more bytes than the gap"));
        }
        let (bytes, rest) = (literal.split_at_checked(lit as usize))
            .ok_or_else(|| mismatch("fewer literal bytes than its ops"))?;
        if lit > 0 {
            out.push(Piece::Bytes(bytes.to_vec()));
        }
        (*literal, total) = (rest, total + lit);
        let k = take(ops)?;
        if k == 0 {
            break;
        }
        let (start, c) = ((k - 1).saturating_mul(BLOCK), take(ops)?);
        let end = (start.saturating_add(c.saturating_mul(BLOCK))).min(span);
        if c == 0 || start >= span || end - start > len - total {
            return Err(mismatch("a copy out of the hole or the gap"));
        }
        if c > 1 && (c - 1) * BLOCK >= end - start {
            return Err(mismatch("a copy past the hole's end"));
        }
        out.push(Piece::Copy {
            from: from + start,
            len: end - start,
        });
        total += end - start;
    }
    if total != len {
        return Err(mismatch(&format!("{total} bytes for a gap of {len}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::tests::text;
    use proptest::prelude::*;

    /// `new` rebuilt from `old` through a hole over all of it.
    fn round_trip(old: &[u8], new: &[u8]) -> (Vec<u8>, usize) {
        let hole = Hole::of(old);
        let wire = encode_holes(std::slice::from_ref(&hole));
        assert_eq!(decode_holes(&wire).unwrap(), vec![hole.clone()]);
        let (ops, literal) = encode(new, &hole);
        let (mut o, mut l) = (&ops[..], &literal[..]);
        let pieces = decode(&mut o, &mut l, (0, old.len() as u64), new.len() as u64).unwrap();
        assert!(o.is_empty() && l.is_empty());
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Copy { from, len } => {
                    out.extend_from_slice(&old[from as usize..(from + len) as usize])
                }
                Piece::Bytes(b) => out.extend(b),
                other => panic!("{other:?}"),
            }
        }
        (out, literal.len())
    }

    #[test]
    fn an_insert_costs_its_own_bytes_and_the_old_bytes_are_copied() {
        let old = text(600, 1);
        let mut new = old.clone();
        new.splice(0..0, text(100, 2));
        let (out, literal) = round_trip(&old, &new);
        assert!(out == new);
        assert_eq!(
            literal, 100,
            "the inserted bytes only (the short tail follows)"
        );
        let mut edit = old.clone();
        edit[300..320].copy_from_slice(&text(20, 3));
        let (out, literal) = round_trip(&old, &edit);
        assert!(out == edit);
        assert_eq!(literal, 128, "the changed block");
    }

    #[test]
    fn ops_that_do_not_fit_the_gap_or_the_hole_are_refused() {
        let old = text(300, 4);
        let hole = Hole::of(&old);
        let (ops, literal) = encode(&old, &hole);
        let try_ = |ops: &[u8], lit: &[u8], len| {
            let (mut o, mut l) = (ops, lit);
            decode(&mut o, &mut l, (0, 300), len)
        };
        assert!(try_(&ops, &literal, 300).is_ok());
        assert!(try_(&ops, &literal, 299).is_err());
        assert!(try_(&ops, &literal, 301).is_err());
        // block 4 of a 3-block hole; three blocks from the last; a literal not sent
        assert!(try_(&[0, 4, 1, 0, 0], &[], 128).is_err());
        assert!(try_(&[0, 3, 3, 0, 0], &[], 44).is_err());
        assert!(try_(&[5, 0], &[1, 2], 5).is_err());
        assert!(try_(&[0xFF; 11], &[], 5).is_err());
        assert!(decode_holes(&[0, 0, 0, 0]).is_err());
        assert!(decode_holes(&[1, 0, 0, 0, 9]).is_err());
    }

    proptest! {
        #[test]
        fn any_edit_round_trips(
            n in 1usize..3000,
            edits in proptest::collection::vec((0usize..3000, 0usize..200, 0usize..200), 0..4),
            seed in 0u64..1000,
        ) {
            let old = text(n, seed + 1);
            let mut new = old.clone();
            for (k, (at, cut, add)) in edits.into_iter().enumerate() {
                let at = at.min(new.len());
                let cut = cut.min(new.len() - at);
                new.splice(at..at + cut, text(add, seed * 7 + k as u64 + 2));
            }
            let (out, _) = round_trip(&old, &new);
            prop_assert!(out == new);
        }

        /// A hostile peer's ops and holes: refused or within bounds, never a panic.
        #[test]
        fn any_bytes_are_refused_or_stay_in_the_gap_and_the_hole(
            ops in proptest::collection::vec(prop_oneof![3 => 0u8..6, 1 => any::<u8>()], 0..40),
            literal in proptest::collection::vec(any::<u8>(), 0..600),
            (span, len) in (1u64..2000, 0u64..700),
        ) {
            let _ = decode_holes(&ops);
            let (mut o, mut l) = (&ops[..], &literal[..]);
            if let Ok(pieces) = decode(&mut o, &mut l, (1000, span), len) {
                let mut total = 0;
                for p in pieces {
                    match p {
                        Piece::Copy { from, len } => {
                            prop_assert!(from >= 1000 && from + len <= 1000 + span);
                            total += len;
                        }
                        Piece::Bytes(b) => total += b.len() as u64,
                        other => prop_assert!(false, "{other:?}"),
                    }
                }
                prop_assert_eq!(total, len);
            }
        }
    }
}
