//! Invertible Bloom lookup tables (IBLT): a sketch of a set of fixed-width keys whose
//! size follows how much two sets differ, not how big they are. One side sends its
//! [`Table`]; the other takes its own keys out and [`Table::peel`]s what is left into
//! the keys only one side has. Used for a file's leaves (`chunks::sketch`) and for the
//! entries of the directories that differ at first contact (`sync::digests`).
//!
//! A cell is [`cell_bytes`] on the wire: a count (mod 256), the XOR of the keys
//! (little-endian, `key_bytes` wide) and the XOR of their 24-bit check values. Each key
//! goes into one cell of each of [`WAYS`] equal parts of the table, or, in a rateless
//! table ([`Layout::Rateless`]), into cell 0 and then fewer and fewer ([`rateless`]):
//! its first cells are a table too, so the sender can send more until it peels.
//! A false "pure" cell
//! is caught by the check and by the key's own cells; callers check what decodes
//! against what they know.

/// Cells each key goes into: one in each part of the table (4 parts decode small
/// differences more often than 3 in as many bytes: `chunks::sketch::tests::sizing`).
pub const WAYS: usize = 4;
/// Bytes of a cell's check value.
const CHECK_BYTES: usize = 3;

/// Bytes of one cell on the wire for keys of `key_bytes`.
pub const fn cell_bytes(key_bytes: usize) -> usize {
    1 + key_bytes + CHECK_BYTES
}

/// splitmix64's finalizer: keys are hashes already, this spreads them per use.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fold(k: u128, salt: u64) -> u64 {
    mix(mix(k as u64 ^ mix(salt)) ^ (k >> 64) as u64)
}

fn check(k: u128) -> u32 {
    fold(k, 0x5EED) as u32 & 0xFF_FFFF
}

/// The cells of `k` in a table of `cells`: one in each part, or (rateless) cell 0 and
/// then fewer and fewer ([`rateless`]).
fn slots(k: u128, cells: usize, layout: Layout) -> Vec<usize> {
    match layout {
        Layout::Parts => {
            let part = cells / WAYS;
            let slot = |j: usize| j * part + (fold(k, j as u64 + 1) % part as u64) as usize;
            (0..WAYS).map(slot).collect()
        }
        Layout::Rateless => rateless(fold(k, 0x5EED_0001), cells as u32)
            .map(|j| j as usize)
            .collect(),
    }
}

/// How keys spread over a table's cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One cell in each of [`WAYS`] equal parts: the table's size is fixed.
    Parts,
    /// Cell 0, then cell `j` with probability about 2 / (j + 2): a table's first cells
    /// are a table too, so more can be sent until it peels.
    Rateless,
}

/// The cells an item of `seed` is in, from 0, below `upto`: after cell `j`, the next
/// is `k = max(j + 1, floor((j + 1.5) w - 0.5))`, `w` = 1 / sqrt(u) for `u` uniform in
/// (0, 1] (16 bits of a wyrand draw), in fixed point ([`skips`]); so cell `k` holds
/// the item with probability about 2 / (k + 2).
pub fn rateless(seed: u64, upto: u32) -> impl Iterator<Item = u32> {
    let mut state = seed;
    let mut next = Some(0u32);
    let skips = skips();
    std::iter::from_fn(move || {
        let j = next.filter(|&j| j < upto)?;
        state = state.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(state) * u128::from(state ^ 0xE703_7ED1_A0B4_28DB);
        let r = ((t >> 64) as u64 ^ t as u64) as u16;
        let w = u64::from(skips[usize::from(r)]);
        let k = (u64::from(2 * j + 3) * w - (1 << (SKIP_BITS - 1))) >> SKIP_BITS;
        next = (k < u64::from(upto)).then(|| (k as u32).max(j + 1));
        Some(j)
    })
}

/// Fraction bits of the skip table's fixed point (`w` = 1 / sqrt(u) is at most 256:
/// `2 w` fits a u32).
const SKIP_BITS: u32 = 24;

/// `floor(2^23 / sqrt(u))` for each 16-bit draw `r`, `u = (r + 1) / 2^16`: `w` with
/// [`SKIP_BITS`] - 1 fraction bits, so that `(2 j + 3) * table[r]` is `(j + 1.5) w`
/// with [`SKIP_BITS`] (computed once; the same on every IEEE machine: a division and a
/// square root, each correctly rounded).
fn skips() -> &'static [u32] {
    static TABLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let scale = f64::from(1u32 << (SKIP_BITS - 1));
        let w = |r: u32| (scale / ((f64::from(r) + 1.0) / 65536.0).sqrt()).floor() as u32;
        (0..1 << 16).map(w).collect()
    })
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Cell {
    count: u8,
    key: u128,
    check: u32,
}

impl Cell {
    fn toggle(&mut self, k: u128, add: bool) {
        self.count = if add {
            self.count.wrapping_add(1)
        } else {
            self.count.wrapping_sub(1)
        };
        self.key ^= k;
        self.check ^= check(k);
    }
}

/// The keys a peeled table held: those only the sender had (`theirs`) and those only
/// the side that took its own keys out had (`ours`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Peeled {
    /// Keys in the sender's set only.
    pub theirs: Vec<u128>,
    /// Keys in our set only.
    pub ours: Vec<u128>,
}

/// A table of keys `key_bytes` wide.
#[derive(Clone)]
pub struct Table {
    cells: Vec<Cell>,
    key_bytes: usize,
    layout: Layout,
}

impl Table {
    /// An empty table of `cells` cells (a positive multiple of [`WAYS`]).
    pub fn new(cells: usize, key_bytes: usize) -> Table {
        assert!(cells > 0 && cells.is_multiple_of(WAYS) && key_bytes <= 16);
        Table {
            cells: vec![Cell::default(); cells],
            key_bytes,
            layout: Layout::Parts,
        }
    }

    /// An empty rateless table of `cells` cells (at least one).
    pub fn rateless(cells: usize, key_bytes: usize) -> Table {
        assert!(cells > 0 && key_bytes <= 16);
        Table {
            cells: vec![Cell::default(); cells],
            key_bytes,
            layout: Layout::Rateless,
        }
    }

    fn toggle(&mut self, k: u128, add: bool) {
        debug_assert!(self.key_bytes == 16 || k >> (8 * self.key_bytes) == 0);
        for s in slots(k, self.cells.len(), self.layout) {
            self.cells[s].toggle(k, add);
        }
    }

    /// Puts `k` in (the sender's keys).
    pub fn insert(&mut self, k: u128) {
        self.toggle(k, true);
    }

    /// Takes `k` out (the receiver's keys).
    pub fn remove(&mut self, k: u128) {
        self.toggle(k, false);
    }

    /// The table on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.cells.len() * cell_bytes(self.key_bytes));
        for c in &self.cells {
            out.push(c.count);
            out.extend_from_slice(&c.key.to_le_bytes()[..self.key_bytes]);
            out.extend_from_slice(&c.check.to_le_bytes()[..CHECK_BYTES]);
        }
        out
    }

    /// A table from the wire: `None` unless it is a whole number of cells, a positive
    /// multiple of [`WAYS`] of them and at most `max_cells`.
    pub fn parse(bytes: &[u8], key_bytes: usize, max_cells: usize) -> Option<Table> {
        Table::parse_as(bytes, key_bytes, max_cells, Layout::Parts)
    }

    /// A table of `layout` from the wire (a rateless one of any number of cells).
    pub fn parse_as(
        bytes: &[u8],
        key_bytes: usize,
        max_cells: usize,
        layout: Layout,
    ) -> Option<Table> {
        let size = cell_bytes(key_bytes);
        let cells = bytes.len() / size;
        if !bytes.len().is_multiple_of(size)
            || (layout == Layout::Parts && !cells.is_multiple_of(WAYS))
            || cells == 0
            || cells > max_cells
        {
            return None;
        }
        let cell = |c: &[u8]| {
            let (mut key, mut check) = ([0u8; 16], [0u8; 4]);
            key[..key_bytes].copy_from_slice(&c[1..1 + key_bytes]);
            check[..CHECK_BYTES].copy_from_slice(&c[1 + key_bytes..]);
            Cell {
                count: c[0],
                key: u128::from_le_bytes(key),
                check: u32::from_le_bytes(check),
            }
        };
        let cells = bytes.chunks(size).map(cell).collect();
        Some(Table {
            cells,
            key_bytes,
            layout,
        })
    }

    /// The keys left in the table (theirs minus ours), if it peels to empty.
    pub fn peel(mut self) -> Option<Peeled> {
        let cells = self.cells.len();
        let mut out = Peeled::default();
        let mut queue: Vec<usize> = (0..cells).collect();
        while let Some(i) = queue.pop() {
            let c = self.cells[i];
            let add = match c.count {
                1 => false,  // theirs: take it out
                255 => true, // ours: put it back
                _ => continue,
            };
            let own = slots(c.key, cells, self.layout);
            if check(c.key) != c.check || !own.contains(&i) {
                continue;
            }
            if add { &mut out.ours } else { &mut out.theirs }.push(c.key);
            if out.theirs.len() + out.ours.len() > cells * WAYS {
                return None; // (cannot happen with a sound table)
            }
            self.toggle(c.key, add);
            queue.extend(own);
        }
        self.cells
            .iter()
            .all(|c| *c == Cell::default())
            .then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u128 {
        u128::from(mix(i) & 0xFFFF_FFFF_FFFF)
    }

    #[test]
    fn a_small_difference_peels_into_both_sides_keys() {
        let mut t = Table::new(40, 6);
        (0..1000).for_each(|i| t.insert(key(i)));
        let t = Table::parse(&t.encode(), 6, 64).expect("parses");
        let mut t2 = t.clone();
        (3..1003).for_each(|i| t2.remove(key(i)));
        let mut p = t2.peel().expect("peels");
        p.theirs.sort_unstable();
        p.ours.sort_unstable();
        let mut theirs: Vec<_> = (0..3).map(key).collect();
        let mut ours: Vec<_> = (1000..1003).map(key).collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        assert_eq!((p.theirs, p.ours), (theirs, ours));
    }

    #[test]
    fn a_difference_too_big_does_not_peel() {
        let mut t = Table::new(8, 6);
        (0..100).for_each(|i| t.insert(key(i)));
        assert!(t.peel().is_none());
    }

    #[test]
    fn malformed_tables_are_refused() {
        let t = Table::new(8, 6).encode();
        assert_eq!(t.len(), 8 * cell_bytes(6));
        assert!(Table::parse(&t, 6, 8).is_some());
        assert!(Table::parse(&t, 6, 4).is_none(), "over the limit");
        assert!(
            Table::parse(&t[..t.len() - 1], 6, 8).is_none(),
            "a partial cell"
        );
        assert!(
            Table::parse(&t[..cell_bytes(6) * 6], 6, 8).is_none(),
            "6 cells"
        );
        assert!(Table::parse(&[], 6, 8).is_none(), "no cells");
    }
}
