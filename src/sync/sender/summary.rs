//! First contact's summary, the sender's side: the directories' digests (a list in
//! parts, or one sketch of them all for a big index), the peer's answer (which
//! differ, and the digests of its entries there, listed or sketched), and from that
//! our entries the peer does not hold exactly. See `sync::digests` for the sketches.

use super::index::INDEX_BATCH;
use super::{chosen, handshake, recv_reply, unexpected, Sender, State, Stream};
use crate::journal::index::Entry;
use crate::path::RelPath;
use crate::sync::digests::{Answer, Found};
use crate::sync::{SyncError, REPLY_TIMEOUT};
use crate::wire::{DirDigest, Message};

/// What first contact's summary found: how many of our directories differ from the
/// peer's, our entries in them that the peer does not hold exactly (same path, kind,
/// content, version), and the digests of the peer's entries there we do not hold.
pub(super) type Differing = (usize, Vec<(RelPath, Entry)>, Vec<u64>);

/// What our summary finds (see [`Differing`]).
pub(super) async fn differing(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    digests: &[(RelPath, [u8; 16])],
) -> Result<Differing, SyncError> {
    let sketched = match crate::sync::digests::summary_cells(digests.len()) {
        Some(cells) => summary_sketched(s, fs, st, digests, cells).await?,
        None => None,
    };
    match sketched {
        Some(found) => Ok(found),
        None => summary_parts(s, fs, st, digests).await,
    }
}

/// Our directories (path, children's digest), as the index lists them.
type Dirs<'a> = Vec<&'a (RelPath, [u8; 16])>;

/// The summary in parts of [`INDEX_BATCH`] directories, each answered before the next.
async fn summary_parts(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    digests: &[(RelPath, [u8; 16])],
) -> Result<Differing, SyncError> {
    let (mut differ, mut entries, mut theirs) = (0, Vec::new(), Vec::new());
    let mut chunks: Vec<_> = digests.chunks(INDEX_BATCH).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        let dirs: Dirs = chunk.iter().collect();
        let (bits, answer) = ask_summary(s, fs, st, summary_of(&dirs, last, false)).await?;
        let part = picked(&dirs, &bits)?;
        differ += part.len();
        let (ours, only_theirs) = entries_to_send(s, fs, st, part, answer, last).await?;
        entries.extend(ours);
        theirs.extend(only_theirs);
    }
    Ok((differ, entries, theirs))
}

/// The whole summary as one sketch (a part of up to
/// [`MAX_INDEX_ITEMS`](crate::wire::MAX_INDEX_ITEMS) directories,
/// sorted as the peer sorts what it decodes); `None` if the peer could not peel it.
async fn summary_sketched(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    digests: &[(RelPath, [u8; 16])],
    cells: usize,
) -> Result<Option<Differing>, SyncError> {
    let mut sorted: Vec<(DirDigest, &(RelPath, [u8; 16]))> = digests
        .iter()
        .map(|x| (DirDigest::of(&x.0, &x.1), x))
        .collect();
    sorted.sort_unstable_by_key(|(d, _)| (d.key, d.digest));
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return Ok(None); // two directories one key: the peer's set would hold one
    }
    let keys: Vec<DirDigest> = sorted.iter().map(|(d, _)| *d).collect();
    let (sketch, sum) = crate::sync::digests::summary_sketch(&keys, cells);
    let ask = Message::Summary {
        dirs: Vec::new(),
        last: true,
        list: false,
        sketch,
        sum,
    };
    let (bits, answer) = ask_summary(s, fs, st, ask).await?;
    if bits.is_empty() {
        tracing::debug!(dirs = digests.len(), "directory sketch did not peel");
        return Ok(None); // (a peeled answer has a bit per directory)
    }
    let dirs: Dirs = sorted.into_iter().map(|(_, x)| x).collect();
    let part = picked(&dirs, &bits)?;
    let differ = part.len();
    let (entries, theirs) = entries_to_send(s, fs, st, part, answer, true).await?;
    Ok(Some((differ, entries, theirs)))
}

/// A `Summary` listing `dirs`.
fn summary_of(dirs: &Dirs<'_>, last: bool, list: bool) -> Message {
    Message::Summary {
        dirs: dirs.iter().map(|(p, d)| DirDigest::of(p, d)).collect(),
        last,
        list,
        sketch: Vec::new(),
        sum: 0,
    }
}

/// The directories of `dirs` whose bit is set in an answer's `differ`.
fn picked<'a>(dirs: &Dirs<'a>, differ: &[u8]) -> Result<Dirs<'a>, SyncError> {
    Ok(chosen(dirs, differ)?.copied().collect())
}

/// Sends a summary and reads its answer: the bitmap of its directories that differ
/// (empty for a sketch the peer could not peel), and which of them the peer holds
/// with the digests of its entries there.
async fn ask_summary(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    msg: Message,
) -> Result<(Vec<u8>, Answer), SyncError> {
    fs.send(msg).await?;
    handshake(s, fs, st).await?;
    match recv_reply(&s.stats, fs, REPLY_TIMEOUT).await? {
        Message::SummaryAck {
            differ,
            same,
            held,
            sketch,
            sum,
            newest,
        } => {
            let newest = newest.map(|t| (t.secs, t.nanos));
            st.follower_newest = st.follower_newest.max(newest);
            let answer = Answer {
                held,
                same,
                sketch,
                sum,
            };
            Ok((differ, answer))
        }
        other => Err(unexpected("a summary ack", &other)),
    }
}

/// Our entries in `part` (directories that differ) that the peer does not hold, by
/// its `answer`, and its digests there we do not hold; a sketch that does not peel
/// costs those directories again, answered by a list.
async fn entries_to_send(
    s: &Sender,
    fs: &mut Stream,
    st: &mut State,
    part: Dirs<'_>,
    answer: Answer,
    last: bool,
) -> Result<Found, SyncError> {
    let ix = s.journal.index();
    let paths: Vec<&RelPath> = part.iter().map(|(p, _)| p).collect();
    if let Some(entries) = crate::sync::digests::to_send(ix, &paths, &answer)? {
        return Ok(entries);
    }
    tracing::debug!(dirs = part.len(), "summary sketch did not peel");
    let (bits, answer) = ask_summary(s, fs, st, summary_of(&part, last, true)).await?;
    let part = picked(&part, &bits)?;
    let paths: Vec<&RelPath> = part.iter().map(|(p, _)| p).collect();
    crate::sync::digests::to_send(ix, &paths, &answer)?
        .ok_or_else(|| SyncError::Protocol("a sketch sent where a list was asked for".into()))
}
