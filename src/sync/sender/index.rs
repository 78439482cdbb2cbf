//! The sender's index exchange at the start of a session: the entries changed since
//! the peer's last ack (at first contact, those of the directories whose digests
//! differ, see [`super::summary`]), and the files the peer asks for in answer.

use super::{chosen, handshake, summary, unexpected, Sender, State, Stream};
use crate::journal::index::Entry;
use crate::path::RelPath;
use crate::sync::sender::recv_reply;
use crate::sync::{fold, follow};
use crate::sync::{SyncError, MIN_RATE, REPLY_TIMEOUT};
use crate::wire::{IndexItem, Message, MAX_SAME_DIGESTS};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Index entries per `Index` message.
pub(super) const INDEX_BATCH: usize = 4096;

/// Sends the peer every index entry that changed since the last one it acknowledged,
/// and queues the files it asks for. At first contact the whole index is described by
/// per-directory digests first, and only the entries of directories that differ go.
pub(super) async fn exchange(s: &Sender, fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    let ix = s.journal.index();
    let peer = s.link.peer();
    let mut after = ix.peer_acked(&peer)?;
    if after == 0 {
        return first_contact(s, fs, st).await;
    }
    handshake(s, fs, st).await?; // an `Index` names paths: only to a peer checked
    let (mut sent, mut wanted) = (0usize, 0usize);
    loop {
        let batch = ix.changed_since(after, INDEX_BATCH)?;
        if batch.is_empty() {
            break; // nothing changed since the peer's ack: no index round
        }
        let last = batch.len() < INDEX_BATCH;
        let upto = batch.last().map_or(after, |(_, e)| e.seq);
        sent += batch.len();
        wanted += send_index(s, fs, st, batch, upto, last, Vec::new()).await?;
        ix.set_peer_acked(&peer, upto)?;
        after = upto;
        if last {
            break;
        }
    }
    tracing::info!(peer = %s.link.peer(), entries = sent, wanted, "index changes exchanged");
    Ok(())
}

/// First contact: directory digests, then the entries of the directories that differ.
/// A node that does not lead it (see `follow`) first hears whether the peer leads;
/// if so, it sends what the peer's ask names instead.
async fn first_contact(s: &Sender, fs: &mut Stream, st: &mut State) -> Result<(), SyncError> {
    let peer = s.link.peer();
    let leads = follow::leads(&s.cfg.peer_text, &peer);
    if !leads {
        handshake(s, fs, st).await?;
        if st.led {
            if let Some(asked) = s.handoffs.take(&peer, follow::FOLLOW_WAIT).await {
                return followed(s, fs, st, asked).await;
            }
            tracing::info!(%peer, "the leader's ask did not come: sending our own summary");
        }
    }
    let ix = s.journal.index();
    if leads {
        s.handoffs.clear_taken(&peer);
    }
    let upto = ix.last_seq()?;
    let digests = ix.digests()?;
    let (differ, entries, theirs) = summary::differing(s, fs, st, &digests).await?;
    let (dirs, total) = (digests.len(), entries.len());
    let wanted = match leads {
        true => lead(s, fs, st, entries, theirs, upto).await?,
        false => send_batches(s, fs, st, entries, upto, Vec::new(), false).await?,
    };
    ix.set_peer_acked(&peer, upto)?;
    tracing::info!(%peer, dirs, differ, entries = total, wanted, "index exchanged (first contact)");
    Ok(())
}

/// Our index at a first contact we lead (see `follow`): the entries the follower's
/// may not replace, then the `IndexAsk` naming its entries we lack, and once its index
/// is read, the entries we held back but those whose path we took from it.
async fn lead(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    entries: Vec<(RelPath, Entry)>,
    theirs: Vec<u64>,
    upto: u64,
) -> Result<usize, SyncError> {
    let newest = st.follower_newest.filter(|_| !theirs.is_empty());
    let (mut held, now): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(_, e)| follow::may_lose((e.mtime.secs, e.mtime.nanos), newest));
    let asks = index_asks(theirs, !held.is_empty());
    let wanted = send_batches(s, fs, st, now, upto, asks, false).await?;
    if held.is_empty() {
        return Ok(wanted);
    }
    let peer = s.link.peer();
    let taken = s.handoffs.taken(&peer, follow::FOLLOW_WAIT).await;
    if taken.is_none() {
        tracing::info!(%peer, "the follower's index did not come: sending what we held back");
    }
    let (taken, before) = (taken.unwrap_or_default(), held.len());
    held.retain(|(p, _)| !taken.contains(p));
    let spared = (before - held.len()) as u64;
    s.handoffs.spared.fetch_add(spared, Ordering::Relaxed);
    tracing::debug!(%peer, spared, sent = held.len(), "entries held back for the follower's index");
    Ok(wanted + send_batches(s, fs, st, held, upto, Vec::new(), false).await?)
}

/// First contact led by the peer: our entries its ask names (see `follow::to_send`).
async fn followed(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    asked: follow::Asked,
) -> Result<(), SyncError> {
    let (ix, peer) = (s.journal.index(), s.link.peer());
    let upto = ix.last_seq()?;
    let wait = asked.wait; // the leader holds entries back until it reads our index
    let entries = follow::to_send(ix, asked)?;
    let total = entries.len();
    let wanted = send_batches(s, fs, st, entries, upto, Vec::new(), wait).await?;
    ix.set_peer_acked(&peer, upto)?;
    tracing::info!(%peer, entries = total, wanted, "index exchanged (first contact, led by the peer)");
    Ok(())
}

/// The `IndexAsk`s naming `digests`: full ones, then one of fewer (maybe none), which
/// ends them; `wait`: we hold entries back until we read the peer's index.
fn index_asks(mut digests: Vec<u64>, wait: bool) -> Vec<Message> {
    let mut asks = Vec::new();
    loop {
        let rest = digests.split_off(digests.len().min(MAX_SAME_DIGESTS));
        let last = digests.len() < MAX_SAME_DIGESTS;
        asks.push(Message::IndexAsk { digests, wait });
        if last {
            return asks;
        }
        digests = rest;
    }
}

/// Sends `entries` in `Index` messages of up to [`INDEX_BATCH`], `then` right after
/// the last (or alone if there are none); returns how many files the peer wants.
/// Entries that go by the journal are left out first (see [`send_index`]): none left,
/// no index round, unless `always` (then one empty `Index`).
async fn send_batches(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    mut entries: Vec<(RelPath, Entry)>,
    upto: u64,
    then: Vec<Message>,
    always: bool,
) -> Result<usize, SyncError> {
    entries.retain(|(p, e)| sendable(s, p, e));
    let mut batches: Vec<Vec<_>> = Vec::new();
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(INDEX_BATCH));
        batches.push(std::mem::replace(&mut entries, rest));
    }
    if batches.is_empty() && always {
        batches.push(Vec::new());
    }
    // nothing differs: no index round (the peer learns nothing from an empty one)
    if batches.is_empty() {
        for m in then {
            fs.queue(m)?;
        }
        fs.flush().await?;
        return Ok(0);
    }
    let (n, mut then, mut wanted) = (batches.len(), Some(then), 0);
    for (i, batch) in batches.into_iter().enumerate() {
        let last = i + 1 == n;
        let after = if last { then.take() } else { None };
        wanted += send_index(s, fs, st, batch, upto, last, after.unwrap_or_default()).await?;
    }
    Ok(wanted)
}

/// Sends one `Index` message and queues the files the peer wants; returns how many.
async fn send_index(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    batch: Vec<(RelPath, Entry)>,
    upto: u64,
    last: bool,
    then: Vec<Message>,
) -> Result<usize, SyncError> {
    // Entries with unsent local changes go by the journal (ops and updates, with their
    // versions): sent here too, they would race their own ops at the peer.
    let entries: Vec<_> = batch
        .into_iter()
        .filter(|(p, e)| sendable(s, p, e))
        .map(|(p, e)| fold::to_item(p, e))
        .collect();
    fs.queue(Message::Index {
        entries: entries.clone(),
        upto,
        last,
    })?;
    for m in then {
        fs.queue(m)?;
    }
    fs.flush().await?;
    let limit = REPLY_TIMEOUT + Duration::from_secs((INDEX_BATCH as u64 * 128) / MIN_RATE);
    handshake(s, fs, st).await?;
    match recv_reply(&s.stats, fs, limit).await? {
        Message::IndexAck {
            upto: acked,
            want,
            mut leaves,
        } if acked == upto => {
            let want: Vec<_> = chosen(&entries, &want)?.collect();
            leaves.resize(want.len(), Vec::new());
            for (item, described) in want.iter().zip(leaves) {
                want_file(s, st, item, described)?;
            }
            Ok(want.len())
        }
        other => Err(unexpected("an index ack", &other)),
    }
}

/// True if an entry goes in an `Index`: not ignored, and no unsent change of its path
/// in the journal (that goes as ops and updates, with their versions).
fn sendable(s: &Sender, p: &RelPath, e: &Entry) -> bool {
    !pending_here(s, p) && !crate::sync::ignored::entry_ignored(s, p, e.kind)
}

/// True if the journal holds unsent changes to `path`.
fn pending_here(s: &Sender, path: &RelPath) -> bool {
    s.journal.has_pending_op(path)
        || fold::look(&*s.root, path).is_some_and(|(_, st)| s.journal.is_pending(st.st_ino))
}

/// The peer wants the whole file of the entry `item` we sent: it goes as a whole-file
/// update, or as a leaf delta if the peer `described` its version (see `leaf_delta`).
fn want_file(
    s: &Sender,
    st: &mut State,
    item: &IndexItem,
    described: Vec<u32>,
) -> Result<(), SyncError> {
    let path = &item.path;
    if crate::sync::ignored::entry_ignored(s, path, crate::journal::index::Kind::File) {
        return Ok(()); // stays local
    }
    match fold::look(&*s.root, path) {
        Some((crate::journal::index::Kind::File, stat)) => {
            st.peer_hash.remove(&stat.st_ino);
            st.trees.remove(&stat.st_ino);
            s.journal
                .want_whole(stat.st_ino, path, stat.st_size as u64)?;
            if !described.is_empty() {
                st.described.insert(stat.st_ino, described);
                st.indexed.insert(stat.st_ino, item.clone());
            }
        }
        _ => tracing::debug!("{path}: wanted by the peer, but not a file here now"),
    }
    Ok(())
}
