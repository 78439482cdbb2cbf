//! The receiver's in-place sketch (`crate::chunks::inplace`, version 21): after an
//! offer's leaf sketch did not decode, when our version is of the offered size, it
//! asks for the sample stream, then for as many full-stream symbols as the sample
//! says, and more until they decode; the rebuilt file is applied as any. When the
//! sample does not decode or the symbols pass their limit, it answers the root as it
//! would have, and the exchange walks the tree.

use super::{assemble_from, Next, Rebuild, Rebuilds};
use crate::chunks::inplace::{self, Decoder, Stream};
use crate::chunks::Answer;
use crate::wire::Message;

/// One file's in-place sketch under way.
pub(super) struct InPlace {
    decoder: Decoder,
    /// The symbol after the last asked for.
    asked: u32,
    /// Our answers to the root, sent if we give the sketch up.
    fallback: Vec<u8>,
}

impl InPlace {
    /// The sketch of `r` and its first ask, if our version is of the new size and
    /// within [`inplace::MAX_SIZE`]; `root` is our answer to the offered root.
    pub(super) fn start(r: &Rebuild, root: &[Answer]) -> Option<(InPlace, Message)> {
        let size = r.update.size;
        if size != r.old.len() || size > inplace::MAX_SIZE {
            return None;
        }
        let x = InPlace {
            decoder: Decoder::new(size, Stream::Sample),
            asked: inplace::SAMPLE_SYMBOLS,
            fallback: root.iter().map(|&a| super::answer_byte(a)).collect(),
        };
        let ask = x.ask(r.update.id, 0);
        Some((x, ask))
    }

    fn ask(&self, id: u64, from: u32) -> Message {
        Message::InPlaceAsk {
            id,
            sample: self.decoder.stream() == Stream::Sample,
            from,
            to: self.asked,
        }
    }
}

/// What the symbols just taken call for.
enum After {
    /// Ask for more, from this symbol on.
    Ask(u32),
    GiveUp,
    Done,
}

impl Rebuilds {
    /// An `InPlaceSymbols` of the exchange `id` (blocking: reads our version).
    pub fn in_place(&mut self, id: u64, symbols: &[u8]) -> Next {
        let decline = Next::Reply(Message::ChunkDecline(id));
        let Some(r) = self.current.get_mut(&id) else {
            return decline;
        };
        let after = match take(r, symbols) {
            Ok(after) => after,
            Err(e) => {
                tracing::info!("{}: in-place symbols refused: {e}", r.update.path);
                self.end(id);
                return decline;
            }
        };
        match after {
            After::Ask(from) => {
                let x = r.in_place.as_ref().expect("an in-place sketch under way");
                Next::Reply(x.ask(id, from))
            }
            After::GiveUp => {
                let x = r.in_place.take().expect("an in-place sketch under way");
                tracing::debug!(
                    "{}: the in-place sketch gave way to the tree",
                    r.update.path
                );
                Next::Reply(Message::ChunkAnswer {
                    id,
                    answers: x.fallback,
                })
            }
            After::Done => self.rebuilt_in_place(id),
        }
    }

    fn rebuilt_in_place(&mut self, id: u64) -> Next {
        let r = self.current.remove(&id).expect("an exchange under way");
        let charged = r.charged; // held until the file is applied
        let x = r.in_place.expect("an in-place sketch under way");
        let built = (x.decoder.into_pieces(&r.old))
            .map_err(|e| (r.update.path.clone(), std::io::Error::other(e.to_string())))
            .and_then(|pieces| assemble_from(&pieces, &r.old, r.update));
        match built {
            Ok(u) => Next::Apply(u, charged),
            Err((path, e)) => {
                self.budget.give(charged);
                tracing::warn!("{path}: rebuilding from an in-place sketch: {e}");
                Next::Reply(Message::ChunkDecline(id))
            }
        }
    }
}

/// Takes `symbols` into `r`'s sketch: they must be exactly those asked for.
fn take(r: &mut Rebuild, symbols: &[u8]) -> Result<After, crate::chunks::ChunkError> {
    let mismatch = |what: &str| crate::chunks::ChunkError::Mismatch(what.into());
    let x = r
        .in_place
        .as_mut()
        .ok_or_else(|| mismatch("no in-place sketch asked for"))?;
    let symbols = inplace::decode_symbols(symbols).ok_or_else(|| mismatch("bad symbols"))?;
    if x.decoder.received() + symbols.len() as u32 != x.asked {
        return Err(mismatch("not the symbols asked for"));
    }
    r.rounds += 1;
    x.decoder.add(&r.old, &symbols)?;
    let from = x.decoder.received();
    let more = match x.decoder.stream() {
        Stream::Sample => match x.decoder.first_ask() {
            Some(n) => {
                x.decoder = Decoder::new(r.update.size, Stream::Full);
                Some(n)
            }
            None => None,
        },
        Stream::Full if x.decoder.is_done() => return Ok(After::Done),
        Stream::Full => x.decoder.next_ask(),
    };
    Ok(match more {
        Some(n) if r.rounds <= super::MAX_ROUNDS => {
            let from = if x.decoder.received() == 0 { 0 } else { from };
            x.asked = from + n;
            After::Ask(from)
        }
        _ => After::GiveUp,
    })
}
