//! The sending side: one session per peer stream. Each round takes a journal snapshot,
//! sends its metadata operations in order (batched), then the quiet files' updates with
//! up to [`WINDOW`] unacknowledged, and clears exactly what the peer acknowledged.

use super::build::{build, Built, Plan};
use super::chunked::{Prepared, Ready, Tried};
use super::fold::{self, Origin};
use super::link::{Duplex, Link};
use super::{exchanges, leaf_delta};
use super::{
    recv_within, unless_stalled, Stats, SyncConfig, SyncError, MIN_APPLY_RATE, MIN_RATE,
    REPLY_TIMEOUT, WRITE_STALL,
};
use crate::journal::{FileId, Journal, MetaOp, RangeSet, Snapshot};
use crate::path::RelPath;
use crate::preimage::Preimages;
use crate::treecache::TreeCache;
use crate::wire::{check_hello, AckKind, FramedStream, Message, NackReason};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

mod index;
mod meta;
mod summary;

use index::exchange;
use meta::{meta_due, pending_paths, send_meta};

/// Updates sent and not yet acknowledged, at most.
pub const WINDOW: usize = 256;
/// Payload bytes sent and not yet acknowledged, at most (one update may exceed it).
const WINDOW_BYTES: u64 = 16 << 20;
/// Queued frames are written once this many bytes wait (else before waiting for acks).
const FLUSH_AT: usize = 256 << 10;
/// A file that never goes quiet is sent anyway after this long.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// A closed file is sent once it stayed closed this long (a burst of open-append-close
/// on a log goes as one update).
const CLOSE_GRACE: Duration = Duration::from_millis(30);
/// Metadata ops are sent once the log has been quiet this long (or pending for
/// [`MAX_DELAY`]), so that short-lived files can cancel out before anything is sent.
const META_GRACE: Duration = Duration::from_millis(40);
/// Metadata ops that create a file still open for write wait at most this long: a save
/// writes its temp file whole before renaming it over the original, and the rename
/// folds into an update of the original only while the create has not gone. At a few
/// hundred MB/s through the mount, this covers saves of a few GB.
const CREATE_HOLD: Duration = Duration::from_secs(10);
/// How often pending files are looked at.
const TICK: Duration = Duration::from_millis(25);
/// A file whose whole-file update was refused waits this long before a retry.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A pending file not found at its journalled path is looked for again this soon: the
/// op that moved or replaced it (a local rename, a peer's op applied here) is usually
/// journalled or applied within moments, and until then the peer waits for the file.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Everything the sender needs.
#[derive(Clone)]
pub struct Sender {
    /// The peer to send to, and how to reach it.
    pub link: Arc<dyn Link>,
    /// The local journal.
    pub journal: Journal,
    /// `O_PATH` fd of the backing data directory.
    pub root: Arc<OwnedFd>,
    /// Shared settings.
    pub cfg: SyncConfig,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Old bytes of dirty regions, for deltas (released at ack).
    pub pre: Option<Arc<Preimages>>,
    /// Leaders' asks at first contact, from our receiver (see `follow`).
    pub handoffs: Arc<super::follow::Handoffs>,
}

type Stream = FramedStream<Box<dyn Duplex>>;

/// When each pending file last changed, and when its writers last closed it.
#[derive(Default)]
struct Quiet {
    seen: HashMap<FileId, (u64, Instant, Instant)>,
    closed: HashMap<FileId, Instant>,
    retry_at: HashMap<FileId, Instant>,
}

impl Quiet {
    /// True when a writable handle on `file` was closed less than [`CLOSE_GRACE`] ago:
    /// a rename of a just-written temp file may be on its way.
    fn closed_lately(&self, file: FileId) -> bool {
        self.closed
            .get(&file)
            .is_some_and(|t| t.elapsed() < CLOSE_GRACE)
    }

    /// Files ready to send: closed (or with no writable handle open, per `open`) and
    /// unchanged for [`CLOSE_GRACE`], unchanged for `settle`, or pending too long.
    fn ready(
        &mut self,
        snap: &Snapshot,
        settle: Duration,
        open: &dyn Fn(FileId) -> bool,
    ) -> Vec<FileId> {
        let now = Instant::now();
        self.seen.retain(|f, _| snap.files.contains_key(f));
        self.retry_at.retain(|_, t| *t > now);
        let mut out = Vec::new();
        for (file, e) in &snap.files {
            let s = self.seen.entry(*file).or_insert((e.version, now, now));
            if s.0 != e.version {
                (s.0, s.1) = (e.version, now);
            }
            let closed = self
                .closed
                .get(file)
                .is_some_and(|t| now - *t >= CLOSE_GRACE && (*t >= s.1 || now - s.1 >= settle / 4));
            let shut = !open(*file) && now - s.1 >= CLOSE_GRACE;
            let due = closed || shut || now - s.1 >= settle || now - s.2 >= MAX_DELAY;
            if due && !self.retry_at.contains_key(file) {
                out.push(*file);
            }
        }
        // A mark stays until the file has nothing pending: a file picked here that did
        // not go (its update failed, or the session ended) is picked again next round.
        self.closed.retain(|f, _| snap.files.contains_key(f));
        out
    }
}

/// Per-peer state kept across sessions.
#[derive(Default)]
struct State {
    quiet: Quiet,
    peer_hash: HashMap<FileId, [u8; 32]>,
    trees: TreeCache<FileId, ()>,
    /// The newest metadata op seen, when it was first seen, and since when ops wait.
    meta_seen: Option<(u64, Instant, Instant)>,
    next_id: u64,
    /// Measured link throughput (bytes/s, smoothed), which picks the zstd level.
    link_bps: Option<f64>,
    /// The queue last told to the peer (files, bytes), and when.
    queue_told: Option<((u64, u64), Instant)>,
    /// Since when the queue has been non-empty (`None`: empty).
    queue_since: Option<Instant>,
    /// The queue as of this round's snapshot (files, bytes).
    queue_now: (u64, u64),
    /// Files the peer wants and described by the leaves of its version (`IndexAck`).
    described: HashMap<FileId, Vec<u32>>,
    /// The `Index` entries of those files as sent (`leaf_delta::is_indexed`).
    indexed: HashMap<FileId, crate::wire::IndexItem>,
    /// Parts of updates the peer kept from an earlier session (this session's handshake).
    held: super::resume::Held,
    /// The peer's answer to our `Hello` is still to be read (see [`handshake`]).
    handshake: bool,
    /// The peer leads our first contact (its `Staged` said so; see `follow`).
    led: bool,
    /// Leading a first contact: the newest mtime `(secs, nanos)` of the entries the
    /// follower described (its `SummaryAck::newest`; see `follow::may_lose`).
    follower_newest: Option<(i64, u32)>,
    /// Bytes queued once our `Hello` was (see `handshake`).
    hello_len: usize,
}

/// zstd level of the stream until the first bytes of files go (then the link's level,
/// [`State::level`]): the hello, summary, index and leaf deltas, a few hundred bytes a
/// file. bench-sync.sh pairing c, the side that changed: 32,731 B written at level 3,
/// 31,764 at 12, 30,753 at 19. A first contact's index of 100,000 entries (13 MB,
/// `zstd` CLI here): 4.79 MB in 0.08 s at 3, 4.38 MB in 0.72 s at 12, 3.94 MB in
/// 8.2 s at 19, which a fast link would wait for.
const META_LEVEL: i32 = 12;

/// Updates smaller than this say more about latency than throughput: not measured.
const MEASURE_MIN: u64 = 64 << 10;

impl State {
    /// A new session, whose `Hello` (queued, `hello_len` bytes) awaits its answer: the
    /// peer knows nothing of our queue, and keeps no `Index` entry of the last session
    /// for a `LeafPatch` (its receiver forgets them with the stream; the peer's leaves
    /// of the files it wanted stay: their `LeafDelta`s carry the whole header).
    fn new_session(&mut self, hello_len: usize) {
        self.handshake = true;
        self.led = false;
        self.follower_newest = None;
        self.hello_len = hello_len;
        self.queue_told = None;
        self.indexed.clear();
    }

    fn level(&self, default: i32) -> i32 {
        self.link_bps
            .map(crate::delta::level_for_throughput)
            .unwrap_or(default)
    }

    /// Drops what is known of files created, truncated or last unlinked in `ops`: a new
    /// file's inode number may have been another file's, and a truncate changes the
    /// peer's content (it applies the op) away from the hash last acknowledged.
    fn forget_changed(&mut self, ops: &[(u64, MetaOp)], pending: &HashSet<RelPath>) {
        for (_, op) in ops {
            if super::coalesce::carried_by_update(op, pending) {
                continue; // not sent: the peer keeps the content the hash names
            }
            let file = match op {
                MetaOp::Create { file, .. } | MetaOp::Truncate { file, .. } => file,
                MetaOp::Unlink {
                    file,
                    last_link: true,
                    ..
                } => file,
                _ => continue,
            };
            self.peer_hash.remove(file);
            self.trees.remove(file);
        }
    }

    fn measure(&mut self, bytes: u64, since: Instant) {
        let secs = since.elapsed().as_secs_f64();
        if bytes < MEASURE_MIN || secs <= 0.0 {
            return;
        }
        let bps = bytes as f64 / secs;
        self.link_bps = Some(self.link_bps.map_or(bps, |old| 0.7 * old + 0.3 * bps));
    }

    /// The smoothed throughput, bytes per second (0: not measured yet).
    fn throughput(&self) -> u64 {
        self.link_bps.unwrap_or(0.0) as u64
    }
}

struct InFlight {
    file: FileId,
    path: RelPath,
    version: u64,
    sent: RangeSet,
    /// The file's size as sent.
    size: u64,
    hash: [u8; 32],
    whole: bool,
    payload: u64,
    at: Instant,
    /// All its frames were written: the receiver may be applying it.
    flushed: bool,
    /// Cut short (`build::cut_at`): the bytes to send again once it is acked.
    tail: Option<(u64, u64)>,
}

/// Runs sessions to the peer forever, reconnecting with backoff.
pub async fn run(s: Sender, mut quiet: UnboundedReceiver<FileId>) {
    let mut st = State::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = session(&s, &mut quiet, &mut st, &mut backoff).await;
        s.handoffs.set_past(&s.link.peer(), false);
        s.stats.linked.store(false, Ordering::Relaxed);
        s.stats.exchanging.store(false, Ordering::Relaxed);
        s.stats.flights.lock().unwrap().clear();
        s.stats.in_flight.store(0, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::warn!(peer = %s.link.peer(), "sync session ended: {e}");
            s.stats.error(&e);
            if e.link_dead() {
                s.link.reset().await; // a dead link: redial, don't reuse it
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(
    s: &Sender,
    quiet: &mut UnboundedReceiver<FileId>,
    st: &mut State,
    backoff: &mut Duration,
) -> Result<(), SyncError> {
    let (out, inn) = (s.stats.wire_out.clone(), s.stats.wire_in.clone());
    let mut fs = FramedStream::counting(s.link.open().await?, out, inn);
    let clock = s.stats.clocks.of(&s.link.peer());
    clock.attach(&mut fs);
    // At first contact the `Summary` (digests, no paths) goes with the `Hello`, before
    // its answer: a round trip less per connection (see `handshake`).
    fs.queue(Message::hello(s.cfg.folder_id, s.cfg.node_name.clone()))?;
    fs.compress(META_LEVEL)?;
    st.new_session(fs.queued());
    s.stats.exchanging.store(true, Ordering::Relaxed);
    exchange(s, &mut fs, st).await?;
    s.handoffs.set_past(&s.link.peer(), true);
    handshake(s, &mut fs, st).await?;
    s.stats.exchanging.store(false, Ordering::Relaxed);
    s.stats.link_up();
    *backoff = Duration::from_millis(200);
    let tick = (s.cfg.settle / 2).clamp(Duration::from_millis(10), TICK);
    let progress = fs.progress();
    let every = super::alive::ping_every(&s.cfg.peer_text, &s.link.peer());
    loop {
        round(s, &mut fs, st).await?;
        // only a stream silent both ways needs one, and only if the peer heard
        // nothing from us lately on either stream (see `alive`)
        if clock.ping_due(progress.last(), every) {
            ping(s, &mut fs, st).await?;
        }
        wait_for_work(quiet, &mut st.quiet, tick).await;
    }
}

/// Reads the peer's answer to our `Hello` (its `Hello`, then `Staged`) if not yet
/// read, after writing what is queued. At first contact the first `Summary` was sent
/// before it: both sides compress everything after the `Hello`s (which stay plain
/// frames), and a peer that refuses ours reads nothing more.
async fn handshake(s: &Sender, fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    if !std::mem::take(&mut st.handshake) {
        return Ok(());
    }
    // a hello alone (no first-contact summary, which the peer compares before it
    // answers) times a round trip: the side of a pair that seldom pings needs one too
    let small = fs.queued() == st.hello_len;
    let at = Instant::now();
    fs.flush().await?;
    let reply = recv_within(fs, REPLY_TIMEOUT).await?;
    if small {
        let rtt = at.elapsed().as_micros() as u64;
        s.stats.rtt_us.store(rtt.max(1), Ordering::Relaxed);
    }
    let name = check_hello(&reply, &s.cfg.folder_id)?;
    st.held = match recv_within(fs, REPLY_TIMEOUT).await? {
        Message::Staged { items, lead } => {
            st.led = lead;
            super::resume::held(items)
        }
        other => return Err(unexpected("staged", &other)),
    };
    tracing::info!(peer = %s.link.peer(), "sending to {name}");
    Ok(())
}

/// The items of `sent` (a `Summary`'s directories, an `Index`'s entries) whose bit is
/// set in the peer's answer; a bitmap that does not fit them is the peer's error.
fn chosen<'a, T>(sent: &'a [T], bits: &[u8]) -> Result<impl Iterator<Item = &'a T>, SyncError> {
    let ones = crate::wire::bitmap_ones(bits, sent.len()).ok_or_else(|| {
        SyncError::Protocol(format!(
            "a bitmap of {} bytes for {} items sent",
            bits.len(),
            sent.len()
        ))
    })?;
    Ok(ones.into_iter().map(move |i| &sent[i]))
}

fn unexpected(what: &str, got: &Message) -> SyncError {
    SyncError::Protocol(format!("expected {what}, got {}", got.kind()))
}

/// Tells the peer what is queued for it (`Message::Queue`, for its status) when that
/// changed: at most once a second, but at once when it doubles in bytes (a big file
/// being written ahead of its transfer), and after [`QUEUE_QUICK`] when it empties. A
/// queue that fills from empty is told once it has lasted [`QUEUE_LASTS`]: an edit that
/// crosses in less (most do) costs no report of it, and the peer's status would not
/// have shown it for long anyway.
/// Called each round and while a round's files are in flight (a long transfer).
async fn tell_queue(fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    let (now, queue) = (Instant::now(), st.queue_now);
    st.queue_since = (queue.0 > 0).then(|| st.queue_since.unwrap_or(now));
    let lasted = st.queue_since.is_some_and(|t| now - t >= QUEUE_LASTS);
    let due = match st.queue_told {
        Some((told, _)) if told == queue => false,
        // the peer counts nothing queued (a new session's starts so)
        None | Some(((0, _), _)) => lasted,
        Some((told, at)) => {
            let waited = now - at;
            let doubled = queue.1 / 2 >= told.1.max(1);
            doubled || (queue.0 == 0 && waited >= QUEUE_QUICK) || waited >= QUEUE_EVERY
        }
    };
    if due {
        let (files, bytes) = queue;
        fs.send(Message::Queue { files, bytes }).await?;
        st.queue_told = Some((queue, Instant::now()));
    }
    Ok(())
}

/// How often at most the peer hears of our queue.
const QUEUE_EVERY: Duration = Duration::from_secs(1);
/// How soon at the earliest the peer hears of a queue that emptied or doubled.
const QUEUE_QUICK: Duration = Duration::from_millis(250);
/// How long a queue filled from empty lasts before the peer hears of it.
const QUEUE_LASTS: Duration = Duration::from_secs(1);

/// Proves the link alive (and keeps the peer's read timeout from firing while idle).
async fn ping(s: &Sender, fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    st.next_id += 1;
    let at = Instant::now();
    fs.send(Message::Ping(st.next_id)).await?;
    match recv_reply(&s.stats, fs, REPLY_TIMEOUT).await? {
        Message::Pong(n) if n == st.next_id => {
            let rtt = at.elapsed().as_micros() as u64;
            s.stats.rtt_us.store(rtt.max(1), Ordering::Relaxed);
            Ok(())
        }
        other => Err(SyncError::Protocol(format!(
            "expected a pong, got {}",
            other.kind()
        ))),
    }
}

/// A stream silent this long while the peer starts a new session is taken for dead.
const STUCK_AFTER: Duration = Duration::from_secs(2);

/// Waits for the peer's reply, at most `limit`. If meanwhile the peer opens a new
/// session to us while this stream has been silent for [`STUCK_AFTER`], the peer
/// restarted (or lost this connection): its old end may be gone without our side
/// hearing it, so the session ends and the link is redialed rather than waited out.
pub(super) async fn recv_reply<S>(
    stats: &Stats,
    fs: &mut FramedStream<S>,
    limit: Duration,
) -> Result<Message, SyncError>
where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    let progress = fs.progress();
    let seen = stats.peer_sessions.load(Ordering::Relaxed);
    let recv = recv_within(fs, limit);
    tokio::pin!(recv);
    loop {
        let started = stats.peer_session_started.notified();
        let anew = stats.peer_sessions.load(Ordering::Relaxed) != seen;
        if anew && progress.last() + STUCK_AFTER <= Instant::now() {
            return Err(SyncError::PeerRestarted);
        }
        tokio::select! {
            r = &mut recv => return r,
            _ = started => {}
            _ = tokio::time::sleep(STUCK_AFTER) => {}
        }
    }
}

/// Waits for a closed file or the next tick, collecting every close event queued.
async fn wait_for_work(rx: &mut UnboundedReceiver<FileId>, q: &mut Quiet, tick: Duration) {
    tokio::select! {
        f = rx.recv() => if let Some(f) = f { q.closed.insert(f, Instant::now()); },
        _ = tokio::time::sleep(tick) => {}
    }
    while let Ok(f) = rx.try_recv() {
        q.closed.insert(f, Instant::now());
    }
}

/// One round: metadata operations, then ready files.
async fn round(s: &Sender, fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    super::ignored::refresh(s).await?;
    let mut snap = s.journal.snapshot();
    super::ignored::drop_files(s, &mut snap)?;
    s.stats.queued.store(
        (snap.files.len() + snap.meta.len()) as u64,
        Ordering::Relaxed,
    );
    let dirty: u64 = snap.files.values().map(|e| e.ranges.len_bytes()).sum();
    s.stats.queued_bytes.store(dirty, Ordering::Relaxed);
    s.stats
        .queued_ops
        .store(snap.meta.len() as u64, Ordering::Relaxed);
    if snap.files.is_empty() && snap.meta.is_empty() {
        let now = super::stats::now_ms() / 1000;
        s.stats.last_sync.store(now, Ordering::Relaxed); // in sync as of now
    }
    s.stats.keep_stuck(|f| snap.files.contains_key(&f));
    st.queue_now = ((snap.files.len() + snap.meta.len()) as u64, dirty);
    tell_queue(fs, st).await?;
    let writers = s.journal.open_for_write(); // once a round: the journal's lock is FUSE's
    let open = |f| writers.contains(&f);
    if !meta_due(st, &snap, &open) {
        return Ok(()); // files wait too: an update must not overtake its mkdir or create
    }
    if !snap.meta.is_empty() {
        st.meta_seen = None;
        st.forget_changed(&snap.meta, &pending_paths(&snap));
        if !send_meta(s, fs, &snap).await? {
            return Ok(()); // refused or cancelled meanwhile: start over from a fresh snapshot
        }
    }
    let ready = st.quiet.ready(&snap, s.cfg.settle, &open);
    let ready = chunk_first(s, fs, st, &snap, ready).await?;
    if !ready.is_empty() {
        send_files(s, fs, st, &snap, ready).await?;
    }
    Ok(())
}

/// Offers each file that would otherwise go whole by chunk exchange (`chunked`), or
/// as a leaf delta if the peer described it (in batches: `leaf_delta::write_batch`);
/// returns the files left for ordinary updates (true: whole, from nothing). A file
/// the peer kept parts of resumes instead.
async fn chunk_first(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    snap: &Snapshot,
    ready: Vec<FileId>,
) -> Result<Vec<(FileId, bool)>, SyncError> {
    let mut rest = Vec::with_capacity(ready.len());
    let (mut batch, mut chunks) = (Vec::new(), Vec::new());
    let mut copies = super::local_copy::ByHash::default(); // (read on first use)
    for file in ready {
        let entry = snap
            .files
            .get(&file)
            .filter(|e| !s.journal.is_writing(file) && !st.held.contains_key(&e.path));
        let Some(entry) = entry else {
            rest.push((file, false));
            continue;
        };
        st.next_id += 1;
        let (described, indexed) = (st.described.remove(&file), st.indexed.remove(&file));
        let prepared =
            super::chunked::prepare(s, st.next_id, (file, entry), described, &mut copies);
        let tried = match prepared.await? {
            Prepared::Ready(mut r) if r.described.is_some() => {
                let is = |i: &_| super::leaf_delta::is_indexed(i, &r.update);
                r.patch = indexed.as_ref().is_some_and(is);
                batch.push(*r);
                if batch_full(&batch) {
                    leaf_deltas(s, fs, st, std::mem::take(&mut batch), &mut rest).await?;
                }
                continue;
            }
            Prepared::Ready(r) => {
                chunks.push(*r);
                if exchanges::batch_full(&chunks) {
                    chunk_exchanges(s, fs, st, std::mem::take(&mut chunks), &mut rest).await?;
                }
                continue;
            }
            Prepared::No => Tried::No,
            Prepared::Whole => Tried::Whole,
        };
        tried_file(s, st, file, tried, &mut rest);
    }
    if !batch.is_empty() {
        leaf_deltas(s, fs, st, batch, &mut rest).await?;
    }
    if !chunks.is_empty() {
        chunk_exchanges(s, fs, st, chunks, &mut rest).await?;
    }
    Ok(rest)
}

/// Offers `batch` by chunk exchanges run together (`exchanges::run`); files not acked
/// go to `rest`, each booked as its exchange ends.
async fn chunk_exchanges(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    batch: Vec<Ready>,
    rest: &mut Vec<(FileId, bool)>,
) -> Result<(), SyncError> {
    fs.set_level(st.level(s.cfg.level)); // (rounds carry leaves' bytes)
    exchanges::run(fs, &s.stats, &batch, |at, outcome, wire| {
        let r = &batch[at];
        let tried = super::chunked::finish(s, r, outcome, wire)?;
        tried_file(s, st, r.update.file, tried, rest);
        Ok(())
    })
    .await
}

/// True when a batch of leaf deltas is as big as one may be.
fn batch_full(batch: &[Ready]) -> bool {
    let bytes: u64 = batch.iter().map(|r| r.update.size).sum();
    batch.len() >= leaf_delta::BATCH_FILES || bytes >= leaf_delta::BATCH_BYTES
}

/// Sends `batch` as leaf deltas, one round trip for all; files not acked go to `rest`.
/// Each answer is booked as it comes, so a session that ends midway keeps the acks it
/// read.
async fn leaf_deltas(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    batch: Vec<Ready>,
    rest: &mut Vec<(FileId, bool)>,
) -> Result<(), SyncError> {
    let (sent, mut limit) = leaf_delta::write_batch(fs, &s.stats, &batch).await?;
    let mut written = vec![false; batch.len()];
    for one in &sent {
        let outcome = leaf_delta::answer(fs, &s.stats, one, limit).await?;
        limit = REPLY_TIMEOUT; // the others come with the first
        let r = &batch[one.at];
        let tried = super::chunked::finish(s, r, outcome, one.len)?;
        tried_file(s, st, r.update.file, tried, rest);
        written[one.at] = true;
    }
    for (r, _) in batch.iter().zip(written).filter(|(_, w)| !w) {
        rest.push((r.update.file, false)); // changed since it was read
    }
    Ok(())
}

/// Books how a chunk exchange or leaf delta of `file` went.
fn tried_file(s: &Sender, st: &mut State, file: FileId, t: Tried, rest: &mut Vec<(FileId, bool)>) {
    match t {
        Tried::No => rest.push((file, false)),
        Tried::Whole | Tried::Declined => rest.push((file, true)),
        Tried::Acked(hash) => {
            st.peer_hash.insert(file, hash);
            s.stats.set_stuck(file, None);
            Stats::add(&s.stats.acked, 1);
        }
    }
}

async fn send_files(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    snap: &Snapshot,
    ready: Vec<(FileId, bool)>,
) -> Result<(), SyncError> {
    let mut queue: VecDeque<(FileId, bool)> = ready.into_iter().collect();
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    loop {
        let bytes: u64 = inflight.values().map(|f| f.payload).sum();
        if inflight.len() < WINDOW && bytes < WINDOW_BYTES {
            if let Some((file, whole)) = queue.pop_front() {
                if let Some(f) = send_one(s, fs, st, snap, file, whole).await? {
                    inflight.insert(st.next_id, f);
                }
                if fs.queued() >= FLUSH_AT {
                    flush_watched(fs, &mut inflight).await?;
                }
                continue;
            }
        }
        flush_watched(fs, &mut inflight).await?;
        if inflight.is_empty() {
            return Ok(());
        }
        tell_queue(fs, st).await?; // a transfer that lasts: the peer's status shows it
                                   // Every reply that already arrived is taken before sending more.
        let bytes: u64 = inflight.values().map(|f| f.payload).sum();
        let limit = REPLY_TIMEOUT + Duration::from_secs(bytes / MIN_RATE);
        loop {
            let reply = recv_reply(&s.stats, fs, limit).await?;
            on_reply(s, st, reply, &mut inflight, &mut queue)?;
            if !fs.input_pending() {
                break;
            }
        }
    }
}

/// Writes what is queued, unless the link stalls: no byte moves for [`WRITE_STALL`]
/// plus the time the receiver may spend applying the updates it already has (it reads
/// nothing meanwhile). Marks every update in flight as written.
async fn flush_watched(
    fs: &mut Stream,
    inflight: &mut HashMap<u64, InFlight>,
) -> Result<(), SyncError> {
    let applying: u64 = inflight
        .values()
        .filter(|f| f.flushed)
        .map(|f| f.payload)
        .sum();
    let limit = WRITE_STALL + Duration::from_secs(applying / MIN_APPLY_RATE);
    let progress = fs.progress();
    unless_stalled(|| progress.last(), limit, async { Ok(fs.flush().await?) }).await?;
    inflight.values_mut().for_each(|f| f.flushed = true);
    Ok(())
}

/// Builds one update and queues its frames; `None` if there was nothing (left) to send.
async fn send_one(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    snap: &Snapshot,
    file: FileId,
    whole: bool,
) -> Result<Option<InFlight>, SyncError> {
    let Some(entry) = snap.files.get(&file).cloned() else {
        return Ok(None);
    };
    // A write recorded but not yet in the backing file would be read as its old bytes,
    // and the ack would then clear its range: the file waits for the next round.
    if s.journal.is_writing(file) {
        tracing::debug!(file, "a write is in progress; waiting for it");
        return Ok(None);
    }
    st.next_id += 1;
    let (id, root, level, pre) = (
        st.next_id,
        s.root.clone(),
        st.level(s.cfg.level),
        s.pre.clone(),
    );
    // Parts the peer kept from a cut session were built on what it holds.
    let kept_base = st.held.get(&entry.path).map(|h| h.base);
    let base = match (whole, kept_base) {
        (true, _) => None,
        (false, Some(b)) => b,
        (false, None) => (st.peer_hash.get(&file).copied())
            .or_else(|| agreed_hash(s, &entry.path))
            .map(|h| crate::wire::base_id(&h)),
    };
    let version = entry.version;
    let path = entry.path.clone();
    let tree = match whole {
        true => None,
        false => st.trees.remove(&file).map(|(_, t)| t),
    };
    let built: Option<Built> = tokio::task::spawn_blocking(move || {
        build(
            &*root,
            Plan {
                file,
                entry: &entry,
                id,
                whole,
                base,
                level,
                tree,
                pre: pre.as_deref(),
            },
        )
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("build task: {e}")))??;
    let Some(b) = built else {
        let why = format!(
            "{}: not found at its journalled path (gone or replaced); waits for a change",
            path.as_path().display()
        );
        if s.stats.set_stuck(file, Some(why.clone())) {
            tracing::warn!(file, "cannot send: {why}");
        }
        let retry = Instant::now() + LOOK_AGAIN;
        st.quiet.retry_at.insert(file, retry);
        return Ok(None);
    };
    let mut b = b;
    // Kept even if the update is dropped below: bytes a racing write changed are dirty.
    st.trees.insert(file, (), b.tree.clone());
    // A write recorded since the snapshot may have torn what was read: wait for quiet.
    if s.journal.entry(file).map(|e| e.version) != Some(version) {
        tracing::debug!(file, "changed while being read; waiting for it to settle");
        return Ok(None);
    }
    if let Some(Message::FileUpdate(u)) = b.frames.last_mut() {
        let ix = s.journal.index();
        let vv = fold::update(
            ix,
            &*s.root,
            &u.path,
            u.hash,
            u.size,
            Origin::Local(s.cfg.node),
        )?;
        ix.flush()?; // durable before it leaves (see `send_meta`)
        u.vv = vv.pairs().to_vec();
    }
    let held = super::resume::announce(&mut b.frames, &mut st.held);
    if held > 0 {
        tracing::info!(
            file,
            id,
            held,
            "{path}: resuming; the peer holds {held} bytes of it"
        );
        b.payload -= held;
    }
    tracing::debug!(
        file,
        id,
        whole,
        frames = b.frames.len(),
        payload = b.payload,
        hash_read = b.hash_read,
        "sending update"
    );
    fs.set_level(level);
    let start_mark = s.stats.wire_out.load(Ordering::Relaxed) + fs.queued() as u64;
    for m in b.frames {
        let part = matches!(m, Message::UpdatePart { .. });
        fs.queue(m)?;
        if part {
            fs.end_block()?; // a cut then loses at most the part in flight
        }
    }
    Stats::add(&s.stats.sent_bytes, b.payload);
    Stats::add(&s.stats.raw_sent, b.sent.len_bytes());
    Stats::add(&s.stats.delta_raw, b.delta.0);
    Stats::add(&s.stats.delta_payload, b.delta.1);
    Stats::add(&s.stats.in_flight, 1);
    s.stats.flights.lock().unwrap().insert(
        id,
        super::stats::FlightView {
            path: path.to_string(),
            bytes: b.sent.len_bytes(),
            payload: b.payload,
            since_ms: super::stats::now_ms(),
            sent: 0,
            start_mark,
        },
    );
    let (payload, at) = (b.payload, Instant::now());
    Ok(Some(InFlight {
        file,
        path,
        version,
        size: b.tree.len(),
        sent: b.sent,
        hash: b.hash,
        whole,
        payload,
        at,
        flushed: false,
        tail: b.cut,
    }))
}

fn on_reply(
    s: &Sender,
    st: &mut State,
    reply: Message,
    inflight: &mut HashMap<u64, InFlight>,
    queue: &mut VecDeque<(FileId, bool)>,
) -> Result<(), SyncError> {
    let (id, nack) = match reply {
        Message::Ack(AckKind::Update(id)) => (id, None),
        Message::Nack {
            of: AckKind::Update(id),
            reason,
        } => (id, Some(reason)),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected an update ack, got {}",
                other.kind()
            )))
        }
    };
    let Some(f) = inflight.remove(&id) else {
        tracing::warn!("peer acked update {id}, which is not in flight: ignored");
        return Ok(());
    };
    tracing::debug!(file = f.file, id, ?nack, "reply");
    s.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    s.stats.flights.lock().unwrap().remove(&id);
    match nack {
        None => {
            s.journal.ack_file(f.file, f.version, &f.sent)?;
            if let Some((from, to)) = f.tail {
                // the peer's file now ends at `from`: what followed goes next
                s.journal.want_again(f.file, from, to)?;
            }
            if let Some(p) = &s.pre {
                p.release(f.file, &f.sent, f.size);
            }
            st.peer_hash.insert(f.file, f.hash);
            s.stats.set_stuck(f.file, None);
            st.measure(f.payload, f.at);
            s.stats.throughput.store(st.throughput(), Ordering::Relaxed);
            Stats::add(&s.stats.acked, 1);
        }
        Some(reason) => on_nack(s, st, f, reason, queue),
    }
    Ok(())
}

/// The content both sides last agreed on at `path`, from the index: the base of a
/// file's first update in a session (the session's own acks are not known yet). If the
/// peer holds something else it refuses the update (`UnknownBase`), and the whole file
/// follows; without a base it would have to start from nothing.
fn agreed_hash(s: &Sender, path: &RelPath) -> Option<[u8; 32]> {
    let e = s.journal.index().get(path).ok().flatten()?;
    (!e.deleted && e.kind == crate::journal::index::Kind::File).then_some(e.hash)
}

/// A refused update falls back to the whole file once; a refused whole file waits.
fn on_nack(
    s: &Sender,
    st: &mut State,
    f: InFlight,
    reason: NackReason,
    queue: &mut VecDeque<(FileId, bool)>,
) {
    Stats::add(&s.stats.nacked, 1);
    st.peer_hash.remove(&f.file);
    if !f.whole {
        tracing::debug!(
            file = f.file,
            "peer refused a range update ({reason:?}); sending the whole file"
        );
        queue.push_back((f.file, true));
        return;
    }
    tracing::warn!(
        file = f.file,
        "peer refused the whole file: {reason:?}; retrying later"
    );
    s.stats
        .error(format!("peer refused file {}: {reason:?}", f.file));
    let why = format!(
        "{}: the peer refused it ({reason:?}); retrying every {} s",
        f.path.as_path().display(),
        RETRY_AFTER.as_secs()
    );
    s.stats.set_stuck(f.file, Some(why));
    st.quiet
        .retry_at
        .insert(f.file, Instant::now() + RETRY_AFTER);
}

#[cfg(test)]
mod tests {
    use super::meta::meta_reply;
    use super::*;

    #[test]
    fn an_answer_bitmap_names_the_items_sent() {
        let sent: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let names =
            |bits: &[u8]| -> Vec<String> { chosen(&sent, bits).unwrap().cloned().collect() };
        assert_eq!(names(&[0b1000_0001, 0b10]), ["d0", "d7", "d9"]);
        assert!(names(&[0, 0]).is_empty());
        assert!(chosen(&sent, &[0xff]).is_err(), "too short");
        assert!(chosen(&sent, &[0, 0, 0]).is_err(), "too long");
        assert!(
            chosen(&sent, &[0, 0b100]).is_err(),
            "a bit past the last item"
        );
    }

    #[test]
    fn a_new_session_sends_no_leaf_patch_for_the_last_sessions_index() {
        let mut st = State::default();
        let item = crate::wire::IndexItem {
            path: RelPath::from_bytes(b"x").unwrap(),
            kind: crate::wire::ItemKind::File,
            size: 3,
            mtime: crate::wire::WireTime { secs: 1, nanos: 0 },
            mode: 0o644,
            hash: [7; 16],
            target: vec![],
            vv: vec![],
            deleted: false,
        };
        st.described.insert(5, vec![1, 2]);
        st.indexed.insert(5, item);
        st.new_session(40);
        assert!(
            st.indexed.is_empty(),
            "the peer's receiver forgot the entry"
        );
        assert_eq!(
            st.described.get(&5),
            Some(&vec![1, 2]),
            "a LeafDelta still can"
        );
        assert!(st.handshake && st.hello_len == 40 && st.queue_told.is_none());
    }

    #[test]
    fn created_truncated_or_gone_files_start_without_the_old_hash() {
        let mut st = State::default();
        for f in [5, 6, 7, 8] {
            st.peer_hash.insert(f, [1; 32]);
        }
        let path = RelPath::from_bytes(b"x").unwrap();
        st.forget_changed(
            &[
                (
                    1,
                    MetaOp::Create {
                        path: path.clone(),
                        file: 5,
                        mode: 0o644,
                    },
                ),
                (
                    2,
                    MetaOp::Unlink {
                        path: path.clone(),
                        file: 6,
                        last_link: true,
                    },
                ),
                (
                    3,
                    MetaOp::Unlink {
                        path: path.clone(),
                        file: 7,
                        last_link: false,
                    },
                ),
                (
                    4,
                    MetaOp::Truncate {
                        path,
                        file: 8,
                        size: 0,
                    },
                ),
            ],
            &HashSet::new(),
        );
        let left: Vec<_> = st.peer_hash.keys().copied().collect();
        assert_eq!(left, vec![7], "a file that keeps a link keeps its hash");
    }

    #[tokio::test]
    async fn acks_for_ops_never_sent_are_ignored() {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut ours, mut peer) = (FramedStream::new(a.compat()), FramedStream::new(b.compat()));
        for bogus in [999, 3] {
            peer.send(Message::Ack(AckKind::Meta(bogus))).await.unwrap();
        }
        peer.send(Message::Ack(AckKind::Meta(7))).await.unwrap();
        let got = meta_reply(&Stats::default(), &mut ours, (5, 7))
            .await
            .unwrap();
        assert_eq!(got.unwrap(), 7, "only the ack of the batch sent counts");
    }

    /// A silent wait ends at once when the peer starts a new session (it restarted: the
    /// old connection may be dead unheard); a stream that keeps talking is waited on.
    #[tokio::test(start_paused = true)]
    async fn a_silent_wait_ends_when_the_peer_starts_anew() {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut ours, mut peer) = (FramedStream::new(a.compat()), FramedStream::new(b.compat()));
        let stats = Arc::new(Stats::default());
        let restart = |stats: Arc<Stats>, after: u64| async move {
            tokio::time::sleep(Duration::from_secs(after)).await;
            Stats::add(&stats.peer_sessions, 1);
            stats.peer_session_started.notify_waiters();
        };
        let t0 = Instant::now();
        tokio::spawn(restart(stats.clone(), 5));
        let err = recv_reply(&stats, &mut ours, REPLY_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::PeerRestarted), "{err}");
        assert_eq!(
            t0.elapsed().as_secs(),
            5,
            "at the new session, not the timeout"
        );

        tokio::spawn(restart(stats.clone(), 1)); // the stream spoke 0.5 s before it
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peer.send(Message::Queue { files: 0, bytes: 0 })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            peer.send(Message::Pong(1)).await.unwrap();
            peer
        });
        let first = recv_reply(&stats, &mut ours, REPLY_TIMEOUT).await.unwrap();
        assert!(matches!(first, Message::Queue { .. }));
        let reply = recv_reply(&stats, &mut ours, REPLY_TIMEOUT).await.unwrap();
        assert_eq!(reply, Message::Pong(1));
    }

    /// A new file open for write whose first write has not come yet (a save's temp
    /// file, created before its content is ready) holds the ops back, so that its
    /// rename over the target can still fold into an update; for [`CREATE_HOLD`] at
    /// most.
    #[tokio::test(start_paused = true)]
    async fn a_new_file_open_for_write_holds_the_ops_before_its_first_write() {
        let path = RelPath::from_bytes(b".doc.tmp").unwrap();
        let snap = Snapshot {
            files: Default::default(), // nothing written yet
            meta: vec![(
                1,
                MetaOp::Create {
                    path,
                    file: 7,
                    mode: 0o644,
                },
            )],
        };
        let open = |f| f == 7;
        let mut st = State::default();
        assert!(!meta_due(&mut st, &snap, &open));
        tokio::time::advance(META_GRACE.max(CLOSE_GRACE)).await;
        assert!(!meta_due(&mut st, &snap, &open), "open for write: waits");
        assert!(meta_due(&mut st, &snap, &|_| false), "closed empty: goes");
        tokio::time::advance(MAX_DELAY).await;
        assert!(
            !meta_due(&mut st, &snap, &open),
            "a big temp file takes a while"
        );
        tokio::time::advance(CREATE_HOLD - MAX_DELAY).await;
        assert!(meta_due(&mut st, &snap, &open), "not forever");
    }

    /// A new file no handle has open for write (one the daemon wrote itself, such as a
    /// conflict copy, or any file after a restart) goes at once, its create first; one
    /// still open for write waits.
    #[tokio::test(start_paused = true)]
    async fn files_not_open_for_write_go_at_once() {
        let path = RelPath::from_bytes(b"new").unwrap();
        let mut entry = crate::journal::FileEntry::new(path.clone());
        entry.ranges.insert(0, 10);
        let snap = Snapshot {
            files: [(7, entry)].into_iter().collect(),
            meta: vec![(
                1,
                MetaOp::Create {
                    path,
                    file: 7,
                    mode: 0o644,
                },
            )],
        };
        let settle = Duration::from_secs(1);
        for open in [true, false] {
            let open = move |_| open;
            let mut st = State::default();
            assert!(!meta_due(&mut st, &snap, &open), "the log is not quiet yet");
            assert!(st.quiet.ready(&snap, settle, &open).is_empty());
            tokio::time::advance(META_GRACE.max(CLOSE_GRACE)).await;
            let due = meta_due(&mut st, &snap, &open);
            let ready = st.quiet.ready(&snap, settle, &open);
            if open(7) {
                assert!(!due && ready.is_empty(), "still being written: waits");
            } else {
                assert!(due, "the create goes");
                assert_eq!(ready, vec![7]);
            }
        }
    }
}
