//! The receiver asking for more of a sketch (version 21) when only the root was
//! offered and the offer's leaf sketch did not decode: first more of the leaf sketch's
//! (rateless) cells, up to [`sketch::MORE_CELLS`]; if those do not decode either and
//! our version is of the offered size, the in-place sketch (`crate::chunks::inplace`):
//! the sample stream, then as many full-stream symbols as the sample says, and more
//! until they decode. A decoded leaf sketch goes on as a pick; a decoded in-place one
//! is the rebuilt file. Giving up, it answers the root as it would have, and the
//! exchange walks the tree.

use super::{Next, Rebuild, Rebuilds};
use crate::chunks::inplace::{self, Decoder, Stream};
use crate::chunks::{sketch, Answer, ChunkError, Needs, Offer, Piece, Tree};
use crate::wire::{Message, SKETCH_LEAVES, SKETCH_PIECES, SKETCH_SAMPLE};

/// The leaf sketch so far, to decode with more cells.
pub(super) struct More {
    tree: Tree,
    cells: Vec<u8>,
    top: Vec<(u64, u64)>,
}

impl More {
    /// Our version's `tree`, the offer's sketch and top (its root).
    pub(super) fn new(tree: Tree, cells: &[u8], top: &[Offer]) -> More {
        let top = top.iter().map(|o| (o.hash, o.len)).collect();
        let cells = cells.to_vec();
        More { tree, cells, top }
    }

    fn have(&self) -> u32 {
        (self.cells.len() / sketch::CELL) as u32
    }
}

/// What is being asked for.
enum Stage {
    Leaves(More),
    Pieces(Decoder),
}

/// One file's sketch being asked for.
pub(super) struct Asking {
    stage: Stage,
    /// The cell or symbol after the last asked for.
    asked: u32,
    /// Our answers to the root, sent if we give the sketches up.
    fallback: Vec<u8>,
}

impl Asking {
    /// The first ask for `r` (`root`: our answer to the offered root), if there is
    /// more to ask for: leaf cells up to [`sketch::MORE_CELLS`], else the in-place
    /// sample.
    pub(super) fn start(r: &Rebuild, root: &[Answer], more: More) -> Option<(Asking, Message)> {
        let fallback = root.iter().map(|&a| super::answer_byte(a)).collect();
        let (stage, asked) = match more.have() < sketch::MORE_CELLS as u32 {
            true => (Stage::Leaves(more), sketch::MORE_CELLS as u32),
            false => (Stage::Pieces(in_place(r)?), inplace::SAMPLE_SYMBOLS),
        };
        let x = Asking {
            stage,
            asked,
            fallback,
        };
        let ask = x.ask(r.update.id);
        Some((x, ask))
    }

    /// The new version's pieces, once the in-place sketch decoded.
    pub(super) fn into_pieces(self, old: &super::Joined) -> Result<Vec<Piece>, ChunkError> {
        match self.stage {
            Stage::Pieces(d) => d.into_pieces(old),
            Stage::Leaves(_) => Err(ChunkError::Mismatch("no in-place sketch".into())),
        }
    }

    /// The cells or symbols received so far.
    fn have(&self) -> u32 {
        match &self.stage {
            Stage::Leaves(m) => m.have(),
            Stage::Pieces(d) => d.received(),
        }
    }

    fn ask(&self, id: u64) -> Message {
        let stream = match &self.stage {
            Stage::Leaves(_) => SKETCH_LEAVES,
            Stage::Pieces(d) if d.stream() == Stream::Sample => SKETCH_SAMPLE,
            Stage::Pieces(_) => SKETCH_PIECES,
        };
        Message::SketchAsk {
            id,
            stream,
            from: self.have(),
            to: self.asked,
        }
    }
}

/// An in-place sketch's decoder for `r`, if our version is of the offered size and
/// at most [`inplace::MAX_SIZE`].
fn in_place(r: &Rebuild) -> Option<Decoder> {
    let size = r.update.size;
    (size == r.old.len() && size <= inplace::MAX_SIZE).then(|| Decoder::new(size, Stream::Sample))
}

/// What the part just taken calls for.
enum After {
    /// Ask for more.
    Ask,
    /// The leaf sketch decoded to these leaves (hash, len).
    Picked(Vec<(u64, u64)>),
    /// The in-place sketch decoded.
    Done,
    GiveUp,
}

impl Rebuilds {
    /// A `SketchPart` of the exchange `id` (blocking: reads our version).
    pub fn sketch_part(&mut self, id: u64, bytes: &[u8]) -> Next {
        let decline = Next::Reply(Message::ChunkDecline(id));
        let Some(r) = self.current.get_mut(&id) else {
            return decline;
        };
        let after = match take(r, bytes) {
            Ok(after) => after,
            Err(e) => {
                tracing::info!("{}: sketch part refused: {e}", r.update.path);
                self.end(id);
                return decline;
            }
        };
        match after {
            After::Ask => {
                let x = r.asking.as_ref().expect("a sketch asked for");
                Next::Reply(x.ask(id))
            }
            After::GiveUp => {
                let x = r.asking.take().expect("a sketch asked for");
                tracing::debug!("{}: the sketches gave way to the tree", r.update.path);
                Next::Reply(Message::ChunkAnswer {
                    id,
                    answers: x.fallback,
                })
            }
            After::Picked(leaves) => self.picked(id, &leaves),
            After::Done => self.finish(id),
        }
    }

    /// The leaf sketch decoded to `leaves`: the exchange goes on from them (a pick).
    fn picked(&mut self, id: u64, leaves: &[(u64, u64)]) -> Next {
        let r = self.current.get_mut(&id).expect("an exchange under way");
        let Some(Stage::Leaves(more)) = r.asking.take().map(|x| x.stage) else {
            unreachable!("picked from the leaf sketch");
        };
        r.needs = Needs::new(&more.tree, r.update.size);
        match r.needs.sketched(leaves, &r.old) {
            Ok(p) => {
                let holes = crate::chunks::matching::encode_holes(&p.holes);
                self.after_round(id, Some((p.leaves, holes)), p.answers)
            }
            Err(e) => {
                tracing::info!("{}: a decoded sketch refused: {e}", r.update.path);
                self.end(id);
                Next::Reply(Message::ChunkDecline(id))
            }
        }
    }
}

/// Takes `bytes` into `r`'s sketch: they must be exactly the cells or symbols asked
/// for.
fn take(r: &mut Rebuild, bytes: &[u8]) -> Result<After, ChunkError> {
    let mismatch = |what: &str| ChunkError::Mismatch(what.into());
    let pieces = in_place(r);
    let x = r
        .asking
        .as_mut()
        .ok_or_else(|| mismatch("no sketch asked for"))?;
    let item = match x.stage {
        Stage::Leaves(_) => sketch::CELL,
        Stage::Pieces(_) => inplace::SYMBOL,
    };
    if bytes.len() != (x.asked - x.have()) as usize * item {
        return Err(mismatch("not the sketch part asked for"));
    }
    r.rounds += 1;
    if r.rounds > super::MAX_ROUNDS {
        return Ok(After::GiveUp);
    }
    let size = r.update.size;
    let more = match &mut x.stage {
        Stage::Leaves(m) => {
            m.cells.extend_from_slice(bytes);
            if let Some(leaves) = sketch::decode(&m.cells, &m.tree, size, &m.top) {
                return Ok(After::Picked(leaves));
            }
            let Some(d) = pieces else {
                return Ok(After::GiveUp);
            };
            x.stage = Stage::Pieces(d);
            inplace::SAMPLE_SYMBOLS
        }
        Stage::Pieces(d) => {
            let symbols = inplace::decode_symbols(bytes).ok_or_else(|| mismatch("bad symbols"))?;
            d.add(&r.old, &symbols)?;
            match d.stream() {
                Stream::Sample => match d.first_ask() {
                    Some(n) => {
                        *d = Decoder::new(size, Stream::Full);
                        n
                    }
                    None => return Ok(After::GiveUp),
                },
                Stream::Full if d.is_done() => return Ok(After::Done),
                Stream::Full => match d.next_ask() {
                    Some(n) => d.received() + n,
                    None => return Ok(After::GiveUp),
                },
            }
        }
    };
    x.asked = more;
    Ok(After::Ask)
}
