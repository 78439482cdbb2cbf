//! The rounds of the exchange: [`Offers`] (the side with the new version) and
//! [`Needs`] (the side rebuilding it from its old version plus what it asks for).

use super::matching::{self, Hole, MATCH_GAP, MATCH_HOLE, MATCH_TOTAL, MAX_ENCODED};
use super::{
    ChunkError, Offer, Tree, BLOCK, FINE, FINE_MIN, FINE_SLACK, LEAF_MAX, MAX_GROUP, MAX_HOLE,
    MIN_DESCRIBED,
};
use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The needing side's answer to one offered node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Found here: copied from our own bytes.
    Have,
    /// Not found, a parent: offer its children next round.
    Expand,
    /// Not found, a parent, in a round that expands few: offer its grandchildren next
    /// round (its children if they are leaves), a round trip less per two levels.
    Deeper,
    /// Not found, a leaf (or a block of one): send its bytes next round.
    Send,
    /// Not found, a leaf of [`MIN_DESCRIBED`] bytes or more: send the hashes of its
    /// [`BLOCK`]-byte blocks next round; the blocks not found here are asked for then.
    /// Not found, a block of more than [`FINE`] bytes: the same with [`FINE`]-byte
    /// pieces of it.
    Describe,
    /// Not found, a leaf of a gap picked after a sketch whose old bytes (its hole)
    /// went with the pick by their blocks' hashes ([`super::matching`]): send the gap
    /// as copies of those blocks and the bytes between them next round.
    Match,
}

/// What the offering side sends in a round after the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The children of each node answered [`Answer::Expand`] (grandchildren for
    /// [`Answer::Deeper`]), in order.
    pub children: Vec<Vec<Offer>>,
    /// The (offset, len) of each leaf or block answered [`Answer::Send`], in order: the
    /// caller reads these bytes from its file and sends them.
    pub send: Vec<(u64, u64)>,
    /// The (offset, len) of each leaf answered [`Answer::Describe`], in order: the
    /// caller sends the [`block_hashes`] of these bytes.
    pub describe: Vec<(u64, u64)>,
    /// The (offset, len) of each block answered [`Answer::Describe`], in order: the
    /// caller sends the [`fine_hashes`] of these bytes, after those of `describe`.
    pub fine: Vec<(u64, u64)>,
    /// The (offset, len) of each gap answered [`Answer::Match`], in order, with the
    /// needing side's hole there: the caller sends [`super::matching::encode`] of them.
    pub matched: Vec<(u64, u64, Hole)>,
}

/// What was offered: a node of the tree, or a block of a described leaf.
#[derive(Clone, Copy, Debug)]
enum Item {
    /// The root over the top level ([`Tree::root`]): expanded, it offers the top.
    Root,
    /// (level, index) in the tree.
    Node(usize, usize),
    /// (offset, len) in the file.
    Block(u64, u64),
}

/// The 48-bit hash of one block (the first 6 bytes of its BLAKE3, little-endian).
pub fn block_hash(bytes: &[u8]) -> u64 {
    super::tree::short(blake3::hash(bytes))
}

/// The hashes of the [`BLOCK`]-byte blocks of one described leaf (the last may be
/// shorter), in order.
pub fn block_hashes(leaf: &[u8]) -> Vec<u64> {
    leaf.chunks(BLOCK as usize).map(block_hash).collect()
}

/// The hashes of the [`FINE`]-byte pieces of one described block (the last may be
/// shorter), in order.
pub fn fine_hashes(block: &[u8]) -> Vec<u64> {
    block.chunks(FINE as usize).map(block_hash).collect()
}

/// The `unit`-byte parts of `len` bytes at `offset`: (offset, len) each.
fn parts_of(offset: u64, len: u64, unit: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(unit)).map(move |k| (offset + k * unit, unit.min(len - k * unit)))
}

/// The blocks of a leaf of `len` bytes at `offset`: (offset, len) each.
fn blocks_of(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    parts_of(offset, len, BLOCK)
}

/// The offering side: remembers what it offered last, to read the answers against.
#[derive(Clone)]
pub struct Offers<'t> {
    tree: &'t Tree,
    /// Each node or block offered in the last round, in order.
    last: Vec<Item>,
}

fn offer(n: &super::Node, level: usize) -> Offer {
    Offer {
        hash: n.hash,
        len: n.len,
        leaf: level == 0,
    }
}

impl<'t> Offers<'t> {
    /// Starts offering `tree`.
    pub fn new(tree: &'t Tree) -> Offers<'t> {
        Offers {
            tree,
            last: Vec::new(),
        }
    }

    /// The first round: the top level.
    pub fn top(&mut self) -> Vec<Offer> {
        let level = self.tree.depth().saturating_sub(1);
        self.last = (0..self.tree.top().len())
            .map(|i| Item::Node(level, i))
            .collect();
        self.tree.top().iter().map(|n| offer(n, level)).collect()
    }

    /// The first round when a sketch goes with it: the root alone ([`Tree::root`]),
    /// which the needing side expands (to the top level) only if the sketch does
    /// not decode.
    pub fn root(&mut self) -> Offer {
        self.last = vec![Item::Root];
        self.tree.root()
    }

    /// The next round, from the answers to the last one (one per node offered).
    pub fn next(&mut self, answers: &[Answer]) -> Result<Round, ChunkError> {
        if answers.len() != self.last.len() {
            return Err(ChunkError::Mismatch(format!(
                "{} answers to {} offers",
                answers.len(),
                self.last.len()
            )));
        }
        let (mut round, mut next) = (Round::default(), Vec::new());
        for (&item, &a) in self.last.iter().zip(answers) {
            match (item, a) {
                (_, Answer::Have) => {}
                // (deeper too: the needing side takes any nodes that cover it)
                (Item::Root, Answer::Expand | Answer::Deeper) => {
                    let level = self.tree.depth().saturating_sub(1);
                    let top = self.tree.top();
                    round
                        .children
                        .push(top.iter().map(|n| offer(n, level)).collect());
                    next.extend((0..top.len()).map(|i| Item::Node(level, i)));
                }
                (Item::Node(level, i), Answer::Expand | Answer::Deeper) if level > 0 => {
                    let down = if a == Answer::Deeper && level > 1 {
                        2
                    } else {
                        1
                    };
                    let (at, range) = self.tree.descendants(level, i, down);
                    let kids = &self.tree.level(at)[range.clone()];
                    round
                        .children
                        .push(kids.iter().map(|k| offer(k, at)).collect());
                    next.extend(range.map(|k| Item::Node(at, k)));
                }
                (Item::Node(0, i), Answer::Send) => {
                    let n = self.tree.level(0)[i];
                    round.send.push((n.offset, n.len));
                }
                (Item::Node(0, i), Answer::Describe)
                    if self.tree.level(0)[i].len >= MIN_DESCRIBED =>
                {
                    let n = self.tree.level(0)[i];
                    round.describe.push((n.offset, n.len));
                    next.extend(blocks_of(n.offset, n.len).map(|(o, l)| Item::Block(o, l)));
                }
                (Item::Block(o, l), Answer::Send) => round.send.push((o, l)),
                (Item::Block(o, l), Answer::Describe) if l > FINE => {
                    round.fine.push((o, l));
                    next.extend(parts_of(o, l, FINE).map(|(o, l)| Item::Block(o, l)));
                }
                _ => return Err(ChunkError::Mismatch(format!("{a:?} for {item:?}"))),
            }
        }
        self.last = next;
        Ok(round)
    }

    /// The round after the needing side decoded the sketch: `leaves` are the indexes
    /// (strictly increasing) of the leaves it answered, `answers` its answers to them.
    /// `holes` are the needing side's old bytes of the gaps (runs of consecutive
    /// leaves) it answered [`Answer::Match`], in order.
    pub fn pick(
        &mut self,
        leaves: &[u32],
        answers: &[Answer],
        holes: Vec<Hole>,
    ) -> Result<Round, ChunkError> {
        let n = self.tree.level(0).len();
        let bad_order = leaves.windows(2).any(|w| w[0] >= w[1]);
        if bad_order || leaves.last().is_some_and(|&l| l as usize >= n) {
            return Err(ChunkError::Mismatch(format!(
                "picked leaves out of order or past the {n} offered"
            )));
        }
        if answers.len() != leaves.len() {
            return Err(ChunkError::Mismatch(format!(
                "{} answers to {} picked leaves",
                answers.len(),
                leaves.len()
            )));
        }
        let (mut holes, mut matched) = (holes.into_iter(), Vec::new());
        let (mut rest, mut rest_answers) = (Vec::new(), Vec::new());
        let is_match = |a: &Answer| *a == Answer::Match;
        for run in runs(leaves) {
            if !answers[run.clone()].iter().any(is_match) {
                rest.extend(run.clone().map(|k| Item::Node(0, leaves[k] as usize)));
                rest_answers.extend_from_slice(&answers[run]);
                continue;
            }
            let all = answers[run.clone()].iter().all(is_match);
            let Some(hole) = holes.next().filter(|_| all) else {
                return Err(ChunkError::Mismatch(
                    "a gap matched in part, or no hole".into(),
                ));
            };
            let level = self.tree.level(0);
            let first = level[leaves[run.start] as usize];
            let last = level[leaves[run.end - 1] as usize];
            matched.push((first.offset, last.offset + last.len - first.offset, hole));
        }
        let total: u64 = matched.iter().map(|m| m.1).sum();
        let big = matched.iter().any(|m| m.1 > MATCH_GAP) || total > MATCH_TOTAL;
        if holes.next().is_some() || big {
            return Err(ChunkError::Mismatch(
                "holes past the gaps, or gaps too big".into(),
            ));
        }
        self.last = rest;
        let mut round = self.next(&rest_answers)?;
        round.matched = matched;
        Ok(round)
    }

    /// True once nothing offered is left open.
    pub fn is_done(&self) -> bool {
        self.last.is_empty()
    }
}

/// One piece of the rebuilt file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// These bytes of our old version.
    Copy { from: u64, len: u64 },
    /// Bytes that came over the link.
    Bytes(Vec<u8>),
    /// A parent whose children (grandchildren if `deep`, when it has them) come next
    /// round.
    Open { len: u64, deep: bool },
    /// A leaf or block whose bytes come next round.
    Asked { len: u64 },
    /// A leaf whose block hashes come next round, to be looked for in our bytes
    /// `hole` (offset, len): where the old version of that part of the file probably is.
    Described { len: u64, hole: (u64, u64) },
    /// A block whose [`FINE`]-byte pieces' hashes come next round, to be looked for in
    /// our bytes `near` (offset, len): around where its neighbours were found.
    Fine { len: u64, near: (u64, u64) },
    /// A leaf of a gap whose bytes come next round as copies of the blocks of our
    /// bytes `hole` (offset, len), whose hashes we sent, and bytes between them.
    Matched { len: u64, hole: (u64, u64) },
}

/// The needing side's answers after a sketch decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Picked {
    /// Indexes of the new version's leaves not found here, in order.
    pub leaves: Vec<u32>,
    /// The answer to each.
    pub answers: Vec<Answer>,
    /// Our old bytes of each gap answered [`Answer::Match`], in order.
    pub holes: Vec<Hole>,
}

/// The needing side of one file's exchange.
#[derive(Clone)]
pub struct Needs {
    /// Every node of our old version by hash: where its bytes are.
    have: HashMap<u64, (u64, u64)>,
    pieces: Vec<Piece>,
    /// The new version's length (the offered nodes must add up to it).
    size: u64,
    /// Our version's length.
    old_len: u64,
    /// Blocks of the leaves, and pieces of the blocks, described so far in this round.
    round_blocks: u64,
    max_pieces: usize,
}

/// Blocks and pieces one round may ask the offering side to describe (a block described
/// counts its pieces); leaves and blocks beyond are asked for whole (the hashes and
/// answers of a round stay well under the wire's node limit).
const MAX_ROUND_BLOCKS: u64 = 16 << 10;

impl Needs {
    /// Starts rebuilding a file of `size` bytes from `old`, our version's tree.
    pub fn new(old: &Tree, size: u64) -> Needs {
        let mut have = HashMap::with_capacity(old.nodes().size_hint().0);
        for n in old.nodes() {
            have.entry(n.hash).or_insert((n.offset, n.len));
        }
        Needs {
            have,
            pieces: Vec::new(),
            size,
            old_len: old.len(),
            round_blocks: 0,
            max_pieces: (size / 64) as usize + 1024,
        }
    }

    /// Adds the piece for offer `o` to `out` (its answer follows from it: see
    /// [`answer_for`]).
    fn answer(&mut self, o: &Offer, out: &mut Vec<Piece>) -> Result<(), ChunkError> {
        if o.len == 0 || (o.leaf && o.len > u64::from(LEAF_MAX)) {
            return Err(ChunkError::Mismatch(format!("a node of {} bytes", o.len)));
        }
        let piece = match self.have.get(&o.hash) {
            Some(&(from, len)) if len == o.len => Piece::Copy { from, len },
            _ if o.leaf && self.may_describe(o.len) => {
                self.round_blocks += o.len.div_ceil(BLOCK);
                let hole = (0, 0); // see `set_holes`
                Piece::Described { len: o.len, hole }
            }
            _ if o.leaf => Piece::Asked { len: o.len },
            _ => Piece::Open {
                len: o.len,
                deep: false,
            },
        };
        out.push(piece);
        Ok(())
    }

    /// Ends a round: `out` are the pieces, `fresh` the positions of those made this
    /// round, in order; returns their answers.
    fn settle(&mut self, mut out: Vec<Piece>, fresh: &[usize]) -> Vec<Answer> {
        set_holes(&mut out, self.old_len);
        deepen(&mut out, fresh);
        let answers = fresh.iter().map(|&i| answer_for(&out[i])).collect();
        self.pieces = out;
        answers
    }

    fn may_describe(&self, len: u64) -> bool {
        let blocks = self.round_blocks + len.div_ceil(BLOCK);
        len >= MIN_DESCRIBED && self.old_len > 0 && blocks <= MAX_ROUND_BLOCKS
    }

    /// The first round's pieces for `offers` (the top level, at most `most` nodes, or
    /// the leaves of a decoded sketch), which must cover the new version.
    fn open(
        &mut self,
        offers: impl ExactSizeIterator<Item = Offer> + Clone,
        most: usize,
    ) -> Result<Vec<Piece>, ChunkError> {
        let (total, n): (u64, usize) = (offers.clone().map(|o| o.len).sum(), offers.len());
        if total != self.size || n > most || !self.pieces.is_empty() {
            return Err(ChunkError::Mismatch(format!(
                "a first round of {n} nodes covering {total} bytes, for {}",
                self.size
            )));
        }
        let mut out = Vec::with_capacity(n);
        self.round_blocks = 0;
        for o in offers {
            self.answer(&o, &mut out)?;
        }
        Ok(out)
    }

    /// The first round: answers to the top level.
    pub fn first(&mut self, top: &[Offer]) -> Result<Vec<Answer>, ChunkError> {
        let out = self.open(top.iter().copied(), MAX_GROUP)?;
        let fresh: Vec<usize> = (0..out.len()).collect();
        Ok(self.settle(out, &fresh))
    }

    /// The first round when the offer's sketch decoded to `leaves` (hash, len), the
    /// new version's leaves in order: returns the indexes of those not found here,
    /// their answers, in order, and the holes of the gaps (runs of leaves not found)
    /// answered [`Answer::Match`], read from `old`, our version ([`Picked`]).
    pub fn sketched(
        &mut self,
        leaves: &[(u64, u64)],
        old: &impl FileExt,
    ) -> Result<Picked, ChunkError> {
        let leaf = true;
        let offers = (leaves.iter()).map(|&(hash, len)| Offer { hash, len, leaf });
        let mut out = self.open(offers, u32::MAX as usize)?;
        let fresh: Vec<usize> = (0..out.len())
            .filter(|&i| !matches!(out[i], Piece::Copy { .. }))
            .collect();
        let holes = self.match_gaps(&mut out, old)?;
        let answers = self.settle(out, &fresh);
        self.pieces = merged(std::mem::take(&mut self.pieces));
        let leaves = fresh.into_iter().map(|i| i as u32).collect();
        Ok(Picked {
            leaves,
            answers,
            holes,
        })
    }

    /// Marks the leaves of each gap of `out` whose old bytes are at most
    /// [`MATCH_HOLE`] (and its new ones at most [`MATCH_GAP`]) to be matched, while
    /// the holes fit [`MAX_ENCODED`] on the wire; returns those holes, read from `old`.
    fn match_gaps(&self, out: &mut [Piece], old: &impl FileExt) -> Result<Vec<Hole>, ChunkError> {
        let (mut holes, mut total, mut wire) = (Vec::new(), 0, 0);
        for (run, (start, span)) in gaps(out, self.old_len) {
            let len: u64 = out[run.clone()].iter().map(p_len).sum();
            let over = total + len > MATCH_TOTAL || wire + Hole::wire_len(span) > MAX_ENCODED;
            if span == 0 || span > MATCH_HOLE || len > MATCH_GAP || over {
                continue;
            }
            wire += Hole::wire_len(span);
            let mut bytes = vec![0u8; span as usize];
            old.read_exact_at(&mut bytes, start)
                .map_err(|e| ChunkError::Read(e.to_string()))?;
            holes.push(Hole::of(&bytes));
            total += len;
            for p in &mut out[run] {
                let len = p_len(p);
                *p = Piece::Matched {
                    len,
                    hole: (start, span),
                };
            }
        }
        Ok(holes)
    }

    /// A later round: the children of each node we expanded, the bytes of each leaf or
    /// block we asked for, and the hashes of the blocks of each leaf we had described,
    /// then of the pieces of each block we had described, all in order; `old` is our
    /// version (described leaves and blocks are looked for in it). Returns the answers
    /// to the children, blocks and pieces, in order.
    pub fn next(
        &mut self,
        round: Round,
        mut bytes: Vec<Vec<u8>>,
        hashes: &[u64],
        (mut ops, mut literal): (&[u8], &[u8]),
        old: &impl FileExt,
    ) -> Result<Vec<Answer>, ChunkError> {
        let mis = |s: String| Err(ChunkError::Mismatch(s));
        let (mut kids, mut data) = (round.children.into_iter(), bytes.drain(..));
        let (blocks, fine) = hashes.split_at(self.leaf_blocks().min(hashes.len()));
        let (mut blocks, mut fine) = (blocks.iter().copied(), fine.iter().copied());
        let mut search = Search::new();
        self.round_blocks = 0;
        let mut out = Vec::with_capacity(self.pieces.len());
        let mut fresh = Vec::new();
        let mut pieces = std::mem::take(&mut self.pieces).into_iter().peekable();
        while let Some(p) = pieces.next() {
            match p {
                Piece::Matched { mut len, hole } => {
                    while let Some(&Piece::Matched { len: l, hole: h }) = pieces.peek() {
                        if h != hole {
                            break;
                        }
                        (len, _) = (len + l, pieces.next());
                    }
                    out.extend(matching::decode(&mut ops, &mut literal, hole, len)?);
                }
                Piece::Open { len, deep } => {
                    let Some(k) = kids.next() else {
                        return mis("fewer children lists than expanded nodes".into());
                    };
                    let sum: u64 = k.iter().map(|o| o.len).sum();
                    let most = if deep {
                        MAX_GROUP * MAX_GROUP
                    } else {
                        MAX_GROUP
                    };
                    if k.is_empty() || k.len() > most || sum != len {
                        return mis(format!("{} children of {sum} bytes for {len}", k.len()));
                    }
                    for o in &k {
                        fresh.push(out.len());
                        self.answer(o, &mut out)?;
                    }
                }
                Piece::Asked { len } => match data.next() {
                    Some(b) if b.len() as u64 == len => out.push(Piece::Bytes(b)),
                    _ => return mis(format!("no {len} bytes for a leaf asked for")),
                },
                Piece::Described { len, hole } => {
                    let n = len.div_ceil(BLOCK) as usize;
                    let hashes: Vec<u64> = blocks.by_ref().take(n).collect();
                    if hashes.len() != n {
                        return mis(format!("fewer than {n} block hashes for a leaf"));
                    }
                    let mut found = find_parts(old, &mut search, (hole, BLOCK), &hashes, len)?;
                    anchor_blocks(&mut found, self.old_len);
                    for piece in found {
                        fresh.push(out.len());
                        out.push(piece);
                    }
                }
                Piece::Fine { len, near } => {
                    let n = len.div_ceil(FINE) as usize;
                    let hashes: Vec<u64> = fine.by_ref().take(n).collect();
                    if hashes.len() != n {
                        return mis(format!("fewer than {n} piece hashes for a block"));
                    }
                    for piece in find_parts(old, &mut search, (near, FINE), &hashes, len)? {
                        fresh.push(out.len());
                        out.push(piece);
                    }
                }
                done => out.push(done),
            }
            if out.len() > self.max_pieces {
                return mis(format!("more than {} pieces", self.max_pieces));
            }
        }
        let extra = blocks.next().or(fine.next()).is_some() || !ops.is_empty();
        let extra = extra || !literal.is_empty();
        if kids.next().is_some() || data.next().is_some() || extra {
            return mis("more than was asked for".into());
        }
        self.few_fine(&mut out, &fresh);
        Ok(self.settle(out, &fresh))
    }

    /// Block hashes the next round brings: those of the leaves described last.
    fn leaf_blocks(&self) -> usize {
        let blocks = self.pieces.iter().map(|p| match p {
            Piece::Described { len, .. } => len.div_ceil(BLOCK) as usize,
            _ => 0,
        });
        blocks.sum()
    }

    /// Blocks to describe finely cost a round trip: fewer than [`FINE_MIN`] of them
    /// in a round are asked for instead, and so are all of them if their pieces (at
    /// most 4 a block) would pass the round's budget or the most pieces a file has.
    fn few_fine(&mut self, out: &mut [Piece], fresh: &[usize]) {
        let is_fine = |p: &Piece| matches!(p, Piece::Fine { .. });
        let n = fresh.iter().filter(|&&i| is_fine(&out[i])).count() as u64;
        let parts = n * BLOCK.div_ceil(FINE);
        let fits = out.len() + parts as usize <= self.max_pieces;
        if n >= FINE_MIN && fits && self.round_blocks + parts <= MAX_ROUND_BLOCKS {
            self.round_blocks += parts;
            return;
        }
        for &i in fresh {
            if let Piece::Fine { len, .. } = out[i] {
                out[i] = Piece::Asked { len };
            }
        }
    }

    /// The lengths of the leaves asked for in the last round, in order: the bytes the
    /// next round must bring.
    pub fn asked(&self) -> Vec<u64> {
        let asked = self.pieces.iter().filter_map(|p| match p {
            Piece::Asked { len } => Some(*len),
            _ => None,
        });
        asked.collect()
    }

    /// Bytes of the new version found in ours so far.
    pub fn matched(&self) -> u64 {
        let copies = self.pieces.iter().filter_map(|p| match p {
            Piece::Copy { len, .. } => Some(*len),
            _ => None,
        });
        copies.sum()
    }

    /// True once every piece is known.
    pub fn is_done(&self) -> bool {
        !self.pieces.iter().any(|p| {
            matches!(
                p,
                Piece::Open { .. }
                    | Piece::Asked { .. }
                    | Piece::Described { .. }
                    | Piece::Fine { .. }
                    | Piece::Matched { .. }
            )
        })
    }

    /// The pieces of the new version (adjacent copies merged); call once done.
    pub fn into_pieces(self) -> Vec<Piece> {
        merged(self.pieces)
    }
}

/// `pieces` with each run of adjacent copies made one.
fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match (out.last_mut(), p) {
            (Some(Piece::Copy { from, len }), Piece::Copy { from: f, len: l })
                if *from + *len == f =>
            {
                *len += l
            }
            (_, p) => out.push(p),
        }
    }
    out
}

/// Writes the new version from `pieces`, copying from `old`; returns the bytes written.
pub fn rebuild(
    pieces: &[Piece],
    old: &impl FileExt,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for p in pieces {
        match p {
            Piece::Copy { from, len } => {
                let mut done = 0;
                while done < *len {
                    let n = (*len - done).min(buf.len() as u64) as usize;
                    old.read_exact_at(&mut buf[..n], from + done)?;
                    out.write_all(&buf[..n])?;
                    done += n as u64;
                }
            }
            Piece::Bytes(b) => out.write_all(b)?,
            Piece::Open { .. }
            | Piece::Asked { .. }
            | Piece::Described { .. }
            | Piece::Fine { .. }
            | Piece::Matched { .. } => {
                return Err(std::io::Error::other(
                    "rebuilding before the exchange ended",
                ))
            }
        }
        total += p_len(p);
    }
    Ok(total)
}

fn p_len(p: &Piece) -> u64 {
    match p {
        Piece::Copy { len, .. }
        | Piece::Open { len, .. }
        | Piece::Asked { len }
        | Piece::Described { len, .. }
        | Piece::Fine { len, .. }
        | Piece::Matched { len, .. } => *len,
        Piece::Bytes(b) => b.len() as u64,
    }
}

/// Where each described leaf's old bytes probably are. A *gap* is a run of pieces not
/// found in our version; its old bytes are those between the found pieces around it
/// (at most [`MAX_HOLE`]; from the one before on if moved data puts them out of
/// order). Old bytes can match only near the gap's ends, so a leaf further than that
/// from both ends (appended or inserted data) is asked for instead: its hashes would
/// only cost.
fn set_holes(pieces: &mut [Piece], old_len: u64) {
    for (run, old) in gaps(pieces, old_len) {
        describe_gap(&mut pieces[run], old);
    }
}

/// The gaps of `pieces` (runs not found in our version), each with its old bytes
/// (offset, len): see [`set_holes`].
fn gaps(pieces: &[Piece], old_len: u64) -> Vec<(Range<usize>, (u64, u64))> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        if matches!(pieces[i], Piece::Copy { .. }) {
            i += 1;
            continue;
        }
        let end = (i..pieces.len())
            .find(|&j| matches!(pieces[j], Piece::Copy { .. }))
            .unwrap_or(pieces.len());
        let start = match i.checked_sub(1).map(|k| &pieces[k]) {
            Some(Piece::Copy { from, len }) => from + len,
            _ => 0,
        };
        let next = match pieces.get(end) {
            Some(Piece::Copy { from, .. }) => *from,
            _ => old_len,
        };
        let next = if next > start { next } else { old_len };
        out.push((i..end, (start, next.saturating_sub(start))));
        i = end;
    }
    out
}

/// The runs of consecutive indexes in `leaves` (strictly increasing): the positions
/// of each in `leaves`.
fn runs(leaves: &[u32]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (k, &l) in leaves.iter().enumerate() {
        match out.last_mut() {
            Some(r) if leaves[r.end - 1] + 1 == l => r.end = k + 1,
            _ => out.push(k..k + 1),
        }
    }
    out
}

/// Sets the hole of each described leaf of one gap whose old bytes are `old` (offset,
/// len): a leaf within [`MAX_HOLE`] (or the old length) of the gap's start searches the
/// first that many old bytes, one as near its end the last that many; the others are
/// asked for.
fn describe_gap(gap: &mut [Piece], (start, span): (u64, u64)) {
    let total: u64 = gap.iter().map(p_len).sum();
    let reach = span.min(MAX_HOLE);
    let (head, tail) = ((start, reach), (start + span - reach, reach));
    let mut at = 0;
    for p in gap.iter_mut() {
        let len = p_len(p);
        let hole = match (at < reach, total - (at + len) < reach) {
            _ if reach < BLOCK => None,
            (true, _) => Some(head),
            (_, true) => Some(tail),
            _ => None,
        };
        if let Piece::Described { .. } = p {
            *p = match hole {
                Some(hole) => Piece::Described { len, hole },
                None => Piece::Asked { len },
            };
        }
        at += len;
    }
}

/// Parents to expand in one round, at most, for them to be expanded two levels at once:
/// a change or two cost a round trip per two levels of the tree instead of per level,
/// for the few more siblings offered (wider spreads of changes go level by level).
const DEEP_MAX: usize = 2;

/// Marks the parents of this round to be expanded two levels at once, if they are few.
fn deepen(pieces: &mut [Piece], fresh: &[usize]) {
    let open = |p: &Piece| matches!(p, Piece::Open { .. });
    if fresh.iter().filter(|&&i| open(&pieces[i])).count() > DEEP_MAX {
        return;
    }
    for &i in fresh {
        if let Piece::Open { len, .. } = pieces[i] {
            pieces[i] = Piece::Open { len, deep: true };
        }
    }
}

/// The answer a fresh piece gives to its offer.
fn answer_for(p: &Piece) -> Answer {
    match p {
        Piece::Copy { .. } | Piece::Bytes(_) => Answer::Have,
        Piece::Open { deep: false, .. } => Answer::Expand,
        Piece::Open { deep: true, .. } => Answer::Deeper,
        Piece::Asked { .. } => Answer::Send,
        Piece::Described { .. } | Piece::Fine { .. } => Answer::Describe,
        Piece::Matched { .. } => Answer::Match,
    }
}

/// Window bytes one round may hash while looking for described blocks: each hole is
/// searched once while its leaves come (they come together), and a peer that makes
/// more holes than honest changes do gets its blocks asked for instead (about a second
/// of one core).
const MAX_ROUND_SEARCH: u64 = 8 << 20;

/// Bytes searched: offset, length, window size.
type Area = (u64, u64, u64);

/// The searches of one round: the current hole's windows by hash, hashed once.
struct Search {
    /// The hole (offset, len) and window size searched last, and its windows: hash ->
    /// where it starts.
    windows: Option<(Area, HashMap<u64, u64>)>,
    /// Window bytes left to hash this round.
    budget: u64,
}

impl Search {
    fn new() -> Search {
        Search {
            windows: None,
            budget: MAX_ROUND_SEARCH,
        }
    }

    /// Where a `size`-byte window of `hole` with hash `h` starts, if there is one
    /// (none once the budget is spent).
    fn find(
        &mut self,
        old: &impl FileExt,
        (at, n): (u64, u64),
        size: u64,
        h: u64,
    ) -> Result<Option<u64>, ChunkError> {
        if self.windows.as_ref().map(|w| w.0) != Some((at, n, size)) {
            self.windows = None; // one hole's windows at a time (at most 32 Ki entries)
            if self.budget < n {
                return Ok(None);
            }
            self.budget -= n;
            let mut bytes = vec![0u8; n as usize];
            old.read_exact_at(&mut bytes, at)
                .map_err(|e| ChunkError::Read(e.to_string()))?;
            let mut m: HashMap<u64, u64> = HashMap::new();
            for (i, w) in bytes.windows(size as usize).enumerate() {
                m.entry(block_hash(w)).or_insert(at + i as u64);
            }
            self.windows = Some(((at, n, size), m));
        }
        Ok(self.windows.as_ref().and_then(|w| w.1.get(&h).copied()))
    }
}

/// Whether our `l` bytes at `from` have the block hash `h`.
fn same_at(old: &impl FileExt, from: u64, l: u64, h: u64) -> Result<bool, ChunkError> {
    let mut b = vec![0u8; l as usize];
    match old.read_exact_at(&mut b, from) {
        Ok(()) => Ok(block_hash(&b) == h),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ChunkError::Read(e.to_string())),
    }
}

/// Looks for the `unit`-byte parts of a described leaf ([`BLOCK`]) or block ([`FINE`])
/// of `len` bytes (their `hashes`) at any offset of our bytes `area`: a part found
/// there is copied, the rest are asked for. The last, shorter part is looked for only
/// right after the part before it, where it sits if that one was found.
fn find_parts(
    old: &impl FileExt,
    search: &mut Search,
    (area, unit): ((u64, u64), u64),
    hashes: &[u64],
    len: u64,
) -> Result<Vec<Piece>, ChunkError> {
    let mut found: Vec<Piece> = Vec::with_capacity(hashes.len());
    for ((_, l), &h) in parts_of(0, len, unit).zip(hashes) {
        let hit = match (l == unit, found.last()) {
            (true, _) => search.find(old, area, unit, h)?,
            (false, Some(&Piece::Copy { from, len })) => {
                let at = from + len;
                same_at(old, at, l, h)?.then_some(at)
            }
            (false, _) => None,
        };
        found.push(match hit {
            Some(from) => Piece::Copy { from, len: l },
            None => Piece::Asked { len: l },
        });
    }
    Ok(found)
}

/// Marks each block of a described leaf not found (`Asked`) but next to one found
/// (a change inside the block, most likely) to be described finely: its old bytes
/// are probably right after the block found before it, or right before the one after
/// it, give or take [`FINE_SLACK`] bytes of an insert or a delete.
fn anchor_blocks(found: &mut [Piece], old_len: u64) {
    for i in 0..found.len() {
        let Piece::Asked { len } = found[i] else {
            continue;
        };
        let before = i.checked_sub(1).and_then(|k| match found[k] {
            Piece::Copy { from, len } => Some(from + len),
            _ => None,
        });
        let after = match found.get(i + 1) {
            Some(&Piece::Copy { from, .. }) => Some(from.saturating_sub(len)),
            _ => None,
        };
        let Some(at) = before.or(after) else {
            continue;
        };
        let start = at.saturating_sub(FINE_SLACK);
        let end = (at + len + FINE_SLACK).min(old_len);
        if len > FINE && end >= start + FINE {
            found[i] = Piece::Fine {
                len,
                near: (start, end - start),
            };
        }
    }
}

#[cfg(test)]
mod search_tests {
    use super::*;

    #[test]
    fn a_block_may_be_described_but_not_a_piece() {
        let tree = Tree::from_bytes(&crate::chunks::tests::text(1000, 1));
        let mut offers = Offers::new(&tree);
        offers.last = vec![Item::Block(256, 128)];
        let round = offers.next(&[Answer::Describe]).unwrap();
        assert_eq!(round.fine, [(256, 128)]);
        assert_eq!(offers.last.len(), 4, "four 32-byte pieces offered");
        let wrong = [Answer::Describe, Answer::Send, Answer::Send, Answer::Send];
        assert!(offers.next(&wrong).is_err(), "a piece described again");
        offers.last = vec![Item::Node(0, 0)];
        assert!(offers.next(&[Answer::Deeper]).is_err(), "a leaf expanded");
    }

    #[test]
    fn a_parent_gets_at_most_its_share_of_children() {
        let f = tempfile::tempfile().unwrap();
        let kids = |n: u64| Round {
            children: vec![(0..n)
                .map(|i| Offer {
                    hash: i,
                    len: 10,
                    leaf: true,
                })
                .collect()],
            ..Round::default()
        };
        for (deep, n, ok) in [
            (false, 16, true),
            (false, 17, false),
            (true, 256, true),
            (true, 257, false),
        ] {
            let mut needs = Needs::new(&Tree::default(), n * 10);
            needs.pieces = vec![Piece::Open { len: n * 10, deep }];
            let got = needs.next(kids(n), Vec::new(), &[], (&[], &[]), &f);
            assert_eq!(got.is_ok(), ok, "{n} children, deep: {deep}");
        }
    }

    #[test]
    fn a_parent_expanded_deeper_offers_its_grandchildren() {
        let tree = Tree::from_bytes(&crate::chunks::tests::text(4 << 20, 2));
        let top = tree.depth() - 1;
        let (at, range) = tree.descendants(top, 0, 2);
        assert_eq!(at, top - 2);
        let kids = tree.children(top, 0);
        let grandkids: usize = (0..kids.len())
            .map(|k| {
                tree.children(top - 1, tree.level(top)[0].first as usize + k)
                    .len()
            })
            .sum();
        assert_eq!(range.len(), grandkids);
        let covered: u64 = tree.level(at)[range.clone()].iter().map(|n| n.len).sum();
        assert_eq!(covered, tree.level(top)[0].len);
        assert_eq!(tree.descendants(1, 0, 2).0, 0, "no further than the leaves");
        let mut offers = Offers::new(&tree);
        offers.last = vec![Item::Node(top, 0)];
        let round = offers.next(&[Answer::Deeper]).unwrap();
        assert_eq!(round.children.len(), 1);
        assert_eq!(round.children[0].len(), grandkids);
    }

    #[test]
    fn a_changed_block_is_found_piece_by_piece_around_its_neighbours() {
        let old = crate::chunks::tests::text(4096, 5);
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&old, 0).unwrap();
        // blocks 0 and 2 found; block 1 (128..256) changed: looked for near 128
        let mut found = vec![
            Piece::Copy { from: 0, len: 128 },
            Piece::Asked { len: 128 },
            Piece::Copy {
                from: 256,
                len: 128,
            },
        ];
        anchor_blocks(&mut found, old.len() as u64);
        let near = (128 - FINE_SLACK, 128 + 2 * FINE_SLACK);
        assert_eq!(found[1], Piece::Fine { len: 128, near });
        // the new block: 5 bytes inserted at 40 of it, the rest shifted, cut to 128
        let mut new = old[128..256].to_vec();
        new.splice(40..40, *b"12345");
        new.truncate(128);
        let hashes = fine_hashes(&new);
        let got = find_parts(&f, &mut Search::new(), (near, FINE), &hashes, 128).unwrap();
        let want = [
            Piece::Copy { from: 128, len: 32 },
            Piece::Asked { len: 32 },
            Piece::Copy { from: 187, len: 32 },
            Piece::Copy { from: 219, len: 32 },
        ];
        assert_eq!(got, want, "the pieces after the insert are found shifted");
    }

    #[test]
    fn holes_are_hashed_once_and_a_spent_budget_finds_nothing() {
        let bytes = crate::chunks::tests::text(64 << 10, 3);
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        let mut s = Search {
            windows: None,
            budget: 40_000,
        };
        let h = block_hash(&bytes[100..228]);
        assert_eq!(s.find(&f, (0, 32 << 10), BLOCK, h).unwrap(), Some(100));
        assert_eq!(s.budget, 40_000 - (32 << 10));
        // the same hole again: its windows are kept, the budget untouched
        assert_eq!(s.find(&f, (0, 32 << 10), BLOCK, h).unwrap(), Some(100));
        assert_eq!(s.budget, 40_000 - (32 << 10));
        // another hole, beyond what is left: not searched
        let h2 = block_hash(&bytes[40_000..40_128]);
        assert_eq!(s.find(&f, (32 << 10, 32 << 10), BLOCK, h2).unwrap(), None);
        // a short last block is checked right after the block before it
        let hashes = [block_hash(&bytes[100..228]), block_hash(&bytes[228..278])];
        let mut s = Search::new();
        let found = find_parts(&f, &mut s, ((0, 1000), BLOCK), &hashes, 178).unwrap();
        let copies = [
            Piece::Copy {
                from: 100,
                len: 128,
            },
            Piece::Copy { from: 228, len: 50 },
        ];
        assert_eq!(found, copies);
    }

    #[test]
    fn a_pick_must_name_leaves_of_the_tree_in_order() {
        let old = crate::chunks::tests::text(1 << 20, 5);
        let mut new = old.clone();
        new[500_000] ^= 1;
        let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
        let n = b.level(0).len() as u32;
        let leaves: Vec<(u64, u64)> = b.level(0).iter().map(|l| (l.hash, l.len)).collect();
        let f = crate::chunks::tests::file_of(&old);
        let mut needs = Needs::new(&a, new.len() as u64);
        let p = needs.sketched(&leaves, &f).unwrap();
        assert!(!p.leaves.is_empty() && p.leaves.len() <= 3, "{p:?}");
        // one gap, matched against our bytes there
        assert!(p.answers.iter().all(|&a| a == Answer::Match) && p.holes.len() == 1);
        assert!(needs.sketched(&leaves, &f).is_err(), "a second first round");
        let fresh = || Offers::new(&b);
        let pick = |l: &[u32], a: &[Answer], h: &[Hole]| fresh().pick(l, a, h.to_vec());
        assert!(pick(&[n], &[Answer::Send], &[]).is_err(), "past the last");
        let send2 = [Answer::Send; 2];
        assert!(pick(&[2, 1], &send2, &[]).is_err(), "out of order");
        assert!(pick(&[1], &[], &[]).is_err(), "unanswered");
        let hole = p.holes[0].clone();
        assert!(pick(&p.leaves, &p.answers, &[]).is_err(), "no hole");
        let two = [hole.clone(), hole.clone()];
        assert!(
            pick(&p.leaves, &p.answers, &two).is_err(),
            "a hole too many"
        );
        let part = [Answer::Match, Answer::Send];
        assert!(
            pick(&[1, 2], &part, &two[..1]).is_err(),
            "a gap matched in part"
        );
        let round = pick(&p.leaves, &p.answers, &p.holes).unwrap();
        assert_eq!(round.describe.len() + round.send.len(), 0);
        let gap: u64 = p.leaves.iter().map(|&i| b.level(0)[i as usize].len).sum();
        let at = b.level(0)[p.leaves[0] as usize].offset;
        assert_eq!(round.matched, vec![(at, gap, hole)]);
        let mut short = Needs::new(&a, new.len() as u64 + 1);
        assert!(
            short.sketched(&leaves, &f).is_err(),
            "leaves not covering the size"
        );
    }
}
