//! The rounds of the exchange: [`Offers`] (the side with the new version) and
//! [`Needs`] (the side rebuilding it from its old version plus what it asks for).

use super::{ChunkError, Offer, Tree, LEAF_MAX, MAX_GROUP};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// The needing side's answer to one offered node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Found here: copied from our own bytes.
    Have,
    /// Not found, a parent: offer its children next round.
    Expand,
    /// Not found, a leaf: send its bytes next round.
    Send,
}

/// What the offering side sends in a round after the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The children of each node answered [`Answer::Expand`], in order.
    pub children: Vec<Vec<Offer>>,
    /// The (offset, len) of each leaf answered [`Answer::Send`], in order: the caller
    /// reads these bytes from its file and sends them.
    pub send: Vec<(u64, u64)>,
}

/// The offering side: remembers what it offered last, to read the answers against.
pub struct Offers<'t> {
    tree: &'t Tree,
    /// (level, index) of each node offered in the last round, in order.
    last: Vec<(usize, usize)>,
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
        self.last = (0..self.tree.top().len()).map(|i| (level, i)).collect();
        self.tree.top().iter().map(|n| offer(n, level)).collect()
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
        for (&(level, i), a) in self.last.iter().zip(answers) {
            match a {
                Answer::Have => {}
                Answer::Expand if level > 0 => {
                    let first = self.tree.level(level)[i].first as usize;
                    let kids = self.tree.children(level, i);
                    round
                        .children
                        .push(kids.iter().map(|k| offer(k, level - 1)).collect());
                    next.extend((first..first + kids.len()).map(|k| (level - 1, k)));
                }
                Answer::Send if level == 0 => {
                    let n = self.tree.level(level)[i];
                    round.send.push((n.offset, n.len));
                }
                _ => {
                    return Err(ChunkError::Mismatch(format!(
                        "{a:?} for a node at level {level}"
                    )))
                }
            }
        }
        self.last = next;
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
    /// A parent whose children come next round.
    Open { len: u64 },
    /// A leaf whose bytes come next round.
    Asked { len: u64 },
}

/// The needing side of one file's exchange.
pub struct Needs {
    /// Every node of our old version by hash: where its bytes are.
    have: HashMap<u64, (u64, u64)>,
    pieces: Vec<Piece>,
    /// The new version's length (the offered nodes must add up to it).
    size: u64,
    max_pieces: usize,
}

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
            max_pieces: (size / 128) as usize + 1024,
        }
    }

    fn answer(&mut self, o: &Offer, out: &mut Vec<Piece>) -> Result<Answer, ChunkError> {
        if o.len == 0 || (o.leaf && o.len > u64::from(LEAF_MAX)) {
            return Err(ChunkError::Mismatch(format!("a node of {} bytes", o.len)));
        }
        let (piece, a) = match self.have.get(&o.hash) {
            Some(&(from, len)) if len == o.len => (Piece::Copy { from, len }, Answer::Have),
            _ if o.leaf => (Piece::Asked { len: o.len }, Answer::Send),
            _ => (Piece::Open { len: o.len }, Answer::Expand),
        };
        out.push(piece);
        Ok(a)
    }

    /// The first round: answers to the top level.
    pub fn first(&mut self, top: &[Offer]) -> Result<Vec<Answer>, ChunkError> {
        let total: u64 = top.iter().map(|o| o.len).sum();
        if total != self.size || top.len() > MAX_GROUP || !self.pieces.is_empty() {
            return Err(ChunkError::Mismatch(format!(
                "a top level of {} nodes covering {total} bytes, for {}",
                top.len(),
                self.size
            )));
        }
        let mut out = Vec::with_capacity(top.len());
        let answers = top
            .iter()
            .map(|o| self.answer(o, &mut out))
            .collect::<Result<_, _>>()?;
        self.pieces = out;
        Ok(answers)
    }

    /// A later round: the children of each node we expanded and the bytes of each leaf
    /// we asked for, both in order; returns the answers to the children.
    pub fn next(
        &mut self,
        round: Round,
        mut bytes: Vec<Vec<u8>>,
    ) -> Result<Vec<Answer>, ChunkError> {
        let mis = |s: String| Err(ChunkError::Mismatch(s));
        let (mut kids, mut data) = (round.children.into_iter(), bytes.drain(..));
        let mut out = Vec::with_capacity(self.pieces.len());
        let mut answers = Vec::new();
        for p in std::mem::take(&mut self.pieces) {
            match p {
                Piece::Open { len } => {
                    let Some(k) = kids.next() else {
                        return mis("fewer children lists than expanded nodes".into());
                    };
                    let sum: u64 = k.iter().map(|o| o.len).sum();
                    if k.is_empty() || k.len() > MAX_GROUP || sum != len {
                        return mis(format!("{} children of {sum} bytes for {len}", k.len()));
                    }
                    for o in &k {
                        answers.push(self.answer(o, &mut out)?);
                    }
                }
                Piece::Asked { len } => match data.next() {
                    Some(b) if b.len() as u64 == len => out.push(Piece::Bytes(b)),
                    _ => return mis(format!("no {len} bytes for a leaf asked for")),
                },
                done => out.push(done),
            }
            if out.len() > self.max_pieces {
                return mis(format!("more than {} pieces", self.max_pieces));
            }
        }
        if kids.next().is_some() || data.next().is_some() {
            return mis("more than was asked for".into());
        }
        self.pieces = out;
        Ok(answers)
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
        !self
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Open { .. } | Piece::Asked { .. }))
    }

    /// The pieces of the new version (adjacent copies merged); call once done.
    pub fn into_pieces(self) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::with_capacity(self.pieces.len());
        for p in self.pieces {
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
            Piece::Open { .. } | Piece::Asked { .. } => {
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
        Piece::Copy { len, .. } | Piece::Open { len } | Piece::Asked { len } => *len,
        Piece::Bytes(b) => b.len() as u64,
    }
}
