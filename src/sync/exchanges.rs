//! The sender's side of chunk exchanges ([`super::chunked`]), several at once on one
//! stream: each file's exchange is a small state machine ([`Exchange`]) fed the
//! peer's replies, and [`run`] interleaves their rounds. The receiver answers every
//! message in the order it came, so replies are matched in order; a batch of files
//! costs about the round trips of its deepest exchange, not their sum.

use super::chunked::{answer_of, to_wire, Offered, Ready, MAX_EXCHANGES};
use super::link::Duplex;
use super::sender::recv_reply;
use super::{unless_stalled, Stats, SyncError, MIN_APPLY_RATE, MIN_RATE, REPLY_TIMEOUT};
use crate::chunks::{block_hashes, fine_hashes, Answer, Offers, BLOCK, FINE};
use crate::wire::{hash48_bytes, AckKind, ChunkNode, FramedStream, Message};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Leaf bytes one round may carry; more and the sender declines (it is mostly new).
const ROUND_DATA_MAX: u64 = 8 << 20;
/// File bytes under exchange at once, at most (the receiver holds each rebuilt file in
/// memory, charged to the peer's budget); a larger file (up to
/// [`CHUNK_MAX`](super::chunked::CHUNK_MAX)) goes
/// alone.
pub const WINDOW_BYTES: u64 = 256 << 20;
/// Reply bytes the sender may be owed before it stops writing and reads: the replies
/// wait in the link's buffers meanwhile, so this stays well under them (a yamux
/// stream's window is 256 KiB), or both sides could block writing.
const OWED_MAX: usize = 64 << 10;
/// A reply's bytes besides its answers (ids, framing), counted toward [`OWED_MAX`].
const REPLY_HEAD: usize = 32;

/// One file's exchange, from the sender's side.
pub struct Exchange<'a> {
    id: u64,
    size: u64,
    offers: Offers<'a>,
    file: &'a File,
    rounds: usize,
    nodes: usize,
    leaves: u64,
}

/// What an exchange does after a reply.
pub enum Step {
    /// Send this round; its answer (about this many bytes) comes next.
    Round(Message, usize),
    /// Over: the file was rebuilt and acked, or it goes whole. A message to send
    /// (the sender's decline) expects no reply.
    Done(Offered, Option<Message>),
}

impl<'a> Exchange<'a> {
    /// Starts the exchange of `r`: its `ChunkOffer`, and the bytes of its answer.
    pub fn start(r: &'a Ready) -> (Exchange<'a>, Message, usize) {
        let mut offers = Offers::new(&r.read.tree);
        let top: Vec<ChunkNode> = offers.top().into_iter().map(to_wire).collect();
        let owed = top.len() + REPLY_HEAD;
        let x = Exchange {
            id: r.update.id,
            size: r.update.size,
            offers,
            file: &r.read.file,
            rounds: 1,
            nodes: top.len(),
            leaves: 0,
        };
        let offer = Message::ChunkOffer {
            update: r.update.clone(),
            top,
        };
        (x, offer, owed)
    }

    /// The peer's reply to this exchange's last message.
    pub fn on_reply(&mut self, reply: Message) -> Result<Step, SyncError> {
        let id = self.id;
        let answers = match reply {
            Message::ChunkAnswer { id: i, answers } if i == id => answers,
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
        let answers: Option<Vec<Answer>> = answers.into_iter().map(answer_of).collect();
        let answers =
            answers.ok_or_else(|| SyncError::Protocol("a chunk answer out of range".into()))?;
        self.round(&answers)
    }

    /// The next round after `answers`, or a decline if it would carry too much.
    fn round(&mut self, answers: &[Answer]) -> Result<Step, SyncError> {
        let round = (self.offers.next(answers)).map_err(|e| SyncError::Protocol(e.to_string()))?;
        let want: u64 = round.send.iter().map(|(_, l)| l).sum();
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
        if want > ROUND_DATA_MAX || offered > crate::wire::MAX_CHUNK_NODES {
            let decline = Message::ChunkDecline(self.id);
            return Ok(Step::Done(Offered::Declined, Some(decline)));
        }
        let data = read_extents(self.file, &round.send)?;
        let mut blocks = Vec::new();
        for &(off, len) in &round.describe {
            let leaf = read_extents(self.file, &[(off, len)])?;
            blocks.extend(block_hashes(&leaf).into_iter().flat_map(hash48_bytes));
        }
        for &(off, len) in &round.fine {
            let block = read_extents(self.file, &[(off, len)])?;
            blocks.extend(fine_hashes(&block).into_iter().flat_map(hash48_bytes));
        }
        let children = (round.children.into_iter())
            .map(|c| c.into_iter().map(to_wire).collect())
            .collect();
        let msg = Message::ChunkRound {
            id: self.id,
            children,
            data,
            blocks,
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
    /// [`MIN_RATE`], and the files under way may each be applied first.
    fn limit(&self, sizes: u64) -> Duration {
        let written: u64 = self.queue.iter().map(|q| q.2).sum();
        REPLY_TIMEOUT + Duration::from_secs(written / MIN_RATE + sizes / MIN_APPLY_RATE)
    }
}

/// Runs the exchanges of `batch` (all prepared for one, none `described`) together on
/// `fs`, starting one while fewer than [`MAX_EXCHANGES`] are under way and their files
/// come to at most [`WINDOW_BYTES`]. `done` books each as it ends (so a session that
/// ends midway keeps what was acked), with the batch index, the outcome and about the
/// bytes it sent.
pub async fn run(
    fs: &mut FramedStream<Box<dyn Duplex>>,
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
        flush(fs).await?; // (a decline queued last goes too)
        let Some(&(id, _, _)) = owed.queue.front() else {
            return Ok(()); // nothing under way: every file of the batch is done
        };
        let reply = recv_reply(stats, fs, owed.limit(sizes)).await?;
        owed.pop();
        let (at, x, wire) = live.get_mut(&id).expect("an exchange owed a reply is live");
        match x.on_reply(reply)? {
            Step::Round(msg, reply) => outbox.push_back((id, msg, reply)),
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

/// Writes what is queued, or fails if the peer stops reading for [`super::WRITE_STALL`].
async fn flush(fs: &mut FramedStream<Box<dyn Duplex>>) -> Result<(), SyncError> {
    let progress = fs.progress();
    unless_stalled(|| progress.last(), super::WRITE_STALL, async {
        Ok(fs.flush().await?)
    })
    .await
}

/// About the bytes `msg` puts on the link, before compression (for reply deadlines).
fn wire_len(msg: &Message) -> u64 {
    const NODE: usize = 11; // a ChunkNode's bytes
    let n = match msg {
        Message::ChunkOffer { top, .. } => 256 + NODE * top.len(),
        Message::ChunkRound {
            children,
            data,
            blocks,
            ..
        } => 32 + data.len() + blocks.len() + NODE * children.iter().map(Vec::len).sum::<usize>(),
        _ => 32,
    };
    n as u64
}
