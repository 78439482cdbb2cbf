//! The sender's side of chunk exchanges ([`super::chunked`]), several at once on one
//! stream: each file's exchange is a small state machine ([`Exchange`]) fed the
//! peer's replies, and [`run`] interleaves their rounds. The receiver answers every
//! message in the order it came, so replies are matched in order; a batch of files
//! costs about the round trips of its deepest exchange, not their sum.

use super::chunked::{answer_of, to_wire, Offered, Ready, MAX_EXCHANGES};
use super::link::Duplex;
use super::sender::recv_reply;
use super::{unless_stalled, Stats, SyncError, MIN_APPLY_RATE, MIN_RATE, REPLY_TIMEOUT};
use crate::chunks::inplace::{self, Stream, Symbol};
use crate::chunks::{block_hashes, fine_hashes, matching, sketch, Answer, Offers, BLOCK, FINE};
use crate::wire::{hash48_bytes, AckKind, ChunkNode, FramedStream, Message};
use crate::wire::{SKETCH_LEAVES, SKETCH_PIECES, SKETCH_SAMPLE};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Leaf bytes one round may carry; more and the sender declines (it is mostly new).
const ROUND_DATA_MAX: u64 = 8 << 20;
/// File bytes under exchange at once, at most (the receiver holds each rebuilt file in
/// memory, charged to the peer's budget); a larger file (up to
/// [`CHUNK_MAX`](super::chunked::CHUNK_MAX)) goes alone.
pub const WINDOW_BYTES: u64 = 256 << 20;
/// Reply bytes the sender may be owed before it stops writing and reads: the replies
/// wait in the link's buffers meanwhile, so this stays well under them (a yamux
/// stream's window is 256 KiB), or both sides could block writing.
const OWED_MAX: usize = 64 << 10;
/// Sketch parts one exchange answers at most (an honest receiver asks for leaf cells
/// once, the sample once and a few rounds of symbols; each in-place ask may cost a
/// pass over the file): more is a protocol error.
const MAX_SKETCH_ASKS: usize = 16;
/// A reply's bytes besides its answers (ids, framing), counted toward [`OWED_MAX`].
const REPLY_HEAD: usize = 32;

/// One file's exchange, from the sender's side.
pub struct Exchange<'a> {
    id: u64,
    size: u64,
    tree: &'a crate::chunks::Tree,
    offers: Offers<'a>,
    file: &'a File,
    rounds: usize,
    nodes: usize,
    leaves: u64,
    /// The offer carried a sketch, and no reply came yet: the first may be a pick.
    sketched: bool,
    /// Only the root was offered and it is not answered yet: the receiver may ask for
    /// more of the sketch meanwhile (leaf cells, in-place symbols).
    root_open: bool,
    /// In-place symbols computed so far (of one stream, from 0).
    symbols: Option<(Stream, Vec<Symbol>)>,
}

/// A pass over the file for in-place symbols `0..upto` (run off the runtime), to
/// answer an ask of `from..to`.
pub struct Pass {
    file: File,
    size: u64,
    stream: Stream,
    upto: u32,
    asked: (u32, u32),
}

/// What an exchange does after a reply.
pub enum Step {
    /// Send this round; its answer (about this many bytes) comes next.
    Round(Message, usize),
    /// Over: the file was rebuilt and acked, or it goes whole. A message to send
    /// (the sender's decline) expects no reply.
    Done(Offered, Option<Message>),
    /// Compute in-place symbols (off the runtime), then give them to [`Exchange::passed`].
    Pass(Pass),
}

impl<'a> Exchange<'a> {
    /// Starts the exchange of `r`: its `ChunkOffer`, and the bytes of its answer.
    pub fn start(r: &'a Ready) -> (Exchange<'a>, Message, usize) {
        let mut offers = Offers::new(&r.read.tree);
        let leaves = r.read.tree.level(0).len();
        let sketch = match leaves >= sketch::MIN_LEAVES {
            true => sketch::encode(&r.read.tree, sketch::CELLS),
            false => Vec::new(),
        };
        // with a sketch, the root stands for the top level (asked for if the sketch
        // does not decode)
        let top: Vec<ChunkNode> = match sketch.is_empty() {
            true => offers.top().into_iter().map(to_wire).collect(),
            false => vec![to_wire(offers.root())],
        };
        // (a pick answers a few leaves, 5 bytes each)
        let owed = top.len() + REPLY_HEAD + if sketch.is_empty() { 0 } else { 256 };
        let x = Exchange {
            id: r.update.id,
            size: r.update.size,
            tree: &r.read.tree,
            offers,
            file: &r.read.file,
            rounds: 1,
            nodes: top.len(),
            leaves: 0,
            sketched: !sketch.is_empty(),
            root_open: !sketch.is_empty(),
            symbols: None,
        };
        let offer = Message::ChunkOffer {
            update: r.update.clone(),
            top,
            from: r.from.clone(),
            sketch,
        };
        (x, offer, owed)
    }

    /// The peer's reply to this exchange's last message.
    pub fn on_reply(&mut self, reply: Message) -> Result<Step, SyncError> {
        let id = self.id;
        let sketched = std::mem::take(&mut self.sketched);
        let (picks, answers) = match reply {
            Message::ChunkAnswer { id: i, answers } if i == id => (None, answers),
            Message::ChunkPick {
                id: i,
                leaves,
                answers,
                holes,
            } if i == id && sketched => (Some((leaves, holes)), answers),
            Message::SketchAsk {
                id: i,
                stream,
                from,
                to,
            } if i == id && self.root_open && self.rounds <= MAX_SKETCH_ASKS => {
                self.sketched = sketched; // (a pick may still come)
                self.rounds += 1;
                return self.sketch_part(stream, from, to);
            }
            Message::Ack(AckKind::Update(i)) if i == id => {
                let done = Offered::Acked(self.rounds, self.nodes, self.leaves);
                return Ok(Step::Done(done, None));
            }
            Message::Nack {
                of: AckKind::Update(i),
                reason,
            } if i == id => {
                tracing::debug!(id, ?reason, "the peer refused the rebuilt file");
                return Ok(Step::Done(Offered::Declined, None));
            }
            Message::ChunkDecline(i) if i == id => return Ok(Step::Done(Offered::Declined, None)),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected a chunk answer for update {id}, got {}",
                    other.kind()
                )))
            }
        };
        self.root_open = false;
        let answers: Option<Vec<Answer>> = answers.into_iter().map(answer_of).collect();
        let answers =
            answers.ok_or_else(|| SyncError::Protocol("a chunk answer out of range".into()))?;
        self.round(picks, &answers)
    }

    /// A `SketchAsk` of `stream`'s cells or symbols `from..to`: leaf cells from the
    /// tree; in-place symbols from those computed, or a pass over the file first (of
    /// the full stream, half as many again, for the next ask).
    fn sketch_part(&mut self, stream: u8, from: u32, to: u32) -> Result<Step, SyncError> {
        let stream = match stream {
            SKETCH_LEAVES => {
                let cells = sketch::encode(self.tree, to as usize);
                let bytes = cells[from as usize * sketch::CELL..].to_vec();
                let msg = Message::SketchPart { id: self.id, bytes };
                return Ok(Step::Round(msg, REPLY_HEAD + 256));
            }
            SKETCH_SAMPLE => Stream::Sample,
            _ => Stream::Full,
        };
        if let Some((s, computed)) = &self.symbols {
            if *s == stream && computed.len() >= to as usize {
                let bytes = inplace::encode(&computed[from as usize..to as usize]);
                let msg = Message::SketchPart { id: self.id, bytes };
                return Ok(Step::Round(msg, REPLY_HEAD));
            }
        }
        let Ok(file) = self.file.try_clone() else {
            let decline = Message::ChunkDecline(self.id);
            return Ok(Step::Done(Offered::Declined, Some(decline)));
        };
        let upto = match stream {
            Stream::Full => (to + to / 2).clamp(to, inplace::MAX_SYMBOLS),
            Stream::Sample => to,
        };
        let (size, asked) = (self.size, (from, to));
        Ok(Step::Pass(Pass {
            file,
            size,
            stream,
            upto,
            asked,
        }))
    }

    /// The symbols a [`Pass`] computed (or the error reading the file), answering its
    /// ask.
    pub fn passed(
        &mut self,
        pass: (Stream, (u32, u32)),
        computed: std::io::Result<Vec<Symbol>>,
    ) -> Result<Step, SyncError> {
        let (stream, (from, to)) = pass;
        match computed {
            Ok(c) => {
                self.symbols = Some((stream, c));
                let stream = match stream {
                    Stream::Sample => SKETCH_SAMPLE,
                    Stream::Full => SKETCH_PIECES,
                };
                self.sketch_part(stream, from, to)
            }
            Err(e) => {
                tracing::debug!(id = self.id, "in-place symbols cannot be read: {e}");
                let decline = Message::ChunkDecline(self.id);
                Ok(Step::Done(Offered::Declined, Some(decline)))
            }
        }
    }

    /// The next round after `answers` (to the leaves `picks`, after a sketch), or a
    /// decline if it would carry too much.
    fn round(
        &mut self,
        picks: Option<(Vec<u32>, Vec<u8>)>,
        answers: &[Answer],
    ) -> Result<Step, SyncError> {
        let round = match picks {
            Some((p, holes)) => matching::decode_holes(&holes)
                .and_then(|holes| self.offers.pick(&p, answers, holes)),
            None => self.offers.next(answers),
        };
        let round = round.map_err(|e| SyncError::Protocol(e.to_string()))?;
        let want: u64 = (round.send.iter().map(|(_, l)| l))
            .chain(round.matched.iter().map(|m| &m.1))
            .sum();
        let blocks_n = round
            .describe
            .iter()
            .map(|(_, l)| l.div_ceil(BLOCK))
            .sum::<u64>()
            + round
                .fine
                .iter()
                .map(|(_, l)| l.div_ceil(FINE))
                .sum::<u64>();
        let offered = round.children.iter().map(Vec::len).sum::<usize>() + blocks_n as usize;
        self.rounds += 1;
        self.nodes += offered;
        self.leaves += want;
        let decline = Step::Done(Offered::Declined, Some(Message::ChunkDecline(self.id)));
        if want > ROUND_DATA_MAX || offered > crate::wire::MAX_CHUNK_NODES {
            return Ok(decline);
        }
        let read = |extents: &[(u64, u64)]| read_extents(self.file, extents);
        let (mut blocks, mut matched) = (Vec::new(), Vec::new());
        let data = read(&round.send).and_then(|mut data| {
            for &e in &round.describe {
                let leaf = read(&[e])?;
                blocks.extend(block_hashes(&leaf).into_iter().flat_map(hash48_bytes));
            }
            for &e in &round.fine {
                let block = read(&[e])?;
                blocks.extend(fine_hashes(&block).into_iter().flat_map(hash48_bytes));
            }
            for (at, len, hole) in &round.matched {
                let (ops, literal) = matching::encode(&read(&[(*at, *len)])?, hole);
                matched.extend(ops);
                data.extend(literal);
            }
            Ok(data)
        });
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                // cut or changed since it was read: it goes as an ordinary update
                tracing::debug!(id = self.id, "a chunk round cannot be read: {e}");
                return Ok(decline);
            }
        };
        let children = (round.children.into_iter())
            .map(|c| c.into_iter().map(to_wire).collect())
            .collect();
        let msg = Message::ChunkRound {
            id: self.id,
            children,
            data,
            blocks,
            matched,
        };
        Ok(Step::Round(msg, offered + REPLY_HEAD))
    }
}

/// The bytes at `extents` (offset, len) of `file`, concatenated.
fn read_extents(file: &File, extents: &[(u64, u64)]) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(extents.iter().map(|e| e.1 as usize).sum());
    for &(off, len) in extents {
        let at = data.len();
        data.resize(at + len as usize, 0);
        file.read_exact_at(&mut data[at..], off)?;
    }
    Ok(data)
}

/// True when a batch of prepared exchanges is as big as [`run`] keeps under way.
pub fn batch_full(batch: &[Ready]) -> bool {
    let bytes: u64 = batch.iter().map(|r| r.update.size).sum();
    batch.len() >= MAX_EXCHANGES || bytes >= WINDOW_BYTES
}

/// Messages written and not yet answered, in order: (update id, reply bytes owed,
/// bytes written).
#[derive(Default)]
struct Owed {
    queue: VecDeque<(u64, usize, u64)>,
    bytes: usize,
}

impl Owed {
    fn push(&mut self, id: u64, reply: usize, written: u64) {
        self.queue.push_back((id, reply, written));
        self.bytes += reply;
    }

    fn pop(&mut self) -> Option<u64> {
        let (id, reply, _) = self.queue.pop_front()?;
        self.bytes -= reply;
        Some(id)
    }

    /// True if one more message owing `reply` bytes may be written now.
    fn room(&self, reply: usize) -> bool {
        self.queue.is_empty() || self.bytes + reply <= OWED_MAX
    }

    /// How long the next reply may take: the bytes written before it arrive at
    /// [`MIN_RATE`], and the files under way may each be worked on first.
    fn limit(&self, sizes: u64) -> Duration {
        let written: u64 = self.queue.iter().map(|q| q.2).sum();
        REPLY_TIMEOUT + Duration::from_secs(written / MIN_RATE) + work(sizes)
    }
}

/// Runs the exchanges of `batch` (all prepared for one, none `described`) together on
/// `fs`, starting one while fewer than [`MAX_EXCHANGES`] are under way and their files
/// come to at most [`WINDOW_BYTES`]. `done` books each as it ends (so a session that
/// ends midway keeps what was acked), with the batch index, the outcome and about the
/// bytes it sent.
pub async fn run<S: Duplex>(
    fs: &mut FramedStream<S>,
    stats: &Stats,
    batch: &[Ready],
    mut done: impl FnMut(usize, Offered, u64) -> Result<(), SyncError>,
) -> Result<(), SyncError> {
    let mut live: HashMap<u64, (usize, Exchange<'_>, u64)> = HashMap::new();
    let mut outbox: VecDeque<(u64, Message, usize)> = VecDeque::new();
    let (mut owed, mut next) = (Owed::default(), 0);
    loop {
        let sizes: u64 = live.values().map(|(_, x, _)| x.size).sum();
        if let Some(r) = batch.get(next).filter(|r| {
            live.is_empty() || (live.len() < MAX_EXCHANGES && sizes + r.update.size <= WINDOW_BYTES)
        }) {
            let (x, offer, reply) = Exchange::start(r);
            outbox.push_back((x.id, offer, reply));
            live.insert(x.id, (next, x, 0));
            next += 1;
            continue;
        }
        while let Some((id, msg, reply)) = outbox.pop_front() {
            if !owed.room(reply) {
                outbox.push_front((id, msg, reply));
                break;
            }
            let written = wire_len(&msg);
            fs.queue(msg)?;
            if let Some(l) = live.get_mut(&id) {
                l.2 += written;
            }
            owed.push(id, reply, written);
        }
        let Some(&(id, _, _)) = owed.queue.front() else {
            flush(fs, sizes).await?; // (a decline queued last goes too)
            return Ok(()); // nothing under way: every file of the batch is done
        };
        // a reply already here is answered first: the rounds of exchanges under way
        // then share one block (and packet) instead of one each
        if !fs.input_pending() {
            flush(fs, sizes).await?;
        }
        let reply = recv_reply(stats, fs, owed.limit(sizes)).await?;
        owed.pop();
        let (at, x, wire) = live.get_mut(&id).expect("an exchange owed a reply is live");
        let mut step = x.on_reply(reply)?;
        if let Step::Pass(p) = step {
            let asked = (p.stream, p.asked);
            let computed = tokio::task::spawn_blocking(move || {
                inplace::symbols(&p.file, p.size, p.stream, 0, p.upto)
            });
            let computed = computed
                .await
                .map_err(|e| SyncError::Protocol(format!("in-place symbols task: {e}")))?;
            step = x.passed(asked, computed)?;
        }
        match step {
            Step::Round(msg, reply) => outbox.push_back((id, msg, reply)),
            Step::Pass(_) => unreachable!("a pass's symbols answer its ask"),
            Step::Done(outcome, decline) => {
                if let Some(m) = decline {
                    fs.queue(m)?;
                }
                let (at, wire) = (*at, *wire);
                live.remove(&id);
                done(at, outcome, wire)?;
            }
        }
    }
}

/// Time the receiver may take over files of `sizes` bytes in all before it reads or
/// answers again: reading its own versions (up to twice the size each) and applying
/// the rebuilt ones, at [`MIN_APPLY_RATE`].
fn work(sizes: u64) -> Duration {
    Duration::from_secs(3 * sizes / MIN_APPLY_RATE)
}

/// Writes what is queued, or fails if the peer stops reading for
/// [`super::WRITE_STALL`] beyond its `work` on the exchanges under way (files of
/// `sizes` bytes).
async fn flush<S: Duplex>(fs: &mut FramedStream<S>, sizes: u64) -> Result<(), SyncError> {
    let progress = fs.progress();
    let limit = super::WRITE_STALL + work(sizes);
    unless_stalled(|| progress.last(), limit, async { Ok(fs.flush().await?) }).await
}

/// About the bytes `msg` puts on the link, before compression (for reply deadlines).
fn wire_len(msg: &Message) -> u64 {
    const NODE: usize = 11; // a ChunkNode's bytes
    let n = match msg {
        Message::ChunkOffer {
            top, from, sketch, ..
        } => {
            let named: usize = from.iter().map(|p| 8 + p.as_bytes().len()).sum();
            256 + NODE * top.len() + named + sketch.len()
        }
        Message::ChunkRound {
            children,
            data,
            blocks,
            ..
        } => 32 + data.len() + blocks.len() + NODE * children.iter().map(Vec::len).sum::<usize>(),
        Message::SketchPart { bytes, .. } => 32 + bytes.len(),
        _ => 32,
    };
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelPath;
    use crate::wire::{FileUpdate, WireTime};

    /// `read` as ready for an exchange, under update id 7.
    fn ready(read: super::super::chunked::Read) -> Ready {
        let update = FileUpdate {
            id: 7,
            file: 1,
            path: RelPath::from_bytes(b"f").unwrap(),
            base: None,
            size: read.tree.len(),
            mode: 0o644,
            mtime: WireTime { secs: 0, nanos: 0 },
            ranges: vec![],
            hash: read.hash,
            vv: vec![],
        };
        let described = None;
        Ready {
            version: 1,
            update,
            read,
            described,
            from: vec![],
            patch: false,
        }
    }

    /// The answers that expand every parent and ask for every leaf of `nodes`.
    fn all_of(nodes: &[ChunkNode]) -> Vec<u8> {
        nodes.iter().map(|n| if n.leaf { 2 } else { 1 }).collect()
    }

    #[test]
    fn a_file_cut_since_it_was_read_is_declined_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &bytes).unwrap();
        let root = File::open(dir.path()).unwrap();
        let path = RelPath::from_bytes(b"f").unwrap();
        let read = super::super::chunked::read_for_offer(&root, &path, 1..=1 << 20);
        let r = ready(read.unwrap().unwrap());
        let (mut x, offer, _) = Exchange::start(&r);
        let Message::ChunkOffer { top, .. } = offer else {
            panic!("an offer first")
        };
        let mut nodes = top;
        loop {
            let answers = all_of(&nodes);
            if nodes.iter().any(|n| n.leaf) {
                // the leaves asked for can no longer be read
                std::fs::write(dir.path().join("f"), b"cut").unwrap();
                let step = x.on_reply(Message::ChunkAnswer { id: 7, answers }).unwrap();
                let Step::Done(Offered::Declined, Some(m)) = step else {
                    panic!("declined")
                };
                assert_eq!(m, Message::ChunkDecline(7));
                return;
            }
            let step = x.on_reply(Message::ChunkAnswer { id: 7, answers }).unwrap();
            let Step::Round(Message::ChunkRound { children, .. }, _) = step else {
                panic!("a round")
            };
            nodes = children.into_iter().flatten().collect();
        }
    }

    #[test]
    fn a_reply_for_another_exchange_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![5u8; 100_000]).unwrap();
        let root = File::open(dir.path()).unwrap();
        let path = RelPath::from_bytes(b"f").unwrap();
        let read = super::super::chunked::read_for_offer(&root, &path, 1..=1 << 20);
        let r = ready(read.unwrap().unwrap());
        let (mut x, _, _) = Exchange::start(&r);
        let stray = Message::ChunkAnswer {
            id: 8,
            answers: vec![],
        };
        assert!(matches!(x.on_reply(stray), Err(SyncError::Protocol(_))));
        let acked = x.on_reply(Message::Ack(AckKind::Update(7))).unwrap();
        assert!(matches!(acked, Step::Done(Offered::Acked(1, _, 0), None)));
    }

    #[test]
    fn a_pick_answers_only_an_offer_with_a_sketch_and_only_first() {
        let dir = tempfile::tempdir().unwrap();
        let big = crate::chunks::tests::text(2 << 20, 4);
        std::fs::write(dir.path().join("small"), vec![5u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("big"), big).unwrap();
        let root = File::open(dir.path()).unwrap();
        let start = |name: &str| {
            let path = RelPath::from_bytes(name.as_bytes()).unwrap();
            let read = super::super::chunked::read_for_offer(&root, &path, 1..=4 << 20);
            ready(read.unwrap().unwrap())
        };
        let pick = || Message::ChunkPick {
            id: 7,
            leaves: vec![],
            answers: vec![],
            holes: vec![],
        };
        let small = start("small");
        let (mut x, offer, _) = Exchange::start(&small);
        assert!(matches!(offer, Message::ChunkOffer { ref sketch, .. } if sketch.is_empty()));
        assert!(matches!(x.on_reply(pick()), Err(SyncError::Protocol(_))));
        let big = start("big");
        let (mut x, offer, _) = Exchange::start(&big);
        assert!(matches!(offer, Message::ChunkOffer { ref sketch, .. } if !sketch.is_empty()));
        assert!(matches!(x.on_reply(pick()), Ok(Step::Round(..))));
        assert!(
            matches!(x.on_reply(pick()), Err(SyncError::Protocol(_))),
            "a second"
        );
        // in-place asks while the root is open: a pass, then symbols from it; none
        // after the root is answered, nor for an offer without a sketch
        let ask = |stream, from, to| Message::SketchAsk {
            id: 7,
            stream,
            from,
            to,
        };
        let (mut x, _, _) = Exchange::start(&big);
        let more = x.on_reply(ask(SKETCH_LEAVES, 16, 48));
        let Ok(Step::Round(Message::SketchPart { bytes, .. }, _)) = more else {
            panic!("the leaf cells asked for");
        };
        assert_eq!(bytes.len(), 32 * sketch::CELL);
        let Ok(Step::Pass(p)) = x.on_reply(ask(SKETCH_SAMPLE, 0, 96)) else {
            panic!("a pass over the file");
        };
        let computed = inplace::symbols(&p.file, p.size, p.stream, 0, p.upto);
        let Ok(Step::Round(Message::SketchPart { bytes, .. }, _)) =
            x.passed((p.stream, p.asked), computed)
        else {
            panic!("the symbols asked for");
        };
        assert_eq!(bytes.len(), 96 * inplace::SYMBOL);
        let root = Message::ChunkAnswer {
            id: 7,
            answers: vec![1],
        };
        assert!(matches!(x.on_reply(root), Ok(Step::Round(..))));
        assert!(matches!(
            x.on_reply(ask(SKETCH_PIECES, 0, 300)),
            Err(SyncError::Protocol(_))
        ));
        let (mut x, _, _) = Exchange::start(&small);
        assert!(matches!(
            x.on_reply(ask(SKETCH_SAMPLE, 0, 96)),
            Err(SyncError::Protocol(_))
        ));
    }
}
