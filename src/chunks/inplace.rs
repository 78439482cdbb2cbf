//! A rateless linear sketch of a file's [`PIECE`]-byte pieces at their offsets, for two
//! versions of one size changed in place (a database's pages, a disk image's blocks):
//! many scattered small changes, too many for the leaf sketch, cost about
//! [`SYMBOL`] bytes and a half per changed piece, with the new bytes inside, instead of
//! a walk down the chunk tree.
//!
//! Piece `i` is the integer `v` of its little-endian bytes and position `x`, a
//! scrambling of `i + 1` ([`position`]), in the field of integers modulo the prime
//! 2^61 - 1. A *symbol* is the sum of `v` and
//! the sum of `x * v` over the pieces it holds; piece `i` is in symbol 0 and then in
//! symbol `j` with probability 2 / (j + 2), independently, so the first symbols hold
//! many pieces and later ones few ([`indices`]). The sketch is linear: the side
//! holding the old version subtracts its own symbols from the other side's, and what
//! is left is the same sums over the changes `new - old` alone (unchanged pieces
//! cancel). A symbol holding one changed piece gives it back: `x = P / S`, the change
//! `S`; the piece is then taken out of its other symbols, and so on (peeling). A
//! stream of symbols decodes once it has about 1.4 symbols per changed piece, and
//! needs no size fixed beforehand: the needing side asks for more until it decodes.
//! How many to ask for first comes from an [`Stream::Sample`] sketch of one piece in
//! [`SAMPLE`]: its changes, decoded from a few symbols, times [`SAMPLE`].
//!
//! A false "pure" symbol must give a position below the piece count, one whose
//! indices hold that symbol, and a new value that fits the piece's bytes; the rebuilt
//! file's BLAKE3 catches the rest, as any lie.

use super::{ChunkError, Piece};
use crate::iblt::mix;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

/// Bytes of a piece: its value is below 2^56, inside the field.
pub const PIECE: u64 = 7;
/// Bytes of one symbol on the wire: two field elements, little-endian u64s.
pub const SYMBOL: usize = 16;
/// One piece in this many is in the sample stream.
pub const SAMPLE: u64 = 64;
/// Symbols of the sample stream sent first: its changes decode when under about 60
/// (about 4,000 changed pieces in the file).
pub const SAMPLE_SYMBOLS: u32 = 96;
/// Most symbols of the full stream one file may take (128 KiB).
pub const MAX_SYMBOLS: u32 = 8192;
/// Files of 1 MiB up to this size may be sketched (the sketch costs a pass of a few
/// steps per piece on each side).
pub const MAX_SIZE: u64 = 256 << 20;
/// Fewest symbols asked for after the sample.
const MIN_ASK: u32 = 256;

/// The prime 2^61 - 1.
const Q: u64 = (1 << 61) - 1;

fn reduce(x: u64) -> u64 {
    let x = (x & Q) + (x >> 61);
    if x >= Q {
        x - Q
    } else {
        x
    }
}

fn add(a: u64, b: u64) -> u64 {
    reduce(a + b)
}

fn sub(a: u64, b: u64) -> u64 {
    reduce(a + (Q - b))
}

fn mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    reduce((p as u64 & Q) + (p >> 61) as u64)
}

/// Odd multipliers of [`position`]'s rounds, and their inverses modulo 2^64.
const K1: u64 = 0x1C69_B3F7_4AC4_AE35;
const K2: u64 = 0x2545_F491_4F6C_DD1D;

const fn odd_inverse(k: u64) -> u64 {
    let mut inv = k;
    let mut n = 0;
    while n < 6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(inv)));
        n += 1;
    }
    inv
}

const M61: u64 = (1 << 61) - 1;

/// A piece's position in the field: `i + 1` scrambled by a bijection of 61-bit
/// numbers (multiply by an odd number, xor the top 30 bits down; twice). Plain
/// offsets would not do: two changes of the same value in one symbol give their
/// midpoint, a valid offset, as a false single change.
fn position(piece: u64) -> u64 {
    let mut x = (piece + 1).wrapping_mul(K1) & M61;
    x ^= x >> 31;
    x = x.wrapping_mul(K2) & M61;
    x ^ (x >> 31)
}

/// The piece at a position: [`position`] undone (any 61-bit number gives one).
fn piece_at(x: u64) -> u64 {
    let mut x = x ^ (x >> 31);
    x = x.wrapping_mul(odd_inverse(K2)) & M61;
    x ^= x >> 31;
    (x.wrapping_mul(odd_inverse(K1)) & M61).wrapping_sub(1)
}

fn inverse(a: u64) -> u64 {
    let (mut base, mut e, mut r) = (a, Q - 2, 1);
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    r
}

/// Which pieces a stream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Every piece.
    Full,
    /// One piece in [`SAMPLE`], for the estimate.
    Sample,
}

impl Stream {
    fn salt(self) -> u64 {
        match self {
            Stream::Full => 0x1A9A_CE01,
            Stream::Sample => 0x1A9A_CE02,
        }
    }

    fn holds(self, piece: u64) -> bool {
        match self {
            Stream::Full => true,
            Stream::Sample => mix(piece ^ 0x5A3B_1E00).is_multiple_of(SAMPLE),
        }
    }
}

/// One symbol: the sum of its pieces' values and of their positions times values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Symbol {
    /// Sum of the values.
    pub sum: u64,
    /// Sum of position times value.
    pub weighted: u64,
}

impl Symbol {
    fn take(&mut self, other: Symbol) {
        self.sum = sub(self.sum, other.sum);
        self.weighted = sub(self.weighted, other.weighted);
    }

    fn put(&mut self, other: Symbol) {
        self.sum = add(self.sum, other.sum);
        self.weighted = add(self.weighted, other.weighted);
    }

    fn is_zero(self) -> bool {
        self.sum == 0 && self.weighted == 0
    }
}

/// The symbols each piece is in, from 0, below `upto` ([`crate::iblt::rateless`]:
/// symbol `k` holds the piece with probability about 2 / (k + 2)).
pub fn indices(piece: u64, stream: Stream, upto: u32) -> impl Iterator<Item = u32> {
    crate::iblt::rateless(mix(piece ^ mix(stream.salt())), upto)
}

/// A piece's value: its bytes, little-endian.
fn value(bytes: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(v)
}

fn pieces_of(len: u64) -> u64 {
    len.div_ceil(PIECE)
}

/// Symbols `from..to` of `stream` over the first `len` bytes of `file`.
pub fn symbols(
    file: &impl FileExt,
    len: u64,
    stream: Stream,
    from: u32,
    to: u32,
) -> std::io::Result<Vec<Symbol>> {
    let mut out = vec![Symbol::default(); to.saturating_sub(from) as usize];
    let mut buf = vec![0u8; (PIECE << 17) as usize];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        for (k, bytes) in buf[..n].chunks(PIECE as usize).enumerate() {
            let piece = at / PIECE + k as u64;
            if stream.holds(piece) {
                let v = value(bytes);
                let s = Symbol {
                    sum: v,
                    weighted: mul(position(piece), v),
                };
                for j in indices(piece, stream, to).filter(|&j| j >= from) {
                    out[(j - from) as usize].put(s);
                }
            }
        }
        at += n as u64;
    }
    Ok(out)
}

/// Symbols as sent: 16 bytes each.
pub fn encode(symbols: &[Symbol]) -> Vec<u8> {
    let bytes = symbols.iter().flat_map(|s| {
        let (a, b) = (s.sum.to_le_bytes(), s.weighted.to_le_bytes());
        a.into_iter().chain(b)
    });
    bytes.collect()
}

/// Symbols from the wire; `None` if not whole symbols or a number outside the field.
pub fn decode_symbols(bytes: &[u8]) -> Option<Vec<Symbol>> {
    if !bytes.len().is_multiple_of(SYMBOL) {
        return None;
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let symbols = bytes.chunks(SYMBOL).map(|c| Symbol {
        sum: word(&c[..8]),
        weighted: word(&c[8..]),
    });
    let symbols: Vec<Symbol> = symbols.collect();
    let in_field = symbols.iter().all(|s| s.sum < Q && s.weighted < Q);
    in_field.then_some(symbols)
}

/// The needing side of one stream: the other side's symbols less ours, peeled. Our
/// version is passed to each call (the caller holds it).
#[derive(Debug)]
pub struct Decoder {
    len: u64,
    stream: Stream,
    cells: Vec<Symbol>,
    /// Our own symbols, computed ahead of what was received (a pass costs about the
    /// same however many it computes).
    ours: Vec<Symbol>,
    /// Changed pieces found so far: their index and change.
    found: BTreeMap<u64, u64>,
}

impl Decoder {
    /// A decoder for versions of `len` bytes.
    pub fn new(len: u64, stream: Stream) -> Self {
        Decoder {
            len,
            stream,
            cells: Vec::new(),
            ours: Vec::new(),
            found: BTreeMap::new(),
        }
    }

    /// The stream it decodes.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Symbols received so far.
    pub fn received(&self) -> u32 {
        self.cells.len() as u32
    }

    /// Takes the next symbols of the other side (`theirs`, from [`Self::received`] on)
    /// and peels what it can; ours come from `old` (up to half as many again as needed
    /// now are computed in the same pass, for the next ask).
    pub fn add(&mut self, old: &impl FileExt, theirs: &[Symbol]) -> Result<(), ChunkError> {
        let from = self.received();
        let limit = match self.stream {
            Stream::Full => MAX_SYMBOLS,
            Stream::Sample => SAMPLE_SYMBOLS,
        };
        let to = from
            .checked_add(theirs.len() as u32)
            .filter(|&t| t <= limit)
            .ok_or_else(|| ChunkError::Mismatch("too many in-place symbols".into()))?;
        if to as usize > self.ours.len() {
            let ahead = (to + to / 2).min(limit);
            self.ours = symbols(old, self.len, self.stream, 0, ahead)
                .map_err(|e| ChunkError::Read(e.to_string()))?;
        }
        for (t, o) in theirs.iter().zip(&self.ours[from as usize..]) {
            let mut d = *t;
            d.take(*o);
            self.cells.push(d);
        }
        for (&piece, &change) in &self.found {
            for j in indices(piece, self.stream, to).filter(|&j| j >= from) {
                self.cells[j as usize].take(item(piece, change));
            }
        }
        self.peel(old)
    }

    fn peel(&mut self, old: &impl FileExt) -> Result<(), ChunkError> {
        let upto = self.received();
        let mut todo: Vec<u32> = (0..upto)
            .filter(|&j| !self.cells[j as usize].is_zero())
            .collect();
        while let Some(j) = todo.pop() {
            let Some((piece, change)) = self.pure(old, j)? else {
                continue;
            };
            self.found.insert(piece, change);
            if self.found.len() > 2 * self.cells.len() {
                // (an honest stream decodes with more symbols than changes: this is a
                // peer making us peel without end)
                return Err(ChunkError::Mismatch("more changes than symbols".into()));
            }
            for k in indices(piece, self.stream, upto) {
                self.cells[k as usize].take(item(piece, change));
                if !self.cells[k as usize].is_zero() {
                    todo.push(k);
                }
            }
        }
        Ok(())
    }

    /// The one changed piece symbol `j` holds, if it holds one.
    fn pure(&self, old: &impl FileExt, j: u32) -> Result<Option<(u64, u64)>, ChunkError> {
        let c = self.cells[j as usize];
        if c.sum == 0 {
            return Ok(None);
        }
        let piece = piece_at(mul(c.weighted, inverse(c.sum)));
        let fits = piece < pieces_of(self.len)
            && self.stream.holds(piece)
            && !self.found.contains_key(&piece)
            && indices(piece, self.stream, j + 1).any(|k| k == j);
        if !fits {
            return Ok(None);
        }
        let (at, width) = self.span(piece);
        let new = add(old_value(old, at, width)?, c.sum);
        Ok((new >> (8 * width) == 0).then_some((piece, c.sum)))
    }

    fn span(&self, piece: u64) -> (u64, u64) {
        let at = piece * PIECE;
        (at, PIECE.min(self.len - at))
    }

    /// True once every symbol received is accounted for.
    pub fn is_done(&self) -> bool {
        !self.cells.is_empty() && self.cells.iter().all(|c| c.is_zero())
    }

    /// Changed pieces found so far.
    pub fn changes(&self) -> usize {
        self.found.len()
    }

    /// How many full-stream symbols to ask for after a sample decoder: about 1.5 a
    /// changed piece (its changes times [`SAMPLE`]); `None` when the sample did not
    /// decode or the estimate passes [`MAX_SYMBOLS`] (walk the tree instead).
    pub fn first_ask(&self) -> Option<u32> {
        if self.stream != Stream::Sample || !self.is_done() {
            return None;
        }
        let estimate = self.found.len() as u64 * SAMPLE;
        let ask = (estimate * 3 / 2 + 64).max(u64::from(MIN_ASK));
        (ask <= u64::from(MAX_SYMBOLS)).then_some(ask as u32)
    }

    /// How many more symbols to ask for when the full stream has not decoded yet:
    /// half as many again, within [`MAX_SYMBOLS`]; `None` at the limit.
    pub fn next_ask(&self) -> Option<u32> {
        let more = (self.received() / 2).max(MIN_ASK);
        let left = MAX_SYMBOLS - self.received().min(MAX_SYMBOLS);
        (left > 0).then_some(more.min(left))
    }

    /// The new version's pieces: our bytes (`old`), with each changed piece's new
    /// bytes.
    pub fn into_pieces(self, old: &impl FileExt) -> Result<Vec<Piece>, ChunkError> {
        let mut out = Vec::new();
        let mut at = 0;
        for (&piece, &change) in &self.found {
            let (start, width) = self.span(piece);
            if start > at {
                out.push(Piece::Copy {
                    from: at,
                    len: start - at,
                });
            }
            let new = add(old_value(old, start, width)?, change);
            out.push(Piece::Bytes(new.to_le_bytes()[..width as usize].to_vec()));
            at = start + width;
        }
        if at < self.len {
            out.push(Piece::Copy {
                from: at,
                len: self.len - at,
            });
        }
        Ok(out)
    }
}

fn old_value(old: &impl FileExt, at: u64, width: u64) -> Result<u64, ChunkError> {
    let mut b = vec![0u8; width as usize];
    old.read_exact_at(&mut b, at)
        .map_err(|e| ChunkError::Read(e.to_string()))?;
    Ok(value(&b))
}

fn item(piece: u64, change: u64) -> Symbol {
    Symbol {
        sum: change,
        weighted: mul(position(piece), change),
    }
}

#[cfg(test)]
mod tests;
