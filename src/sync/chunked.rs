//! The chunk exchange on a sync stream (protocol version 6), for a file the peer may
//! hold another version of with nothing to delta against (first pairing, a file edited
//! on both sides while apart, a refused delta): the sender offers the file's chunk tree
//! round by round ([`offer`]); the receiver answers from its own version's tree and
//! rebuilds the new content from its own bytes plus the leaves it asked for
//! ([`Rebuilds`]), then applies it through the checker as an ordinary whole-file
//! update (verdict, archive or conflict copy, stage, verify, index). Either side may
//! decline at any round; the file then goes as an ordinary update. See
//! [`crate::chunks`].

use super::budget::PeerBudget;
use super::joined::Joined;
use super::warm::Warm;
use super::SyncError;
use crate::beneath::open_beneath;
use crate::chunks::{rebuild, sketch, Answer, Needs, Offer, Round, Tree};
use crate::path::RelPath;
use crate::wire::{
    hash48_from, ChunkNode, Encoding, FileUpdate, IndexItem, Message, RangeData, BLOCK_HASH,
    MAX_RANGE_LEN,
};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

mod leaves;
mod more;

/// Files smaller than this go whole (the rounds would cost more than they save).
pub const CHUNK_MIN: u64 = 64 << 10;
/// Files larger than this go whole: the receiver rebuilds the content in memory
/// (charged to the peer's budget), as one whole-file update (which spans at most this).
pub const CHUNK_MAX: u64 = crate::wire::MAX_UPDATE_SPAN;
/// Rounds after which the receiver declines (honest trees are a few levels deep).
const MAX_ROUNDS: usize = 48;
/// The receiver declines once a round offers at least this many nodes while none found
/// so far was ours: the versions share nothing. (Scattered changes can leave no node
/// found for a few levels, each level about 4 times wider than the last: a 60 MB
/// database with 500 rows changed has every node changed in its top three levels, of
/// 6, 24 and 98 nodes.)
const NOTHING_FOUND_NODES: usize = 256;

/// An offered node on the wire (exchanged files are at most [`CHUNK_MAX`] bytes, so
/// every length fits; a hash carries its low 48 bits, all a tree's hashes have).
pub(crate) fn to_wire(o: Offer) -> ChunkNode {
    ChunkNode {
        hash: o.hash,
        len: u32::try_from(o.len).unwrap_or(u32::MAX),
        leaf: o.leaf,
    }
}

fn from_wire(n: &ChunkNode) -> Offer {
    Offer {
        hash: n.hash,
        len: u64::from(n.len),
        leaf: n.leaf,
    }
}

fn answer_byte(a: Answer) -> u8 {
    match a {
        Answer::Have => 0,
        Answer::Expand => 1,
        Answer::Send => 2,
        Answer::Describe => 3,
        Answer::Deeper => 4,
        Answer::Match => 5,
    }
}

/// The answer a byte on the wire stands for (none: not an answer).
pub(super) fn answer_of(b: u8) -> Option<Answer> {
    match b {
        0 => Some(Answer::Have),
        1 => Some(Answer::Expand),
        2 => Some(Answer::Send),
        3 => Some(Answer::Describe),
        4 => Some(Answer::Deeper),
        5 => Some(Answer::Match),
        _ => None,
    }
}

/// A regular file with a size in `sizes`, opened beneath `root` (not following links).
pub(super) fn open_file(
    root: &impl AsRawFd,
    path: &RelPath,
    sizes: std::ops::RangeInclusive<u64>,
) -> Option<(File, libc::stat)> {
    let fd = open_beneath(root, path, libc::O_RDONLY | libc::O_NOFOLLOW, 0).ok()?;
    let st = crate::sys::fstat(&fd).ok()?;
    let size = st.st_size as u64;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    (regular && sizes.contains(&size)).then(|| (File::from(fd), st))
}

/// Sizes worth a chunk exchange.
pub(super) const EXCHANGED: std::ops::RangeInclusive<u64> = CHUNK_MIN..=CHUNK_MAX;
/// Sizes described by their leaves instead (see [`super::leaf_delta`]).
pub const DESCRIBED: std::ops::RangeInclusive<u64> = 1..=CHUNK_MIN - 1;
/// Sizes of new files offered by chunk exchange only as a copy of a file our index
/// holds (the peer then makes it from its own copy: an offer and an ack instead of
/// the file; under 4 KiB the file costs about that).
const COPIED: std::ops::RangeInclusive<u64> = 4 << 10..=CHUNK_MIN - 1;

/// Reads a file once for its chunk tree and BLAKE3.
fn tree_and_hash(file: &File) -> std::io::Result<(Tree, [u8; 32])> {
    struct Hashing<'a>(&'a File, blake3::Hasher);
    impl std::io::Read for Hashing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = std::io::Read::read(&mut self.0, buf)?;
            self.1.update(&buf[..n]);
            Ok(n)
        }
    }
    let mut r = Hashing(file, blake3::Hasher::new());
    let tree = Tree::from_reader(&mut r)?;
    Ok((tree, *r.1.finalize().as_bytes()))
}

/// The sender's side: what it read of the file, for the offer.
pub struct Read {
    /// The open file (leaves are read from it).
    pub file: File,
    /// Its chunk tree.
    pub tree: Tree,
    /// BLAKE3 of the content read.
    pub hash: [u8; 32],
    /// Its stat when opened.
    pub st: libc::stat,
}

/// Reads `path` for an offer (or a leaf delta: `sizes`); `None` if it is not a regular
/// file of such a size.
pub fn read_for_offer(
    root: &impl AsRawFd,
    path: &RelPath,
    sizes: std::ops::RangeInclusive<u64>,
) -> std::io::Result<Option<Read>> {
    let Some((file, st)) = open_file(root, path, sizes) else {
        return Ok(None);
    };
    let (tree, hash) = tree_and_hash(&file)?;
    if tree.len() != st.st_size as u64 {
        return Ok(None); // changed while read: the ordinary update sorts it out
    }
    Ok(Some(Read {
        file,
        tree,
        hash,
        st,
    }))
}

/// How an offer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// The peer rebuilt and applied the file (acked): rounds, nodes offered, leaf bytes.
    Acked(usize, usize, u64),
    /// Declined (by either side) or refused: the file goes as an ordinary update.
    Declined,
}

/// The block hashes of a `ChunkRound`.
fn block_hashes_of(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(BLOCK_HASH).map(hash48_from).collect()
}

/// The sizes of our own version at the path worth building on for an offer of `size`
/// bytes: any exchanged size up to twice it. A far larger one costs more to read than
/// it can save; a smaller one (a log before it grew) still saves its bytes.
pub(super) fn own(size: u64) -> std::ops::RangeInclusive<u64> {
    CHUNK_MIN..=size.saturating_mul(2).min(CHUNK_MAX)
}

/// The sizes of a file similar to one of `size` bytes: half to twice it, exchanged.
pub(super) fn near(size: u64) -> std::ops::RangeInclusive<u64> {
    (size / 2).max(CHUNK_MIN)..=size.saturating_mul(2).min(CHUNK_MAX)
}

/// The files `paths` joined end to end, if each is a regular file and together they
/// are of a size we would stand on our own version at for `size` bytes ([`own`]).
fn named(root: &impl AsRawFd, paths: &[RelPath], size: u64) -> Option<Joined> {
    let files: Option<Vec<(File, u64)>> = (paths.iter())
        .map(|p| open_file(root, p, 1..=CHUNK_MAX).map(|(f, st)| (f, st.st_size as u64)))
        .collect();
    let joined = Joined::new(files?);
    own(size).contains(&joined.len()).then_some(joined)
}

/// Another file that stands for our version of a new one in a chunk exchange.
pub enum Basis {
    /// A file with the offered content (a copy): every top node is found.
    Copy(RelPath),
    /// The files the sender named as holding much of the content (its chunk index),
    /// joined end to end: together of a size the receiver would stand on its own
    /// version at ([`own`]).
    Named(Vec<RelPath>),
    /// A file of about the size, in the same directory with the same extension (an
    /// edited copy, say).
    Similar(RelPath),
}

/// Exchanges one stream may have under way at once; a further offer is declined (the
/// sender keeps to this, [`super::exchanges`]).
pub const MAX_EXCHANGES: usize = 16;

/// The receiver's side: the exchanges under way on one stream, by update id (at most
/// [`MAX_EXCHANGES`]; each answered in the order its messages come).
pub struct Rebuilds {
    current: HashMap<u64, Rebuild>,
    budget: Arc<PeerBudget>,
    warm: Arc<Warm>,
    /// The `Index` entries we wanted and described, by path, for their `LeafPatch`
    /// (at most [`leaves::MAX_EXPECTED`]).
    expected: HashMap<RelPath, IndexItem>,
}

struct Rebuild {
    update: FileUpdate,
    needs: Needs,
    old: Joined,
    rounds: usize,
    /// Memory taken from the peer's budget for the rebuilt content.
    charged: usize,
    /// More of a sketch asked for ([`more`]): the offer's leaf sketch did not
    /// decode.
    asking: Option<more::Asking>,
}

/// The receiver's first answers: to the top level, or to the leaves it picked (with
/// the holes of the gaps it matched, on the wire).
type First = (Option<(Vec<u32>, Vec<u8>)>, Vec<Answer>);

/// What reading one candidate for our version of an offered file came to.
enum Stand {
    /// It stands for our version: the exchange, its first answers (to the leaves
    /// picked, when the sketch decoded) and its charge; and our version's tree when
    /// the sketch did not decode (to ask for more of it).
    On(Needs, First, usize, Option<Tree>),
    /// It shares nothing with the offer (or could not be read): try the next.
    Next,
    /// Only the root was offered and the sketch did not decode: whether it shares
    /// anything shows a round later. Taken if no other candidate stands.
    Maybe(Needs, First, usize),
    /// The offer is declined.
    Decline,
}

/// What the receiver does next.
pub enum Next {
    /// Send this (an answer, or a decline).
    Reply(Message),
    /// The content is rebuilt: apply this whole-file update, then ack or nack it, then
    /// [`Rebuilds::release`] the bytes of the peer's budget it still holds.
    Apply(FileUpdate, usize),
}

impl Rebuilds {
    /// No exchange yet; rebuilt content is charged to `budget`.
    pub fn new(budget: Arc<PeerBudget>) -> Rebuilds {
        let warm = Arc::new(Warm::new(super::warm::WARM_BYTES, budget.clone()));
        Rebuilds {
            current: HashMap::new(),
            budget,
            warm,
            expected: HashMap::new(),
        }
    }

    /// Our versions' trees built ahead of the offers ([`Warm::start`] them when the
    /// index says a file will come).
    pub fn warm(&self) -> Arc<Warm> {
        self.warm.clone()
    }

    /// Moves the exchanges under way out (to a blocking task), leaving none here.
    pub fn take(&mut self) -> Rebuilds {
        Rebuilds {
            current: std::mem::take(&mut self.current),
            budget: self.budget.clone(),
            warm: self.warm.clone(),
            expected: std::mem::take(&mut self.expected),
        }
    }

    /// Gives back what an applied rebuild held of the peer's budget.
    pub fn release(&self, charged: usize) {
        self.budget.give(charged);
    }

    fn end(&mut self, id: u64) {
        if let Some(r) = self.current.remove(&id) {
            self.budget.give(r.charged);
        }
    }

    /// A `ChunkOffer`: reads our version of the file (blocking: call off the runtime).
    /// With none at its path (a new file), `elsewhere` may name another file to stand
    /// for our version (the rebuilt content is verified as always): a copy of the
    /// offered content, or a similar file, declined at once if it shares no top node.
    pub fn offered(
        &mut self,
        root: &impl AsRawFd,
        update: FileUpdate,
        (top, sketch): (&[ChunkNode], &[u8]),
        elsewhere: impl FnOnce(&FileUpdate) -> Vec<Basis>,
    ) -> Next {
        let id = update.id;
        self.end(id); // (an id offered again starts anew)
        let decline = Next::Reply(Message::ChunkDecline(id));
        if self.current.len() >= MAX_EXCHANGES || update.size > CHUNK_MAX {
            return decline;
        }
        // our version at the path (its tree maybe built ahead); or, with none, each
        // other file that may stand for it in turn (one that shares no top node gives
        // way to the next)
        let one = |p: &RelPath, sizes| {
            open_file(root, p, sizes).map(|(f, st)| (Joined::new(vec![(f, st.st_size as u64)]), st))
        };
        let candidates: Vec<(Joined, bool, Option<Tree>)> =
            match one(&update.path, own(update.size)) {
                Some((old, st)) => vec![(old, false, self.warm.take(&update.path, &st))],
                None => (elsewhere(&update).into_iter())
                    .filter_map(|b| match b {
                        Basis::Copy(p) => one(&p, update.size..=update.size).map(|o| (o.0, false)),
                        Basis::Named(ps) => named(root, &ps, update.size).map(|o| (o, true)),
                        Basis::Similar(p) => one(&p, near(update.size)).map(|o| (o.0, true)),
                    })
                    .map(|(o, guessed)| (o, guessed, None))
                    .collect(),
            };
        let top: Vec<Offer> = top.iter().map(from_wire).collect();
        // (only the root with a sketch: if it does not decode, more of it may be asked for)
        let root_only = matches!(&top[..], [o] if !o.leaf && !sketch.is_empty());
        let mut maybe = None;
        for (old, guessed, tree) in candidates {
            match self.stand_on(&update, (&top, sketch), (&old, tree), guessed) {
                Stand::On(needs, first, charged, tree) => {
                    self.give_back(maybe);
                    let more = (tree.filter(|_| root_only))
                        .map(|tree| more::More::new(tree, sketch, &top));
                    return self.start(update, (needs, first, charged), old, more);
                }
                Stand::Maybe(needs, first, charged) if maybe.is_none() => {
                    maybe = Some(((needs, first, charged), old));
                }
                Stand::Maybe(.., charged) => self.budget.give(charged),
                Stand::Next => continue,
                Stand::Decline => {
                    self.give_back(maybe);
                    return decline;
                }
            }
        }
        match maybe {
            Some((stood, old)) => self.start(update, stood, old, None),
            None => decline,
        }
    }

    /// Puts the exchange of `update` under way, standing on `old`, and answers its
    /// first round; or, when only the root was offered and its sketch did not decode
    /// (`more`), asks for more of the sketch first.
    fn start(
        &mut self,
        update: FileUpdate,
        stood: (Needs, First, usize),
        old: Joined,
        more: Option<more::More>,
    ) -> Next {
        let (id, (needs, (picks, answers), charged)) = (update.id, stood);
        let mut rebuild = Rebuild {
            update,
            needs,
            old,
            rounds: 1,
            charged,
            asking: None,
        };
        if let Some(more) = more {
            if let Some((x, ask)) = more::Asking::start(&rebuild, &answers, more) {
                rebuild.asking = Some(x);
                self.current.insert(id, rebuild);
                return Next::Reply(ask);
            }
        }
        self.current.insert(id, rebuild);
        self.after_round(id, picks, answers)
    }

    /// Gives back the charge of a candidate kept in case no other stood.
    fn give_back(&self, maybe: Option<((Needs, First, usize), Joined)>) {
        if let Some(((_, _, charged), _)) = maybe {
            self.budget.give(charged);
        }
    }

    /// Reads `old` to stand for our version of `update` (unless its `tree` was built
    /// ahead) and answers the top level; a `guessed` file (named or similar, not a
    /// copy) that shares none of it gives way to the next.
    fn stand_on(
        &self,
        update: &FileUpdate,
        (top, sketch): (&[Offer], &[u8]),
        (old, tree): (&Joined, Option<Tree>),
        guessed: bool,
    ) -> Stand {
        // the rebuilt content, and our version's tree and index of its nodes (about a
        // quarter of its size)
        let charged = update.size as usize + super::sources::tree_memory(old.len());
        if !self.budget.take(charged) {
            return Stand::Decline;
        }
        let tree = match tree.map_or_else(|| Tree::from_reader(old.reader()), Ok) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    "{}: reading a version for a chunk exchange: {e}",
                    update.path
                );
                self.budget.give(charged);
                return Stand::Next;
            }
        };
        let mut needs = Needs::new(&tree, update.size);
        let tops: Vec<(u64, u64)> = top.iter().map(|o| (o.hash, o.len)).collect();
        let first = match sketch::decode(sketch, &tree, update.size, &tops) {
            Some(leaves) => needs.sketched(&leaves, old).map(|p| {
                let holes = crate::chunks::matching::encode_holes(&p.holes);
                (Some((p.leaves, holes)), p.answers)
            }),
            None => needs.first(top).map(|a| (None, a)),
        };
        let root_only = matches!(top, [o] if !o.leaf && !sketch.is_empty());
        match first {
            Ok(answers) if guessed && needs.matched() == 0 && root_only => {
                Stand::Maybe(needs, answers, charged)
            }
            Ok(_) if guessed && needs.matched() == 0 => {
                self.budget.give(charged);
                Stand::Next // a likely file, but other content
            }
            Ok(answers) => {
                let undecoded = answers.0.is_none() && !sketch.is_empty();
                Stand::On(needs, answers, charged, undecoded.then_some(tree))
            }
            Err(e) => {
                tracing::info!("{}: chunk offer refused: {e}", update.path);
                self.budget.give(charged);
                Stand::Decline
            }
        }
    }

    /// A `ChunkRound` of the exchange `id`: its children, data, block hashes and
    /// matched ops (blocking when it completes the file).
    pub fn round(
        &mut self,
        id: u64,
        (children, data): (Vec<Vec<ChunkNode>>, Vec<u8>),
        blocks: &[u8],
        matched: &[u8],
    ) -> Next {
        let Some(r) = self.current.get_mut(&id) else {
            return Next::Reply(Message::ChunkDecline(id));
        };
        let lens = r.needs.asked();
        let asked = lens.iter().sum::<u64>();
        if asked > data.len() as u64 {
            tracing::info!(
                "{}: chunk round with {} bytes of leaves, not as asked",
                r.update.path,
                data.len()
            );
            self.end(id);
            return Next::Reply(Message::ChunkDecline(id));
        }
        let mut bytes = Vec::with_capacity(lens.len());
        let mut at = 0;
        for l in lens {
            bytes.push(data[at..at + l as usize].to_vec());
            at += l as usize;
        }
        let children = children
            .iter()
            .map(|c| c.iter().map(from_wire).collect())
            .collect();
        r.rounds += 1;
        let round = Round {
            children,
            ..Round::default()
        };
        let literal = &data[asked as usize..];
        let hashes = block_hashes_of(blocks);
        match (r.needs).next(round, bytes, &hashes, (matched, literal), &r.old) {
            Ok(answers) if r.rounds <= MAX_ROUNDS => self.after_round(id, None, answers),
            res => {
                if let Err(e) = res {
                    tracing::info!("{}: chunk round refused: {e}", r.update.path);
                }
                self.end(id);
                Next::Reply(Message::ChunkDecline(id))
            }
        }
    }

    /// A `ChunkDecline` from the sender.
    pub fn declined(&mut self, id: u64) {
        self.end(id);
    }

    /// Answers the round just read (`picks`: the leaves answered, after a sketch), or
    /// ends the exchange.
    fn after_round(
        &mut self,
        id: u64,
        picks: Option<(Vec<u32>, Vec<u8>)>,
        answers: Vec<Answer>,
    ) -> Next {
        let r = self.current.get_mut(&id).expect("an exchange under way");
        if !r.needs.is_done() {
            let answers = answers.into_iter().map(answer_byte).collect();
            if let Some((leaves, holes)) = picks {
                return Next::Reply(Message::ChunkPick {
                    id,
                    leaves,
                    answers,
                    holes,
                });
            }
            if r.needs.matched() == 0 && answers.len() >= NOTHING_FOUND_NODES {
                tracing::debug!("{}: nothing in common for a chunk exchange", r.update.path);
                self.end(id);
                return Next::Reply(Message::ChunkDecline(id));
            }
            return Next::Reply(Message::ChunkAnswer { id, answers });
        }
        self.finish(id)
    }

    /// Rebuilds the content of the exchange `id`, which knows every piece now.
    fn finish(&mut self, id: u64) -> Next {
        let r = self.current.remove(&id).expect("an exchange under way");
        let charged = r.charged; // held until the file is applied
        match assemble(r) {
            Ok(u) => Next::Apply(u, charged),
            Err((path, e)) => {
                self.budget.give(charged);
                tracing::warn!("{path}: rebuilding from a chunk exchange: {e}");
                Next::Reply(Message::ChunkDecline(id))
            }
        }
    }
}

impl Drop for Rebuilds {
    fn drop(&mut self) {
        for (_, r) in self.current.drain() {
            self.budget.give(r.charged);
        }
    }
}

/// The rebuilt content as a whole-file update (raw ranges, written straight into them:
/// the content is held once, not also whole).
fn assemble(r: Rebuild) -> Result<FileUpdate, (RelPath, std::io::Error)> {
    let path = r.update.path.clone();
    let pieces = match r.asking {
        Some(x) => x.into_pieces(&r.old), // a decoded in-place sketch
        None => Ok(r.needs.into_pieces()),
    };
    let pieces = pieces.map_err(|e| (path.clone(), std::io::Error::other(e.to_string())))?;
    let mut ranges = Ranges(Vec::new());
    rebuild(&pieces, &r.old, &mut ranges).map_err(|e| (path, e))?;
    Ok(ranges.into_update(r.update))
}

/// Raw ranges from offset 0, each up to [`MAX_RANGE_LEN`], as bytes are written.
struct Ranges(Vec<RangeData>);

impl Ranges {
    /// `u`'s header with these ranges, from nothing.
    fn into_update(self, mut u: FileUpdate) -> FileUpdate {
        u.base = None;
        u.ranges = self.0;
        u
    }
}

impl std::io::Write for Ranges {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let last = self.0.last().filter(|r| r.data.len() < MAX_RANGE_LEN);
            if last.is_none() {
                let offset = (self.0.len() * MAX_RANGE_LEN) as u64; // the others are full
                let range = RangeData {
                    offset,
                    len: 0,
                    encoding: Encoding::Raw,
                    data: Vec::with_capacity(MAX_RANGE_LEN.min(1 << 20)),
                };
                self.0.push(range);
            }
            let r = self.0.last_mut().expect("a range to fill");
            let take = (MAX_RANGE_LEN - r.data.len()).min(buf.len());
            r.data.extend_from_slice(&buf[..take]);
            r.len = r.data.len() as u64;
            buf = &buf[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `update`'s header with `content` as its raw ranges, from nothing.
pub(super) fn whole_update(u: FileUpdate, content: &[u8]) -> FileUpdate {
    let mut ranges = Ranges(Vec::new());
    std::io::Write::write_all(&mut ranges, content).expect("writing to memory cannot fail");
    ranges.into_update(u)
}

/// How a chunk exchange or leaf delta of a file went ([`prepare`], then a batch of exchanges
/// ([`super::exchanges::run`]) or of leaf deltas, then [`finish`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Tried {
    /// The file does not qualify: it goes as an ordinary update.
    No,
    /// Every byte is pending and none of the old ones is known here, but the file is
    /// not offered (its size): it goes whole. A base would only be the index's hash,
    /// which for an adopted file is our own content's, not the peer's (refused, and
    /// sent again).
    Whole,
    /// Offered, and the peer rebuilt and acked it (the journal's ranges are cleared);
    /// the hash it now holds.
    Acked([u8; 32]),
    /// Offered, and declined or refused: it goes whole, as an ordinary update from
    /// nothing (every byte was pending anyway; the index's hash is not a base the peer
    /// is known to hold: an adopted file's is our own content's).
    Declined,
}

/// A file read and indexed for a chunk exchange or a leaf delta, ready to go.
pub struct Ready {
    /// The journal's version of it when read (what an ack clears).
    pub version: u64,
    /// The whole-file header (no ranges; its `file` and `path` are the file's).
    pub update: FileUpdate,
    /// The file as read.
    pub read: Read,
    /// The peer's leaves of its version, for a leaf delta (none: a chunk exchange).
    pub described: Option<Vec<u32>>,
    /// The update is the `Index` entry the peer wanted and described: its leaf delta
    /// goes as a `LeafPatch` (`leaf_delta::is_indexed`).
    pub patch: bool,
    /// Files the peer holds that hold much of this one's content, by our chunk index
    /// (named in the offer).
    pub from: Vec<RelPath>,
}

/// What [`prepare`] found.
pub enum Prepared {
    /// See [`Tried::No`].
    No,
    /// See [`Tried::Whole`].
    Whole,
    /// Read and indexed.
    Ready(Box<Ready>),
}

/// Reads and indexes `file` for a chunk exchange if it qualifies: every byte pending,
/// none of its old bytes known here (so an ordinary update would carry the whole
/// file), a size in [`CHUNK_MIN`]..=[`CHUNK_MAX`]; or, if the peer `described` its
/// version and the file is small, for a leaf delta.
pub async fn prepare(
    s: &super::sender::Sender,
    id: u64,
    (file, entry): (crate::journal::FileId, &crate::journal::FileEntry),
    described: Option<Vec<u32>>,
    copies: &mut super::local_copy::ByHash,
) -> Result<Prepared, SyncError> {
    let Some((_, st)) = super::fold::look(&*s.root, &entry.path) else {
        return Ok(Prepared::No);
    };
    let size = st.st_size as u64;
    // (the old bytes are kept: the file goes as a delta against them)
    let known = s
        .pre
        .as_ref()
        .is_some_and(|p| p.covers_start(file, size.min(4096)));
    if known || size == 0 || !entry.ranges.covers(0, size) {
        return Ok(Prepared::No);
    }
    // a small file the peer described by its leaves goes as one delta against them
    let described = described.filter(|d| !d.is_empty() && DESCRIBED.contains(&size));
    // (a new file is offered too: the peer may hold its content under another path)
    let copied = described.is_none() && COPIED.contains(&size);
    let copy_here = copied && copies.holds_size(&s.journal, size);
    if described.is_none() && !EXCHANGED.contains(&size) && !copy_here {
        return Ok(Prepared::Whole); // (a file no indexed one matches in size: not read)
    }
    let (root, path) = (s.root.clone(), entry.path.clone());
    let sizes = match (&described, copied) {
        (Some(_), _) => DESCRIBED,
        (None, true) => COPIED,
        (None, false) => EXCHANGED,
    };
    // (the chunk index is looked up here too, off the runtime)
    let (journal, find) = (s.journal.clone(), described.is_none());
    let task = tokio::task::spawn_blocking(move || {
        let read = read_for_offer(&*root, &path, sizes)?;
        let most = |r: &Read| *own(r.tree.len()).end();
        let named = |r: &Read| super::sources::sources_for(&journal, &path, &r.tree, most(r));
        let from = read
            .as_ref()
            .filter(|_| find)
            .map(named)
            .unwrap_or_default();
        Ok::<_, std::io::Error>((read, from))
    });
    let (read, from) =
        (task.await).map_err(|e| SyncError::Protocol(format!("chunk read task: {e}")))??;
    let Some(read) = read.filter(|r| r.st.st_ino == st.st_ino) else {
        return Ok(Prepared::No);
    };
    if copied
        && copies
            .find(&s.journal, &crate::wire::content_id(&read.hash))
            .is_none_or(|p| p == entry.path)
    {
        return Ok(Prepared::Whole); // no copy of it here: the peer holds none either
    }
    if s.journal.entry(file).map(|e| e.version) != Some(entry.version) {
        return Ok(Prepared::No); // written meanwhile: it waits for quiet as usual
    }
    let size = read.tree.len();
    let ix = s.journal.index();
    let origin = super::fold::Origin::Local(s.cfg.node);
    let vv = super::fold::update(ix, &*s.root, &entry.path, read.hash, size, origin)?;
    ix.flush()?; // durable before it leaves (see the sender)
    let update = FileUpdate {
        id,
        file,
        path: entry.path.clone(),
        base: None,
        size,
        mode: read.st.st_mode & 0o7777,
        mtime: crate::wire::WireTime {
            secs: read.st.st_mtime,
            nanos: read.st.st_mtime_nsec as u32,
        },
        ranges: vec![],
        hash: read.hash,
        vv: vv.pairs().to_vec(),
    };
    Ok(Prepared::Ready(Box::new(Ready {
        version: entry.version,
        update,
        read,
        described,
        from,
        patch: false,
    })))
}

/// After `r` went (`outcome`, about `wire` bytes sent): an ack clears the journal's
/// ranges and releases the pre-images.
pub fn finish(
    s: &super::sender::Sender,
    r: &Ready,
    outcome: Offered,
    wire: u64,
) -> Result<Tried, SyncError> {
    // its content is the peer's once acked, or once the ordinary update that follows
    // a decline is (a file of an exchanged size: only those are ever named)
    if EXCHANGED.contains(&r.update.size) {
        super::sources::remember(&s.journal, &r.update.path, &r.read.tree);
    }
    let Offered::Acked(rounds, nodes, leaves) = outcome else {
        return Ok(Tried::Declined);
    };
    let size = r.update.size;
    let sent = crate::journal::RangeSet::from_range(0, size);
    let file = r.update.file;
    s.journal.ack_file(file, r.version, &sent)?;
    if let Some(p) = &s.pre {
        p.release(file, &sent, size);
    }
    tracing::info!(
        file,
        rounds,
        nodes,
        leaves,
        "{}: rebuilt by the peer from its own version ({size} bytes, about {wire} sent)",
        r.update.path
    );
    Ok(Tried::Acked(r.read.hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rebuilt_bytes_fill_ranges_of_the_largest_length_in_order() {
        let content: Vec<u8> = (0..2 * MAX_RANGE_LEN + 3)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut ranges = Ranges(Vec::new());
        for piece in content.chunks(1_000_003) {
            ranges.write_all(piece).unwrap();
        }
        let offsets: Vec<u64> = ranges.0.iter().map(|r| r.offset).collect();
        let m = MAX_RANGE_LEN as u64;
        assert_eq!(offsets, [0, m, 2 * m]);
        assert!(ranges.0.iter().all(|r| r.len == r.data.len() as u64));
        let joined: Vec<u8> = ranges.0.into_iter().flat_map(|r| r.data).collect();
        assert!(joined == content, "the bytes, in order");
    }
}
