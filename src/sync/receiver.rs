//! The receiving side: answers the streams peers open, checks `Hello`, and hands each
//! metadata batch and (assembled) file update to the applier, replying with an ack only
//! once the applier reports it durable, or a nack with the reason.

use super::budget::{Budgets, PeerBudget, MAX_PEER_MEMORY, MAX_STREAMS_PER_PEER};
use super::check::{Checker, UpdateStep};
use super::chunked::{Basis, Next, Rebuilds, EXCHANGED};
use super::follow;
use super::local_copy::path_with_hash;
use super::verdict::Loser;
use super::warm::Warm;
use super::{
    recv_within, unless_stalled, Stats, SyncConfig, SyncError, READ_TIMEOUT, REPLY_TIMEOUT,
};
use crate::apply::partial::{PartKey, Parts as KeptParts};
use crate::apply::Applier;
use crate::bwlimit::BwLimit;
use crate::net::NetHandle;
use crate::net::PeerId;
use crate::path::RelPath;
use crate::wire::{
    check_hello, AckKind, FileUpdate, FramedStream, Message, NackReason, RangeData,
    MAX_UPDATE_RANGES, MAX_UPDATE_SPAN, STREAM_PROTOCOL,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// zstd level of the reply stream (acks are tiny and alike).
const REPLY_LEVEL: i32 = 3;
/// What one range costs in memory beyond its data (the struct and its allocation).
const RANGE_COST: usize = 64;

/// Everything the receiver needs.
#[derive(Clone)]
pub struct Receiver {
    /// Applies updates to the backing store.
    pub applier: Arc<Applier>,
    /// Shared settings.
    pub cfg: SyncConfig,
    /// Counters.
    pub stats: Arc<Stats>,
    /// One update applies at a time, whatever stream it came on.
    pub lock: Arc<tokio::sync::Mutex<()>>,
    /// Per peer: how many streams, and how much memory for update parts.
    pub budgets: Arc<Budgets>,
    /// Checks each change against the index before it is applied.
    pub check: Checker,
    /// Leaders' asks at first contact, for our senders (see `follow`).
    pub handoffs: Arc<follow::Handoffs>,
}

/// Accepts sync streams forever, serving each on its own task under the node's
/// bandwidth `limit`.
pub async fn run(net: NetHandle, r: Receiver, limit: Arc<BwLimit>) -> Result<(), SyncError> {
    let mut incoming = net.accept(STREAM_PROTOCOL)?;
    while let Some((peer, stream)) = incoming.next().await {
        let Some(slot) = r.budgets.stream(peer) else {
            tracing::warn!(%peer, "refusing a sync stream: {MAX_STREAMS_PER_PEER} already open");
            continue; // dropped: the stream is reset
        };
        let (r, stream) = (r.clone(), limit.wrap(stream));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve(peer, stream, &r).await {
                tracing::warn!(%peer, "incoming sync stream ended: {e}");
                r.stats.error(&e);
            }
            r.stats.incoming_files.store(0, Ordering::Relaxed); // unknown now
            r.stats.incoming_bytes.store(0, Ordering::Relaxed);
        });
    }
    Ok(())
}

/// Serves one peer stream until it closes.
pub async fn serve<S>(peer: PeerId, stream: S, r: &Receiver) -> Result<(), SyncError>
where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    let (out, inn) = (r.stats.wire_out.clone(), r.stats.wire_in.clone());
    let mut fs = FramedStream::counting(stream, out, inn);
    let clock = r.stats.clocks.of(&peer.to_string());
    clock.attach(&mut fs);
    let me = clock.opened();
    let hello = recv_within(&mut fs, REPLY_TIMEOUT).await?;
    if let Err(e) = check_hello(&hello, &r.cfg.folder_id) {
        tracing::warn!(%peer, "refusing sync stream: {e}");
        let _ = fs
            .send(Message::Refused {
                reason: e.to_string(),
            })
            .await;
        let _ = fs.close().await;
        return Err(e.into());
    }
    // the hello (plain) and the staged list (the compressed stream's start) travel
    // together, and with the answer to a first-contact summary that came with the
    // peer's hello (one packet less each way)
    fs.queue(Message::hello(r.cfg.folder_id, r.cfg.node_name.clone()))?;
    fs.compress(REPLY_LEVEL)?;
    let items = held_parts(r, &peer).await;
    let lead = leads_first_contact(r, &peer)?;
    fs.queue(Message::Staged { items, lead })?;
    if !fs.input_pending() {
        fs.flush().await?;
    }
    Stats::add(&r.stats.peer_sessions, 1);
    r.stats.peer_session_started.notify_waiters();
    let mut parts = Parts::new(r.budgets.of(peer), r.applier.clone());
    let mut rebuilds = Rebuilds::new(r.budgets.of(peer));
    let progress = fs.progress();
    let mut ours_by_key = None; // read once for all the parts of a summary
    let mut watch = follow::Watch::default(); // the peer's first contact, if it leads
    let mut held = follow::Held::new(lead); // the follower's index, if we lead
    loop {
        let next = async { fs.recv().await?.ok_or(SyncError::Closed) };
        let alive = || clock.alive(progress.last(), me);
        let msg = match unless_stalled(alive, READ_TIMEOUT, next).await {
            Err(SyncError::Closed) => break,
            r => r?,
        };
        tracing::debug!(%peer, kind = msg.kind(), "received");
        match msg {
            Message::Ping(_) => Stats::add(&r.stats.pings, 1),
            _ => Stats::add(&r.stats.received, 1),
        }
        let reply = match msg {
            Message::ChunkOffer { .. }
            | Message::ChunkRound { .. }
            | Message::ChunkDecline(_)
            | Message::LeafDelta { .. }
            | Message::LeafPatch { .. }
            | Message::SketchPart { .. }
            | Message::LeafAsk { .. } => chunk(msg, &mut rebuilds, r, &peer).await?,
            Message::Index {
                entries,
                upto,
                last,
            } => {
                let warm = rebuilds.warm();
                let (ack, described, took) =
                    take_index(entries, upto, r, &peer, warm, watch.seen()).await?;
                if let Some(took) = held.part(took, last) {
                    r.handoffs.put_taken(&peer.to_string(), took);
                }
                rebuilds.expect(described);
                Some(ack)
            }
            Message::IndexAsk { digests, wait } => {
                match watch.asked(digests, wait) {
                    Ok(Some(asked)) => r.handoffs.put(&peer.to_string(), asked),
                    Ok(None) => {}
                    Err(e) => return Err(SyncError::Protocol(e)),
                }
                None
            }
            Message::Summary {
                dirs,
                last,
                list,
                sketch,
                sum,
            } => {
                if !watch.started() && follows_first_contact(r, &peer)? {
                    r.handoffs.clear(&peer.to_string()); // a new first contact
                    watch.start(r.check.journal.index().last_seq()?);
                }
                let ours = match ours_by_key.take() {
                    Some(ours) => ours,
                    None => OursByKey::read(r).await?,
                };
                let reply = match sketch.is_empty() {
                    true => compare_summary(dirs, list, &ours, r, watch.seen()).await?,
                    false => match ours.theirs(&sketch, sum) {
                        Some(dirs) => compare_summary(dirs, false, &ours, r, watch.seen()).await?,
                        None => unpeeled_summary(),
                    },
                };
                ours_by_key = (!last).then_some(ours); // for the next part
                Some(reply)
            }
            msg => handle(msg, &mut parts, r, &peer).await?,
        };
        if let Some(reply) = reply {
            fs.queue(reply)?;
        }
        if !fs.input_pending() {
            fs.flush().await?; // replies to a burst of updates travel together
        }
    }
    fs.flush().await?;
    Ok(())
}

async fn handle(
    msg: Message,
    parts: &mut Parts,
    r: &Receiver,
    peer: &PeerId,
) -> Result<Option<Message>, SyncError> {
    match msg {
        Message::MetaBatch(ops) => Ok(Some(super::meta::apply_batch(ops, r, peer).await)),
        Message::Meta(item) => Ok(Some(super::meta::apply_batch(vec![item], r, peer).await)),
        Message::UpdateStart {
            id,
            path,
            base,
            hash,
            from,
        } => {
            parts.start(
                id,
                PartKey {
                    peer: peer.to_string(),
                    path,
                    base,
                    hash,
                },
                from,
            );
            Ok(None)
        }
        Message::UpdatePart { id, ranges } => {
            parts.add(id, ranges)?;
            Ok(None)
        }
        Message::FileUpdate(u) => {
            let id = u.id;
            let kept = parts.kept.remove(&id);
            let assembled = parts.assemble(u, kept.as_ref());
            if let Some(Ok(k)) = kept {
                r.applier.parts_done(k); // in memory now: its disk space goes
            }
            Ok(Some(match assembled {
                Ok(u) => apply_update(u, r, peer).await,
                Err(why) => nack(AckKind::Update(id), why),
            }))
        }
        Message::Ping(n) => Ok(Some(Message::Pong(n))),
        Message::Queue { files, bytes } => {
            r.stats.incoming_files.store(files, Ordering::Relaxed);
            r.stats.incoming_bytes.store(bytes, Ordering::Relaxed);
            Ok(None)
        }
        other => Err(SyncError::Protocol(format!(
            "unexpected {} on a sync stream",
            other.kind()
        ))),
    }
}

/// What may stand for our version of a new file offered by its chunks, in order: a
/// copy of its content here, the files the sender named joined (`from`, if each is a
/// live, not ignored file of our index), a similar file.
fn basis(
    journal: &crate::journal::Journal,
    u: &FileUpdate,
    from: Vec<crate::path::RelPath>,
) -> Vec<Basis> {
    use super::chunked::own;
    use super::local_copy::similar;
    use super::sources::usable;
    let copy = path_with_hash(journal, &u.hash, &u.path).map(Basis::Copy);
    let own_part = 1..=*own(u.size).end();
    let usable_all = from
        .iter()
        .all(|p| *p != u.path && usable(journal, p, &own_part));
    let named = (!from.is_empty() && usable_all).then_some(Basis::Named(from));
    let like = similar(journal, &u.path, u.size, &EXCHANGED).map(Basis::Similar);
    copy.into_iter().chain(named).chain(like).collect()
}

/// One message of a chunk exchange (`super::chunked`); the blocking work (reading our
/// version, rebuilding) runs off the runtime, and a rebuilt file goes through the gate.
async fn chunk(
    msg: Message,
    rebuilds: &mut Rebuilds,
    r: &Receiver,
    peer: &PeerId,
) -> Result<Option<Message>, SyncError> {
    if let Message::ChunkDecline(id) = msg {
        rebuilds.declined(id);
        return Ok(None);
    }
    let (mut owned, root) = (rebuilds.take(), r.check.root.clone());
    let journal = r.check.journal.clone();
    let task = tokio::task::spawn_blocking(move || {
        let next = match msg {
            Message::ChunkOffer {
                update,
                top,
                from,
                sketch,
            } => {
                let elsewhere = |u: &FileUpdate| basis(&journal, u, from);
                owned.offered(&*root, update, (&top, &sketch), elsewhere)
            }
            Message::ChunkRound {
                id,
                children,
                data,
                blocks,
                matched,
            } => owned.round(id, (children, data), &blocks, &matched),
            Message::SketchPart { id, bytes } => owned.sketch_part(id, &bytes),
            Message::LeafDelta {
                update,
                used,
                delta,
                asked,
                found,
            } => {
                let marked = super::leaf_delta::Marked {
                    used: &used,
                    asked: &asked,
                    found: &found,
                };
                owned.leaf_delta(&*root, update, marked, &delta)
            }
            Message::LeafPatch {
                id,
                path,
                used,
                delta,
                asked,
                found,
                vv,
            } => {
                let marked = super::leaf_delta::Marked {
                    used: &used,
                    asked: &asked,
                    found: &found,
                };
                owned.leaf_patch(&*root, (id, path, vv), marked, &delta)
            }
            Message::LeafAsk { path, leaves } => {
                // a file kept out of sync is never read for a peer
                let kept_here = journal.ignores().is_some_and(|i| {
                    i.refresh();
                    i.matches(&path, false)
                });
                Next::Reply(match kept_here {
                    true => Message::LeafPieces(Vec::new()),
                    false => super::leaf_delta::pieces(&*root, &path, &leaves),
                })
            }
            _ => unreachable!("only chunk messages come here"),
        };
        (owned, next)
    });
    let (owned, next) = task
        .await
        .map_err(|e| SyncError::Protocol(format!("chunk task: {e}")))?;
    *rebuilds = owned;
    Ok(Some(match next {
        Next::Reply(m) => m,
        Next::Apply(u, charged) => {
            let reply = apply_update(u, r, peer).await;
            rebuilds.release(charged);
            reply
        }
    }))
}

fn nack(of: AckKind, reason: NackReason) -> Message {
    Message::Nack { of, reason }
}

/// Our directories by their summary key: (path, digest), several per key when their
/// paths' keys collide. Read once per summary, however many parts it comes in.
struct OursByKey(Arc<HashMap<u32, Vec<(crate::path::RelPath, u64)>>>);

impl OursByKey {
    async fn read(r: &Receiver) -> Result<OursByKey, SyncError> {
        let journal = r.check.journal.clone();
        let ours = tokio::task::spawn_blocking(move || {
            let mut ours: HashMap<u32, Vec<_>> = HashMap::new();
            for (p, d) in journal.index().digests()? {
                let dd = crate::wire::DirDigest::of(&p, &d);
                ours.entry(dd.key).or_default().push((p, dd.digest));
            }
            Ok::<_, crate::journal::JournalError>(ours)
        })
        .await
        .map_err(|e| SyncError::Protocol(format!("summary task: {e}")))??;
        Ok(OursByKey(Arc::new(ours)))
    }

    /// The peer's directories from its summary sketch (`digests::their_dirs`).
    fn theirs(&self, sketch: &[u8], sum: u64) -> Option<Vec<crate::wire::DirDigest>> {
        let ours = self.0.iter().flat_map(|(&key, dirs)| {
            let dir = move |(_, digest): &(_, u64)| crate::wire::DirDigest {
                key,
                digest: *digest,
            };
            dirs.iter().map(dir)
        });
        super::digests::their_dirs(sketch, sum, ours)
    }
}

/// The answer to a summary sketch that did not peel: nothing differs, nothing held
/// (the peer then sends its summary in parts).
fn unpeeled_summary() -> Message {
    Message::SummaryAck {
        differ: Vec::new(),
        same: Vec::new(),
        held: Vec::new(),
        sketch: Vec::new(),
        sum: 0,
        newest: None,
    }
}

/// The directories of the peer's summary whose digest differs from ours (a bitmap in
/// its order), which of them we hold, and the digests of our entries in those: a
/// list, or a sketch when that is smaller and the peer did not ask for a `list`.
async fn compare_summary(
    dirs: Vec<crate::wire::DirDigest>,
    list: bool,
    ours: &OursByKey,
    r: &Receiver,
    seen: Option<&mut follow::Seen>,
) -> Result<Message, SyncError> {
    let (journal, ours) = (r.check.journal.clone(), ours.0.clone());
    let follows = seen.is_some();
    let (reply, matched, look, digests) = tokio::task::spawn_blocking(move || {
        let ix = journal.index();
        let mut differ = vec![0u8; dirs.len().div_ceil(8)];
        let mut held = Vec::new(); // one bit per differing directory
        let mut look = Vec::new(); // ours under a differing key: the peer's may be there
        let mut matched = Vec::new(); // ours the peer holds as they are
        for (i, d) in dirs.iter().enumerate() {
            let mine = ours.get(&d.key).map(Vec::as_slice).unwrap_or_default();
            match mine.iter().find(|(_, digest)| *digest == d.digest) {
                Some((p, _)) => matched.push(p.clone()),
                None => {
                    differ[i / 8] |= 1 << (i % 8);
                    held.push(!mine.is_empty());
                    look.extend(mine.iter().map(|(p, _)| p.clone()));
                }
            }
        }
        look.sort_unstable();
        look.dedup();
        // what we hold in those directories: the sender leaves out entries we share
        let (mut same, mut newest) = (Vec::new(), None);
        for dir in &look {
            for (p, e) in ix.children(dir)? {
                same.push(super::same_digest(&p, &e));
                newest = newest.max(Some((e.mtime.secs, e.mtime.nanos)));
            }
        }
        let newest = newest
            .filter(|_| follows)
            .map(|(secs, nanos)| crate::wire::WireTime { secs, nanos });
        let digests = same.len();
        same.truncate(crate::wire::MAX_SAME_DIGESTS);
        let cells = (!list)
            .then(|| super::digests::cells(held.iter().filter(|h| **h).count(), same.len()))
            .flatten();
        let sketch = cells.map_or_else(Vec::new, |c| super::digests::sketch(&same, c));
        let sum = match sketch.is_empty() {
            true => 0,
            false => super::digests::set_sum(std::mem::take(&mut same).into_iter().map(u128::from)),
        };
        let held = crate::wire::bitmap(held.len(), (0..held.len()).filter(|&i| held[i]));
        let reply = Message::SummaryAck {
            differ,
            same,
            held,
            sketch,
            sum,
            newest,
        };
        Ok::<_, crate::journal::JournalError>((reply, matched, look, digests))
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("summary task: {e}")))??;
    if let Some(seen) = seen {
        seen.matched.extend(matched);
        seen.described.extend(look);
        seen.cut |= digests > crate::wire::MAX_SAME_DIGESTS;
        seen.digests += digests.min(crate::wire::MAX_SAME_DIGESTS);
    }
    Ok(reply)
}

/// True if `peer` leads a first contact with us that our sender waits on: the greater
/// PeerId, and our own first contact with it not yet acknowledged (see `follow`).
fn follows_first_contact(r: &Receiver, peer: &PeerId) -> Result<bool, SyncError> {
    let peer = peer.to_string();
    Ok(!follow::leads(&r.cfg.peer_text, &peer) && r.check.journal.index().peer_acked(&peer)? == 0)
}

/// True if we lead a first contact with `peer` (see `follow`): the greater PeerId,
/// our own first contact with it not yet acknowledged, and our sender not past the
/// start of its session (where the first contact, and its ask, are).
fn leads_first_contact(r: &Receiver, peer: &PeerId) -> Result<bool, SyncError> {
    let peer = peer.to_string();
    Ok(follow::leads(&r.cfg.peer_text, &peer)
        && r.check.journal.index().peer_acked(&peer)? == 0
        && r.handoffs.ask_to_come(&peer))
}

/// Decides on each entry of the peer's index; replies with the files we want, and
/// returns the entries of those we described by their leaves (their content may come
/// as a `LeafPatch`) and the paths whose entry we take. Of the files wanted, those whose versions share no history will
/// come as chunk offers: our versions' trees are built ahead (`warm`).
async fn take_index(
    entries: Vec<crate::wire::IndexItem>,
    upto: u64,
    r: &Receiver,
    peer: &PeerId,
    warm: Arc<Warm>,
    seen: Option<&mut follow::Seen>,
) -> Result<(Message, Vec<crate::wire::IndexItem>, Vec<RelPath>), SyncError> {
    let _one = r.lock.lock().await;
    let (check, bytes) = (r.check.clone(), peer.to_bytes());
    let (want, leaves, apart, described, entries, took) = tokio::task::spawn_blocking(move || {
        let mut took = Vec::with_capacity(entries.len());
        let (mut want, mut wanted, mut apart) = (Vec::new(), Vec::new(), Vec::new());
        let mut by_hash = super::local_copy::ByHash::default();
        for (i, it) in entries.iter().enumerate() {
            let mut want = |it: &crate::wire::IndexItem, loser| {
                want.push(it.path.clone());
                wanted.push(i);
                if loser != Loser::Replaced && EXCHANGED.contains(&it.size) {
                    apart.push((it.path.clone(), it.size));
                }
            };
            let mut local =
                |it| super::local_copy::make_from_local(&check, it, &bytes, &mut by_hash);
            let decided = {
                let _names = check.applier.hold_names(); // see fs::gate
                check.index_item(it, &bytes)
            };
            took.push(matches!(decided, Ok(Some(_))));
            match decided {
                Ok(Some(loser)) => match local(it) {
                    Ok(true) => {}
                    Ok(false) => want(it, loser),
                    Err(e) => {
                        tracing::info!("{}: not made from a local copy ({e})", it.path);
                        want(it, loser);
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::warn!("index entry {}: {e}", it.path),
            }
        }
        // small files we hold another version of: described, for a leaf delta
        let mut leaves: Vec<Vec<u32>> = want
            .iter()
            .map(|p| super::leaf_delta::describe(&*check.root, p))
            .collect();
        while leaves.last().is_some_and(Vec::is_empty) {
            leaves.pop();
        }
        let described = (wanted.iter().zip(&leaves))
            .filter(|(_, l)| !l.is_empty())
            .map(|(&i, _)| entries[i].clone())
            .collect();
        (
            crate::wire::bitmap(entries.len(), wanted),
            leaves,
            apart,
            described,
            entries,
            took,
        )
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("index task: {e}")))?;
    if let Some(seen) = seen {
        (entries.iter().zip(&took)).for_each(|(it, &took)| seen.shown(it, took));
    }
    for (path, size) in apart {
        warm.start(r.check.root.clone(), path, size, super::chunked::own(size));
    }
    let took = (entries.into_iter().zip(took))
        .filter(|(_, took)| *took)
        .map(|(it, _)| it.path)
        .collect();
    Ok((Message::IndexAck { upto, want, leaves }, described, took))
}

/// One update through the gate: `Ok(true)` if applied, `Ok(false)` if skipped.
fn gated_update(
    applier: &crate::apply::Applier,
    check: &Checker,
    u: &FileUpdate,
    peer_bytes: &[u8],
) -> Result<Result<bool, NackReason>, crate::apply::ApplyError> {
    match check.before_update(u, peer_bytes)? {
        UpdateStep::Skip => Ok(Ok(false)),
        UpdateStep::Refuse(r) => Ok(Err(r)),
        UpdateStep::Apply(judged) => {
            // The new version is in the index, durably, before the stage goes.
            let aside = judged.clone();
            let record = &mut || {
                check.after_update_durably(u)?;
                check.after_aside(u, &aside)
            };
            applier.apply_update_then(u, Some(judged), record)?;
            Ok(Ok(true))
        }
    }
}

async fn apply_update(u: FileUpdate, r: &Receiver, peer: &PeerId) -> Message {
    let one = r.lock.lock().await;
    let (applier, check, id, bytes) = (r.applier.clone(), r.check.clone(), u.id, peer.to_bytes());
    let raw: u64 = u.ranges.iter().map(|x| x.len).sum();
    // a whole new content is indexed (`sources`): a copy of it made here later can be
    // offered as one
    let whole = (u.base.is_none() && EXCHANGED.contains(&u.size)).then(|| (u.path.clone(), u.size));
    let res = tokio::task::spawn_blocking(move || gated_update(&applier, &check, &u, &bytes)).await;
    drop(one);
    if let (Some((path, size)), Ok(Ok(Ok(true)))) = (whole, &res) {
        index_applied(r, peer, path, size).await;
    }
    match res {
        Ok(Ok(Ok(applied))) => {
            Stats::add(&r.stats.applied, u64::from(applied));
            Stats::add(&r.stats.raw_received, if applied { raw } else { 0 });
            r.stats
                .last_applied_ms
                .store(super::stats::now_ms(), std::sync::atomic::Ordering::Relaxed);
            Message::Ack(AckKind::Update(id))
        }
        Ok(Ok(Err(reason))) => nack(AckKind::Update(id), reason),
        Ok(Err(e)) => refuse(id, e, r),
        Err(e) => nack(
            AckKind::Update(id),
            NackReason::Io(format!("applier task: {e}")),
        ),
    }
}

/// Indexes the chunks of a file just applied whole (off the apply lock; the tree is
/// charged to `peer`'s memory budget, and not built when the budget is spent).
async fn index_applied(r: &Receiver, peer: &PeerId, path: crate::path::RelPath, size: u64) {
    let (budget, check) = (r.budgets.of(*peer), r.check.clone());
    let charge = super::sources::tree_memory(size);
    if !budget.take(charge) {
        tracing::debug!("{path}: not indexed: the peer's memory budget is spent");
        return;
    }
    let task = tokio::task::spawn_blocking(move || {
        super::sources::remember_file(&check.journal, &*check.root, &path, size)
    });
    if let Err(e) = task.await {
        tracing::warn!("indexing an applied file: {e}");
    }
    budget.give(charge);
}

/// The updates from `peer` whose parts this node kept (none if they cannot be read).
async fn held_parts(r: &Receiver, peer: &PeerId) -> Vec<crate::wire::StagedItem> {
    let (applier, peer) = (r.applier.clone(), peer.to_string());
    let held = tokio::task::spawn_blocking(move || applier.parts_held(&peer)).await;
    match held {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!("cannot list kept update parts: {e}");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("listing kept update parts: {e}");
            Vec::new()
        }
    }
}

/// Nacks an update the applier refused. A local failure (a full disk, say) is this
/// node's to fix: it goes to the log as a warning and to `status` as an error.
fn refuse(id: u64, e: crate::apply::ApplyError, r: &Receiver) -> Message {
    let reason = e.nack_reason();
    if matches!(reason, NackReason::Io(_)) {
        tracing::warn!(update = id, "cannot apply an update here: {e}");
        r.stats.error(format!("cannot apply an update here: {e}"));
    } else {
        tracing::info!(update = id, "refusing update: {e}");
    }
    nack(AckKind::Update(id), reason)
}

/// Ranges of multi-frame updates until their final `FileUpdate` arrives: on disk for
/// updates announced by `UpdateStart` (kept across sessions, so a cut transfer resumes;
/// the small writes happen on this task), in memory otherwise. Memory is charged to the
/// peer's budget (shared by all its streams).
struct Parts {
    by_id: HashMap<u64, Vec<RangeData>>,
    /// On-disk parts by update id; an error (no parts to resume) nacks the update.
    kept: HashMap<u64, Result<KeptParts, NackReason>>,
    bytes: usize,
    budget: Arc<PeerBudget>,
    applier: Arc<Applier>,
}

impl Drop for Parts {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Memory a set of ranges holds.
fn cost(ranges: &[RangeData]) -> usize {
    ranges.iter().map(|r| r.data.len() + RANGE_COST).sum()
}

impl Parts {
    fn new(budget: Arc<PeerBudget>, applier: Arc<Applier>) -> Parts {
        Parts {
            by_id: HashMap::new(),
            kept: HashMap::new(),
            bytes: 0,
            budget,
            applier,
        }
    }

    fn start(&mut self, id: u64, key: PartKey, from: u64) {
        let kept = self.applier.parts_begin(&key, from).map_err(|e| {
            tracing::warn!(update = id, "cannot keep or resume its parts: {e}");
            e.nack_reason()
        });
        if from > 0 && kept.is_ok() {
            tracing::info!(update = id, "{}: resuming from byte {from}", key.path);
        }
        self.kept.insert(id, kept);
    }

    fn add(&mut self, id: u64, ranges: Vec<RangeData>) -> Result<(), SyncError> {
        if self.kept.contains_key(&id) {
            return self.keep(id, ranges); // on disk (or nacked at its FileUpdate)
        }
        let n = cost(&ranges);
        if !self.budget.take(n) {
            return Err(SyncError::Protocol(format!(
                "update parts exceed the peer's {MAX_PEER_MEMORY} bytes of memory"
            )));
        }
        self.bytes += n;
        let held = self.by_id.entry(id).or_default();
        held.extend(ranges);
        if held.len() > MAX_UPDATE_RANGES {
            return Err(SyncError::Protocol(format!(
                "update {id} has more than {MAX_UPDATE_RANGES} ranges"
            )));
        }
        Ok(())
    }

    fn keep(&mut self, id: u64, ranges: Vec<RangeData>) -> Result<(), SyncError> {
        let Some(Ok(k)) = self.kept.get_mut(&id) else {
            return Ok(());
        };
        if k.ranges + ranges.len() > MAX_UPDATE_RANGES {
            return Err(SyncError::Protocol(format!(
                "update {id} has more than {MAX_UPDATE_RANGES} ranges"
            )));
        }
        if let Err(e) = self.applier.parts_append(k, &ranges) {
            tracing::warn!(update = id, "cannot keep its parts: {e}");
            self.kept.insert(id, Err(e.nack_reason()));
        }
        Ok(())
    }

    /// The update with its parts' ranges in front, checked sorted, disjoint, within size.
    fn assemble(
        &mut self,
        mut u: FileUpdate,
        kept: Option<&Result<KeptParts, NackReason>>,
    ) -> Result<FileUpdate, NackReason> {
        let mut ranges = self.by_id.remove(&u.id).unwrap_or_default();
        let n = cost(&ranges);
        self.bytes -= n;
        self.budget.give(n);
        if let Some(k) = kept {
            ranges = self.read_kept(k)?;
        }
        ranges.append(&mut u.ranges);
        check_ranges(&ranges, u.size).map_err(NackReason::BadRequest)?;
        u.ranges = ranges;
        Ok(u)
    }

    /// The ranges kept on disk, charged to the budget while the update is applied.
    fn read_kept(
        &mut self,
        k: &Result<KeptParts, NackReason>,
    ) -> Result<Vec<RangeData>, NackReason> {
        let k = k.as_ref().map_err(|e| e.clone())?;
        let ranges = self.applier.parts_read(k).map_err(|e| e.nack_reason())?;
        if !self.budget.take(cost(&ranges)) {
            let why = format!("update parts exceed the peer's {MAX_PEER_MEMORY} bytes of memory");
            return Err(NackReason::BadRequest(why));
        }
        self.budget.give(cost(&ranges)); // the cap of parts held in memory, checked only
        Ok(ranges)
    }
}

/// Ranges of one update: at most [`MAX_UPDATE_RANGES`], spanning at most
/// [`MAX_UPDATE_SPAN`], sorted, disjoint and within `size`.
fn check_ranges(ranges: &[RangeData], size: u64) -> Result<(), String> {
    if ranges.len() > MAX_UPDATE_RANGES {
        return Err(format!("more than {MAX_UPDATE_RANGES} ranges"));
    }
    let span: u64 = ranges.iter().map(|r| r.len).sum();
    if span > MAX_UPDATE_SPAN {
        return Err(format!("ranges span {span} bytes, limit {MAX_UPDATE_SPAN}"));
    }
    let mut prev = 0u64;
    for r in ranges {
        let end = r
            .end()
            .filter(|e| *e <= size)
            .ok_or("part range beyond the file size")?;
        if r.offset < prev {
            return Err("part ranges overlap or are out of order".into());
        }
        prev = end;
    }
    Ok(())
}
