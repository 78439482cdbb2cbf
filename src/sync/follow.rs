//! First contact led by one side (version 23). Both nodes' first contacts would find
//! the same differences twice, one summary each way; instead the node with the greater
//! PeerId (the *leader*) runs its summary as before, and, peeling the peer's entry
//! digests against its own, learns both what the peer lacks (its `Index`) and which
//! of the peer's entries it lacks, which it names in an `IndexAsk`. The other node
//! (the *follower*), told in the leader's `Staged` that it leads, sends no summary: its
//! index holds the entries asked for, every entry of its directories the leader's
//! summary did not show, and whatever changed since it described its entries, less
//! the versions the leader's index showed it holds or that its own replaces. The
//! leader holds back its entries no newer than the newest the follower described
//! ([`may_lose`]; version 24) until its receiver has read the follower's index, then
//! sends them but those whose path it took from it ([`Held`]).
//!
//! This module owns the roles, what the follower's receiver saw of the leader's first
//! contact ([`Seen`]), the hand-offs between a node's receiver and its sender (the
//! leader's ask, the paths taken from the follower; [`Handoffs`]), and the follower's
//! choice of entries ([`to_send`]).

use crate::journal::index::{Entry, Index};
use crate::journal::JournalError;
use crate::path::RelPath;
use crate::wire::{IndexItem, WireVersion};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a follower waits for the leader's ask before sending its own summary.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(40);

/// True if the node `me` leads a first contact with `peer` (PeerIds as text).
pub fn leads(me: &str, peer: &str) -> bool {
    me > peer
}

/// A version of an entry as the leader's index showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    vv: WireVersion,
    hash: [u8; 16],
    deleted: bool,
}

/// What a receiver notes of the leader's first contact on the leader's stream: nothing
/// unless the peer leads and our own sender's first contact with it is still to come
/// (then its ask is wanted).
#[derive(Debug, Default)]
pub struct Watch(Option<Seen>);

impl Watch {
    /// Starts noting, our last change number being `since` (before we describe our
    /// directories); a no-op once started.
    pub fn start(&mut self, since: u64) {
        if self.0.is_none() {
            self.0 = Some(Seen {
                since,
                ..Seen::default()
            });
        }
    }

    /// True once started.
    pub fn started(&self) -> bool {
        self.0.is_some()
    }

    /// What is noted, if started.
    pub fn seen(&mut self) -> Option<&mut Seen> {
        self.0.as_mut()
    }

    /// Adds an `IndexAsk`'s digests; the whole ask once its last message came (and
    /// noting stops). An ask not watched for is ignored; one naming more digests than
    /// we described is the peer's error.
    pub fn asked(&mut self, digests: Vec<u64>, wait: bool) -> Result<Option<Asked>, String> {
        let Some(seen) = self.0.as_mut() else {
            return Ok(None);
        };
        let last = digests.len() < crate::wire::MAX_SAME_DIGESTS;
        seen.asked.extend(digests);
        if seen.asked.len() > seen.digests {
            return Err(format!(
                "an index ask of {} digests, of {} described",
                seen.asked.len(),
                seen.digests
            ));
        }
        Ok(last.then(|| Asked {
            seen: self.0.take().expect("started"),
            wait,
        }))
    }
}

/// What a receiver saw of the leader's first contact on the leader's stream.
#[derive(Debug, Default)]
pub struct Seen {
    /// Our last change number before we first described our directories.
    since: u64,
    /// Our directories whose digest the leader's summary holds.
    pub matched: HashSet<RelPath>,
    /// Our directories whose entries we described by their digests.
    pub described: HashSet<RelPath>,
    /// A description was cut short: the ask may miss entries of those directories.
    pub cut: bool,
    /// Entry digests we described (an ask names at most as many).
    pub digests: usize,
    /// Paths whose entry in the leader's index we take (a file whose content comes).
    took: HashSet<RelPath>,
    /// The leader's index entries, by path.
    shown: HashMap<RelPath, Shown>,
    /// The digests asked for so far (an ask may come in several messages).
    asked: Vec<u64>,
}

impl Seen {
    /// Notes an entry of the leader's index, and whether we take it.
    pub fn shown(&mut self, it: &IndexItem, taken: bool) {
        let shown = Shown {
            vv: it.vv.clone(),
            hash: it.hash,
            deleted: it.deleted,
        };
        self.shown.insert(it.path.clone(), shown);
        if taken {
            self.took.insert(it.path.clone());
        }
    }

    /// True if the leader holds this version of our entry at `p`, or takes no
    /// version of ours there: its index showed this very version, or it showed one
    /// we take and ours is the one we held before (not changed since `since`).
    fn leader_has(&self, p: &RelPath, e: &Entry, since: u64) -> bool {
        let same = self.shown.get(p).is_some_and(|s| {
            s.deleted == e.deleted
                && s.vv == e.vv.pairs()
                && (e.deleted || s.hash == crate::wire::content_id(&e.hash))
        });
        same || (self.took.contains(p) && e.seq <= since)
    }
}

/// The leader's ask with what our receiver saw, handed to our sender.
#[derive(Debug)]
pub struct Asked {
    seen: Seen,
    /// The leader holds back entries until it reads our index: send one even if empty.
    pub wait: bool,
}

/// Per peer, the leader's ask, from the receiver of its stream to our sender; and
/// whether our sender to it is past its session's first exchange.
#[derive(Default)]
pub struct Handoffs {
    slots: Mutex<HashMap<String, Asked>>,
    notify: Notify,
    /// Peers our sender is in a session with, past its index exchange.
    past: Mutex<HashSet<String>>,
    /// First contacts our sender made by an ask (for tests and logs).
    pub followed: AtomicU64,
    /// Per peer, the paths whose entry our receiver took from the follower's index
    /// (see [`Held`]), handed to our sender once that index is read.
    taken: Mutex<HashMap<String, HashSet<RelPath>>>,
    /// Entries our sender, leading, held back and then did not send (for tests and
    /// logs).
    pub spared: AtomicU64,
}

impl Handoffs {
    /// Our sender to `peer` is past its session's index exchange (`true`), or its
    /// session ended (`false`): a first contact it leads, and its ask, come only at the
    /// start of a session.
    pub fn set_past(&self, peer: &str, past: bool) {
        let mut set = self.past.lock().unwrap();
        match past {
            true => set.insert(peer.to_string()),
            false => set.remove(peer),
        };
    }

    /// True if our sender to `peer` will still send the ask of a first contact it
    /// leads, given that the peer never acknowledged our index (see [`Self::set_past`]).
    pub fn ask_to_come(&self, peer: &str) -> bool {
        !self.past.lock().unwrap().contains(peer)
    }

    /// Forgets an ask from `peer` (its new first contact is under way).
    pub fn clear(&self, peer: &str) {
        self.slots.lock().unwrap().remove(peer);
    }

    /// Hands over `peer`'s ask.
    pub fn put(&self, peer: &str, asked: Asked) {
        self.slots.lock().unwrap().insert(peer.to_string(), asked);
        self.notify.notify_waiters();
    }

    /// Takes `peer`'s ask, waiting up to `within` for it.
    pub async fn take(&self, peer: &str, within: Duration) -> Option<Asked> {
        let a = self
            .wait_for(within, || self.slots.lock().unwrap().remove(peer))
            .await;
        if a.is_some() {
            self.followed.fetch_add(1, Ordering::Relaxed);
        }
        a
    }

    /// Forgets what the follower `peer`'s index showed (our new first contact leads).
    pub fn clear_taken(&self, peer: &str) {
        self.taken.lock().unwrap().remove(peer);
    }

    /// Hands over the paths our receiver took from the follower `peer`'s index.
    pub fn put_taken(&self, peer: &str, paths: HashSet<RelPath>) {
        self.taken.lock().unwrap().insert(peer.to_string(), paths);
        self.notify.notify_waiters();
    }

    /// The paths our receiver took from the follower `peer`'s index, once it is read,
    /// waiting up to `within`.
    pub async fn taken(&self, peer: &str, within: Duration) -> Option<HashSet<RelPath>> {
        self.wait_for(within, || self.taken.lock().unwrap().remove(peer))
            .await
    }

    /// What `get` finds, waiting up to `within` for a hand-over to make it find it.
    async fn wait_for<T>(&self, within: Duration, get: impl Fn() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(x) = get() {
                return Some(x);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// The leader's side of a first contact it leads: what its receiver takes from the
/// follower's index, until the last part (then handed to its sender, which sends the
/// entries it held back but those).
#[derive(Debug, Default)]
pub struct Held {
    taken: Option<HashSet<RelPath>>,
}

impl Held {
    /// Starts noting when we told the peer we lead.
    pub fn new(lead: bool) -> Held {
        Held {
            taken: lead.then(HashSet::new),
        }
    }

    /// Notes one part of the follower's index: the paths we take; on the `last`, the
    /// whole set (and noting stops).
    pub fn part(
        &mut self,
        paths: impl IntoIterator<Item = RelPath>,
        last: bool,
    ) -> Option<HashSet<RelPath>> {
        let taken = self.taken.as_mut()?;
        taken.extend(paths);
        last.then(|| self.taken.take().expect("noting"))
    }
}

/// True if an entry of ours with mtime `ours` may lose to the follower's entry at its
/// path, the newest the follower described being `newest` (`(secs, nanos)`): the
/// leader holds it back until it has read the follower's index.
pub fn may_lose(ours: (i64, u32), newest: Option<(i64, u32)>) -> bool {
    newest.is_some_and(|n| ours <= n)
}

/// Our entries the leader lacks, by its ask: those asked for, all of our directories
/// its summary did not show, and what changed since we described them; less what
/// [`Seen::leader_has`].
pub fn to_send(ix: &Index, asked: Asked) -> Result<Vec<(RelPath, Entry)>, JournalError> {
    let seen = asked.seen;
    let since = seen.since;
    let digests: HashSet<u64> = seen.asked.iter().copied().collect();
    let mut out: BTreeMap<RelPath, Entry> = BTreeMap::new();
    for dir in &seen.described {
        for (p, e) in ix.children(dir)? {
            if seen.cut || digests.contains(&super::same_digest(&p, &e)) {
                out.insert(p, e);
            }
        }
    }
    for (dir, _) in ix.digests()? {
        if !seen.matched.contains(&dir) && !seen.described.contains(&dir) {
            out.extend(ix.children(&dir)?);
        }
    }
    let mut after = since;
    loop {
        let batch = ix.changed_since(after, 4096)?;
        let Some(last) = batch.last().map(|(_, e)| e.seq) else {
            break;
        };
        after = last;
        out.extend(batch);
    }
    out.retain(|p, e| !seen.leader_has(p, e, since));
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_is_taken_only_when_watched_for_and_never_beyond_what_we_described() {
        let mut watch = Watch::default();
        assert!(
            matches!(watch.asked(vec![1, 2], false), Ok(None)),
            "not watched: ignored"
        );
        watch.start(7);
        let seen = watch.seen().expect("started");
        seen.digests = 3;
        let asked = watch
            .asked(vec![1, 2, 3], false)
            .expect("within")
            .expect("the last");
        assert_eq!((asked.seen.since, asked.seen.asked.len()), (7, 3));
        assert!(!watch.started(), "an ask ends the watch");
        watch.start(9);
        watch.seen().unwrap().digests = 2;
        assert!(
            watch.asked(vec![1, 2, 3], false).is_err(),
            "more than we described"
        );
    }

    #[test]
    fn the_leader_holds_what_it_showed_and_what_it_replaces() {
        let p = RelPath::from_bytes(b"f").unwrap();
        let entry = |hash: u8, vv: &[(u64, u64)], seq| Entry {
            kind: crate::journal::index::Kind::File,
            size: 1,
            mtime: crate::journal::op::Timestamp { secs: 0, nanos: 0 },
            mode: 0o644,
            hash: [hash; 32],
            target: Vec::new(),
            vv: crate::vv::VersionVector::from_pairs(vv.iter().copied()),
            deleted: false,
            stamp: Default::default(),
            seq,
            moved_to: None,
            taken_at: 0,
            made_here: true,
        };
        let item = |hash: u8, vv: &[(u64, u64)]| IndexItem {
            path: p.clone(),
            kind: crate::wire::ItemKind::File,
            size: 1,
            mtime: crate::wire::WireTime { secs: 0, nanos: 0 },
            mode: 0o644,
            hash: [hash; 16],
            target: Vec::new(),
            vv: vv.to_vec(),
            deleted: false,
        };
        let mut seen = Seen {
            since: 10,
            ..Seen::default()
        };
        seen.shown(&item(1, &[(5, 1)]), false);
        assert!(
            seen.leader_has(&p, &entry(1, &[(5, 1)], 3), 10),
            "the version shown"
        );
        assert!(
            !seen.leader_has(&p, &entry(2, &[(5, 1)], 3), 10),
            "other content"
        );
        assert!(
            !seen.leader_has(&p, &entry(1, &[(5, 2)], 3), 10),
            "another version"
        );
        seen.shown(&item(1, &[(5, 1)]), true);
        assert!(
            seen.leader_has(&p, &entry(2, &[(6, 1)], 10), 10),
            "ours, replaced"
        );
        assert!(
            !seen.leader_has(&p, &entry(2, &[(6, 2)], 11), 10),
            "changed since"
        );
    }
}
